import t from 'tap'
import { hashUpdate, HASH_SEED } from '../../src/routing/hash.js'

/** Reference FNV-1a over Buffer.from(s, 'utf8'). */
function reference (s: string): number {
  let h = 0x811c9dc5
  for (const b of Buffer.from(s, 'utf8')) h = Math.imul(h ^ b, 0x01000193)
  return h >>> 0
}

t.test('inline UTF-8 hashing equals hashing Buffer.from(s, "utf8")', async (t) => {
  const cases = ['', 'a', 'user-42', 'é', '日本語', '😀', 'a\ud800b', '\udc00', 'x\ud83d', 'mixed ✓ 😀 é z']
  for (const s of cases) t.equal(hashUpdate(HASH_SEED, s), reference(s), JSON.stringify(s))
  // random strings over the whole UTF-16 range, lone surrogates included
  let seed = 7
  const rnd = (): number => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed }
  let mismatches = 0
  for (let i = 0; i < 2000; i++) {
    let s = ''
    const n = rnd() % 12
    for (let j = 0; j < n; j++) s += String.fromCharCode(rnd() % 0x10000)
    if (hashUpdate(HASH_SEED, s) !== reference(s)) mismatches++
  }
  t.equal(mismatches, 0, 'no mismatch over 2000 random strings')
})
