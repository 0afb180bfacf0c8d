import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import type { Logger } from '../logger.js'
import type { ListenerCertificate } from './certs.js'
import { parseProxyHeader } from './proxy-protocol.js'
import { TlsTerminator, type TlsSettings } from './tls.js'
import type { TrustedProxies } from './trust.js'

/** What the proxy needs to know about a client connection, fixed when it is accepted. */
export interface ConnectionInfo {
  /** The client reached canaryd over TLS: X-Forwarded-Proto https, Secure sticky cookies. */
  readonly secure: boolean
  /** Accepted on the plain-HTTP redirect port (answered 308, ACME challenges aside). */
  readonly redirect: boolean
  /** The client's address: the PROXY header's source when there is one, else the TCP peer. */
  readonly address: string
  /** `address` is one of trustedProxies: its X-Forwarded-* headers are believed. */
  readonly trusted: boolean
}

/** Where established connections go: the proxy's HTTP/1.1 and HTTP/2 servers. */
export interface ConnectionHandlers {
  http1: (socket: Duplex, info: ConnectionInfo) => void
  http2: (socket: Duplex, info: ConnectionInfo) => void
}

/** The proxy listener's settings (all static: a restart changes them; certificates aside). */
export interface EdgeListenerOptions {
  host: string
  port: number
  /** Plain-HTTP port answering 308 to https (0 = none). */
  redirectPort: number
  /** TLS on the main port: certificates (reloadable) and settings. */
  tls?: { certificates: readonly ListenerCertificate[], settings: TlsSettings }
  /** Cleartext HTTP/2 by prior knowledge beside HTTP/1.1 (no TLS only). */
  h2c: boolean
  /** Every connection starts with a PROXY protocol header. */
  proxyProtocol: boolean
  trust: TrustedProxies
  /** With proxyProtocol: the peers allowed to send a PROXY header (empty: any). */
  proxySenders?: TrustedProxies
  /** Longest wait for what must come before HTTP (a PROXY header, the h2c preface decision). */
  preludeTimeoutMs: number
  /** Most open connections per listening port (0 = no cap); past it Node closes new ones at once. */
  maxConnections: number
  log: Logger
}

/** Connections closed before any HTTP, by reason (canaryd_connection_errors_total). */
export interface ConnectionErrors {
  tls_handshake: number
  proxy_protocol: number
  prelude_timeout: number
}

/** The HTTP/2 connection preface (RFC 9113 §3.4): how an h2c client announces itself before any HTTP/1.1 byte could. */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1')

/** The raw socket's ConnectionInfo, read back when its TLS handshake completes. */
const kInfo = Symbol('canaryd.connectionInfo')
type InfoSocket = Socket & { [kInfo]?: ConnectionInfo }

function destroyOnError (this: Socket): void {
  this.destroy()
}

/**
 * The edge of canaryd: owns the listening sockets and everything that
 * happens on a connection before HTTP (STYLE.md: listener/). For each
 * accepted connection it reads the PROXY header when configured, decides
 * the client address and whether its hop is trusted, terminates TLS (SNI
 * certificate, ALPN h2 or http/1.1) or, for cleartext, tells an h2c preface
 * from HTTP/1.1, and hands the connection to the proxy's HTTP/1.1 or HTTP/2
 * server. It never parses HTTP and never routes.
 *
 * Bytes read before the hand-off (the PROXY header's tail, the h2c sniff)
 * are put back with `unshift`: TLSSocket and the HTTP/2 session take a
 * socket's buffered bytes first, and the HTTP/1.1 parser gets them through
 * the socket's 'data' event once resumed.
 */
export class EdgeListener {
  readonly #o: EdgeListenerOptions
  readonly #handlers: ConnectionHandlers
  readonly #main: Server
  readonly #redirect: Server | undefined
  readonly #tls: TlsTerminator | undefined
  /** Sockets not yet handed to HTTP (PROXY header, sniff, TLS handshake): closed with the listener. */
  readonly #pending = new Set<Socket>()
  readonly errors: ConnectionErrors = { tls_handshake: 0, proxy_protocol: 0, prelude_timeout: 0 }
  #open = 0
  #rejected = 0
  #closed = false

  constructor (opts: EdgeListenerOptions, handlers: ConnectionHandlers) {
    this.#o = opts
    this.#handlers = handlers
    if (opts.tls !== undefined) {
      this.#tls = new TlsTerminator(opts.tls.certificates, opts.tls.settings, this.#secure, this.#tlsError)
    }
    this.#main = this.#server(false)
    this.#redirect = opts.redirectPort !== 0 && opts.tls !== undefined ? this.#server(true) : undefined
  }

  #server (redirect: boolean): Server {
    const s = createServer({ noDelay: true }, (socket) => { this.#accept(socket, redirect) })
    if (this.#o.maxConnections > 0) s.maxConnections = this.#o.maxConnections
    // past maxConnections Node closes the new socket before any byte is read
    s.on('drop', () => { this.#rejected++ })
    return s
  }

  /** Starts listening on the main port (and the redirect port); resolves with the bound addresses. */
  async listen (): Promise<{ main: AddressInfo, redirect: AddressInfo | undefined }> {
    const main = await listenOn(this.#main, this.#o.port, this.#o.host)
    if (this.#redirect === undefined) return { main, redirect: undefined }
    try {
      return { main, redirect: await listenOn(this.#redirect, this.#o.redirectPort, this.#o.host) }
    } catch (err) {
      this.#main.close()
      throw Object.assign(err as Error, { redirect: true })
    }
  }

  /** Serves `certs` from the next TLS handshake on (established connections keep theirs). Throws when OpenSSL refuses one: nothing changed then. */
  setCertificates (certs: readonly ListenerCertificate[]): void {
    if (this.#tls === undefined) throw new Error('TLS is off on this listener: turning it on needs a restart')
    this.#tls.setCertificates(certs)
  }

  /** The certificates served now (none without TLS). */
  get certificates (): readonly ListenerCertificate[] {
    return this.#tls?.certificates ?? []
  }

  /** Client connections open now (both ports, handed over or not). */
  get connections (): number {
    return this.#open
  }

  /** Connections closed at once because maxConnections were open. */
  get rejectedConnections (): number {
    return this.#rejected
  }

  /** Stops accepting; connections not yet handed to HTTP are closed (the proxy drains the others). */
  close (): void {
    if (this.#closed) return
    this.#closed = true
    this.#main.close()
    this.#redirect?.close()
    for (const s of this.#pending) s.destroy()
    this.#pending.clear()
  }

  #accept (socket: Socket, redirect: boolean): void {
    this.#open++
    socket.once('close', this.#onClose)
    // before the hand-off nobody else listens: a reset must not become an uncaught error
    socket.on('error', destroyOnError)
    if (this.#closed) {
      socket.destroy()
      return
    }
    if (this.#o.proxyProtocol) {
      const senders = this.#o.proxySenders
      // a peer that is not the load balancer could name any client address: it never gets to send one
      if (senders !== undefined && !senders.empty && !senders.trusts(socket.remoteAddress ?? '')) {
        this.errors.proxy_protocol++
        socket.destroy()
        return
      }
      this.#readProxyHeader(socket, redirect)
      return
    }
    this.#route(socket, redirect, socket.remoteAddress ?? '', false)
  }

  readonly #onClose = (): void => {
    this.#open--
  }

  /** The connection's client address is known: TLS, h2c sniff or straight to HTTP/1.1. `buffered`: bytes were put back. */
  #route (socket: Socket, redirect: boolean, peer: string, buffered: boolean): void {
    // one client, one address: `::ffff:1.2.3.4` (a dual-stack listener's view, or a PROXY v2 INET6 source) is 1.2.3.4, as trust.ts gives X-Forwarded-For hops
    const address = peer.startsWith('::ffff:') && peer.includes('.') ? peer.slice(7) : peer
    const trust = this.#o.trust
    const info: ConnectionInfo = { secure: this.#tls !== undefined && !redirect, redirect, address, trusted: !trust.empty && trust.trusts(address) }
    if (info.secure) {
      ;(socket as InfoSocket)[kInfo] = info
      this.#pending.add(socket)
      this.#tls!.server.emit('connection', socket)
      return
    }
    if (this.#o.h2c && !redirect) {
      this.#sniff(socket, info)
      return
    }
    this.#http1(socket, info, buffered)
  }

  #http1 (socket: Duplex, info: ConnectionInfo, buffered: boolean): void {
    this.#handlers.http1(socket, info)
    // bytes put back (or a socket paused while reading them) reach the HTTP/1.1 parser through 'data' only once flowing
    if (buffered) socket.resume()
  }

  readonly #secure = (tls: TLSSocket): void => {
    const raw = (tls as TLSSocket & { _parent?: InfoSocket })._parent
    if (raw !== undefined) this.#pending.delete(raw)
    const info = raw?.[kInfo] ?? { secure: true, redirect: false, address: tls.remoteAddress ?? '', trusted: false }
    tls.on('error', destroyOnError)
    if (tls.alpnProtocol === 'h2') this.#handlers.http2(tls, info)
    else this.#handlers.http1(tls, info)
  }

  readonly #tlsError = (err: Error, tls: TLSSocket): void => {
    // a peer that connects and leaves without a ClientHello is a load balancer's TCP health check, not a failed handshake
    if ((err as NodeJS.ErrnoException).code !== 'ECONNRESET') this.errors.tls_handshake++
    const raw = (tls as TLSSocket & { _parent?: Socket })._parent
    if (raw !== undefined) this.#pending.delete(raw)
    this.#o.log.debug({ code: (err as NodeJS.ErrnoException).code, reason: err.message }, 'TLS handshake failed')
    tls.destroy()
  }

  /**
   * Reads bytes until `decide` knows what they are: 'more' waits (bounded
   * by preludeTimeoutMs), a number is how many bytes belong to the prelude
   * (the rest are put back, then `next` runs), 'invalid' closes.
   */
  #prelude (socket: Socket, decide: (buf: Buffer) => number | 'more' | 'invalid', next: () => void, onInvalid: () => void): void {
    this.#pending.add(socket)
    let buf: Buffer | undefined
    const done = (): void => {
      clearTimeout(timer)
      socket.removeListener('data', onData)
      socket.removeListener('end', onEnd)
      socket.removeListener('close', onEnd)
      this.#pending.delete(socket)
    }
    const timer = setTimeout(() => {
      done()
      this.errors.prelude_timeout++
      socket.destroy()
    }, this.#o.preludeTimeoutMs)
    // the client left (FIN or reset) before deciding: not a timeout, and nothing to wait for
    const onEnd = (): void => {
      done()
      socket.destroy()
    }
    const onData = (chunk: Buffer): void => {
      buf = buf === undefined ? chunk : Buffer.concat([buf, chunk])
      const d = decide(buf)
      if (d === 'more') return
      done()
      if (d === 'invalid') {
        onInvalid()
        socket.destroy()
        return
      }
      socket.pause()
      const rest = buf.subarray(d)
      if (rest.length !== 0) socket.unshift(rest)
      next()
    }
    socket.on('data', onData)
    socket.on('end', onEnd)
    socket.on('close', onEnd)
    // after a PROXY header the socket was paused for the next step: a 'data' listener alone does not restart it
    socket.resume()
  }

  #readProxyHeader (socket: Socket, redirect: boolean): void {
    let address = socket.remoteAddress ?? ''
    this.#prelude(socket, (buf) => {
      const r = parseProxyHeader(buf)
      if (r.state === 'more') return 'more'
      if (r.state === 'invalid') {
        this.#o.log.debug({ peer: socket.remoteAddress, reason: r.reason }, 'connection without a valid PROXY protocol header closed')
        return 'invalid'
      }
      // LOCAL (the balancer's own health check) and UNKNOWN/unix families carry no client: the peer is the client
      if (r.header.command === 'proxy' && r.header.source !== undefined) address = r.header.source.address
      return r.length
    }, () => { this.#route(socket, redirect, address, true) }, () => { this.errors.proxy_protocol++ })
  }

  #sniff (socket: Socket, info: ConnectionInfo): void {
    let h2 = false
    this.#prelude(socket, (buf) => {
      const n = Math.min(buf.length, H2_PREFACE.length)
      // the first byte that differs from the preface makes it HTTP/1.1; all of it makes it h2
      if (buf.compare(H2_PREFACE, 0, n, 0, n) !== 0) return 0
      if (n < H2_PREFACE.length) return 'more'
      h2 = true
      return 0
    }, () => {
      if (h2) this.#handlers.http2(socket, info)
      else this.#http1(socket, info, true)
    }, () => {})
  }
}

async function listenOn (server: Server, port: number, host: string): Promise<AddressInfo> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  return server.address() as AddressInfo
}
