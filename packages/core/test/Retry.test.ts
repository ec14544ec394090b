import { describe, expect, it } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import * as TestClock from "effect/TestClock"
import * as Retry from "../src/Retry.js"
import * as Timeout from "../src/Timeout.js"

class Boom extends Data.TaggedError("Boom")<{ readonly attempt: number }> {}

class Limited extends Data.TaggedError("Limited")<{
  readonly attempt: number
  readonly retryAfter: Duration.Duration
}> {}

/** Lets every other fiber run until it suspends, without moving the clock. */
const settle = TestClock.adjust(0)

/**
 * An attempt that records the TestClock time at which it ran and fails with
 * `onAttempt(n)` (attempts are numbered from 1), or succeeds with `n` once
 * `succeedOn` is reached.
 */
const recorder = <E>(onAttempt: (n: number) => E, succeedOn?: number) =>
  Effect.gen(function*() {
    const times = yield* Ref.make<ReadonlyArray<number>>([])
    const attempt: Effect.Effect<number, E> = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const n = yield* Ref.modify(times, (ts) => [ts.length + 1, [...ts, now]] as const)
      if (succeedOn !== undefined && n >= succeedOn) return n
      return yield* Effect.fail(onAttempt(n))
    })
    const count = Effect.map(Ref.get(times), (ts) => ts.length)
    return { times, attempt, count } as const
  })

const delaysOf = (times: ReadonlyArray<number>): ReadonlyArray<number> =>
  times.slice(1).map((t, i) => t - times[i]!)

const millis = (d: Option.Option<Duration.Duration>): number | undefined =>
  Option.getOrUndefined(Option.map(d, Duration.toMillis))

describe("Retry.retry", () => {
  it.effect("retries up to maxRetries, then returns the last error", () =>
    Effect.gen(function*() {
      const { attempt, count } = yield* recorder((n) => new Boom({ attempt: n }))
      const fiber = yield* Effect.fork(Retry.retry({ maxRetries: 2, baseDelay: "10 millis" })(attempt))
      yield* TestClock.adjust("1 minute")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(yield* count).toBe(3)
      expect(error).toEqual(new Boom({ attempt: 3 }))
    }))

  it.effect("maxRetries 0 means a single attempt", () =>
    Effect.gen(function*() {
      const { attempt, count } = yield* recorder((n) => new Boom({ attempt: n }))
      const error = yield* Effect.flip(Retry.retry({ maxRetries: 0 })(attempt))
      expect(yield* count).toBe(1)
      expect(error.attempt).toBe(1)
    }))

  it.effect("defaults to 2 retries (3 attempts)", () =>
    Effect.gen(function*() {
      const { attempt, count } = yield* recorder((n) => new Boom({ attempt: n }))
      const fiber = yield* Effect.fork(Retry.retry()(attempt))
      yield* TestClock.adjust("1 minute")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(yield* count).toBe(3)
      expect(error.attempt).toBe(3)
    }))

  it.effect("returns the success of a later attempt and stops retrying", () =>
    Effect.gen(function*() {
      const { attempt, count } = yield* recorder((n) => new Boom({ attempt: n }), 2)
      const fiber = yield* Effect.fork(Retry.retry({ maxRetries: 5 })(attempt))
      yield* TestClock.adjust("1 minute")
      expect(yield* Fiber.join(fiber)).toBe(2)
      expect(yield* count).toBe(2)
    }))

  it.effect("does not retry when isRetryable is false", () =>
    Effect.gen(function*() {
      const { attempt, count } = yield* recorder((n) => new Boom({ attempt: n }))
      const fiber = yield* Effect.fork(
        Retry.retry({ maxRetries: 5, isRetryable: () => false })(attempt)
      )
      yield* settle
      // It finished without the clock moving: no sleep was scheduled.
      const exit = yield* Fiber.poll(fiber)
      expect(Option.isSome(exit)).toBe(true)
      expect(yield* count).toBe(1)
      expect(yield* Effect.flip(Fiber.join(fiber))).toEqual(new Boom({ attempt: 1 }))
    }))

  it.effect("isRetryable is consulted per error: retries stop at the first non-retryable one", () =>
    Effect.gen(function*() {
      const { attempt, count } = yield* recorder((n) => new Boom({ attempt: n }))
      const fiber = yield* Effect.fork(
        attempt.pipe(Retry.retry({ maxRetries: 10, isRetryable: (e) => e.attempt < 3 }))
      )
      yield* TestClock.adjust("1 minute")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(yield* count).toBe(3)
      expect(error.attempt).toBe(3)
    }))

  describe("backoff with full jitter", () => {
    const options = { maxRetries: 5, baseDelay: "100 millis", maxDelay: "500 millis" } as const
    // The cap of retry n (from 0): min(maxDelay, baseDelay * 2^n).
    const caps = [100, 200, 400, 500, 500]

    const delaysWith = (random: Random.Random) =>
      Effect.gen(function*() {
        const { attempt, times } = yield* recorder((n) => new Boom({ attempt: n }))
        const fiber = yield* Effect.fork(Retry.retry(options)(attempt).pipe(Effect.withRandom(random)))
        yield* TestClock.adjust("1 minute")
        yield* Effect.flip(Fiber.join(fiber))
        return delaysOf(yield* Ref.get(times))
      })

    it.effect("the delay is the capped exponential when the random draw is at its top", () =>
      Effect.gen(function*() {
        expect(yield* delaysWith(Random.fixed([1]))).toEqual(caps)
      }))

    it.effect("the delay is the random fraction of the cap (the jittered delay is the one slept)", () =>
      Effect.gen(function*() {
        expect(yield* delaysWith(Random.fixed([0.5]))).toEqual(caps.map((c) => c / 2))
        expect(yield* delaysWith(Random.fixed([0]))).toEqual([0, 0, 0, 0, 0])
      }))

    it.effect("every delay is within [0, min(maxDelay, baseDelay * 2^n)] across many seeds", () =>
      Effect.gen(function*() {
        const firsts: Array<number> = []
        const all: Array<number> = []
        for (let seed = 1; seed <= 40; seed++) {
          const delays = yield* delaysWith(Random.make(seed))
          expect(delays).toHaveLength(caps.length)
          delays.forEach((d, n) => {
            expect(d).toBeGreaterThanOrEqual(0)
            expect(d).toBeLessThanOrEqual(caps[n]!)
            all.push(d / caps[n]!)
          })
          firsts.push(delays[0]!)
        }
        // Jitter is present: the delays differ between seeds, and they are
        // not simply the caps.
        expect(new Set(firsts).size).toBeGreaterThan(10)
        expect(all.filter((f) => f === 1).length).toBeLessThan(all.length / 2)
        // Full jitter spreads over the whole range, including its lower half.
        expect(all.some((f) => f < 0.5)).toBe(true)
        expect(all.some((f) => f >= 0.5)).toBe(true)
      }))

    it.effect("the same seed gives the same delays (randomness comes from the Random service)", () =>
      Effect.gen(function*() {
        const a = yield* delaysWith(Random.make("seed-a"))
        const b = yield* delaysWith(Random.make("seed-a"))
        expect(a).toEqual(b)
      }))

    it.effect("no attempt happens before its delay has passed", () =>
      Effect.gen(function*() {
        const { attempt, count } = yield* recorder((n) => new Boom({ attempt: n }))
        const fiber = yield* Effect.fork(
          Retry.retry(options)(attempt).pipe(Effect.withRandom(Random.fixed([1])))
        )
        yield* settle
        expect(yield* count).toBe(1)
        yield* TestClock.adjust("99 millis")
        expect(yield* count).toBe(1)
        yield* TestClock.adjust("1 millis")
        expect(yield* count).toBe(2)
        yield* TestClock.adjust("199 millis")
        expect(yield* count).toBe(2)
        yield* TestClock.adjust("1 millis")
        expect(yield* count).toBe(3)
        yield* Fiber.interrupt(fiber)
      }))
  })

  describe("Retry-After", () => {
    it.effect("a retryAfter within maxRetryAfter is waited exactly", () =>
      Effect.gen(function*() {
        const { attempt, count, times } = yield* recorder((n) =>
          new Limited({ attempt: n, retryAfter: Duration.seconds(3) })
        )
        const fiber = yield* Effect.fork(
          Retry.retry({ maxRetries: 1, baseDelay: "1 millis", maxRetryAfter: "10 seconds" })(attempt)
        )
        yield* settle
        expect(yield* count).toBe(1)
        yield* TestClock.adjust("2999 millis")
        expect(yield* count).toBe(1)
        yield* TestClock.adjust("1 millis")
        expect(yield* count).toBe(2)
        const error = yield* Effect.flip(Fiber.join(fiber))
        expect(error.attempt).toBe(2)
        expect(yield* Ref.get(times)).toEqual([0, 3000])
      }))

    it.effect("a retryAfter equal to maxRetryAfter is still obeyed", () =>
      Effect.gen(function*() {
        const { attempt, times } = yield* recorder((n) => new Limited({ attempt: n, retryAfter: Duration.seconds(10) }))
        const fiber = yield* Effect.fork(Retry.retry({ maxRetries: 2, maxRetryAfter: "10 seconds" })(attempt))
        yield* TestClock.adjust("1 minute")
        yield* Effect.flip(Fiber.join(fiber))
        expect(yield* Ref.get(times)).toEqual([0, 10_000, 20_000])
      }))

    it.effect("a retryAfter beyond maxRetryAfter stops at once, without sleeping", () =>
      Effect.gen(function*() {
        const { attempt, count } = yield* recorder((n) =>
          new Limited({ attempt: n, retryAfter: Duration.seconds(11) })
        )
        const fiber = yield* Effect.fork(
          Retry.retry({ maxRetries: 5, maxRetryAfter: "10 seconds" })(attempt)
        )
        yield* settle
        // Done without the clock having moved at all.
        const exit = yield* Fiber.poll(fiber)
        expect(Option.isSome(exit)).toBe(true)
        expect(yield* Clock.currentTimeMillis).toBe(0)
        expect(yield* count).toBe(1)
        const error = yield* Effect.flip(Fiber.join(fiber))
        expect(error.attempt).toBe(1)
        expect(Duration.toMillis(error.retryAfter)).toBe(11_000)
      }))

    it.effect("a custom retryAfter extractor is used", () =>
      Effect.gen(function*() {
        const { attempt, times } = yield* recorder((n) => new Boom({ attempt: n }))
        const fiber = yield* Effect.fork(
          Retry.retry({ maxRetries: 2, retryAfter: () => Duration.millis(1234) })(attempt)
        )
        yield* TestClock.adjust("1 minute")
        yield* Effect.flip(Fiber.join(fiber))
        expect(yield* Ref.get(times)).toEqual([0, 1234, 2468])
      }))

    it("retryAfterField reads only a Duration `retryAfter`", () => {
      expect(Retry.retryAfterField({ retryAfter: Duration.seconds(2) })).toEqual(Duration.seconds(2))
      expect(Retry.retryAfterField({ retryAfter: 2000 })).toBeUndefined()
      expect(Retry.retryAfterField(new Error("x"))).toBeUndefined()
      expect(Retry.retryAfterField(null)).toBeUndefined()
      expect(Retry.retryAfterField("retryAfter")).toBeUndefined()
    })
  })

  describe("deadline", () => {
    it.effect("a retry whose delay would pass the deadline is not taken", () =>
      Effect.gen(function*() {
        const { attempt, count } = yield* recorder((n) => new Boom({ attempt: n }))
        // With the random draw at its top the first delay is 2 s, past the 1 s deadline.
        const fiber = yield* Effect.fork(
          Retry.retry({ maxRetries: 3, baseDelay: "2 seconds", maxDelay: "10 seconds" })(attempt).pipe(
            Timeout.withDeadline("1 second"),
            Effect.withRandom(Random.fixed([1]))
          )
        )
        yield* settle
        const exit = yield* Fiber.poll(fiber)
        expect(Option.isSome(exit)).toBe(true)
        expect(yield* Clock.currentTimeMillis).toBe(0)
        expect(yield* count).toBe(1)
        const error = yield* Effect.flip(Fiber.join(fiber))
        expect(error).toEqual(new Boom({ attempt: 1 }))
      }))

    it.effect("a Retry-After of exactly the time left is not taken either", () =>
      Effect.gen(function*() {
        const { attempt, count } = yield* recorder((n) => new Limited({ attempt: n, retryAfter: Duration.seconds(1) }))
        const fiber = yield* Effect.fork(
          Retry.retry({ maxRetries: 3 })(attempt).pipe(Timeout.withDeadline("1 second"))
        )
        yield* settle
        expect(Option.isSome(yield* Fiber.poll(fiber))).toBe(true)
        expect(yield* count).toBe(1)
        const error = yield* Effect.flip(Fiber.join(fiber))
        expect(error._tag).toBe("Limited")
      }))

    it.effect("retries that fit are taken; the one that would not fit ends them, before the deadline", () =>
      Effect.gen(function*() {
        const { attempt, times } = yield* recorder((n) =>
          new Limited({ attempt: n, retryAfter: Duration.millis(400) })
        )
        const fiber = yield* Effect.fork(
          Retry.retry({ maxRetries: 10 })(attempt).pipe(Timeout.withDeadline("1 second"))
        )
        yield* TestClock.adjust("800 millis")
        // Attempts at 0, 400 and 800; at 800 only 200 ms are left, so no
        // fourth attempt: the last error comes back, before the deadline.
        const exit = yield* Fiber.poll(fiber)
        expect(Option.isSome(exit)).toBe(true)
        expect(yield* Ref.get(times)).toEqual([0, 400, 800])
        const error = yield* Effect.flip(Fiber.join(fiber))
        expect(error).not.toBeInstanceOf(Timeout.DeadlineExceeded)
        expect(error).toEqual(new Limited({ attempt: 3, retryAfter: Duration.millis(400) }))
      }))

    it.effect("without a deadline the same retries run to maxRetries", () =>
      Effect.gen(function*() {
        const { attempt, count } = yield* recorder((n) =>
          new Limited({ attempt: n, retryAfter: Duration.millis(400) })
        )
        const fiber = yield* Effect.fork(Retry.retry({ maxRetries: 4 })(attempt))
        yield* TestClock.adjust("1 minute")
        yield* Effect.flip(Fiber.join(fiber))
        expect(yield* count).toBe(5)
      }))
  })
})

describe("parseRetryAfter", () => {
  const now = Date.parse("Wed, 21 Oct 2015 07:28:00 GMT")

  it("reads delay-seconds", () => {
    expect(millis(Retry.parseRetryAfter("5", now))).toBe(5000)
    expect(millis(Retry.parseRetryAfter(" 5 ", now))).toBe(5000)
    expect(millis(Retry.parseRetryAfter("0", now))).toBe(0)
  })

  it("reads fractional seconds", () => {
    expect(millis(Retry.parseRetryAfter("1.5", now))).toBe(1500)
  })

  it("reads an HTTP date against now", () => {
    const at = new Date(now + 30_000).toUTCString()
    expect(at).toBe("Wed, 21 Oct 2015 07:28:30 GMT")
    expect(millis(Retry.parseRetryAfter(at, now))).toBe(30_000)
  })

  it("a date in the past is a zero wait", () => {
    expect(millis(Retry.parseRetryAfter("Wed, 21 Oct 2015 07:27:00 GMT", now))).toBe(0)
  })

  it("anything else is None", () => {
    for (const garbage of ["soon", "", "-5", "5s", "1e3", "Wed, 21 Oct 2015", "NaN"]) {
      expect(Option.isNone(Retry.parseRetryAfter(garbage, now))).toBe(true)
    }
  })
})

describe("retryAfterFromHeaders", () => {
  it.effect("retry-after-ms wins over retry-after", () =>
    Effect.gen(function*() {
      const d = yield* Retry.retryAfterFromHeaders({ "retry-after-ms": "1500", "retry-after": "60" })
      expect(millis(d)).toBe(1500)
    }))

  it.effect("falls back to retry-after, in seconds", () =>
    Effect.gen(function*() {
      expect(millis(yield* Retry.retryAfterFromHeaders({ "retry-after": "7" }))).toBe(7000)
      // An unusable retry-after-ms is ignored.
      expect(millis(yield* Retry.retryAfterFromHeaders({ "retry-after-ms": "soon", "retry-after": "7" }))).toBe(7000)
    }))

  it.effect("no header, or an unusable one, is None", () =>
    Effect.gen(function*() {
      expect(Option.isNone(yield* Retry.retryAfterFromHeaders({}))).toBe(true)
      expect(Option.isNone(yield* Retry.retryAfterFromHeaders({ "retry-after": "later" }))).toBe(true)
    }))

  it.effect("an HTTP date is measured against the Clock (TestClock)", () =>
    Effect.gen(function*() {
      const now = Date.parse("Wed, 21 Oct 2015 07:28:00 GMT")
      yield* TestClock.setTime(now)
      const d = yield* Retry.retryAfterFromHeaders({ "retry-after": "Wed, 21 Oct 2015 07:28:45 GMT" })
      expect(millis(d)).toBe(45_000)
      yield* TestClock.adjust("15 seconds")
      const later = yield* Retry.retryAfterFromHeaders({ "retry-after": "Wed, 21 Oct 2015 07:28:45 GMT" })
      expect(millis(later)).toBe(30_000)
    }))
})

describe("Retry service", () => {
  it.effect("Retry.layer provides a Retry whose retry behaves like Retry.retry", () =>
    Effect.gen(function*() {
      const service = yield* Retry.Retry
      expect(service.options.maxRetries).toBe(3)
      const { attempt, times } = yield* recorder((n) => new Boom({ attempt: n }))
      const fiber = yield* Effect.fork(service.retry(attempt).pipe(Effect.withRandom(Random.fixed([1]))))
      yield* TestClock.adjust("1 minute")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error.attempt).toBe(4)
      // Same schedule as Retry.retry with these options: caps 100, 200, 300 (maxDelay).
      expect(delaysOf(yield* Ref.get(times))).toEqual([100, 200, 300])
    }).pipe(Effect.provide(Retry.layer({ maxRetries: 3, baseDelay: "100 millis", maxDelay: "300 millis" }))))

  it.effect("Retry.make carries its options and honours isRetryable", () =>
    Effect.gen(function*() {
      const service = yield* Retry.make({ maxRetries: 3, isRetryable: () => false })
      const { attempt, count } = yield* recorder((n) => new Boom({ attempt: n }))
      const exit = yield* Effect.exit(service.retry(attempt))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(yield* count).toBe(1)
    }))
})
