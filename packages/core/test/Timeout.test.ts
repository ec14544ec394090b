import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as TestClock from "effect/TestClock"
import * as Timeout from "../src/Timeout.js"

const isDone = <A, E>(fiber: Fiber.Fiber<A, E>) => Effect.map(Fiber.poll(fiber), Option.isSome)

const remainingMillis = Effect.map(Timeout.remaining, (o) => Option.getOrUndefined(Option.map(o, Duration.toMillis)))

describe("Timeout.attempt", () => {
  it.effect("fails AttemptTimedOut after its timeout and not before", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Timeout.attempt(Effect.never, "1 second"))
      yield* TestClock.adjust("999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect(yield* isDone(fiber)).toBe(true)
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error).toBeInstanceOf(Timeout.AttemptTimedOut)
      expect(Duration.toMillis((error as Timeout.AttemptTimedOut).timeout)).toBe(1000)
      expect(error.message).toBe("attempt timed out after 1s")
    }))

  it.effect("passes a fast effect through", () =>
    Effect.gen(function*() {
      expect(yield* Timeout.attempt(Effect.succeed(42), "1 second")).toBe(42)
      // And one that finishes in time, under TestClock.
      const fiber = yield* Effect.fork(Effect.as(Effect.sleep("900 millis"), "ok").pipe(Timeout.attempt("1 second")))
      yield* TestClock.adjust("900 millis")
      expect(yield* Fiber.join(fiber)).toBe("ok")
    }))

  it.effect("passes the effect's own failure through", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Timeout.attempt(Effect.fail("nope" as const), "1 second"))
      expect(error).toBe("nope")
    }))
})

describe("Timeout.withDeadline", () => {
  it.effect("fails DeadlineExceeded when the budget passes, and not before", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Timeout.withDeadline(Effect.never, "5 seconds"))
      yield* TestClock.adjust("4999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect(yield* isDone(fiber)).toBe(true)
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error).toBeInstanceOf(Timeout.DeadlineExceeded)
      expect(Duration.toMillis(error.budget)).toBe(5000)
      expect(error.message).toBe("request deadline of 5s exceeded")
    }))

  it.effect("passes a fast effect through", () =>
    Effect.gen(function*() {
      expect(yield* Timeout.withDeadline(Effect.succeed(1), "5 seconds")).toBe(1)
    }))

  it.effect("remaining reports the time left inside a deadline, None outside", () =>
    Effect.gen(function*() {
      expect(Option.isNone(yield* Timeout.remaining)).toBe(true)
      const seen = yield* Effect.gen(function*() {
        const atStart = yield* remainingMillis
        yield* TestClock.adjust("2 seconds")
        const after2s = yield* remainingMillis
        return [atStart, after2s] as const
      }).pipe(Timeout.withDeadline("5 seconds"))
      expect(seen).toEqual([5000, 3000])
      // The deadline does not leak out of its scope.
      expect(Option.isNone(yield* Timeout.remaining)).toBe(true)
    }))

  it.effect("remaining never goes below zero", () =>
    Effect.gen(function*() {
      // A daemon fiber keeps the deadline (inherited FiberRef) but outlives it.
      const fiber = yield* Effect.forkDaemon(Effect.zipRight(Effect.sleep("3 seconds"), remainingMillis)).pipe(
        Timeout.withDeadline("1 second")
      )
      yield* TestClock.adjust("3 seconds")
      expect(yield* Fiber.join(fiber)).toBe(0)
    }))

  it.effect("an inner longer deadline does not extend the outer one", () =>
    Effect.gen(function*() {
      const left = yield* remainingMillis.pipe(Timeout.withDeadline("10 seconds"), Timeout.withDeadline("2 seconds"))
      expect(left).toBe(2000)

      const fiber = yield* Effect.fork(
        Effect.never.pipe(Timeout.withDeadline("10 seconds"), Timeout.withDeadline("2 seconds"))
      )
      yield* TestClock.adjust("1999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error).toBeInstanceOf(Timeout.DeadlineExceeded)
      expect(Duration.toMillis(error.budget)).toBe(2000)
    }))

  it.effect("an attempt under an inner longer deadline is still cut by the outer one", () =>
    Effect.gen(function*() {
      // The attempt runs on a daemon fiber, so only its own timers can end it.
      const fiber = yield* Effect.forkDaemon(Timeout.attempt(Effect.never, "5 seconds")).pipe(
        Timeout.withDeadline("10 seconds"),
        Timeout.withDeadline("2 seconds")
      )
      yield* TestClock.adjust("1999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error).toBeInstanceOf(Timeout.DeadlineExceeded)
    }))

  it.effect("an inner shorter deadline applies, and the outer one resumes after it", () =>
    Effect.gen(function*() {
      const lefts = yield* Effect.gen(function*() {
        const inner = yield* remainingMillis.pipe(Timeout.withDeadline("3 seconds"))
        const outer = yield* remainingMillis
        return [inner, outer] as const
      }).pipe(Timeout.withDeadline("10 seconds"))
      expect(lefts).toEqual([3000, 10_000])

      const fiber = yield* Effect.fork(
        Effect.never.pipe(Timeout.withDeadline("3 seconds"), Effect.either, Timeout.withDeadline("10 seconds"))
      )
      yield* TestClock.adjust("2999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      const result = yield* Fiber.join(fiber)
      expect(result._tag).toBe("Left")
      if (result._tag === "Left") {
        expect(result.left).toBeInstanceOf(Timeout.DeadlineExceeded)
        expect(Duration.toMillis(result.left.budget)).toBe(3000)
      }
    }))
})

describe("Timeout.attempt under a deadline", () => {
  it.effect("with 2 s left, attempt(10 s) fails DeadlineExceeded at 2 s", () =>
    Effect.gen(function*() {
      // 5 s budget, 3 s used: 2 s left. The attempt runs on a daemon fiber
      // (which inherits the deadline), so the deadline's own timer cannot end
      // it: only the attempt's cut-off can.
      const fiber = yield* Effect.gen(function*() {
        yield* TestClock.adjust("3 seconds")
        return yield* Effect.forkDaemon(Timeout.attempt(Effect.never, "10 seconds"))
      }).pipe(Timeout.withDeadline("5 seconds"))
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect(yield* isDone(fiber)).toBe(true)
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error).toBeInstanceOf(Timeout.DeadlineExceeded)
      expect(error).not.toBeInstanceOf(Timeout.AttemptTimedOut)
      expect(Duration.toMillis((error as Timeout.DeadlineExceeded).budget)).toBe(5000)
    }))

  it.effect("end to end: the request fails DeadlineExceeded at the deadline", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(
        Timeout.attempt(Effect.never, "10 seconds").pipe(Timeout.withDeadline("2 seconds"))
      )
      yield* TestClock.adjust("1999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error).toBeInstanceOf(Timeout.DeadlineExceeded)
    }))

  it.effect("with 20 s left, attempt(10 s) fails AttemptTimedOut at 10 s", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(
        Timeout.attempt(Effect.never, "10 seconds").pipe(Timeout.withDeadline("20 seconds"))
      )
      yield* TestClock.adjust("9999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect(yield* isDone(fiber)).toBe(true)
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error).toBeInstanceOf(Timeout.AttemptTimedOut)
      expect(Duration.toMillis((error as Timeout.AttemptTimedOut).timeout)).toBe(10_000)
    }))

  it.effect("when the deadline has passed, attempt fails at once without running the effect", () =>
    Effect.gen(function*() {
      const ran = yield* Ref.make(false)
      const fiber = yield* Effect.forkDaemon(
        Effect.zipRight(Effect.sleep("1 second"), Timeout.attempt(Ref.set(ran, true), "10 seconds"))
      ).pipe(Timeout.withDeadline("1 second"))
      yield* TestClock.adjust("1 second")
      // At the deadline exactly: no time left.
      expect(yield* isDone(fiber)).toBe(true)
      const exit = yield* Fiber.await(fiber)
      expect(Exit.isFailure(exit)).toBe(true)
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error).toBeInstanceOf(Timeout.DeadlineExceeded)
      expect(yield* Ref.get(ran)).toBe(false)
    }))

  it.effect("well past the deadline, attempt also fails at once", () =>
    Effect.gen(function*() {
      const ran = yield* Ref.make(false)
      const fiber = yield* Effect.forkDaemon(
        Effect.zipRight(Effect.sleep("5 seconds"), Timeout.attempt(Ref.set(ran, true), "10 seconds"))
      ).pipe(Timeout.withDeadline("1 second"))
      yield* TestClock.adjust("5 seconds")
      expect(yield* isDone(fiber)).toBe(true)
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error).toBeInstanceOf(Timeout.DeadlineExceeded)
      expect(yield* Ref.get(ran)).toBe(false)
    }))
})

describe("Timeout service", () => {
  it.effect("Timeout.layer provides the configured attempt and request limits", () =>
    Effect.gen(function*() {
      const timeout = yield* Timeout.Timeout
      expect(Duration.toMillis(timeout.attempt)).toBe(1000)
      expect(Duration.toMillis(timeout.request)).toBe(3000)

      const a = yield* Effect.fork(timeout.withAttempt(Effect.never))
      yield* TestClock.adjust("999 millis")
      expect(yield* isDone(a)).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect(yield* Effect.flip(Fiber.join(a))).toBeInstanceOf(Timeout.AttemptTimedOut)

      const r = yield* Effect.fork(timeout.withDeadline(Effect.never))
      yield* TestClock.adjust("2999 millis")
      expect(yield* isDone(r)).toBe(false)
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(r))
      expect(error).toBeInstanceOf(Timeout.DeadlineExceeded)
      expect(Duration.toMillis(error.budget)).toBe(3000)

      // The attempt limit defers to the request deadline when that is nearer.
      const both = yield* Effect.fork(
        Effect.gen(function*() {
          yield* TestClock.adjust("2500 millis")
          return yield* Effect.forkDaemon(timeout.withAttempt(Effect.never))
        }).pipe(timeout.withDeadline)
      )
      const inner = yield* Fiber.join(both)
      yield* TestClock.adjust("499 millis")
      expect(yield* isDone(inner)).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect(yield* Effect.flip(Fiber.join(inner))).toBeInstanceOf(Timeout.DeadlineExceeded)
    }).pipe(Effect.provide(Timeout.layer({ attempt: "1 second", request: "3 seconds" }))))

  it.effect("Timeout.make defaults to 30 s per attempt and 60 s per request", () =>
    Effect.gen(function*() {
      const timeout = yield* Timeout.make()
      expect(Duration.toMillis(timeout.attempt)).toBe(30_000)
      expect(Duration.toMillis(timeout.request)).toBe(60_000)
    }))
})
