/**
 * DOM and formatting helpers. Every text the API returns (route names,
 * reasons, messages) reaches the page through textContent or an attribute,
 * never as HTML: a reason typed by an operator cannot become markup.
 */

/** What h() accepts as attributes: values become attributes, `on<event>` functions listeners. */
export type Attrs = Record<string, string | number | boolean | null | undefined | ((ev: Event) => void)>

/** A child of h(): nodes as they are, strings and numbers as text; null, undefined and false are skipped. */
export type Child = Node | string | number | null | undefined | false

/**
 * Creates an element. `class` sets className; `true` sets a bare attribute
 * (`disabled`), false/null/undefined leave it out. There is deliberately no
 * way to set innerHTML or a style attribute (the CSP refuses the latter).
 */
export function h<K extends keyof HTMLElementTagNameMap> (tag: K, attrs?: Attrs | null, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (typeof v === 'function') el.addEventListener(k.slice(2), v)
    else if (k === 'class') el.className = String(v ?? '')
    else if (v === true) el.setAttribute(k, '')
    else if (v !== false && v !== null && v !== undefined) el.setAttribute(k, String(v))
  }
  append(el, children)
  return el
}

/** Appends children as h() does. */
export function append (el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue
    el.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)))
  }
}

/** Replaces an element's children. */
export function fill (el: Element, ...children: Child[]): void {
  el.replaceChildren()
  append(el, children)
}

/** A table with a header row and one row per entry, inside a box that scrolls sideways on a narrow screen. */
export function table (head: string[], rows: Child[][], attrs?: Attrs): HTMLDivElement {
  return h('div', { class: 'scroll' },
    h('table', attrs ?? null,
      h('thead', null, h('tr', null, ...head.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, ...rows.map((r) => h('tr', null, ...r.map((c) => h('td', null, c)))))))
}

const pad = (n: number): string => String(n).padStart(2, '0')

/** Local wall-clock time with seconds, `HH:MM:SS`. */
export function clock (t: number | string): string {
  const d = new Date(t)
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
}

/** Local date and time with seconds, `YYYY-MM-DD HH:MM:SS`; the ISO text itself goes in a title for exactness. */
export function when (t: number | string | null | undefined): HTMLTimeElement | string {
  if (t === null || t === undefined) return '–'
  const d = new Date(t)
  if (Number.isNaN(d.getTime())) return String(t)
  return h('time', { datetime: d.toISOString(), title: d.toISOString() },
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d.getTime())}`)
}

/** A number with fixed decimals, `–` when there is none (a version with no responses has no latency). */
export function num (v: number | null | undefined, digits = 1): string {
  return typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '–'
}

/** A weight as the API has it (up to 4 decimals), without trailing zeros: `12.5`. */
export function weightNum (v: number): string {
  return String(Number(v.toFixed(4)))
}

/** A weight as a percentage, `12.5%`; '–' without one. */
export function pct (v: number | null | undefined): string {
  return typeof v === 'number' ? `${weightNum(v)}%` : '–'
}

/** How long ago, `12 s ago` / `3 min ago`, from a timestamp and now. */
export function ago (t: number | string, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - new Date(t).getTime()) / 1000))
  if (s < 120) return `${s} s ago`
  if (s < 7200) return `${Math.round(s / 60)} min ago`
  return `${Math.round(s / 3600)} h ago`
}

/** `stable 90→80, canary 10→20`: a weight change in one line (versions in the order of `next`). */
export function weightChange (prev: Record<string, number> | null | undefined, next: Record<string, number>): string {
  return Object.entries(next).map(([v, w]) => `${v} ${prev?.[v] ?? '?'}→${weightNum(w)}`).join(', ')
}

/**
 * `obj[key]` when `obj` has it itself: a route named `constructor` or `toString`
 * (valid names) must not find Object's own members through the prototype.
 */
export function own<T> (obj: Readonly<Record<string, T>> | undefined | null, key: string): T | undefined {
  return obj !== undefined && obj !== null && Object.hasOwn(obj, key) ? obj[key] : undefined
}

/** True for a plain object (API answers are checked before use, never trusted to have a shape). */
export function isObj (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}
