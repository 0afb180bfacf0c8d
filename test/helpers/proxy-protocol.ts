// Builders of PROXY protocol headers, for tests that send one before HTTP
// over a raw socket, as a load balancer in front of canaryd would.
import { isIPv6 } from 'node:net'
import type { ProxyAddress } from '../../src/listener/proxy-protocol.js'

const V2_SIGNATURE = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1')

/** A v1 line `PROXY TCP4|TCP6 src dst sport dport\r\n`; the family defaults to the source address's. */
export function proxyV1 (src: ProxyAddress, dst: ProxyAddress, family?: 'tcp4' | 'tcp6'): Buffer {
  const proto = (family ?? (isIPv6(src.address) ? 'tcp6' : 'tcp4')).toUpperCase()
  return Buffer.from(`PROXY ${proto} ${src.address} ${dst.address} ${src.port} ${dst.port}\r\n`, 'latin1')
}

/** The v1 line for a connection the proxy cannot describe (its own health checks). */
export function proxyV1Unknown (): Buffer {
  return Buffer.from('PROXY UNKNOWN\r\n', 'latin1')
}

/**
 * A v2 header. The family follows the addresses (IPv4 → INET, IPv6 → INET6,
 * none → UNSPEC), STREAM protocol; `tlvs` are appended after the address
 * block and counted in the length. A LOCAL header with addresses keeps them,
 * to test that the receiver ignores them.
 */
export function proxyV2 (opts: { command?: 'proxy' | 'local', src?: ProxyAddress, dst?: ProxyAddress, tlvs?: Buffer }): Buffer {
  const { command = 'proxy', src, dst, tlvs = Buffer.alloc(0) } = opts
  let fam = 0x00
  let block = Buffer.alloc(0)
  if (src !== undefined && dst !== undefined) {
    const v6 = isIPv6(src.address)
    fam = v6 ? 0x21 : 0x11
    const bytes = (a: string): Buffer => v6 ? ipv6Bytes(a) : Buffer.from(a.split('.').map(Number))
    const ports = Buffer.alloc(4)
    ports.writeUInt16BE(src.port, 0)
    ports.writeUInt16BE(dst.port, 2)
    block = Buffer.concat([bytes(src.address), bytes(dst.address), ports])
  }
  const head = Buffer.alloc(4)
  head[0] = command === 'local' ? 0x20 : 0x21
  head[1] = fam
  head.writeUInt16BE(block.length + tlvs.length, 2)
  return Buffer.concat([V2_SIGNATURE, head, block, tlvs])
}

/** IPv6 text (compressed, or with a dotted IPv4 tail) → its 16 bytes. */
export function ipv6Bytes (text: string): Buffer {
  let s = text
  if (s.includes('.')) {
    // '::ffff:1.2.3.4' → '::ffff:102:304'
    const cut = s.lastIndexOf(':') + 1
    const [a = 0, b = 0, c = 0, d = 0] = s.slice(cut).split('.').map(Number)
    s = `${s.slice(0, cut)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head = '', tail] = s.split('::')
  const groups = (part: string): string[] => part === '' ? [] : part.split(':')
  const words = tail === undefined
    ? groups(head)
    : [...groups(head), ...Array<string>(8 - groups(head).length - groups(tail).length).fill('0'), ...groups(tail)]
  const out = Buffer.alloc(16)
  words.forEach((w, i) => out.writeUInt16BE(parseInt(w, 16), 2 * i))
  return out
}
