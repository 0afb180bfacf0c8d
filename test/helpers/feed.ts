/**
 * Raw event-stream connections to an admin server (the feed of issue 18),
 * for tests that count its 32 stream slots: a plain socket, so nothing but
 * the status line is read and the stream stays open until destroyed.
 */
import { connect, type Socket } from 'node:net'

/** What tap's `t` offers that these helpers use. */
interface Teardown { teardown: (fn: () => void) => void }

/** Opens GET /api/v1/events on a raw socket; resolves once the status line is in. The socket is destroyed in teardown. */
export async function rawStream (t: Teardown, port: number, headers = ''): Promise<{ socket: Socket, status: number }> {
  return await new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    t.teardown(() => { socket.destroy() })
    let data = ''
    const timer = setTimeout(() => { socket.destroy(); reject(new Error('no status line within 5 s')) }, 5000)
    const onData = (c: Buffer): void => {
      data += c.toString('latin1')
      const m = /^HTTP\/1\.1 (\d{3})/.exec(data)
      if (m !== null) {
        clearTimeout(timer)
        socket.off('data', onData)
        socket.pause()
        resolve({ socket, status: Number(m[1]) })
      }
    }
    socket.on('data', onData)
    socket.on('error', () => {})
    socket.write(`GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${headers}\r\n`)
  })
}

/** How many more event streams the instance accepts now (at most 40; each probe closed again). */
export async function freeSlots (t: Teardown, port: number, headers = ''): Promise<number> {
  const open: Socket[] = []
  let n = 0
  try {
    for (let i = 0; i < 40; i++) {
      const s = await rawStream(t, port, headers)
      open.push(s.socket)
      if (s.status !== 200) break
      n++
    }
  } finally {
    for (const s of open) s.destroy()
  }
  return n
}
