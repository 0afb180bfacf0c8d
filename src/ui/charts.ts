/**
 * The live charts: one uPlot per figure (requests/s, error %, p50, p99),
 * one series per version, redrawn from the feed's samples each second.
 * Marks are drawn on the canvas by a small plugin: weight changes as dashed
 * vertical lines, rollout state changes as solid ones, checks as ticks
 * along the top coloured by verdict.
 */
import { clock, own } from './dom.js'
import type { Mark, Sample, VersionSample } from './types.js'

// uPlot comes from its IIFE (served by the admin server from the package): a global, types only here
declare const uPlot: typeof import('uplot')
type Plot = import('uplot')
type Options = import('uplot').Options

/** A chart's figure. */
export interface ChartKind {
  kind: 'rps' | 'errors' | 'p50' | 'p99'
  title: string
  field: 'rps' | 'errorPct' | 'p50Ms' | 'p99Ms'
  unit: string
  digits: number
}

/** The four charts of a route page, in their order. */
export const KINDS: readonly ChartKind[] = [
  { kind: 'rps', title: 'Requests/s', field: 'rps', unit: 'req/s', digits: 1 },
  { kind: 'errors', title: 'Error % (5xx)', field: 'errorPct', unit: '%', digits: 2 },
  { kind: 'p50', title: 'Latency p50', field: 'p50Ms', unit: 'ms', digits: 1 },
  { kind: 'p99', title: 'Latency p99', field: 'p99Ms', unit: 'ms', digits: 1 }
]

/** Colours of a check's verdict (the same in the legend, the charts and the timeline's badges). */
export const VERDICT_COLORS: Readonly<Record<string, string>> = { pass: '#16a34a', fail: '#dc2626', inconclusive: '#9ca3af' }

const STABLE = '#2f6fde'
const CANARY = '#f0780a'
/** Third and further versions: far from blue, orange and the verdict colours. */
const PALETTE = ['#8b5cf6', '#0d9488', '#db2777', '#a16207', '#64748b', '#0891b2']

/**
 * A colour per version, the same on every chart of the route: the stable
 * version blue, the canary orange, others from the palette in the route's
 * order. Which is which comes from the rollout when there is one, else from
 * the names `stable` and `canary`, else from the order.
 */
export function versionColors (versions: string[], stable?: string, canary?: string): Map<string, string> {
  const s = stable ?? (versions.includes('stable') ? 'stable' : versions.find((v) => v !== canary))
  const c = canary ?? (versions.includes('canary') ? 'canary' : versions.find((v) => v !== s))
  const out = new Map<string, string>()
  let i = 0
  for (const v of versions) out.set(v, v === s ? STABLE : v === c ? CANARY : PALETTE[i++ % PALETTE.length]!)
  return out
}

/** A colour from the style sheet's custom properties (the canvas cannot read CSS itself). */
function cssVar (name: string, fallback: string): string {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim()
  return v === '' ? fallback : v
}

/** Draws the marks of the chart's span on its canvas, after the series. */
function marksPlugin (getMarks: () => readonly Mark[], line: string): import('uplot').Plugin {
  return {
    hooks: {
      draw: (u: Plot) => {
        const { ctx } = u
        const { left, top, width, height } = u.bbox
        const px = uPlot.pxRatio
        ctx.save()
        for (const m of getMarks()) {
          const x = Math.round(u.valToPos(m.t / 1000, 'x', true))
          if (x < left || x > left + width) continue
          ctx.beginPath()
          if (m.kind === 'check') {
            ctx.fillStyle = VERDICT_COLORS[m.verdict ?? ''] ?? VERDICT_COLORS.inconclusive!
            ctx.fillRect(x - 2 * px, top, 4 * px, 9 * px)
            continue
          }
          ctx.strokeStyle = line
          ctx.lineWidth = px
          ctx.setLineDash(m.kind === 'weights' ? [5 * px, 4 * px] : [])
          ctx.moveTo(x + 0.5, top)
          ctx.lineTo(x + 0.5, top + height)
          ctx.stroke()
        }
        ctx.restore()
      }
    }
  }
}

const HEIGHT = 170
/** Samples further apart than this (the feed sends one a second) leave a gap. */
const GAP_MS = 3500
const MIN_SPAN_S = 60
/** The span drawn, back from the newest sample: the five minutes the page is about, whatever older samples a hello carried. */
const SPAN_S = 300

/** One live chart in its container: sized to it (ResizeObserver), fed whole sample arrays. */
export class LiveChart {
  readonly #plot: Plot
  readonly #resize: ResizeObserver
  #marks: readonly Mark[] = []
  readonly #versions: string[]
  readonly #kind: ChartKind

  constructor (container: HTMLElement, kind: ChartKind, versions: string[], colors: Map<string, string>) {
    this.#kind = kind
    this.#versions = versions
    const axis = cssVar('--fg', '#222')
    const grid = cssVar('--grid', 'rgba(128,128,128,0.2)')
    const axes = { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } }
    const opts: Options = {
      width: Math.max(200, container.clientWidth),
      height: HEIGHT,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        // the last five minutes at most, and at least a minute wide: a page opened a few seconds ago still reads as a time line
        x: { time: true, range: (_u, min, max) => Number.isFinite(max) ? [Math.min(Math.max(min, max - SPAN_S), max - MIN_SPAN_S), max] : [min, max] },
        // from zero: a canary's 0.4 % must not look like stable's 40 %
        y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.15 : 1] }
      },
      axes: [{ ...axes, values: (_u, splits) => splits.map((v) => clock(v * 1000)) }, { ...axes, size: 52, values: (_u, splits) => splits.map((v) => trimNum(v)) }],
      series: [{}, ...versions.map((v) => ({ label: v, stroke: colors.get(v) ?? axis, width: 2, points: { show: false }, spanGaps: false }))],
      plugins: [marksPlugin(() => this.#marks, cssVar('--muted', '#888'))]
    }
    // eslint-disable-next-line new-cap -- uPlot's class is named in lower case
    this.#plot = new uPlot(opts, [[], ...versions.map(() => [])], container)
    this.#resize = new ResizeObserver((entries) => {
      const w = Math.floor(entries[0]?.contentRect.width ?? 0)
      if (w > 0 && w !== this.#plot.width) this.#plot.setSize({ width: w, height: HEIGHT })
    })
    this.#resize.observe(container)
  }

  /** Redraws from the samples (oldest first) of one route and the marks of that route. */
  update (samples: readonly Sample[], route: string, marks: readonly Mark[]): void {
    this.#marks = marks
    const xs: number[] = []
    const ys: Array<Array<number | null>> = this.#versions.map(() => [])
    let prev = 0
    const from = (samples[samples.length - 1]?.t ?? 0) - SPAN_S * 1000
    for (const s of samples) {
      if (s.t < from) continue
      // nobody watched, or the feed was down: a gap in the lines, not a straight line across it
      if (prev !== 0 && s.t - prev > GAP_MS) {
        xs.push((prev + s.t) / 2000)
        for (const y of ys) y.push(null)
      }
      prev = s.t
      xs.push(s.t / 1000)
      this.#versions.forEach((v, i) => ys[i]!.push(valueOf(own(own(s.routes, route)?.versions, v), this.#kind.field)))
    }
    this.#plot.setData([xs, ...ys])
  }

  destroy (): void {
    this.#resize.disconnect()
    this.#plot.destroy()
  }
}

/** A version's figure in a sample; null when absent (the version had no responses, or was not there yet). */
export function valueOf (v: VersionSample | undefined, field: ChartKind['field']): number | null {
  const x = v?.[field]
  return typeof x === 'number' ? x : null
}

/** Axis labels without float noise (0.30000000000000004). */
function trimNum (v: number): string {
  return String(Number(v.toPrecision(4)))
}
