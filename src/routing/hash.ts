/**
 * Key hashing for sticky routing: 32-bit FNV-1a over the UTF-8 bytes of
 * `salt + "\0" + key`, finished with MurmurHash3's fmix32 avalanche.
 *
 * FNV-1a is used because its state after the salt can be computed once per
 * route when the routing table is built, so the hot path only walks the key.
 * The UTF-8 encoding is done inline from UTF-16 code units (lone surrogates
 * become U+FFFD, exactly as `Buffer.from(s, 'utf8')`), so hashing allocates
 * nothing and any other implementation that hashes UTF-8 bytes agrees with it.
 */

const FNV_OFFSET = 0x811c9dc5
const FNV_PRIME = 0x01000193

/** FNV-1a offset basis, the state before any byte. */
export const HASH_SEED = FNV_OFFSET

/** Continues an FNV-1a state over the UTF-8 bytes of `s`. Returns an unsigned 32-bit state. */
export function hashUpdate (state: number, s: string): number {
  let h = state | 0
  const n = s.length
  for (let i = 0; i < n; i++) {
    let c = s.charCodeAt(i)
    if (c < 0x80) {
      h = Math.imul(h ^ c, FNV_PRIME)
      continue
    }
    if (c < 0x800) {
      h = Math.imul(h ^ (0xc0 | (c >> 6)), FNV_PRIME)
      h = Math.imul(h ^ (0x80 | (c & 0x3f)), FNV_PRIME)
      continue
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const next = i + 1 < n ? s.charCodeAt(i + 1) : 0
      if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        const cp = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00)
        i++
        h = Math.imul(h ^ (0xf0 | (cp >> 18)), FNV_PRIME)
        h = Math.imul(h ^ (0x80 | ((cp >> 12) & 0x3f)), FNV_PRIME)
        h = Math.imul(h ^ (0x80 | ((cp >> 6) & 0x3f)), FNV_PRIME)
        h = Math.imul(h ^ (0x80 | (cp & 0x3f)), FNV_PRIME)
        continue
      }
      c = 0xfffd // lone surrogate: encoded as U+FFFD, like Buffer.from
    }
    h = Math.imul(h ^ (0xe0 | (c >> 12)), FNV_PRIME)
    h = Math.imul(h ^ (0x80 | ((c >> 6) & 0x3f)), FNV_PRIME)
    h = Math.imul(h ^ (0x80 | (c & 0x3f)), FNV_PRIME)
  }
  return h >>> 0
}

/** MurmurHash3's 32-bit finaliser: every input bit affects every output bit. */
export function fmix32 (x: number): number {
  let h = x | 0
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** The FNV state after `salt` and a NUL separator; computed once per route. */
export function saltState (salt: string): number {
  return Math.imul(hashUpdate(FNV_OFFSET, salt) ^ 0, FNV_PRIME) >>> 0
}

/**
 * Hashes a sticky key under a route's salt state into one of 2^32 buckets.
 * Same salt and key → same bucket, in every process and after every restart.
 */
export function hashKey (salt: number, key: string): number {
  return fmix32(hashUpdate(salt, key))
}

/** A version's seed: the hash of its name, so config order never changes a pick. */
export function versionSeed (name: string): number {
  return fmix32(hashUpdate(FNV_OFFSET, name) ^ 0x5bd1e995)
}
