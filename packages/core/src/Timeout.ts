/**
 * Two limits on time: one per attempt (a hung upstream call is cut off), and
 * one for the whole request, a deadline that every attempt, retry sleep and
 * failover inside it respects. The deadline is carried in a `FiberRef`, so
 * nested code (retries, the router) reads the time left without it being
 * passed around; an attempt never gets more time than the deadline leaves.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import { dual } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { timeoutWith } from "./internal/race.js"

/** One attempt took longer than its own limit. */
export class AttemptTimedOut extends Data.TaggedError("AttemptTimedOut")<{
  readonly timeout: Duration.Duration
}> {
  override get message(): string {
    return `attempt timed out after ${Duration.format(this.timeout)}`
  }
}

/** The request's deadline passed. */
export class DeadlineExceeded extends Data.TaggedError("DeadlineExceeded")<{
  /** The whole request's budget. */
  readonly budget: Duration.Duration
  /** Upstream calls made before it passed, when the caller (the relay) counts them. */
  readonly attempts?: number | undefined
}> {
  override get message(): string {
    return `request deadline of ${Duration.format(this.budget)} exceeded`
  }
}

/** Epoch millis of the current request's deadline, and the budget it came from. */
const currentDeadline = FiberRef.unsafeMake<Option.Option<readonly [at: number, budget: Duration.Duration]>>(
  Option.none()
)

/** Time left before the current deadline; `None` when no deadline is set. */
export const remaining: Effect.Effect<Option.Option<Duration.Duration>> = Effect.flatMap(
  FiberRef.get(currentDeadline),
  (deadline) =>
    Option.isNone(deadline)
      ? Effect.succeedNone
      : Effect.clockWith((clock) =>
        Effect.sync(() => Option.some(Duration.millis(Math.max(0, deadline.value[0] - clock.unsafeCurrentTimeMillis()))))
      )
)

/**
 * Runs `self` under a deadline `budget` from now (or the enclosing deadline,
 * if that is sooner), failing `DeadlineExceeded` when it passes.
 */
export const withDeadline: {
  (budget: Duration.DurationInput): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E | DeadlineExceeded, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, budget: Duration.DurationInput): Effect.Effect<A, E | DeadlineExceeded, R>
} = dual(2, <A, E, R>(self: Effect.Effect<A, E, R>, budget: Duration.DurationInput) =>
  Effect.clockWith((clock) =>
    Effect.flatMap(FiberRef.get(currentDeadline), (outer) => {
      const b = Duration.decode(budget)
      const now = clock.unsafeCurrentTimeMillis()
      const own = now + Duration.toMillis(b)
      if (Option.isSome(outer) && outer.value[0] <= own) {
        // The enclosing deadline is sooner: it stays in charge.
        return self
      }
      return timeoutWith(
        Effect.locally(self, currentDeadline, Option.some([own, b] as const)),
        Duration.toMillis(b),
        () => new DeadlineExceeded({ budget: b })
      )
    })
  ))

/**
 * Sets the same deadline as {@link withDeadline} for nested `attempt`s,
 * retries and waits to respect, but without a timer of its own: for work
 * whose every wait already reads the deadline (the relay's attempts, backoff
 * and cooldown waits). It saves the fiber that cutting arbitrary work short
 * costs; an attempt still fails `DeadlineExceeded` when the deadline is the
 * nearer limit.
 */
export const withCooperativeDeadline: {
  (budget: Duration.DurationInput): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, budget: Duration.DurationInput): Effect.Effect<A, E, R>
} = dual(2, <A, E, R>(self: Effect.Effect<A, E, R>, budget: Duration.DurationInput) =>
  Effect.clockWith((clock) =>
    Effect.flatMap(FiberRef.get(currentDeadline), (outer) => {
      const b = Duration.decode(budget)
      const own = clock.unsafeCurrentTimeMillis() + Duration.toMillis(b)
      if (Option.isSome(outer) && outer.value[0] <= own) return self
      return Effect.locally(self, currentDeadline, Option.some([own, b] as const))
    })
  ))

/**
 * The deadline `fiber` runs under, read without an effect: `[epoch millis,
 * budget]`, or undefined. For a hot path that sets its own timer (the
 * relay's upstream calls) instead of running {@link attempt}.
 *
 * @internal
 */
export const unsafeDeadlineOf = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>
): readonly [at: number, budget: Duration.Duration] | undefined => Option.getOrUndefined(fiber.getFiberRef(currentDeadline))

/**
 * {@link withCooperativeDeadline} with the deadline given as epoch millis
 * (for work that started under a deadline it computed itself).
 *
 * @internal
 */
export const withCooperativeDeadlineAt = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  at: number,
  budget: Duration.Duration
): Effect.Effect<A, E, R> => Effect.locally(self, currentDeadline, Option.some([at, budget] as const))

/**
 * Runs one attempt under `timeout`, cut short by the current deadline: when
 * the deadline is the nearer limit the attempt fails `DeadlineExceeded`,
 * otherwise `AttemptTimedOut`.
 */
export const attempt: {
  (timeout: Duration.DurationInput): <A, E, R>(
    self: Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | AttemptTimedOut | DeadlineExceeded, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, timeout: Duration.DurationInput): Effect.Effect<A, E | AttemptTimedOut | DeadlineExceeded, R>
} = dual(2, <A, E, R>(self: Effect.Effect<A, E, R>, timeout: Duration.DurationInput) =>
  Effect.clockWith((clock) =>
    Effect.flatMap(FiberRef.get(currentDeadline), (deadline): Effect.Effect<A, E | AttemptTimedOut | DeadlineExceeded, R> => {
      const t = Duration.decode(timeout)
      if (Option.isSome(deadline)) {
        const left = deadline.value[0] - clock.unsafeCurrentTimeMillis()
        if (left <= 0) return Effect.fail(new DeadlineExceeded({ budget: deadline.value[1] }))
        if (left < Duration.toMillis(t)) {
          return timeoutWith(self, left, () => new DeadlineExceeded({ budget: deadline.value[1] }))
        }
      }
      return timeoutWith(self, Duration.toMillis(t), () => new AttemptTimedOut({ timeout: t }))
    })
  ))

export interface Options {
  /** Limit of one attempt. Default 30 s. */
  readonly attempt?: Duration.DurationInput
  /** Limit of the whole request, across attempts and failover. Default 60 s. */
  readonly request?: Duration.DurationInput
}

/** A configured pair of limits, for pipelines that take them from the context. */
export interface Timeout {
  readonly attempt: Duration.Duration
  readonly request: Duration.Duration
  readonly withAttempt: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E | AttemptTimedOut | DeadlineExceeded, R>
  readonly withDeadline: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E | DeadlineExceeded, R>
}

export const Timeout = Context.GenericTag<Timeout>("@breakwater/core/Timeout")

/** Builds a {@link Timeout}; an `Effect`, as every service's `make`. */
export const make = (options: Options = {}): Effect.Effect<Timeout> =>
  Effect.sync(() => {
    const a = Duration.decode(options.attempt ?? Duration.seconds(30))
    const r = Duration.decode(options.request ?? Duration.seconds(60))
    return Timeout.of({
      attempt: a,
      request: r,
      withAttempt: (self) => attempt(self, a),
      withDeadline: (self) => withDeadline(self, r)
    })
  })

export const layer = (options: Options = {}): Layer.Layer<Timeout> => Layer.effect(Timeout, make(options))

/**
 * Options from `effect/Config` under `timeout`: `attempt`, `request`
 * (durations such as "30 seconds"; `TIMEOUT_ATTEMPT` in constant case).
 */
export const config: Config.Config<Options> = Config.all({
  attempt: Config.duration("attempt").pipe(Config.withDefault(Duration.seconds(30))),
  request: Config.duration("request").pipe(Config.withDefault(Duration.seconds(60)))
}).pipe(Config.nested("timeout"))

export const layerConfig = (config: Config.Config<Options>): Layer.Layer<Timeout, ConfigError.ConfigError> =>
  Layer.effect(Timeout, Effect.flatMap(config, make))
