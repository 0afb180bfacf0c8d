import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import t from 'tap'
import { parse } from 'yaml'
import { ContainerFs, effectiveArgv, readDockerfile, repoRoot, runContainer } from './container.js'

const image = readDockerfile(readFileSync(join(repoRoot, 'Dockerfile'), 'utf8'))

t.test('Dockerfile: exec-form ENTRYPOINT node dist/cli.js + CMD serve; config and state paths in ENV', async (t) => {
  t.same(image.entrypoint, ['node', 'dist/cli.js'])
  t.same(image.cmd, ['serve'])
  t.equal(image.workdir, '/app')
  t.equal(image.env.CANARYD_CONFIG, '/etc/canaryd/canaryd.yaml', 'the path the ConfigMap key lands on')
  t.equal(image.env.CANARYD_STATE_FILE, '/var/lib/canaryd/state.json')
  t.throws(() => readDockerfile('FROM node:22\nENTRYPOINT node dist/cli.js\n'), /shell form/, 'the shell form is refused: node would not be PID 1')
  t.throws(() => readDockerfile('FROM node:22\nCMD ["serve"]\n'), /no ENTRYPOINT/, 'an image without ENTRYPOINT would run the base image\'s')
  t.same(readDockerfile('FROM a AS b\nENTRYPOINT ["x"]\nCMD ["y"]\nFROM c\nENV A=1 \\\n  B="two words"\nENTRYPOINT ["z"]\n'),
    { base: 'c', env: { A: '1', B: 'two words' }, workdir: '/', entrypoint: ['z'], cmd: [], copies: [] },
    'the final stage only; ENTRYPOINT resets the base image\'s CMD')
})

t.test('the image\'s default config refuses to start with one clear line until a real config is mounted', async (t) => {
  const cfg = image.env.CANARYD_CONFIG!
  const copy = image.copies.find((c) => c.dest === cfg)
  t.ok(copy, `the image puts a file at ${cfg}`)
  t.same(copy?.src, ['config/container.yaml'])
  const placeholder = parse(readFileSync(join(repoRoot, copy!.src[0]!), 'utf8')) as { routes: unknown[]; state: { file: string } }
  t.same(placeholder.routes, [], 'no routes: nothing in the image points upstreams at the container itself')
  t.equal(placeholder.state.file, image.env.CANARYD_STATE_FILE, 'the placeholder documents the state path the image uses')

  // the image's file system: WORKDIR = this repository, its COPY of the placeholder, its writable state directory
  const scratch = mkdtempSync(join(tmpdir(), 'canaryd-image-'))
  t.teardown(() => { rmSync(scratch, { recursive: true, force: true }) })
  const fs = new ContainerFs(scratch).mount(image.workdir, repoRoot)
    .mount(dirname(cfg), join(scratch, 'etc-canaryd'))
    .mount(dirname(image.env.CANARYD_STATE_FILE!), join(scratch, 'state'))
  mkdirSync(dirname(fs.hostPath(cfg)), { recursive: true })
  copyFileSync(join(repoRoot, copy!.src[0]!), fs.hostPath(cfg))

  // `docker run canaryd`: no command, no args; only the listeners are moved to loopback port 0
  const run = runContainer(effectiveArgv(image, {}), { ...image.env, CANARYD_LISTEN_HOST: '127.0.0.1', CANARYD_LISTEN_PORT: '0', CANARYD_ADMIN_HOST: '127.0.0.1', CANARYD_ADMIN_PORT: '0' }, fs, image.workdir)
  t.teardown(() => { run.kill('SIGKILL') })
  const end = await run.exited(15_000)
  t.equal(end.code, 1, 'exit 1')
  t.equal(end.stdout, '', 'nothing started, nothing logged')
  t.equal(end.stderr, `canaryd: invalid config ${fs.hostPath(cfg)}: routes: at least one route is required\n`, 'one line naming the mounted path and the missing routes')
})
