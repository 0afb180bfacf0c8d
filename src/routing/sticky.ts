import type { IncomingHttpHeaders } from 'node:http'
import { findCookie, findQuery, headerValue } from './cookie.js'
import { KeyKind, type KeySource, type Route, type Version } from './types.js'

/**
 * Reads the sticky key of a request: the first configured source that is
 * present and non-empty, the route's sticky cookie last. Returns '' when none
 * is present (the caller then mints an id and sets the cookie).
 * Pure: takes the parsed request parts, never a socket.
 */
export function readStickyKey (route: Route, headers: IncomingHttpHeaders, url: string, ip: string): string {
  const keys: readonly KeySource[] = route.keys
  for (let i = 0; i < keys.length; i++) {
    const src = keys[i]!
    let v: string
    switch (src.kind) {
      case KeyKind.Header:
        v = headerValue(headers, src.name)
        break
      case KeyKind.Cookie:
        v = findCookie(headers.cookie, src.name)
        break
      case KeyKind.Query:
        v = findQuery(url, src.name)
        break
      default:
        v = ip
    }
    if (v.length !== 0) return v
  }
  return ''
}

/**
 * The version forced by the override header or cookie (header first), or
 * undefined. An unknown version name is ignored, so a stale tester cookie
 * falls back to the sticky pick instead of failing.
 */
export function readOverride (route: Route, headers: IncomingHttpHeaders): Version | undefined {
  if (route.overrideHeader !== '') {
    const h = headers[route.overrideHeader]
    if (typeof h === 'string' && h.length !== 0) {
      const v = route.versionByName.get(h)
      if (v !== undefined) return v
    }
  }
  if (route.overrideCookie !== '') {
    const c = findCookie(headers.cookie, route.overrideCookie)
    if (c.length !== 0) return route.versionByName.get(c)
  }
  return undefined
}

/** The Set-Cookie value that pins an anonymous client to its sticky id. */
export function stickyCookieHeader (route: Route, id: string, secure: boolean): string {
  return route.cookie.prefix + id + (secure ? route.cookie.attributesSecure : route.cookie.attributes)
}
