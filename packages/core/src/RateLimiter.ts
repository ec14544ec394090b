/**
 * Rate limits per key (a gateway key, an upstream account), weighted by cost
 * so that one limiter shape serves requests-per-minute (cost 1) and
 * tokens-per-minute (cost = tokens).
 *
 * Two algorithms: a token bucket (bursts up to `limit`, refilled evenly over
 * `window`) and an exact sliding window (never more than `limit` in any span
 * of `window`). Two modes: `fail` answers `RateLimited { retryAfter }` at
 * once; `wait` reserves the next free slot and sleeps until it, when that is
 * within `maxWait`, and otherwise fails like `fail` without spending anything.
 *
 * The counters live behind {@link RateLimiterStore}, so that replicas can
 * share them (a Redis store implements the same two atomic operations). Why
 * not `@effect/experimental`'s RateLimiter: its `delay` mode always reserves,
 * even for a wait the caller will not accept, and it has no sliding window.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import type * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"

export type Algorithm = "token-bucket" | "sliding-window"

/** The limit was reached; `retryAfter` is when the same request would fit. */
export class RateLimited extends Data.TaggedError("RateLimited")<{
  readonly limiter: string
  readonly key: string
  readonly limit: number
  readonly retryAfter: Duration.Duration
}> {
  override get message(): string {
    return `rate limit "${this.limiter}" reached for ${this.key}; retry after ${Duration.format(this.retryAfter)}`
  }
}

/** The store could not answer (e.g. Redis down). Callers decide whether to fail open. */
export class RateLimiterStoreError extends Data.TaggedError("RateLimiterStoreError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** What a store decides for one request, atomically. */
export type Decision =
  | { readonly granted: true; readonly waitMillis: number; readonly remaining: number }
  | { readonly granted: false; readonly retryAfterMillis: number; readonly remaining: number }

export interface AcquireRequest {
  readonly key: string
  readonly algorithm: Algorithm
  readonly limit: number
  readonly windowMillis: number
  readonly cost: number
  /** Reserve only if the wait is at most this; 0 means grant now or refuse. */
  readonly maxWaitMillis: number
}

/**
 * Where counters live. `acquire` must be atomic per key: check, reserve and
 * report in one step. Times come from the store's own clock (Effect's Clock
 * for the memory store, the server's clock for Redis).
 */
export class RateLimiterStore extends Context.Tag("@breakwater/core/RateLimiterStore")<
  RateLimiterStore,
  {
    readonly acquire: (request: AcquireRequest) => Effect.Effect<Decision, RateLimiterStoreError>
    /**
     * The same decision without an effect, at `now` (epoch millis), for
     * stores that decide in this process (the memory store); absent for
     * remote ones (Redis).
     */
    readonly unsafeAcquire?: ((request: AcquireRequest, now: number) => Decision) | undefined
    /**
     * The same decisions without a fiber, for stores that decide elsewhere
     * (Redis): `requests` decided one after the other in one atomic step,
     * each only if the one before it was granted (a refusal leaves the rest
     * untaken). `done` gets the decisions made (one per request up to the
     * first refusal, which is the last) once, when the store has answered;
     * or, when it cannot (Redis away: the store's fallback, with its log and
     * metric), the effect that decides them instead. For a hot path that can
     * wait for one reply but not for a fiber.
     */
    readonly unsafeAcquireAsync?:
      | ((
        requests: ReadonlyArray<AcquireRequest>,
        done: (decisions: ReadonlyArray<Decision> | Effect.Effect<ReadonlyArray<Decision>, RateLimiterStoreError>) => void
      ) => void)
      | undefined
  }
>() {}

export interface Options {
  readonly name: string
  readonly algorithm?: Algorithm
  readonly limit: number
  readonly window: Duration.DurationInput
  /** `fail` (default): refuse at once. `wait`: sleep for a slot up to `maxWait`. */
  readonly onExceeded?: "fail" | "wait"
  readonly maxWait?: Duration.DurationInput
}

export interface Permit {
  /** How long this call slept for its slot. */
  readonly waited: Duration.Duration
  /** What is left of the limit after this call. */
  readonly remaining: number
}

export interface RateLimiter {
  readonly name: string
  readonly limit: number
  /** Takes `cost` (default 1) from `key`'s limit, waiting if the mode allows. */
  readonly acquire: (key: string, cost?: number) => Effect.Effect<Permit, RateLimited | RateLimiterStoreError>
  /** Runs `self` after {@link acquire}. */
  readonly withPermit: (
    key: string,
    cost?: number
  ) => <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E | RateLimited | RateLimiterStoreError, R>
  /**
   * {@link acquire} without an effect, for a hot path: true when granted.
   * Present only when the decision can be made here and now: a store that
   * decides in this process and the `fail` mode (no wait). A refusal counts
   * in the metrics (with `tags` added) as `acquire`'s does.
   */
  readonly unsafeTryAcquire?:
    | ((key: string, cost: number, now: number, tags: ReadonlyArray<MetricLabel.MetricLabel>) => boolean)
    | undefined
  /**
   * {@link unsafeTryAcquire} that says when to retry: undefined when
   * granted, else the milliseconds after which `cost` may be granted (what
   * `acquire`'s `RateLimited.retryAfter` says). Present when it is.
   */
  readonly unsafeTake?:
    | ((key: string, cost: number, now: number, tags: ReadonlyArray<MetricLabel.MetricLabel>) => number | undefined)
    | undefined
  /**
   * {@link unsafeTake} for a store that decides elsewhere (Redis), without
   * a fiber: `done` gets, once the store has answered, undefined when
   * granted, else the milliseconds to retry after; or the effect that
   * answers that (the store's fallback while it is away). Present for such
   * a store in the `fail` mode.
   */
  readonly unsafeTakeAsync?:
    | ((
      key: string,
      cost: number,
      tags: ReadonlyArray<MetricLabel.MetricLabel>,
      done: (wait: number | undefined | Effect.Effect<number | undefined, RateLimiterStoreError>) => void
    ) => void)
    | undefined
}

export const RateLimiter = Context.GenericTag<RateLimiter>("@breakwater/core/RateLimiter")

/** One take of {@link unsafeTakeAllAsync}: `cost` from `limiter`'s limit for `key`. */
export interface Take {
  readonly limiter: RateLimiter
  readonly key: string
  readonly cost: number
}

/** What {@link unsafeTakeAllAsync} answers for a refusal: which take, and the milliseconds after which it may be granted. */
export interface Refusal {
  readonly index: number
  readonly wait: number
}

/** What {@link unsafeTakeAllAsync} needs of a limiter, kept out of its public surface. */
interface Internals {
  readonly store: Context.Tag.Service<RateLimiterStore>
  readonly request: (key: string, cost: number) => AcquireRequest
  readonly rejected: Metric.Metric.Counter<number>
}
const internals = new WeakMap<RateLimiter, Internals>()

/**
 * {@link RateLimiter.unsafeTakeAsync} of several limiters in one call of
 * their store, one after the other, each only if those before it were
 * granted (a key's tokens after its request count, as a gateway admits):
 * one round trip for all, not one per limiter in a row. `done` gets, once
 * the store has answered, undefined when every take was granted, else the
 * refusal (counted, as `acquire` counts its own); or the effect that
 * answers that (the store's fallback while it is away). Returns false, and
 * takes nothing, when the limiters cannot: one without `unsafeTakeAsync`, or
 * limiters of different stores.
 */
export const unsafeTakeAllAsync = (
  takes: ReadonlyArray<Take>,
  tags: ReadonlyArray<MetricLabel.MetricLabel>,
  done: (refusal: Refusal | undefined | Effect.Effect<Refusal | undefined, RateLimiterStoreError>) => void
): boolean => {
  if (takes.length === 0) return false
  const all: Array<Internals> = []
  for (const t of takes) {
    const i = t.limiter.unsafeTakeAsync === undefined ? undefined : internals.get(t.limiter)
    if (i === undefined || (all.length > 0 && i.store !== all[0]!.store)) return false
    all.push(i)
  }
  const acquireAsync = all[0]!.store.unsafeAcquireAsync!
  acquireAsync(takes.map((t, k) => all[k]!.request(t.key, t.cost)), (decisions) => {
    if (!Effect.isEffect(decisions)) return done(refusalOf(decisions, all, tags))
    done(Effect.flatMap(decisions, (ds) => {
      const last = ds[ds.length - 1]
      if (last === undefined || last.granted) return Effect.succeed(undefined)
      return Effect.as(Metric.increment(all[ds.length - 1]!.rejected), { index: ds.length - 1, wait: last.retryAfterMillis })
    }))
  })
  return true
}

/** The refusal among `decisions` (the last, if any), counted in its limiter's metric. */
const refusalOf = (
  decisions: ReadonlyArray<Decision>,
  all: ReadonlyArray<Internals>,
  tags: ReadonlyArray<MetricLabel.MetricLabel>
): Refusal | undefined => {
  const last = decisions[decisions.length - 1]
  if (last === undefined || last.granted) return undefined
  all[decisions.length - 1]!.rejected.unsafeUpdate(1, tags)
  return { index: decisions.length - 1, wait: last.retryAfterMillis }
}

const delayedCounter = Metric.counter("breakwater_ratelimit_delayed_total", {
  description: "Calls that waited for a rate-limit slot",
  incremental: true
})
const rejectedCounter = Metric.counter("breakwater_ratelimit_rejected_total", {
  description: "Calls refused by a rate limiter",
  incremental: true
})

export const make = (options: Options): Effect.Effect<RateLimiter, never, RateLimiterStore> =>
  Effect.map(RateLimiterStore, (store) => {
    const name = options.name
    const limit = options.limit
    const algorithm = options.algorithm ?? "token-bucket"
    const windowMillis = Duration.toMillis(options.window)
    const maxWaitMillis = options.onExceeded === "wait"
      ? Duration.toMillis(options.maxWait ?? Duration.infinity)
      : 0
    const delayed = Metric.tagged(delayedCounter, "limiter", name)
    const rejected = Metric.tagged(rejectedCounter, "limiter", name)
    // Escape ":" (and the escape) in the name so that no other name and key spell the same store key.
    const prefix = `${name.replace(/\\/g, "\\\\").replace(/:/g, "\\:")}:`
    /** What the store is asked for `cost` of `key` (one limiter's shape, for a take or a batch of them). */
    const requestOf = (key: string, cost: number): AcquireRequest => ({ key: prefix + key, algorithm, limit, windowMillis, cost, maxWaitMillis })

    const acquire = (key: string, cost = 1): Effect.Effect<Permit, RateLimited | RateLimiterStoreError> =>
      Effect.flatMap(
        store.acquire(requestOf(key, cost)),
        (decision): Effect.Effect<Permit, RateLimited> => {
          if (!decision.granted) {
            return Effect.zipRight(
              Metric.increment(rejected),
              Effect.fail(new RateLimited({ limiter: name, key, limit, retryAfter: Duration.millis(decision.retryAfterMillis) }))
            )
          }
          const permit: Permit = { waited: Duration.millis(decision.waitMillis), remaining: decision.remaining }
          if (decision.waitMillis === 0) return Effect.succeed(permit)
          return Effect.as(Effect.zipRight(Metric.increment(delayed), Effect.sleep(permit.waited)), permit)
        }
      )

    const unsafeAcquire = store.unsafeAcquire
    const unsafeTake = unsafeAcquire === undefined || maxWaitMillis !== 0 ? undefined : (
      key: string,
      cost: number,
      now: number,
      tags: ReadonlyArray<MetricLabel.MetricLabel>
    ): number | undefined => {
      const decision = unsafeAcquire(requestOf(key, cost), now)
      if (decision.granted) return undefined
      rejected.unsafeUpdate(1, tags)
      return decision.retryAfterMillis
    }
    const unsafeTryAcquire = unsafeTake === undefined ? undefined : (
      key: string,
      cost: number,
      now: number,
      tags: ReadonlyArray<MetricLabel.MetricLabel>
    ): boolean => unsafeTake(key, cost, now, tags) === undefined

    const unsafeAcquireAsync = store.unsafeAcquireAsync
    const waitOf = (decision: Decision, tags: ReadonlyArray<MetricLabel.MetricLabel>): number | undefined => {
      if (decision.granted) return undefined
      rejected.unsafeUpdate(1, tags)
      return decision.retryAfterMillis
    }
    const unsafeTakeAsync = unsafeAcquireAsync === undefined || maxWaitMillis !== 0 ? undefined : (
      key: string,
      cost: number,
      tags: ReadonlyArray<MetricLabel.MetricLabel>,
      done: (wait: number | undefined | Effect.Effect<number | undefined, RateLimiterStoreError>) => void
    ): void => {
      unsafeAcquireAsync(
        [requestOf(key, cost)],
        (decisions) =>
          done(
            Effect.isEffect(decisions)
              ? Effect.flatMap(decisions, ([d]) =>
                d!.granted ? Effect.succeed(undefined) : Effect.as(Metric.increment(rejected), d!.retryAfterMillis))
              : waitOf(decisions[0]!, tags)
          )
      )
    }

    const limiter = RateLimiter.of({
      name,
      limit,
      acquire,
      unsafeTryAcquire,
      unsafeTake,
      unsafeTakeAsync,
      withPermit: (key, cost) => (self) => Effect.zipRight(acquire(key, cost), self)
    })
    internals.set(limiter, {
      store,
      request: requestOf,
      rejected
    })
    return limiter
  })

export const layer = (options: Options): Layer.Layer<RateLimiter, never, RateLimiterStore> =>
  Layer.effect(RateLimiter, make(options))

/**
 * Options from `effect/Config` under `rateLimiter.<name>`: `limit`, `window`,
 * `algorithm`, `onExceeded`, `maxWait` (`RATE_LIMITER_RPM_LIMIT` in constant case).
 */
export const config = (name: string): Config.Config<Options> =>
  Config.all({
    limit: Config.integer("limit"),
    window: Config.duration("window").pipe(Config.withDefault(Duration.minutes(1))),
    algorithm: Config.literal("token-bucket", "sliding-window")("algorithm").pipe(Config.withDefault("token-bucket" as const)),
    onExceeded: Config.literal("fail", "wait")("onExceeded").pipe(Config.withDefault("fail" as const)),
    maxWait: Config.option(Config.duration("maxWait"))
  }).pipe(Config.nested(name), Config.nested("rateLimiter"), Config.map(({ maxWait, ...o }): Options =>
    Option.match(maxWait, { onNone: () => ({ name, ...o }), onSome: (maxWait) => ({ name, ...o, maxWait }) })
  ))

export const layerConfig = (
  config: Config.Config<Options>
): Layer.Layer<RateLimiter, ConfigError.ConfigError, RateLimiterStore> =>
  Layer.effect(RateLimiter, Effect.flatMap(config, make))

// ---------------------------------------------------------------------------
// The in-memory store

/**
 * Tokens are kept scaled by the window (one token = `windowMillis` units), so
 * that the refill is exactly `limit` units per millisecond: with integer
 * limits, costs and windows all the arithmetic stays in exact integers, and a
 * `retryAfter` is exactly when the request fits, whatever the path taken.
 */
interface Bucket {
  tokens: number
  updatedAt: number
  readonly limit: number
  readonly windowMillis: number
}

/** A sliding-window log: admitted (time, cost) pairs in time order. */
interface Log {
  times: Array<number>
  costs: Array<number>
  head: number
  /** Sum of the costs from `head` on, kept as entries come and go (O(1) per call). */
  total: number
  readonly windowMillis: number
}

/** The decision of a token bucket, mutating `bucket`. */
const decideTokenBucket = (bucket: Bucket, req: AcquireRequest, now: number): Decision => {
  const w = req.windowMillis
  bucket.tokens = Math.min(req.limit * w, bucket.tokens + (now - bucket.updatedAt) * req.limit)
  bucket.updatedAt = now
  const cost = req.cost * w
  const remaining = () => Math.max(0, Math.floor(bucket.tokens / w))
  if (req.cost > req.limit) return { granted: false, retryAfterMillis: w, remaining: remaining() }
  if (bucket.tokens >= cost) {
    bucket.tokens -= cost
    return { granted: true, waitMillis: 0, remaining: remaining() }
  }
  const wait = Math.ceil((cost - bucket.tokens) / req.limit)
  if (wait <= req.maxWaitMillis) {
    bucket.tokens -= cost
    return { granted: true, waitMillis: wait, remaining: 0 }
  }
  return { granted: false, retryAfterMillis: wait, remaining: remaining() }
}

/**
 * Pure decision of a sliding-window log. Reservations are FIFO: a slot is
 * never earlier than the last one granted, so each new entry only has to fit
 * with the entries before it.
 */
const decideSlidingWindow = (log: Log, req: AcquireRequest, now: number): Decision => {
  const w = req.windowMillis
  // Forget what has left every window that can still matter.
  while (log.head < log.times.length && log.times[log.head]! <= now - w) log.total -= log.costs[log.head++]!
  if (log.head > 64 && log.head * 2 > log.times.length) {
    log.times = log.times.slice(log.head)
    log.costs = log.costs.slice(log.head)
    log.head = 0
  }
  const last = log.times.length > log.head ? log.times[log.times.length - 1]! : now
  const start = Math.max(now, last)
  // What counts at `start`: the running total, less entries that will have
  // left the window by then (only when reservations reach into the future).
  let used = log.total
  let first = log.head
  while (first < log.times.length && log.times[first]! <= start - w) used -= log.costs[first++]!
  const remainingNow = Math.max(0, req.limit - used)
  if (req.cost > req.limit) return { granted: false, retryAfterMillis: w, remaining: remainingNow }
  let at = start
  if (used + req.cost > req.limit) {
    // The first reservation whose leaving makes room; those of the same
    // instant leave with it, so `remaining` counts none of them.
    for (let i = first; i < log.times.length; i++) {
      const t = log.times[i]!
      used -= log.costs[i]!
      while (i + 1 < log.times.length && log.times[i + 1] === t) used -= log.costs[++i]!
      if (used + req.cost <= req.limit) {
        at = t + w
        break
      }
    }
  }
  const wait = at - now
  if (wait > req.maxWaitMillis) return { granted: false, retryAfterMillis: wait, remaining: remainingNow }
  log.times.push(at)
  log.costs.push(req.cost)
  log.total += req.cost
  return { granted: true, waitMillis: wait, remaining: Math.max(0, req.limit - used - req.cost) }
}

/**
 * Counters in this process's memory: the embedded default. Each decision is
 * one synchronous step, so it is atomic without locks.
 */
export const makeStoreMemory: Effect.Effect<Context.Tag.Service<RateLimiterStore>> = Effect.sync(() => {
  const buckets = new Map<string, Bucket>()
  const logs = new Map<string, Log>()
  // Keys come from callers (API keys, upstreams); forget idle ones so that
  // many short-lived keys cannot grow the maps without bound.
  let nextSweep = 10_000
  // A bucket refilled to full, a log whose last entry is a window old is
  // empty: both are the same as a new key. (A bucket in debt from wait-mode
  // reservations takes longer than a window to be full again.)
  const sweep = (now: number) => {
    for (const [key, b] of buckets) {
      if (b.tokens + (now - b.updatedAt) * b.limit >= b.limit * b.windowMillis) buckets.delete(key)
    }
    for (const [key, log] of logs) {
      const last = log.times[log.times.length - 1]
      if (last === undefined || last <= now - log.windowMillis) logs.delete(key)
    }
    nextSweep = Math.max(10_000, (buckets.size + logs.size) * 2)
  }
  const decide = (req: AcquireRequest, now: number): Decision => {
    if (buckets.size + logs.size > nextSweep) sweep(now)
    if (req.algorithm === "token-bucket") {
      let bucket = buckets.get(req.key)
      if (bucket === undefined) {
        bucket = { tokens: req.limit * req.windowMillis, updatedAt: now, limit: req.limit, windowMillis: req.windowMillis }
        buckets.set(req.key, bucket)
      }
      return decideTokenBucket(bucket, req, now)
    }
    let log = logs.get(req.key)
    if (log === undefined) {
      log = { times: [], costs: [], head: 0, total: 0, windowMillis: req.windowMillis }
      logs.set(req.key, log)
    }
    return decideSlidingWindow(log, req, now)
  }
  return {
    acquire: (req) =>
      // clockWith runs its function when the effect runs, so the decision
      // below is one synchronous (atomic) step.
      Effect.clockWith((clock) => Effect.succeed(decide(req, clock.unsafeCurrentTimeMillis()))),
    unsafeAcquire: decide
  }
})

export const layerStoreMemory: Layer.Layer<RateLimiterStore> = Layer.effect(RateLimiterStore, makeStoreMemory)
