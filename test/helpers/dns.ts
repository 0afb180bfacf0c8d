import { createSocket } from 'node:dgram'
import dnsPacket from 'dns-packet'

/** How a name that `fail` was called for answers: an error rcode, or nothing at all. */
export type DnsFailure = 'SERVFAIL' | 'NXDOMAIN' | 'DROP'

/** A real DNS server on 127.0.0.1 (UDP, port 0) whose records a test sets. */
export interface TestDnsServer {
  port: number
  /** `127.0.0.1:PORT`, as a DnsResolver server entry. */
  server: string
  /** Sets the A (and AAAA) records of `name`; ends a `fail` of it. An empty set answers NOERROR with no records. */
  set: (name: string, a: string[], aaaa?: string[]) => void
  /** Makes every later query of `name` fail with `rcode`, or go unanswered (`DROP`), until `set` again. */
  fail: (name: string, rcode: DnsFailure) => void
  /** Queries received for `name` so far (any type, answered or dropped). */
  queries: (name: string) => number
  close: () => Promise<void>
}

/** DNS rcodes (RFC 1035 4.1.1), the low 4 bits of the header flags. */
const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3 } as const

/** DNS names compare case-insensitively (RFC 4343), with or without the root's trailing dot. */
function key (name: string): string {
  return name.toLowerCase().replace(/\.$/, '')
}

/**
 * Starts an authoritative-only DNS server for tests, built on dns-packet: it
 * answers A and AAAA from what `set` gave, NXDOMAIN for unknown names, and
 * the failure `fail` chose. Every query is counted per name, so a test can
 * tell whether the code under test asked at all.
 */
export async function startDnsServer (): Promise<TestDnsServer> {
  const records = new Map<string, { a: string[]; aaaa: string[] }>()
  const failures = new Map<string, DnsFailure>()
  const counts = new Map<string, number>()
  const socket = createSocket('udp4')

  socket.on('message', (msg, rinfo) => {
    let query: dnsPacket.DecodedPacket
    try {
      query = dnsPacket.decode(msg)
    } catch {
      return // not DNS: a real server would drop it too
    }
    const question = query.questions?.[0]
    if (question === undefined) return
    const name = key(question.name)
    counts.set(name, (counts.get(name) ?? 0) + 1)
    const failure = failures.get(name)
    if (failure === 'DROP') return
    const set = records.get(name)
    let rcode: number = RCODE.NOERROR
    const answers: dnsPacket.Answer[] = []
    if (failure !== undefined) {
      rcode = RCODE[failure]
    } else if (set === undefined) {
      rcode = RCODE.NXDOMAIN
    } else if (question.type === 'A' || question.type === 'AAAA') {
      for (const data of question.type === 'A' ? set.a : set.aaaa) {
        // the question's own spelling: resolvers match the answer against it
        answers.push({ type: question.type, name: question.name, class: 'IN', ttl: 5, data })
      }
    }
    const reply = dnsPacket.encode({
      type: 'response',
      id: query.id ?? 0,
      flags: dnsPacket.AUTHORITATIVE_ANSWER | ((query.flags ?? 0) & dnsPacket.RECURSION_DESIRED) | rcode,
      questions: query.questions ?? [],
      answers
    })
    socket.send(reply, rinfo.port, rinfo.address)
  })

  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(0, '127.0.0.1', () => {
      socket.off('error', reject)
      resolve()
    })
  })
  const port = socket.address().port
  return {
    port,
    server: `127.0.0.1:${port}`,
    set: (name, a, aaaa = []) => {
      records.set(key(name), { a: [...a], aaaa: [...aaaa] })
      failures.delete(key(name))
    },
    fail: (name, rcode) => { failures.set(key(name), rcode) },
    queries: (name) => counts.get(key(name)) ?? 0,
    close: async () => { await new Promise<void>((resolve) => socket.close(() => { resolve() })) }
  }
}
