import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, posix } from 'node:path'
import t, { type Test } from 'tap'
import { parse } from 'yaml'
import { configFromObject } from '../../src/config/load.js'
import { canarydEnv, unknownEnvProblem } from './canaryd-env.js'
import { containerEnv, ContainerFs, effectiveArgv, readDockerfile, repoRoot, runContainer, type ContainerSpec } from './container.js'

const read = (f: string): Record<string, any> => parse(readFileSync(new URL(`../../deploy/kubernetes/${f}`, import.meta.url), 'utf8')) as Record<string, any>
const image = readDockerfile(readFileSync(join(repoRoot, 'Dockerfile'), 'utf8'))
const sts = read('statefulset.yaml')
const configMap = read('configmap.yaml')
const pod = sts.spec.template
const container = pod.spec.containers[0] as ContainerSpec & Record<string, any>
const token = randomBytes(16).toString('hex')

/** The container's environment as the kubelet builds it, with a generated admin token for the Secret. */
function podEnv (): Record<string, string> {
  return containerEnv(image, container, (name, key) => {
    if (name !== 'canaryd-admin' || key !== 'token') throw new Error(`unexpected secret ${name}/${key}`)
    return token
  })
}

/**
 * The pod's file system: the image's WORKDIR is this repository (same dist/
 * and package.json), each volumeMount gets a temp directory (a ConfigMap's
 * keys written as files), and with `withState` false the PVC mount is left
 * out, so its path falls on the read-only root file system.
 */
function podFs (t: Test, withState = true): ContainerFs {
  const scratch = mkdtempSync(join(tmpdir(), 'canaryd-pod-'))
  t.teardown(() => { rmSync(scratch, { recursive: true, force: true }) })
  const fs = new ContainerFs(scratch).mount(image.workdir, repoRoot)
  const claims = new Set<string>((sts.spec.volumeClaimTemplates ?? []).map((c: any) => c.metadata.name))
  for (const m of container.volumeMounts as Array<{ name: string; mountPath: string }>) {
    const dir = join(scratch, 'volumes', m.name)
    const vol = (pod.spec.volumes ?? []).find((v: any) => v.name === m.name)
    if (vol?.configMap !== undefined) {
      t.equal(vol.configMap.name, configMap.metadata.name, `volume ${m.name} is the shipped ConfigMap`)
      fs.mount(m.mountPath, dir)
      for (const [k, v] of Object.entries(configMap.data as Record<string, string>)) writeFileSync(join(dir, k), v)
    } else if (claims.has(m.name)) {
      if (withState) fs.mount(m.mountPath, dir)
    } else {
      throw new Error(`volume ${m.name}: neither the ConfigMap nor a volumeClaimTemplate`)
    }
  }
  return fs
}

/**
 * What this machine cannot give a test, and only that, overrides the pod:
 * listeners on loopback and port 0 (8080/9901 may be taken; tests touch only
 * 127.0.0.1). The rest of the environment is the image's and the manifest's.
 */
const testListeners = { CANARYD_LISTEN_HOST: '127.0.0.1', CANARYD_LISTEN_PORT: '0', CANARYD_ADMIN_HOST: '127.0.0.1', CANARYD_ADMIN_PORT: '0' }

t.test('effective argv follows Kubernetes over the image: command replaces ENTRYPOINT and drops CMD, args replace CMD', async (t) => {
  const img = { entrypoint: ['node', 'dist/cli.js'], cmd: ['serve'] }
  const cases: Array<[ContainerSpec, string[]]> = [
    [{}, ['node', 'dist/cli.js', 'serve']],
    [{ args: ['serve', '--config', '/c.yaml'] }, ['node', 'dist/cli.js', 'serve', '--config', '/c.yaml']],
    [{ command: ['node', 'x.js'] }, ['node', 'x.js']],
    [{ command: ['node', 'x.js'], args: ['a'] }, ['node', 'x.js', 'a']],
    [{ args: [] }, ['node', 'dist/cli.js']],
    // the bug this test exists for: args that repeat the ENTRYPOINT run it twice
    [{ args: ['node', 'dist/cli.js', 'serve'] }, ['node', 'dist/cli.js', 'node', 'dist/cli.js', 'serve']]
  ]
  for (const [c, want] of cases) t.same(effectiveArgv(img, c), want, JSON.stringify(c))
  t.same(effectiveArgv(img, { args: ['--config', '$(CFG)', '$$(CFG)', '$(NOPE)'] }, { CFG: '/etc/c.yaml' }),
    ['node', 'dist/cli.js', '--config', '/etc/c.yaml', '$(CFG)', '$(NOPE)'], '$(VAR) expanded from the container env, $$ escapes, unknown left as written')
})

t.test('the StatefulSet\'s effective command starts canaryd with the ConfigMap; a weight change is saved on the volume', async (t) => {
  const env = podEnv()
  const argv = effectiveArgv(image, container, env)
  t.equal(container.command, undefined, 'no command: the image ENTRYPOINT stays')
  t.same(argv.slice(0, image.entrypoint.length), image.entrypoint)
  const fs = podFs(t)
  const run = runContainer(argv, { ...env, ...testListeners }, fs, image.workdir)
  t.teardown(() => { run.kill('SIGKILL') })
  const started = await run.waitForLog('canaryd started', 15_000).catch((err: Error) => err)
  if (started instanceof Error) {
    t.fail(`argv ${JSON.stringify(argv)} does not start canaryd: ${started.message}`)
    return
  }
  t.equal(started.config, fs.hostPath('/etc/canaryd/canaryd.yaml'), 'serves the mounted ConfigMap file')
  const stateFile = env.CANARYD_STATE_FILE ?? configFromObject(parse(configMap.data['canaryd.yaml'] as string), 'configmap', env).state.file
  t.equal(started.stateFile, fs.hostPath(stateFile), 'the state file is the one the image env and the ConfigMap name')
  const admin = `http://${String(started.admin)}`
  t.equal((await fetch(`${admin}/readyz`)).status, 200)
  const res = await fetch(`${admin}/api/v1/routes/web/weights`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ weights: { stable: 80, canary: 20 }, reason: 'deploy test' })
  })
  t.equal(res.status, 200, `the first weight change is persisted: ${await res.text()}`)
  t.same(JSON.parse(readFileSync(fs.hostPath(stateFile), 'utf8')).routes.web.weights, { stable: 80, canary: 20 }, 'saved on the PVC mount')
  run.kill('SIGTERM')
  const end = await run.exited(15_000)
  t.equal(end.code, 0, `drains and exits 0 on SIGTERM: ${end.stderr}`)
})

t.test('without the state volume the same pod refuses to start, naming state.file and CANARYD_STATE_FILE', async (t) => {
  const env = podEnv()
  const fs = podFs(t, false)
  const run = runContainer(effectiveArgv(image, container, env), { ...env, ...testListeners }, fs, image.workdir)
  t.teardown(() => { run.kill('SIGKILL') })
  // whichever comes first: the refusal (exit), or a start that must not happen (then stop at once)
  const started = await run.waitForLog('canaryd started', 15_000).then(() => true, () => false)
  run.kill('SIGKILL')
  const end = await run.exited(15_000)
  t.notOk(started, 'never reported started')
  t.equal(end.code, 1, `exit 1 before serving; stdout: ${end.stdout.slice(0, 500)}`)
  const lines = end.stderr.trim().split('\n')
  t.equal(lines.length, 1, `one line: ${end.stderr}`)
  const dir = posix.dirname(env.CANARYD_STATE_FILE ?? '')
  t.match(lines[0], `state.file: cannot write to ${fs.hostPath(dir)}: ENOTDIR`)
  t.match(lines[0], 'CANARYD_STATE_FILE')
})

t.test('the state file the pod uses is on a writable PersistentVolumeClaim; image env and ConfigMap agree', async (t) => {
  const env = podEnv()
  const fromConfigMap = configFromObject(parse(configMap.data['canaryd.yaml'] as string), 'configmap', {}).state.file
  t.equal(env.CANARYD_STATE_FILE, image.env.CANARYD_STATE_FILE, 'the manifest does not override the image\'s path')
  t.equal(fromConfigMap, image.env.CANARYD_STATE_FILE, 'ConfigMap state.file = the image\'s CANARYD_STATE_FILE (which would win)')
  const effective = configFromObject(parse(configMap.data['canaryd.yaml'] as string), 'configmap', env).state.file
  const mount = (container.volumeMounts as Array<{ name: string; mountPath: string; readOnly?: boolean }>)
    .find((m) => effective.startsWith(`${m.mountPath.replace(/\/+$/, '')}/`))
  t.ok(mount, `a volume is mounted above ${effective}`)
  t.notOk(mount?.readOnly, 'mounted read-write')
  t.equal(container.securityContext.readOnlyRootFilesystem, true, 'the root file system is read-only (the volume is the only writable place)')
  const claim = (sts.spec.volumeClaimTemplates as Array<Record<string, any>>).find((c) => c.metadata.name === mount?.name)
  t.ok(claim, 'the mount is a volumeClaimTemplate (a PVC per pod), not an emptyDir')
  t.same(claim?.spec.accessModes, ['ReadWriteOnce'])
  t.notOk((pod.spec.volumes ?? []).some((v: any) => v.emptyDir !== undefined), 'no emptyDir')
  t.equal(pod.spec.securityContext.fsGroup, 1000, 'the volume is group-writable by the image\'s node user (uid/gid 1000)')
})

t.test('StatefulSet: one replica, probes on the admin port 9901, scrape annotations, token from a Secret', async (t) => {
  t.equal(sts.kind, 'StatefulSet')
  t.equal(sts.spec.replicas, 1, 'state is per instance until the shared store')
  t.same(pod.metadata.annotations, { 'prometheus.io/scrape': 'true', 'prometheus.io/port': '9901', 'prometheus.io/path': '/metrics' })
  const admin = container.ports.find((p: { name: string }) => p.name === 'admin')
  t.equal(admin.containerPort, 9901)
  t.same(container.livenessProbe.httpGet, { path: '/healthz', port: 'admin' })
  t.same(container.readinessProbe.httpGet, { path: '/readyz', port: 'admin' })
  t.ok(container.env!.some((e) => e.name === 'CANARYD_ADMIN_TOKEN' && e.valueFrom?.secretKeyRef?.name === 'canaryd-admin'), 'admin token from a Secret')
  t.same(sts.spec.selector.matchLabels, pod.metadata.labels, 'selector matches the pod labels')
  t.equal(pod.spec.securityContext.runAsUser, 1000)
})

t.test('the manifest and deploy/README.md name the Dockerfile\'s base image and no other', async (t) => {
  t.match(image.base, /^node:\d+-/, 'the final stage is a node image')
  for (const f of ['kubernetes/statefulset.yaml', 'kubernetes/fleet/deployment.yaml', 'README.md']) {
    const text = readFileSync(new URL(`../../deploy/${f}`, import.meta.url), 'utf8')
    t.same([...new Set(text.match(/\bnode:[\w.-]+/g) ?? [])], [image.base], f)
  }
})

t.test('ConfigMap: a valid canaryd config whose admin listens where the probes look', async (t) => {
  const config = configFromObject(parse(configMap.data['canaryd.yaml'] as string), 'configmap', { CANARYD_ADMIN_TOKEN: token })
  t.equal(config.admin.port, 9901)
  t.equal(config.admin.host, '0.0.0.0', 'reachable by the kubelet and Prometheus')
  t.equal(config.listen.port, 8080)
  t.ok(config.timeouts.drainTimeoutMs / 1000 + 5 < pod.spec.terminationGracePeriodSeconds, 'drain + preStop fit in the grace period')
  t.same(pod.spec.containers[0].lifecycle.preStop.exec.command, ['sleep', '5'])
})

t.test('Services: the proxy Service and the StatefulSet\'s headless governing Service select its pods', async (t) => {
  const s = read('service.yaml')
  t.equal(s.kind, 'Service')
  t.same(s.spec.selector, pod.metadata.labels)
  t.same(s.spec.ports.map((p: any) => [p.name, p.port, p.targetPort]), [['http', 80, 'http'], ['admin', 9901, 'admin']])
  t.equal(s.metadata.annotations['prometheus.io/port'], '9901')
  const h = read('service-headless.yaml')
  t.equal(h.metadata.name, sts.spec.serviceName, 'spec.serviceName names an existing Service')
  t.equal(h.spec.clusterIP, 'None', 'headless')
  t.same(h.spec.selector, pod.metadata.labels)
  // every manifest in the directory is one that a test here reads (fleet/: the tests below)
  t.same(readdirSync(new URL('../../deploy/kubernetes/', import.meta.url)).sort(), ['configmap.yaml', 'fleet', 'service-headless.yaml', 'service.yaml', 'statefulset.yaml'])
  t.ok(existsSync(join(repoRoot, 'dist', 'cli.js')), 'dist/cli.js is built (npm run build)')
})

// ---------------------------------------------------------------------------------------------
// The fleet variant, deploy/kubernetes/fleet/: a Deployment of interchangeable pods sharing their
// runtime state through Redis (docs/fleet.md). Checked the same way as the StatefulSet (the
// effective command runs against dist/ with the pod's env and mounts), plus what makes it a fleet.

const fleet = {
  deployment: read('fleet/deployment.yaml'),
  configMap: read('fleet/configmap.yaml'),
  pdb: read('fleet/pdb.yaml'),
  service: read('fleet/service.yaml'),
  secret: read('fleet/examples/redis-secret.yaml')
}
const fleetPod = fleet.deployment.spec.template
const fleetContainer = fleetPod.spec.containers[0] as ContainerSpec & Record<string, any>
const known = canarydEnv()

/** The pod's labels select it: every key of `selector` is on the pod with the same value. */
function selects (selector: Record<string, string> | undefined, labels: Record<string, string>): boolean {
  return selector !== undefined && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v)
}

/** A downward-API field of the pod, as the kubelet fills it in. */
function podField (fieldPath: string, podName: string): string {
  if (fieldPath === 'metadata.name') return podName
  throw new Error(`unexpected downward API field ${fieldPath}`)
}

/** A fleet pod's environment: the image's ENV, then the manifest's, with the two Secrets and the pod name filled in. */
function fleetEnv (podName: string, redisUrl: string): Record<string, string> {
  const env = containerEnv(image, fleetContainer, (name, key) => {
    if (name === 'canaryd-admin' && key === 'token') return token
    if (name === fleet.secret.metadata.name && key in fleet.secret.stringData) return redisUrl
    throw new Error(`unexpected secret ${name}/${key}`)
  })
  for (const e of fleetContainer.env as Array<{ name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>) {
    if (e.valueFrom?.fieldRef !== undefined) env[e.name] = podField(e.valueFrom.fieldRef.fieldPath, podName)
  }
  return env
}

/** A fleet pod's file system: the ConfigMap's keys as files, each emptyDir a fresh temp directory. */
function fleetPodFs (t: Test): ContainerFs {
  const scratch = mkdtempSync(join(tmpdir(), 'canaryd-fleet-pod-'))
  t.teardown(() => { rmSync(scratch, { recursive: true, force: true }) })
  const fs = new ContainerFs(scratch).mount(image.workdir, repoRoot)
  for (const m of fleetContainer.volumeMounts as Array<{ name: string; mountPath: string }>) {
    const dir = join(scratch, 'volumes', m.name)
    const vol = (fleetPod.spec.volumes ?? []).find((v: any) => v.name === m.name)
    if (vol?.configMap !== undefined) {
      t.equal(vol.configMap.name, fleet.configMap.metadata.name, `volume ${m.name} is the fleet's ConfigMap`)
      fs.mount(m.mountPath, dir)
      for (const [k, v] of Object.entries(fleet.configMap.data as Record<string, string>)) writeFileSync(join(dir, k), v)
    } else if (vol?.emptyDir !== undefined) {
      fs.mount(m.mountPath, dir)
    } else {
      throw new Error(`volume ${m.name}: neither the ConfigMap nor an emptyDir`)
    }
  }
  return fs
}

/** The local snapshot path canaryd derives from state.file (docs/fleet.md): `.json` → `.fleet.json`. */
const snapshotPath = (stateFile: string): string => stateFile.replace(/\.json$/, '') + '.fleet.json'

/** Why a Redis server cannot be started here, or undefined when redis-server is on PATH. */
function redisMissing (): string | undefined {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' })
  if (r.error !== undefined) return `redis-server not installed (Debian package "redis-server"; .ci/run installs it): ${r.error.message}`
  return undefined
}

/** Starts a throw-away redis-server on a free loopback port (no persistence); resolves with its URL. */
async function startRedis (t: Test): Promise<string> {
  const port = await new Promise<number>((resolve, reject) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo
      s.close(() => { resolve(port) })
    }).on('error', reject)
  })
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-redis-'))
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { child.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }) })
  let out = ''
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`redis-server not ready within 10 s: ${out}`)) }, 10_000)
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d
      if (out.includes('Ready to accept connections')) { clearTimeout(timer); resolve() }
    })
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`redis-server exited ${String(code)}: ${out}`)) })
  })
  return `redis://127.0.0.1:${port}/0`
}

t.test('fleet: a Deployment of 3 replicas whose selector, PDB, anti-affinity and Service all select its pods', async (t) => {
  const d = fleet.deployment
  t.equal(d.apiVersion, 'apps/v1')
  t.equal(d.kind, 'Deployment')
  t.equal(d.spec.replicas, 3, 'three interchangeable instances')
  const labels = fleetPod.metadata.labels as Record<string, string>
  t.equal(labels['app.kubernetes.io/name'], 'canaryd', 'the label the Prometheus pod discovery keeps')
  t.same(d.spec.selector.matchLabels, labels, 'the Deployment\'s selector is the pod labels')
  t.notOk(selects(d.spec.selector.matchLabels, sts.spec.template.metadata.labels), 'it does not select the single-instance StatefulSet\'s pod')
  t.equal(d.spec.strategy.rollingUpdate.maxUnavailable, 0, 'an update never drops below the replica count')

  const p = fleet.pdb
  t.equal(p.apiVersion, 'policy/v1')
  t.equal(p.kind, 'PodDisruptionBudget')
  t.ok(selects(p.spec.selector.matchLabels, labels), 'the PDB selects the fleet\'s pods')
  t.same(p.spec.selector.matchLabels, d.spec.selector.matchLabels, 'the PDB selects exactly the Deployment\'s pods')
  t.ok(p.spec.minAvailable === 2 || p.spec.maxUnavailable === 1, `minAvailable 2 or maxUnavailable 1: ${JSON.stringify(p.spec)}`)
  t.ok(p.spec.minAvailable === undefined || p.spec.minAvailable < d.spec.replicas, 'a node drain can still evict one pod')

  const anti = fleetPod.spec.affinity?.podAntiAffinity
  t.ok(anti, 'pod anti-affinity')
  t.notOk(anti?.requiredDuringSchedulingIgnoredDuringExecution, 'preferred, not required: a small cluster still runs every replica')
  const terms = (anti?.preferredDuringSchedulingIgnoredDuringExecution ?? []) as Array<Record<string, any>>
  const byHost = terms.find((x) => x.podAffinityTerm?.topologyKey === 'kubernetes.io/hostname')
  t.ok(byHost, 'one pod per node where possible (topologyKey kubernetes.io/hostname)')
  t.ok(selects(byHost?.podAffinityTerm.labelSelector?.matchLabels, labels), 'the anti-affinity term selects the fleet\'s own pods')
  t.ok(byHost?.weight >= 1 && byHost?.weight <= 100, 'weight 1-100')

  const s = fleet.service
  t.equal(s.kind, 'Service')
  t.same(s.spec.selector, labels, 'the Service selects the fleet\'s pods')
  t.same(s.spec.ports.map((x: any) => [x.name, x.port, x.targetPort]), [['http', 80, 'http'], ['admin', 9901, 'admin']])
  t.same(s.metadata.annotations, read('service.yaml').metadata.annotations, 'the same scrape annotations as the single-instance Service')
})

t.test('fleet: the pod is the StatefulSet\'s (image, args, probes, securityContext, resources, drain) but for the store', async (t) => {
  for (const k of ['image', 'args', 'ports', 'livenessProbe', 'readinessProbe', 'lifecycle', 'resources', 'securityContext']) {
    t.same(fleetContainer[k], container[k], `container ${k}`)
  }
  t.equal(fleetContainer.command, undefined, 'no command: the image ENTRYPOINT stays')
  t.same(fleetPod.spec.securityContext, pod.spec.securityContext, 'pod securityContext')
  t.equal(fleetPod.spec.terminationGracePeriodSeconds, pod.spec.terminationGracePeriodSeconds)
  t.same(fleetPod.metadata.annotations, pod.metadata.annotations, 'scrape annotations')
  const tokenEnv = (fleetContainer.env ?? []).find((e) => e.name === 'CANARYD_ADMIN_TOKEN')
  t.same(tokenEnv, (container.env ?? []).find((e) => e.name === 'CANARYD_ADMIN_TOKEN'), 'the admin token from the same Secret')
})

t.test('fleet: store.type redis from the env, the Redis URL from a Secret (never a literal), the instance id from the pod name', async (t) => {
  const env = fleetContainer.env as Array<Record<string, any>>
  const byName = new Map(env.map((e) => [e.name as string, e]))
  t.equal(byName.size, env.length, 'no variable set twice')
  t.equal(byName.get('CANARYD_STORE_TYPE')?.value, 'redis')
  const url = byName.get('CANARYD_REDIS_URL')
  t.equal(url?.value, undefined, 'no literal URL (it carries the password)')
  t.same(url?.valueFrom?.secretKeyRef, { name: fleet.secret.metadata.name, key: 'redis-url' }, 'from the Secret of examples/redis-secret.yaml')
  t.same(byName.get('CANARYD_INSTANCE_ID')?.valueFrom, { fieldRef: { fieldPath: 'metadata.name' } }, 'the pod name, by the downward API')
  for (const e of env) {
    if (typeof e.value === 'string') t.notMatch(e.value, /^rediss?:\/\//, `${String(e.name)}: no Redis URL written in the manifest`)
  }
  t.same(known.schema.get('CANARYD_STORE_TYPE'), 'store.type', 'CANARYD_STORE_TYPE sets store.type')
  t.same(known.schema.get('CANARYD_REDIS_URL'), 'store.url', 'CANARYD_REDIS_URL sets store.url')
  t.same(known.schema.get('CANARYD_INSTANCE_ID'), 'store.instanceId', 'CANARYD_INSTANCE_ID sets store.instanceId')

  // the example Secret: the name and key the Deployment reads, a value nobody could mistake for a real one
  const sec = fleet.secret
  t.equal(sec.kind, 'Secret')
  t.same(Object.keys(sec.stringData), ['redis-url'])
  const example = new URL(sec.stringData['redis-url'] as string)
  t.ok(['redis:', 'rediss:'].includes(example.protocol), `a redis:// or rediss:// URL: ${example.href}`)
  t.match(example.password, /CHANGE-ME/, 'the password is a placeholder')
  t.match(example.hostname, /\.invalid$/, 'the host is a reserved, never-resolving name')
  // `kubectl apply -f deploy/kubernetes/fleet/` is not recursive: it must never overwrite a real Secret
  const applied = readdirSync(new URL('../../deploy/kubernetes/fleet/', import.meta.url)).filter((f) => f.endsWith('.yaml')).sort()
  t.same(applied, ['configmap.yaml', 'deployment.yaml', 'pdb.yaml', 'service.yaml'], 'what the directory applies')
  t.same(readdirSync(new URL('../../deploy/kubernetes/fleet/', import.meta.url)).sort(), [...applied, 'examples'].sort(), 'and examples/, which it does not')
  for (const f of applied) t.not(read(`fleet/${f}`).kind, 'Secret', `${f} is not a Secret`)
})

t.test('every environment variable the manifests set is one canaryd reads', async (t) => {
  t.ok(known.schema.size >= 30, `the schema's variables (${known.schema.size})`)
  t.ok(known.process.has('LOG_LEVEL') && known.process.has('CANARYD_CONFIG'), `canaryd --help lists its own (${[...known.process].join(', ')})`)
  for (const [file, c] of [['statefulset.yaml', container], ['fleet/deployment.yaml', fleetContainer]] as const) {
    for (const e of c.env ?? []) t.equal(unknownEnvProblem(known, e.name), undefined, `${file}: ${e.name}`)
  }
})

t.test('fleet: the ConfigMap is a valid config; with the pod env it is a Redis store named after the pod', async (t) => {
  const env = fleetEnv('canaryd-5d8f7c9b4-x2x7q', 'redis://10.0.0.9:6379/0')
  const config = configFromObject(parse(fleet.configMap.data['canaryd.yaml'] as string), 'configmap', env) as Record<string, any>
  t.equal(config.admin.host, '0.0.0.0', 'reachable by the kubelet and Prometheus')
  t.equal(config.admin.port, 9901)
  t.equal(config.listen.port, 8080)
  t.ok(config.timeouts.drainTimeoutMs / 1000 + 5 < fleetPod.spec.terminationGracePeriodSeconds, 'drain + preStop fit in the grace period')
  t.equal(config.store?.type, 'redis', 'store.type')
  t.equal(config.store?.url, 'redis://10.0.0.9:6379/0', 'store.url from the Secret')
  t.equal(config.store?.instanceId, 'canaryd-5d8f7c9b4-x2x7q', 'store.instanceId = the pod name')
  t.equal(fleet.configMap.metadata.name, fleetPod.spec.volumes.find((v: any) => v.configMap !== undefined)?.configMap.name, 'the pod mounts this ConfigMap')
  t.same(parse(fleet.configMap.data['canaryd.yaml'] as string).routes, parse(configMap.data['canaryd.yaml'] as string).routes, 'the same example routes as the single-instance ConfigMap')
})

t.test('fleet: the state file and the local snapshot are on a writable emptyDir; the root file system is read-only', async (t) => {
  const env = fleetEnv('canaryd-a', 'redis://127.0.0.1:6379/0')
  t.equal(env.CANARYD_STATE_FILE, image.env.CANARYD_STATE_FILE, 'the manifest does not override the image\'s path')
  const stateFile = configFromObject(parse(fleet.configMap.data['canaryd.yaml'] as string), 'configmap', env).state.file
  t.equal(stateFile, image.env.CANARYD_STATE_FILE, 'ConfigMap state.file = the image\'s CANARYD_STATE_FILE')
  for (const path of [stateFile, snapshotPath(stateFile)]) {
    const mount = (fleetContainer.volumeMounts as Array<{ name: string; mountPath: string; readOnly?: boolean }>)
      .find((m) => path.startsWith(`${m.mountPath.replace(/\/+$/, '')}/`))
    t.ok(mount, `a volume is mounted above ${path}`)
    t.notOk(mount?.readOnly, 'mounted read-write')
    const vol = (fleetPod.spec.volumes as Array<Record<string, any>>).find((v) => v.name === mount?.name)
    t.ok(vol?.emptyDir, `${path}: an emptyDir (the truth is in Redis; no PersistentVolumeClaim to pin a pod)`)
  }
  t.equal(fleetContainer.securityContext.readOnlyRootFilesystem, true)
  t.equal(fleet.deployment.spec.volumeClaimTemplates, undefined)
})

const noRedis = redisMissing()
if (noRedis !== undefined) t.comment(`fleet start-up test skipped: ${noRedis}`)

t.test('fleet: two pods started from the manifest share one Redis: a change through one is served by the other', { skip: noRedis ?? false }, async (t) => {
  const redisUrl = await startRedis(t)
  const pods = ['canaryd-6f9c7d5b8-aaaaa', 'canaryd-6f9c7d5b8-bbbbb'].map((name) => {
    const env = fleetEnv(name, redisUrl)
    return { name, env, argv: effectiveArgv(image, fleetContainer, env), fs: fleetPodFs(t) }
  })
  const admins: string[] = []
  for (const p of pods) {
    // one after the other: the first seeds Redis from its config, the second adopts what Redis holds
    const run = runContainer(p.argv, { ...p.env, ...testListeners }, p.fs, image.workdir)
    t.teardown(() => { run.kill('SIGKILL') })
    const started = await run.waitForLog('canaryd started', 20_000).catch((err: Error) => err)
    if (started instanceof Error) {
      t.fail(`${p.name}: argv ${JSON.stringify(p.argv)} does not start canaryd: ${started.message}`)
      return
    }
    admins.push(`http://${String(started.admin)}`)
  }
  const [a, b] = admins as [string, string]
  const auth = { authorization: `Bearer ${token}` }
  const res = await fetch(`${a}/api/v1/routes/web/weights`, {
    method: 'PUT',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ weights: { stable: 80, canary: 20 }, reason: 'deploy test (fleet)' })
  })
  t.equal(res.status, 200, `a weight change through ${pods[0]!.name}: ${await res.text()}`)
  let seen: unknown
  const deadline = Date.now() + 5000
  while (Date.now() < deadline) {
    const route = await (await fetch(`${b}/api/v1/routes/web`, { headers: auth })).json() as { versions?: Array<{ name: string; weight: number }> }
    seen = Object.fromEntries((route.versions ?? []).map((v) => [v.name, v.weight]))
    if (JSON.stringify(seen) === JSON.stringify({ stable: 80, canary: 20 })) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.same(seen, { stable: 80, canary: 20 }, `${pods[1]!.name} serves the change`)
  const fleetView = await (await fetch(`${b}/api/v1/fleet`, { headers: auth })).json() as Record<string, any>
  t.equal(fleetView.store, 'redis')
  t.equal(fleetView.self, pods[1]!.name, 'the instance id is the pod name')
  t.same((fleetView.instances as Array<{ id: string }> | undefined)?.map((i) => i.id).sort(), pods.map((p) => p.name).sort(), 'both pods are in the fleet')
  // the local snapshot lands on the emptyDir of the pod
  const stateFile = pods[0]!.env.CANARYD_STATE_FILE!
  const snapshot = pods[0]!.fs.hostPath(snapshotPath(stateFile))
  const until = Date.now() + 5000
  while (!existsSync(snapshot) && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 50))
  t.ok(existsSync(snapshot), `the local snapshot ${snapshotPath(stateFile)} is written on the emptyDir`)
})
