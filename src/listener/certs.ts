/**
 * The proxy listener's certificates: read and checked when config is loaded
 * (and on reload), so a bad file is a config error naming its key, not a
 * failed handshake later; and the choice of certificate per TLS handshake
 * from the client's server name (SNI), a Map lookup built once per set.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { isIP } from 'node:net'

/** One certificate entry as config holds it: paths of PEM files. */
export interface CertificateFiles {
  certFile: string
  keyFile: string
}

/** A certificate and key read from disk and checked by `loadCertificates`. */
export interface ListenerCertificate {
  certFile: string
  keyFile: string
  /** PEM text as read (cert may be a chain, leaf first). */
  cert: string
  key: string
  /**
   * DNS names of the leaf's subjectAltName, lower-cased (its subject CN only
   * when the certificate has no DNS SAN at all, as clients ignore the CN
   * otherwise). Wildcards kept as `*.example.com`.
   */
  names: string[]
  notBefore: Date
  notAfter: Date
  /** SHA-256 fingerprint of the leaf, as openssl prints it (`AB:CD:…`, 32 bytes), for logs. */
  fingerprint: string
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g
// PKCS#8 (`openssl pkey -aes256`) and the traditional OpenSSL form (`openssl ec -aes256`)
const ENCRYPTED_KEY = /-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:\s*4,ENCRYPTED/

/**
 * Reads and checks each pair: both files readable, every certificate in
 * `certFile` parses, `keyFile` holds an unencrypted private key (an
 * encrypted one would need a passphrase at every start: refused, with how
 * to decrypt it) that matches the leaf. Throws an Error whose message is one
 * line starting with the config key of the failing file, from `keyOf` (e.g.
 * `listen.tls.certificates[1].keyFile: the key does not match /x/y.pem`).
 * An expired or not yet valid certificate is returned, not refused: the
 * caller warns (see `expiryProblem`), as a proxy that will not start is
 * worse than one serving a certificate a client can still choose to accept.
 */
export async function loadCertificates (files: readonly CertificateFiles[], keyOf: (index: number, field: 'certFile' | 'keyFile') => string): Promise<ListenerCertificate[]> {
  const out: ListenerCertificate[] = []
  // one pair after the other: a handful of files, and the first bad entry is always the one reported
  for (const [i, f] of files.entries()) {
    const certAt = keyOf(i, 'certFile')
    const keyAt = keyOf(i, 'keyFile')
    const cert = await readPem(f.certFile, certAt)
    const blocks = cert.match(PEM_CERT)
    if (blocks === null) throw new Error(`${certAt}: ${f.certFile} is not a PEM certificate (no -----BEGIN CERTIFICATE----- block)`)
    // the chain is parsed too: createSecureContext would refuse a bad block later, with no key name
    const chain = blocks.map((b, n) => {
      try {
        return new X509Certificate(b)
      } catch (err) {
        throw new Error(`${certAt}: ${f.certFile} is not a PEM certificate (block #${n + 1}: ${reason(err)})`, { cause: err })
      }
    })
    const leaf = chain[0]!
    const key = await readPem(f.keyFile, keyAt)
    if (ENCRYPTED_KEY.test(key)) {
      throw new Error(`${keyAt}: ${f.keyFile} is an encrypted private key; give an unencrypted one (openssl pkey -in ${f.keyFile} -out <new file>)`)
    }
    let keyObject: KeyObject
    try {
      keyObject = createPrivateKey(key)
    } catch (err) {
      throw new Error(`${keyAt}: ${f.keyFile} is not a PEM private key (${reason(err)})`, { cause: err })
    }
    if (!matches(leaf, keyObject)) throw new Error(`${keyAt}: the key does not match ${f.certFile}`)
    out.push({
      certFile: f.certFile,
      keyFile: f.keyFile,
      cert,
      key,
      names: namesOf(leaf),
      notBefore: new Date(leaf.validFrom),
      notAfter: new Date(leaf.validTo),
      fingerprint: leaf.fingerprint256
    })
  }
  return out
}

/**
 * Why `c` should not be served at `now`, for a warning: expired, or not
 * valid yet (a clock behind, or a certificate issued ahead); undefined when
 * it is valid.
 */
export function expiryProblem (c: ListenerCertificate, now: Date): string | undefined {
  if (now.getTime() > c.notAfter.getTime()) return `${c.certFile} (${c.fingerprint}) expired on ${c.notAfter.toISOString()}`
  if (now.getTime() < c.notBefore.getTime()) return `${c.certFile} (${c.fingerprint}) is not valid before ${c.notBefore.toISOString()}`
  return undefined
}

/**
 * Which certificate answers a TLS ClientHello's server name: an exact name
 * first, then a wildcard `*.parent` covering exactly one label (browser
 * rules: `*.example.com` matches `a.example.com`, neither `example.com` nor
 * `a.b.example.com`); among certificates naming the same, the first in
 * order. No match, no SNI or an IP literal (RFC 6066 sends none, but some
 * clients do) → 0, the default certificate. Case-insensitive, a trailing
 * dot ignored. Built once per certificate set, so a handshake costs at most
 * two Map lookups whatever the number of certificates.
 */
export class SniIndex {
  readonly #exact = new Map<string, number>()
  /** Wildcards by their parent: `*.example.com` as `example.com`. */
  readonly #wildcard = new Map<string, number>()

  /** `names[i]`: the names of certificate i. */
  constructor (names: ReadonlyArray<readonly string[]>) {
    for (const [i, list] of names.entries()) {
      for (const raw of list) {
        const name = normalise(raw)
        const [map, k] = name.startsWith('*.') ? [this.#wildcard, name.slice(2)] : [this.#exact, name]
        if (!map.has(k)) map.set(k, i)
      }
    }
  }

  /** The index of the certificate for `servername`. */
  pick (servername: string | undefined): number {
    if (servername === undefined || servername === '') return 0
    const name = normalise(servername)
    // an address is no name: never matched against certificate names, even as an exact one
    if (isIP(name) !== 0) return 0
    const exact = this.#exact.get(name)
    if (exact !== undefined) return exact
    const dot = name.indexOf('.')
    // dot 0: an empty first label, which no wildcard covers
    if (dot <= 0) return 0
    return this.#wildcard.get(name.slice(dot + 1)) ?? 0
  }
}

function normalise (name: string): string {
  const lower = name.toLowerCase()
  return lower.endsWith('.') ? lower.slice(0, -1) : lower
}

/**
 * One `type:value` of Node's subjectAltName string (`DNS:a.example, IP
 * Address:127.0.0.1`); a value holding `,`, `"` or other special characters
 * comes JSON-quoted, so splitting on ", " could cut one in two.
 */
const SAN_ENTRY = /([^:,]+):(?:"((?:[^"\\]|\\.)*)"|([^,]*))(?:, |$)/gy

/** The leaf's DNS names, lower-cased; its CN when it has no DNS SAN. */
function namesOf (leaf: X509Certificate): string[] {
  const names: string[] = []
  const san = leaf.subjectAltName ?? ''
  SAN_ENTRY.lastIndex = 0
  for (let m = SAN_ENTRY.exec(san); m !== null && m[0] !== ''; m = SAN_ENTRY.exec(san)) {
    if (m[1] !== 'DNS') continue
    const name = m[2] === undefined ? m[3] : unquote(m[2])
    if (name !== undefined) names.push(name.toLowerCase())
  }
  if (names.length !== 0) return names
  // the subject is one `key=value` a line, special characters backslash-escaped; the last CN is the most specific
  const cn = leaf.subject.split('\n').findLast((l) => l.startsWith('CN='))
  return cn === undefined ? [] : [cn.slice(3).replace(/\\(.)/g, '$1').toLowerCase()]
}

/** Whether `key` is the leaf's: false, not a throw, when their algorithms differ. */
function matches (leaf: X509Certificate, key: KeyObject): boolean {
  try {
    return leaf.checkPrivateKey(key)
  } catch {
    return false
  }
}

/** A JSON-quoted SAN value's text; undefined when it is not valid JSON (no name is better than a wrong one). */
function unquote (quoted: string): string | undefined {
  try {
    return JSON.parse(`"${quoted}"`) as string
  } catch {
    return undefined
  }
}

/** Reads a PEM file as text; an unreadable file is named with its config key and errno code. */
async function readPem (path: string, at: string): Promise<string> {
  if (typeof path !== 'string' || path === '') throw new Error(`${at}: must be the path of a PEM file`)
  try {
    return await readFile(path, 'utf8')
  } catch (err) {
    throw new Error(`${at}: cannot read ${path}: ${(err as { code?: string }).code ?? reason(err)}`, { cause: err })
  }
}

/** An error's message on one line (OpenSSL's can span several). */
function reason (err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ').trim()
}
