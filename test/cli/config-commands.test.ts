import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { parse as parseYaml } from 'yaml'
import { configFromObject, type Config } from '../../src/config/load.js'
import { ensureBuilt, runCli } from '../helpers/cli.js'

// `canaryd validate`, `canaryd config print`, and the errors `serve` prints for a bad
// environment value, a syntax error and a taken port: the built CLI, run as users run it.

ensureBuilt()

const tmp = (): string => mkdtempSync(join(tmpdir(), 'canaryd-cfgcmd-'))

/** A good YAML config in a fresh directory; `extra` lines are appended at the top level. */
function goodConfig (dir: string, extra: string[] = []): string {
  const file = join(dir, 'canaryd.yaml')
  writeFileSync(file, [
    'listen: { host: 127.0.0.1, port: 0 }',
    'admin: { host: 127.0.0.1, port: 0 }',
    `state: { file: ${JSON.stringify(join(dir, 'state', 'state.json'))} }`,
    ...extra,
    'routes:',
    '  - name: web',
    '    versions:',
    '      - { name: stable, upstream: "http://127.0.0.1:3001", weight: 90 }',
    '      - { name: canary, upstream: "http://127.0.0.1:3002", weight: 10 }',
    '    rollout:',
    '      canary: canary',
    '      steps: [1, 5, 10, 25, 50, 100]',
    '      webhooks: [{ url: "https://hooks.example.com/services/T000/B000/secret-part?x=1" }]'
  ].join('\n') + '\n')
  return file
}

/** Holds a loopback port until the test ends. */
async function holdPort (t: Test): Promise<number> {
  const s: Server = createServer()
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  t.teardown(() => s.close())
  return (s.address() as { port: number }).port
}

t.test('--help lists validate, config print and rollout start --canary NAME', async (t) => {
  const h = await runCli(['--help'])
  t.equal(h.code, 0)
  t.match(h.stdout, /canaryd validate \[--config FILE\]/)
  t.match(h.stdout, /canaryd config print \[--config FILE\] \[--yaml\]/)
  t.match(h.stdout, /canaryd rollout start ROUTE \[--plan FILE\] \[--canary NAME\]/)
})

t.test('validate: one ok line, exit 0, and the state directory exists afterwards', async (t) => {
  const dir = tmp()
  const file = goodConfig(dir)
  const r = await runCli(['validate', '--config', file])
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stderr, '')
  t.equal(r.stdout, `ok ${file}: 1 route (web), 2 versions, 1 rollout plan; proxy 127.0.0.1:0, admin 127.0.0.1:0; state file ${join(dir, 'state', 'state.json')}\n`)
  t.ok(existsSync(join(dir, 'state')), 'the state directory was created, as serve creates it')

  const viaEnv = await runCli(['validate'], { CANARYD_CONFIG: file, CANARYD_ADMIN_TOKEN: 'tok' })
  t.equal(viaEnv.code, 0, 'CANARYD_CONFIG is read')
  t.match(viaEnv.stdout, /admin 127\.0\.0\.1:0 \(token set\)/, 'the environment is applied')
})

t.test('validate prints exactly what serve prints, and exits 1', async (t) => {
  const cases: Array<{ name: string, setup: (dir: string) => { file: string, env?: Record<string, string> }, want: (file: string, dir: string) => string | RegExp }> = [
    {
      name: 'a bad environment value names the variable',
      setup: (dir) => ({ file: goodConfig(dir), env: { CANARYD_LISTEN_PORT: 'abc' } }),
      want: () => 'canaryd: invalid environment variable CANARYD_LISTEN_PORT (listen.port): must be a port (0–65535), got "abc"\n'
    },
    {
      name: 'a YAML syntax error: path once, line, column, snippet',
      setup: (dir) => {
        const file = join(dir, 'broken.yaml')
        writeFileSync(file, 'listen:\n  port: 80\n bad: [1,\nroutes: []\n')
        return { file }
      },
      want: (file) => `canaryd: ${file} is not valid YAML: line 3, column 1: All mapping items must start at the same column\n  2 |   port: 80\n  3 |  bad: [1,\n    | ^\n`
    },
    {
      name: 'a JSON syntax error: line, column, the offending line',
      setup: (dir) => {
        const file = join(dir, 'broken.json')
        writeFileSync(file, '{\n  "routes": [\n    { "name": \'web\' }\n  ]\n}\n')
        return { file }
      },
      want: (file) => `canaryd: ${file} is not valid JSON: line 3, column 15: Unexpected token '''\n  2 |   "routes": [\n  3 |     { "name": 'web' }\n    |               ^\n`
    },
    {
      name: 'an invalid route',
      setup: (dir) => {
        const file = join(dir, 'weights.json')
        writeFileSync(file, JSON.stringify({ state: { file: '' }, routes: [{ name: 'web', versions: [{ name: 'a', upstream: 'http://127.0.0.1:1', weight: 70 }, { name: 'b', upstream: 'http://127.0.0.1:2', weight: 10 }] }] }))
        return { file }
      },
      want: (file) => `canaryd: invalid config ${file}: routes[0].versions: weights sum to 80, must be 100\n`
    },
    {
      name: 'a state directory that cannot be written',
      setup: (dir) => {
        writeFileSync(join(dir, 'a-file'), '')
        return { file: goodConfig(dir), env: { CANARYD_STATE_FILE: join(dir, 'a-file', 'state.json') } }
      },
      want: (file, dir) => new RegExp(`^canaryd: invalid config ${file.replace(/[.]/g, '\\.')}: state\\.file: cannot write to ${join(dir, 'a-file').replace(/[.]/g, '\\.')}: ENOTDIR .*CANARYD_STATE_FILE.*\\n$`)
    },
    {
      name: 'a bad LOG_LEVEL',
      setup: (dir) => ({ file: goodConfig(dir), env: { LOG_LEVEL: 'verbose' } }),
      want: () => 'canaryd: LOG_LEVEL: "verbose" is not a log level; use one of fatal, error, warn, info, debug, trace, silent\n'
    },
    {
      name: 'an admin server on a public address without a token',
      setup: (dir) => ({ file: goodConfig(dir), env: { CANARYD_ADMIN_HOST: '0.0.0.0' } }),
      want: (file) => new RegExp(`^canaryd: invalid config ${file.replace(/[.]/g, '\\.')}: admin\\.host: 0\\.0\\.0\\.0 is not a loopback address and no admin token is set; .*\\n$`)
    },
    {
      name: 'a missing file',
      setup: (dir) => ({ file: join(dir, 'missing.yaml') }),
      want: (file) => `canaryd: cannot read config file ${file}: ENOENT\n`
    }
  ]
  // all at once: each case is two short-lived processes
  const runs = await Promise.all(cases.map(async (c) => {
    const dir = tmp()
    const { file, env = {} } = c.setup(dir)
    const [validate, serve] = await Promise.all([runCli(['validate', '--config', file], env), runCli(['serve', '--config', file], env)])
    return { c, dir, file, validate, serve }
  }))
  for (const { c, dir, file, validate, serve } of runs) {
    const want = c.want(file, dir)
    if (typeof want === 'string') t.equal(validate.stderr, want, `${c.name}: validate`)
    else t.match(validate.stderr, want, `${c.name}: validate`)
    t.equal(validate.code, 1, `${c.name}: validate exits 1`)
    t.equal(validate.stdout, '', `${c.name}: no ok line`)
    t.equal(serve.stderr, validate.stderr, `${c.name}: serve prints the same`)
    t.equal(serve.code, 1, `${c.name}: serve exits 1`)
  }
})

t.test('config print: the effective config after env overrides, secrets masked', async (t) => {
  const dir = tmp()
  const file = goodConfig(dir, ['log: { level: warn }'])
  const r = await runCli(['config', 'print', '--config', file], { CANARYD_LISTEN_PORT: '8181', CANARYD_ADMIN_TOKEN: 'very-secret-token', CANARYD_REDIS_URL: 'redis://:hunter2@redis.internal:6380/2' })
  t.equal(r.code, 0, r.stderr)
  t.notMatch(r.stdout, /very-secret-token/, 'the token is not printed')
  t.notMatch(r.stdout, /hunter2/, 'the Redis password is not printed')
  t.notMatch(r.stdout, /secret-part/, 'the webhook URL path is not printed')
  const printed = JSON.parse(r.stdout) as Omit<Config, 'source'> & { routes: Array<{ rollout: { steps: number[]; webhooks: Array<{ url: string }> } }> }
  t.equal(printed.listen.port, 8181, 'the environment wins over the file')
  t.equal(printed.log.level, 'warn', 'the file wins over the default')
  t.equal(printed.admin.token, '********', 'admin.token is masked')
  t.equal(printed.store.url, 'redis://:********@redis.internal:6380/2', 'store.url keeps its host and db, not its password')
  t.equal(printed.timeouts.upstreamResponseMs, 30000, 'defaults are filled in')
  t.equal(printed.routes[0]!.rollout.webhooks[0]!.url, 'https://hooks.example.com/********')
  t.same(printed.routes[0]!.rollout.steps, [1, 5, 10, 25, 50], 'the normalised plan')
  t.notOk('source' in printed, 'only config keys: the output is itself a config file')
  t.same(Object.keys(printed), ['listen', 'trustedProxies', 'admin', 'state', 'store', 'timeouts', 'upstream', 'limits', 'health', 'log', 'routes'], 'schema order')

  // the printed config is a valid config meaning the same thing (masked values aside)
  const again = configFromObject(printed, '', {})
  const original = configFromObject(parseYaml(readFileSync(file, 'utf8')), '', { CANARYD_LISTEN_PORT: '8181', CANARYD_ADMIN_TOKEN: '********', CANARYD_REDIS_URL: 'redis://:********@redis.internal:6380/2' })
  const plan = original.routes[0]!.rollout as { webhooks: Array<{ url: string }> }
  plan.webhooks[0]!.url = 'https://hooks.example.com/********'
  t.same(again, original, 'round trip')
  const copy = join(dir, 'printed.json')
  writeFileSync(copy, r.stdout)
  const ok = await runCli(['validate', '--config', copy])
  t.equal(ok.code, 0, `validate accepts what config print printed: ${ok.stderr}`)

  const noToken = await runCli(['config', 'print'], { CANARYD_CONFIG: file })
  t.equal(noToken.code, 0, 'CANARYD_CONFIG is read')
  t.equal((JSON.parse(noToken.stdout) as { admin: { token: string } }).admin.token, '', 'an unset token stays "" (nothing to hide)')

  const yaml = await runCli(['config', 'print', '--yaml', '--config', file], { CANARYD_ADMIN_TOKEN: 'very-secret-token' })
  t.equal(yaml.code, 0, yaml.stderr)
  t.notMatch(yaml.stdout, /very-secret-token/)
  t.same(parseYaml(yaml.stdout), { ...JSON.parse(noToken.stdout), admin: { ...JSON.parse(noToken.stdout).admin, token: '********' } }, '--yaml prints the same config as YAML')

  const bad = await runCli(['config', 'print', '--config', file], { CANARYD_ADMIN_PORT: '99999' })
  t.equal(bad.code, 1)
  t.equal(bad.stderr, 'canaryd: invalid environment variable CANARYD_ADMIN_PORT (admin.port): must be a port (0–65535), got "99999"\n')
  t.equal(bad.stdout, '')
})

t.test('usage errors exit 2', async (t) => {
  const cases = [['config'], ['config', 'show'], ['validate', 'extra'], ['validate', '--nope'], ['config', 'print', 'x']]
  const runs = await Promise.all(cases.map(async (args) => await runCli(args)))
  for (const [i, args] of cases.entries()) {
    const r = runs[i]!
    t.equal(r.code, 2, `${args.join(' ')}: exit 2`)
    t.match(r.stderr, /^canaryd: .*\nUsage:/, `${args.join(' ')}: the reason, then the usage`)
  }
})

t.test('serve: a taken port names the listener and the key that sets it', async (t) => {
  const dir = tmp()
  const file = goodConfig(dir)
  const port = await holdPort(t)
  const proxy = await runCli(['serve', '--config', file], { CANARYD_LISTEN_PORT: String(port) })
  t.equal(proxy.code, 1)
  t.equal(proxy.stderr, `canaryd: cannot listen on 127.0.0.1:${port} (proxy: listen.port / CANARYD_LISTEN_PORT): address already in use\n`)
  const admin = await runCli(['serve', '--config', file], { CANARYD_ADMIN_PORT: String(port) })
  t.equal(admin.code, 1)
  t.equal(admin.stderr, `canaryd: cannot listen on 127.0.0.1:${port} (admin: admin.port / CANARYD_ADMIN_PORT): address already in use\n`)
  // cluster mode: the primary opens the admin server itself
  const cluster = await runCli(['serve', '--config', file, '--workers', '2'], { CANARYD_ADMIN_PORT: String(port) })
  t.equal(cluster.code, 1)
  t.equal(cluster.stderr, `canaryd: cannot listen on 127.0.0.1:${port} (admin: admin.port / CANARYD_ADMIN_PORT): address already in use\n`)
})
