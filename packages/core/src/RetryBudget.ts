/**
 * A retry budget (Envoy's and Finagle's): retries may add at most a fixed
 * share of the load that callers bring, however many requests fail.
 *
 * Every request's first upstream call is a primary call
 * ({@link RetryBudget.recordPrimary}); every further call for the same
 * request — a retry on the same upstream, a failover to the next, a new
 * round after backoff, a hedge — must first take a token
 * ({@link RetryBudget.trySpend}). Over a sliding `window`, the calls spent
 * may not exceed `ratio` of the primary calls in it, or `minPerSecond`
 * times the window's length in seconds when that is more (the floor: a
 * quiet gateway, a few requests a minute, may still retry each of them).
 *
 * Why: per-request limits (`maxAttempts`) bound one request, not the whole.
 * When every upstream fails a share of calls at once, retrying each failure
 * multiplies the load on providers that are already struggling (a retry
 * storm). With a budget of 20%, upstream calls stay at most 1.2 per request
 * whatever happens, and retries still rescue the occasional failure.
 *
 * Synchronous on purpose: the relay calls it on every request's path, and
 * other features (hedging) spend from the same budget. Time comes from
 * Effect's Clock (captured when the budget is made), so a test steps it
 * with `TestClock`.
 *
 * @since 0.2.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"

export interface Options {
  /** Calls beyond the first, as a share of primary calls over the window. Default 0.2. */
  readonly ratio?: number | undefined
  /** The sliding window. Default 10 s. */
  readonly window?: Duration.DurationInput | undefined
  /** Calls beyond the first always allowed per second of the window, whatever the traffic. Default 3. */
  readonly minPerSecond?: number | undefined
}

/** The defaults: 20% over 10 s, at least 3 a second. */
export const defaults = { ratio: 0.2, window: Duration.seconds(10), minPerSecond: 3 } as const

export interface Stats {
  /** Primary calls in the window. */
  readonly primary: number
  /** Calls spent from the budget in the window. */
  readonly spent: number
  /** What the window allows now: max(ratio * primary, minPerSecond * window seconds). */
  readonly allowed: number
  /** Calls refused since the budget was made. */
  readonly exhausted: number
}

export interface RetryBudget {
  /** Counts one primary call (a request's first upstream call) now. */
  readonly recordPrimary: () => void
  /**
   * Takes one token for a call beyond a request's first (a retry, a
   * failover, a hedge): true when the window allows it (the call is then
   * counted), false when the budget is exhausted (the call must not be
   * made; `breakwater_retry_budget_exhausted_total` counts it).
   *
   * `share` (default 1) is the part of the window's allowance this spend
   * may reach: a hedge passes {@link hedgeShare} so that failovers, which
   * save a request rather than speed it up, always keep the rest. A spend
   * refused only by its share is not counted as exhausted.
   */
  readonly trySpend: (share?: number) => boolean
  /** The window now. */
  readonly unsafeStats: () => Stats
}

/**
 * The part of the allowance hedges may use: half. Uncapped hedging that
 * spent the whole budget left none for the failover after a 429, and a
 * relay that hedged answered more 502s than one that did not.
 */
export const hedgeShare = 0.5

export const RetryBudget = Context.GenericTag<RetryBudget>("@breakwater/core/RetryBudget")

const exhaustedCounter = Metric.counter("breakwater_retry_budget_exhausted_total", {
  description: "Retries and failovers not made because the retry budget was spent",
  incremental: true
})

/**
 * A budget that never refuses and counts nothing: the relay's when the
 * budget is turned off (`retryBudget: false`).
 */
export const unlimited: RetryBudget = {
  recordPrimary: () => {},
  trySpend: () => true,
  unsafeStats: () => ({ primary: 0, spent: 0, allowed: Number.POSITIVE_INFINITY, exhausted: 0 })
}

const countExhausted = (): void => exhaustedCounter.unsafeUpdate(1, [])

/** The number of buckets a window is cut into: the window slides a tenth at a time. */
const BUCKETS = 10

/**
 * A budget over `now` (epoch millis). The window is cut into ten buckets,
 * so memory is constant whatever the traffic and the window slides a tenth
 * of its length at a time.
 */
export const makeWith = (
  options: Options,
  now: () => number,
  /** What a refused spend does besides returning false; default: counts `breakwater_retry_budget_exhausted_total`. */
  onExhausted: () => void = countExhausted
): RetryBudget => {
  const ratio = options.ratio ?? defaults.ratio
  const windowMillis = Duration.toMillis(Duration.decode(options.window ?? defaults.window))
  const minPerSecond = options.minPerSecond ?? defaults.minPerSecond
  if (!(ratio >= 0) || !(windowMillis > 0) || !(minPerSecond >= 0)) {
    throw new RangeError("RetryBudget: ratio and minPerSecond must be >= 0, window > 0")
  }
  const floor = (minPerSecond * windowMillis) / 1000
  const bucketMillis = windowMillis / BUCKETS
  const primary = new Float64Array(BUCKETS)
  const spent = new Float64Array(BUCKETS)
  let primaryTotal = 0
  let spentTotal = 0
  let exhausted = 0
  /** The last bucket epoch the totals are up to date with. */
  let current = -1

  /** Drops the buckets that left the window; returns the current bucket's index. */
  const advance = (t: number): number => {
    const epoch = Math.floor(t / bucketMillis)
    if (epoch !== current) {
      // Clear the slots whose bucket left the window (all of them after a long quiet spell).
      if (epoch - current >= BUCKETS || epoch < current) {
        primary.fill(0)
        spent.fill(0)
        primaryTotal = 0
        spentTotal = 0
      } else {
        for (let e = current + 1; e <= epoch; e++) {
          const i = e % BUCKETS
          primaryTotal -= primary[i]!
          spentTotal -= spent[i]!
          primary[i] = 0
          spent[i] = 0
        }
      }
      current = epoch
    }
    return epoch % BUCKETS
  }

  const allowedNow = () => Math.max(ratio * primaryTotal, floor)

  return {
    recordPrimary: () => {
      const i = advance(now())
      primary[i]! += 1
      primaryTotal += 1
    },
    trySpend: (share = 1) => {
      const i = advance(now())
      const allowed = allowedNow()
      if (spentTotal + 1 > allowed) {
        exhausted++
        onExhausted()
        return false
      }
      if (share < 1 && spentTotal + 1 > share * allowed) return false
      spent[i]! += 1
      spentTotal += 1
      return true
    },
    unsafeStats: () => {
      advance(now())
      return { primary: primaryTotal, spent: spentTotal, allowed: allowedNow(), exhausted }
    }
  }
}

/** A budget on Effect's Clock (the one in the context when it is made). */
export const make = (options: Options = {}): Effect.Effect<RetryBudget> =>
  Effect.map(Effect.clock, (clock) => makeWith(options, () => clock.unsafeCurrentTimeMillis()))

/** A budget in the context. */
export const layer = (options: Options = {}): Layer.Layer<RetryBudget> => Layer.effect(RetryBudget, make(options))
