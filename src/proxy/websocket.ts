import type { ClientRequest, IncomingMessage, OutgoingHttpHeaders } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import httpProxy from 'http-proxy'
import type { Logger } from '../logger.js'
import type { Endpoint } from '../upstream/endpoint.js'
import { classifyUpstreamError } from '../upstream/classify.js'
import { recordFailure, warnTls, type VersionRuntime } from './forward.js'
import { endWith, replyOf } from './replies.js'

/** Where one routed WebSocket request goes. */
interface Routed { rt: VersionRuntime, ep: Endpoint }

/**
 * WebSocket proxying: a routed `Upgrade: websocket` request is handed to
 * http-proxy (raw socket piping) towards the endpoint the plain path's
 * rules picked; plain requests never come here. Counts each socket on its
 * version once the upstream answers 101, and as open until it closes.
 */
export class WebSocketProxy {
  readonly #ws: httpProxy
  readonly #log: Logger
  /** The version each proxied request went to, until the upstream answers (for the 101 count). */
  readonly #routed = new WeakMap<IncomingMessage, Routed>()
  readonly #sockets = new Set<Duplex>()

  constructor (log: Logger) {
    this.#log = log
    // xfwd off: the caller hands headers already sanitised, X-Forwarded-* included
    this.#ws = httpProxy.createProxyServer({ ws: true, xfwd: false })
    this.#ws.on('error', () => {}) // errors are handled per call; this only stops an unhandled 'error' crash
    this.#ws.on('proxyReqWs', (proxyReq: ClientRequest, req: IncomingMessage, socket: Duplex) => { this.#requested(proxyReq, req, socket) })
  }

  /**
   * Proxies one upgrade. `headers` is the plain path's sanitised flat list
   * (hop-by-hop and Connection-listed names gone, X-Forwarded-* set,
   * x-canaryd-version): http-proxy sends req.headers as they are, so they
   * are replaced by it plus the two headers that make this an upgrade.
   */
  forward (req: IncomingMessage, socket: Duplex, head: Buffer, url: string, headers: readonly string[], rt: VersionRuntime, ep: Endpoint): void {
    req.headers = upgradeHeaders(headers, req.headers.upgrade)
    req.url = url
    this.#routed.set(req, { rt, ep })
    this.#sockets.add(socket)
    socket.once('close', () => { this.#sockets.delete(socket) })
    const tls = ep.slot.tls
    // https: the slot's agent carries CA, client certificate and the TLS name
    const opts = tls === undefined ? { target: ep.origin } : { target: ep.origin, agent: ep.slot.wsAgent, secure: tls.rejectUnauthorized !== false }
    this.#ws.ws(req, socket, head, opts, (err: Error) => {
      const code = (err as NodeJS.ErrnoException).code ?? ''
      const failure = classifyUpstreamError(err)
      // http-proxy's own socket reports a connect timeout as ETIMEDOUT, which undici never does
      const connect = failure.kind === 'connect' || code === 'ETIMEDOUT'
      rt.observer.upstreamError(connect ? 'connect' : 'reset')
      recordFailure(rt, ep, connect, this.#log)
      const tlsFailed = failure.code === 'CANARYD_ERR_UPSTREAM_TLS'
      if (tlsFailed) warnTls(rt, ep.origin, err, this.#log)
      else this.#log.debug({ err, route: rt.route, version: rt.version, endpoint: ep.origin }, 'websocket upstream error')
      // before the 101 the client still speaks HTTP: tell it; after, just close
      if (socket.writable && (socket as Socket).bytesWritten === 0) endWith(socket, replyOf(tlsFailed ? 'CANARYD_ERR_UPSTREAM_TLS' : 'CANARYD_ERR_UPSTREAM_CONNECT'))
      else socket.destroy()
    })
  }

  /**
   * http-proxy is about to send a WebSocket request upstream: count it on its
   * version when the upstream answers 101, and as open until the client
   * socket closes. A refusal (any other status) or an error is not counted.
   */
  #requested (proxyReq: ClientRequest, req: IncomingMessage, socket: Duplex): void {
    const routed = this.#routed.get(req)
    if (routed === undefined) return
    this.#routed.delete(req)
    const rt = routed.rt
    proxyReq.once('upgrade', () => {
      if (socket.destroyed) return
      rt.observer.websocket?.(1)
      socket.once('close', () => { rt.observer.websocket?.(-1) })
    })
  }

  /** Cuts every open WebSocket (the end of a drain). */
  close (): void {
    for (const s of this.#sockets) s.destroy(new Error('draining'))
    this.#ws.close()
  }
}

/**
 * The WebSocket request's headers as an object for http-proxy: the sanitised
 * flat list from buildUpstreamHeaders (a repeated name becomes an array, sent
 * as repeated lines) plus `Upgrade` and `Connection: Upgrade`.
 */
function upgradeHeaders (flat: readonly string[], upgrade: string | undefined): IncomingMessage['headers'] {
  const out: OutgoingHttpHeaders = {}
  for (let i = 0; i < flat.length; i += 2) {
    const name = flat[i]!.toLowerCase()
    const value = flat[i + 1]!
    const prev = out[name]
    if (prev === undefined) out[name] = value
    else if (Array.isArray(prev)) prev.push(value)
    else out[name] = [String(prev), value]
  }
  out.upgrade = upgrade ?? 'websocket'
  out.connection = 'Upgrade'
  return out as IncomingMessage['headers']
}
