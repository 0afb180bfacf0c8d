import { pino, type Logger, type LevelWithSilent } from 'pino'

/** The logger type used across canaryd (pino). */
export type { Logger }

/**
 * Creates the process logger: JSON lines on stdout, `LOG_LEVEL` wins over config.
 * Nothing on the hot path logs at info; request-level detail is at debug, or in
 * the optional access log.
 */
export function createLogger (level: string = 'info', destination?: NodeJS.WritableStream): Logger {
  const lvl = (process.env.LOG_LEVEL ?? level) as LevelWithSilent
  const opts = { name: 'canaryd', level: lvl, base: { pid: process.pid } }
  return destination === undefined ? pino(opts) : pino(opts, destination as pino.DestinationStream)
}
