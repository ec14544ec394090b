/**
 * A circuit breaker stops calling a dependency that keeps failing, so that its
 * callers fail over at once instead of waiting on it, and it gets time to
 * recover. After `openDuration` it lets a few probe calls through (HalfOpen);
 * enough successes close it, any failure opens it again.
 *
 * Unlike the reference article's breaker, every transition is one atomic
 * update (the half-open probe count is never read outside it), a success in
 * Closed resets the consecutive-failure count, and Open becomes HalfOpen on
 * time alone, even when no call arrives.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as PubSub from "effect/PubSub"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { CountWindow, type OutcomeWindow, TimeWindow } from "./internal/outcomeWindow.js"

/** The states of a breaker. `ForcedOpen` and `Disabled` are set by operators only. */
export type State = "Closed" | "Open" | "HalfOpen" | "ForcedOpen" | "Disabled"

/** One change of state, as published on {@link CircuitBreaker.changes}. */
export interface Transition {
  readonly breaker: string
  readonly from: State
  readonly to: State
  /** Epoch millis, from Effect's Clock. */
  readonly at: number
  readonly reason: string
}

/** The call was refused without being made. */
export class CircuitOpen extends Data.TaggedError("CircuitOpen")<{
  readonly breaker: string
  readonly state: State
  /** How long until the breaker will admit a probe (zero when half-open probes are all taken). */
  readonly retryAfter: Duration.Duration
}> {
  override get message(): string {
    return `circuit breaker "${this.breaker}" is ${this.state}`
  }
}

/** A failure-rate rule over a sliding window of the last N calls or the last T. */
export interface FailureRate {
  /** Trip when failures / calls reaches this share (0 < threshold <= 1). */
  readonly threshold: number
  /** No decision before this many calls are in the window. */
  readonly minimumCalls: number
  readonly window: { readonly calls: number } | { readonly duration: Duration.DurationInput }
}

/**
 * A breaker's options. `E` is the type of the errors that `isFailure` judges
 * (inferred from it): the breaker then protects calls failing with `E` only.
 */
export interface Options<E = unknown> {
  readonly name: string
  /** Consecutive failures that open the breaker. Default 5. */
  readonly failureThreshold?: number
  /** Also open on a failure rate over a sliding window. Off by default. */
  readonly failureRate?: FailureRate | undefined
  /** A successful call slower than this counts as a failure. Off by default. */
  readonly slowCallDuration?: Duration.DurationInput | undefined
  /** How long the breaker stays open before it admits probes. Default 30 s. */
  readonly openDuration?: Duration.DurationInput
  /**
   * How the open duration grows on trips that follow each other without a
   * recovery in between; its outputs are the durations. Example:
   * `Schedule.exponential("30 seconds").pipe(Schedule.map(Duration.min("10 minutes")))`.
   * When set, it replaces `openDuration`.
   */
  readonly openDurationSchedule?: Schedule.Schedule<Duration.Duration> | undefined
  /** Concurrent probes admitted while half-open. Default 3. */
  readonly halfOpenMaxCalls?: number
  /** Probe successes that close the breaker. Default 3. */
  readonly successThreshold?: number
  /**
   * Which errors count against the dependency. Default: all. A caller's own
   * bad request (a 400) should return `false`: it says nothing about the
   * dependency's health. Errors that do not count are neutral. Typed by the
   * calls' error type: `isFailure: (e: MyError) => e._tag !== "BadRequest"`.
   */
  readonly isFailure?: ((error: E) => boolean) | undefined
  /**
   * Start where another breaker of the same dependency stopped (its
   * {@link Snapshot}): for replacing a breaker whose settings changed (a
   * config reload) without forgetting what it knew. An open breaker stays
   * open until the same time, a forced-open or disabled one stays so, trips
   * and consecutive failures carry on; a half-open one starts its trials
   * again. Default: a new breaker, Closed.
   */
  readonly resumeFrom?: Snapshot | undefined
}

export interface Snapshot {
  readonly name: string
  readonly state: State
  readonly consecutiveFailures: number
  /** Calls and failures in the failure-rate window (zero when no rule is set). */
  readonly windowCalls: number
  readonly windowFailures: number
  /** Epoch millis when an open breaker will admit probes. */
  readonly openUntil: number | undefined
  /** Trips since the last recovery (what the open-duration schedule has seen). */
  readonly trips: number
  readonly halfOpenInFlight: number
}

/**
 * One admitted call whose outcome is reported later, once: for calls whose
 * end is not the end of an effect (a stream succeeds or fails when it ends,
 * not when its first event arrives). The first report counts; later ones are
 * ignored, so `release` can sit in a finalizer as a safety net.
 */
export interface Permit<E = unknown> {
  /**
   * The call succeeded. `durationMs` is what the slow-call rule judges
   * (for a stream: the time to its first event); by default the time since
   * the permit was acquired.
   */
  readonly onSuccess: (durationMs?: number) => Effect.Effect<void>
  /** The call failed with `error` (counted if `isFailure(error)`, neutral otherwise). */
  readonly onError: (error: E) => Effect.Effect<void>
  /** Nothing was learnt (the caller gave up): neutral, frees a half-open probe slot. */
  readonly release: Effect.Effect<void>
}

/** The public permit, under a name that the breaker's internals do not shadow. */
type OutcomePermit<E> = Permit<E>

/**
 * A breaker over calls that fail with `E` (the type its `isFailure` judges;
 * `unknown`, any call, when it has none).
 */
export interface CircuitBreaker<E = unknown> {
  readonly name: string
  /**
   * Runs `self` if the breaker admits it, and records how it ended. Its
   * error type is kept as it is, plus `CircuitOpen`.
   */
  readonly protect: <A, E1 extends E, R>(self: Effect.Effect<A, E1, R>) => Effect.Effect<A, E1 | CircuitOpen, R>
  /**
   * Admits one call now, or fails `CircuitOpen`, as `protect` would; the
   * caller reports its outcome on the {@link Permit} (as resilience4j's
   * `tryAcquirePermission` / `onSuccess` / `onError` / `releasePermission`).
   * Run it where interruption cannot lose the permit (an `acquireRelease`
   * whose release is `permit.release`).
   */
  readonly tryAcquirePermission: Effect.Effect<Permit<E>, CircuitOpen>
  /** The current state (an elapsed open period reads as HalfOpen). */
  readonly state: Effect.Effect<State>
  /** Whether a call made now would be admitted, without taking a probe slot. */
  readonly isAvailable: Effect.Effect<boolean>
  /**
   * The same, read synchronously at `now` (epoch millis) without changing
   * anything: for routing decisions on the hot path, where a snapshot per
   * upstream per request would be waste. An elapsed open period counts as
   * half-open.
   */
  readonly unsafeIsAvailable: (now: number) => boolean
  /**
   * Whether an operator forced it open (`forceOpen`), read synchronously:
   * the router's panic threshold never routes to such a breaker.
   */
  readonly unsafeIsForcedOpen?: (() => boolean) | undefined
  /**
   * Admits one call now without an effect, when that holds nothing (Closed
   * or Disabled): returns a ticket for {@link unsafeRecord}. Undefined in
   * any other state, where admission may take a probe slot or refuse: use
   * `protect` or `tryAcquirePermission` then. For a hot path that runs no
   * effect per call; `protect` does the same in the Closed state.
   */
  readonly unsafeTryAdmit?: (() => number | undefined) | undefined
  /**
   * Records how a call admitted by {@link unsafeTryAdmit} ended (`exit`, at
   * `now`, started at `startedAt`, epoch millis), as `protect` would.
   * Returns the effect still to run (the transition's events and metrics)
   * when the outcome changed the state, else undefined.
   */
  readonly unsafeRecord?:
    | ((ticket: number, exit: Exit.Exit<unknown, unknown>, now: number, startedAt: number) => Effect.Effect<void> | undefined)
    | undefined
  readonly snapshot: Effect.Effect<Snapshot>
  /**
   * Subscribes to transitions, and returns them as a stream: every
   * transition after this effect returns is on the stream, however late the
   * stream is run (a `Stream` value would only subscribe when run, losing what
   * happens in between). The subscription lasts until the scope closes; the
   * stream ends when the breaker's own scope closes.
   */
  readonly changes: Effect.Effect<Stream.Stream<Transition>, never, Scope.Scope>
  /** Operator: close, forgetting failures and trips. Also leaves ForcedOpen and Disabled. */
  readonly reset: Effect.Effect<void>
  /** Operator: refuse every call until `reset`. */
  readonly forceOpen: Effect.Effect<void>
  /** Operator: admit every call and record nothing until `reset`. */
  readonly disable: Effect.Effect<void>
  /** An open breaker starts admitting probes now (e.g. after a health check passed). */
  readonly tryHalfOpen: Effect.Effect<void>
}

/**
 * The breaker of a single-dependency program; see {@link layer}. It judges
 * `unknown` errors; for a breaker with a typed `isFailure` in the context,
 * give it a tag of your own (`Context.Tag` over `CircuitBreaker<MyError>`).
 */
export const CircuitBreaker = Context.GenericTag<CircuitBreaker>("@breakwater/core/CircuitBreaker")

// ---------------------------------------------------------------------------
// internals

type Internal =
  | { readonly _tag: "Closed"; consecutive: number; readonly window: OutcomeWindow | undefined }
  | { readonly _tag: "Open"; readonly openUntil: number }
  | { readonly _tag: "HalfOpen"; inFlight: number; successes: number }
  | { readonly _tag: "ForcedOpen" }
  | { readonly _tag: "Disabled" }

interface Machine {
  state: Internal
  /** Bumped on every transition; a call's outcome only counts in the epoch it was admitted in. */
  epoch: number
  trips: number
  nextOpenMillis: number
  scheduleState: unknown
}

const enum Admission {
  Refused = 0,
  Closed = 1,
  Probe = 2,
  Unrecorded = 3
}

const stateCode: Record<State, number> = { Closed: 0, HalfOpen: 1, Open: 2, ForcedOpen: 3, Disabled: 4 }

const stateGauge = Metric.gauge("breakwater_breaker_state", {
  description: "Breaker state: 0 closed, 1 half-open, 2 open, 3 forced open, 4 disabled"
})
const transitionsCounter = Metric.counter("breakwater_breaker_transitions_total", {
  description: "Breaker state transitions",
  incremental: true
})
const rejectedCounter = Metric.counter("breakwater_breaker_rejected_total", {
  description: "Calls refused by an open breaker",
  incremental: true
})

const makeWindow = (rule: FailureRate | undefined): OutcomeWindow | undefined =>
  rule === undefined
    ? undefined
    : "calls" in rule.window
    ? new CountWindow(rule.window.calls)
    : new TimeWindow(Duration.toMillis(rule.window.duration))

/** The state a breaker starts in: Closed, or where `resumed` stopped. */
const initialState = (resumed: Snapshot | undefined, rule: FailureRate | undefined): Internal => {
  switch (resumed?.state) {
    case undefined:
    case "Closed":
      return { _tag: "Closed", consecutive: resumed?.consecutiveFailures ?? 0, window: makeWindow(rule) }
    case "Open":
      return resumed.openUntil === undefined
        ? { _tag: "HalfOpen", inFlight: 0, successes: 0 }
        : { _tag: "Open", openUntil: resumed.openUntil }
    case "HalfOpen":
      return { _tag: "HalfOpen", inFlight: 0, successes: 0 }
    case "ForcedOpen":
      return { _tag: "ForcedOpen" }
    case "Disabled":
      return { _tag: "Disabled" }
  }
}

/**
 * Builds a breaker. The scope owns the fiber that moves an open breaker to
 * half-open when its time is up.
 */
export const make = <E = unknown>(options: Options<E>): Effect.Effect<CircuitBreaker<E>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const name = options.name
    const failureThreshold = options.failureThreshold ?? 5
    const halfOpenMaxCalls = options.halfOpenMaxCalls ?? 3
    const successThreshold = options.successThreshold ?? 3
    // Only failures of the calls it protects reach it, and those are `E`s.
    const isFailure = (options.isFailure ?? (() => true)) as (error: unknown) => boolean
    const slowMillis = options.slowCallDuration === undefined
      ? undefined
      : Duration.toMillis(options.slowCallDuration)
    const rule = options.failureRate
    const schedule = options.openDurationSchedule
    const fixedOpenMillis = Duration.toMillis(options.openDuration ?? Duration.seconds(30))

    const gaugeFor = Metric.tagged(stateGauge, "breaker", name)
    const rejected = Metric.tagged(rejectedCounter, "breaker", name)
    const transitionsFor = Metric.tagged(transitionsCounter, "breaker", name)

    // The open-duration schedule is stepped ahead of time, so that a trip can
    // take its duration inside one synchronous update.
    const stepSchedule = (state: unknown) =>
      schedule === undefined
        ? Effect.succeed([undefined, fixedOpenMillis] as const)
        : Effect.flatMap(Clock.currentTimeMillis, (now) =>
          schedule.step(now, undefined, state).pipe(
            Effect.map(([next, out]) => [next, Duration.toMillis(out)] as const)
          ))
    const [firstScheduleState, firstOpenMillis] = yield* stepSchedule(schedule?.initial)

    // The state machine is one mutable cell changed only inside synchronous
    // steps, which Effect runs one at a time: each step is as atomic as a
    // `Ref.modify`, without its allocations on the hot path.
    const resumed = options.resumeFrom
    const m: Machine = {
      state: initialState(resumed, rule),
      epoch: 0,
      trips: resumed?.trips ?? 0,
      nextOpenMillis: firstOpenMillis,
      scheduleState: firstScheduleState
    }
    const pubsub = yield* PubSub.sliding<Transition>(1024)
    yield* Effect.addFinalizer(() => PubSub.shutdown(pubsub))
    const scope = yield* Effect.scope
    yield* Metric.set(gaugeFor, stateCode[m.state._tag])

    const closed = (): Internal => ({ _tag: "Closed", consecutive: 0, window: makeWindow(rule) })

    /** Applies a transition in place; returns the event to publish. */
    const transition = (m: Machine, to: Internal, now: number, reason: string): Transition => {
      const from = m.state._tag
      m.state = to
      m.epoch++
      return { breaker: name, from, to: to._tag, at: now, reason }
    }

    const trip = (m: Machine, now: number, reason: string): Transition => {
      m.trips++
      const openUntil = now + m.nextOpenMillis
      return transition(m, { _tag: "Open", openUntil }, now, reason)
    }

    const recover = (m: Machine, now: number): Transition => {
      m.trips = 0
      m.nextOpenMillis = firstOpenMillis
      m.scheduleState = firstScheduleState
      return transition(m, closed(), now, `${successThreshold} probe successes`)
    }

    /** Open -> HalfOpen when its time is up; evaluated lazily on every read. */
    const refresh = (m: Machine, now: number): Transition | undefined =>
      m.state._tag === "Open" && now >= m.state.openUntil
        ? transition(m, { _tag: "HalfOpen", inFlight: 0, successes: 0 }, now, "open duration elapsed")
        : undefined

    // Side effects of transitions: events, metrics, the wake-up timer of a
    // new open period, and stepping the open-duration schedule.
    const announce = (events: ReadonlyArray<Transition>): Effect.Effect<void> => {
      if (events.length === 0) return Effect.void
      const last = events[events.length - 1]!
      const effects: Array<Effect.Effect<unknown>> = [
        PubSub.publishAll(pubsub, events),
        Metric.set(gaugeFor, stateCode[last.to])
      ]
      for (const e of events) {
        effects.push(Metric.increment(Metric.tagged(Metric.tagged(transitionsFor, "from", e.from), "to", e.to)))
        if (e.to === "Open") effects.push(afterTrip)
      }
      return Effect.asVoid(Effect.all(effects, { discard: true }))
    }

    const afterTrip: Effect.Effect<void> = Effect.gen(function*() {
      if (m.state._tag !== "Open") return
      const epoch = m.epoch
      const openUntil = m.state.openUntil
      if (schedule !== undefined) {
        const [next, millis] = yield* stepSchedule(m.scheduleState)
        m.scheduleState = next ?? m.scheduleState
        m.nextOpenMillis = millis
      }
      // Wake up when the open period ends, so that watchers see HalfOpen
      // even if no call arrives. A trip is recorded in the finalizer of an
      // uninterruptible region, and a forked fiber inherits that: the wait
      // must be made interruptible, or closing the scope would block until
      // the open period ends.
      yield* Effect.forkIn(
        Effect.interruptible(
          Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sleep(Duration.millis(Math.max(0, openUntil - now))))
        ).pipe(
          Effect.zipRight(Clock.currentTimeMillis),
          Effect.map((now) => m.epoch === epoch ? refresh(m, now) : undefined),
          Effect.flatMap((event) => event === undefined ? Effect.void : announce([event]))
        ),
        scope
      )
    }).pipe(Effect.catchAllCause(() => Effect.void))

    // A resumed open period wakes up as a tripped one does.
    if (m.state._tag === "Open") yield* afterTrip

    const publicState = (s: Internal): State => s._tag

    type Permit = readonly [admission: Admission, epoch: number, retryAfter: number, state: State]

    const admit: Effect.Effect<readonly [Permit, Transition | undefined]> = Effect.clockWith((clock) =>
      Effect.sync((): readonly [Permit, Transition | undefined] => {
        const now = clock.unsafeCurrentTimeMillis()
        const event = refresh(m, now)
        const s = m.state
        switch (s._tag) {
          case "Closed":
            return [[Admission.Closed, m.epoch, 0, "Closed"], event]
          case "Disabled":
            return [[Admission.Unrecorded, m.epoch, 0, "Disabled"], event]
          case "HalfOpen":
            if (s.inFlight < halfOpenMaxCalls) {
              s.inFlight++
              return [[Admission.Probe, m.epoch, 0, "HalfOpen"], event]
            }
            return [[Admission.Refused, m.epoch, 0, "HalfOpen"], event]
          case "Open":
            return [[Admission.Refused, m.epoch, s.openUntil - now, "Open"], event]
          case "ForcedOpen":
            return [[Admission.Refused, m.epoch, 0, "ForcedOpen"], event]
        }
      })
    )

    /** Counts one call's outcome in the epoch it was admitted in; returns a transition, if any. */
    const recordSync = (
      admission: Admission,
      epoch: number,
      exit: Exit.Exit<unknown, unknown>,
      now: number,
      startedAt: number
    ): Transition | undefined => {
      if (m.epoch !== epoch) return undefined
      let outcome: "success" | "failure" | "neutral"
      if (Exit.isSuccess(exit)) {
        outcome = slowMillis !== undefined && now - startedAt >= slowMillis ? "failure" : "success"
      } else {
        // Interruption says nothing about the dependency; a defect does.
        const failure = Cause.failureOption(exit.cause)
        if (failure._tag === "Some") outcome = isFailure(failure.value) ? "failure" : "neutral"
        else if (Cause.isInterruptedOnly(exit.cause)) outcome = "neutral"
        else outcome = "failure"
      }
      const s = m.state
      if (s._tag === "Closed" && admission === Admission.Closed) {
        if (outcome === "neutral") return undefined
        const failed = outcome === "failure"
        s.consecutive = failed ? s.consecutive + 1 : 0
        s.window?.record(now, failed)
        if (!failed) return undefined
        if (s.consecutive >= failureThreshold) return trip(m, now, `${s.consecutive} consecutive failures`)
        if (rule !== undefined && s.window !== undefined) {
          const { calls, failures } = s.window.totals(now)
          if (calls >= rule.minimumCalls && failures / calls >= rule.threshold) {
            return trip(m, now, `failure rate ${Math.round((failures / calls) * 100)}% over ${calls} calls`)
          }
        }
        return undefined
      }
      if (s._tag === "HalfOpen" && admission === Admission.Probe) {
        s.inFlight--
        if (outcome === "failure") return trip(m, now, "probe failed")
        if (outcome === "success") {
          s.successes++
          if (s.successes >= successThreshold) return recover(m, now)
        }
      }
      return undefined
    }

    const record = (permit: Permit, exit: Exit.Exit<unknown, unknown>, startedAt: number) =>
      Effect.clockWith((clock) => {
        const event = recordSync(permit[0], permit[1], exit, clock.unsafeCurrentTimeMillis(), startedAt)
        return event === undefined ? Effect.void : announce([event])
      })

    const refuse = (permit: Permit) =>
      Effect.zipRight(
        Metric.increment(rejected),
        Effect.fail(new CircuitOpen({ breaker: name, state: permit[3], retryAfter: Duration.millis(Math.max(0, permit[2])) }))
      )

    // Any state but Closed: admission may take a probe slot, so it runs
    // uninterruptibly up to the point where the outcome is sure to be recorded.
    const guarded = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E | CircuitOpen, R> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(admit, ([permit, event]) => {
          const go = (): Effect.Effect<A, E | CircuitOpen, R> => {
            switch (permit[0]) {
              case Admission.Refused:
                return refuse(permit)
              case Admission.Unrecorded:
                return restore(self)
              default: {
                if (slowMillis === undefined) {
                  return Effect.onExit(restore(self), (exit) => record(permit, exit, 0))
                }
                return Effect.flatMap(Clock.currentTimeMillis, (start) =>
                  Effect.onExit(restore(self), (exit) => record(permit, exit, start)))
              }
            }
          }
          return event === undefined ? go() : Effect.zipRight(announce([event]), Effect.suspend(go))
        })
      )

    // Closed, the hot path: nothing is held, so nothing needs releasing if the
    // call is interrupted (an interruption is neutral anyway); the outcome is
    // read from the call's Exit and counted in one synchronous step.
    const protect = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E | CircuitOpen, R> =>
      Effect.clockWith((clock) => {
        if (m.state._tag !== "Closed") return guarded(self)
        const epoch = m.epoch
        const startedAt = clock.unsafeCurrentTimeMillis()
        return Effect.flatMap(Effect.exit(self), (exit) => {
          const event = recordSync(Admission.Closed, epoch, exit, clock.unsafeCurrentTimeMillis(), startedAt)
          return event === undefined ? exit : Effect.zipRight(announce([event]), exit)
        })
      })

    const settled: OutcomePermit<E> = { onSuccess: () => Effect.void, onError: () => Effect.void, release: Effect.void }

    const tryAcquirePermission: Effect.Effect<OutcomePermit<E>, CircuitOpen> = Effect.clockWith((clock) =>
      Effect.flatMap(admit, ([permit, event]): Effect.Effect<OutcomePermit<E>, CircuitOpen> => {
        let result: Effect.Effect<OutcomePermit<E>, CircuitOpen>
        if (permit[0] === Admission.Refused) result = refuse(permit)
        else if (permit[0] === Admission.Unrecorded) result = Effect.succeed(settled)
        else {
          const startedAt = clock.unsafeCurrentTimeMillis()
          let done = false
          const report = (exit: Exit.Exit<unknown, unknown>, from: number) =>
            Effect.suspend(() => {
              if (done) return Effect.void
              done = true
              return record(permit, exit, from)
            })
          result = Effect.succeed<OutcomePermit<E>>({
            onSuccess: (durationMs?: number) =>
              Effect.suspend(() =>
                report(Exit.void, durationMs === undefined ? startedAt : clock.unsafeCurrentTimeMillis() - durationMs)
              ),
            onError: (error: E) => report(Exit.fail(error), startedAt),
            release: report(Exit.interrupt(FiberId.none), startedAt)
          })
        }
        return event === undefined ? result : Effect.zipRight(announce([event]), result)
      })
    )

    const withNow = <A>(f: (m: Machine, now: number) => [A, Transition | undefined]) =>
      Effect.clockWith((clock) => {
        const [a, event] = f(m, clock.unsafeCurrentTimeMillis())
        return event === undefined ? Effect.succeed(a) : Effect.as(announce([event]), a)
      })

    const snapshot = withNow((m, now): [Snapshot, Transition | undefined] => {
      const event = refresh(m, now)
      const s = m.state
      const totals = s._tag === "Closed" && s.window !== undefined ? s.window.totals(now) : { calls: 0, failures: 0 }
      return [{
        name,
        state: publicState(s),
        consecutiveFailures: s._tag === "Closed" ? s.consecutive : 0,
        windowCalls: totals.calls,
        windowFailures: totals.failures,
        openUntil: s._tag === "Open" ? s.openUntil : undefined,
        trips: m.trips,
        halfOpenInFlight: s._tag === "HalfOpen" ? s.inFlight : 0
      }, event]
    })

    const operator = (to: (m: Machine) => Internal | undefined, reason: string) =>
      withNow((m, now): [void, Transition | undefined] => {
        const target = to(m)
        if (target === undefined) return [undefined, undefined]
        if (target._tag === "Closed") {
          m.trips = 0
          m.nextOpenMillis = firstOpenMillis
          m.scheduleState = firstScheduleState
        }
        return [undefined, transition(m, target, now, reason)]
      })

    const unsafeIsAvailable = (now: number): boolean => {
      const s = m.state
      switch (s._tag) {
        case "Closed":
        case "Disabled":
          return true
        case "HalfOpen":
          return s.inFlight < halfOpenMaxCalls
        case "Open":
          return now >= s.openUntil
        case "ForcedOpen":
          return false
      }
    }

    const unsafeTryAdmit = (): number | undefined =>
      m.state._tag === "Closed" ? m.epoch : m.state._tag === "Disabled" ? -1 : undefined

    const unsafeRecord = (
      ticket: number,
      exit: Exit.Exit<unknown, unknown>,
      now: number,
      startedAt: number
    ): Effect.Effect<void> | undefined => {
      if (ticket < 0) return undefined
      const event = recordSync(Admission.Closed, ticket, exit, now, startedAt)
      return event === undefined ? undefined : announce([event])
    }

    const breaker: CircuitBreaker<E> = {
      name,
      protect,
      tryAcquirePermission,
      state: Effect.map(snapshot, (s) => s.state),
      isAvailable: Effect.clockWith((clock) => Effect.succeed(unsafeIsAvailable(clock.unsafeCurrentTimeMillis()))),
      unsafeIsAvailable,
      unsafeIsForcedOpen: () => m.state._tag === "ForcedOpen",
      unsafeTryAdmit,
      unsafeRecord,
      snapshot,
      changes: Effect.map(PubSub.subscribe(pubsub), (queue) => Stream.fromQueue(queue)),
      reset: operator(() => closed(), "reset by operator"),
      forceOpen: operator(() => ({ _tag: "ForcedOpen" }), "forced open by operator"),
      disable: operator(() => ({ _tag: "Disabled" }), "disabled by operator"),
      tryHalfOpen: operator(
        (m) => m.state._tag === "Open" ? { _tag: "HalfOpen", inFlight: 0, successes: 0 } : undefined,
        "recovery signalled"
      )
    }
    return breaker
  })

/** A breaker in the context, from options given as a value. */
export const layer = (options: Options): Layer.Layer<CircuitBreaker> => Layer.scoped(CircuitBreaker, make(options))

/**
 * Breaker options read from `effect/Config` under `breaker.<name>`, so that
 * two breakers never share a key: `failureThreshold`, `successThreshold`,
 * `halfOpenMaxCalls`, `openDuration`. From the environment through
 * `ConfigProvider.constantCase`: `BREAKER_PRIMARY_FAILURE_THRESHOLD`.
 */
export const config = (name: string): Config.Config<Options> =>
  Config.all({
    failureThreshold: Config.integer("failureThreshold").pipe(Config.withDefault(5)),
    successThreshold: Config.integer("successThreshold").pipe(Config.withDefault(3)),
    halfOpenMaxCalls: Config.integer("halfOpenMaxCalls").pipe(Config.withDefault(3)),
    openDuration: Config.duration("openDuration").pipe(Config.withDefault(Duration.seconds(30)))
  }).pipe(
    Config.nested(name),
    Config.nested("breaker"),
    Config.map((o): Options => ({ name, ...o }))
  )

/** A breaker in the context, its options read from `effect/Config`. */
export const layerConfig = (config: Config.Config<Options>): Layer.Layer<CircuitBreaker, ConfigError.ConfigError> =>
  Layer.scoped(CircuitBreaker, Effect.flatMap(config, make))
