import { createSecureContext, Server as TlsServer, type SecureContext, type TLSSocket } from 'node:tls'
import { SniIndex, type ListenerCertificate } from './certs.js'

/** TLS settings of the proxy listener that are not certificates (static: a restart changes them). */
export interface TlsSettings {
  minVersion: 'TLSv1.2' | 'TLSv1.3'
  /** OpenSSL cipher list for TLS 1.2 ('' = Node's default). */
  ciphers: string
  /** Offer h2 by ALPN (before http/1.1). */
  http2: boolean
  /** Longest TLS handshake before the connection is closed. */
  handshakeTimeoutMs: number
  /**
   * Session ticket keys (48 bytes). Cluster workers get the primary's, so a
   * ticket one worker issued resumes on any other; undefined = random per process.
   */
  ticketKeys?: Buffer
}

/** What one handshake reads: every certificate's context and the SNI index over their names, swapped in one assignment. */
interface CertTable {
  readonly contexts: readonly SecureContext[]
  readonly index: SniIndex
}

/**
 * TLS termination for the proxy listener: a tls.Server that never listens
 * itself (the EdgeListener hands it accepted sockets, after any PROXY
 * header) and reports each established connection. The certificate is
 * chosen per handshake from the client's server name (SNI); a new
 * certificate set is swapped in as a whole, so new handshakes get it while
 * established connections keep theirs.
 */
export class TlsTerminator {
  readonly server: TlsServer
  readonly #settings: TlsSettings
  #table: CertTable
  /** The certificates served now (for their expiry metric). */
  #certs: readonly ListenerCertificate[]

  constructor (certs: readonly ListenerCertificate[], settings: TlsSettings, onSecure: (socket: TLSSocket) => void, onError: (err: Error, socket: TLSSocket) => void) {
    this.#settings = settings
    this.#table = this.#build(certs)
    this.#certs = certs
    const first = certs[0]!
    this.server = new TlsServer({
      ...this.#contextOptions(first),
      ALPNProtocols: settings.http2 ? ['h2', 'http/1.1'] : ['http/1.1'],
      handshakeTimeout: settings.handshakeTimeoutMs,
      SNICallback: this.#sni,
      ...(settings.ticketKeys === undefined ? {} : { ticketKeys: settings.ticketKeys })
    })
    this.server.on('secureConnection', onSecure)
    this.server.on('tlsClientError', onError)
  }

  /**
   * Serves `certs` from the next handshake on. Builds every context first
   * (a context OpenSSL refuses throws here, before anything changed), then
   * swaps the table and the default context (used by clients without SNI).
   */
  setCertificates (certs: readonly ListenerCertificate[]): void {
    const table = this.#build(certs)
    // the same ticket keys: without them Node makes new ones, and every session issued so far could no longer resume
    this.server.setSecureContext({ ...this.#contextOptions(certs[0]!), ticketKeys: this.server.getTicketKeys() })
    this.#table = table
    this.#certs = certs
  }

  /** The certificates new handshakes get, in SNI order. */
  get certificates (): readonly ListenerCertificate[] {
    return this.#certs
  }

  #contextOptions (c: ListenerCertificate): Parameters<typeof createSecureContext>[0] & object {
    const s = this.#settings
    return { cert: c.cert, key: c.key, minVersion: s.minVersion, ...(s.ciphers === '' ? {} : { ciphers: s.ciphers }) }
  }

  #build (certs: readonly ListenerCertificate[]): CertTable {
    if (certs.length === 0) throw new Error('TLS needs at least one certificate')
    return { contexts: certs.map((c) => createSecureContext(this.#contextOptions(c))), index: new SniIndex(certs.map((c) => c.names)) }
  }

  // called by OpenSSL during the ClientHello of every handshake that carries a server name
  readonly #sni = (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void => {
    const t = this.#table
    cb(null, t.contexts[t.index.pick(servername)])
  }
}
