import { parseExposition, type Exposition, type Sample } from '../../src/metrics/exposition.js'
import type { TestProxy } from '../helpers/proxy.js'

/** `GET {adminUrl}/metrics` of a running test proxy, over real HTTP. */
export async function scrapeText (proxy: TestProxy): Promise<{ text: string; contentType: string }> {
  const res = await fetch(`${proxy.adminUrl}/metrics`)
  const text = await res.text()
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status} ${text}`)
  return { text, contentType: res.headers.get('content-type') ?? '' }
}

/** Parsed exposition of a running test proxy. */
export async function scrape (proxy: TestProxy): Promise<Exposition> {
  return parseExposition((await scrapeText(proxy)).text)
}

/** Sum of the samples named `name` whose labels include `labels` (0 when none). */
export function sum (e: Exposition, name: string, labels: Record<string, string> = {}): number {
  let n = 0
  for (const s of e.samples) if (matches(s, name, labels)) n += s.value
  return n
}

/** True when some sample named `name` has `labels`. */
export function has (e: Exposition, name: string, labels: Record<string, string> = {}): boolean {
  return e.samples.some((s) => matches(s, name, labels))
}

function matches (s: Sample, name: string, labels: Record<string, string>): boolean {
  if (s.name !== name) return false
  for (const k in labels) if (s.labels[k] !== labels[k]) return false
  return true
}
