/**
 * The dashboard in fleet mode (issue 18: "in fleet mode, the instances"),
 * in a real browser: Debian's Chromium driven by playwright-core against
 * two `canaryd serve` processes (A and B) sharing one real redis-server
 * (store.type redis, the same routes, each its own state dir), with real
 * upstreams and light real traffic through both proxies.
 *
 * - A's `#/fleet` lists both instances (their admin addresses, A marked as
 *   this one) and keeps itself current without a reload: the heartbeat
 *   ages tick every second, and the page re-reads GET /api/v1/fleet every
 *   5 s (src/ui/fleet.ts), so B's last heartbeat and the generations move.
 * - A weight change made on A's route page reaches B through the fleet:
 *   B's GET /api/v1/routes, B's open route page (no request of its own) and
 *   B's event feed (a `mark` of kind `weights`, read here with fetch).
 * - A rollout started through A's API shows on B's open route page.
 *
 * Skipped, saying why, where redis-server or Chromium is not installed.
 */
import t from 'tap'
import type { Browser, Page } from 'playwright-core'
import { chromiumMissing, launchBrowser, openPage, type WatchedPage } from '../helpers/browser.js'
import { userTraffic, type UserTraffic } from '../helpers/business.js'
import { startFleet, weightsOf as weightsOfRoute, type FleetInstance } from '../helpers/fleet.js'
import { redisMissing, startRedis } from '../helpers/redis.js'
import { routeFile } from '../helpers/reload.js'
import { until } from '../helpers/until.js'
import { startUpstreams } from '../helpers/upstream.js'
import { dialogText, textOf, tid, unexpectedErrors, waitForText } from './lib.js'

const missing = redisMissing() ?? chromiumMissing()
const skip = missing ?? false
if (missing !== undefined) t.comment(`skipping the fleet dashboard browser tests: ${missing}`)

/** One Chromium for the file (a fresh context per page), closed at its end. */
let browser: Browser | undefined
const getBrowser = async (): Promise<Browser> => (browser ??= await launchBrowser(t))

/** `127.0.0.1:PORT` of an `http://127.0.0.1:PORT` URL: how GET /api/v1/fleet and the page write an address. */
const hostPort = (url: string): string => new URL(url).host

/** One row of the fleet table as the user reads it. */
interface FleetRow {
  instance: string
  admin: string
  proxy: string
  generation: string
  heartbeat: string
  /** The heartbeat cell's title: the last heartbeat as a local date and time (changes when the page re-read it). */
  heartbeatTitle: string
  leads: string
  config: string
}

/** The rows of `fleet-table` (tbody) on `page`, cells by column (instance, host, pid, admin, proxy, generation, heartbeat, leads rollouts of, config). */
async function fleetRows (page: Page): Promise<FleetRow[]> {
  const table = page.locator(tid('fleet-table'))
  if (await table.count() === 0) return []
  const raw = await table.first().evaluate((el) => [...el.querySelectorAll('tbody tr')].map((tr) => {
    const cells = [...tr.querySelectorAll('td')]
    return { texts: cells.map((c) => (c as unknown as { innerText: string }).innerText.trim()), title: cells[6]?.querySelector('[title]')?.getAttribute('title') ?? '' }
  }))
  return raw.map(({ texts, title }) => ({
    instance: texts[0] ?? '',
    admin: texts[3] ?? '',
    proxy: texts[4] ?? '',
    generation: texts[5] ?? '',
    heartbeat: texts[6] ?? '',
    heartbeatTitle: title,
    leads: texts[7] ?? '',
    config: texts[8] ?? ''
  }))
}

/** One server-sent event as read off the wire. */
interface SseEvent { event: string; data: Record<string, any>; at: number }

/** A `GET /api/v1/events` stream read with fetch (as the page does), every event kept; closed in teardown. */
interface FeedReader {
  readonly events: SseEvent[]
  /** Why the stream ended, if it did. */
  readonly ended: () => string | undefined
}

/**
 * Opens `adminUrl`'s event feed with fetch and keeps every event it sends
 * (parsed JSON data) until teardown aborts it. Waits (at most 10 s) for the
 * answer's headers and a 200.
 */
async function readFeed (t: { teardown: (fn: () => void) => void }, adminUrl: string): Promise<FeedReader> {
  const ctrl = new AbortController()
  t.teardown(() => { ctrl.abort() })
  const events: SseEvent[] = []
  let ended: string | undefined
  const late = setTimeout(() => { ctrl.abort() }, 10_000)
  const res = await fetch(`${adminUrl}/api/v1/events`, { signal: ctrl.signal, headers: { accept: 'text/event-stream' } })
  clearTimeout(late)
  if (res.status !== 200 || res.body === null) throw new Error(`GET /api/v1/events on ${adminUrl}: ${res.status} ${await res.text()}`)
  const body = res.body
  void (async () => {
    const decoder = new TextDecoder()
    let buf = ''
    try {
      for await (const chunk of body) {
        buf += decoder.decode(chunk as Uint8Array, { stream: true })
        for (let i = buf.indexOf('\n\n'); i !== -1; i = buf.indexOf('\n\n')) {
          const block = buf.slice(0, i)
          buf = buf.slice(i + 2)
          let name = 'message'
          const data: string[] = []
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) name = line.slice(6).trim()
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''))
          }
          if (data.length === 0) continue
          try {
            events.push({ event: name, data: JSON.parse(data.join('\n')) as Record<string, any>, at: performance.now() })
          } catch {}
        }
      }
      ended = 'the stream ended'
    } catch (err) {
      ended = (err as Error).message
    }
  })()
  return { events, ended: () => ended }
}

/** Real users through a fleet instance's proxy: one client, a request every ~25 ms, bounded to 90 s, stopped in teardown. */
function lightTraffic (t: { teardown: (fn: () => Promise<void>) => void }, inst: FleetInstance): UserTraffic {
  const users = userTraffic(inst.proxyUrl, { clients: 1, pauseMs: 25, maxMs: 90_000, prefix: `${inst.name}-u` })
  t.teardown(async () => { await users.stop() })
  return users
}

/** Milliseconds since `t0`, rounded, for the timing comments. */
const since = (t0: number): number => Math.round(performance.now() - t0)

t.test('the dashboard of a fleet of two: instances, and changes made through A seen on B', { skip }, async (t) => {
  const tTop = t
  const tSetup = performance.now()
  const ups = await startUpstreams(t, ['stable', 'canary'])
  const redis = await startRedis(t)
  const fleet = await startFleet(t, redis, {
    n: 2,
    routes: [routeFile('web', [{ name: 'stable', upstream: ups.stable!.origin, weight: 90 }, { name: 'canary', upstream: ups.canary!.origin, weight: 10 }])]
  })
  const [a, b] = fleet.instances as [FleetInstance, FleetInstance]
  t.not(a.adminUrl, b.adminUrl, `two instances, two admin addresses (A ${hostPort(a.adminUrl)}, B ${hostPort(b.adminUrl)})`)
  const trafficA = lightTraffic(t, a)
  const trafficB = lightTraffic(t, b)
  // B has joined: A's API lists both (B's first heartbeat is written when it starts)
  await until('GET /api/v1/fleet on A lists both instances', async () => ((await a.get('/api/v1/fleet')).json.instances ?? []).length === 2, 10_000, 100)
  const br = await getBrowser()
  t.comment(`setup (redis, 2 instances, chromium): ${since(tSetup)} ms`)

  // the pages and B's feed live as long as the whole test (the subtests share them), closed in its teardown
  let fleetPage: WatchedPage | undefined
  let wb: WatchedPage | undefined
  let feedB: FeedReader | undefined
  /** The weights set through A's dashboard. */
  const NEW = { stable: 65, canary: 35 }

  await t.test('A\'s #/fleet lists both instances, A as this one, and keeps itself current without a reload', async (t) => {
    const t0 = performance.now()
    const w = fleetPage = await openPage(tTop, br)
    const { page } = w
    await page.goto(`${a.adminUrl}/ui/#/fleet`)
    await page.locator(tid('fleet-table')).waitFor({ state: 'visible' })
    // a mark on this document: a reload (or a navigation) would lose it
    await page.evaluate('window.__fleetTestNoReload = 1')
    let rows: FleetRow[] = []
    await until('fleet-table has 2 rows', async () => (rows = await fleetRows(page)).length === 2, 10_000, 100)
    t.equal(rows.length, 2, `2 rows: ${rows.map((r) => r.instance).join(', ')}`)
    t.same(rows.map((r) => r.admin).sort(), [hostPort(a.adminUrl), hostPort(b.adminUrl)].sort(), 'their admin addresses are A\'s and B\'s')
    t.same(rows.map((r) => r.proxy).sort(), [hostPort(a.proxyUrl), hostPort(b.proxyUrl)].sort(), 'their proxy addresses are A\'s and B\'s')
    const selves = rows.filter((r) => /\(this one\)/.test(r.instance))
    t.equal(selves.length, 1, `exactly one row is marked "(this one)": ${JSON.stringify(rows.map((r) => r.instance))}`)
    t.equal(selves[0]?.admin, hostPort(a.adminUrl), 'the row marked "(this one)" is A (the page was opened on A)')
    t.match(selves[0]?.instance ?? '', new RegExp(`^${a.id}\\b`), `… named ${a.id}`)
    const rowB = rows.find((r) => r.admin === hostPort(b.adminUrl))
    t.match(rowB?.instance ?? '', new RegExp(`^${b.id}$`), `B's row is ${b.id}, not marked`)
    t.ok(rows.every((r) => r.config === 'same'), `both run the fleet's config: ${rows.map((r) => r.config).join(', ')}`)
    t.ok(rows.every((r) => /^\d+ s ago$/.test(r.heartbeat)), `heartbeats are recent: ${rows.map((r) => r.heartbeat).join(', ')}`)
    const facts = await textOf(page.locator('main p.muted'))
    t.match(facts, /Fleet store: Redis \(reachable\)/, `the page says it is a Redis fleet: ${facts}`)
    t.match(facts, new RegExp(`this instance: ${a.id}\\b`), '… and names this instance')
    t.comment(`#/fleet showed both instances ${since(t0)} ms after goto`)

    // the ages tick each second between reads, without a request
    const firstB = rowB!
    const t1 = performance.now()
    await until(`B's heartbeat age moves on the page (was ${JSON.stringify(firstB.heartbeat)})`, async () => {
      const now = (await fleetRows(page)).find((r) => r.admin === hostPort(b.adminUrl))
      return now !== undefined && now.heartbeat !== firstB.heartbeat
    }, 4000, 100)
    t.pass(`B's heartbeat age text changed within ${since(t1)} ms`)

    // the page re-reads GET /api/v1/fleet by itself (every 5 s): B's last heartbeat (written every 2 s) is a newer one
    const readsBefore = w.requests.filter((r) => new URL(r.url).pathname === '/api/v1/fleet').length
    const t2 = performance.now()
    let latest: FleetRow | undefined
    await until(`the page re-read the fleet and shows B's newer heartbeat (was ${JSON.stringify(firstB.heartbeatTitle)})`, async () => {
      latest = (await fleetRows(page)).find((r) => r.admin === hostPort(b.adminUrl))
      return latest !== undefined && latest.heartbeatTitle !== '' && latest.heartbeatTitle !== firstB.heartbeatTitle
    }, 8000, 200)
    const readsAfter = w.requests.filter((r) => new URL(r.url).pathname === '/api/v1/fleet').length
    t.ok(readsAfter > readsBefore, `the page asked GET /api/v1/fleet again by itself (${readsBefore} → ${readsAfter} reads)`)
    t.pass(`B's last heartbeat on the page went ${firstB.heartbeatTitle} → ${latest?.heartbeatTitle ?? '?'} within ${since(t2)} ms, without a reload`)
    t.equal(await page.evaluate('window.__fleetTestNoReload'), 1, 'the same document all along: no reload')
    t.equal(await page.locator(tid('fleet-table')).locator('tbody tr').count(), 2, 'still 2 rows')
  })

  await t.test('weights set on A\'s dashboard reach B: its API, its open route page and its event feed', async (t) => {
    // B's route page, open before the change; it must learn of it without sending anything itself
    const pb = wb = await openPage(tTop, br)
    await pb.page.goto(`${b.adminUrl}/ui/#/routes/web`)
    await waitForText(pb.page.locator(tid('feed-status')), /live/, 'B\'s page: feed-status says live')
    const bInput = pb.page.locator(tid('weight-input-canary'))
    await bInput.waitFor({ state: 'visible' })
    await until('B\'s page shows canary at 10 first', async () => await bInput.inputValue() === '10', 10_000, 100)
    const bWeights = pb.page.locator('section[aria-labelledby="weights-title"]')
    await waitForText(bWeights, /stable[\s\S]*?now 90%[\s\S]*?canary[\s\S]*?now 10%/, 'B\'s weights panel shows now 90% / now 10%')

    // B's feed, read directly (the page's own stream is not visible to the test)
    const feed = feedB = await readFeed(tTop, b.adminUrl)
    await until('B\'s feed sent hello and a sample', () => feed.events.some((e) => e.event === 'hello') && feed.events.some((e) => e.event === 'sample'), 10_000, 50)
    const hello = feed.events.find((e) => e.event === 'hello')!
    t.equal(hello.data.instance, b.id, `B's feed says hello as ${b.id}`)

    // the change, on A's route page: number input, Apply, the dialog, a reason, OK
    const wa = await openPage(t, br)
    await wa.page.goto(`${a.adminUrl}/ui/#/routes/web`)
    const aInput = wa.page.locator(tid('weight-input-canary'))
    await aInput.waitFor({ state: 'visible' })
    await until('A\'s page shows canary at 10', async () => await aInput.inputValue() === '10', 10_000, 100)
    await aInput.fill(String(NEW.canary))
    await aInput.press('Tab')
    await until(`A's stable input follows to ${NEW.stable}`, async () => await wa.page.locator(tid('weight-input-stable')).inputValue() === String(NEW.stable), 5000, 50)
    await wa.page.locator(tid('weights-apply')).click()
    const text = await dialogText(wa.page)
    t.match(text, new RegExp(`stable\\s*90\\s*→\\s*${NEW.stable}`), `A's dialog names the change: ${text}`)
    t.match(text, new RegExp(`canary\\s*10\\s*→\\s*${NEW.canary}`), '… for both versions')
    await wa.page.locator('#confirm-reason').fill('fleet ui test: set on A')
    const marksBefore = feed.events.length
    const t0 = performance.now()
    await wa.page.locator(tid('confirm-ok')).click()

    // A answered it
    await until('GET /api/v1/routes on A has the new weights', async () => JSON.stringify(await weightsOnRoute(a)) === JSON.stringify(NEW), 5000, 50)
    t.pass(`A has ${JSON.stringify(NEW)} ${since(t0)} ms after OK`)
    t.equal(wa.requests.filter((r) => r.method === 'PUT' && r.url === `${a.adminUrl}/api/v1/routes/web/weights`).length, 1, 'A\'s page sent one PUT …/weights, to A')

    // B's API
    await until('GET /api/v1/routes on B has the new weights', async () => JSON.stringify(await weightsOnRoute(b)) === JSON.stringify(NEW), 5000, 50)
    t.pass(`B's GET /api/v1/routes has ${JSON.stringify(NEW)} ${since(t0)} ms after OK`)

    // B's feed: a weights mark for the change (the docs: from another fleet instance, source is null)
    let mark: SseEvent | undefined
    try {
      await until('B\'s feed sends a weights mark for route web with the new weights', () => {
        mark = feed.events.slice(marksBefore).find((e) => e.event === 'mark' && e.data.kind === 'weights' && e.data.route === 'web' && JSON.stringify(e.data.weights) === JSON.stringify(NEW))
        return mark !== undefined
      }, 5000, 50)
    } catch (err) {
      const seen = feed.events.slice(marksBefore).filter((e) => e.event !== 'sample').map((e) => `${e.event} ${JSON.stringify(e.data)}`)
      t.fail(`${(err as Error).message}; B's feed sent instead: ${JSON.stringify(seen)}; stream ended: ${feed.ended() ?? 'no'}`)
    }
    if (mark !== undefined) {
      t.pass(`B's feed marked the change ${Math.round(mark.at - t0)} ms after OK: ${JSON.stringify(mark.data)}`)
      t.equal(typeof mark.data.t, 'number', 'the mark has its time')
      const extra = feed.events.slice(marksBefore).filter((e) => e.event === 'mark' && e.data.kind === 'weights' && e.data.route === 'web')
      t.equal(extra.length, 1, `one weights mark for the change, not several: ${JSON.stringify(extra.map((e) => e.data))}`)
      // a change made through another fleet instance carries who made it and why: the store hands that
      // instance's audit entry to the change listeners when it applies the fleet's generation
      t.equal(mark.data.source, 'api', 'the mark says the change came through the API (of A)')
      t.equal(mark.data.reason, 'fleet ui test: set on A', 'and carries the reason typed on A')
    }

    // B's open route page, without a request of its own: the weights panel and the summary
    await waitForText(bWeights, new RegExp(`stable[\\s\\S]*?now ${NEW.stable}%[\\s\\S]*?canary[\\s\\S]*?now ${NEW.canary}%`), `B's weights panel shows now ${NEW.stable}% / now ${NEW.canary}%`, 8000)
    t.pass(`B's page shows now ${NEW.stable}% / now ${NEW.canary}% ${since(t0)} ms after OK`)
    t.equal(await bInput.inputValue(), String(NEW.canary), 'B\'s canary input follows the server (no draft there)')
    t.match(await textOf(pb.page.locator('main > p.muted').first()), new RegExp(`stable ${NEW.stable}%, canary ${NEW.canary}%`), 'B\'s route summary has the new weights')
    t.equal(pb.requests.filter((r) => r.method !== 'GET').length, 0, 'B\'s page sent no write: the change came through the fleet')

    // A's fleet page, still open: both rows show the generation of the change (it re-reads every 5 s)
    const gen = Number((await a.get('/api/v1/fleet')).json.generation)
    const page = fleetPage?.page
    if (page !== undefined) {
      const t1 = performance.now()
      let rows: FleetRow[] = []
      try {
        await until(`A's #/fleet shows generation ${gen} on both rows`, async () => (rows = await fleetRows(page)).length === 2 && rows.every((r) => r.generation === String(gen)), 10_000, 200)
        t.pass(`A's #/fleet shows generation ${gen} on both rows ${since(t1)} ms later, without a reload`)
      } catch (err) {
        t.fail(`${(err as Error).message}; rows: ${JSON.stringify(rows.map((r) => [r.instance, r.generation]))}`)
      }
      t.equal(await page.evaluate('window.__fleetTestNoReload'), 1, 'the fleet page was not reloaded')
    }
    t.same(unexpectedErrors(wa.errors), [], 'A\'s route page: no console error')
    t.same(unexpectedErrors(pb.errors), [], 'B\'s route page: no console error')
  })

  await t.test('a rollout started through A\'s API shows on B\'s open route page', async (t) => {
    const pb = wb
    const feed = feedB
    if (pb === undefined || feed === undefined) {
      t.fail('B\'s route page and feed were not opened (the weights subtest failed before): nothing to watch')
      return
    }
    const state = pb.page.locator(tid('rollout-state'))
    t.equal(await textOf(state), 'none', 'B\'s page: no rollout yet')
    const eventsBefore = feed.events.length
    const started = await a.post('/api/v1/routes/web/rollout', { canary: 'canary', steps: [50, 80], intervalMs: 60_000, analysis: { minRequests: 20 }, promotion: 'manual' })
    t.equal(started.status, 201, `rollout started through A: ${JSON.stringify(started.json).slice(0, 200)}`)
    const t0 = performance.now()
    await waitForText(state, /progressing/, 'B\'s rollout-state shows progressing', 5000)
    t.pass(`B's page shows the rollout progressing ${since(t0)} ms after A answered`)
    await waitForText(pb.page.locator('section[aria-labelledby="rollout-title"]'), /Canary weight\s*50%/, 'B\'s rollout panel shows the canary at its first step, 50%', 5000)
    t.pass('B\'s rollout panel shows the canary at its first step (50%)')
    t.ok(await pb.page.locator(tid('rollout-pause')).isEnabled(), 'B\'s Pause is enabled (the rollout is progressing)')
    await until('GET …/rollout on B is progressing', async () => (await b.get('/api/v1/routes/web/rollout')).json.state === 'progressing', 5000, 100)
    t.pass('B\'s API has it progressing')
    let started2: SseEvent | undefined
    try {
      await until('B\'s feed marks the rollout started', () => {
        started2 = feed.events.slice(eventsBefore).find((e) => e.event === 'mark' && e.data.kind === 'rollout' && e.data.route === 'web' && e.data.event === 'started')
        return started2 !== undefined
      }, 5000, 50)
      t.pass(`B's feed: ${JSON.stringify(started2?.data)}`)
    } catch (err) {
      const seen = feed.events.slice(eventsBefore).filter((e) => e.event !== 'sample').map((e) => `${e.event} ${JSON.stringify(e.data)}`)
      t.fail(`${(err as Error).message}; B's feed sent: ${JSON.stringify(seen)}`)
    }
    // A leads it: A's fleet page says so (after its next re-read)
    const page = fleetPage?.page
    if (page !== undefined) {
      let rows: FleetRow[] = []
      try {
        await until('A\'s #/fleet shows A leading the rollout of web', async () => {
          rows = await fleetRows(page)
          const self = rows.find((r) => /\(this one\)/.test(r.instance))
          const other = rows.find((r) => !/\(this one\)/.test(r.instance))
          return self?.leads === 'web' && other?.leads === '–'
        }, 10_000, 200)
        t.pass('A\'s #/fleet: A leads web, B leads nothing')
      } catch (err) {
        t.fail(`${(err as Error).message}; rows: ${JSON.stringify(rows.map((r) => [r.instance, r.leads]))}`)
      }
      t.same(unexpectedErrors(fleetPage!.errors), [], 'A\'s fleet page: no console error')
    }
    t.same(unexpectedErrors(pb.errors), [], 'B\'s route page: no console error')
  })

  const failedA = [...trafficA.statuses].filter(([k]) => k !== '200')
  const failedB = [...trafficB.statuses].filter(([k]) => k !== '200')
  t.same([...failedA, ...failedB], [], `every user request through A (${trafficA.sent()}) and B (${trafficB.sent()}) answered 200`)
  t.comment(`whole fleet test: ${since(tSetup)} ms`)
})

/** Route web's weights on `inst`, from its GET /api/v1/routes. */
async function weightsOnRoute (inst: FleetInstance): Promise<Record<string, number>> {
  const r = await inst.get('/api/v1/routes')
  if (r.status !== 200) throw new Error(`GET /api/v1/routes on ${inst.name}: ${r.status} ${JSON.stringify(r.json)}`)
  const web = (r.json.routes as Array<{ name: string; versions: Array<{ name: string; weight: number }> }>).find((x) => x.name === 'web')
  return weightsOfRoute(web ?? {})
}
