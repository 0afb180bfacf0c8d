/**
 * DNS discovery of upstream endpoints, against a real DNS server on
 * 127.0.0.1 (test/helpers/dns.ts): what DnsResolver answers for A, AAAA,
 * both, none and failures; how DnsWatch keeps a set fresh, reports changes,
 * rides out failures (logging them sparsely) and stops.
 */
import t from 'tap'
import { DNS_TIMEOUT_MS, DNS_TRIES, DnsError, DnsResolver, DnsWatch, discoveryHost, endpointOrigin } from '../../src/upstream/dns.js'
import { startDnsServer, type TestDnsServer } from '../helpers/dns.js'
import { captureLog, type LogLine as Line } from '../helpers/log.js'

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** Polls `cond` every 5 ms for at most `ms`; returns whether it became true. */
async function until (cond: () => boolean, ms = 3000): Promise<boolean> {
  const deadline = performance.now() + ms
  while (!cond() && performance.now() < deadline) await sleep(5)
  return cond()
}

/** Rejection of `p` as a DnsError (fails the test if it resolved or threw something else). */
async function dnsFailure (p: Promise<unknown>): Promise<DnsError> {
  try {
    await p
  } catch (err) {
    if (err instanceof DnsError) return err
    throw err
  }
  throw new Error('expected a DnsError, the resolution succeeded')
}

let dns: TestDnsServer
t.before(async () => { dns = await startDnsServer() })
t.teardown(async () => { await dns.close() })

t.test('DnsResolver against a DNS server: A, AAAA, both; deduplicated and sorted', async (t) => {
  const r = new DnsResolver([dns.server])
  dns.set('web.test', ['10.0.0.10', '10.0.0.7', '10.0.0.9', '10.0.0.7'])
  t.same(await r.resolve('web.test'), ['10.0.0.7', '10.0.0.9', '10.0.0.10'], 'every A record, numeric order, duplicates dropped')
  t.same(await r.resolve('WEB.Test'), ['10.0.0.7', '10.0.0.9', '10.0.0.10'], 'names are case-insensitive')

  dns.set('six.test', [], ['fd00::10', 'FD00:0:0::2', 'fd00::2'])
  t.same(await r.resolve('six.test'), ['fd00::2', 'fd00::10'], 'AAAA only: canonical text, two spellings of one address are one, numeric order')

  dns.set('dual.test', ['192.168.1.2', '10.1.0.1'], ['2001:db8::1', '::1'])
  t.same(await r.resolve('dual.test'), ['10.1.0.1', '192.168.1.2', '::1', '2001:db8::1'], 'both families: the union, IPv4 first')

  dns.set('empty.test', [], [])
  const empty = await dnsFailure(r.resolve('empty.test'))
  t.equal(empty.code, 'ENODATA', 'no record of either family is an error')
  t.match(empty.message, /empty\.test.*no A\/AAAA records/, 'the message names the host and says why')
  t.equal(empty.hostname, 'empty.test')

  const nx = await dnsFailure(r.resolve('missing.test'))
  t.equal(nx.code, 'ENOTFOUND', 'an unknown name: ENOTFOUND')
  t.match(nx.message, /missing\.test/, 'the message names the host')

  dns.fail('broken.test', 'SERVFAIL')
  const sf = await dnsFailure(r.resolve('broken.test'))
  t.equal(sf.code, 'ESERVFAIL', 'SERVFAIL: ESERVFAIL')
  t.match(sf.message, /broken\.test.*ESERVFAIL/, 'the message names the host and the cause code')

  dns.fail('gone.test', 'NXDOMAIN')
  t.equal((await dnsFailure(r.resolve('gone.test'))).code, 'ENOTFOUND', 'a name made to fail NXDOMAIN: ENOTFOUND')
})

t.test('an unanswered query (DROP) times out within the bounded time', async (t) => {
  dns.fail('black.hole.test', 'DROP')
  const r = new DnsResolver([dns.server])
  const t0 = performance.now()
  const err = await dnsFailure(r.resolve('black.hole.test'))
  const took = performance.now() - t0
  t.equal(err.code, 'ETIMEOUT', 'ETIMEOUT')
  t.match(err.message, /black\.hole\.test.*ETIMEOUT/, 'the message names the host and the cause')
  // the resolver's own deadline, timeout × tries (c-ares alone, doubling its timeout per retry, took about 7 s)
  const bound = DNS_TIMEOUT_MS * DNS_TRIES
  t.ok(took >= bound - 50 && took < bound + 500, `gave up after ${Math.round(took)} ms (bound ${bound} ms)`)
  t.ok(dns.queries('black.hole.test') >= 2, 'it did ask (A and AAAA)')

  const quick = new DnsResolver([dns.server], { timeoutMs: 100, tries: 1 })
  const t1 = performance.now()
  t.equal((await dnsFailure(quick.resolve('black.hole.test'))).code, 'ETIMEOUT', 'a shorter timeout: ETIMEOUT too')
  t.ok(performance.now() - t1 < 600, 'and sooner')
})

t.test('an IP literal is its own answer, with no query', async (t) => {
  const r = new DnsResolver([dns.server])
  const before = dns.queries('10.1.2.3')
  t.same(await r.resolve('10.1.2.3'), ['10.1.2.3'])
  t.same(await r.resolve('::1'), ['::1'])
  t.same(await r.resolve('[fd00:0::7]'), ['fd00::7'], 'a bracketed IPv6 literal, canonicalised')
  t.equal(dns.queries('10.1.2.3'), before, 'the DNS server was not asked')
  t.same(await new DnsResolver([]).resolve('127.0.0.1'), ['127.0.0.1'], 'system-resolver mode too')
})

t.test('system-resolver mode (no servers) resolves localhost through /etc/hosts', async (t) => {
  const r = new DnsResolver([])
  const found = await r.resolve('localhost')
  t.ok(found.includes('127.0.0.1') || found.includes('::1'), `localhost → ${found.join(', ')}`)
  t.same(found, [...new Set(found)], 'deduplicated')
})

t.test('server entries are checked when the resolver is made', async (t) => {
  for (const ok of ['127.0.0.1', '127.0.0.1:53', '[::1]:5353', '[::1]', '::1']) t.doesNotThrow(() => new DnsResolver([ok]), ok)
  for (const bad of ['dns.example', 'dns.example:53', '127.0.0.1:0', '127.0.0.1:70000', '[127.0.0.1]:53', '127.0.0.1:x', '']) {
    t.throws(() => new DnsResolver([bad]), TypeError, JSON.stringify(bad))
  }
  t.throws(() => new DnsResolver([dns.server], { timeoutMs: 0 }), TypeError, 'timeout 0')
  t.throws(() => new DnsResolver([dns.server], { tries: 0 }), TypeError, 'tries 0')
})

t.test('DnsWatch: the first set, changes picked up on refresh, onChange only on a real change', async (t) => {
  const { logger, lines } = captureLog()
  dns.set('api.watch.test', ['10.0.1.2', '10.0.1.1'])
  const changes: string[][] = []
  const w = new DnsWatch({ resolver: new DnsResolver([dns.server]), hostname: 'api.watch.test', refreshMs: 60_000, onChange: (a) => { changes.push(a) }, log: logger })
  t.teardown(() => { w.stop() })
  await w.start()
  t.same(w.addresses, ['10.0.1.1', '10.0.1.2'], 'start() awaited the first resolution')
  t.same(changes, [['10.0.1.1', '10.0.1.2']], 'onChange got the first set')

  await w.refresh()
  dns.set('api.watch.test', ['10.0.1.2', '10.0.1.1', '10.0.1.1'])
  await w.refresh()
  t.equal(changes.length, 1, 'the same set (reordered, duplicated) is no change')

  dns.set('api.watch.test', ['10.0.1.1', '10.0.1.3'], ['fd00::1'])
  await w.refresh()
  t.same(changes.at(-1), ['10.0.1.1', '10.0.1.3', 'fd00::1'], 'a pod replaced and an IPv6 one added')
  t.same(w.addresses, ['10.0.1.1', '10.0.1.3', 'fd00::1'])
  await w.refresh()
  t.equal(changes.length, 2, 'one call per real change')
  const changed = lines.filter((l) => l.msg === 'DNS endpoints changed')
  t.equal(changed.length, 2, 'each change is logged once')
  t.same(changed[1]?.added, ['10.0.1.3', 'fd00::1'], 'with what was added')
  t.same(changed[1]?.removed, ['10.0.1.2'], 'and what was removed')
})

t.test('DnsWatch: a failure keeps the last good set, warns once a minute, recovery is logged once', async (t) => {
  const { logger, lines } = captureLog()
  let clock = 1_000_000
  dns.set('flaky.watch.test', ['10.0.2.1', '10.0.2.2'])
  const changes: string[][] = []
  const w = new DnsWatch({ resolver: new DnsResolver([dns.server]), hostname: 'flaky.watch.test', refreshMs: 60_000, onChange: (a) => { changes.push(a) }, log: logger, now: () => clock })
  t.teardown(() => { w.stop() })
  await w.start()
  const warns = (): Line[] => lines.filter((l) => l.level === 40)
  const recovered = (): Line[] => lines.filter((l) => l.msg === 'DNS discovery recovered')

  dns.fail('flaky.watch.test', 'SERVFAIL')
  for (let i = 0; i < 5; i++) {
    await w.refresh()
    clock += 10_000
  }
  t.same(w.addresses, ['10.0.2.1', '10.0.2.2'], 'the last good set is kept')
  t.equal(changes.length, 1, 'a failure is no change')
  t.equal(warns().length, 1, 'five failures within 50 s: one warn')
  t.equal(warns()[0]?.hostname, 'flaky.watch.test', 'naming the hostname')
  t.equal(warns()[0]?.code, 'ESERVFAIL', 'and the cause code')
  t.match(String(warns()[0]?.cause), /flaky\.watch\.test/, 'and the cause message')

  clock += 10_000 // 60 s after the first warn
  await w.refresh()
  t.equal(warns().length, 2, 'a minute later: a second warn')
  t.equal(warns()[1]?.failures, 6, 'counting the failures of the streak')

  dns.set('flaky.watch.test', ['10.0.2.1', '10.0.2.2'])
  await w.refresh()
  await w.refresh()
  t.equal(recovered().length, 1, 'recovery: one info line')
  t.equal(recovered()[0]?.level, 30, 'at info')
  t.equal(changes.length, 1, 'the same set as before the failures: no change')

  // a new streak within the minute of the last warn: throttled, so its recovery is not logged either
  dns.fail('flaky.watch.test', 'NXDOMAIN')
  clock += 1000
  await w.refresh()
  dns.set('flaky.watch.test', ['10.0.2.3'])
  await w.refresh()
  t.equal(warns().length, 2, 'no warn within the minute')
  t.equal(recovered().length, 1, 'and no recovery line for a streak nobody was warned of')
  t.same(changes.at(-1), ['10.0.2.3'], 'the new set after recovery')

  clock += 60_000
  dns.fail('flaky.watch.test', 'NXDOMAIN')
  await w.refresh()
  t.equal(warns().length, 3, 'past the minute: warned again')
  t.equal(warns()[2]?.code, 'ENOTFOUND', 'with this streak\'s cause')
  dns.set('flaky.watch.test', ['10.0.2.3'])
  await w.refresh()
  t.equal(recovered().length, 2, 'and its recovery logged')
})

t.test('DnsWatch: a first resolution that fails leaves the set empty; start() still resolves', async (t) => {
  const { logger, lines } = captureLog()
  dns.fail('late.watch.test', 'DROP')
  const changes: string[][] = []
  const w = new DnsWatch({ resolver: new DnsResolver([dns.server], { timeoutMs: 100, tries: 1 }), hostname: 'late.watch.test', refreshMs: 60_000, onChange: (a) => { changes.push(a) }, log: logger })
  t.teardown(() => { w.stop() })
  const t0 = performance.now()
  await w.start()
  t.ok(performance.now() - t0 < 2000, 'start() did not hang on the silent server')
  t.same(w.addresses, [], 'no addresses yet')
  t.same(changes, [], 'no onChange')
  t.equal(lines.find((l) => l.level === 40)?.code, 'ETIMEOUT', 'warned with ETIMEOUT')

  dns.set('late.watch.test', ['10.0.3.1'])
  await w.refresh()
  t.same(changes, [['10.0.3.1']], 'the name appeared: reported')
})

t.test('DnsWatch: refreshes on its timer, and stop() stops them', async (t) => {
  const { logger } = captureLog()
  dns.set('tick.watch.test', ['10.0.4.1'])
  const changes: string[][] = []
  const w = new DnsWatch({ resolver: new DnsResolver([dns.server]), hostname: 'tick.watch.test', refreshMs: 20, onChange: (a) => { changes.push(a) }, log: logger })
  t.teardown(() => { w.stop() })
  await w.start()
  const first = dns.queries('tick.watch.test')
  dns.set('tick.watch.test', ['10.0.4.2'])
  t.ok(await until(() => w.addresses[0] === '10.0.4.2'), 'the timer picked up the change')
  t.ok(await until(() => dns.queries('tick.watch.test') >= first + 6), 'and keeps refreshing')
  w.stop()
  await sleep(30) // a resolution in flight at stop() may still reach the server
  const stopped = dns.queries('tick.watch.test')
  await sleep(150)
  t.equal(dns.queries('tick.watch.test'), stopped, 'no query after stop()')
  dns.set('tick.watch.test', ['10.0.4.3'])
  await w.refresh()
  t.same(w.addresses, ['10.0.4.2'], 'refresh() after stop() does nothing')
  t.equal(changes.length, 2)
})

/** A resolver whose answers the test releases by hand. */
class GatedResolver extends DnsResolver {
  readonly pending: Array<(addresses: string[]) => void> = []
  constructor () { super([]) }
  override async resolve (): Promise<string[]> {
    return await new Promise((resolve) => { this.pending.push(resolve) })
  }
}

t.test('DnsWatch: a resolution in flight at stop() does not call onChange; an older answer never overwrites a newer one', async (t) => {
  const { logger } = captureLog()
  const changes: string[][] = []
  const gated = new GatedResolver()
  const w = new DnsWatch({ resolver: gated, hostname: 'gated.test', refreshMs: 60_000, onChange: (a) => { changes.push(a) }, log: logger })
  const slow = w.refresh()
  const fast = w.refresh()
  gated.pending[1]!(['10.0.5.2'])
  await fast
  gated.pending[0]!(['10.0.5.1'])
  await slow
  t.same(w.addresses, ['10.0.5.2'], 'the newer answer stands')
  t.same(changes, [['10.0.5.2']], 'the stale one was dropped')

  const inFlight = w.refresh()
  w.stop()
  gated.pending[2]!(['10.0.5.3'])
  await inFlight
  t.same(changes, [['10.0.5.2']], 'no onChange after stop()')
  t.same(w.addresses, ['10.0.5.2'])
})

t.test('DnsWatch: an onChange that throws is logged, not fatal', async (t) => {
  const { logger, lines } = captureLog()
  dns.set('throw.watch.test', ['10.0.6.1'])
  const w = new DnsWatch({ resolver: new DnsResolver([dns.server]), hostname: 'throw.watch.test', refreshMs: 60_000, onChange: () => { throw new Error('boom') }, log: logger })
  t.teardown(() => { w.stop() })
  await w.start()
  t.same(w.addresses, ['10.0.6.1'], 'the set is still taken')
  t.equal(lines.filter((l) => l.level === 50).length, 1, 'one error line')
  t.throws(() => new DnsWatch({ resolver: new DnsResolver([]), hostname: 'x.test', refreshMs: 0, onChange: () => {}, log: logger }), TypeError, 'refreshMs 0 is refused')
})

t.test('endpointOrigin: the origin with its host replaced by the address', async (t) => {
  const cases: Array<[string, string, string]> = [
    ['http://svc.ns.svc:8080', '10.0.0.7', 'http://10.0.0.7:8080'],
    ['http://svc.ns.svc.cluster.local:8080', 'fd00::7', 'http://[fd00::7]:8080'],
    ['https://api.internal', '10.0.0.8', 'https://10.0.0.8'],
    ['https://api.internal:8443', '2001:db8::1', 'https://[2001:db8::1]:8443'],
    ['http://svc:80', '10.0.0.9', 'http://10.0.0.9'],
    ['https://svc:443', '10.0.0.9', 'https://10.0.0.9'],
    ['http://svc:443', '10.0.0.9', 'http://10.0.0.9:443'],
    ['http://svc', '10.0.0.9', 'http://10.0.0.9']
  ]
  for (const [origin, address, want] of cases) t.equal(endpointOrigin(origin, address), want, `${origin} + ${address}`)
  t.throws(() => endpointOrigin('http://svc:8080', 'not-an-ip'), TypeError, 'a name is not an endpoint address')
})

t.test('discoveryHost: the name to resolve, none for an IP literal', async (t) => {
  const cases: Array<[string, string | undefined]> = [
    ['http://svc.ns.svc:8080', 'svc.ns.svc'],
    ['http://Web.Example:8080', 'web.example'],
    ['https://backend', 'backend'],
    ['http://10.0.0.7:8080', undefined],
    ['http://[::1]:8080', undefined],
    ['https://[2001:db8::1]', undefined]
  ]
  for (const [origin, want] of cases) t.equal(discoveryHost(origin), want, origin)
})
