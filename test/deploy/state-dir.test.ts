import { spawnSync } from 'node:child_process'
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import { configFromObject } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'
import { createLogger } from '../../src/logger.js'
import { checkStateDir } from '../../src/store/file.js'
import { RuntimeStore } from '../../src/store/store.js'
import { ensureBuilt } from '../helpers/cli.js'
import { twoVersionRoute } from '../helpers/proxy.js'

// The start-up check of state.file (src/store/file.ts): what a container with a read-only root
// file system or a missing volume hits. Kept with the deploy tests because that is where it bites.

function scratch (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'canaryd-statedir-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

/** Runs `fn` and returns the ConfigError it throws (fails the test if it throws nothing or something else). */
function configError (t: Test, fn: () => void): ConfigError | undefined {
  try {
    fn()
  } catch (err) {
    t.ok(err instanceof ConfigError, `a ConfigError: ${String(err)}`)
    return err as ConfigError
  }
  t.fail('did not throw')
  return undefined
}

t.test('creates a missing directory (mkdir -p) and leaves nothing else behind', async (t) => {
  const dir = scratch(t)
  const file = join(dir, 'a', 'b', 'state.json')
  checkStateDir(file, {})
  t.ok(statSync(join(dir, 'a', 'b')).isDirectory())
  t.same(readdirSync(join(dir, 'a', 'b')), [], 'the write probe is removed')
  t.notOk(existsSync(file), 'the state file itself is not created')
  checkStateDir(file, {})
  t.pass('a second check of an existing directory passes')
})

t.test('state.file "" (in memory only) is not checked', async (t) => {
  t.doesNotThrow(() => { checkStateDir('', { CANARYD_STATE_FILE: '' }) })
})

t.test('a directory that cannot be created: one line naming the key, the directory and the errno, even as root', async (t) => {
  const dir = scratch(t)
  const blocker = join(dir, 'file.txt')
  writeFileSync(blocker, 'a regular file where a directory should be')
  const file = join(blocker, 'state.json')
  const err = configError(t, () => { checkStateDir(file, {}) })
  t.equal(err?.code, 'CANARYD_ERR_CONFIG_INVALID')
  t.equal(err?.key, 'state.file')
  t.equal(err?.message, `state.file: cannot write to ${blocker}: ENOTDIR (a file, not a directory, is in the path). ` +
    'Mount a writable volume there, or set state.file (env CANARYD_STATE_FILE) to a writable path ("" keeps runtime state in memory only)')
  t.notOk(err?.message.includes('\n'), 'one line')
  const deeper = configError(t, () => { checkStateDir(join(blocker, 'x', 'state.json'), {}) })
  t.match(deeper?.message, `cannot write to ${join(blocker, 'x')}: ENOTDIR`)
})

t.test('names CANARYD_STATE_FILE when the path came from it (it overrides the config file)', async (t) => {
  const dir = scratch(t)
  writeFileSync(join(dir, 'f'), '')
  const file = join(dir, 'f', 'state.json')
  t.match(configError(t, () => { checkStateDir(file, { CANARYD_STATE_FILE: file }) })?.message,
    `; the path is set by CANARYD_STATE_FILE=${file}, which overrides the config file. Mount`)
  t.notMatch(configError(t, () => { checkStateDir(file, { CANARYD_STATE_FILE: '/elsewhere/state.json' }) })?.message, 'is set by CANARYD_STATE_FILE',
    'not when the variable holds another path')
})

t.test('the state file path is a directory: refused (the atomic rename could never replace it)', async (t) => {
  const dir = scratch(t)
  const file = join(dir, 'state.json')
  mkdirSync(file)
  t.equal(configError(t, () => { checkStateDir(file, {}) })?.message.split('. ')[0], `state.file: cannot write to ${file}: EISDIR (the state file path is a directory)`)
})

t.test('a directory without write permission: EACCES (as root too: the check runs as nobody)', async (t) => {
  const dir = scratch(t)
  const locked = join(dir, 'locked')
  mkdirSync(locked)
  chmodSync(locked, 0o555)
  t.teardown(() => { chmodSync(locked, 0o755) })
  const file = join(locked, 'state.json')
  if (process.getuid?.() !== 0) {
    t.match(configError(t, () => { checkStateDir(file, {}) })?.message, `state.file: cannot write to ${locked}: EACCES (permission denied)`)
    return
  }
  // root passes any chmod: run the built check as nobody (uid 65534), as a pod's
  // non-root user would. Its three modules are copied beside the scratch
  // directory, since the checkout itself may sit where nobody cannot read
  ensureBuilt()
  chmodSync(dir, 0o755)
  const lib = join(dir, 'lib')
  for (const m of ['store/file.js', 'errors.js', 'routing/weights.js']) {
    mkdirSync(join(lib, dirname(m)), { recursive: true })
    copyFileSync(join('dist', m), join(lib, m))
  }
  writeFileSync(join(lib, 'package.json'), '{"type":"module"}')
  writeFileSync(join(lib, 'run.js'), `import { checkStateDir } from './store/file.js'
try { checkStateDir(${JSON.stringify(file)}, {}); process.exit(0) } catch (err) { process.stderr.write(err.message); process.exit(1) }
`)
  chmodSync(lib, 0o755)
  const r = spawnSync(process.execPath, [join(lib, 'run.js')], { uid: 65534, gid: 65534, cwd: lib, env: { PATH: process.env.PATH ?? '' }, encoding: 'utf8', timeout: 20_000 })
  t.equal(r.status, 1, 'the check run as nobody refuses')
  t.match(r.stderr, `state.file: cannot write to ${locked}: EACCES (permission denied)`, 'one line naming the key, the directory and EACCES')
})

t.test('an embedded RuntimeStore logs the same line at error and still starts (serve refuses instead)', async (t) => {
  const dir = scratch(t)
  writeFileSync(join(dir, 'f'), '')
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim() !== '') lines.push(JSON.parse(l) as Record<string, unknown>)
      cb()
    }
  })
  const routes = configFromObject({ routes: [twoVersionRoute('http://127.0.0.1:3001', 'http://127.0.0.1:3002', [90, 10])] }, '(test)', {}).routes
  const store = new RuntimeStore({ routes, file: join(dir, 'f', 'state.json'), logger: createLogger('info', stream) })
  t.same(store.weights('web'), { stable: 90, canary: 10 })
  const line = lines.find((l) => l.level === 50)
  t.match(line?.msg, /^state\.file: cannot write to .*: ENOTDIR .*; weight changes will fail \(CANARYD_ERR_STATE_PERSIST\) until it is writable$/)
})
