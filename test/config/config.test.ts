import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { configFromObject, loadConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'

const v2 = (a = 90, b = 10): unknown[] => [
  { name: 'stable', upstream: 'http://127.0.0.1:3001', weight: a },
  { name: 'canary', upstream: 'http://127.0.0.1:3002', weight: b }
]
const route = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ name: 'web', versions: v2(), ...extra })

t.test('the shipped configs are valid', async (t) => {
  const c = loadConfig('config/default.json', {})
  t.equal(c.listen.port, 8080)
  t.equal(c.admin.host, '127.0.0.1')
  t.equal(c.admin.port, 9901)
  t.equal(c.timeouts.upstreamResponseMs, 30000)
  t.same(c.routes[0]!.versions.map((v) => v.weight), [90, 10])
  const y = loadConfig('config/example.yaml', {})
  t.equal(y.routes[0]!.match.host, 'shop.example.com', 'YAML is read')
  t.same(y.routes[0]!.sticky.keys, ['header:x-user-id', 'cookie:session'])
})

t.test('defaults fill what the file leaves out', async (t) => {
  const c = configFromObject({ routes: [route()] }, '', {})
  t.equal(c.listen.host, '0.0.0.0')
  t.equal(c.state.file, './data/state.json')
  t.equal(c.timeouts.clientHeadersMs, 10000)
  t.equal(c.routes[0]!.match.pathPrefix, '/')
  t.same(c.routes[0]!.sticky, { keys: [], cookie: { name: 'canaryd_id', maxAge: 86400 } })
  t.same(c.routes[0]!.override, {})
})

t.test('environment variables win over the file for ports, addresses and secrets', async (t) => {
  const c = configFromObject({ listen: { port: 1 }, routes: [route()] }, '', {
    CANARYD_LISTEN_PORT: '9090', CANARYD_ADMIN_PORT: '9999', CANARYD_ADMIN_TOKEN: 's3cret', CANARYD_ADMIN_HOST: '0.0.0.0', CANARYD_STATE_FILE: '/tmp/s.json', CANARYD_UPSTREAM_RESPONSE_MS: '1234'
  })
  t.equal(c.listen.port, 9090)
  t.equal(c.admin.port, 9999)
  t.equal(c.admin.token, 's3cret')
  t.equal(c.admin.host, '0.0.0.0')
  t.equal(c.state.file, '/tmp/s.json')
  t.equal(c.timeouts.upstreamResponseMs, 1234)
})

t.test('each config error names the key and the reason on one line', async (t) => {
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['weights sum', { routes: [route({ versions: v2(70, 10) })] }, 'routes[0].versions: weights sum to 80, must be 100'],
    ['sum over 100', { routes: [route({ versions: v2(90, 10.0001) })] }, 'routes[0].versions: weights sum to 100.0001, must be 100'],
    ['5 decimals', { routes: [route({ versions: v2(89.99999, 10.00001) })] }, 'routes[0].versions[0].weight: must have at most 4 decimals, got 89.99999'],
    ['negative weight', { routes: [route({ versions: v2(110, -10) })] }, 'routes[0].versions[0].weight: must be between 0 and 100, got 110'],
    ['string weight', { routes: [route({ versions: [{ name: 'a', upstream: 'http://h:1', weight: '50' }, { name: 'b', upstream: 'http://h:2', weight: 50 }] })] }, 'routes[0].versions[0].weight: must be a number, got "50"'],
    ['missing weight', { routes: [route({ versions: [{ name: 'a', upstream: 'http://h:1' }, { name: 'b', upstream: 'http://h:2', weight: 100 }] })] }, 'routes[0].versions[0].weight: is required'],
    ['one version', { routes: [route({ versions: [{ name: 'a', upstream: 'http://h:1', weight: 100 }] })] }, 'routes[0].versions: at least two versions are required, got 1'],
    ['duplicate version', { routes: [route({ versions: [{ name: 'a', upstream: 'http://h:1', weight: 50 }, { name: 'a', upstream: 'http://h:2', weight: 50 }] })] }, 'routes[0].versions[1].name: duplicate version name "a"'],
    ['bad upstream scheme', { routes: [route({ versions: [{ name: 'a', upstream: 'ftp://h:1', weight: 50 }, { name: 'b', upstream: 'http://h:2', weight: 50 }] })] }, 'routes[0].versions[0].upstream: "ftp://h:1" must be an http:// or https:// URL'],
    ['upstream with path', { routes: [route({ versions: [{ name: 'a', upstream: 'http://h:1/api', weight: 50 }, { name: 'b', upstream: 'http://h:2', weight: 50 }] })] }, 'routes[0].versions[0].upstream: "http://h:1/api" must be an origin (scheme://host:port) without path or query'],
    ['not a URL', { routes: [route({ versions: [{ name: 'a', upstream: 'nope', weight: 50 }, { name: 'b', upstream: 'http://h:2', weight: 50 }] })] }, 'routes[0].versions[0].upstream: "nope" is not a URL'],
    ['bad key source', { routes: [route({ sticky: { keys: ['body:x'] } })] }, 'routes[0].sticky.keys[0]: "body:x" is not a key source; use header:NAME, cookie:NAME, query:NAME or ip'],
    ['bad header name', { routes: [route({ sticky: { keys: ['header:x user'] } })] }, 'routes[0].sticky.keys[0]: "x user" is not a valid header name'],
    ['unknown route key', { routes: [route({ wieghts: 1 })] }, 'routes[0].wieghts: unknown key (allowed: name, match, sticky, override, versions, segments, mirror, rollout)'],
    ['unknown version key', { routes: [route({ versions: [{ name: 'a', upstream: 'http://h:1', weight: 50, w: 1 }, { name: 'b', upstream: 'http://h:2', weight: 50 }] })] }, 'routes[0].versions[0].w: unknown key (allowed: name, upstream, weight, balance, discovery, tls)'],
    ['pathPrefix', { routes: [route({ match: { pathPrefix: 'api' } })] }, 'routes[0].match.pathPrefix: must start with "/", got "api"'],
    ['bad host', { routes: [route({ match: { host: 'exa mple.com' } })] }, 'routes[0].match.host: "exa mple.com" is not a valid host name (example.com or *.example.com)'],
    ['duplicate route', { routes: [route(), route({ match: { pathPrefix: '/x' } })] }, 'routes[1].name: duplicate route name "web"'],
    ['same match', { routes: [route(), route({ name: 'web2' })] }, 'routes[1].match: another route already matches host (any) and pathPrefix /'],
    ['no routes', { routes: [] }, 'routes: at least one route is required'],
    ['cookie maxAge', { routes: [route({ sticky: { cookie: { maxAge: -1 } } })] }, 'routes[0].sticky.cookie.maxAge: must be a whole number of seconds >= 0, got -1'],
    ['override header', { routes: [route({ override: { header: 'x canary' } })] }, 'routes[0].override.header: "x canary" is not a valid header name'],
    ['unknown top-level key', { routes: [route()], lisen: { port: 1 } }, 'lisen: unknown key'],
    ['bad port', { routes: [route()], listen: { port: 70000 } }, 'listen.port: must be a port (0–65535), got 70000'],
    ['bad timeout', { routes: [route()], timeouts: { upstreamResponseMs: -5 } }, 'timeouts.upstreamResponseMs: must be a whole number of milliseconds from 0 to 2147483647, got -5'],
    ['bad log level', { routes: [route()], log: { level: 'loud' } }, 'log.level: must be one of fatal, error, warn, info, debug, trace, silent, got "loud"']
  ]
  for (const [name, raw, want] of cases) {
    const err = t.throws(() => configFromObject(raw, '', {}), name) as ConfigError
    t.type(err, ConfigError, `${name}: a ConfigError`)
    t.equal(err.message, want, name)
    t.notMatch(err.message, /\n/, `${name}: one line`)
    t.equal(err.code, 'CANARYD_ERR_CONFIG_INVALID')
  }
})

t.test('file errors: missing file, bad JSON, bad YAML', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-cfg-'))
  t.throws(() => loadConfig(join(dir, 'missing.json'), {}), /cannot read config file .*missing\.json: ENOENT/)
  writeFileSync(join(dir, 'bad.json'), '{ "routes": [ }')
  t.throws(() => loadConfig(join(dir, 'bad.json'), {}), /bad\.json is not valid JSON/)
  writeFileSync(join(dir, 'bad.yaml'), 'routes: [\n  - name: x\n  bad')
  t.throws(() => loadConfig(join(dir, 'bad.yaml'), {}), /bad\.yaml is not valid YAML/)
  writeFileSync(join(dir, 'list.json'), '[1,2]')
  t.throws(() => loadConfig(join(dir, 'list.json'), {}), /the config must be a JSON\/YAML object/)
})
