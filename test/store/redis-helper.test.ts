import { existsSync } from 'node:fs'
import t from 'tap'
import { redisMissing, redisTestOptions, startRedis } from '../helpers/redis.js'

// The fleet tests stand on this helper: a real redis-server on a free
// loopback port whose data survives a stop and a start (AOF in a temp dir).

t.test('redisMissing names redis-server and .ci/run when it is absent', async (t) => {
  const path = process.env.PATH
  process.env.PATH = '/nonexistent-dir'
  try {
    const why = redisMissing()
    t.match(why, /redis-server/)
    t.match(why, /\.ci\/run installs it/)
    t.match(redisTestOptions(), { skip: why })
  } finally {
    process.env.PATH = path
  }
})

t.test('start, set/get, stop, start again on the same port with the data kept, kill', redisTestOptions(), async (t) => {
  let dir = ''
  await t.test('the server', async (t) => {
    const redis = await startRedis(t)
    dir = redis.dir
    t.match(redis.url, /^redis:\/\/127\.0\.0\.1:\d+\/0$/)
    t.ok(redis.running && redis.pid !== undefined, 'running, with a pid')

    const c = redis.client()
    t.equal(await c.ping(), 'PONG')
    t.equal(await c.set('k', 'v1'), 'OK')
    t.equal(await c.hset('h', 'gen', '7'), 1)
    t.equal(await c.get('k'), 'v1')

    const pid = redis.pid
    await redis.stop()
    t.notOk(redis.running, 'stopped')
    t.equal(redis.pid, undefined)
    await t.rejects(c.get('k'), 'a command to the stopped server fails (no retries)')

    await redis.start()
    t.ok(redis.running, 'started again')
    t.not(redis.pid, pid, 'a new process')
    const c2 = redis.client()
    t.equal(await c2.get('k'), 'v1', 'the data survived stop/start (AOF in the same dir)')
    t.equal(await c2.hget('h', 'gen'), '7')
    t.equal(await c2.set('k', 'v2'), 'OK')
    await t.rejects(redis.start(), /already running/, 'start while running is refused')

    await redis.kill()
    t.notOk(redis.running, 'killed')
    await redis.start()
    const c3 = redis.client()
    // SIGKILL with appendfsync everysec may lose the last second; v2 was written before the
    // earlier commands answered, and AOF writes happen before the reply is sent, so the
    // OS has it even if Redis had not fsynced: a kill of the process (not the machine) keeps it
    t.equal(await c3.get('k'), 'v2', 'a SIGKILL of the process keeps what was written')
    t.match(redis.log(), /Ready to accept connections/)
  })
  t.notOk(existsSync(dir), 'teardown removed the data dir')
})

t.test('two servers at once get different ports', redisTestOptions(), async (t) => {
  const [a, b] = await Promise.all([startRedis(t), startRedis(t)])
  t.not(a.port, b.port)
  await a.client().set('x', 'a')
  t.equal(await b.client().get('x'), null, 'separate data')
})
