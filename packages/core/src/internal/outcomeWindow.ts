/**
 * Sliding windows of call outcomes, used by the circuit breaker's failure-rate
 * rule. Mutable on purpose: they live inside a breaker's state and are only
 * touched from synchronous, atomic state updates.
 */
export interface OutcomeWindow {
  record(now: number, failed: boolean): void
  /** Calls and failures currently inside the window. */
  totals(now: number): { readonly calls: number; readonly failures: number }
}

/** The last `size` calls, as a ring buffer. */
export class CountWindow implements OutcomeWindow {
  private readonly ring: Uint8Array
  private next = 0
  private filled = 0
  private failures = 0
  constructor(private readonly size: number) {
    this.ring = new Uint8Array(size)
  }
  record(_now: number, failed: boolean): void {
    if (this.filled === this.size) this.failures -= this.ring[this.next]!
    else this.filled++
    this.ring[this.next] = failed ? 1 : 0
    this.failures += failed ? 1 : 0
    this.next = (this.next + 1) % this.size
  }
  totals(): { calls: number; failures: number } {
    return { calls: this.filled, failures: this.failures }
  }
}

/**
 * The calls of the last `durationMillis`, in one-second buckets (as
 * resilience4j does): memory stays constant whatever the call rate.
 */
export class TimeWindow implements OutcomeWindow {
  private readonly bucketMillis: number
  private readonly calls: Float64Array
  private readonly fails: Float64Array
  private readonly stamps: Float64Array
  constructor(durationMillis: number) {
    const buckets = Math.max(1, Math.ceil(durationMillis / 1000))
    this.bucketMillis = durationMillis / buckets
    this.calls = new Float64Array(buckets)
    this.fails = new Float64Array(buckets)
    this.stamps = new Float64Array(buckets).fill(-1)
  }
  private slot(now: number): number {
    const epoch = Math.floor(now / this.bucketMillis)
    const i = epoch % this.calls.length
    if (this.stamps[i] !== epoch) {
      this.stamps[i] = epoch
      this.calls[i] = 0
      this.fails[i] = 0
    }
    return i
  }
  record(now: number, failed: boolean): void {
    const i = this.slot(now)
    this.calls[i]! += 1
    if (failed) this.fails[i]! += 1
  }
  totals(now: number): { calls: number; failures: number } {
    const current = Math.floor(now / this.bucketMillis)
    const oldest = current - this.calls.length + 1
    let calls = 0
    let failures = 0
    for (let i = 0; i < this.calls.length; i++) {
      const stamp = this.stamps[i]!
      if (stamp >= oldest && stamp <= current) {
        calls += this.calls[i]!
        failures += this.fails[i]!
      }
    }
    return { calls, failures }
  }
}
