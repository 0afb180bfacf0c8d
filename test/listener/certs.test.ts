/**
 * Listener certificates (src/listener/certs.ts): the SNI choice as a table,
 * and loadCertificates against real files made with the openssl binary,
 * every refusal naming the config key of the file at fault.
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { SniIndex, expiryProblem, loadCertificates, type CertificateFiles, type ListenerCertificate } from '../../src/listener/certs.js'
import { encryptKey, makeCa, makeLeaf, makeSelfSignedFromConfig, opensslSkip } from '../helpers/certs.js'

t.test('SniIndex: exact, then one-label wildcard, first certificate wins', async (t) => {
  const index = new SniIndex([
    ['default.example'], // 0
    ['*.example.com', 'api.example.com'], // 1
    ['WWW.Example.COM', 'shop.example.com.'], // 2: names normalised too
    ['*.example.com', 'api.example.com', 'only3.example'], // 3: duplicates of 1
    ['*.b.example.com', 'example.com'] // 4
  ])
  const cases: Array<[string | undefined, number, string]> = [
    ['api.example.com', 1, 'exact'],
    ['www.example.com', 2, 'exact beats an earlier wildcard'],
    ['a.example.com', 1, 'wildcard: one label'],
    ['example.com', 4, 'the wildcard does not cover its parent (an exact name elsewhere does)'],
    ['a.b.example.com', 4, 'two labels: only the deeper wildcard covers it'],
    ['x.y.b.example.com', 0, 'three labels under a wildcard parent: nothing'],
    ['deep.a.example.com', 0, 'two labels under *.example.com: no match'],
    ['only3.example', 3, 'a name only a later certificate has'],
    ['API.EXAMPLE.COM', 1, 'case-insensitive'],
    ['Z.Example.Com', 1, 'case-insensitive wildcard'],
    ['api.example.com.', 1, 'trailing dot ignored'],
    ['z.example.com.', 1, 'trailing dot ignored for wildcards'],
    ['shop.example.com', 2, 'a certificate name with a trailing dot'],
    ['unknown.test', 0, 'no match → 0'],
    ['localhost', 0, 'single label, no match → 0'],
    [undefined, 0, 'no SNI → 0'],
    ['', 0, 'empty SNI → 0'],
    ['.example.com', 0, 'an empty first label is no host'],
    ['*.example.com', 1, 'a literal wildcard name matches as an exact name (harmless)'],
    ['default.example', 0, 'exact name of the first certificate']
  ]
  for (const [name, want, why] of cases) t.equal(index.pick(name), want, `${JSON.stringify(name)}: ${why}`)

  const ips = new SniIndex([['a.test'], ['1.2.3.4', '*.2.3.4', '::1']])
  t.equal(ips.pick('9.2.3.4'), 0, 'an IP literal never matches a wildcard')
  t.equal(ips.pick('1.2.3.4'), 0, 'an IP literal never matches, even a name spelled like it')
  t.equal(ips.pick('::1'), 0, 'nor an IPv6 literal')
  t.equal(new SniIndex([]).pick('a.test'), 0, 'no certificates: still 0')
  t.equal(new SniIndex([[], ['a.test']]).pick('a.test'), 1, 'a certificate without names keeps its index')
})

t.test('expiryProblem', async (t) => {
  const c = {
    certFile: '/etc/c.pem',
    keyFile: '/etc/k.pem',
    cert: '',
    key: '',
    names: ['a.test'],
    notBefore: new Date('2030-01-01T00:00:00Z'),
    notAfter: new Date('2030-04-01T00:00:00Z'),
    fingerprint: 'AB:CD'
  } satisfies ListenerCertificate
  t.equal(expiryProblem(c, new Date('2030-02-01T00:00:00Z')), undefined, 'valid')
  t.equal(expiryProblem(c, c.notAfter), undefined, 'valid through its last second')
  t.equal(expiryProblem(c, c.notBefore), undefined, 'valid from its first second')
  t.match(expiryProblem(c, new Date('2030-04-01T00:00:01Z')), /^\/etc\/c\.pem \(AB:CD\) expired on 2030-04-01T00:00:00\.000Z$/, 'expired')
  t.match(expiryProblem(c, new Date('2029-12-31T23:59:59Z')), /^\/etc\/c\.pem \(AB:CD\) is not valid before 2030-01-01T00:00:00\.000Z$/, 'not yet valid')
})

t.test('loadCertificates with real files', { skip: opensslSkip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-listener-certs-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const ca = makeCa(dir, 'ca')
  const web = makeLeaf(dir, 'web', ca, { cn: 'ignored.example', dns: ['Www.Example.com', '*.Apps.Example.com'], ip: ['127.0.0.1'] })
  const api = makeLeaf(dir, 'api', ca, { cn: 'api.example.com' })
  const cnOnly = makeLeaf(dir, 'cn-only', ca, { cn: 'Legacy.Example.org', dns: [], ip: ['10.0.0.1'] })
  const keyOf = (i: number, f: 'certFile' | 'keyFile'): string => `listen.tls.certificates[${i}].${f}`
  const pairOf = (p: { certPath: string, keyPath: string }): CertificateFiles => ({ certFile: p.certPath, keyFile: p.keyPath })

  /** The message loadCertificates rejects with (fails the test when it resolves). */
  async function refusal (t: Test, files: CertificateFiles[]): Promise<string> {
    try {
      await loadCertificates(files, keyOf)
    } catch (err) {
      const message = (err as Error).message
      t.notMatch(message, /\n/, 'the message is one line')
      return message
    }
    t.fail('loadCertificates accepted a bad pair')
    return ''
  }

  t.test('good pairs: names, PEM text, dates, fingerprint', async (t) => {
    // a chain file: leaf first, then its CA
    const chainPath = join(dir, 'web-chain.pem')
    writeFileSync(chainPath, Buffer.concat([web.cert, ca.cert]))
    const certs = await loadCertificates([{ certFile: chainPath, keyFile: web.keyPath }, pairOf(api), pairOf(cnOnly)], keyOf)
    t.equal(certs.length, 3)
    const [w, a, l] = certs as [ListenerCertificate, ListenerCertificate, ListenerCertificate]
    t.same(w.names, ['www.example.com', '*.apps.example.com'], 'DNS SANs lower-cased, wildcard kept, IP and CN left out')
    t.same(a.names, ['api.example.com'])
    t.same(l.names, ['legacy.example.org'], 'no DNS SAN: the CN')
    t.equal(w.certFile, chainPath)
    t.equal(w.keyFile, web.keyPath)
    t.equal(w.cert, readFileSync(chainPath, 'utf8'), 'the whole chain as read')
    t.equal(w.key, web.key.toString('utf8'))
    t.match(w.fingerprint, /^(?:[0-9A-F]{2}:){31}[0-9A-F]{2}$/, 'fingerprint: 32 hex bytes, colon-separated')
    const printed = spawnSync('openssl', ['x509', '-noout', '-fingerprint', '-sha256', '-in', web.certPath], { encoding: 'utf8' }).stdout
    t.equal(w.fingerprint, printed.trim().split('=')[1], 'the leaf\'s, as openssl prints it')
    t.not(w.fingerprint, a.fingerprint)
    t.ok(w.notAfter.getTime() > Date.now() && w.notAfter.getTime() < Date.now() + 3 * 86_400_000, 'notAfter: in two days')
    t.ok(w.notBefore.getTime() <= Date.now() + 1000, 'notBefore: now')
    t.equal(expiryProblem(w, new Date()), undefined)
    t.match(expiryProblem(w, new Date(Date.now() + 3 * 86_400_000)), /expired on/)
    t.same(await loadCertificates([], keyOf), [], 'no entries, no certificates')
  })

  t.test('quoted SAN values are read whole', async (t) => {
    const odd = makeSelfSignedFromConfig(dir, 'odd', 'odd', 'subjectAltName=@alt\n[alt]\nDNS.1=a.example\nDNS.2=weird, DNS:victim.com\nDNS.3=*.x.example')
    const [c] = await loadCertificates([pairOf(odd)], keyOf)
    t.same(c?.names, ['a.example', 'weird, dns:victim.com', '*.x.example'], 'a comma inside a name does not make a second name')
  })

  t.test('a key that is not the certificate\'s', async (t) => {
    const m = await refusal(t, [pairOf(web), { certFile: api.certPath, keyFile: web.keyPath }])
    t.equal(m, `listen.tls.certificates[1].keyFile: the key does not match ${api.certPath}`)
    const rsa = join(dir, 'rsa-key.pem')
    spawnSync('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024', '-out', rsa])
    t.equal(await refusal(t, [{ certFile: api.certPath, keyFile: rsa }]), `listen.tls.certificates[0].keyFile: the key does not match ${api.certPath}`, 'another algorithm: a mismatch too')
  })

  t.test('missing files', async (t) => {
    const gone = join(dir, 'nope.pem')
    t.equal(await refusal(t, [{ certFile: gone, keyFile: web.keyPath }]), `listen.tls.certificates[0].certFile: cannot read ${gone}: ENOENT`)
    t.equal(await refusal(t, [pairOf(web), { certFile: api.certPath, keyFile: gone }]), `listen.tls.certificates[1].keyFile: cannot read ${gone}: ENOENT`)
    t.equal(await refusal(t, [{ certFile: dir, keyFile: web.keyPath }]), `listen.tls.certificates[0].certFile: cannot read ${dir}: EISDIR`, 'a directory')
    t.equal(await refusal(t, [{ certFile: '', keyFile: web.keyPath }]), 'listen.tls.certificates[0].certFile: must be the path of a PEM file')
    const single = await loadCertificates([pairOf(web)], (_i, f) => `listen.tls.${f}`).catch(() => [])
    t.equal(single.length, 1, 'the caller chooses the key names')
    await t.rejects(loadCertificates([{ certFile: gone, keyFile: gone }], (_i, f) => `listen.tls.${f}`), { message: `listen.tls.certFile: cannot read ${gone}: ENOENT` })
  })

  t.test('files that are not what they should be', async (t) => {
    const garbage = join(dir, 'garbage.pem')
    writeFileSync(garbage, 'hello, I am not a certificate\n')
    t.match(await refusal(t, [{ certFile: garbage, keyFile: web.keyPath }]), /^listen\.tls\.certificates\[0\]\.certFile: .*garbage\.pem is not a PEM certificate/)
    t.match(await refusal(t, [{ certFile: web.keyPath, keyFile: web.keyPath }]), /^listen\.tls\.certificates\[0\]\.certFile: .* is not a PEM certificate/, 'a key given as the certificate')
    const broken = join(dir, 'broken.pem')
    writeFileSync(broken, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n')
    t.match(await refusal(t, [{ certFile: broken, keyFile: web.keyPath }]), /^listen\.tls\.certificates\[0\]\.certFile: .*broken\.pem is not a PEM certificate \(block #1: /)
    const badChain = join(dir, 'bad-chain.pem')
    writeFileSync(badChain, Buffer.concat([web.cert, Buffer.from('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n')]))
    t.match(await refusal(t, [{ certFile: badChain, keyFile: web.keyPath }]), /certFile: .* is not a PEM certificate \(block #2: /, 'a bad block in the chain')
    t.match(await refusal(t, [{ certFile: web.certPath, keyFile: garbage }]), /^listen\.tls\.certificates\[0\]\.keyFile: .*garbage\.pem is not a PEM private key/)
    t.match(await refusal(t, [{ certFile: web.certPath, keyFile: web.certPath }]), /^listen\.tls\.certificates\[0\]\.keyFile: .* is not a PEM private key/, 'a certificate given as the key')
  })

  t.test('encrypted keys are refused with a way out', async (t) => {
    const pkcs8 = encryptKey(dir, 'web-key-encrypted', web)
    t.match(readFileSync(pkcs8, 'utf8'), /BEGIN ENCRYPTED PRIVATE KEY/)
    t.equal(await refusal(t, [{ certFile: web.certPath, keyFile: pkcs8 }]),
      `listen.tls.certificates[0].keyFile: ${pkcs8} is an encrypted private key; give an unencrypted one (openssl pkey -in ${pkcs8} -out <new file>)`)
    const traditional = join(dir, 'web-key-traditional.pem')
    spawnSync('openssl', ['ec', '-in', web.keyPath, '-aes256', '-passout', 'pass:x', '-out', traditional])
    t.match(readFileSync(traditional, 'utf8'), /Proc-Type: 4,ENCRYPTED/)
    t.match(await refusal(t, [{ certFile: web.certPath, keyFile: traditional }]), /keyFile: .* is an encrypted private key/, 'the traditional OpenSSL form too')
  })
})
