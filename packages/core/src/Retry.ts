/**
 * Retrying one target: exponential backoff with full jitter (a random delay
 * between zero and the capped exponential, which spreads a crowd of retrying
 * clients instead of synchronising them), a maximum number of retries, and
 * respect for a server's `Retry-After`.
 *
 * A `Retry-After` within `maxRetryAfter` is obeyed exactly; a longer one ends
 * the retries on that target at once, so that the caller can fail over to
 * another target instead of sleeping (the reference article slept 60 s when
 * the header was missing). Retries also stop when the next sleep would pass
 * the request's deadline (see `Timeout`).
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Schedule from "effect/Schedule"
import * as Timeout from "./Timeout.js"

/**
 * A retry policy's options. `E` is the type of the errors its predicates
 * judge: inferred from the retried effect (`Retry.retry(self, options)`, or
 * in a `pipe`), or from an annotated predicate.
 */
export interface Options<E = unknown> {
  /** Retries after the first attempt. Default 2. */
  readonly maxRetries?: number
  /** The first backoff cap; doubles on each retry. Default 200 ms. */
  readonly baseDelay?: Duration.DurationInput
  /** The largest backoff cap. Default 5 s. */
  readonly maxDelay?: Duration.DurationInput
  /** The longest `Retry-After` worth waiting for. Default 10 s. */
  readonly maxRetryAfter?: Duration.DurationInput
  /** Which errors are worth retrying. Default: all. */
  readonly isRetryable?: ((error: E) => boolean) | undefined
  /**
   * The server's requested wait carried by an error, if any. Default: an
   * error's `retryAfter` field when it is a `Duration` (as on
   * `RateLimited` and `CircuitOpen`).
   */
  readonly retryAfter?: ((error: E) => Duration.Duration | undefined) | undefined
}

const retriesCounter = Metric.counter("breakwater_retries_total", {
  description: "Retries scheduled after a failed attempt",
  incremental: true
})

/** Reads a `retryAfter: Duration` field from an error, if it has one. */
export const retryAfterField = (error: unknown): Duration.Duration | undefined => {
  if (typeof error === "object" && error !== null && "retryAfter" in error) {
    const value = (error as { readonly retryAfter: unknown }).retryAfter
    if (Duration.isDuration(value)) return value
  }
  return undefined
}

/**
 * The schedule of retries for errors `E`: it outputs the delay it chose.
 * Use it with `Effect.retry`, or through {@link retry}.
 */
export const schedule = <E>(options: Options<E> = {}): Schedule.Schedule<Duration.Duration, E> => {
  const maxRetries = options.maxRetries ?? 2
  const base = Duration.decode(options.baseDelay ?? Duration.millis(200))
  const capMillis = Duration.toMillis(options.maxDelay ?? Duration.seconds(5))
  const maxRetryAfterMillis = Duration.toMillis(options.maxRetryAfter ?? Duration.seconds(10))
  const isRetryable = options.isRetryable ?? (() => true)
  const hintOf: (error: E) => Duration.Duration | undefined = options.retryAfter ?? retryAfterField

  return Schedule.identity<E>().pipe(
    Schedule.intersect(Schedule.exponential(base, 2)),
    Schedule.intersect(Schedule.recurs(maxRetries)),
    Schedule.whileInput((error: E) => {
      if (!isRetryable(error)) return false
      const hint = hintOf(error)
      return hint === undefined || Duration.toMillis(hint) <= maxRetryAfterMillis
    }),
    // Choose the delay: the server's wish, or full jitter under the cap.
    Schedule.mapEffect(([[error, exponential]]) => {
      const hint = hintOf(error)
      if (hint !== undefined) return Effect.succeed(hint)
      const cap = Math.min(capMillis, Duration.toMillis(exponential))
      return Effect.map(Random.nextRange(0, cap), (ms) => Duration.millis(Math.floor(ms)))
    }),
    // Never sleep past the request's deadline: give up instead.
    Schedule.checkEffect((_, delay) =>
      Effect.map(Timeout.remaining, (left) => Option.isNone(left) || Duration.lessThan(delay, left.value))
    ),
    Schedule.modifyDelay((delay) => delay),
    Schedule.tapOutput(() => Metric.increment(retriesCounter))
  )
}

/** Retries `self` by a policy built once (its schedule is shared by every call). */
const retryWith = <E>(options: Options<E>) => {
  const policy = schedule<E>(options)
  return <A, E1 extends E, R>(self: Effect.Effect<A, E1, R>): Effect.Effect<A, E1, R> =>
    Effect.catchAll(self, (first) => {
      // Hand the first error to the schedule without running `self` again.
      let replayed = false
      return Effect.retry(
        Effect.suspend(() => {
          if (replayed) return self
          replayed = true
          return Effect.fail(first)
        }),
        policy as Schedule.Schedule<Duration.Duration, E1>
      )
    })
}

/**
 * A retry policy applied to effects: any effect when its predicates take
 * `unknown` (or there are none), else effects failing with `E`. (Written as
 * one signature per case, rather than one generic in the error, so that in a
 * `pipe` TypeScript infers `E` from the piped effect.)
 */
export type Policy<E> = unknown extends E ? <A, E1, R>(self: Effect.Effect<A, E1, R>) => Effect.Effect<A, E1, R>
  : <A, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/**
 * Retries `self` by {@link schedule}; the last error is returned when it
 * gives up. A first attempt that succeeds costs one `catchAll`: the
 * schedule's driver is only built after a failure.
 *
 * The predicates take the effect's error type: `Retry.retry(self, options)`
 * and `self.pipe(Retry.retry(options))` infer it from `self`, so
 * `isRetryable: (e) => e._tag !== "BadRequest"` needs no annotation.
 * `Retry.retry(options)` on its own takes it from an annotated predicate
 * (`isRetryable: (e: MyError) => …`), and then retries effects failing with
 * `MyError` only.
 */
export function retry<E = unknown>(options?: Options<E>): Policy<E>
export function retry<A, E, R>(self: Effect.Effect<A, E, R>, options?: Options<NoInfer<E>>): Effect.Effect<A, E, R>
export function retry(
  first?: Options<unknown> | Effect.Effect<unknown, unknown, unknown>,
  second?: Options<unknown>
): unknown {
  // Data-last builds the policy once, for every effect it is applied to.
  return Effect.isEffect(first) ? retryWith(second ?? {})(first) : retryWith(first ?? {})
}

/**
 * A configured retry policy, for pipelines that take it from the context.
 * `E` is the type of the errors its predicates judge.
 */
export interface Retry<E = unknown> {
  readonly options: Options<E>
  readonly retry: <A, E1 extends E, R>(self: Effect.Effect<A, E1, R>) => Effect.Effect<A, E1, R>
}

export const Retry = Context.GenericTag<Retry>("@breakwater/core/Retry")

/** Builds a {@link Retry}; an `Effect`, as every service's `make`. */
export const make = <E = unknown>(options: Options<E> = {}): Effect.Effect<Retry<E>> =>
  Effect.sync((): Retry<E> => ({ options, retry: retryWith(options) }))

export const layer = (options: Options = {}): Layer.Layer<Retry> => Layer.effect(Retry, make(options))

/**
 * Options from `effect/Config` under `retry`: `maxRetries`, `baseDelay`,
 * `maxDelay`, `maxRetryAfter` (`RETRY_MAX_RETRIES` in constant case).
 */
export const config: Config.Config<Options> = Config.all({
  maxRetries: Config.integer("maxRetries").pipe(Config.withDefault(2)),
  baseDelay: Config.duration("baseDelay").pipe(Config.withDefault(Duration.millis(200))),
  maxDelay: Config.duration("maxDelay").pipe(Config.withDefault(Duration.seconds(5))),
  maxRetryAfter: Config.duration("maxRetryAfter").pipe(Config.withDefault(Duration.seconds(10)))
}).pipe(Config.nested("retry"))

export const layerConfig = (config: Config.Config<Options>): Layer.Layer<Retry, ConfigError.ConfigError> =>
  Layer.effect(Retry, Effect.flatMap(config, make))

// ---------------------------------------------------------------------------
// Retry-After

const httpDate = /^[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/

/**
 * Parses a `Retry-After` value, delay-seconds or an HTTP date, against `now`
 * (epoch millis). A date in the past is a zero wait; anything else is `None`.
 */
export const parseRetryAfter = (value: string, now: number): Option.Option<Duration.Duration> => {
  const v = value.trim()
  if (/^\d+(\.\d+)?$/.test(v)) return Option.some(Duration.millis(Math.round(Number(v) * 1000)))
  if (httpDate.test(v)) {
    const at = Date.parse(v)
    if (!Number.isNaN(at)) return Option.some(Duration.millis(Math.max(0, at - now)))
  }
  return Option.none()
}

/**
 * The wait asked for by response headers: `retry-after-ms` (sent by OpenAI
 * and Azure) first, then `retry-after`. Header names are lower case.
 */
export const retryAfterFromHeaders = (
  headers: Readonly<Record<string, string | undefined>>
): Effect.Effect<Option.Option<Duration.Duration>> =>
  Effect.clockWith((clock) =>
    Effect.sync(() => {
      const ms = headers["retry-after-ms"]
      if (ms !== undefined && /^\d+(\.\d+)?$/.test(ms.trim())) {
        return Option.some(Duration.millis(Math.round(Number(ms))))
      }
      const ra = headers["retry-after"]
      return ra === undefined ? Option.none() : parseRetryAfter(ra, clock.unsafeCurrentTimeMillis())
    })
  )
