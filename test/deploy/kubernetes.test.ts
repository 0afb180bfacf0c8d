import { readFileSync } from 'node:fs'
import t from 'tap'
import { parse } from 'yaml'
import { configFromObject } from '../../src/config/load.js'

const read = (f: string): Record<string, any> => parse(readFileSync(new URL(`../../deploy/kubernetes/${f}`, import.meta.url), 'utf8')) as Record<string, any>

t.test('Deployment: liveness /healthz and readiness /readyz on the admin port 9901, scrape annotations', async (t) => {
  const d = read('deployment.yaml')
  t.equal(d.kind, 'Deployment')
  const pod = d.spec.template
  t.same(pod.metadata.annotations, { 'prometheus.io/scrape': 'true', 'prometheus.io/port': '9901', 'prometheus.io/path': '/metrics' })
  const c = pod.spec.containers[0]
  const admin = c.ports.find((p: { name: string }) => p.name === 'admin')
  t.equal(admin.containerPort, 9901)
  t.same(c.livenessProbe.httpGet, { path: '/healthz', port: 'admin' })
  t.same(c.readinessProbe.httpGet, { path: '/readyz', port: 'admin' })
  t.ok(c.env.some((e: any) => e.name === 'CANARYD_ADMIN_TOKEN' && e.valueFrom.secretKeyRef.name === 'canaryd-admin'), 'admin token from a Secret')
  t.same(d.spec.selector.matchLabels, pod.metadata.labels, 'selector matches the pod labels')
  const cfgMount = c.volumeMounts.find((m: any) => m.name === 'config')
  t.ok(c.args.includes(`${cfgMount.mountPath}/canaryd.yaml`), 'serves the ConfigMap file')
})

t.test('ConfigMap: a valid canaryd config whose admin listens where the probes look', async (t) => {
  const cm = read('configmap.yaml')
  const text = cm.data['canaryd.yaml'] as string
  const config = configFromObject(parse(text), 'configmap', { CANARYD_ADMIN_TOKEN: 'x'.repeat(32) })
  t.equal(config.admin.port, 9901)
  t.equal(config.admin.host, '0.0.0.0', 'reachable by the kubelet and Prometheus')
  t.equal(config.listen.port, 8080)
  t.ok(config.timeouts.drainTimeoutMs / 1000 + 5 < read('deployment.yaml').spec.template.spec.terminationGracePeriodSeconds, 'drain + preStop fit in the grace period')
  const dep = read('deployment.yaml')
  t.equal(dep.spec.template.spec.volumes.find((v: any) => v.name === 'config').configMap.name, cm.metadata.name)
})

t.test('Service: proxy and admin ports, scrape annotations, selects the Deployment\'s pods', async (t) => {
  const s = read('service.yaml')
  t.equal(s.kind, 'Service')
  t.same(s.spec.selector, read('deployment.yaml').spec.template.metadata.labels)
  t.same(s.spec.ports.map((p: any) => [p.name, p.port, p.targetPort]), [['http', 80, 'http'], ['admin', 9901, 'admin']])
  t.equal(s.metadata.annotations['prometheus.io/port'], '9901')
})
