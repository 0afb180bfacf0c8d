import { spawn } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * Running the image without Docker: the Dockerfile's final stage is read
 * (ENV, WORKDIR, COPY, ENTRYPOINT, CMD), the effective argv is computed the
 * way Kubernetes and Docker do, and that argv runs here against the built
 * dist/ with container paths mapped onto temp directories (ContainerFs). The
 * deploy tests use it to prove the shipped manifests' command really starts.
 */

/** The repository root (the image's WORKDIR /app holds the same dist/ and package.json). */
export const repoRoot = fileURLToPath(new URL('../../', import.meta.url))

/** The final stage of a Dockerfile, as far as running its image needs. */
export interface ImageSpec {
  /** The final stage's base image (`FROM x` of the last stage). */
  base: string
  env: Record<string, string>
  workdir: string
  entrypoint: string[]
  cmd: string[]
  /** COPY instructions from the build context (no --from): sources relative to the context. */
  copies: Array<{ src: string[]; dest: string }>
}

/** Parses an exec-form instruction argument (a JSON array of strings); throws on the shell form. */
function execForm (instruction: string, rest: string): string[] {
  let v: unknown
  try {
    v = JSON.parse(rest)
  } catch {
    throw new Error(`${instruction} ${rest}: shell form; the image needs the exec form (a JSON array) so node gets signals and Kubernetes args replace CMD cleanly`)
  }
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new Error(`${instruction} ${rest}: not an array of strings`)
  return v
}

/** Splits `K=V K2="v 2"` (the ENV key=value form) into pairs. */
function envPairs (rest: string): Array<[string, string]> {
  const out: Array<[string, string]> = []
  const re = /([A-Za-z_][A-Za-z0-9_]*)=("((?:[^"\\]|\\.)*)"|\S*)/g
  const consumed = rest.replace(re, (_m: string, k: string, raw: string, quoted: string | undefined) => {
    out.push([k, quoted !== undefined ? quoted.replace(/\\(.)/g, '$1') : raw])
    return ''
  })
  if (consumed.trim() !== '') throw new Error(`ENV ${rest}: only the KEY=VALUE form is read here`)
  return out
}

/**
 * Reads the final stage of a Dockerfile: comment lines dropped, `\`
 * continuations joined, ENV/WORKDIR/ENTRYPOINT/CMD/COPY kept. Each FROM
 * starts over: a stage inherits nothing from an earlier stage, and a stage
 * that sets no ENTRYPOINT/CMD would inherit the base image's (node's
 * docker-entrypoint.sh + `node`), so both must be set here.
 */
export function readDockerfile (text: string): ImageSpec {
  const lines = text.split('\n').filter((l) => !l.trimStart().startsWith('#'))
  const instructions: string[] = []
  let cur = ''
  for (const l of lines) {
    if (l.trimEnd().endsWith('\\')) {
      cur += `${l.trimEnd().slice(0, -1)} `
      continue
    }
    cur += l
    if (cur.trim() !== '') instructions.push(cur.trim())
    cur = ''
  }
  let spec: Partial<ImageSpec> & { env: Record<string, string>; copies: ImageSpec['copies'] } = { env: {}, copies: [] }
  for (const ins of instructions) {
    const m = /^(\w+)\s+(.*)$/s.exec(ins)
    if (m === null) continue
    const op = m[1]!.toUpperCase()
    const rest = m[2]!.trim()
    const words = rest.split(/\s+/)
    switch (op) {
      case 'FROM':
        spec = { env: {}, copies: [], base: words.filter((w) => !w.startsWith('--'))[0] }
        break
      case 'ENV':
        for (const [k, v] of envPairs(rest)) spec.env[k] = v
        break
      case 'WORKDIR':
        spec.workdir = posix.resolve(spec.workdir ?? '/', rest)
        break
      case 'ENTRYPOINT':
        spec.entrypoint = execForm(op, rest)
        // Docker: setting ENTRYPOINT resets a CMD inherited from the base image
        if (spec.cmd === undefined) spec.cmd = []
        break
      case 'CMD':
        spec.cmd = execForm(op, rest)
        break
      case 'COPY': {
        const args = words.filter((w) => !w.startsWith('--'))
        if (words.some((w) => w.startsWith('--from='))) break
        spec.copies.push({ src: args.slice(0, -1), dest: posix.resolve(spec.workdir ?? '/', args[args.length - 1]!) })
        break
      }
    }
  }
  if (spec.base === undefined) throw new Error('no FROM')
  if (spec.entrypoint === undefined) throw new Error('the final stage sets no ENTRYPOINT: it would inherit the base image\'s')
  return { base: spec.base, env: spec.env, workdir: spec.workdir ?? '/', entrypoint: spec.entrypoint, cmd: spec.cmd ?? [], copies: spec.copies }
}

/** The part of a Kubernetes container spec that decides what runs. */
export interface ContainerSpec {
  command?: string[]
  args?: string[]
  env?: Array<{ name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }>
}

/**
 * Expands `$(VAR)` in a command or args entry as the kubelet does: a
 * variable defined in the container's env is replaced, an undefined one is
 * left as written, and `$$` is a literal `$`.
 */
export function expandKubernetesVars (s: string, env: Readonly<Record<string, string>>): string {
  return s.replace(/\$(\$|\(([A-Za-z_][A-Za-z0-9_.-]*)\))/g, (m: string, what: string, name: string | undefined) =>
    what === '$' ? '$' : (env[name!] ?? m))
}

/**
 * The container's environment: the image's ENV, then the container's `env`
 * (which wins, as in Kubernetes); `secret(name, key)` answers secretKeyRef.
 */
export function containerEnv (image: ImageSpec, c: ContainerSpec, secret: (name: string, key: string) => string): Record<string, string> {
  const env: Record<string, string> = { ...image.env }
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = expandKubernetesVars(e.value, env)
    else if (e.valueFrom?.secretKeyRef !== undefined) env[e.name] = secret(e.valueFrom.secretKeyRef.name, e.valueFrom.secretKeyRef.key)
    else env[e.name] = ''
  }
  return env
}

/**
 * The argv a Kubernetes container runs (Kubernetes "Define a command and
 * arguments for a container"): no command and no args → ENTRYPOINT + CMD;
 * args only → ENTRYPOINT + args (CMD replaced); command only → command
 * (ENTRYPOINT replaced and CMD dropped); both → command + args. `$(VAR)`
 * references are expanded from the container env.
 */
export function effectiveArgv (image: Pick<ImageSpec, 'entrypoint' | 'cmd'>, c: ContainerSpec, env: Readonly<Record<string, string>> = {}): string[] {
  const head = c.command ?? image.entrypoint
  const tail = c.args ?? (c.command !== undefined ? [] : image.cmd)
  return [...head, ...tail].map((s) => expandKubernetesVars(s, env))
}

/**
 * Container paths mapped onto this machine: each mount (a volume, the
 * image's WORKDIR) maps a container directory to a host directory; every
 * other path lies on a read-only root file system, simulated by placing it
 * under a regular file, so any write there fails (ENOTDIR) even for root,
 * which chmod would not stop.
 */
export class ContainerFs {
  readonly #mounts: Array<[string, string]> = []
  readonly #rootfs: string

  /** `scratch` is an empty temp directory owned by the test. */
  constructor (scratch: string) {
    writeFileSync(join(scratch, 'read-only-rootfs'), 'every unmounted container path lies under this regular file\n')
    this.#rootfs = join(scratch, 'read-only-rootfs')
  }

  /** Maps container directory `at` onto host directory `host` (created when missing). */
  mount (at: string, host: string): this {
    mkdirSync(host, { recursive: true })
    this.#mounts.push([at.replace(/\/+$/, ''), host])
    this.#mounts.sort((a, b) => b[0].length - a[0].length)
    return this
  }

  /** The host path of an absolute container path (longest mount first). */
  hostPath (p: string): string {
    for (const [at, host] of this.#mounts) {
      if (p === at || p.startsWith(`${at}/`)) return join(host, p.slice(at.length))
    }
    return join(this.#rootfs, p)
  }

  /** Maps a value that is an absolute path, or a `--flag=/path`; other values are returned as they are. */
  mapValue (v: string): string {
    if (v.startsWith('/')) return this.hostPath(v)
    const m = /^(--?[\w-]+=)(\/.*)$/.exec(v)
    return m === null ? v : m[1]! + this.hostPath(m[2]!)
  }
}

/** The outcome of a container run: exit code (null if killed), output, and whether start-up was logged. */
export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** A started container process: its output so far, its exit, and a way to stop it. */
export interface Running {
  /** Resolves with the first JSON log line whose `msg` is `msg`, or rejects with the output when the process exits or `timeoutMs` passes first. */
  waitForLog: (msg: string, timeoutMs: number) => Promise<Record<string, unknown>>
  /** Resolves when the process exits (killed with SIGKILL after `timeoutMs`). */
  exited: (timeoutMs: number) => Promise<RunResult>
  kill: (signal: NodeJS.Signals) => void
}

/**
 * Runs a container argv here: `node` becomes this Node binary, every
 * absolute path in argv and env goes through `fs`, and the process starts in
 * the image's WORKDIR (mapped). The environment is exactly `env` (mapped):
 * nothing of this machine's leaks in, as in a container.
 */
export function runContainer (argv: readonly string[], env: Readonly<Record<string, string>>, fs: ContainerFs, workdir: string): Running {
  if (argv[0] !== 'node') throw new Error(`the container would run ${JSON.stringify(argv[0])}, not node: ${JSON.stringify(argv)}`)
  const hostEnv: Record<string, string> = {}
  for (const [k, v] of Object.entries(env)) hostEnv[k] = fs.mapValue(v)
  const child = spawn(process.execPath, argv.slice(1).map((a) => fs.mapValue(a)), { cwd: fs.hostPath(workdir), env: hostEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  const waiters = new Set<() => void>()
  const wake = (): void => { for (const w of [...waiters]) w() }
  child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; wake() })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; wake() })
  let done = false
  const exit = new Promise<RunResult>((resolve) => {
    child.on('close', (code, signal) => {
      done = true
      resolve({ code, signal, stdout, stderr })
      wake()
    })
  })
  const findLog = (msg: string): Record<string, unknown> | undefined => {
    for (const line of stdout.split('\n')) {
      if (!line.startsWith('{')) continue
      try {
        const o = JSON.parse(line) as Record<string, unknown>
        if (o.msg === msg) return o
      } catch {
        // a partial line: the rest arrives with the next chunk
      }
    }
    return undefined
  }
  return {
    waitForLog: async (msg, timeoutMs) => await new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = findLog(msg)
        if (hit !== undefined || done) {
          waiters.delete(check)
          clearTimeout(timer)
          if (hit !== undefined) resolve(hit)
          else reject(new Error(`exited (${child.exitCode ?? child.signalCode}) before logging "${msg}"; stderr: ${stderr.trim()} stdout: ${stdout.trim().slice(0, 2000)}`))
        }
      }
      const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`no "${msg}" within ${timeoutMs} ms; stderr: ${stderr.trim()} stdout: ${stdout.trim().slice(0, 2000)}`)) }, timeoutMs)
      waiters.add(check)
      check()
    }),
    exited: async (timeoutMs) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
      try {
        return await exit
      } finally {
        clearTimeout(timer)
      }
    },
    kill: (signal) => { if (!done) child.kill(signal) }
  }
}
