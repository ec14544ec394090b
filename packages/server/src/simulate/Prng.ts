/**
 * Small seeded random numbers for the simulator's own draws (arrivals,
 * prompts, simulated upstream answers). The relay itself draws from Effect's
 * `Random`, seeded separately. Everything here is plain synchronous code, so
 * that a draw costs a few nanoseconds and never depends on fiber scheduling.
 */

/** A 32-bit hash of a few integers (murmur3's mixing), used to derive independent seeds. */
export const hash = (...parts: ReadonlyArray<number>): number => {
  let h = 0x9e3779b9 ^ parts.length
  for (const part of parts) {
    // Fold numbers beyond 32 bits in, so that large request indices stay distinct.
    let k = (part | 0) ^ Math.floor(part / 4294967296)
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    k = Math.imul(k, 0x1b873593)
    h ^= k
    h = (h << 13) | (h >>> 19)
    h = (Math.imul(h, 5) + 0xe6546b64) | 0
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** A string as a number for {@link hash}. */
export const hashString = (s: string): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
  return h >>> 0
}

/** mulberry32: a fast 32-bit generator, good enough for simulation. */
export class Prng {
  private state: number

  constructor(seed: number) {
    this.state = seed >>> 0
  }

  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) | 0)
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  /** Standard normal (Box-Muller; one of the pair). */
  normal(): number {
    const u1 = this.next()
    const u2 = this.next()
    return Math.sqrt(-2 * Math.log(1 - u1)) * Math.cos(2 * Math.PI * u2)
  }

  /** Exponential with the given rate (events per unit). */
  exponential(rate: number): number {
    return -Math.log(1 - this.next()) / rate
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.min(n - 1, Math.floor(this.next() * n))
  }
}

/** The z-score of the 99th percentile of the standard normal. */
export const Z99 = 2.3263478740408408
