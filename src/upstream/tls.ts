/**
 * TLS towards https upstreams: the settings as config holds them (file
 * paths), their merge (static defaults, then a version's own), the key that
 * keeps differently configured pools apart, and the material read from disk
 * once, at config time, into the options both undici's Pool (`connect`) and
 * Node's https.Agent take. Nothing here runs per request.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'

/**
 * Upstream TLS settings as written in config (`upstream.tls`, and a route
 * version's `tls`): plain JSON data, file paths to PEM files. Verification is
 * on unless `insecureSkipVerify` is true; `cert` and `key` go together (mTLS).
 */
export interface UpstreamTls {
  /** PEM file of the CA certificates to trust; it replaces Node's public roots for this upstream. */
  ca?: string
  /** Name sent as SNI and checked against the upstream's certificate (default: the origin's host when it is a name). */
  servername?: string
  /** PEM file of the client certificate (and its chain) for mTLS. */
  cert?: string
  /** PEM file of the client certificate's private key (unencrypted). */
  key?: string
  /** Accept any certificate, for any name: no verification at all. */
  insecureSkipVerify?: boolean
}

/** What `loadTls` read and checked: the bytes and flags TLS connections are made with. */
export interface TlsMaterial {
  readonly ca?: Buffer
  readonly cert?: Buffer
  readonly key?: Buffer
  readonly servername?: string
  readonly rejectUnauthorized: boolean
}

/**
 * The TLS part of `tls.connect` options, as undici's `Pool({ connect })` and
 * Node's `https.Agent` both take them. `servername: ''` means no SNI (and
 * the certificate is checked against the origin's IP address). A type alias,
 * not an interface, so that it is assignable to `Record<string, unknown>`
 * (option bags spread into undici's and Node's options).
 */
export type TlsConnectOptions = {
  ca?: Buffer
  cert?: Buffer
  key?: Buffer
  servername?: string
  rejectUnauthorized: boolean
}

/**
 * A version's TLS settings over the static defaults, field by field, the
 * version's own winning; `cert` and `key` are one field (a pair is never
 * half from each side: a version naming only `cert` gets no default `key`,
 * and loadTls then says the pair is incomplete). Undefined when neither side
 * sets anything.
 */
export function mergeTls (defaults: UpstreamTls | undefined, own: UpstreamTls | undefined): UpstreamTls | undefined {
  const out: UpstreamTls = {}
  const ca = own?.ca ?? defaults?.ca
  if (ca !== undefined) out.ca = ca
  const servername = own?.servername ?? defaults?.servername
  if (servername !== undefined) out.servername = servername
  const pairFrom = own?.cert !== undefined || own?.key !== undefined ? own : defaults
  if (pairFrom?.cert !== undefined) out.cert = pairFrom.cert
  if (pairFrom?.key !== undefined) out.key = pairFrom.key
  const insecure = own?.insecureSkipVerify ?? defaults?.insecureSkipVerify
  if (insecure !== undefined) out.insecureSkipVerify = insecure
  return Object.keys(out).length === 0 ? undefined : out
}

/**
 * A stable string naming the effective settings, to key connection pools by
 * (origin, tlsKey): two versions of one origin with different TLS settings
 * must not share a pool (nor its sockets and TLS sessions). Fields in sorted
 * order, defaults left out (`insecureSkipVerify: false` is the same as
 * unset), so equal settings give equal keys whatever their field order; ''
 * when nothing is set. Paths, not file contents: a different path to the
 * same file makes another pool, which is harmless.
 */
export function tlsKey (tls: UpstreamTls | undefined): string {
  if (tls === undefined) return ''
  const parts: string[] = []
  if (tls.ca !== undefined) parts.push(`ca=${JSON.stringify(tls.ca)}`)
  if (tls.cert !== undefined) parts.push(`cert=${JSON.stringify(tls.cert)}`)
  if (tls.insecureSkipVerify === true) parts.push('insecureSkipVerify=true')
  if (tls.key !== undefined) parts.push(`key=${JSON.stringify(tls.key)}`)
  if (tls.servername !== undefined) parts.push(`servername=${JSON.stringify(tls.servername)}`)
  return parts.join(',')
}

/**
 * Reads and checks the files of `tls` (synchronously: called when config is
 * loaded or a pool is made, never per request). `ca` must hold at least one
 * PEM certificate, `cert` and `key` must come together and match, and
 * `servername` must be a DNS name. Throws a plain Error whose message starts
 * with the key path `at` and the field, e.g.
 * `routes[0].versions[1].tls.ca: cannot read /x/ca.pem (ENOENT)`.
 */
export function loadTls (tls: UpstreamTls, at: string): TlsMaterial {
  const m: { -readonly [K in keyof TlsMaterial]: TlsMaterial[K] } = { rejectUnauthorized: tls.insecureSkipVerify !== true }
  if (tls.ca !== undefined) {
    const pem = readPem(tls.ca, `${at}.ca`)
    const certs = parseCertificates(pem, tls.ca, `${at}.ca`)
    if (certs.length === 0) throw new Error(`${at}.ca: ${tls.ca} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`)
    m.ca = pem
  }
  if (tls.cert !== undefined && tls.key === undefined) throw new Error(`${at}.cert: a client certificate needs its key (set ${at}.key too)`)
  if (tls.key !== undefined && tls.cert === undefined) throw new Error(`${at}.key: a client key needs its certificate (set ${at}.cert too)`)
  if (tls.cert !== undefined && tls.key !== undefined) {
    const certPem = readPem(tls.cert, `${at}.cert`)
    // the first certificate is the client's own; any after it are its chain
    const leaf = parseCertificates(certPem, tls.cert, `${at}.cert`)[0]
    if (leaf === undefined) throw new Error(`${at}.cert: ${tls.cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`)
    const keyPem = readPem(tls.key, `${at}.key`)
    let key: KeyObject
    try {
      key = createPrivateKey(keyPem)
    } catch (err) {
      throw new Error(`${at}.key: ${tls.key} is not an unencrypted PEM private key (${reason(err)})`, { cause: err })
    }
    if (!leaf.checkPrivateKey(key)) throw new Error(`${at}.key: ${tls.key} does not match the certificate in ${tls.cert} (${leaf.subject.replace(/\n/g, ', ')})`)
    m.cert = certPem
    m.key = keyPem
  }
  if (tls.servername !== undefined) {
    if (!isDnsName(tls.servername)) throw new Error(`${at}.servername: ${JSON.stringify(tls.servername)} is not a DNS name (RFC 6066 sends no IP address as SNI: leave servername unset to verify an IP origin against its address)`)
    m.servername = tls.servername
  }
  return Object.freeze(m)
}

/**
 * The TLS options for connections to `origin` (an https URL), for undici's
 * `Pool(origin, { connect: { ...connectOptions(m, origin), timeout } })` and
 * `new https.Agent({ ...connectOptions(m, origin), keepAlive: true })`.
 * `servername` is always decided here rather than from each request's Host
 * header (both clients' default, and a client's Host must not choose the
 * certificate name verified): the configured `servername`; else the origin's
 * host when it is a name; else (an IP origin) '' = no SNI (RFC 6066), the
 * certificate then checked against the IP address. The name sent as SNI is
 * the name verified. Node's Agent applies it over any per-request name;
 * undici lets a request's Host win over `connect.servername`, so its pool
 * needs a connector that re-applies it, and each dispatch a constant
 * `servername` so undici does not reconnect whenever the Host changes
 * (test/upstream/tls-options.test.ts shows both).
 */
export function connectOptions (m: TlsMaterial, origin: string): TlsConnectOptions {
  const out: TlsConnectOptions = { rejectUnauthorized: m.rejectUnauthorized }
  if (m.ca !== undefined) out.ca = m.ca
  if (m.cert !== undefined) out.cert = m.cert
  if (m.key !== undefined) out.key = m.key
  if (m.servername !== undefined) {
    out.servername = m.servername
  } else {
    const host = new URL(origin).hostname
    // WHATWG URL keeps IPv6 literals in brackets and lower-cases names
    const bare = host.startsWith('[') ? host.slice(1, -1) : host
    out.servername = isIP(bare) === 0 ? bare : ''
  }
  return out
}

/** Reads a PEM file; an unreadable file is named with its key path and errno code. */
function readPem (path: string, at: string): Buffer {
  if (typeof path !== 'string' || path.length === 0) throw new Error(`${at}: must be the path of a PEM file`)
  try {
    return readFileSync(path)
  } catch (err) {
    throw new Error(`${at}: cannot read ${path} (${(err as { code?: string }).code ?? reason(err)})`, { cause: err })
  }
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g

/** Every PEM certificate in `pem`, parsed; a block that does not parse is an error. */
function parseCertificates (pem: Buffer, path: string, at: string): X509Certificate[] {
  const blocks = pem.toString('latin1').match(PEM_CERT) ?? []
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b)
    } catch (err) {
      throw new Error(`${at}: certificate #${i + 1} in ${path} does not parse (${reason(err)})`, { cause: err })
    }
  })
}

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i

/** True for a DNS host name (RFC 1123 labels, no trailing dot, not an IP address, not all-numeric). */
function isDnsName (s: string): boolean {
  if (typeof s !== 'string' || s.length === 0 || s.length > 253 || isIP(s) !== 0) return false
  const labels = s.split('.')
  // an all-numeric last label is an IPv4 address in some other spelling (1.2.3, 0x7f.1)
  if (/^(?:\d+|0x[0-9a-f]*)$/i.test(labels[labels.length - 1]!)) return false
  return labels.every((l) => LABEL.test(l))
}

function reason (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
