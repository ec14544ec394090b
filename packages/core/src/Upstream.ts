/**
 * An upstream is one OpenAI-compatible endpoint (an account at a provider or
 * a relay) with its own protections: a circuit breaker, a bulkhead, and the
 * rate limits of its account. The relay routes each request among the
 * upstreams that serve its model.
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Bulkhead from "./Bulkhead.js"
import * as CircuitBreaker from "./CircuitBreaker.js"
import * as RateLimiter from "./RateLimiter.js"
import type * as Retry from "./Retry.js"
import type { UpstreamError } from "./UpstreamError.js"

export interface Config {
  readonly name: string
  /** Base URL including the version path, e.g. `https://api.openai.com/v1`. */
  readonly baseUrl: string
  readonly apiKey: Redacted.Redacted<string>
  /** Models served, or `"*"` for any. */
  readonly models: ReadonlyArray<string> | "*"
  /** Client model name -> this upstream's model name. An alias is served too. */
  readonly aliases?: Readonly<Record<string, string>> | undefined
  /** Lower is tried first by the `priority` strategy. Default 1. */
  readonly priority?: number | undefined
  /** Share of traffic under the `weighted` strategy. Default 1. */
  readonly weight?: number | undefined
  /** Bulkhead size. Default 64. */
  readonly maxConcurrent?: number | undefined
  /** Account limits, enforced before calling so that we fail over instead of earning a 429. */
  readonly requestsPerMinute?: number | undefined
  readonly tokensPerMinute?: number | undefined
  /** Limit of one attempt. Default 30 s. */
  readonly timeout?: Duration.DurationInput | undefined
  /** Overrides the relay's `streamIdleTimeout` for this upstream's streams. */
  readonly streamIdleTimeout?: Duration.DurationInput | undefined
  /** Overrides of the relay-wide breaker settings. */
  readonly breaker?: Partial<Omit<CircuitBreaker.Options, "name" | "isFailure">> | undefined
  /** Overrides of the relay-wide retry settings. */
  readonly retry?: Partial<Pick<Retry.Options, "maxRetries" | "baseDelay" | "maxDelay" | "maxRetryAfter">> | undefined
}

/** Live counters of one upstream, for routing and the admin view. */
export interface Stats {
  requests: number
  successes: number
  failures: number
  /** Exponentially weighted moving average of successful attempts' latency, ms. */
  latencyEwmaMs: number | undefined
  lastError: string | undefined
  lastErrorAt: number | undefined
  /**
   * Recent successful attempts' latencies, for percentiles
   * ({@link latencyQuantile}); made by {@link keepLatencies} for a reader
   * of them (a percentile hedge). Absent: no samples are kept.
   */
  latencies?: LatencySamples | undefined
}

/** A ring of the last {@link LATENCY_SAMPLES} latencies, ms. */
export interface LatencySamples {
  readonly ring: Float64Array
  /** Samples recorded in all (the ring holds the last ones). */
  total: number
  /** The last quantile computed, and at which `total`: recomputed every few samples, not per call. */
  cachedQuantile: number
  cachedValue: number
  cachedAt: number
}

export interface Upstream {
  readonly name: string
  readonly baseUrl: string
  readonly apiKey: Redacted.Redacted<string>
  readonly priority: number
  readonly weight: number
  readonly timeout: Duration.Duration
  /** This upstream's own `streamIdleTimeout`, if it has one. */
  readonly streamIdleTimeout: Duration.Duration | undefined
  readonly retry: Config["retry"]
  /** The upstream's name for `model`, or undefined when it does not serve it. */
  readonly modelFor: (model: string) => string | undefined
  /** The client-visible model names it serves (aliases included); `"*"` for any. */
  readonly models: ReadonlyArray<string> | "*"
  /** Client model name -> this upstream's model name. */
  readonly aliases: Readonly<Record<string, string>>
  readonly breaker: CircuitBreaker.CircuitBreaker
  readonly bulkhead: Bulkhead.Bulkhead
  readonly requestLimit: RateLimiter.RateLimiter | undefined
  readonly tokenLimit: RateLimiter.RateLimiter | undefined
  readonly stats: Stats
}

/**
 * Which failures say the upstream is unhealthy. 429s and quota errors are
 * handled by cooldowns (the upstream is healthy, just busy or spent), and the
 * caller's own bad requests say nothing about it.
 */
export const countsAgainstBreaker = (error: unknown): boolean => {
  const tag = (error as { readonly _tag?: string } | null)?._tag
  return tag === "UpstreamServerError" || tag === "UpstreamUnreachable" || tag === "UpstreamTimeout" ||
    tag === "InvalidResponse"
}

const EWMA_ALPHA = 0.2

/** Latencies kept per upstream for percentiles. */
export const LATENCY_SAMPLES = 256
/** New samples after which a percentile is computed again. */
const QUANTILE_REFRESH = 8

/**
 * From now on, keeps the upstream's recent latencies for percentiles
 * ({@link latencyQuantile}): called by what reads them (a relay hedging
 * after a percentile), so that the others pay no write per success.
 */
export const keepLatencies = (upstream: Upstream): void => {
  upstream.stats.latencies ??= { ring: new Float64Array(LATENCY_SAMPLES), total: 0, cachedQuantile: -1, cachedValue: 0, cachedAt: 0 }
}

/**
 * Adds one latency sample for percentiles only (not the EWMA nor the
 * counters), if the upstream keeps them ({@link keepLatencies}): `record`
 * adds one for each success; hedging adds the time a call had run when it
 * was interrupted for losing, a lower bound of its latency, so that
 * interrupted slow calls still count as slow.
 */
export const noteLatency = (upstream: Upstream, latencyMs: number): void => {
  const l = upstream.stats.latencies
  if (l === undefined) return
  l.ring[l.total % LATENCY_SAMPLES] = latencyMs
  l.total++
}

/**
 * The `q` quantile (0..1) of the upstream's last {@link LATENCY_SAMPLES}
 * latencies, ms; undefined with fewer than `minSamples` samples. Computed
 * again only after a few new samples (a sort of at most 256 numbers).
 */
export const latencyQuantile = (upstream: Upstream, q: number, minSamples = 1): number | undefined => {
  const l = upstream.stats.latencies
  if (l === undefined || l.total < Math.max(1, minSamples)) return undefined
  if (l.cachedQuantile === q && l.total - l.cachedAt < QUANTILE_REFRESH) return l.cachedValue
  const n = Math.min(l.total, LATENCY_SAMPLES)
  const sorted = l.ring.slice(0, n).sort()
  const value = sorted[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))]!
  l.cachedQuantile = q
  l.cachedValue = value
  l.cachedAt = l.total
  return value
}

/** Records one attempt's outcome in the upstream's counters. */
export const record = (upstream: Upstream, now: number, latencyMs: number, error: UpstreamError | undefined): void => {
  const s = upstream.stats
  s.requests++
  if (error === undefined) {
    s.successes++
    s.latencyEwmaMs = s.latencyEwmaMs === undefined ? latencyMs : s.latencyEwmaMs + EWMA_ALPHA * (latencyMs - s.latencyEwmaMs)
    noteLatency(upstream, latencyMs)
  } else {
    s.failures++
    s.lastError = error.message
    s.lastErrorAt = now
  }
}

type BreakerSettings = Partial<Omit<CircuitBreaker.Options, "name" | "isFailure" | "resumeFrom">>

/**
 * An upstream's breaker unless told otherwise: open when half of the calls
 * of the last 10 s failed (at least 20 calls), or after 10 failures in a
 * row (a dead upstream at low traffic). Not after 5 in a row, the bare
 * breaker's default: when every upstream fails a third of its calls at
 * once, 5 in a row come every minute or so, and breakers opening on them
 * turn a partial degradation into an outage; at 33% a rate of 50% over 20
 * calls or more is not reached, nor 10 in a row in hours. A dead upstream
 * (every call refused) still opens after 10 calls.
 */
export const breakerDefaults = {
  failureThreshold: 10,
  failureRate: { threshold: 0.5, minimumCalls: 20, window: { duration: Duration.seconds(10) } }
} as const satisfies BreakerSettings

/** The breaker settings each upstream was built with, to tell whether a new config changes them. */
const breakerSettings = new WeakMap<Upstream, BreakerSettings>()

const millis = (d: Duration.DurationInput | undefined): number | undefined =>
  d === undefined ? undefined : Duration.toMillis(d)

/** Whether two breakers built with these settings would behave the same. */
const sameBreaker = (a: BreakerSettings, b: BreakerSettings): boolean => {
  const ra = a.failureRate
  const rb = b.failureRate
  const window = (r: CircuitBreaker.FailureRate) =>
    "calls" in r.window ? `calls:${r.window.calls}` : `ms:${Duration.toMillis(r.window.duration)}`
  return a.failureThreshold === b.failureThreshold && a.successThreshold === b.successThreshold &&
    a.halfOpenMaxCalls === b.halfOpenMaxCalls && millis(a.openDuration) === millis(b.openDuration) &&
    millis(a.slowCallDuration) === millis(b.slowCallDuration) && a.openDurationSchedule === b.openDurationSchedule &&
    (ra === undefined || rb === undefined
      ? ra === rb
      : ra.threshold === rb.threshold && ra.minimumCalls === rb.minimumCalls && window(ra) === window(rb))
}

/**
 * Builds an upstream with its breaker, bulkhead and limiters.
 *
 * `previous`: the same upstream (same name and base URL) as built from an
 * earlier config, whose state the new one carries on (a config reload):
 * its breaker (the same one when its settings are unchanged, else a new one
 * resumed from its state: an open breaker stays open), its bulkhead when
 * `maxConcurrent` is unchanged (calls in flight on either count against one
 * limit; a new size gets a new bulkhead, and the calls still on the old one
 * finish there), and its stats (latency, counters, last error). Its account
 * limits' counters live in the `RateLimiterStore`, so they carry on too.
 * Ignored when its name or base URL differ. A breaker or bulkhead carried
 * over stays owned by the scope `previous` was built in: keep that scope
 * open as long as an upstream built from it is in use.
 */
export const make = (
  config: Config,
  defaults: {
    readonly breaker?: BreakerSettings | undefined
    readonly previous?: Upstream | undefined
  } = {}
): Effect.Effect<Upstream, never, Scope.Scope | RateLimiter.RateLimiterStore> =>
  Effect.gen(function*() {
    const name = config.name
    const baseUrl = config.baseUrl.replace(/\/+$/, "")
    const previous = defaults.previous !== undefined && defaults.previous.name === name &&
        defaults.previous.baseUrl === baseUrl
      ? defaults.previous
      : undefined
    const settings: BreakerSettings = { ...breakerDefaults, ...defaults.breaker, ...config.breaker }
    const before = previous === undefined ? undefined : breakerSettings.get(previous)
    const breaker = previous !== undefined && before !== undefined && sameBreaker(before, settings)
      ? previous.breaker
      : yield* CircuitBreaker.make({
        ...settings,
        name,
        isFailure: countsAgainstBreaker,
        resumeFrom: previous === undefined ? undefined : yield* previous.breaker.snapshot
      })
    const maxConcurrent = config.maxConcurrent ?? 64
    const bulkhead = previous !== undefined && previous.bulkhead.unsafeStats().maxConcurrent === maxConcurrent
      ? previous.bulkhead
      : yield* Bulkhead.make({ name, maxConcurrent })
    const requestLimit = config.requestsPerMinute === undefined ? undefined : yield* RateLimiter.make({
      name: `upstream:${name}:rpm`,
      limit: config.requestsPerMinute,
      window: Duration.minutes(1)
    })
    const tokenLimit = config.tokensPerMinute === undefined ? undefined : yield* RateLimiter.make({
      name: `upstream:${name}:tpm`,
      limit: config.tokensPerMinute,
      window: Duration.minutes(1)
    })
    const aliases = config.aliases ?? {}
    const served = config.models === "*" ? undefined : new Set(config.models)
    const modelFor = (model: string): string | undefined => {
      const target = aliases[model]
      if (target !== undefined) return target
      return served === undefined || served.has(model) ? model : undefined
    }
    const upstream: Upstream = {
      name,
      baseUrl,
      apiKey: config.apiKey,
      priority: config.priority ?? 1,
      weight: config.weight ?? 1,
      timeout: Duration.decode(config.timeout ?? Duration.seconds(30)),
      streamIdleTimeout: config.streamIdleTimeout === undefined ? undefined : Duration.decode(config.streamIdleTimeout),
      retry: config.retry,
      modelFor,
      models: config.models === "*" ? "*" : [...config.models, ...Object.keys(aliases)],
      aliases,
      breaker,
      bulkhead,
      requestLimit,
      tokenLimit,
      stats: previous?.stats ?? {
        requests: 0,
        successes: 0,
        failures: 0,
        latencyEwmaMs: undefined,
        lastError: undefined,
        lastErrorAt: undefined
      }
    }
    breakerSettings.set(upstream, settings)
    return upstream
  })
