import type { IncomingHttpHeaders } from 'node:http'

/**
 * Finds one cookie's value in a `Cookie` header without building a map of all
 * cookies: the hot path asks for at most two names, so a scan is cheaper than
 * parsing. Returns '' when the cookie is absent or empty. Values are returned
 * raw (no percent-decoding), so the same bytes always give the same key.
 */
export function findCookie (header: string | undefined, name: string): string {
  if (header === undefined || header.length === 0) return ''
  const n = name.length
  let i = 0
  const len = header.length
  while (i < len) {
    // skip spaces before the name
    while (i < len && (header.charCodeAt(i) === 32 || header.charCodeAt(i) === 9)) i++
    const end = header.indexOf(';', i)
    const stop = end === -1 ? len : end
    if (header.startsWith(name, i) && header.charCodeAt(i + n) === 61 /* = */ && i + n < stop) {
      let vs = i + n + 1
      let ve = stop
      while (ve > vs && (header.charCodeAt(ve - 1) === 32 || header.charCodeAt(ve - 1) === 9)) ve--
      if (ve - vs >= 2 && header.charCodeAt(vs) === 34 && header.charCodeAt(ve - 1) === 34) { vs++; ve-- }
      return header.slice(vs, ve)
    }
    i = stop + 1
  }
  return ''
}

/**
 * One header's value as a string: a repeated header is its values joined
 * with ", "; '' when absent. Node's header object has a prototype, so a name
 * like `constructor` read through it is a function, not a value: only
 * strings and arrays count.
 */
export function headerValue (headers: IncomingHttpHeaders, name: string): string {
  const h = headers[name]
  return typeof h === 'string' ? h : Array.isArray(h) ? h.join(', ') : ''
}

/** Finds one query parameter's raw value in a request target; '' when absent. */
export function findQuery (url: string, name: string): string {
  const q = url.indexOf('?')
  if (q === -1) return ''
  const n = name.length
  let i = q + 1
  // a fragment (never sent by clients, but possible in a raw target) ends the query: found once, not per parameter
  const hash = url.indexOf('#', q)
  const len = hash === -1 ? url.length : hash
  while (i < len) {
    let stop = url.indexOf('&', i)
    if (stop === -1 || stop > len) stop = len
    if (url.startsWith(name, i) && url.charCodeAt(i + n) === 61 /* = */ && i + n < stop) {
      return url.slice(i + n + 1, stop)
    }
    i = stop + 1
  }
  return ''
}
