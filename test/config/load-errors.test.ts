import { mkdtempSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { codeFrame, ConfigFileError, configFromObject, EnvConfigError, jsonErrorOffset, listenError, loadConfig, schemaLeaves } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'

// Issue 12, "Errors and commands": a bad environment value names the variable,
// a syntax error gives the path once, the line, the column and a snippet, and
// a failed listen() names the listener and the key that sets it.

const route = { name: 'web', versions: [{ name: 'stable', upstream: 'http://127.0.0.1:3001', weight: 90 }, { name: 'canary', upstream: 'http://127.0.0.1:3002', weight: 10 }] }
const dir = mkdtempSync(join(tmpdir(), 'canaryd-load-errors-'))
const write = (name: string, text: string): string => {
  const file = join(dir, name)
  writeFileSync(file, text)
  return file
}

t.test('a bad environment value names the variable and the key, not the file', async (t) => {
  const cases: Array<[Record<string, string>, string]> = [
    [{ CANARYD_LISTEN_PORT: 'abc' }, 'environment variable CANARYD_LISTEN_PORT (listen.port): must be a port (0–65535), got "abc"'],
    [{ CANARYD_LISTEN_PORT: '' }, 'environment variable CANARYD_LISTEN_PORT (listen.port): must be a port (0–65535), got ""'],
    // convict alone would read these as 80, 1 and true: a typo must not become another value
    [{ CANARYD_ADMIN_PORT: '80x' }, 'environment variable CANARYD_ADMIN_PORT (admin.port): must be a port (0–65535), got "80x"'],
    [{ CANARYD_ADMIN_PORT: '70000' }, 'environment variable CANARYD_ADMIN_PORT (admin.port): must be a port (0–65535), got "70000"'],
    [{ CANARYD_UPSTREAM_RETRIES: '1.5' }, 'environment variable CANARYD_UPSTREAM_RETRIES (upstream.retries): must be a whole number >= 0, got "1.5"'],
    [{ CANARYD_DRAIN_TIMEOUT_MS: '-1' }, 'environment variable CANARYD_DRAIN_TIMEOUT_MS (timeouts.drainTimeoutMs): must be a whole number of milliseconds, got "-1"'],
    [{ CANARYD_ALLOW_TRACE: '0' }, 'environment variable CANARYD_ALLOW_TRACE (limits.allowTrace): must be true or false, got "0"'],
    [{ CANARYD_LOG_LEVEL: 'verbose' }, 'environment variable CANARYD_LOG_LEVEL (log.level): must be one of fatal, error, warn, info, debug, trace, silent, got "verbose"'],
    [{ CANARYD_UNDERSCORE_HEADERS: 'keep' }, 'environment variable CANARYD_UNDERSCORE_HEADERS (limits.underscoreHeaders): must be one of drop, reject, allow, got "keep"']
  ]
  for (const [env, want] of cases) {
    const err = t.throws(() => configFromObject({ routes: [route] }, '', env)) as EnvConfigError
    t.type(err, EnvConfigError, `${want}: an EnvConfigError`)
    t.type(err, ConfigError, 'still a ConfigError (CANARYD_ERR_CONFIG_INVALID)')
    t.equal(err.message, want)
    t.equal(err.variable, Object.keys(env)[0])
  }
  // the same key from the file keeps naming the key (no variable set)
  const fromFile = t.throws(() => configFromObject({ listen: { port: 70000 }, routes: [route] }, '', {})) as ConfigError
  t.notOk(fromFile instanceof EnvConfigError, 'a file value is not blamed on the environment')
  t.match(fromFile.message, /^listen\.port: /)
  // valid values still win over the file
  const ok = configFromObject({ listen: { port: 1 }, routes: [route] }, '', { CANARYD_LISTEN_PORT: '0', CANARYD_ALLOW_TRACE: 'true', CANARYD_UPSTREAM_RETRIES: '3' })
  t.equal(ok.listen.port, 0)
  t.equal(ok.limits.allowTrace, true)
  t.equal(ok.upstream.retries, 3)
})

t.test('every schema variable is checked: an invalid string fails each non-string key', async (t) => {
  const leaves = schemaLeaves().filter((l) => l.env !== undefined && l.format !== String)
  t.ok(leaves.length >= 25, `${leaves.length} typed keys with a variable`)
  for (const l of leaves) {
    const err = t.throws(() => configFromObject({ routes: [route] }, '', { [l.env!]: 'not-a-value' })) as EnvConfigError
    t.equal(err.variable, l.env, `${l.env} is named`)
    t.equal(err.key, l.key)
  }
})

t.test('YAML syntax errors: the path once, line, column and a snippet with a caret', async (t) => {
  const file = write('bad.yaml', 'listen:\n  port: 80\n bad: [1,\nroutes: []\n')
  const err = t.throws(() => loadConfig(file, {})) as ConfigFileError
  t.type(err, ConfigFileError)
  t.equal(err.line, 3)
  t.equal(err.column, 1)
  t.equal(err.message, [
    `${file} is not valid YAML: line 3, column 1: All mapping items must start at the same column`,
    '  2 |   port: 80',
    '  3 |  bad: [1,',
    '    | ^'
  ].join('\n'))
  t.equal(err.message.split(file).length, 2, 'the path appears once')

  const tab = write('tab.yml', 'routes:\n\t- name: web\n')
  const e2 = t.throws(() => loadConfig(tab, {})) as ConfigFileError
  t.match(e2.message, /tab\.yml is not valid YAML: line 2, column 1: Tabs are not allowed as indentation\n/)

  const quote = write('quote.yaml', "routes:\n  - name: 'web\n")
  const e3 = t.throws(() => loadConfig(quote, {})) as ConfigFileError
  t.match(e3.message, /quote\.yaml is not valid YAML: line \d+, column \d+: Missing closing 'quote/)
})

t.test('JSON syntax errors: line and column from the position, and the offending line', async (t) => {
  const trailing = write('trailing.json', '{\n  "listen": { "port": 80, },\n  "routes": []\n}\n')
  const e1 = t.throws(() => loadConfig(trailing, {})) as ConfigFileError
  t.equal(e1.message, [
    `${trailing} is not valid JSON: line 2, column 27: Expected double-quoted property name`,
    '  1 | {',
    '  2 |   "listen": { "port": 80, },',
    `    | ${' '.repeat(26)}^`
  ].join('\n'))

  // no position in V8's message: found by the scan
  const bare = write('bare.json', '{\n  "admin": { "token": undefined }\n}\n')
  const e2 = t.throws(() => loadConfig(bare, {})) as ConfigFileError
  t.equal(e2.message.split('\n')[0], `${bare} is not valid JSON: line 2, column 23: Unexpected token 'u'`)
  t.equal(e2.message.split('\n').at(-1), `    | ${' '.repeat(22)}^`)

  const cut = write('cut.json', '{\n  "routes": [\n')
  const e3 = t.throws(() => loadConfig(cut, {})) as ConfigFileError
  t.equal(e3.message.split('\n')[0], `${cut} is not valid JSON: line 2, column 14: unexpected end of input`)

  // a byte order mark is not an error
  const bom = write('bom.json', `\ufeff${JSON.stringify({ routes: [route] })}`)
  t.equal(loadConfig(bom, {}).routes[0]!.name, 'web', 'a UTF-8 BOM is skipped')
})

t.test('jsonErrorOffset finds where JSON.parse stops', async (t) => {
  const cases: Array<[string, number | undefined]> = [
    ['{"a": tru}', 6],
    ["{'a': 1}", 1],
    ['{"a": 1} x', 9],
    ['{"a": [1 2]}', 9],
    ['{"a": "x\ny"}', 8],
    ['{"a": "\\q"}', 8],
    ['{"a": -}', 6],
    ['[1, 2', 5],
    ['{"a": {"b": null, "c": [true, false, 1.5e3, "\\u00e9"]}}', undefined]
  ]
  for (const [text, want] of cases) {
    t.equal(jsonErrorOffset(text), want, JSON.stringify(text))
    // wherever the scan says "valid", JSON.parse agrees
    if (want === undefined) t.doesNotThrow(() => JSON.parse(text))
    else t.throws(() => JSON.parse(text))
  }
  t.equal(jsonErrorOffset('['.repeat(200_000)), undefined, 'a nesting that overflows the stack gives no position rather than a crash')
})

t.test('codeFrame cuts a long line to a window around the column', async (t) => {
  const line = `${'x'.repeat(500)}!${'y'.repeat(500)}`
  const frame = codeFrame(line, 1, 501).split('\n')
  t.equal(frame.length, 2, 'no line before line 1')
  t.ok(frame[0]!.length < 130, `short (${frame[0]!.length} chars)`)
  t.match(frame[0], /^ {2}1 \| …x+!y+…$/)
  t.equal(frame[1]!.indexOf('^'), frame[0]!.indexOf('!'), 'the caret is under the offending character')
  const tabs = codeFrame('a:\n\t\tb: [', 2, 5).split('\n')
  t.equal(tabs[2], '    | \t\t  ^', 'tabs are copied so the caret lines up in any terminal')
})

t.test('listenError names the listener, the key and the variable', async (t) => {
  const held: Server = createServer()
  await new Promise<void>((resolve) => held.listen(0, '127.0.0.1', resolve))
  t.teardown(() => held.close())
  const port = (held.address() as { port: number }).port
  const listenAgain = async (): Promise<unknown> => await new Promise((resolve) => {
    const s = createServer()
    s.once('error', resolve)
    s.listen(port, '127.0.0.1', () => { s.close(); resolve(undefined) })
  })
  const raw = await listenAgain()
  t.match(raw, { code: 'EADDRINUSE' }, 'a real EADDRINUSE')
  const proxy = listenError(raw, 'proxy', '127.0.0.1', port) as Error & { code: string; listener: string }
  t.equal(proxy.message, `cannot listen on 127.0.0.1:${port} (proxy: listen.port / CANARYD_LISTEN_PORT): address already in use`)
  t.equal(proxy.code, 'EADDRINUSE')
  t.equal(proxy.listener, 'proxy')
  t.equal(proxy.cause, raw, 'the original error is the cause')
  const admin = listenError(raw, 'admin', '127.0.0.1', port) as Error
  t.equal(admin.message, `cannot listen on 127.0.0.1:${port} (admin: admin.port / CANARYD_ADMIN_PORT): address already in use`)

  const notHere = listenError(Object.assign(new Error('listen EADDRNOTAVAIL'), { code: 'EADDRNOTAVAIL', address: '10.1.2.3', port: 80 }), 'admin', '10.1.2.3', 80) as Error
  t.equal(notHere.message, 'cannot listen on 10.1.2.3:80 (admin: admin.host / CANARYD_ADMIN_HOST): address not available on this machine')
  const low = listenError(Object.assign(new Error('listen EACCES'), { code: 'EACCES', address: '::', port: 80 }), 'proxy', '::', 80) as Error
  t.equal(low.message, 'cannot listen on [::]:80 (proxy: listen.port / CANARYD_LISTEN_PORT): permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE')
  const other = listenError(Object.assign(new Error('listen EWHAT'), { code: 'EWHAT' }), 'proxy', 'h', 1) as Error
  t.match(other.message, /\(proxy: listen\.host \/ CANARYD_LISTEN_HOST, listen\.port \/ CANARYD_LISTEN_PORT\): EWHAT/)
  const plain = new ConfigError('admin.host', 'x')
  t.equal(listenError(plain, 'admin', 'h', 1), plain, 'anything but a socket error passes through')
})
