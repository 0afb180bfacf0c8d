/**
 * `GET /api/v1/fleet`: the instances that share this one's state. With the
 * file store the fleet is this instance alone; with Redis, every instance
 * whose heartbeat is current, with the generation it applied and the
 * rollouts it leads.
 */
import type { Heartbeat } from '../store/redis.js'
import type { RuntimeStore } from '../store/store.js'
import type { AdminServer } from './server.js'

/** What the endpoint needs to know about this instance and the fleet. */
export interface FleetSource {
  store: RuntimeStore
  /** This instance's heartbeat as it would write it now. */
  self: () => Heartbeat
  /** The live instances' heartbeats (fleet mode); throws when the store cannot be reached. */
  instances?: () => Promise<Heartbeat[]>
}

/** One instance as the endpoint lists it. */
export interface FleetInstanceView extends Heartbeat {
  /** Its routes config differs from the fleet's. */
  configMismatch: boolean
  /** The instance answering. */
  self: boolean
}

/** Registers `GET /api/v1/fleet` (see the module comment). */
export function registerFleetRoutes (admin: Pick<AdminServer, 'addRoute'>, src: FleetSource): void {
  admin.addRoute('GET', '/api/v1/fleet', async () => {
    const store = src.store
    const me = src.self()
    let listed: Heartbeat[] = [me]
    let error: string | undefined
    if (src.instances !== undefined && store.up) {
      try {
        listed = await src.instances()
      } catch (err) {
        error = (err as Error).message
      }
    } else if (src.instances !== undefined) {
      error = 'the fleet store cannot be reached: only this instance is listed'
    }
    // this instance's own line is always current (its heartbeat may be a beat old, or missing while Redis is away)
    const others = listed.filter((h) => h.id !== me.id)
    const fleetConfig = store.fleetConfigHash
    const instances: FleetInstanceView[] = [me, ...others].map(({ nonce: _, ...h }) => ({
      ...h,
      configMismatch: fleetConfig !== '' && h.config !== fleetConfig,
      self: h.id === me.id
    })).sort((a, b) => a.id.localeCompare(b.id))
    return {
      json: {
        store: store.fleet ? 'redis' : 'file',
        self: me.id,
        storeUp: store.up,
        generation: store.generation,
        configMismatch: store.configMismatch,
        ...(error === undefined ? {} : { error }),
        instances
      }
    }
  })
}
