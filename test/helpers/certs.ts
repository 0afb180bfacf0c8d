/**
 * Test certificates made at test time with the openssl binary (Debian
 * package `openssl`), as a user would make them, into a temp dir. EC P-256
 * keys: a handful of certificates take milliseconds, not seconds as RSA does.
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** True when the openssl binary runs. */
export const hasOpenssl = spawnSync('openssl', ['version']).status === 0

/** A tap `skip` value: false when openssl is there, else why the test is skipped. */
export const opensslSkip: false | string = hasOpenssl ? false : 'openssl not installed (apt-get install openssl)'

/** A certificate and its private key: file paths and their PEM contents. */
export interface CertPair {
  certPath: string
  keyPath: string
  cert: Buffer
  key: Buffer
}

/** What a leaf certificate is for and the names it covers. */
export interface LeafOptions {
  /** Subject CN (also the first DNS name when `dns` is not given). */
  cn: string
  /** subjectAltName DNS entries. */
  dns?: string[]
  /** subjectAltName IP entries. */
  ip?: string[]
  /** extendedKeyUsage: serverAuth (default) or clientAuth. */
  usage?: 'server' | 'client'
}

function openssl (args: string[]): void {
  const r = spawnSync('openssl', args, { encoding: 'utf8' })
  // the command line and stderr say which step failed, not just "status 1"
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}`)
}

function pair (certPath: string, keyPath: string): CertPair {
  return { certPath, keyPath, cert: readFileSync(certPath), key: readFileSync(keyPath) }
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']

function san (o: LeafOptions): string {
  const names = [...(o.dns ?? [o.cn]).map((d) => `DNS:${d}`), ...(o.ip ?? []).map((i) => `IP:${i}`)]
  return `subjectAltName=${names.join(',')}`
}

/** A certificate authority (self-signed, CA:TRUE) named `name`, written as `<name>.pem` and `<name>-key.pem` in `dir`. */
export function makeCa (dir: string, name: string): CertPair {
  const certPath = join(dir, `${name}.pem`)
  const keyPath = join(dir, `${name}-key.pem`)
  openssl(['req', '-x509', ...EC, '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
  return pair(certPath, keyPath)
}

/** A leaf certificate signed by `ca`, written as `<name>.pem` and `<name>-key.pem` in `dir`. */
export function makeLeaf (dir: string, name: string, ca: CertPair, o: LeafOptions): CertPair {
  const certPath = join(dir, `${name}.pem`)
  const keyPath = join(dir, `${name}-key.pem`)
  const csr = join(dir, `${name}.csr`)
  const ext = join(dir, `${name}.ext`)
  openssl(['req', '-new', ...EC, '-keyout', keyPath, '-out', csr, '-subj', `/CN=${o.cn}`])
  // `x509 -req` copies no extension from the request: they come from this file
  writeFileSync(ext, [
    'basicConstraints=CA:FALSE',
    'keyUsage=critical,digitalSignature',
    `extendedKeyUsage=${o.usage === 'client' ? 'clientAuth' : 'serverAuth'}`,
    san(o)
  ].join('\n') + '\n')
  openssl(['x509', '-req', '-in', csr, '-CA', ca.certPath, '-CAkey', ca.keyPath, '-CAcreateserial', '-out', certPath, '-days', '2', '-extfile', ext])
  return pair(certPath, keyPath)
}

/** A self-signed leaf (no CA trusts it), written as `<name>.pem` and `<name>-key.pem` in `dir`. */
export function makeSelfSigned (dir: string, name: string, o: LeafOptions): CertPair {
  const certPath = join(dir, `${name}.pem`)
  const keyPath = join(dir, `${name}-key.pem`)
  openssl(['req', '-x509', ...EC, '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', `/CN=${o.cn}`, '-addext', san(o)])
  return pair(certPath, keyPath)
}

/** The certificates of an upstream-TLS test, all in one temp dir. */
export interface TestPki {
  dir: string
  /** The CA that signs the server certificates. */
  ca: CertPair
  /** Signed by `ca` for DNS localhost, api.internal and IP 127.0.0.1. */
  server: CertPair
  /** Signed by `ca` for DNS other.internal only. */
  other: CertPair
  /** A second CA, that signs client certificates only. */
  clientCa: CertPair
  /** A client certificate (clientAuth, CN canaryd) signed by `clientCa`. */
  client: CertPair
  /** Self-signed for DNS localhost and IP 127.0.0.1. */
  selfSigned: CertPair
  /** Removes the temp dir. */
  cleanup: () => void
}

/** Makes the CAs and certificates of a TLS test in a new temp dir (call `cleanup` in a teardown). */
export function makeTestPki (): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-pki-'))
  const ca = makeCa(dir, 'ca')
  const clientCa = makeCa(dir, 'client-ca')
  return {
    dir,
    ca,
    server: makeLeaf(dir, 'server', ca, { cn: 'localhost', dns: ['localhost', 'api.internal'], ip: ['127.0.0.1'] }),
    other: makeLeaf(dir, 'other', ca, { cn: 'other.internal' }),
    clientCa,
    client: makeLeaf(dir, 'client', clientCa, { cn: 'canaryd', usage: 'client' }),
    selfSigned: makeSelfSigned(dir, 'self-signed', { cn: 'localhost', dns: ['localhost'], ip: ['127.0.0.1'] }),
    cleanup: () => { rmSync(dir, { recursive: true, force: true }) }
  }
}

/** `pair`'s private key encrypted with AES-256 under the passphrase `x` (`openssl pkey -aes256`), written as `<name>.pem` in `dir`; returns its path. */
export function encryptKey (dir: string, name: string, pair: CertPair): string {
  const path = join(dir, `${name}.pem`)
  openssl(['pkey', '-in', pair.keyPath, '-aes256', '-passout', 'pass:x', '-out', path])
  return path
}

/**
 * A self-signed certificate for `/CN=<cn>` whose extensions are the lines of
 * `extensions` (an openssl config section, followed by any sections it names,
 * e.g. `subjectAltName=@alt\n[alt]\nDNS.1=…`): for names makeLeaf's options
 * cannot spell. Written as `<name>.pem` and `<name>-key.pem` in `dir`.
 */
export function makeSelfSignedFromConfig (dir: string, name: string, cn: string, extensions: string): CertPair {
  const certPath = join(dir, `${name}.pem`)
  const keyPath = join(dir, `${name}-key.pem`)
  const config = join(dir, `${name}.cnf`)
  writeFileSync(config, `[req]\ndistinguished_name=dn\n[dn]\n[ext]\n${extensions}\n`)
  openssl(['req', '-x509', ...EC, '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', `/CN=${cn}`, '-config', config, '-extensions', 'ext'])
  return pair(certPath, keyPath)
}

/**
 * A self-signed certificate for `name` valid only from `start` to `end`
 * (openssl's `YYYYMMDDHHMMSSZ`), e.g. one that expired in 2020: `openssl
 * x509`/`req` only count days from now, `openssl ca` takes dates. Written
 * as `<name>.pem` and `<name>-key.pem` in `dir`.
 */
export function makeDated (dir: string, name: string, start: string, end: string): CertPair {
  const db = join(dir, `${name}-ca`)
  mkdirSync(db, { recursive: true })
  writeFileSync(join(db, 'index.txt'), '')
  writeFileSync(join(db, 'serial'), '01\n')
  const config = join(db, 'ca.cnf')
  writeFileSync(config, `[ca]\ndefault_ca=d\n[d]\ndatabase=${join(db, 'index.txt')}\nserial=${join(db, 'serial')}\nnew_certs_dir=${db}\ndefault_md=sha256\npolicy=p\ncopy_extensions=copy\nunique_subject=no\n[p]\ncommonName=supplied\n`)
  const certPath = join(dir, `${name}.pem`)
  const keyPath = join(dir, `${name}-key.pem`)
  const csr = join(db, 'r.csr')
  openssl(['req', '-new', ...EC, '-keyout', keyPath, '-out', csr, '-subj', `/CN=${name}`, '-addext', `subjectAltName=DNS:${name}`])
  openssl(['ca', '-batch', '-config', config, '-selfsign', '-keyfile', keyPath, '-in', csr, '-out', certPath, '-startdate', start, '-enddate', end])
  return pair(certPath, keyPath)
}

/** A CA and the leaves a test file names, each signed by it; made once, on first use. */
export type LazyPki<K extends string> = { dir: string, ca: CertPair } & Record<K, CertPair>

/**
 * Returns a getter for a test file's PKI: made on the first call (so a file
 * whose openssl tests are skipped never runs openssl), in a temp dir named
 * after `prefix`, and removed at the end of the file through `teardown`.
 */
export function lazyPki<K extends string> (prefix: string, leaves: Record<K, LeafOptions>, teardown: (fn: () => void) => void): () => LazyPki<K> {
  let made: LazyPki<K> | undefined
  teardown(() => { if (made !== undefined) rmSync(made.dir, { recursive: true, force: true }) })
  return () => {
    if (made !== undefined) return made
    const dir = mkdtempSync(join(tmpdir(), `${prefix}-`))
    const ca = makeCa(dir, 'ca')
    const out: Record<string, CertPair> = {}
    for (const [name, o] of Object.entries(leaves) as Array<[K, LeafOptions]>) out[name] = makeLeaf(dir, name, ca, o)
    made = { dir, ca, ...out } as LazyPki<K>
    return made
  }
}
