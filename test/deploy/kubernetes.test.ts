import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, posix } from 'node:path'
import t, { type Test } from 'tap'
import { parse } from 'yaml'
import { configFromObject } from '../../src/config/load.js'
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
  for (const f of ['kubernetes/statefulset.yaml', 'README.md']) {
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
  // every manifest in the directory is one that a test here reads
  t.same(readdirSync(new URL('../../deploy/kubernetes/', import.meta.url)).sort(), ['configmap.yaml', 'service-headless.yaml', 'service.yaml', 'statefulset.yaml'])
  t.ok(existsSync(join(repoRoot, 'dist', 'cli.js')), 'dist/cli.js is built (npm run build)')
})
