/**
 * The Prometheus metric provider: one instant query (GET /api/v1/query,
 * evaluated at the server's "now") against any Prometheus-compatible API
 * (Prometheus, Thanos, Mimir, VictoriaMetrics), reduced to one number.
 */
import type { PrometheusProviderSpec } from '../config/plan.js'
import { askProvider, DECIMAL, MAX_JSON_DEPTH, nestedDeeper, type ProviderAnswer, type ProviderRequest } from './provider-http.js'

/** How reasons name a Prometheus provider. */
export function prometheusLabel (p: PrometheusProviderSpec): string {
  return `Prometheus at ${p.address}`
}

/** The instant-query URL of `query` (a path prefix of the address is kept). */
export function prometheusQueryUrl (address: string, query: string): string {
  return `${address.replace(/\/+$/, '')}/api/v1/query?query=${encodeURIComponent(query)}`
}

/** One sample's value as Prometheus writes it: a number as a string, or NaN, +Inf, -Inf. */
function sampleValue (sample: unknown): ProviderAnswer {
  const raw = Array.isArray(sample) ? sample[1] : undefined
  if (typeof raw !== 'string') return { error: 'Prometheus answered a sample without a value' }
  // Prometheus writes NaN, +Inf, -Inf or a decimal; Number() would also take "", " " (0) and "0x10" (16)
  if (!DECIMAL.test(raw)) return /^[-+]?(NaN|Inf|Infinity)$/.test(raw) ? { noData: `value is ${raw}` } : { error: `Prometheus answered a value that is not a number: ${JSON.stringify(raw.slice(0, 40))}` }
  const v = Number(raw)
  // 0/0 (a version without traffic) is NaN: no data, not a bad canary
  if (!Number.isFinite(v)) return { noData: `value is ${raw}` }
  return { value: v }
}

/**
 * The one number of a successful /api/v1/query answer: a scalar, or a vector
 * of exactly one sample. An empty vector or several series is no data (the
 * query did not pin one figure); other result types are an error.
 */
export function readPrometheusAnswer (body: unknown): ProviderAnswer {
  const data = (body as { data?: { resultType?: unknown; result?: unknown } } | null)?.data
  const result = data?.result
  switch (data?.resultType) {
    case 'scalar':
      return sampleValue(result)
    case 'vector': {
      if (!Array.isArray(result)) break
      if (result.length === 0) return { noData: 'empty result (no series)' }
      if (result.length > 1) return { noData: `query returned ${result.length} series; aggregate it to one (e.g. sum(...))` }
      return sampleValue((result[0] as { value?: unknown } | undefined)?.value)
    }
    case 'matrix':
      return { error: 'query returned a range vector; ask for an instant value (e.g. rate(x[{{interval}}]) rather than x[{{interval}}])' }
    case 'string':
      return { error: 'query returned a string, not a number' }
  }
  return { error: 'Prometheus answered an unexpected body (no data.resultType)' }
}

/** Runs `query` (already rendered) on the provider. Never rejects. */
export async function queryPrometheus (p: PrometheusProviderSpec, query: string, signal: AbortSignal, env: NodeJS.ProcessEnv): Promise<ProviderAnswer> {
  const what = prometheusLabel(p)
  const r: ProviderRequest = { url: prometheusQueryUrl(p.address, query), method: 'GET', timeoutMs: p.timeoutMs, signal, env, what }
  if (p.headers !== undefined) r.headers = p.headers
  if (p.auth !== undefined) r.auth = p.auth
  return await askProvider(r, (res) => {
    let body: { status?: unknown; errorType?: unknown; error?: unknown } | undefined
    // an answer is a few levels deep; a hostile one nested a million deep would hold the event loop
    if (nestedDeeper(res.text, MAX_JSON_DEPTH)) return { error: `${what} answered JSON nested deeper than ${MAX_JSON_DEPTH} levels` }
    try {
      body = JSON.parse(res.text) as typeof body
    } catch {}
    // a bad query is 400/422 with {"status":"error","errorType":"bad_data","error":"parse error …"}: say what Prometheus said
    if (body?.status === 'error') return { error: `${what} answered ${res.status}: ${String(body.errorType)}: ${String(body.error)}` }
    if (res.status < 200 || res.status > 299) return { error: `${what} answered ${res.status}` }
    if (body === undefined) return { error: `${what} answered ${res.status} with a body that is not JSON` }
    return readPrometheusAnswer(body)
  })
}
