/** Resolves after `ms`. */
export const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/**
 * Polls `fn` every `step` ms until it is true; throws `what: not within ms`
 * after `ms` (bounded: never loops forever). Returns the time it took.
 */
export async function until (what: string, fn: () => boolean | Promise<boolean>, ms: number, step = 10): Promise<number> {
  const start = performance.now()
  for (let i = 0; i <= Math.ceil(ms / step); i++) {
    if (await fn()) return performance.now() - start
    await sleep(step)
  }
  throw new Error(`${what}: not within ${ms} ms`)
}
