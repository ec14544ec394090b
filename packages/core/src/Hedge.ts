/**
 * Hedging: when a request's first upstream call has not answered after a
 * delay, the relay sends the same request to the next upstream as well; the
 * first valid answer wins and the other call is interrupted (its HTTP request
 * aborted, its bulkhead slot given back). It cuts the latency tail that
 * failover cannot touch (a call that is slow, not failing), at the price of
 * some extra upstream calls, which a budget caps.
 *
 * - `after`: a fixed delay, or a percentile of the attempted upstream's
 *   recent latency ({@link percentile}; `p95`): then only the calls slower
 *   than 95 % of recent ones are hedged. Until the upstream has
 *   {@link MIN_SAMPLES} measured calls, `initialDelay` stands in.
 * - `maxExtra`: hedges are at most this share of the requests that could be
 *   hedged, over a sliding `window` ({@link Budget}).
 *
 * This module holds the policy (delay, budget) and the race; `Relay` decides
 * which upstream a hedge may go to (never one whose breaker is not closed or
 * that is cooling down) and records the outcome.
 *
 * @since 0.2.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import { taggedBy } from "./internal/taggedMetrics.js"
import * as RetryBudget from "./RetryBudget.js"
import * as Upstream from "./Upstream.js"

/** A percentile of the attempted upstream's recent latency, as a delay. */
export interface Percentile {
  readonly _tag: "Percentile"
  /** In (0, 1), e.g. 0.95. */
  readonly quantile: number
}

/** `percentile(95)`: the delay is the upstream's recent 95th percentile latency. */
export const percentile = (p: number): Percentile => ({ _tag: "Percentile", quantile: p / 100 })

export const isPercentile = (u: unknown): u is Percentile =>
  typeof u === "object" && u !== null && (u as { readonly _tag?: unknown })._tag === "Percentile"

export interface Options {
  /** When to hedge: a fixed delay, or a {@link percentile} of the upstream's recent latency. */
  readonly after: Duration.DurationInput | Percentile
  /** Hedges as a share of the requests that could be hedged, over `window`. Default 0.1. */
  readonly maxExtra?: number | undefined
  /** The budget's sliding window. Default 10 s. */
  readonly window?: Duration.DurationInput | undefined
  /**
   * The delay under a percentile `after` while the upstream has fewer than
   * {@link MIN_SAMPLES} measured calls. Default 1 s.
   */
  readonly initialDelay?: Duration.DurationInput | undefined
  /** The shortest delay a percentile may give. Default 50 ms. */
  readonly minDelay?: Duration.DurationInput | undefined
  /**
   * When no later upstream may take the hedge, send it to the first call's
   * own upstream, on a second connection (a "tied request", as in Dean and
   * Barroso's "The Tail at Scale"): only if that upstream is still closed,
   * not cooling down and has a free slot. Default false.
   */
  readonly sameUpstream?: boolean | undefined
}

/** Measured calls an upstream needs before its percentile is trusted. */
export const MIN_SAMPLES = 20

/** The {@link Options} a hedge leaves out, at their defaults (one place: the server's config states them from here). */
export const defaults = {
  maxExtra: 0.1,
  window: Duration.seconds(10),
  initialDelay: Duration.seconds(1),
  minDelay: Duration.millis(50),
  sameUpstream: false
} as const

/** How a hedged request went, for its metadata and the request log. */
export interface Report {
  /** The upstream the hedge went to. */
  readonly upstream: string
  /**
   * `won`: the hedge gave the answer; `lost`: the first call answered
   * first; `failed`: the hedge failed (and the request went on without it).
   */
  readonly outcome: "won" | "lost" | "failed"
}

/** Hedges sent, by how they went (see {@link Report}). */
export interface Tally {
  readonly won: number
  readonly lost: number
  readonly failed: number
}

// ---------------------------------------------------------------------------
// Budget

/**
 * The cap on hedges: over a sliding window (ten buckets), hedges may be at
 * most `maxExtra` times the requests that could be hedged. No floor: at low
 * traffic fewer requests are hedged, never more than the share. It is a
 * {@link RetryBudget} (ratio `maxExtra`, no floor) of its own; each hedge
 * also spends a token of the relay's retry budget (see `Relay`).
 */
export interface Budget {
  /** Counts one request that could be hedged. */
  readonly recordPrimary: (now: number) => void
  /** Takes one hedge from the budget if it allows one now. */
  readonly tryAcquire: (now: number) => boolean
  /** The window's counts (for tests and the admin view). */
  readonly stats: (now: number) => { readonly primaries: number; readonly hedges: number }
}

export const makeBudget = (maxExtra: number, windowMillis: number): Budget => {
  let at = 0
  // A refused hedge is not a spent retry budget: no metric here (breakwater_hedged_total counts hedges).
  const window = RetryBudget.makeWith({ ratio: maxExtra, window: Duration.millis(windowMillis), minPerSecond: 0 }, () => at, () => {})
  return {
    recordPrimary: (now) => {
      at = now
      window.recordPrimary()
    },
    tryAcquire: (now) => {
      at = now
      return window.trySpend()
    },
    stats: (now) => {
      at = now
      const s = window.unsafeStats()
      return { primaries: s.primary, hedges: s.spent }
    }
  }
}

// ---------------------------------------------------------------------------
// Policy

export interface Hedge {
  readonly budget: Budget
  /** See {@link Options.sameUpstream}. */
  readonly sameUpstream: boolean
  /** The delay before hedging a call to `u`, millis. */
  readonly delayFor: (u: Upstream.Upstream) => number
  /** Whether {@link delayFor} reads the upstreams' latency percentiles: they must keep them (`Upstream.keepLatencies`). */
  readonly readsLatencies: boolean
}

export const make = (options: Options): Hedge => {
  const maxExtra = options.maxExtra ?? defaults.maxExtra
  const budget = makeBudget(maxExtra, Duration.toMillis(options.window ?? defaults.window))
  const after = options.after
  const sameUpstream = options.sameUpstream ?? defaults.sameUpstream
  if (isPercentile(after)) {
    const initial = Duration.toMillis(options.initialDelay ?? defaults.initialDelay)
    const min = Duration.toMillis(options.minDelay ?? defaults.minDelay)
    return {
      budget,
      sameUpstream,
      readsLatencies: true,
      delayFor: (u) => {
        const measured = Upstream.latencyQuantile(u, after.quantile, MIN_SAMPLES)
        return measured === undefined ? initial : Math.max(min, measured)
      }
    }
  }
  const fixed = Duration.toMillis(after)
  return { budget, sameUpstream, readsLatencies: false, delayFor: () => fixed }
}

// ---------------------------------------------------------------------------
// Metrics

const hedgedCounter = Metric.counter("breakwater_hedged_total", {
  description: "Hedged requests by the upstream the hedge went to and outcome (won, lost, failed)",
  incremental: true
})

/** `breakwater_hedged_total{upstream, outcome}`. */
export const hedgedBy = taggedBy(hedgedCounter, ["upstream", "outcome"])

// ---------------------------------------------------------------------------
// The race

/** How a race went. */
export type Raced<A> =
  /** No hedge was sent: the first call's outcome. */
  | { readonly _tag: "Alone"; readonly value: A }
  /**
   * A hedge was sent. `first`: the outcome that came first; `second`: the
   * other's, when the first did not settle the request (then both ended on
   * their own); undefined when the other was interrupted.
   */
  | {
    readonly _tag: "Hedged"
    readonly first: A
    readonly firstIsHedge: boolean
    readonly second: A | undefined
  }

/**
 * Runs `primary`; if it has not ended after `delayMillis`, asks `hedge` for a
 * second call (undefined: none allowed now) and runs it alongside. The first
 * outcome that `settles` the request ends the race: the other call is
 * interrupted, and waited for (its slot and connection are released when
 * this returns). An outcome that does not settle (a failure to fail over
 * from) leaves the other call running, and both are returned. A call that
 * ended with an answer after all, just as it lost, goes to `discard`.
 *
 * Interrupting the caller interrupts both calls.
 */
export const race = <A, E, R>(
  primary: Effect.Effect<A, E, R>,
  delayMillis: number,
  hedge: Effect.Effect<Effect.Effect<A, E, R> | undefined, never, R>,
  settles: (a: A) => boolean,
  discard: (a: A, isHedge: boolean) => Effect.Effect<void>
): Effect.Effect<Raced<A>, E, R> =>
  Effect.gen(function*() {
    const first = yield* Effect.fork(primary)
    const early = yield* Effect.race(
      Fiber.await(first),
      Effect.as(Effect.sleep(Duration.millis(delayMillis)), undefined)
    )
    if (early !== undefined) return { _tag: "Alone", value: yield* early } as Raced<A>
    const second = yield* hedge
    if (second === undefined) return { _tag: "Alone", value: yield* Fiber.join(first) } as Raced<A>
    const other = yield* Effect.fork(second)
    const [exit, firstIsHedge] = yield* Effect.race(
      Effect.map(Fiber.await(first), (e) => [e, false] as const),
      Effect.map(Fiber.await(other), (e) => [e, true] as const)
    )
    const loser = firstIsHedge ? first : other
    if (Exit.isFailure(exit)) {
      yield* Fiber.interrupt(loser)
      return yield* (exit as Exit.Exit<never, E>)
    }
    const value = exit.value
    if (settles(value)) {
      const lost = yield* Fiber.interrupt(loser)
      if (Exit.isSuccess(lost)) yield* discard(lost.value, !firstIsHedge)
      return { _tag: "Hedged", first: value, firstIsHedge, second: undefined } as Raced<A>
    }
    const rest = yield* Fiber.join(loser)
    return { _tag: "Hedged", first: value, firstIsHedge, second: rest } as Raced<A>
  })
