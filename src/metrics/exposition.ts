/**
 * A reader of the Prometheus text exposition format (0.0.4), enough for
 * canaryd's own /metrics: `# HELP`/`# TYPE` comments, samples with quoted,
 * escaped label values, NaN and ±Inf, optional timestamps. Pure: text in,
 * samples out; used by `canaryd top` and the tests.
 */

/** One sample line: metric name, labels, value. */
export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

/** A parsed exposition: all samples in order, and the declared type of each family. */
export interface Exposition {
  readonly samples: readonly Sample[]
  /** Family name → counter, gauge, histogram, summary, untyped. */
  readonly types: ReadonlyMap<string, string>
}

/** Thrown for a line that is not valid exposition text; `line` is 1-based. */
export class ExpositionSyntaxError extends SyntaxError {
  readonly line: number
  constructor (line: number, message: string) {
    super(`line ${line}: ${message}`)
    this.line = line
  }
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/

/** Parses a sample value: a float, NaN, +Inf or -Inf (any case). */
export function parseValue (text: string): number {
  // case-insensitive like Prometheus' own parser (Go ParseFloat): prom-client writes "Nan"
  const lower = text.toLowerCase()
  if (lower === '+inf' || lower === 'inf') return Infinity
  if (lower === '-inf') return -Infinity
  if (lower === 'nan') return NaN
  const v = Number(text)
  if (text.length === 0 || Number.isNaN(v)) throw new SyntaxError(`invalid value "${text}"`)
  return v
}

/** Parses exposition text; throws ExpositionSyntaxError on the first bad line. */
export function parseExposition (text: string): Exposition {
  const samples: Sample[] = []
  const types = new Map<string, string>()
  const lines = text.split('\n')
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!.trim()
    if (line.length === 0) continue
    if (line.charCodeAt(0) === 35 /* # */) {
      const m = /^#\s+TYPE\s+(\S+)\s+(\S+)/.exec(line)
      if (m !== null) types.set(m[1]!, m[2]!)
      continue
    }
    try {
      samples.push(parseSampleLine(line))
    } catch (err) {
      throw new ExpositionSyntaxError(n + 1, (err as Error).message)
    }
  }
  return { samples, types }
}

function parseSampleLine (line: string): Sample {
  const nm = NAME.exec(line)
  if (nm === null) throw new SyntaxError('expected a metric name')
  const name = nm[0]
  let i = name.length
  const labels: Record<string, string> = {}
  if (line[i] === '{') {
    i++
    for (;;) {
      while (line[i] === ' ' || line[i] === ',') i++
      if (line[i] === '}') { i++; break }
      const ln = LABEL_NAME.exec(line.slice(i))
      if (ln === null) throw new SyntaxError(`expected a label name at column ${i + 1}`)
      i += ln[0].length
      if (line[i] !== '=' || line[i + 1] !== '"') throw new SyntaxError(`expected ="…" after label ${ln[0]}`)
      i += 2
      let value = ''
      for (;;) {
        const c = line[i]
        if (c === undefined) throw new SyntaxError(`unterminated value of label ${ln[0]}`)
        i++
        if (c === '"') break
        if (c === '\\') {
          const e = line[i++]
          value += e === 'n' ? '\n' : (e ?? '')
        } else value += c
      }
      labels[ln[0]] = value
    }
  }
  const rest = line.slice(i).trim().split(/\s+/)
  if (rest[0] === undefined || rest[0].length === 0) throw new SyntaxError(`no value for ${name}`)
  return { name, labels, value: parseValue(rest[0]) }
}

/** One family as prom-client hands it out (`metric.get()`, `getMetricsAsJSON()`), as far as it is read here. */
export interface FamilyJson {
  readonly name: string
  /** prom-client's MetricType (a string enum): counter, gauge, histogram, … */
  readonly type?: unknown
  readonly values: ReadonlyArray<{ readonly labels?: Readonly<Record<string, string | number>>; readonly value: number; readonly metricName?: string }>
}

/**
 * The samples of prom-client's JSON form, as `parseExposition` would read
 * them from its text: a frequent reader (the dashboard's feed) skips writing
 * and parsing the text. Label values become strings the way the text writes
 * them (a histogram's `le` 0.005 → "0.005", Infinity → "+Inf").
 */
export function expositionFromJson (families: readonly FamilyJson[]): Exposition {
  const samples: Sample[] = []
  const types = new Map<string, string>()
  for (const f of families) {
    if (f.type !== undefined) types.set(f.name, String(f.type))
    for (const v of f.values) {
      const labels: Record<string, string> = {}
      for (const [k, x] of Object.entries(v.labels ?? {})) labels[k] = x === Infinity ? '+Inf' : String(x)
      samples.push({ name: v.metricName ?? f.name, labels, value: v.value })
    }
  }
  return { samples, types }
}
