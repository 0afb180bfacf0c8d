import { Writable } from 'node:stream'
import { createLogger, type Logger } from '../../src/logger.js'

/** One parsed log line. */
export type LogLine = Record<string, unknown>

/**
 * A logger at `level` whose JSON lines are kept for assertions (at most
 * 10,000: a test that logs per request stays bounded). LOG_LEVEL, which would
 * win over `level`, is ignored while the logger is made.
 */
export function captureLog (level: string = 'debug'): { logger: Logger, lines: LogLine[] } {
  const lines: LogLine[] = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim() !== '' && lines.length < 10_000) lines.push(JSON.parse(l) as LogLine)
      cb()
    }
  })
  const prev = process.env.LOG_LEVEL
  delete process.env.LOG_LEVEL
  try {
    return { logger: createLogger(level, stream), lines }
  } finally {
    if (prev !== undefined) process.env.LOG_LEVEL = prev
  }
}
