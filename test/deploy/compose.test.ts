import { existsSync, readFileSync } from 'node:fs'
import { dirname, join, posix, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse } from 'yaml'
import { configFromObject } from '../../src/config/load.js'
import { canarydEnv, unknownEnvProblem } from './canaryd-env.js'
import { effectiveArgv, readDockerfile, repoRoot } from './container.js'

// deploy/compose/docker-compose.yml: Redis and three canaryd instances sharing it (docs/fleet.md).
// No Docker here: the file is read as Compose reads it (YAML merge keys on, relative paths from
// the file's directory, `command` replacing the image's CMD) and checked against the Dockerfile,
// the config it mounts and the variables canaryd reads.

const composeFile = fileURLToPath(new URL('../../deploy/compose/docker-compose.yml', import.meta.url))
const composeDir = dirname(composeFile)
const compose = parse(readFileSync(composeFile, 'utf8'), { merge: true }) as Record<string, any>
const services = compose.services as Record<string, Record<string, any>>
const image = readDockerfile(readFileSync(join(repoRoot, 'Dockerfile'), 'utf8'))
const canaryds = Object.entries(services).filter(([, s]) => s.build !== undefined)
const known = canarydEnv()

/** A short-syntax volume `SOURCE:TARGET[:MODE]` split into its parts. */
function volume (spec: string): { source: string; target: string; mode: string | undefined } {
  const [source = '', target = '', mode] = spec.split(':')
  return { source, target, mode }
}

/** A compose `environment` (map or KEY=VALUE list) as a map; `${VAR…}` values kept as written. */
function environment (s: Record<string, any>): Record<string, string> {
  const e = s.environment ?? {}
  if (Array.isArray(e)) return Object.fromEntries(e.map((kv: string) => [kv.split('=')[0], kv.slice(kv.indexOf('=') + 1)]))
  return Object.fromEntries(Object.entries(e as Record<string, unknown>).map(([k, v]) => [k, String(v)]))
}

t.test('the compose file parses: Redis and three canaryd instances built from this repository\'s Dockerfile', async (t) => {
  t.ok(services.redis, 'a redis service')
  t.equal(canaryds.length, 3, `three canaryd services: ${canaryds.map(([n]) => n).join(', ')}`)
  for (const [name, s] of canaryds) {
    t.equal(resolve(composeDir, s.build.context as string), resolve(repoRoot), `${name}: the build context is the repository`)
    t.ok(existsSync(join(repoRoot, s.build.dockerfile as string ?? 'Dockerfile')), `${name}: the Dockerfile exists`)
    t.equal(s.entrypoint, undefined, `${name}: no entrypoint: the image's stays`)
    t.same(effectiveArgv(image, { args: s.command }).slice(0, 3), ['node', 'dist/cli.js', 'serve'], `${name}: runs canaryd serve`)
    t.equal(s['<<'], undefined, `${name}: the merge key was applied`)
  }
  t.same(new Set(canaryds.map(([, s]) => s.image)).size, 1, 'one image for the fleet')
})

t.test('each instance: the store from its environment, its own instance id, only variables canaryd reads', async (t) => {
  const ids = new Set<string>()
  for (const [name, s] of canaryds) {
    const env = environment(s)
    for (const k of Object.keys(env)) t.equal(unknownEnvProblem(known, k), undefined, `${name}: ${k}`)
    t.equal(env.CANARYD_STORE_TYPE, 'redis', `${name}: store.type redis`)
    const url = new URL(env.CANARYD_REDIS_URL ?? '')
    t.ok(['redis:', 'rediss:'].includes(url.protocol), `${name}: a Redis URL`)
    t.ok(services[url.hostname], `${name}: the URL names the compose service ${url.hostname}`)
    t.ok(s.depends_on?.[url.hostname], `${name}: starts after ${url.hostname}`)
    t.match(env.CANARYD_ADMIN_TOKEN, /^\$\{CANARYD_ADMIN_TOKEN:\?/, `${name}: the admin token from the shell, required`)
    t.ok(env.CANARYD_INSTANCE_ID, `${name}: an instance id`)
    ids.add(env.CANARYD_INSTANCE_ID ?? '')
  }
  t.equal(ids.size, canaryds.length, 'every instance id differs')
})

t.test('one shared config file, valid, mounted where --config points; a volume of its own for each local snapshot', async (t) => {
  const snapshots = new Set<string>()
  for (const [name, s] of canaryds) {
    const argv = effectiveArgv(image, { args: s.command })
    const configPath = argv[argv.indexOf('--config') + 1] ?? image.env.CANARYD_CONFIG
    const mounts = (s.volumes as string[]).map(volume)
    const cfg = mounts.find((m) => m.target === configPath)
    t.ok(cfg, `${name}: a file is mounted at ${String(configPath)}`)
    t.equal(cfg?.mode, 'ro', `${name}: read-only`)
    const file = resolve(composeDir, cfg?.source ?? '')
    t.equal(file, join(composeDir, 'canaryd.yaml'), `${name}: the shared deploy/compose/canaryd.yaml`)
    const env: Record<string, string> = { ...image.env, ...environment(s), CANARYD_ADMIN_TOKEN: 'x'.repeat(32) }
    const config = configFromObject(parse(readFileSync(file, 'utf8')), file, env) as Record<string, any>
    t.equal(config.store?.type, 'redis', `${name}: store.type`)
    t.equal(config.store?.instanceId, env.CANARYD_INSTANCE_ID, `${name}: store.instanceId`)
    for (const r of config.routes as Array<{ versions: Array<{ upstream: string | string[] }> }>) {
      for (const v of r.versions) {
        for (const u of [v.upstream].flat()) t.ok(services[new URL(u).hostname], `${name}: upstream ${u} is a compose service`)
      }
    }
    const stateDir = posix.dirname(config.state.file as string)
    const data = mounts.find((m) => m.target === stateDir)
    t.ok(data, `${name}: a volume at ${stateDir} (state.file and its .fleet.json snapshot)`)
    t.not(data?.mode, 'ro', `${name}: writable`)
    t.ok(data !== undefined && data.source in (compose.volumes ?? {}), `${name}: a named volume (owned by the image's node user)`)
    snapshots.add(data?.source ?? '')
    t.ok(config.timeouts.drainTimeoutMs / 1000 < Number.parseInt(String(s.stop_grace_period), 10), `${name}: the drain fits in stop_grace_period`)
  }
  t.equal(snapshots.size, canaryds.length, 'a snapshot volume per instance')
})

t.test('published ports differ; admin ports on loopback only; Redis with AOF everysec and a health check', async (t) => {
  const published = new Set<string>()
  for (const [name, s] of canaryds) {
    for (const p of s.ports as string[]) {
      const parts = p.split(':')
      published.add(parts.slice(0, -1).join(':'))
      if (parts.at(-1) === '9901') t.equal(parts[0], '127.0.0.1', `${name}: the admin port is published on 127.0.0.1`)
    }
  }
  t.equal(published.size, canaryds.length * 2, 'no host port used twice')
  const redis = services.redis!
  const cmd = (redis.command as string[]).join(' ')
  t.match(cmd, '--appendonly yes')
  t.match(cmd, '--appendfsync everysec')
  t.ok(redis.healthcheck?.test, 'a health check (the canaryd services wait for it on first start)')
  for (const [name, s] of canaryds) t.equal(s.depends_on?.redis?.condition, 'service_healthy', `${name}: waits for a healthy Redis`)
})
