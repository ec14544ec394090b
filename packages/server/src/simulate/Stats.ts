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
  /** Counts by value, for values kept exactly (dense: index = millis). */
  private readonly exact: Array<number> = []
  /** Counts by log bucket (index j: from 100 * (1 + relative)^j). */
  private readonly log: Array<number> = []
  private readonly logBase: number
  count = 0

  constructor(private readonly relative = 0) {
    this.logBase = Math.log(1 + relative)
  }

  add(millis: number): void {
    const v = Math.max(0, Math.round(millis))
    if (this.relative === 0 || v < 100) bump(this.exact, v)
    else bump(this.log, Math.floor(Math.log(v / 100) / this.logBase))
    this.count++
  }

  /** Nearest-rank percentile (`p` in 0..1): the smallest value with at least `p` of the values at or below it. */
  percentile(p: number): number | undefined {
    if (this.count === 0) return undefined
    const rank = Math.max(1, Math.ceil(p * this.count))
    // Exact values (all below 100 when there are log buckets), then the log buckets: in ascending order.
    let seen = 0
    let last = 0
    for (let v = 0; v < this.exact.length; v++) {
      const n = this.exact[v]!
      if (n === 0) continue
      seen += n
      last = v
      if (seen >= rank) return v
    }
    for (let j = 0; j < this.log.length; j++) {
      const n = this.log[j]!
      if (n === 0) continue
      seen += n
      last = Math.round(100 * Math.exp(j * this.logBase))
      if (seen >= rank) return last
    }
    return last
  }
}

/** Adds one at `index`, growing the array densely (no holes: a plain, fast array). */
const bump = (counts: Array<number>, index: number): void => {
  while (counts.length <= index) counts.push(0)
  counts[index]!++
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
