import { pino, type Logger, type LevelWithSilent } from 'pino'
import { ConfigError } from './errors.js'

/** The logger type used across canaryd (pino). */
export type { Logger }

/** The levels canaryd accepts (pino's, plus `silent`), most severe first. */
export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

/** Default of config `log.maxBufferBytes`: how much log output may wait for a slow stdout. */
export const DEFAULT_MAX_BUFFER_BYTES = 1_048_576

/** Options of a log sink. */
export interface LogSinkOptions {
  /**
   * Most bytes (string length: log lines are JSON, mostly ASCII) allowed to
   * wait in the stream's buffer; a line that would go past it is dropped.
   */
  maxBufferBytes?: number
}

/** What a sink writes to: process.stdout, any Writable, or an object with write(). */
type SinkStream = NodeJS.WritableStream & { writableLength?: number; destroyed?: boolean; writableEnded?: boolean }

/** Lines dropped by every sink of this process (the metric counts them all). */
let droppedTotal = 0

/** How often flush() looks at the buffer: 'drain' only fires after a write returned false. */
const FLUSH_POLL_MS = 10

/**
 * pino's destination: JSON lines to a stream (process.stdout by default)
 * without ever blocking or retrying. A reader that went away (EPIPE, EBADF,
 * any stream error) makes the sink drop every later line; a reader that
 * stalls makes it drop the lines that would put more than `maxBufferBytes`
 * in the stream's buffer. Dropped lines are counted, never retried, so the
 * proxy's event loop never waits for its log reader. It has no `flushSync`,
 * on purpose: pino would call it on `fatal`, and a synchronous flush to a
 * stalled pipe is exactly the hang this replaces (sonic-boom's exit flush).
 * Node writes to pipes and sockets asynchronously (what a supervisor or a
 * container runtime gives canaryd); a file or a POSIX terminal is written
 * synchronously by Node itself, so there nothing ever waits in the buffer.
 */
export class LogSink {
  /** See LogSinkOptions.maxBufferBytes; may be changed at any time. */
  maxBufferBytes: number
  readonly #stream: SinkStream
  #dropped = 0
  #failure: Error | undefined

  constructor (stream: NodeJS.WritableStream = process.stdout, opts: LogSinkOptions = {}) {
    this.#stream = stream
    this.maxBufferBytes = opts.maxBufferBytes ?? DEFAULT_MAX_BUFFER_BYTES
    // an 'error' nobody listens to is thrown: an EPIPE from a gone reader would crash the proxy
    if (typeof stream.on === 'function') stream.on('error', this.#onError)
  }

  /** Lines this sink dropped (stream failed or over maxBufferBytes). */
  get dropped (): number {
    return this.#dropped
  }

  /** The error that made the stream unusable, if any: from then on every line is dropped. */
  get failure (): Error | undefined {
    return this.#failure
  }

  /** Bytes waiting in the stream's buffer (0 for a stream that writes synchronously). */
  get waiting (): number {
    return this.#stream.writableLength ?? 0
  }

  /** Writes one line, or drops and counts it; never throws, never blocks. */
  write (line: string): boolean {
    const s = this.#stream
    if (this.#failure !== undefined || s.destroyed === true || s.writableEnded === true) return this.#drop()
    const waiting = s.writableLength ?? 0
    // an empty buffer takes any line, so one line longer than the cap is still written
    if (waiting > 0 && waiting + line.length > this.maxBufferBytes) return this.#drop()
    try {
      s.write(line, this.#onWritten)
    } catch (err) {
      this.#failure = err as Error
      return this.#drop()
    }
    return true
  }

  /**
   * Resolves once the stream's buffer is empty, the stream failed, or
   * `timeoutMs` passed, whichever comes first. Never synchronous: a stalled
   * reader costs at most `timeoutMs`.
   */
  async flush (timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs
    for (;;) {
      const left = deadline - performance.now()
      if (this.#failure !== undefined || this.#stream.destroyed === true || this.waiting === 0 || left <= 0) return
      await new Promise((resolve) => setTimeout(resolve, Math.min(FLUSH_POLL_MS, left)))
    }
  }

  #drop (): false {
    this.#dropped++
    droppedTotal++
    return false
  }

  readonly #onError = (err: Error): void => {
    this.#failure ??= err
  }

  // a line the stream accepted but could not deliver (EPIPE, destroyed with it still buffered) is dropped too
  readonly #onWritten = (err?: Error | null): void => {
    if (err === undefined || err === null) return
    this.#failure ??= err
    this.#drop()
  }
}

let stdioGuarded = false

/**
 * Listens for 'error' on process.stdout and process.stderr (once per
 * process): an EPIPE on either, with nobody listening, would be thrown and
 * end the process; canaryd must outlive whatever reads its output.
 */
export function guardStdio (): void {
  if (stdioGuarded) return
  stdioGuarded = true
  const ignore = (): void => {}
  process.stdout.on('error', ignore)
  process.stderr.on('error', ignore)
}

let defaultSink: LogSink | undefined

/** The process's sink on process.stdout, shared by every logger created without a destination. */
export function defaultLogSink (): LogSink {
  if (defaultSink === undefined) {
    guardStdio()
    defaultSink = new LogSink(process.stdout)
  }
  return defaultSink
}

/** Log lines dropped so far by every sink of this process (metric canaryd_log_dropped_total). */
export function droppedLogLines (): number {
  return droppedTotal
}

/**
 * Waits, at most `timeoutMs`, until stdout took every buffered log line or
 * failed. Shutdown calls it before process.exit; it never blocks.
 */
export async function flushLogs (timeoutMs: number): Promise<void> {
  await defaultSink?.flush(timeoutMs)
}

/**
 * The level in force: `LOG_LEVEL` (when set and not empty) wins over the
 * config's `level`. Throws a ConfigError (CANARYD_ERR_CONFIG_INVALID) naming the variable
 * and listing the levels, instead of pino's stack trace.
 */
export function resolveLogLevel (level: string, env: NodeJS.ProcessEnv = process.env): LevelWithSilent {
  const fromEnv = env.LOG_LEVEL
  const [name, value] = fromEnv !== undefined && fromEnv !== '' ? ['LOG_LEVEL', fromEnv] : ['log.level', level]
  if (!(LOG_LEVELS as readonly string[]).includes(value)) {
    throw new ConfigError(name, `${JSON.stringify(value)} is not a log level; use one of ${LOG_LEVELS.join(', ')}`)
  }
  return value as LevelWithSilent
}

/** Options of createLogger beyond the level and destination. */
export interface CreateLoggerOptions {
  /** config `log.maxBufferBytes`: applied to the sink of this logger (the shared stdout sink when no destination). */
  maxBufferBytes?: number
}

/**
 * Creates the process logger: JSON lines on stdout through the shared
 * LogSink (never blocking; see LogSink), `LOG_LEVEL` wins over config.
 * Nothing on the hot path logs at info; request-level detail is at debug, or
 * in the optional access log. A `destination` gets its own LogSink.
 */
export function createLogger (level: string = 'info', destination?: NodeJS.WritableStream, opts: CreateLoggerOptions = {}): Logger {
  const lvl = resolveLogLevel(level)
  const sink = destination === undefined ? defaultLogSink() : new LogSink(destination)
  if (opts.maxBufferBytes !== undefined) sink.maxBufferBytes = opts.maxBufferBytes
  return pino({ name: 'canaryd', level: lvl, base: { pid: process.pid } }, sink)
}
