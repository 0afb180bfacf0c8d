/**
 * Issue 17, the plan's new analysis keys (analysis.metrics, .variables,
 * .loadTest, judge "sequential"): each bad input is a 400 PlanError naming
 * the key; the defaults; a normalised plan validates again unchanged; and
 * secrets are never part of the plan nor of an error message.
 */
import t from 'tap'
import { ANALYSIS_DEFAULTS } from '../../src/config/analysis.js'
import { PlanError, validatePlan } from '../../src/config/plan.js'

const VERSIONS = ['stable', 'canary', 'blue']
const CTX = { override: true }

/** A valid prometheus metric to vary. */
const PROM = { name: 'order-success', provider: { type: 'prometheus', address: 'http://prometheus:9090' }, query: 'sum(rate(orders_ok_total{version="{{version}}"}[{{interval}}]))', thresholdRange: { min: 0.98 } }
/** A valid http metric to vary. */
const HTTP = { name: 'checkout-api', provider: { type: 'http', url: 'http://metrics.internal/score?version={{version}}', jsonPath: '$.score' }, thresholdRange: { min: 90 } }

function withAnalysis (analysis: Record<string, unknown>): Record<string, unknown> {
  return { canary: 'canary', steps: [10, 50], analysis }
}

/** Problems of the plan (with `analysis`) on a route with versions stable, canary, blue and an override; [] when valid. */
function problemsOf (analysis: Record<string, unknown>, ctx: { override?: boolean } = CTX): string[] {
  try {
    validatePlan(withAnalysis(analysis), VERSIONS, ctx)
    return []
  } catch (err) {
    if (!(err instanceof PlanError)) throw err
    return err.problems
  }
}

/** A metric: PROM with `over` merged in (keys set to undefined are removed). */
function prom (over: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries({ ...PROM, ...over }).filter(([, v]) => v !== undefined))
}
function promProvider (over: Record<string, unknown>): Record<string, unknown> {
  return prom({ provider: { ...PROM.provider, ...over } })
}
function http (over: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries({ ...HTTP, ...over }).filter(([, v]) => v !== undefined))
}
function httpProvider (over: Record<string, unknown>): Record<string, unknown> {
  return http({ provider: Object.fromEntries(Object.entries({ ...HTTP.provider, ...over }).filter(([, v]) => v !== undefined)) })
}
function loadTest (over: Record<string, unknown>): Record<string, unknown> {
  return { loadTest: Object.fromEntries(Object.entries({ rps: 20, ...over }).filter(([, v]) => v !== undefined)) }
}

const M0 = 'analysis.metrics[0]'
const P0 = `${M0}.provider`
const LT = 'analysis.loadTest'

/** [what, analysis block, the key the problem must name (the start of one problem line)]. */
const BAD: Array<[string, Record<string, unknown>, string]> = [
  // metrics
  ['metrics not an array', { metrics: { a: 1 } }, 'analysis.metrics: must be an array'],
  ['21 metrics', { metrics: Array.from({ length: ANALYSIS_DEFAULTS.maxMetrics + 1 }, (_, i) => prom({ name: `m${i}` })) }, 'analysis.metrics: at most 20'],
  ['a metric not an object', { metrics: ['x'] }, `${M0}: `],
  ['unknown metric key', { metrics: [prom({ bogus: 1 })] }, `${M0}.bogus: unknown key`],
  ['name missing', { metrics: [prom({ name: undefined })] }, `${M0}.name: `],
  ['name with a space', { metrics: [prom({ name: 'order success' })] }, `${M0}.name: `],
  ['name starting with -', { metrics: [prom({ name: '-x' })] }, `${M0}.name: `],
  ['name of 64 characters', { metrics: [prom({ name: 'a'.repeat(64) })] }, `${M0}.name: `],
  ['name used twice', { metrics: [PROM, prom({})] }, 'analysis.metrics[1].name: "order-success" is used twice'],
  ['provider missing', { metrics: [prom({ provider: undefined })] }, `${P0}: `],
  ['provider type unknown', { metrics: [prom({ provider: { type: 'influx', address: 'http://x' } })] }, `${P0}.type: `],
  ['prometheus address missing', { metrics: [prom({ provider: { type: 'prometheus' } })] }, `${P0}.address: `],
  ['prometheus address ftp', { metrics: [promProvider({ address: 'ftp://prometheus' })] }, `${P0}.address: `],
  ['prometheus address not a URL', { metrics: [promProvider({ address: 'prometheus:9090 x' })] }, `${P0}.address: `],
  ['prometheus address with credentials', { metrics: [promProvider({ address: 'http://u:p@prometheus:9090' })] }, `${P0}.address: must not carry credentials`],
  ['prometheus with a url', { metrics: [promProvider({ url: 'http://x' })] }, `${P0}.url: unknown key`],
  ['timeoutMs below 100', { metrics: [promProvider({ timeoutMs: 99 })] }, `${P0}.timeoutMs: `],
  ['timeoutMs above 60000', { metrics: [promProvider({ timeoutMs: 60_001 })] }, `${P0}.timeoutMs: `],
  ['timeoutMs not whole', { metrics: [promProvider({ timeoutMs: 150.5 })] }, `${P0}.timeoutMs: `],
  ['timeoutMs a string', { metrics: [promProvider({ timeoutMs: '5s' })] }, `${P0}.timeoutMs: `],
  ['headers not an object', { metrics: [promProvider({ headers: ['x'] })] }, `${P0}.headers: `],
  ['header name invalid', { metrics: [promProvider({ headers: { 'x y': '1' } })] }, `${P0}.headers.x y: `],
  ['header value with a newline', { metrics: [promProvider({ headers: { 'x-org': 'a\nb' } })] }, `${P0}.headers.x-org: `],
  ['header value not a string', { metrics: [promProvider({ headers: { 'x-org': 1 } })] }, `${P0}.headers.x-org: `],
  ['an Authorization header', { metrics: [promProvider({ headers: { Authorization: 'Bearer abc' } })] }, `${P0}.headers.Authorization: `],
  ['auth not an object', { metrics: [promProvider({ auth: 'bearer' })] }, `${P0}.auth: `],
  ['auth type unknown', { metrics: [promProvider({ auth: { type: 'oauth' } })] }, `${P0}.auth.type: `],
  ['bearer without a source', { metrics: [promProvider({ auth: { type: 'bearer' } })] }, `${P0}.auth: give exactly one of tokenEnv`],
  ['bearer with two sources', { metrics: [promProvider({ auth: { type: 'bearer', tokenEnv: 'T', tokenFile: '/t' } })] }, `${P0}.auth: give exactly one of tokenEnv`],
  ['bearer tokenEnv not a name', { metrics: [promProvider({ auth: { type: 'bearer', tokenEnv: '1TOKEN' } })] }, `${P0}.auth.tokenEnv: `],
  ['bearer tokenFile empty', { metrics: [promProvider({ auth: { type: 'bearer', tokenFile: '' } })] }, `${P0}.auth.tokenFile: `],
  ['bearer with a token', { metrics: [promProvider({ auth: { type: 'bearer', tokenEnv: 'T', token: 'abc' } })] }, `${P0}.auth.token: unknown key`],
  ['basic without username', { metrics: [promProvider({ auth: { type: 'basic', passwordEnv: 'P' } })] }, `${P0}.auth.username: `],
  ['basic username with :', { metrics: [promProvider({ auth: { type: 'basic', username: 'a:b', passwordEnv: 'P' } })] }, `${P0}.auth.username: `],
  ['basic with two sources', { metrics: [promProvider({ auth: { type: 'basic', username: 'u', passwordEnv: 'P', passwordFile: '/p' } })] }, `${P0}.auth: give exactly one of passwordEnv`],
  ['basic with a password', { metrics: [promProvider({ auth: { type: 'basic', username: 'u', passwordEnv: 'P', password: 'abc' } })] }, `${P0}.auth.password: unknown key`],
  ['prometheus query missing', { metrics: [prom({ query: undefined })] }, `${M0}.query: is required`],
  ['prometheus query blank', { metrics: [prom({ query: '  ' })] }, `${M0}.query: is required`],
  ['query with an unknown placeholder', { metrics: [prom({ query: 'up{ns="{{namespace}}"}' })] }, `${M0}.query: unknown placeholder {{namespace}}`],
  ['query with an unknown variables.x', { metrics: [prom({ query: 'up{ns="{{variables.namespace}}"}' })] }, `${M0}.query: unknown placeholder {{namespace}}`],
  ['http with a query', { metrics: [http({ query: 'up' })] }, `${M0}.query: `],
  ['http url missing', { metrics: [http({ provider: { type: 'http', jsonPath: '$.x' } })] }, `${P0}.url: `],
  ['http url ftp', { metrics: [httpProvider({ url: 'ftp://x/{{version}}' })] }, `${P0}.url: `],
  ['http url with credentials', { metrics: [httpProvider({ url: 'http://u:p@x/{{version}}' })] }, `${P0}.url: must not carry credentials`],
  ['http url with an unknown placeholder', { metrics: [httpProvider({ url: 'http://x/{{canary}}' })] }, `${P0}.url: unknown placeholder {{canary}}`],
  ['http method PUT', { metrics: [httpProvider({ method: 'PUT' })] }, `${P0}.method: `],
  ['http body with GET', { metrics: [httpProvider({ body: '{}' })] }, `${P0}.body: `],
  ['http body not a string', { metrics: [httpProvider({ method: 'POST', body: { a: 1 } })] }, `${P0}.body: `],
  ['http body with an unknown placeholder', { metrics: [httpProvider({ method: 'POST', body: '{"v": "{{ver}}"}' })] }, `${P0}.body: unknown placeholder {{ver}}`],
  ['http jsonPath missing', { metrics: [httpProvider({ jsonPath: undefined })] }, `${P0}.jsonPath: is required`],
  ['http jsonPath without $', { metrics: [httpProvider({ jsonPath: 'score' })] }, `${P0}.jsonPath: `],
  ['http unknown provider key', { metrics: [httpProvider({ address: 'http://x' })] }, `${P0}.address: unknown key`],
  ['thresholdRange not an object', { metrics: [prom({ thresholdRange: 0.98 })] }, `${M0}.thresholdRange: `],
  ['thresholdRange empty', { metrics: [prom({ thresholdRange: {} })] }, `${M0}.thresholdRange: needs min, max or both`],
  ['thresholdRange min a string', { metrics: [prom({ thresholdRange: { min: '0.9' } })] }, `${M0}.thresholdRange.min: `],
  ['thresholdRange max not finite', { metrics: [prom({ thresholdRange: { max: null } })] }, `${M0}.thresholdRange.max: `],
  ['thresholdRange min above max', { metrics: [prom({ thresholdRange: { min: 2, max: 1 } })] }, `${M0}.thresholdRange: min (2) is above max (1)`],
  ['thresholdRange unknown key', { metrics: [prom({ thresholdRange: { low: 1 } })] }, `${M0}.thresholdRange.low: unknown key`],
  ['compare not an object', { metrics: [prom({ compare: 'stable' })] }, `${M0}.compare: `],
  ['compare without maxRatio', { metrics: [prom({ compare: { baseline: 'stable' } })] }, `${M0}.compare.maxRatio: `],
  ['compare maxRatio below 1', { metrics: [prom({ compare: { maxRatio: 0.95 } })] }, `${M0}.compare.maxRatio: must be >= 1`],
  ['compare direction unknown', { metrics: [prom({ compare: { maxRatio: 1.1, direction: 'up' } })] }, `${M0}.compare.direction: `],
  ['compare baseline not a version', { metrics: [prom({ compare: { maxRatio: 1.1, baseline: 'green' } })] }, `${M0}.compare.baseline: "green" is not a version of the route`],
  ['compare baseline not a string', { metrics: [prom({ compare: { maxRatio: 1.1, baseline: 3 } })] }, `${M0}.compare.baseline: `],
  ['compare unknown key', { metrics: [prom({ compare: { maxRatio: 1.1, ratio: 2 } })] }, `${M0}.compare.ratio: unknown key`],
  ['neither thresholdRange nor compare', { metrics: [prom({ thresholdRange: undefined })] }, `${M0}: needs thresholdRange, compare or both`],
  ['failOnNoData a string', { metrics: [prom({ failOnNoData: 'yes' })] }, `${M0}.failOnNoData: `],
  // variables
  ['variables not an object', { variables: ['ns'] }, 'analysis.variables: '],
  ['variable name with a dash', { variables: { 'name-space': 'x' } }, 'analysis.variables.name-space: '],
  ['variable name starting with a digit', { variables: { '1ns': 'x' } }, 'analysis.variables.1ns: '],
  ['variable named like a built-in', { variables: { version: 'x' } }, 'analysis.variables.version: is a built-in'],
  ['variable named variables', { variables: { variables: 'x' } }, 'analysis.variables.variables: '],
  ['variable not a string', { variables: { ns: 3 } }, 'analysis.variables.ns: must be a string'],
  ['51 variables', { variables: Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`v${i}`, 'x'])) }, 'analysis.variables: at most 50'],
  // loadTest
  ['loadTest not an object', { loadTest: 20 }, `${LT}: `],
  ['loadTest unknown key', loadTest({ concurrency: 3 }), `${LT}.concurrency: unknown key`],
  ['loadTest rps missing', loadTest({ rps: undefined }), `${LT}.rps: `],
  ['loadTest rps 0', loadTest({ rps: 0 }), `${LT}.rps: `],
  ['loadTest rps negative', loadTest({ rps: -5 }), `${LT}.rps: `],
  ['loadTest rps above 1000', loadTest({ rps: 1001 }), `${LT}.rps: `],
  ['loadTest rps a string', loadTest({ rps: '20' }), `${LT}.rps: `],
  ['loadTest paths empty', loadTest({ paths: [] }), `${LT}.paths: `],
  ['loadTest path without /', loadTest({ paths: ['api'] }), `${LT}.paths: `],
  ['loadTest path with a space', loadTest({ paths: ['/a b'] }), `${LT}.paths: `],
  ['loadTest 51 paths', loadTest({ paths: Array.from({ length: 51 }, (_, i) => `/p${i}`) }), `${LT}.paths: `],
  ['loadTest paths a string', loadTest({ paths: '/' }), `${LT}.paths: `],
  ['loadTest method POST', loadTest({ method: 'POST' }), `${LT}.method: `],
  ['loadTest header name invalid', loadTest({ headers: { 'a b': '1' } }), `${LT}.headers.a b: `],
  ['loadTest users 0', loadTest({ users: 0 }), `${LT}.users: `],
  ['loadTest users above 100000', loadTest({ users: 100_001 }), `${LT}.users: `],
  ['loadTest users not whole', loadTest({ users: 2.5 }), `${LT}.users: `],
  ['loadTest versions empty', loadTest({ versions: [] }), `${LT}.versions: `],
  ['loadTest versions not a version', loadTest({ versions: ['canary', 'green'] }), `${LT}.versions: "green" is not`],
  ['loadTest versions not strings', loadTest({ versions: [1] }), `${LT}.versions: `],
  ['loadTest includeInAnalysis a string', loadTest({ includeInAnalysis: 'yes' }), `${LT}.includeInAnalysis: `],
  ['loadTest timeoutMs 99', loadTest({ timeoutMs: 99 }), `${LT}.timeoutMs: `],
  ['loadTest timeoutMs above 60000', loadTest({ timeoutMs: 60_001 }), `${LT}.timeoutMs: `],
  // judge
  ['judge unknown', { baseline: { judge: 'bayes' } }, 'analysis.baseline.judge: ']
]

t.test('every bad new key: a 400 PlanError whose problem names the key', async (t) => {
  for (const [what, analysis, key] of BAD) {
    let err: unknown
    try {
      validatePlan(withAnalysis(analysis), VERSIONS, CTX)
    } catch (e) {
      err = e
    }
    if (!(err instanceof PlanError)) {
      t.fail(`${what}: expected a PlanError, got ${err === undefined ? 'a valid plan' : String(err)}`)
      continue
    }
    t.equal(err.status, 400, `${what}: status 400`)
    t.equal(err.code, 'CANARYD_ERR_INVALID_PLAN')
    t.ok(err.problems.some((p) => p.startsWith(key)), `${what}: a problem starts with ${JSON.stringify(key)}: ${JSON.stringify(err.problems)}`)
    t.match(err.message, key.replace(/: .*$/, ''), `${what}: the message names the key`)
  }
})

t.test('a load test needs an override on the route', async (t) => {
  t.same(problemsOf(loadTest({}), { override: true }), [], 'with an override: valid')
  t.same(problemsOf(loadTest({}), {}), [], 'route unknown (config-time plan): not checked here')
  const problems = problemsOf(loadTest({}), { override: false })
  t.equal(problems.length, 1)
  t.match(problems[0], /^analysis\.loadTest: the route has no override header or cookie/)
})

t.test('several problems are reported at once', async (t) => {
  const problems = problemsOf({ metrics: [prom({ name: 'a b', thresholdRange: { min: 2, max: 1 } }), httpProvider({ jsonPath: 'x' })], variables: { route: 'r' }, loadTest: { rps: 0 } })
  t.same(problems.map((p) => p.split(':')[0]), [
    'analysis.variables.route',
    'analysis.metrics[0].name',
    'analysis.metrics[0].thresholdRange',
    'analysis.metrics[1].provider.jsonPath',
    'analysis.loadTest.rps'
  ], JSON.stringify(problems))
})

t.test('defaults of the new keys', async (t) => {
  const plan = validatePlan(withAnalysis({
    metrics: [
      prom({ provider: { type: 'prometheus', address: 'http://prometheus:9090/' }, compare: { maxRatio: 1.05 } }),
      http({}),
      prom({ name: 'thanos', provider: { type: 'prometheus', address: 'https://thanos.internal/prom/', headers: {} } })
    ],
    loadTest: { rps: 20 }
  }), VERSIONS, CTX)
  const [p, h, th] = plan.analysis.metrics!
  t.same(p, {
    name: 'order-success',
    provider: { type: 'prometheus', address: 'http://prometheus:9090', timeoutMs: 5000 },
    query: PROM.query,
    thresholdRange: { min: 0.98 },
    compare: { baseline: 'stable', maxRatio: 1.05, direction: 'lower-is-worse' },
    failOnNoData: false
  }, 'prometheus: timeoutMs 5000, the address without its trailing /, compare baseline stable and lower-is-worse, failOnNoData false')
  t.same(h, {
    name: 'checkout-api',
    provider: { type: 'http', url: HTTP.provider.url, method: 'GET', jsonPath: '$.score', timeoutMs: 5000 },
    thresholdRange: { min: 90 },
    failOnNoData: false
  }, 'http: method GET, timeoutMs 5000')
  t.equal(th?.provider.type === 'prometheus' ? th.provider.address : '', 'https://thanos.internal/prom', 'a path prefix is kept')
  t.notOk('headers' in th!.provider, 'empty headers are not kept')
  t.same(plan.analysis.loadTest, { rps: 20, paths: ['/'], method: 'GET', headers: {}, users: 100, versions: ['canary', 'stable'], includeInAnalysis: false, timeoutMs: 5000 })
  t.equal(plan.analysis.baseline.judge, 'mann-whitney', 'the judge is still mann-whitney by default')

  const bare = validatePlan(withAnalysis({ metrics: [], variables: {} }), VERSIONS, CTX)
  t.notOk('metrics' in bare.analysis, 'no metrics: no key')
  t.notOk('variables' in bare.analysis, 'no variables: no key')
  t.notOk('loadTest' in bare.analysis, 'no load test: no key')
  t.equal(validatePlan(withAnalysis({ baseline: { judge: 'sequential' } }), VERSIONS, CTX).analysis.baseline.judge, 'sequential', 'judge sequential is accepted')
})

t.test('templates: built-ins, user variables in both spellings, whitespace inside braces', async (t) => {
  const plan = validatePlan(withAnalysis({
    variables: { namespace: 'shop', _x1: 'y' },
    metrics: [
      prom({ query: 'sum(rate(http{ns="{{ namespace }}",v="{{version}}",r="{{route}}",s="{{step}}",w="{{ weight }}"}[{{interval}}])) + {{variables.namespace}} + {{ variables._x1 }}' }),
      http({ name: 'h', provider: { type: 'http', method: 'POST', url: 'https://x/{{route}}/{{version}}?ns={{variables.namespace}}', body: '{"v": "{{version}}", "ns": "{{namespace}}"}', jsonPath: '$.v' } })
    ]
  }), VERSIONS, CTX)
  t.same(plan.analysis.variables, { namespace: 'shop', _x1: 'y' })
  t.equal(plan.analysis.metrics?.length, 2)
  t.equal(plan.analysis.metrics?.[1]?.provider.type === 'http' ? plan.analysis.metrics[1].provider.body : undefined, '{"v": "{{version}}", "ns": "{{namespace}}"}')
})

t.test('a normalised plan validates again unchanged', async (t) => {
  const raw = {
    canary: 'canary',
    steps: [5, 25, 50],
    intervalMs: 1500,
    analysis: {
      minRequests: 50,
      baseline: { judge: 'sequential' },
      variables: { namespace: 'shop' },
      metrics: [
        prom({ compare: { baseline: 'blue', maxRatio: 1.2, direction: 'higher-is-worse' }, failOnNoData: true, provider: { type: 'prometheus', address: 'http://p:9090/api/', timeoutMs: 2000, headers: { 'X-Scope-OrgID': 'shop' }, auth: { type: 'bearer', tokenFile: '/run/secrets/prom' } } }),
        httpProvider({ method: 'POST', body: '{"ns": "{{namespace}}"}', auth: { type: 'basic', username: 'canaryd', passwordEnv: 'SCORE_PASSWORD' }, timeoutMs: 700 })
      ],
      loadTest: { rps: 12.5, paths: ['/a', '/b'], method: 'HEAD', headers: { 'x-load': '1' }, users: 500, versions: ['canary', 'stable', 'blue'], includeInAnalysis: true, timeoutMs: 2000 }
    }
  }
  const once = validatePlan(raw, VERSIONS, CTX)
  const twice = validatePlan(once, VERSIONS, CTX)
  t.same(twice, once, 'idempotent')
  t.same(validatePlan(JSON.parse(JSON.stringify(once)), VERSIONS, CTX), once, 'through JSON (the state file, the admin echo) too')
  t.same(once.analysis.metrics?.[0]?.provider, { type: 'prometheus', address: 'http://p:9090/api', timeoutMs: 2000, headers: { 'X-Scope-OrgID': 'shop' }, auth: { type: 'bearer', tokenFile: '/run/secrets/prom' } })
  t.same(once.analysis.loadTest?.versions, ['canary', 'stable', 'blue'])
  const defaulted = validatePlan({ canary: 'canary', steps: [10], analysis: { metrics: [PROM, HTTP], loadTest: { rps: 1 } } }, VERSIONS, CTX)
  t.same(validatePlan(defaulted, VERSIONS, CTX), defaulted, 'a plan of defaults, idempotent')
})

t.test('secrets are never in the plan nor in an error', async (t) => {
  process.env.TEST_PLAN_TOKEN = 's3cret-env-value'
  t.teardown(() => { delete process.env.TEST_PLAN_TOKEN })
  const plan = validatePlan(withAnalysis({ metrics: [promProvider({ auth: { type: 'bearer', tokenEnv: 'TEST_PLAN_TOKEN' } })] }), VERSIONS, CTX)
  t.same(plan.analysis.metrics?.[0]?.provider.auth, { type: 'bearer', tokenEnv: 'TEST_PLAN_TOKEN' }, 'the plan holds the variable\'s name')
  t.notOk(JSON.stringify(plan).includes('s3cret-env-value'), 'not its value')

  const secret = 'hunter2-s3cret'
  const cases: Array<[string, Record<string, unknown>]> = [
    ['credentials in a prometheus address', { metrics: [promProvider({ address: `http://admin:${secret}@prometheus:9090` })] }],
    ['credentials in an invalid address', { metrics: [promProvider({ address: `http://admin:${secret}@prometheus:99999` })] }],
    ['credentials in an http url', { metrics: [httpProvider({ url: `https://admin:${secret}@x/{{version}}` })] }],
    ['an Authorization header', { metrics: [promProvider({ headers: { Authorization: `Bearer ${secret}` } })] }],
    ['an authorization header, lower case', { metrics: [httpProvider({ headers: { authorization: `Basic ${secret}` } })] }],
    ['a token in the auth block', { metrics: [promProvider({ auth: { type: 'bearer', tokenEnv: 'T', token: secret } })] }],
    ['a token where its variable\'s name goes', { metrics: [promProvider({ auth: { type: 'bearer', tokenEnv: secret } })] }],
    ['a password in the auth block', { metrics: [httpProvider({ auth: { type: 'basic', username: 'u', password: secret } })] }],
    ['a password where its variable\'s name goes', { metrics: [httpProvider({ auth: { type: 'basic', username: 'u', passwordEnv: `${secret}!` } })] }]
  ]
  for (const [what, analysis] of cases) {
    const problems = problemsOf(analysis)
    t.ok(problems.length > 0, `${what}: refused (${JSON.stringify(problems)})`)
    t.notOk(problems.join('\n').includes(secret), `${what}: the problem does not show the secret`)
  }
})

t.test('API keys in a header of their own, credentials kept out of headers, stray placeholders, invalid JSONPaths', async (t) => {
  const ok = validatePlan(withAnalysis({ metrics: [promProvider({ auth: { type: 'header', name: 'X-Api-Key', valueEnv: 'METRICS_KEY' } })], loadTest: { rps: 5, auth: { type: 'bearer', tokenFile: '/run/secrets/app-token' } } }), VERSIONS, CTX)
  t.same(ok.analysis.metrics?.[0]?.provider.auth, { type: 'header', name: 'X-Api-Key', valueEnv: 'METRICS_KEY' })
  t.same(ok.analysis.loadTest?.auth, { type: 'bearer', tokenFile: '/run/secrets/app-token' }, 'the load test carries credentials by reference too')
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['header auth without a source', { metrics: [promProvider({ auth: { type: 'header', name: 'X-Api-Key' } })] }, /^analysis\.metrics\[0\]\.provider\.auth: give exactly one of valueEnv/],
    ['header auth naming a framing header', { metrics: [promProvider({ auth: { type: 'header', name: 'Host', valueEnv: 'X' } })] }, /^analysis\.metrics\[0\]\.provider\.auth\.name: must be a header name/],
    ['an unknown auth type', { metrics: [promProvider({ auth: { type: 'oauth' } })] }, /auth\.type: must be "bearer", "basic" or "header"/],
    ['x-api-key in plain headers', { metrics: [promProvider({ headers: { 'X-Api-Key': 'k' } })] }, /headers\.X-Api-Key: put credentials in "auth"/],
    ['a cookie in plain headers', { loadTest: { rps: 5, headers: { Cookie: 'session=1' } } }, /analysis\.loadTest\.headers\.Cookie: put credentials in "auth"/],
    ['a framing header', { metrics: [promProvider({ headers: { 'Transfer-Encoding': 'chunked' } })] }, /headers\.Transfer-Encoding: is set by canaryd/],
    ['Argo\'s {{args.x}} spelling', { metrics: [prom({ query: 'up{service="{{args.service-name}}"}' })] }, /query: \{\{args\.service-name\}\} is not a placeholder/],
    ['{{constructor}} with variables present', { variables: { ns: 'shop' }, metrics: [prom({ query: 'up{x="{{constructor}}"}' })] }, /query: unknown placeholder \{\{constructor\}\}/],
    ['an invalid JSONPath', { metrics: [httpProvider({ jsonPath: '$..[' })] }, /jsonPath: is not a valid RFC 9535 JSONPath/]
  ]
  for (const [name, analysis, want] of cases) {
    const problems = problemsOf(analysis)
    t.ok(problems.some((p) => want.test(p)), `${name}: ${problems.join(' | ')}`)
  }
})

t.test('JSONPaths whose cost could outgrow a metric are refused; one descendant segment is fine', async (t) => {
  for (const jsonPath of ['$.score', '$..score', '$.items[?@.id==1].score', '$..items[?@.id==1].score', "$['a..b'].c", '$.checks.latency.score', '$.a[?@.b].c..d']) {
    t.same(problemsOf({ metrics: [httpProvider({ jsonPath })] }), [], `${jsonPath} accepted`)
  }
  for (const [jsonPath, want] of [['$..*..*', /one descendant segment \(\.\.\) at most/], ['$..a..b', /one descendant segment/], ['$..[?@..a]', /one descendant segment|inside a filter/], ['$[?@..x]', /inside a filter/], ['$.a[?@.b[?@..c]]', /inside a filter/]] as const) {
    const problems = problemsOf({ metrics: [httpProvider({ jsonPath })] })
    t.ok(problems.some((p) => p.startsWith('analysis.metrics[0].provider.jsonPath: ') && want.test(p)), `${jsonPath}: ${problems.join(' | ')}`)
  }
})

t.test('a second reader\'s findings stay fixed: own settings, dot segments, odd addresses, prototype names, the canary as its own baseline', async (t) => {
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['canaryd\'s admin token as a provider secret', { metrics: [promProvider({ auth: { type: 'bearer', tokenEnv: 'CANARYD_ADMIN_TOKEN' } })] }, /auth\.tokenEnv: CANARYD_ADMIN_TOKEN is one of canaryd's own settings/],
    ['the Redis URL as a load test secret', { loadTest: { rps: 5, auth: { type: 'header', name: 'X-K', valueEnv: 'canaryd_redis_url' } } }, /loadTest\.auth\.valueEnv: canaryd_redis_url is one of canaryd's own settings/],
    ['a dot segment', { loadTest: { rps: 5, paths: ['/api/../admin'] } }, /loadTest\.paths: .*"\." and "\.\." segments/],
    ['an encoded dot segment', { loadTest: { rps: 5, paths: ['/api/%2E%2e/admin'] } }, /loadTest\.paths/],
    ['a trailing dot segment', { loadTest: { rps: 5, paths: ['/api/.'] } }, /loadTest\.paths/],
    ['a prometheus address with a query', { metrics: [promProvider({ address: 'http://prom:9090/?x=1' })] }, /provider\.address: must be a base URL without "\?" or "#"/],
    ['a prometheus address with a fragment', { metrics: [promProvider({ address: 'http://prom:9090/#x' })] }, /provider\.address: must be a base URL/],
    ['a variable named __proto__', { variables: JSON.parse('{"__proto__": "x"}') }, /analysis\.variables\.__proto__: cannot be a variable name/],
    ['the canary as its own baseline', { metrics: [prom({ compare: { baseline: 'canary', maxRatio: 1.1 } })] }, /compare\.baseline: is the canary itself \(canary\)/]
  ]
  for (const [name, analysis, want] of cases) {
    const problems = problemsOf(analysis)
    t.ok(problems.some((p) => want.test(p)), `${name}: ${problems.join(' | ')}`)
  }
  t.same(problemsOf({ loadTest: { rps: 5, paths: ['/api/v1.2/items', '/a/.well-known/x', '/..x'] } }), [], 'dots inside a segment are fine')
})

t.test('the final reader\'s findings stay fixed: credential-like header names, backslashes, dot segments only in the path, .. after a filter, a password with a slash', async (t) => {
  for (const name of ['DD-API-KEY', 'X-Auth-Token', 'PRIVATE-TOKEN', 'X-Vault-Token', 'apikey', 'X-Session-Id', 'Set-Cookie']) {
    const problems = problemsOf({ metrics: [promProvider({ headers: { [name]: 'v' } })] })
    t.ok(problems.some((p) => p.includes(`headers.${name}: put credentials in "auth"`)), `${name} refused`)
  }
  for (const name of ['X-Tenant', 'X-Scope-OrgID', 'Accept', 'X-Monkey']) t.same(problemsOf({ metrics: [promProvider({ headers: { [name]: 'v' } })] }), [], `${name} accepted`)
  t.ok(problemsOf({ loadTest: { rps: 5, paths: ['/app\\..\\admin'] } }).some((p) => /loadTest\.paths: .*backslashes/.test(p)), 'a backslash is refused')
  t.same(problemsOf({ loadTest: { rps: 5, paths: ['/a?x=/../', '/b#/../'] } }), [], 'dots in a query or fragment are not path segments')
  t.same(problemsOf({ metrics: [httpProvider({ jsonPath: "$.items[?@.sku=='a']..price" })] }), [], '.. after a filter is linear: accepted')
  const masked = problemsOf({ metrics: [promProvider({ address: 'http://u:pa/ss@h:99999/' })] }).join(' ')
  t.notOk(masked.includes('pa/ss'), `a password with a slash is masked too: ${masked}`)
})
