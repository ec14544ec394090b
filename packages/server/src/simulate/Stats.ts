/**
 * Accumulators for the simulator's results: counts and latency histograms,
 * never a list of every request, so that memory stays bounded however long
 * the simulated run.
 */

/**
 * Latencies in whole milliseconds. With `relative = 0` every millisecond is
 * its own bucket (exact percentiles; the number of buckets is bounded by the
 * longest latency, i.e. by the request timeout). With `relative > 0`,
 * values from 100 ms on share buckets `relative` wide (e.g. 1%), which bounds
 * the buckets by a few hundred whatever the values.
 */
export class Histogram {
  private readonly counts = new Map<number, number>()
  private readonly logBase: number
  count = 0

  constructor(private readonly relative = 0) {
    this.logBase = Math.log(1 + relative)
  }

  add(millis: number): void {
    const v = Math.max(0, Math.round(millis))
    const key = this.relative === 0 || v < 100 ? v : -1 - Math.floor(Math.log(v / 100) / this.logBase)
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1)
    this.count++
  }

  private valueOf(key: number): number {
    return key >= 0 ? key : Math.round(100 * Math.exp((-1 - key) * this.logBase))
  }

  /** Nearest-rank percentile (`p` in 0..1): the smallest value with at least `p` of the values at or below it. */
  percentile(p: number): number | undefined {
    if (this.count === 0) return undefined
    const rank = Math.max(1, Math.ceil(p * this.count))
    const values = [...this.counts].map(([k, n]) => [this.valueOf(k), n] as const).sort((a, b) => a[0] - b[0])
    let seen = 0
    for (const [value, n] of values) {
      seen += n
      if (seen >= rank) return value
    }
    return values[values.length - 1]![0]
  }
}

export interface Minute {
  requests: number
  errors: number
  readonly latency: Histogram
}

/** What a client saw for one request. */
export type Outcome =
  | { readonly ok: true; readonly latency: number; readonly cacheHit: boolean; readonly upstream: string | undefined }
  /** `status`: the HTTP status the client saw, or `timeout` for the direct client's own timeout. */
  | { readonly ok: false; readonly status: string }

/** One column of the results: every request as its client saw it. */
export class Column {
  requests = 0
  successes = 0
  cacheHits = 0
  readonly errors = new Map<string, number>()
  readonly latency = new Histogram(0)
  readonly minutes: Array<Minute>
  /** Successful requests answered by each upstream (cache hits not counted). */
  readonly servedBy = new Map<string, number>()

  constructor(durationMillis: number) {
    this.minutes = Array.from({ length: Math.max(1, Math.ceil(durationMillis / 60_000)) }, () => ({
      requests: 0,
      errors: 0,
      latency: new Histogram(0.01)
    }))
  }

  /** Records a request that arrived at `arrivedAt` (millis). */
  record(arrivedAt: number, outcome: Outcome): void {
    this.requests++
    const minute = this.minutes[Math.min(this.minutes.length - 1, Math.floor(arrivedAt / 60_000))]!
    minute.requests++
    if (outcome.ok) {
      this.successes++
      this.latency.add(outcome.latency)
      minute.latency.add(outcome.latency)
      if (outcome.cacheHit) this.cacheHits++
      else if (outcome.upstream !== undefined) this.servedBy.set(outcome.upstream, (this.servedBy.get(outcome.upstream) ?? 0) + 1)
    } else {
      minute.errors++
      this.errors.set(outcome.status, (this.errors.get(outcome.status) ?? 0) + 1)
    }
  }
}
