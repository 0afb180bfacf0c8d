/**
 * The issue-11 differential corpus: 1,200 seeded cases (CL/TE framing
 * variants, line-ending variants, header name/value edge cases, pipelines of
 * good, refused and malformed requests, split writes, client aborts at random
 * byte offsets and times) written on raw sockets to one canaryd in front of
 * two wire upstreams that log every byte. Each case is judged by the framing
 * model in corpus-gen.ts (judgeCase): every client-visible response pairs with
 * exactly one well-formed request an upstream parsed, in order, one at a time;
 * nothing at or after the first refused or malformed request reaches an
 * upstream. After every batch the in-flight gauges are back to 0 and both
 * versions serve normally.
 *
 * Reproduce a failure: CORPUS_SEED=<seed> CORPUS_ONLY=<i,j> npx tap test/hardening/corpus.test.ts
 * (CORPUS_COUNT changes the size, CORPUS_REPORT=<file> writes every failure as JSON).
 */
import { writeFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import t from 'tap'
import { scrape, sum } from '../metrics/scrape.js'
import { startProxy, testConfig, twoVersionRoute } from '../helpers/proxy.js'
import { startWireUpstream, type WireRequest, type WireUpstream } from '../helpers/wire.js'
import { generateCorpus, judgeCase, MARKER, parseResponses, type Case, type Observation, type UpstreamRecord } from './corpus-gen.js'
import { rawRequest, sleep, waitFor } from './raw.js'

const SEED = Number(process.env.CORPUS_SEED ?? 0x11c0de)
const COUNT = Number(process.env.CORPUS_COUNT ?? 1200)
const ONLY = process.env.CORPUS_ONLY === undefined ? undefined : new Set(process.env.CORPUS_ONLY.split(',').map(Number))
const CONCURRENCY = 8
const BATCH = 100
/**
 * Silence after the last byte before a keep-alive case is over while answers
 * are still missing. A correct proxy never needs it (it answers or closes), so
 * it is generous: a loaded CI machine must not cut a slow answer short.
 */
const QUIET_MS = 1000
/** Once every atom has an answer, how long to keep listening for extra bytes. */
const SETTLE_MS = 30
const CASE_MS = 3000

/** What the upstreams did with one parsed request, on a clock shared by both. */
interface Stamp { arrive: number; answer: number; sent: string }

/** What the client of one case saw: the bytes, how the connection ended, how long it took. */
interface ClientSide { received: Buffer; serverClosed: boolean; written: number; reset: boolean; quiet: boolean; ms: number }

/** Writes one case on a fresh connection and reads until the server closes, the client aborts or the line is quiet. */
async function runCase (port: number, c: Case): Promise<ClientSide> {
  const t0 = Date.now()
  return await new Promise((resolve) => {
    const chunks: Buffer[] = []
    const s = connect(port, '127.0.0.1')
    s.setNoDelay(true)
    let finished = false
    let written = 0
    let reset = false
    let writesDone = false
    let quiet: NodeJS.Timeout | undefined
    let quietEnd = false
    const hard = setTimeout(() => finish(false), CASE_MS)
    const finish = (serverClosed: boolean, byQuiet = false): void => {
      if (finished) return
      finished = true
      quietEnd = byQuiet
      clearTimeout(hard)
      clearTimeout(quiet)
      s.destroy()
      resolve({ received: Buffer.concat(chunks), serverClosed, written, reset, quiet: quietEnd, ms: Date.now() - t0 })
    }
    const armQuiet = (): void => {
      if (!writesDone || c.abort.kind !== 'none') return
      clearTimeout(quiet)
      const answered = parseResponses(Buffer.concat(chunks), false).responses.filter((r) => r.complete).length
      quiet = answered >= c.atoms.length ? setTimeout(() => finish(false), SETTLE_MS) : setTimeout(() => finish(false, true), QUIET_MS)
    }
    s.on('data', (d: Buffer) => { chunks.push(d); armQuiet() })
    s.on('end', () => finish(true))
    s.on('close', () => finish(true))
    s.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') reset = true
      finish(true)
    })
    s.on('connect', () => {
      void (async () => {
        const limit = c.abort.kind === 'byte' ? c.abort.at : c.bytes.length
        const cuts = [0, ...c.splits.filter((x) => x < limit), limit]
        for (let k = 0; k + 1 < cuts.length; k++) {
          if (k > 0) await sleep(c.gapMs)
          if (finished) return
          s.write(c.bytes.subarray(cuts[k], cuts[k + 1]))
          written = cuts[k + 1]!
        }
        writesDone = true
        if (c.abort.kind === 'byte') {
          await sleep(c.abort.delayMs)
          finish(false)
        } else if (c.abort.kind === 'time') {
          await sleep(c.abort.afterMs)
          finish(false)
        } else {
          armQuiet()
        }
      })()
    })
  })
}

/** Runs `fn` over `items`, at most `n` at a time. */
async function pool<T> (items: readonly T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) await fn(items[next++]!)
  }))
}

/** The case and atom a parsed upstream request belongs to (marker in its path, else in a header). */
function markerOf (r: WireRequest): [number, number] | undefined {
  for (const text of [r.url, ...r.rawHeaders]) {
    const m = new RegExp(MARKER.source).exec(text)
    if (m !== null) return [Number(m[1]), Number(m[2])]
  }
  return undefined
}

/** Every marker occurrence in every byte the upstream received: count[case][atom]. */
function countMarkers (w: WireUpstream, into: Map<number, number[]>): void {
  for (const conn of w.raw) {
    for (const m of Buffer.concat(conn).toString('latin1').matchAll(MARKER)) {
      const c = Number(m[1])
      const a = Number(m[2])
      const l = into.get(c) ?? []
      l[a] = (l[a] ?? 0) + 1
      into.set(c, l)
    }
  }
}

t.test(`differential corpus: ${COUNT} cases, seed ${SEED}`, async (t) => {
  const started = Date.now()
  let clock = 0
  const stamps = new Map<string, Stamp>()
  const key = (version: string, seq: number): string => `${version}:${seq}`
  // both upstreams answer after 1-2 ms (stamping arrival on a shared clock) so a
  // proxy that dispatches a pipeline at once shows overlapping requests; the
  // answer's framing varies (Content-Length, chunked, 204) so the proxy's
  // re-framing is exercised too
  const upstream = async (version: string): Promise<WireUpstream> => await startWireUpstream({
    delayMs: (r) => {
      stamps.set(key(version, r.seq), { arrive: ++clock, answer: -1, sent: '' })
      return 1 + (r.seq % 2)
    },
    handler: (r, _req, res) => {
      const st = stamps.get(key(version, r.seq))!
      st.answer = ++clock
      const mode = r.seq % 5
      const body = JSON.stringify({ version, seq: r.seq, method: r.method, url: r.url, bodyBytes: r.body.length })
      const headers: Record<string, string> = { 'content-type': 'application/json', 'x-seq': String(r.seq), 'x-version': version, 'x-method': r.method }
      if (mode === 4 && r.method !== 'HEAD' && !r.url.startsWith('/probe')) {
        res.writeHead(204, headers)
        res.end()
        return
      }
      st.sent = r.method === 'HEAD' ? '' : body
      if (mode === 3 && !r.url.startsWith('/probe')) {
        res.writeHead(200, headers)
        res.write(body.slice(0, 10))
        res.end(body.slice(10))
        return
      }
      headers['content-length'] = String(Buffer.byteLength(body))
      res.writeHead(200, headers)
      res.end(body)
    }
  })
  const wires: Record<string, WireUpstream> = { stable: await upstream('stable'), canary: await upstream('canary') }
  const proxy = await startProxy(testConfig([twoVersionRoute(wires.stable!.origin, wires.canary!.origin, [50, 50])], {
    timeouts: { clientBodyMs: 1000, clientHeadersMs: 2000, upstreamResponseMs: 5000 },
    limits: { maxUrlBytes: 1024, maxHeaderCount: 40 },
    // small threshold: CL bodies go over both upstream clients (undici and node:http)
    upstream: { largeBodyBytes: 4096 }
  }))
  // every client connection the proxy accepted, so a close that hangs (a
  // connection left half-open) fails one assertion below instead of the file's timeout
  const accepted = new Set<Socket>()
  proxy.app.proxy.server.on('connection', (s: Socket) => {
    accepted.add(s)
    s.once('close', () => accepted.delete(s))
  })
  let closing: Promise<void> | undefined
  t.teardown(async () => {
    closing ??= proxy.close()
    for (const s of accepted) s.destroy()
    await closing
    await wires.stable!.close()
    await wires.canary!.close()
  })
  const port = proxy.app.proxyAddress!.port

  const corpus = generateCorpus(SEED, COUNT)
  const cases = ONLY === undefined ? corpus : corpus.filter((c) => ONLY.has(c.index))
  const client = new Map<number, ClientSide>()
  const batchProblems: string[] = []

  for (let b = 0; b * BATCH < cases.length; b++) {
    await pool(cases.slice(b * BATCH, (b + 1) * BATCH), CONCURRENCY, async (c) => {
      client.set(c.index, await runCase(port, c))
    })
    // traffic stopped: every ending (answered, aborted, refused) must have given its slot back
    let gauge = -1
    try {
      await waitFor(async () => {
        gauge = sum(await scrape(proxy), 'canaryd_requests_in_flight')
        return gauge === 0 && proxy.app.proxy.inFlight === 0
      }, { intervalMs: 25, timeoutMs: 3000 })
    } catch {
      batchProblems.push(`after batch ${b}: canaryd_requests_in_flight ${gauge}, app.proxy.inFlight ${proxy.app.proxy.inFlight}`)
    }
    for (const version of ['stable', 'canary']) {
      const r = await rawRequest(port, [`GET /probe-${b}-${version} HTTP/1.1\r\nHost: app.test\r\nX-Canary: ${version}\r\nConnection: close\r\n\r\n`], { waitMs: 2000 })
      if (r.status !== 200 || !r.text.includes(`x-version: ${version}`)) batchProblems.push(`after batch ${b}: a normal request to ${version} got ${r.status} ${JSON.stringify(r.text.slice(0, 200))}`)
    }
  }
  // late arrivals (a request forwarded after its client left) land before the judging
  await sleep(100)

  const upstreamOf = new Map<number, UpstreamRecord[]>()
  const raw = new Map<number, number[]>()
  for (const [version, w] of Object.entries(wires)) {
    countMarkers(w, raw)
    for (const r of w.requests) {
      const m = markerOf(r)
      if (m === undefined) continue
      const st = stamps.get(key(version, r.seq)) ?? { arrive: -1, answer: -1, sent: '' }
      const l = upstreamOf.get(m[0]) ?? []
      l.push({ atom: m[1], version, seq: r.seq, method: r.method, url: r.url, body: r.body, arrive: st.arrive, answer: st.answer, sent: st.sent })
      upstreamOf.set(m[0], l)
    }
  }

  const failures: Array<{ case: number; atoms: string; abort: string; problems: string[]; bytes: string }> = []
  for (const c of cases) {
    const side = client.get(c.index)!
    const o: Observation = {
      ...side,
      aborted: c.abort.kind !== 'none',
      upstream: upstreamOf.get(c.index) ?? [],
      rawCount: c.atoms.map((_, j) => raw.get(c.index)?.[j] ?? 0)
    }
    const problems = judgeCase(c, o)
    if (problems.length > 0) {
      failures.push({
        case: c.index,
        atoms: c.atoms.map((a) => `${a.kind}:${a.variant}`).join(' '),
        abort: JSON.stringify(c.abort),
        problems,
        bytes: JSON.stringify(c.bytes.toString('latin1'))
      })
    }
  }

  if (process.env.CORPUS_REPORT !== undefined) writeFileSync(process.env.CORPUS_REPORT, JSON.stringify({ seed: SEED, failures, batchProblems }, null, 2))
  for (const f of failures.slice(0, 5)) {
    const side = client.get(f.case)!
    t.comment(`seed ${SEED} case ${f.case} [${f.atoms}] abort ${f.abort}\n  ${f.problems.join('\n  ')}\n  sent ${f.bytes.length > 3000 ? `${f.bytes.slice(0, 3000)}…` : f.bytes}\n  got ${JSON.stringify(side.received.toString('latin1').slice(0, 1500))}`)
  }

  t.same(batchProblems, [], 'after every batch: in-flight 0 and both versions serve')
  t.same(failures.slice(0, 20).map((f) => `#${f.case} [${f.atoms}] ${f.abort}: ${f.problems.join('; ')}`), [], `the oracle holds for every case (seed ${SEED}; first 20 failures shown)`)
  t.equal(failures.length, 0, `cases failing the oracle (of ${cases.length})`)

  // the corpus exercised what the issue asks for
  const count = (p: (c: Case) => boolean): number => cases.filter(p).length
  const tally = {
    cases: cases.length,
    refused: count((c) => c.atoms.some((a) => a.kind === 'refused')),
    malformed: count((c) => c.atoms.some((a) => a.kind === 'malformed')),
    ambiguous: count((c) => c.atoms.some((a) => a.kind === 'maybe')),
    pipelines3: count((c) => c.atoms.length >= 3),
    badThenMore: count((c) => c.atoms.findIndex((a) => a.kind === 'refused' || a.kind === 'malformed') < c.atoms.length - 1 && c.atoms.some((a) => a.kind === 'refused' || a.kind === 'malformed')),
    chunked: count((c) => c.atoms.some((a) => a.kind === 'good' && /chunked|te-case/.test(a.variant))),
    splitWrites: count((c) => c.splits.length > 0),
    abortByte: count((c) => c.abort.kind === 'byte'),
    abortTime: count((c) => c.abort.kind === 'time'),
    resets: count((c) => client.get(c.index)!.reset),
    endedBySilence: count((c) => client.get(c.index)!.quiet),
    ambiguousForwarded: cases.reduce((n, c) => n + c.atoms.filter((a, j) => a.kind === 'maybe' && (upstreamOf.get(c.index) ?? []).some((u) => u.atom === j)).length, 0),
    ambiguousTotal: cases.reduce((n, c) => n + c.atoms.filter((a) => a.kind === 'maybe').length, 0),
    forwarded: [...upstreamOf.values()].reduce((n, l) => n + l.length, 0)
  }
  t.comment(`corpus: ${JSON.stringify(tally)} in ${Date.now() - started} ms`)
  const slow = cases.filter((c) => client.get(c.index)!.ms >= 1000)
  if (slow.length > 0) t.comment(`${slow.length} cases took 1 s or more (a stalled exchange): ${slow.slice(0, 10).map((c) => `#${c.index} ${client.get(c.index)!.ms} ms`).join(', ')}`)
  if (ONLY === undefined) {
    t.ok(tally.cases >= 1000, `${tally.cases} cases (>= 1000)`)
    t.ok(tally.refused >= 100, `${tally.refused} cases with a refused request`)
    t.ok(tally.malformed >= 100, `${tally.malformed} cases with a malformed request`)
    t.ok(tally.ambiguous >= 50, `${tally.ambiguous} cases with a line-ending / byte-range variant`)
    t.ok(tally.pipelines3 >= 100, `${tally.pipelines3} pipelines of 3+`)
    t.ok(tally.badThenMore >= 100, `${tally.badThenMore} cases with requests behind a bad one`)
    t.ok(tally.chunked >= 50, `${tally.chunked} cases with a chunked upload`)
    t.ok(tally.splitWrites >= 100, `${tally.splitWrites} cases split over several writes`)
    t.ok(tally.abortByte + tally.abortTime >= 50, `${tally.abortByte + tally.abortTime} client aborts`)
    t.ok(tally.forwarded >= 1000, `${tally.forwarded} requests reached the upstreams`)
  }
  t.ok(Date.now() - started < 60_000, 'the corpus ran in under 60 s')
  // after all that, a graceful close still ends: no connection or request is left hanging
  closing = proxy.close()
  const closed = await Promise.race([closing.then(() => true), sleep(5000).then(() => false)])
  t.ok(closed, 'canaryd closes within 5 s after the corpus (drain ends, every connection closes)', {
    open: [...accepted].map((s) => ({ destroyed: s.destroyed, readyState: s.readyState, bytesRead: s.bytesRead, unread: s.readableLength, writableFinished: s.writableFinished }))
  })
})
