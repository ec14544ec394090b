import { assert, describe, expect, it } from "@effect/vitest"
import { FastCheck } from "effect"
import * as Chunk from "effect/Chunk"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as CircuitBreaker from "../src/CircuitBreaker.js"

// ---------------------------------------------------------------------------
// helpers

class Boom {
  readonly _tag = "Boom"
}

/** A caller's own mistake: says nothing about the dependency. */
class BadRequest {
  readonly _tag = "BadRequest"
}

type Breaker = CircuitBreaker.CircuitBreaker

/** One call that fails with a typed error; returns its exit. */
const failOnce = (cb: Breaker) => Effect.exit(cb.protect(Effect.fail(new Boom())))

/** `n` failing calls in sequence. */
const failTimes = (cb: Breaker, n: number) => Effect.forEach(Array.from({ length: n }), () => failOnce(cb))

/** One successful call; returns its exit. */
const succeedOnce = (cb: Breaker) => Effect.exit(cb.protect(Effect.succeed("ok")))

const succeedTimes = (cb: Breaker, n: number) => Effect.forEach(Array.from({ length: n }), () => succeedOnce(cb))

/**
 * Lets every other fiber run until it suspends: TestClock.adjust first waits
 * for the test's fibers to suspend (with a macrotask yield) before advancing.
 * Advancing by zero moves no time.
 */
const settle = TestClock.adjust(0)

/** Collects the next `n` transitions; subscribed before returning. */
const collectChanges = (cb: Breaker, n: number) =>
  Effect.gen(function*() {
    const changes = yield* cb.changes
    const fiber = yield* changes.pipe(
      Stream.take(n),
      Stream.runCollect,
      Effect.map(Chunk.toReadonlyArray),
      Effect.fork
    )
    return fiber
  })

/** A probe held in flight until `release` is completed. */
const heldCall = <E>(cb: Breaker, release: Deferred.Deferred<string, E>) =>
  Effect.gen(function*() {
    const started = yield* Deferred.make<void>()
    const fiber = yield* cb.protect(
      Deferred.succeed(started, undefined).pipe(Effect.zipRight(Deferred.await(release)))
    ).pipe(Effect.exit, Effect.fork)
    yield* Deferred.await(started)
    return fiber
  })

/** Repeats `cond` (yielding in between) until it holds; dies after many tries. */
const awaitCondition = (cond: Effect.Effect<boolean>, tries = 10_000): Effect.Effect<void> =>
  Effect.flatMap(cond, (ok) =>
    ok
      ? Effect.void
      : tries <= 0
      ? Effect.dieMessage("condition never held")
      : Effect.zipRight(Effect.yieldNow(), Effect.suspend(() => awaitCondition(cond, tries - 1))))

/** Counts how many times the protected effect actually ran. */
const makeCounter = Effect.map(Ref.make(0), (ref) => ({
  count: Ref.get(ref),
  counted: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.zipRight(Ref.update(ref, (n) => n + 1), self)
}))

// ---------------------------------------------------------------------------

describe("CircuitBreaker", () => {
  describe("Closed", () => {
    it.scoped("opens after the default 5 consecutive failures", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "default-threshold" })
        yield* failTimes(cb, 4)
        expect(yield* cb.state).toBe("Closed")
        expect((yield* cb.snapshot).consecutiveFailures).toBe(4)
        const fifth = yield* failOnce(cb)
        // The fifth call was made (it failed with its own error) and tripped the breaker.
        expect(fifth).toStrictEqual(Exit.fail(new Boom()))
        expect(yield* cb.state).toBe("Open")
        const snap = yield* cb.snapshot
        expect(snap.trips).toBe(1)
        expect(snap.openUntil).toBe(30_000) // default openDuration, TestClock at 0
      }))

    it.scoped("honours a custom failureThreshold", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "custom-threshold", failureThreshold: 2 })
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Closed")
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Open")
      }))

    it.scoped("a success resets the consecutive-failure count", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "reset-on-success" })
        yield* failTimes(cb, 4)
        yield* succeedOnce(cb)
        expect((yield* cb.snapshot).consecutiveFailures).toBe(0)
        yield* failTimes(cb, 4)
        expect(yield* cb.state).toBe("Closed")
        expect((yield* cb.snapshot).consecutiveFailures).toBe(4)
        // ...and the fifth consecutive one does trip.
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Open")
      }))

    it.scoped("a call admitted before a reset does not count after it", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "stale-closed", failureThreshold: 1 })
        const release = yield* Deferred.make<string, Boom>()
        const call = yield* heldCall(cb, release)
        yield* cb.reset
        yield* Deferred.fail(release, new Boom())
        expect(yield* Fiber.join(call)).toStrictEqual(Exit.fail(new Boom()))
        expect(yield* cb.state).toBe("Closed")
        expect((yield* cb.snapshot).consecutiveFailures).toBe(0)
      }))

    it.scoped("passes through the value and the error of admitted calls", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "passthrough" })
        expect(yield* cb.protect(Effect.succeed(42))).toBe(42)
        const err = yield* Effect.flip(cb.protect(Effect.fail(new Boom())))
        expect(err).toBeInstanceOf(Boom)
        expect(yield* cb.isAvailable).toBe(true)
      }))

    it.scoped("publishes the Closed -> Open transition with its reason and time", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "events", failureThreshold: 3 })
        const events = yield* collectChanges(cb, 1)
        yield* TestClock.adjust("7 seconds")
        yield* failTimes(cb, 3)
        const [trip] = yield* Fiber.join(events)
        expect(trip).toStrictEqual({
          breaker: "events",
          from: "Closed",
          to: "Open",
          at: 7_000,
          reason: "3 consecutive failures"
        })
      }))
  })

  describe("Open", () => {
    it.scoped("refuses calls with CircuitOpen without running them", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "refuse", openDuration: "30 seconds" })
        const { count, counted } = yield* makeCounter
        yield* Effect.forEach(Array.from({ length: 5 }), () => Effect.exit(cb.protect(counted(Effect.fail(new Boom())))))
        expect(yield* count).toBe(5)
        expect(yield* cb.state).toBe("Open")

        yield* TestClock.adjust("12 seconds")
        const err = yield* Effect.flip(cb.protect(counted(Effect.succeed("never"))))
        expect(err).toBeInstanceOf(CircuitBreaker.CircuitOpen)
        assert(err instanceof CircuitBreaker.CircuitOpen)
        expect(err._tag).toBe("CircuitOpen")
        expect(err.state).toBe("Open")
        expect(err.breaker).toBe("refuse")
        expect(Duration.toMillis(err.retryAfter)).toBe(18_000)
        expect(err.message).toBe(`circuit breaker "refuse" is Open`)
        // The protected effect was not run.
        expect(yield* count).toBe(5)
        expect(yield* cb.isAvailable).toBe(false)

        yield* TestClock.adjust("17 seconds")
        const later = yield* Effect.flip(cb.protect(counted(Effect.succeed("never"))))
        assert(later instanceof CircuitBreaker.CircuitOpen)
        expect(Duration.toMillis(later.retryAfter)).toBe(1_000)
        expect(yield* count).toBe(5)
      }))

    it.scoped("becomes HalfOpen after openDuration even when no call arrives", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "wakeup", failureThreshold: 1, openDuration: "10 seconds" })
        const events = yield* collectChanges(cb, 2)
        yield* failOnce(cb)
        yield* TestClock.adjust("10 seconds")
        // No call, no read of `state`: the breaker's own timer must publish this.
        const collected = yield* Fiber.join(events)
        expect(collected.map((e) => [e.from, e.to])).toStrictEqual([["Closed", "Open"], ["Open", "HalfOpen"]])
        expect(collected[1]!.at).toBe(10_000)
        expect(collected[1]!.reason).toBe("open duration elapsed")
        expect(yield* cb.state).toBe("HalfOpen")
        expect(yield* cb.isAvailable).toBe(true)
      }))

    it.scoped("is still Open one millisecond before openDuration ends", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "not-yet", failureThreshold: 1, openDuration: "10 seconds" })
        const events = yield* collectChanges(cb, 2)
        yield* failOnce(cb)
        yield* TestClock.adjust(Duration.millis(9_999))
        expect(Option.isNone(yield* Fiber.poll(events))).toBe(true)
        expect(yield* cb.state).toBe("Open")
        yield* TestClock.adjust(Duration.millis(1))
        expect(yield* cb.state).toBe("HalfOpen")
        // Exactly one Open -> HalfOpen event, whether from the timer or the read.
        const collected = yield* Fiber.join(events)
        expect(collected.map((e) => e.to)).toStrictEqual(["Open", "HalfOpen"])
      }))

    it.scoped("the first call after openDuration is admitted as a probe", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "lazy",
          failureThreshold: 1,
          openDuration: "5 seconds",
          successThreshold: 1
        })
        yield* failOnce(cb)
        yield* TestClock.adjust("5 seconds")
        expect(yield* cb.protect(Effect.succeed("probe"))).toBe("probe")
        expect(yield* cb.state).toBe("Closed")
      }))
  })

  describe("HalfOpen", () => {
    const toHalfOpen = (options: Partial<CircuitBreaker.Options> & { name: string }) =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ failureThreshold: 1, openDuration: "10 seconds", ...options })
        yield* failOnce(cb)
        yield* TestClock.adjust("10 seconds")
        expect(yield* cb.state).toBe("HalfOpen")
        return cb
      })

    it.scoped("admits at most halfOpenMaxCalls concurrent probes", () =>
      Effect.gen(function*() {
        const cb = yield* toHalfOpen({ name: "max-probes", halfOpenMaxCalls: 2, successThreshold: 2 })
        const { count, counted } = yield* makeCounter
        const r1 = yield* Deferred.make<string>()
        const r2 = yield* Deferred.make<string>()
        const p1 = yield* heldCall(cb, r1)
        const p2 = yield* heldCall(cb, r2)
        expect((yield* cb.snapshot).halfOpenInFlight).toBe(2)
        expect(yield* cb.isAvailable).toBe(false)

        const extra = yield* Effect.flip(cb.protect(counted(Effect.succeed("extra"))))
        assert(extra instanceof CircuitBreaker.CircuitOpen)
        expect(extra.state).toBe("HalfOpen")
        expect(Duration.toMillis(extra.retryAfter)).toBe(0)
        expect(yield* count).toBe(0)

        // One probe succeeds: slot released, not yet closed.
        yield* Deferred.succeed(r1, "a")
        expect(yield* Fiber.join(p1)).toStrictEqual(Exit.succeed("a"))
        expect(yield* cb.state).toBe("HalfOpen")
        expect((yield* cb.snapshot).halfOpenInFlight).toBe(1)
        expect(yield* cb.isAvailable).toBe(true)

        // Second success reaches successThreshold: closed.
        yield* Deferred.succeed(r2, "b")
        expect(yield* Fiber.join(p2)).toStrictEqual(Exit.succeed("b"))
        expect(yield* cb.state).toBe("Closed")
        expect((yield* cb.snapshot).trips).toBe(0)
      }))

    it.scoped("closes after successThreshold sequential probe successes", () =>
      Effect.gen(function*() {
        const cb = yield* toHalfOpen({ name: "close-after", successThreshold: 3 })
        const events = yield* collectChanges(cb, 1)
        yield* succeedTimes(cb, 2)
        expect(yield* cb.state).toBe("HalfOpen")
        yield* succeedOnce(cb)
        expect(yield* cb.state).toBe("Closed")
        const [closed] = yield* Fiber.join(events)
        expect(closed).toMatchObject({ from: "HalfOpen", to: "Closed", reason: "3 probe successes" })
        // Freshly closed: it takes failureThreshold (1 here) failures again.
        expect((yield* cb.snapshot).consecutiveFailures).toBe(0)
      }))

    it.scoped("reopens on any probe failure, and ignores late probes of the old half-open period", () =>
      Effect.gen(function*() {
        const cb = yield* toHalfOpen({ name: "reopen", halfOpenMaxCalls: 3, successThreshold: 3 })
        const late = yield* Deferred.make<string>()
        const lateProbe = yield* heldCall(cb, late)
        yield* succeedOnce(cb)
        expect(yield* cb.state).toBe("HalfOpen")
        const failed = yield* failOnce(cb)
        expect(failed).toStrictEqual(Exit.fail(new Boom()))
        expect(yield* cb.state).toBe("Open")
        const snap = yield* cb.snapshot
        expect(snap.openUntil).toBe(20_000) // now (10 s) + openDuration
        expect(snap.trips).toBe(2)
        // The probe admitted before the reopen finishes well: it must not count.
        yield* Deferred.succeed(late, "late")
        expect(yield* Fiber.join(lateProbe)).toStrictEqual(Exit.succeed("late"))
        expect(yield* cb.state).toBe("Open")
        expect(Exit.isFailure(yield* succeedOnce(cb))).toBe(true)
      }))

    it.scoped("a probe from an earlier half-open period does not count in the next one", () =>
      Effect.gen(function*() {
        const cb = yield* toHalfOpen({ name: "stale-probe", halfOpenMaxCalls: 2, successThreshold: 1 })
        const release = yield* Deferred.make<string>()
        const stale = yield* heldCall(cb, release)
        yield* failOnce(cb) // the other probe fails: Open again
        yield* cb.tryHalfOpen // a new half-open period
        expect((yield* cb.snapshot).halfOpenInFlight).toBe(0)
        yield* Deferred.succeed(release, "stale")
        expect(yield* Fiber.join(stale)).toStrictEqual(Exit.succeed("stale"))
        // Neither a success of this period (which would close it) nor a slot to give back.
        const snap = yield* cb.snapshot
        expect([snap.state, snap.halfOpenInFlight]).toStrictEqual(["HalfOpen", 0])
      }))

    it.scoped("an interrupted probe releases its slot and does not reopen", () =>
      Effect.gen(function*() {
        const cb = yield* toHalfOpen({ name: "interrupt-probe", halfOpenMaxCalls: 1, successThreshold: 1 })
        const never = yield* Deferred.make<string>()
        const probe = yield* heldCall(cb, never)
        const refused = yield* Effect.flip(cb.protect(Effect.succeed("x")))
        assert(refused instanceof CircuitBreaker.CircuitOpen)
        expect(refused.state).toBe("HalfOpen")

        const exit = yield* Fiber.interrupt(probe)
        expect(Exit.isInterrupted(exit)).toBe(true)
        expect(yield* cb.state).toBe("HalfOpen")
        expect((yield* cb.snapshot).halfOpenInFlight).toBe(0)
        // A new probe is admitted and closes the breaker.
        expect(yield* cb.protect(Effect.succeed("next"))).toBe("next")
        expect(yield* cb.state).toBe("Closed")
      }))

    it.scoped("a defect in a probe reopens the breaker", () =>
      Effect.gen(function*() {
        const cb = yield* toHalfOpen({ name: "probe-defect" })
        yield* Effect.exit(cb.protect(Effect.dieMessage("kaput")))
        expect(yield* cb.state).toBe("Open")
      }))

    it.scoped("a slow probe reopens the breaker", () =>
      Effect.gen(function*() {
        const cb = yield* toHalfOpen({ name: "probe-slow", slowCallDuration: "1 second" })
        const fiber = yield* Effect.fork(cb.protect(Effect.as(Effect.sleep("2 seconds"), "slow")))
        yield* TestClock.adjust("2 seconds")
        expect(yield* Fiber.join(fiber)).toBe("slow")
        expect(yield* cb.state).toBe("Open")
      }))
  })

  describe("failure-rate rule", () => {
    it.scoped("count window: trips at the rate threshold once minimumCalls are in the window", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "rate-count",
          failureThreshold: 100,
          failureRate: { threshold: 0.5, minimumCalls: 10, window: { calls: 10 } }
        })
        // F S F S F S F S F : 9 calls, 5 failures (56%) but under minimumCalls.
        for (let i = 0; i < 9; i++) yield* (i % 2 === 0 ? failOnce(cb) : succeedOnce(cb))
        expect(yield* cb.state).toBe("Closed")
        let snap = yield* cb.snapshot
        expect([snap.windowCalls, snap.windowFailures]).toStrictEqual([9, 5])
        expect(snap.consecutiveFailures).toBe(1)
        // S: 10 calls, 5 failures; a success never trips.
        yield* succeedOnce(cb)
        expect(yield* cb.state).toBe("Closed")
        // F: last 10 are S F S F S F S F S F -> 50%: trips.
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Open")
        snap = yield* cb.snapshot
        expect(snap.trips).toBe(1)
      }))

    it.scoped("count window: old calls slide out of the window", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "rate-count-slide",
          failureThreshold: 100,
          failureRate: { threshold: 0.5, minimumCalls: 10, window: { calls: 10 } }
        })
        // 4 failures, then 6 successes: 40%.
        yield* failTimes(cb, 4)
        yield* succeedTimes(cb, 6)
        // 4 more failures: the first 4 failures slid out; window = 6 S + 4 F = 40%.
        yield* failTimes(cb, 4)
        expect(yield* cb.state).toBe("Closed")
        const snap = yield* cb.snapshot
        expect([snap.windowCalls, snap.windowFailures]).toStrictEqual([10, 4])
        // The fifth: window = 5 S + 5 F = 50%.
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Open")
      }))

    it.scoped("time window: trips within the window, and old failures slide out with time", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "rate-time",
          failureThreshold: 100,
          failureRate: { threshold: 0.5, minimumCalls: 10, window: { duration: "10 seconds" } }
        })
        // t = 0: 6 failures (under minimumCalls).
        yield* failTimes(cb, 6)
        let snap = yield* cb.snapshot
        expect([snap.windowCalls, snap.windowFailures]).toStrictEqual([6, 6])

        // 11 s later they are out of the window.
        yield* TestClock.adjust("11 seconds")
        snap = yield* cb.snapshot
        expect([snap.windowCalls, snap.windowFailures]).toStrictEqual([0, 0])
        // 6 successes + 4 failures: 40% (it would be 10/16 = 62% had the old failures stayed).
        yield* succeedTimes(cb, 6)
        yield* failTimes(cb, 4)
        expect(yield* cb.state).toBe("Closed")
        snap = yield* cb.snapshot
        expect([snap.windowCalls, snap.windowFailures]).toStrictEqual([10, 4])

        // 5 s later, still inside the window: one more failure makes 5/11 = 45%, a second 6/12 = 50%.
        yield* TestClock.adjust("5 seconds")
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Closed")
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Open")
      }))

    it.scoped("time window: calls spread over the window all count", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "rate-time-spread",
          failureThreshold: 100,
          failureRate: { threshold: 0.5, minimumCalls: 10, window: { duration: "10 seconds" } }
        })
        // One failure and one success per second, for 5 seconds: F S F S ... 10 calls.
        for (let i = 0; i < 5; i++) {
          yield* succeedOnce(cb)
          expect(yield* cb.state).toBe("Closed")
          yield* failOnce(cb)
          if (i < 4) expect(yield* cb.state).toBe("Closed")
          yield* TestClock.adjust("1 second")
        }
        expect(yield* cb.state).toBe("Open")
      }))
  })

  describe("slow calls", () => {
    it.scoped("a success slower than slowCallDuration counts as a failure", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "slow", failureThreshold: 2, slowCallDuration: "1 second" })
        const slow = (ms: number) =>
          Effect.gen(function*() {
            const fiber = yield* Effect.fork(cb.protect(Effect.as(Effect.sleep(Duration.millis(ms)), "done")))
            yield* TestClock.adjust(Duration.millis(ms))
            return yield* Fiber.join(fiber)
          })
        // The caller still gets the value.
        expect(yield* slow(2_000)).toBe("done")
        expect((yield* cb.snapshot).consecutiveFailures).toBe(1)
        expect(yield* cb.state).toBe("Closed")
        // A fast one is a success and resets the count.
        expect(yield* slow(500)).toBe("done")
        expect((yield* cb.snapshot).consecutiveFailures).toBe(0)
        // Two slow ones in a row trip it.
        yield* slow(1_500)
        yield* slow(3_000)
        expect(yield* cb.state).toBe("Open")
      }))

    it.scoped("without slowCallDuration, slow successes are successes", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "not-slow", failureThreshold: 1 })
        const fiber = yield* Effect.fork(cb.protect(Effect.as(Effect.sleep("1 hour"), "done")))
        yield* TestClock.adjust("1 hour")
        expect(yield* Fiber.join(fiber)).toBe("done")
        expect(yield* cb.state).toBe("Closed")
      }))
  })

  describe("what counts as a failure", () => {
    it.scoped("errors for which isFailure is false never trip the breaker and are neutral", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "is-failure",
          isFailure: (e) => !(e instanceof BadRequest)
        })
        const bad = yield* Effect.forEach(
          Array.from({ length: 20 }),
          () => Effect.flip(cb.protect(Effect.fail(new BadRequest())))
        )
        // The caller sees its own error every time, never CircuitOpen.
        expect(bad.every((e) => e instanceof BadRequest)).toBe(true)
        expect(yield* cb.state).toBe("Closed")
        expect((yield* cb.snapshot).consecutiveFailures).toBe(0)

        // Neutral: it neither counts nor resets a run of real failures.
        yield* failTimes(cb, 4)
        yield* Effect.exit(cb.protect(Effect.fail(new BadRequest())))
        expect((yield* cb.snapshot).consecutiveFailures).toBe(4)
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Open")
      }))

    it.scoped("isFailure=false errors do not close or reopen a half-open breaker", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "is-failure-half-open",
          failureThreshold: 1,
          openDuration: "1 second",
          halfOpenMaxCalls: 1,
          successThreshold: 1,
          isFailure: (e) => !(e instanceof BadRequest)
        })
        yield* failOnce(cb)
        yield* TestClock.adjust("1 second")
        yield* Effect.exit(cb.protect(Effect.fail(new BadRequest())))
        expect(yield* cb.state).toBe("HalfOpen")
        // ...and the slot was released.
        expect((yield* cb.snapshot).halfOpenInFlight).toBe(0)
        yield* succeedOnce(cb)
        expect(yield* cb.state).toBe("Closed")
      }))

    it.scoped("defects count as failures", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "defects", failureThreshold: 3 })
        for (let i = 0; i < 3; i++) {
          const exit = yield* Effect.exit(cb.protect(Effect.dieMessage("kaput")))
          expect(Exit.isFailure(exit) && !Exit.isInterrupted(exit)).toBe(true)
        }
        expect(yield* cb.state).toBe("Open")
      }))

    it.scoped("interruptions do not count (self-interruption and interruption from outside)", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "interrupts", failureThreshold: 2 })
        yield* failOnce(cb)
        for (let i = 0; i < 5; i++) {
          const exit = yield* Effect.exit(cb.protect(Effect.interrupt))
          expect(Exit.isInterrupted(exit)).toBe(true)
        }
        for (let i = 0; i < 5; i++) {
          const fiber = yield* Effect.fork(cb.protect(Effect.never))
          yield* settle
          yield* Fiber.interrupt(fiber)
        }
        expect(yield* cb.state).toBe("Closed")
        // Neutral, not a success either: the earlier failure is still counted.
        expect((yield* cb.snapshot).consecutiveFailures).toBe(1)
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Open")
      }))
  })

  describe("openDurationSchedule", () => {
    it.scoped("grows the open duration on consecutive trips and starts over after a recovery", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "schedule",
          failureThreshold: 1,
          halfOpenMaxCalls: 1,
          successThreshold: 1,
          openDuration: "1 hour", // replaced by the schedule
          openDurationSchedule: Schedule.exponential("10 seconds")
        })
        // Trip 1 at t = 0: 10 s.
        yield* failOnce(cb)
        let snap = yield* cb.snapshot
        expect([snap.state, snap.openUntil, snap.trips]).toStrictEqual(["Open", 10_000, 1])
        yield* TestClock.adjust("10 seconds")
        expect(yield* cb.state).toBe("HalfOpen")

        // Trip 2 at t = 10 s (probe fails): 20 s.
        yield* failOnce(cb)
        snap = yield* cb.snapshot
        expect([snap.state, snap.openUntil, snap.trips]).toStrictEqual(["Open", 30_000, 2])
        yield* TestClock.adjust("10 seconds")
        expect(yield* cb.state).toBe("Open") // not HalfOpen after only 10 s
        const refused = yield* Effect.flip(cb.protect(Effect.succeed("x")))
        assert(refused instanceof CircuitBreaker.CircuitOpen)
        expect(Duration.toMillis(refused.retryAfter)).toBe(10_000)
        yield* TestClock.adjust("10 seconds")
        expect(yield* cb.state).toBe("HalfOpen")

        // Trip 3 at t = 30 s: 40 s.
        yield* failOnce(cb)
        snap = yield* cb.snapshot
        expect([snap.openUntil, snap.trips]).toStrictEqual([70_000, 3])
        yield* TestClock.adjust("40 seconds")

        // Recovery at t = 70 s.
        yield* succeedOnce(cb)
        snap = yield* cb.snapshot
        expect([snap.state, snap.trips]).toStrictEqual(["Closed", 0])

        // Next trip is back to 10 s.
        yield* failOnce(cb)
        snap = yield* cb.snapshot
        expect([snap.state, snap.openUntil, snap.trips]).toStrictEqual(["Open", 80_000, 1])
        yield* TestClock.adjust("10 seconds")
        expect(yield* cb.state).toBe("HalfOpen")
      }))

    it.scoped("the wake-up timer follows the schedule's duration", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "schedule-wakeup",
          failureThreshold: 1,
          halfOpenMaxCalls: 1,
          openDurationSchedule: Schedule.exponential("10 seconds")
        })
        yield* failOnce(cb)
        yield* TestClock.adjust("10 seconds")
        yield* failOnce(cb) // probe fails: open for 20 s
        const events = yield* collectChanges(cb, 1)
        yield* TestClock.adjust("10 seconds")
        expect(Option.isNone(yield* Fiber.poll(events))).toBe(true)
        yield* TestClock.adjust("10 seconds")
        const [event] = yield* Fiber.join(events)
        expect(event).toMatchObject({ from: "Open", to: "HalfOpen", at: 30_000 })
      }))
  })

  describe("operators", () => {
    it.scoped("forceOpen refuses every call and stays ForcedOpen whatever the time", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "forced", openDuration: "10 seconds" })
        const { count, counted } = yield* makeCounter
        const events = yield* collectChanges(cb, 1)
        yield* cb.forceOpen
        expect(yield* Fiber.join(events)).toMatchObject([{ from: "Closed", to: "ForcedOpen" }])
        expect(yield* cb.state).toBe("ForcedOpen")
        expect(yield* cb.isAvailable).toBe(false)
        for (let i = 0; i < 3; i++) {
          const err = yield* Effect.flip(cb.protect(counted(Effect.succeed("x"))))
          assert(err instanceof CircuitBreaker.CircuitOpen)
          expect(err.state).toBe("ForcedOpen")
        }
        expect(yield* count).toBe(0)
        yield* TestClock.adjust("1 hour")
        expect(yield* cb.state).toBe("ForcedOpen")
        expect(Exit.isFailure(yield* Effect.exit(cb.protect(counted(Effect.void))))).toBe(true)
        expect(yield* count).toBe(0)
        // tryHalfOpen only applies to Open.
        yield* cb.tryHalfOpen
        expect(yield* cb.state).toBe("ForcedOpen")
        yield* cb.reset
        expect(yield* cb.state).toBe("Closed")
        expect(yield* cb.protect(counted(Effect.succeed("y")))).toBe("y")
        expect(yield* count).toBe(1)
      }))

    it.scoped("forceOpen over an Open breaker is not undone by the pending wake-up", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "forced-over-open", failureThreshold: 1, openDuration: "10 seconds" })
        yield* failOnce(cb)
        yield* cb.forceOpen
        yield* TestClock.adjust("30 seconds")
        expect(yield* cb.state).toBe("ForcedOpen")
      }))

    it.scoped("disable admits every call and records nothing", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "disabled", failureThreshold: 2 })
        const { count, counted } = yield* makeCounter
        yield* failOnce(cb)
        yield* cb.disable
        expect(yield* cb.state).toBe("Disabled")
        const events = yield* collectChanges(cb, 1)
        const errors = yield* Effect.forEach(
          Array.from({ length: 20 }),
          () => Effect.flip(cb.protect(counted(Effect.fail(new Boom()))))
        )
        yield* Effect.exit(cb.protect(counted(Effect.dieMessage("kaput"))))
        expect(yield* count).toBe(21)
        expect(errors.every((e) => e instanceof Boom)).toBe(true)
        expect(yield* cb.state).toBe("Disabled")
        expect(yield* cb.isAvailable).toBe(true)
        // No transition happened while disabled.
        expect(Option.isNone(yield* Fiber.poll(events))).toBe(true)
        yield* cb.reset
        const [reset] = yield* Fiber.join(events)
        expect(reset).toMatchObject({ from: "Disabled", to: "Closed", reason: "reset by operator" })
        // Nothing from the disabled period carried over.
        const snap = yield* cb.snapshot
        expect([snap.state, snap.consecutiveFailures]).toStrictEqual(["Closed", 0])
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Closed")
      }))

    it.scoped("disable over an Open breaker admits calls at once and is not undone by the wake-up", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "disabled-over-open", failureThreshold: 1, openDuration: "10 seconds" })
        yield* failOnce(cb)
        yield* cb.disable
        expect(yield* cb.protect(Effect.succeed("through"))).toBe("through")
        yield* TestClock.adjust("10 seconds")
        expect(yield* cb.state).toBe("Disabled")
      }))

    it.scoped("reset closes the breaker and clears failures and trips", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "reset",
          failureThreshold: 2,
          halfOpenMaxCalls: 1,
          openDurationSchedule: Schedule.exponential("10 seconds")
        })
        // Consecutive failures are cleared.
        yield* failOnce(cb)
        yield* cb.reset
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Closed")
        expect((yield* cb.snapshot).consecutiveFailures).toBe(1)
        yield* failOnce(cb) // trip 1
        yield* TestClock.adjust("10 seconds")
        yield* failOnce(cb) // probe fails: trip 2
        let snap = yield* cb.snapshot
        expect([snap.state, snap.trips, snap.openUntil]).toStrictEqual(["Open", 2, 30_000])
        // From Open: closes at once; trips forgotten.
        const events = yield* collectChanges(cb, 1)
        yield* cb.reset
        expect(yield* Fiber.join(events)).toMatchObject([{ from: "Open", to: "Closed", reason: "reset by operator" }])
        snap = yield* cb.snapshot
        expect([snap.state, snap.trips, snap.consecutiveFailures]).toStrictEqual(["Closed", 0, 0])
        expect(yield* cb.protect(Effect.succeed(1))).toBe(1)
        // Next trip starts the schedule over: 10 s.
        yield* failTimes(cb, 2)
        snap = yield* cb.snapshot
        expect([snap.state, snap.trips, snap.openUntil]).toStrictEqual(["Open", 1, 20_000])
      }))

    it.scoped("reset clears the failure-rate window", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "reset-window",
          failureThreshold: 100,
          failureRate: { threshold: 0.5, minimumCalls: 4, window: { calls: 10 } }
        })
        yield* failTimes(cb, 3)
        yield* cb.reset
        expect((yield* cb.snapshot).windowCalls).toBe(0)
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Closed")
      }))

    it.scoped("tryHalfOpen moves Open to HalfOpen at once, and does nothing otherwise", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "try-half-open",
          failureThreshold: 1,
          openDuration: "1 hour",
          successThreshold: 1
        })
        const events = yield* collectChanges(cb, 3)
        yield* cb.tryHalfOpen // Closed: no-op
        expect(yield* cb.state).toBe("Closed")
        yield* failOnce(cb)
        expect(yield* cb.state).toBe("Open")
        yield* cb.tryHalfOpen
        expect(yield* cb.state).toBe("HalfOpen")
        expect(yield* cb.isAvailable).toBe(true)
        yield* succeedOnce(cb)
        expect(yield* cb.state).toBe("Closed")
        const collected = yield* Fiber.join(events)
        expect(collected.map((e) => [e.from, e.to, e.reason])).toStrictEqual([
          ["Closed", "Open", "1 consecutive failures"],
          ["Open", "HalfOpen", "recovery signalled"],
          ["HalfOpen", "Closed", "1 probe successes"]
        ])
        // The pending wake-up of the old open period does nothing.
        const more = yield* collectChanges(cb, 1)
        yield* TestClock.adjust("1 hour")
        expect(Option.isNone(yield* Fiber.poll(more))).toBe(true)
        expect(yield* cb.state).toBe("Closed")
      }))
  })

  describe("permits (outcome reported later, as for a stream)", () => {
    /** Admits one call and reports its outcome later, as the relay does for a stream. */
    const streamThat = (cb: Breaker, ends: "ok" | "fails") =>
      Effect.flatMap(cb.tryAcquirePermission, (p) => ends === "ok" ? p.onSuccess() : p.onError(new Boom()))

    it.scoped("failures reported when calls end open the breaker, even though each call started well", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "permit-fail", failureThreshold: 5 })
        for (let i = 0; i < 4; i++) yield* streamThat(cb, "fails")
        expect((yield* cb.snapshot).consecutiveFailures).toBe(4)
        expect(yield* cb.state).toBe("Closed")
        yield* streamThat(cb, "fails")
        expect(yield* cb.state).toBe("Open")
        const refused = yield* Effect.flip(cb.tryAcquirePermission)
        expect(refused._tag).toBe("CircuitOpen")
        expect(refused.state).toBe("Open")
        expect(Duration.toMillis(refused.retryAfter)).toBe(30_000)
      }))

    it.scoped("a success resets the count; only a permit's first report counts", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "permit-once", failureThreshold: 3 })
        yield* streamThat(cb, "fails")
        yield* streamThat(cb, "fails")
        yield* streamThat(cb, "ok")
        expect((yield* cb.snapshot).consecutiveFailures).toBe(0)
        const p = yield* cb.tryAcquirePermission
        yield* p.onError(new Boom())
        yield* p.onError(new Boom())
        yield* p.onSuccess()
        yield* p.release
        expect((yield* cb.snapshot).consecutiveFailures).toBe(1)
      }))

    it.scoped("errors for which isFailure is false and released permits are neutral", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "permit-neutral",
          failureThreshold: 2,
          isFailure: (e) => !(e instanceof BadRequest)
        })
        yield* streamThat(cb, "fails")
        for (let i = 0; i < 5; i++) {
          const p = yield* cb.tryAcquirePermission
          yield* i % 2 === 0 ? p.onError(new BadRequest()) : p.release
        }
        expect((yield* cb.snapshot).consecutiveFailures).toBe(1)
        expect(yield* cb.state).toBe("Closed")
      }))

    it.scoped("half-open: a permit holds a probe slot until it is reported; release frees it without a verdict", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({
          name: "permit-probe",
          failureThreshold: 1,
          openDuration: "10 seconds",
          halfOpenMaxCalls: 1,
          successThreshold: 2
        })
        yield* streamThat(cb, "fails")
        yield* TestClock.adjust("10 seconds")
        const probe = yield* cb.tryAcquirePermission
        expect((yield* cb.snapshot).halfOpenInFlight).toBe(1)
        expect((yield* Effect.flip(cb.tryAcquirePermission)).state).toBe("HalfOpen")
        yield* probe.release
        expect((yield* cb.snapshot).halfOpenInFlight).toBe(0)
        expect(yield* cb.state).toBe("HalfOpen")
        // Two probe successes close it; a later report on a settled permit changes nothing.
        yield* streamThat(cb, "ok")
        yield* streamThat(cb, "ok")
        expect(yield* cb.state).toBe("Closed")
        yield* probe.onError(new Boom())
        expect(yield* cb.state).toBe("Closed")
      }))

    it.scoped("half-open: a probe that fails at its end reopens the breaker", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "permit-reopen", failureThreshold: 1, openDuration: "10 seconds" })
        yield* streamThat(cb, "fails")
        yield* TestClock.adjust("10 seconds")
        const probe = yield* cb.tryAcquirePermission
        yield* TestClock.adjust("3 seconds")
        expect(yield* cb.state).toBe("HalfOpen")
        yield* probe.onError(new Boom())
        expect(yield* cb.state).toBe("Open")
      }))

    it.scoped("slowCallDuration judges the duration given to onSuccess (time to first event), not the time held", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "permit-slow", failureThreshold: 2, slowCallDuration: "1 second" })
        const long = yield* cb.tryAcquirePermission
        yield* TestClock.adjust("30 seconds")
        yield* long.onSuccess(200)
        expect((yield* cb.snapshot).consecutiveFailures).toBe(0)
        const slow = yield* cb.tryAcquirePermission
        yield* TestClock.adjust("2 seconds")
        yield* slow.onSuccess()
        expect((yield* cb.snapshot).consecutiveFailures).toBe(1)
      }))

    it.scoped("a permit acquired before a reset does not count after it", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "permit-epoch", failureThreshold: 1 })
        const p = yield* cb.tryAcquirePermission
        yield* cb.reset
        yield* p.onError(new Boom())
        expect(yield* cb.state).toBe("Closed")
      }))

    it.scoped("disabled and forced-open breakers: permits record nothing, or are refused", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "permit-ops", failureThreshold: 1 })
        yield* cb.disable
        yield* streamThat(cb, "fails")
        expect(yield* cb.state).toBe("Disabled")
        yield* cb.forceOpen
        expect((yield* Effect.flip(cb.tryAcquirePermission)).state).toBe("ForcedOpen")
      }))
  })

  describe("scope", () => {
    it.effect("closing the scope of an Open breaker does not wait for the open period to end", () =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const cb = yield* Scope.extend(
          CircuitBreaker.make({ name: "scope-close", failureThreshold: 1, openDuration: "10 minutes" }),
          scope
        )
        yield* failOnce(cb) // forks the wake-up timer into `scope`
        expect(yield* cb.state).toBe("Open")
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        yield* settle // no time passes
        expect(Option.isSome(yield* Fiber.poll(closing))).toBe(true)
      }))

    it.scoped("closing the scope ends the changes stream", () =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const cb = yield* Scope.extend(CircuitBreaker.make({ name: "scope-changes" }), scope)
        const events = yield* collectChanges(cb, 1)
        yield* Scope.close(scope, Exit.void)
        yield* settle
        // The subscriber is not left hanging: its stream ends, with no events.
        const exit = yield* Fiber.await(events)
        expect(exit).toStrictEqual(Exit.succeed([]))
      }))
  })

  describe("changes", () => {
    it.scoped("a transition between getting the stream and running it is delivered", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.make({ name: "changes-early", failureThreshold: 1 })
        const changes = yield* cb.changes
        // The breaker trips after the caller got its stream, before it runs it.
        yield* failOnce(cb)
        const events = yield* changes.pipe(
          Stream.take(1),
          Stream.runCollect,
          Effect.map(Chunk.toReadonlyArray),
          Effect.timeout("1 second"),
          Effect.option,
          Effect.fork
        )
        yield* TestClock.adjust("1 second")
        const got = yield* Fiber.join(events)
        expect(Option.getOrUndefined(got)).toMatchObject([{ from: "Closed", to: "Open" }])
      }))
  })

  describe("layers and config", () => {
    it.effect("layer provides a breaker in the context", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.CircuitBreaker
        expect(cb.name).toBe("from-layer")
        yield* failTimes(cb, 2)
        expect(yield* cb.state).toBe("Open")
      }).pipe(Effect.provide(CircuitBreaker.layer({ name: "from-layer", failureThreshold: 2 }))))

    it.effect("layerConfig reads its options from the ConfigProvider", () =>
      Effect.gen(function*() {
        const cb = yield* CircuitBreaker.CircuitBreaker
        yield* failTimes(cb, 2)
        expect(yield* cb.state).toBe("Open")
        yield* TestClock.adjust("9 seconds")
        expect(yield* cb.state).toBe("Open")
        yield* TestClock.adjust("1 second")
        expect(yield* cb.state).toBe("HalfOpen")
        yield* succeedOnce(cb)
        expect(yield* cb.state).toBe("Closed")
      }).pipe(
        Effect.provide(CircuitBreaker.layerConfig(CircuitBreaker.config("from-config"))),
        Effect.withConfigProvider(ConfigProvider.fromMap(
          new Map([
            ["breaker.from-config.failureThreshold", "2"],
            ["breaker.from-config.openDuration", "10 seconds"],
            ["breaker.from-config.successThreshold", "1"]
          ])
        ))
      ))
  })

  describe("metrics", () => {
    it.scoped("counts refused calls and reports the state gauge", () =>
      Effect.gen(function*() {
        const name = "metrics-breaker"
        const rejected = Metric.counter("breakwater_breaker_rejected_total", {
          description: "Calls refused by an open breaker",
          incremental: true
        }).pipe(Metric.tagged("breaker", name))
        const gauge = Metric.gauge("breakwater_breaker_state", {
          description: "Breaker state: 0 closed, 1 half-open, 2 open, 3 forced open, 4 disabled"
        }).pipe(Metric.tagged("breaker", name))
        const cb = yield* CircuitBreaker.make({ name, failureThreshold: 1 })
        expect((yield* Metric.value(gauge)).value).toBe(0)
        const before = (yield* Metric.value(rejected)).count
        yield* failOnce(cb)
        expect((yield* Metric.value(gauge)).value).toBe(2)
        yield* succeedTimes(cb, 3)
        expect((yield* Metric.value(rejected)).count - before).toBe(3)
        yield* cb.forceOpen
        expect((yield* Metric.value(gauge)).value).toBe(3)
      }))
  })

  describe("properties", () => {
    it.scoped.prop(
      "concurrent callers while HalfOpen: never more than halfOpenMaxCalls probes in flight",
      { maxCalls: FastCheck.integer({ min: 1, max: 5 }), callers: FastCheck.integer({ min: 1, max: 20 }) },
      ({ callers, maxCalls }) =>
        Effect.gen(function*() {
          const cb = yield* CircuitBreaker.make({
            name: "prop-half-open",
            failureThreshold: 1,
            openDuration: "1 second",
            halfOpenMaxCalls: maxCalls,
            successThreshold: 1_000 // stay half-open throughout
          })
          yield* failOnce(cb)
          yield* TestClock.adjust("1 second")

          const inFlight = yield* Ref.make(0)
          const maxSeen = yield* Ref.make(0)
          const entered = yield* Ref.make(0)
          const refused = yield* Ref.make<Array<CircuitBreaker.CircuitOpen>>([])
          const gate = yield* Deferred.make<void>()
          const body = Effect.gen(function*() {
            const n = yield* Ref.updateAndGet(inFlight, (k) => k + 1)
            yield* Ref.update(maxSeen, (m) => Math.max(m, n))
            yield* Ref.update(entered, (k) => k + 1)
            yield* Effect.yieldNow()
            yield* Deferred.await(gate)
            yield* Ref.update(inFlight, (k) => k - 1)
          })
          const caller = cb.protect(body).pipe(
            Effect.either,
            Effect.tap((r) =>
              Either.isLeft(r) && r.left instanceof CircuitBreaker.CircuitOpen
                ? Ref.update(refused, (xs) => [...xs, r.left as CircuitBreaker.CircuitOpen])
                : Effect.void
            )
          )
          const all = yield* Effect.fork(
            Effect.forEach(Array.from({ length: callers }), () => caller, { concurrency: "unbounded" })
          )
          yield* awaitCondition(
            Effect.zipWith(Ref.get(entered), Ref.get(refused), (e, r) => e + r.length === callers)
          )
          const expected = Math.min(maxCalls, callers)
          expect(yield* Ref.get(inFlight)).toBe(expected)
          expect((yield* cb.snapshot).halfOpenInFlight).toBe(expected)
          const refusals = yield* Ref.get(refused)
          expect(refusals.length).toBe(callers - expected)
          expect(refusals.every((e) => e.state === "HalfOpen")).toBe(true)

          yield* Deferred.succeed(gate, undefined)
          const results = yield* Fiber.join(all)
          expect(results.filter(Either.isRight).length).toBe(expected)
          expect(yield* Ref.get(maxSeen)).toBeLessThanOrEqual(maxCalls)
          expect(yield* Ref.get(maxSeen)).toBe(expected)
          const snap = yield* cb.snapshot
          expect([snap.state, snap.halfOpenInFlight]).toStrictEqual(["HalfOpen", 0])
        }),
      { fastCheck: { numRuns: 50 } }
    )

    it.scoped.prop(
      "Closed: trips exactly at the first run of failureThreshold consecutive failures",
      {
        threshold: FastCheck.integer({ min: 1, max: 6 }),
        outcomes: FastCheck.array(FastCheck.boolean(), { maxLength: 40 })
      },
      ({ outcomes, threshold }) =>
        Effect.gen(function*() {
          const cb = yield* CircuitBreaker.make({ name: "prop-consecutive", failureThreshold: threshold })
          const { count, counted } = yield* makeCounter
          for (const failed of outcomes) {
            yield* Effect.exit(cb.protect(counted(failed ? Effect.fail(new Boom()) : Effect.void)))
          }
          // Model: index of the call completing the first run of `threshold` failures.
          let run = 0
          let tripAt = -1
          for (let i = 0; i < outcomes.length; i++) {
            run = outcomes[i] ? run + 1 : 0
            if (run >= threshold) {
              tripAt = i
              break
            }
          }
          expect(yield* cb.state).toBe(tripAt === -1 ? "Closed" : "Open")
          expect(yield* count).toBe(tripAt === -1 ? outcomes.length : tripAt + 1)
          if (tripAt === -1) expect((yield* cb.snapshot).consecutiveFailures).toBe(run)
        }),
      { fastCheck: { numRuns: 50 } }
    )
  })
})
