import { readFileSync } from 'node:fs'
import t from 'tap'
import { send } from '../helpers/http.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'

const METHODS = ['get', 'put', 'post', 'delete', 'patch']

t.test('the OpenAPI document and the router list the same paths and methods', async (t) => {
  const p = await startProxy(testConfig([twoVersionRoute('http://127.0.0.1:9', 'http://127.0.0.1:9')]))
  t.teardown(p.close)
  const file = JSON.parse(readFileSync(new URL('../../src/admin/openapi.json', import.meta.url), 'utf8')) as { openapi: string; paths: Record<string, Record<string, unknown>> }
  t.match(file.openapi, /^3\./)
  const fromDoc = Object.entries(file.paths).flatMap(([path, item]) => Object.keys(item).filter((k) => METHODS.includes(k)).map((m) => `${m.toUpperCase()} ${path}`)).sort()
  const fromRouter = p.app.admin.router.list().map((r) => `${r.method} ${r.pattern}`).sort()
  t.ok(fromRouter.length >= 8, 'the router has the built-in endpoints')
  t.same(fromDoc, fromRouter, 'every documented operation is routed and every route is documented')
  const served = await send(`${p.adminUrl}/api/v1/openapi.json`)
  t.equal(served.status, 200)
  t.same(served.json(), file, 'the served document is the one in the repo')
})
