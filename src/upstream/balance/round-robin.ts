import type { Endpoint } from '../endpoint.js'

/**
 * Round robin: each endpoint in turn. The position lives in the caller's
 * one-element counter (the version's endpoint group), so it survives table
 * swaps that keep the group; when the set of healthy endpoints changes the
 * turn simply continues over the new set.
 */
export function pickRoundRobin (eps: readonly Endpoint[], turn: { next: number }): Endpoint | undefined {
  const n = eps.length
  if (n <= 1) return eps[0]
  const i = turn.next
  turn.next = i + 1 >= n ? 0 : i + 1
  return eps[i >= n ? i % n : i]
}
