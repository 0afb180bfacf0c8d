import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { ERROR_CODES, errorMessage, type ErrorCode } from '../errors.js'

/** A raw reply for a socket that has no ServerResponse (clientError, upgrade, CONNECT), built once. */
function rawReply (code: ErrorCode): string {
  const body = JSON.stringify({ error: { code, message: errorMessage(code) } })
  const status = ERROR_CODES[code].status
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
}

/** The raw replies, by error code (every registry code, so no caller needs a fallback). */
const REPLIES = new Map<ErrorCode, string>()
for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) REPLIES.set(code, rawReply(code))

/** The raw reply of `code`, with `Connection: close`. */
export function replyOf (code: ErrorCode): string {
  return REPLIES.get(code)!
}

/**
 * Writes a raw reply and closes the connection once it is flushed. Not just
 * `end()`: the server's sockets allow half-open, and one whose client never
 * closes its side would linger (with the request it was cut from still
 * holding its upstream) until the client did.
 */
export function endWith (socket: Duplex, reply: string): void {
  socket.write(reply)
  ;(socket as Socket).destroySoon()
}
