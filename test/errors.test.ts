import t from 'tap'
import { CanarydError, createError, ERROR_CODES, errorMessage, isRefusal, type ErrorCode } from '../src/errors.js'

t.test('createError fills the registry template: one wording per code', async (t) => {
  const e = createError('CANARYD_ERR_ROUTE_NOT_FOUND', { route: '"nope"', routes: 'web, api' })
  t.ok(e instanceof CanarydError)
  t.equal(e.code, 'CANARYD_ERR_ROUTE_NOT_FOUND')
  t.equal(e.status, 404, 'status from the registry')
  t.equal(e.message, 'no route named "nope" (routes: web, api)')
  t.same(e.toJSON(), { error: { code: 'CANARYD_ERR_ROUTE_NOT_FOUND', message: 'no route named "nope" (routes: web, api)' } })
  t.equal(createError('CANARYD_ERR_NO_ROLLOUT', { route: 'web' }).message, 'route web has no rollout')
  t.equal(createError('CANARYD_ERR_UPSTREAM_TLS').message, 'the TLS handshake with the upstream failed', 'a template without placeholders is the message')
  t.equal(createError('CANARYD_ERR_INVALID_BODY').message, 'CANARYD_ERR_INVALID_BODY', 'a code without a message falls back to the code')
})

t.test('registry: refusals are the 4xx/501 answers that end a connection', async (t) => {
  for (const [code, e] of Object.entries(ERROR_CODES) as Array<[ErrorCode, { status: number }]>) {
    if (!isRefusal(code)) continue
    t.ok((e.status >= 400 && e.status < 500 && e.status !== 404) || e.status === 501, `${code} (${e.status}) is a refusal status`)
    t.not(errorMessage(code), code, `${code} has a message for its JSON body`)
    t.notMatch(errorMessage(code), /\{[a-zA-Z]+\}/, `${code}: proxy bodies are built once, so no placeholders`)
  }
  t.notOk(isRefusal('CANARYD_ERR_NO_ROUTE'), 'a 404 keeps the connection')
  t.notOk(isRefusal('CANARYD_ERR_UPSTREAM_OVERLOADED'), 'a 503 keeps the connection')
})
