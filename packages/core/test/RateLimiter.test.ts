import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as TestClock from "effect/TestClock"
import * as RateLimiter from "../src/RateLimiter.js"

// ---------------------------------------------------------------------------
// Helpers

type Outcome = Either.Either<RateLimiter.Permit, RateLimiter.RateLimited | RateLimiter.RateLimiterStoreError>

const millis = (d: Duration.Duration): number => Duration.toMillis(d)

const advance = (ms: number) => TestClock.adjust(Duration.millis(ms))

const now = Effect.clockWith((clock) => clock.currentTimeMillis)

/** Asserts a success and returns the permit. */
const expectPermit = (outcome: Outcome): RateLimiter.Permit => {
  if (Either.isLeft(outcome)) throw new Error(`expected a permit, got ${outcome.left._tag}: ${outcome.left.message}`)
  return outcome.right
}

/** Asserts a `RateLimited` refusal and returns it. */
const expectLimited = (outcome: Outcome): RateLimiter.RateLimited => {
  if (Either.isRight(outcome)) {
    throw new Error(`expected RateLimited, got a permit (remaining ${outcome.right.remaining})`)
  }
  const error = outcome.left
  if (error._tag !== "RateLimited") throw new Error(`expected RateLimited, got ${error._tag}`)
  return error
}

const attempt = (limiter: RateLimiter.RateLimiter, key: string, cost?: number) =>
  Effect.either(cost === undefined ? limiter.acquire(key) : limiter.acquire(key, cost))

/**
 * Forks `self` and yields until it has either finished or registered a sleep
 * with the TestClock, so that the rate limiter's decision is taken at the
 * current test time before the caller moves the clock.
 */
const forkSettled = <A, E>(self: Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const sleepsBefore = Chunk.size(yield* TestClock.sleeps())
    const fiber = yield* Effect.fork(self)
    for (let i = 0; i < 1000; i++) {
      if (Option.isSome(yield* Fiber.poll(fiber))) return fiber
      if (Chunk.size(yield* TestClock.sleeps()) > sleepsBefore) return fiber
      yield* Effect.yieldNow()
    }
    return yield* Effect.dieMessage("forked acquire neither finished nor slept")
  })

/** The outcome of a fiber that must already have finished (without the clock moving). */
const expectDone = (fiber: Fiber.Fiber<Outcome>) =>
  Effect.flatMap(Fiber.poll(fiber), (exit) => {
    if (Option.isNone(exit)) return Effect.dieMessage("expected the call to have finished at once")
    return exit.value
  })

// Admitted (time, cost) pairs, used by the invariant checks.
interface Admitted {
  readonly time: number
  readonly cost: number
}

/** The largest cost admitted in any half-open span [t, t + w) starting at an admitted time. */
const maxInAnyWindow = (admitted: ReadonlyArray<Admitted>, w: number): { readonly start: number; readonly cost: number } => {
  let worst = { start: 0, cost: 0 }
  for (const a of admitted) {
    let sum = 0
    for (const b of admitted) if (b.time >= a.time && b.time < a.time + w) sum += b.cost
    if (sum > worst.cost) worst = { start: a.time, cost: sum }
  }
  return worst
}

/** Cost admitted in the half-open window (t - w, t]: what a sliding window counts at time t. */
const usedAt = (admitted: ReadonlyArray<Admitted>, t: number, w: number): number => {
  let sum = 0
  for (const a of admitted) if (a.time > t - w && a.time <= t) sum += a.cost
  return sum
}

const provideStore = Effect.provide(RateLimiter.layerStoreMemory)

// ---------------------------------------------------------------------------

describe("RateLimiter", () => {
  describe("token bucket, fail mode", () => {
    it.effect("admits `limit` calls at once, then refuses with retryAfter = window / limit", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({ name: "rpm", limit: 5, window: "10 seconds" })
        for (let i = 0; i < 5; i++) expectPermit(yield* attempt(limiter, "a"))
        const refused = expectLimited(yield* attempt(limiter, "a"))
        expect(millis(refused.retryAfter)).toBe(2000)
        expect(refused.limiter).toBe("rpm")
        expect(refused.key).toBe("a")
        expect(refused.limit).toBe(5)

        // One millisecond early is still too early; exactly retryAfter is enough for one call, not two.
        yield* advance(1999)
        expect(millis(expectLimited(yield* attempt(limiter, "a")).retryAfter)).toBe(1)
        yield* advance(1)
        const permit = expectPermit(yield* attempt(limiter, "a"))
        expect(millis(permit.waited)).toBe(0)
        expect(millis(expectLimited(yield* attempt(limiter, "a")).retryAfter)).toBe(2000)
      }).pipe(provideStore))

    it.effect("refills evenly up to, but not beyond, the limit", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({ name: "rpm", limit: 5, window: "10 seconds" })
        for (let i = 0; i < 5; i++) expectPermit(yield* attempt(limiter, "a"))
        yield* advance(4000) // two tokens
        expectPermit(yield* attempt(limiter, "a"))
        expectPermit(yield* attempt(limiter, "a"))
        expectLimited(yield* attempt(limiter, "a"))
        yield* advance(60_000) // far more than a window: the bucket is only full, not overfull
        for (let i = 0; i < 5; i++) expectPermit(yield* attempt(limiter, "a"))
        expectLimited(yield* attempt(limiter, "a"))
      }).pipe(provideStore))

    it.effect("keys are independent", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({ name: "rpm", limit: 2, window: "1 minute" })
        expectPermit(yield* attempt(limiter, "a"))
        expectPermit(yield* attempt(limiter, "a"))
        expectLimited(yield* attempt(limiter, "a"))
        expectPermit(yield* attempt(limiter, "b"))
        expectPermit(yield* attempt(limiter, "b"))
        expectLimited(yield* attempt(limiter, "b"))
        expectLimited(yield* attempt(limiter, "a"))
      }).pipe(provideStore))

    it.effect("limiters with different names on the same store and key are independent", () =>
      Effect.gen(function*() {
        const first = yield* RateLimiter.make({ name: "first", limit: 1, window: "1 minute" })
        const second = yield* RateLimiter.make({ name: "second", limit: 1, window: "1 minute" })
        expectPermit(yield* attempt(first, "k"))
        expectLimited(yield* attempt(first, "k"))
        expectPermit(yield* attempt(second, "k"))
        expectLimited(yield* attempt(second, "k"))
      }).pipe(provideStore))

    it.effect("limiters sharing a name share their counters (the store is the point of sharing)", () =>
      Effect.gen(function*() {
        const replica1 = yield* RateLimiter.make({ name: "shared", limit: 2, window: "1 minute" })
        const replica2 = yield* RateLimiter.make({ name: "shared", limit: 2, window: "1 minute" })
        expectPermit(yield* attempt(replica1, "k"))
        expectPermit(yield* attempt(replica2, "k"))
        expectLimited(yield* attempt(replica1, "k"))
        expectLimited(yield* attempt(replica2, "k"))
      }).pipe(provideStore))

    it.effect("a name and key cannot be spelled to collide with another limiter's name and key", () =>
      Effect.gen(function*() {
        // "gw" + "tpm:alice" and "gw:tpm" + "alice" must not share a counter.
        const gateway = yield* RateLimiter.make({ name: "gw", limit: 1, window: "1 minute" })
        const tpm = yield* RateLimiter.make({ name: "gw:tpm", limit: 1, window: "1 minute" })
        expectPermit(yield* attempt(gateway, "tpm:alice"))
        expectLimited(yield* attempt(gateway, "tpm:alice"))
        expectPermit(yield* attempt(tpm, "alice"))
      }).pipe(provideStore))
  })

  describe("cost weighting", () => {
    it.effect("tokens per minute: 600 fits in 1000, 500 more waits for 100 tokens (6 s)", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({ name: "tpm", limit: 1000, window: "1 minute" })
        const permit = expectPermit(yield* attempt(limiter, "acct", 600))
        expect(permit.remaining).toBe(400)
        const refused = expectLimited(yield* attempt(limiter, "acct", 500))
        // 100 tokens missing at 1000 / 60000 per ms = 6000 ms.
        expect(millis(refused.retryAfter)).toBe(6000)
        // The refusal spent nothing: a cost-400 call still fits now.
        const small = expectPermit(yield* attempt(limiter, "acct", 400))
        expect(small.remaining).toBe(0)
      }).pipe(provideStore))

    it.effect("the refused cost-500 call fits once its retryAfter has passed", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({ name: "tpm", limit: 1000, window: "1 minute" })
        expectPermit(yield* attempt(limiter, "acct", 600))
        const refused = expectLimited(yield* attempt(limiter, "acct", 500))
        yield* advance(millis(refused.retryAfter) - 1)
        expectLimited(yield* attempt(limiter, "acct", 500))
        yield* advance(1)
        expectPermit(yield* attempt(limiter, "acct", 500))
      }).pipe(provideStore))

    it.effect("a cost above the limit always fails, whatever the time (token bucket)", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({ name: "tpm", limit: 1000, window: "1 minute" })
        expectLimited(yield* attempt(limiter, "acct", 1001))
        yield* advance(3_600_000)
        expectLimited(yield* attempt(limiter, "acct", 1001))
        // It spent nothing: the whole limit is still there.
        expect(expectPermit(yield* attempt(limiter, "acct", 1000)).remaining).toBe(0)
      }).pipe(provideStore))

    it.effect("a cost above the limit always fails, whatever the time (sliding window)", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "tpm",
          algorithm: "sliding-window",
          limit: 1000,
          window: "1 minute"
        })
        expectLimited(yield* attempt(limiter, "acct", 1001))
        yield* advance(3_600_000)
        expectLimited(yield* attempt(limiter, "acct", 1001))
        expect(expectPermit(yield* attempt(limiter, "acct", 1000)).remaining).toBe(0)
      }).pipe(provideStore))

    it.effect("a cost above the limit always fails in wait mode too, without sleeping", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "tpm",
          limit: 1000,
          window: "1 minute",
          onExceeded: "wait"
        })
        const fiber = yield* forkSettled(attempt(limiter, "acct", 1001))
        expectLimited(yield* expectDone(fiber))
      }).pipe(provideStore))
  })

  describe("sliding window, fail mode", () => {
    it.effect("refuses until the oldest call leaves the window, and admits exactly then", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "sw",
          algorithm: "sliding-window",
          limit: 3,
          window: "10 seconds"
        })
        const admitted: Array<Admitted> = []
        const admit = Effect.gen(function*() {
          expectPermit(yield* attempt(limiter, "k"))
          admitted.push({ time: yield* now, cost: 1 })
        })
        yield* admit // t = 0
        yield* advance(2000)
        yield* admit // t = 2 s
        yield* advance(3000)
        yield* admit // t = 5 s

        // At 5 s the call at 0 s leaves the window at 10 s.
        expect(millis(expectLimited(yield* attempt(limiter, "k")).retryAfter)).toBe(5000)
        // Unlike a token bucket, nothing comes back before then (a bucket would have refilled 1.5 calls).
        yield* advance(4999)
        expect(millis(expectLimited(yield* attempt(limiter, "k")).retryAfter)).toBe(1)
        yield* advance(1)
        yield* admit // t = 10 s
        // Next: the call at 2 s leaves at 12 s.
        expect(millis(expectLimited(yield* attempt(limiter, "k")).retryAfter)).toBe(2000)
        yield* advance(2000)
        yield* admit // t = 12 s
        expectLimited(yield* attempt(limiter, "k"))

        expect(admitted.map((a) => a.time)).toEqual([0, 2000, 5000, 10_000, 12_000])
        expect(maxInAnyWindow(admitted, 10_000).cost).toBeLessThanOrEqual(3)
      }).pipe(provideStore))

    it.effect("with costs, retryAfter is when enough of the oldest cost has left", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "sw",
          algorithm: "sliding-window",
          limit: 10,
          window: "10 seconds"
        })
        expectPermit(yield* attempt(limiter, "k", 3)) // t = 0
        yield* advance(1000)
        expectPermit(yield* attempt(limiter, "k", 3)) // t = 1 s
        yield* advance(1000)
        expect(expectPermit(yield* attempt(limiter, "k", 3)).remaining).toBe(1) // t = 2 s
        // Cost 5 needs 4 more: the 0 s entry (3) is not enough, the 1 s entry too makes 7 free.
        expect(millis(expectLimited(yield* attempt(limiter, "k", 5)).retryAfter)).toBe(9000)
        // Cost 1 still fits now: the refusal reserved nothing.
        expect(expectPermit(yield* attempt(limiter, "k", 1)).remaining).toBe(0)
      }).pipe(provideStore))
  })

  describe("wait mode", () => {
    it.effect("token bucket: a call over the limit sleeps for its slot and reports the wait", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "wait",
          limit: 2,
          window: "10 seconds",
          onExceeded: "wait",
          maxWait: "5 seconds"
        })
        expect(millis(expectPermit(yield* attempt(limiter, "k")).waited)).toBe(0)
        expect(millis(expectPermit(yield* attempt(limiter, "k")).waited)).toBe(0)

        const fiber = yield* forkSettled(attempt(limiter, "k"))
        expect(yield* Fiber.poll(fiber)).toEqual(Option.none())
        yield* advance(4999)
        expect(yield* Fiber.poll(fiber)).toEqual(Option.none())
        yield* advance(1)
        const permit = expectPermit(yield* Fiber.join(fiber))
        expect(millis(permit.waited)).toBe(5000)
        expect(permit.remaining).toBe(0)
      }).pipe(provideStore))

    it.effect("sliding window: a call over the limit sleeps until the oldest call leaves", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "wait",
          algorithm: "sliding-window",
          limit: 2,
          window: "10 seconds",
          onExceeded: "wait",
          maxWait: "5 seconds"
        })
        expectPermit(yield* attempt(limiter, "k")) // t = 0
        yield* advance(6000)
        expectPermit(yield* attempt(limiter, "k")) // t = 6 s

        const fiber = yield* forkSettled(attempt(limiter, "k"))
        yield* advance(3999)
        expect(yield* Fiber.poll(fiber)).toEqual(Option.none())
        yield* advance(1)
        const permit = expectPermit(yield* Fiber.join(fiber))
        expect(millis(permit.waited)).toBe(4000)
      }).pipe(provideStore))

    it.effect("token bucket: a wait beyond maxWait fails at once and consumes nothing", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "wait",
          limit: 10,
          window: "10 seconds", // one token per second
          onExceeded: "wait",
          maxWait: "5 seconds"
        })
        expectPermit(yield* attempt(limiter, "k", 10))

        // Cost 6 would wait 6 s > 5 s: refused without the clock moving.
        const tooLong = yield* forkSettled(attempt(limiter, "k", 6))
        expect(millis(expectLimited(yield* expectDone(tooLong)).retryAfter)).toBe(6000)

        // Cost 3 gets the slot at 3 s; had cost 6 been reserved it would be at 9 s (and over maxWait).
        const fits = yield* forkSettled(attempt(limiter, "k", 3))
        yield* advance(2999)
        expect(yield* Fiber.poll(fits)).toEqual(Option.none())
        yield* advance(1)
        expect(millis(expectPermit(yield* Fiber.join(fits)).waited)).toBe(3000)
      }).pipe(provideStore))

    it.effect("sliding window: a wait beyond maxWait fails at once and consumes nothing", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "wait",
          algorithm: "sliding-window",
          limit: 3,
          window: "10 seconds",
          onExceeded: "wait",
          maxWait: "5 seconds"
        })
        expectPermit(yield* attempt(limiter, "k")) // t = 0
        yield* advance(4000)
        expectPermit(yield* attempt(limiter, "k")) // t = 4 s
        yield* advance(2000)
        expectPermit(yield* attempt(limiter, "k")) // t = 6 s

        // Cost 2 needs the 0 s and 4 s calls gone: at 14 s, a wait of 8 s > 5 s.
        const tooLong = yield* forkSettled(attempt(limiter, "k", 2))
        expect(millis(expectLimited(yield* expectDone(tooLong)).retryAfter)).toBe(8000)

        // Cost 1 gets the slot at 10 s (a wait of 4 s), not after a phantom reservation at 14 s.
        const fits = yield* forkSettled(attempt(limiter, "k", 1))
        yield* advance(3999)
        expect(yield* Fiber.poll(fits)).toEqual(Option.none())
        yield* advance(1)
        expect(millis(expectPermit(yield* Fiber.join(fits)).waited)).toBe(4000)
      }).pipe(provideStore))

    it.effect("reservations queue: consecutive waiters get consecutive slots", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "wait",
          limit: 1,
          window: "1 second",
          onExceeded: "wait",
          maxWait: "2500 millis"
        })
        expectPermit(yield* attempt(limiter, "k"))
        const second = yield* forkSettled(attempt(limiter, "k"))
        const third = yield* forkSettled(attempt(limiter, "k"))
        // The fourth would be at 3 s > 2.5 s.
        const fourth = yield* forkSettled(attempt(limiter, "k"))
        expect(millis(expectLimited(yield* expectDone(fourth)).retryAfter)).toBe(3000)
        yield* advance(1000)
        expect(millis(expectPermit(yield* Fiber.join(second)).waited)).toBe(1000)
        expect(yield* Fiber.poll(third)).toEqual(Option.none())
        yield* advance(1000)
        expect(millis(expectPermit(yield* Fiber.join(third)).waited)).toBe(2000)
      }).pipe(provideStore))

    it.effect("token bucket: a bucket in debt is not forgotten by the idle-key sweep", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "wait",
          limit: 2,
          window: "1 second",
          onExceeded: "wait",
          maxWait: "5 seconds"
        })
        expectPermit(yield* attempt(limiter, "victim", 2))
        // Reserve the next two tokens: the bucket is at -2, repaid at 1 s.
        const reserved = yield* forkSettled(attempt(limiter, "victim", 2))
        // Enough other keys to make the store sweep idle keys on its next call.
        const other = yield* RateLimiter.make({ name: "other", limit: 1, window: "1 second" })
        for (let i = 0; i < 10_000; i++) expectPermit(yield* attempt(other, `key-${i}`))
        yield* advance(1000)
        expect(millis(expectPermit(yield* Fiber.join(reserved)).waited)).toBe(1000)
        // At 1 s the bucket is at 0 (the reservation just ran), so one more token is half a second away.
        const next = yield* forkSettled(attempt(limiter, "victim", 1))
        yield* advance(499)
        expect(yield* Fiber.poll(next)).toEqual(Option.none())
        yield* advance(1)
        expect(millis(expectPermit(yield* Fiber.join(next)).waited)).toBe(500)
      }).pipe(provideStore))
  })

  describe("permits", () => {
    it.effect("remaining decreases with each call (token bucket)", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({ name: "r", limit: 3, window: "1 minute" })
        const remaining: Array<number> = []
        for (let i = 0; i < 3; i++) remaining.push(expectPermit(yield* attempt(limiter, "k")).remaining)
        expect(remaining).toEqual([2, 1, 0])
        const refused = yield* attempt(limiter, "k")
        expectLimited(refused)
      }).pipe(provideStore))

    it.effect("remaining decreases with each call (sliding window, with costs)", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "r",
          algorithm: "sliding-window",
          limit: 10,
          window: "1 minute"
        })
        const remaining: Array<number> = []
        for (const cost of [1, 4, 2, 3]) remaining.push(expectPermit(yield* attempt(limiter, "k", cost)).remaining)
        expect(remaining).toEqual([9, 5, 3, 0])
      }).pipe(provideStore))

    it.effect("sliding window, a reserved slot: the reservations of the instant that makes room all leave, so remaining counts none of them", () =>
      Effect.gen(function*() {
        const store = yield* RateLimiter.makeStoreMemory
        const req = { key: "k", algorithm: "sliding-window", limit: 3, windowMillis: 1000, cost: 1, maxWaitMillis: 0 } as const
        // Two at t = 0, one at t = 100: full.
        yield* store.acquire(req)
        yield* store.acquire(req)
        yield* TestClock.adjust(Duration.millis(100))
        yield* store.acquire(req)
        // Reserved at t = 1000, when both of t = 0 have left: the one of t = 100 and this one count.
        expect(yield* store.acquire({ ...req, maxWaitMillis: 5000 })).toEqual({ granted: true, waitMillis: 900, remaining: 1 })
        // Three at one instant, then a fourth: at t = 2000 all three have left.
        const other = { ...req, key: "other" }
        for (let i = 0; i < 3; i++) yield* store.acquire(other)
        expect(yield* store.acquire({ ...other, maxWaitMillis: 5000 })).toEqual({ granted: true, waitMillis: 1000, remaining: 2 })
      }))

    it.effect("withPermit runs the effect only when admitted", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({ name: "wp", limit: 1, window: "1 minute" })
        const runs = yield* Ref.make(0)
        const work = Effect.as(Ref.update(runs, (n) => n + 1), "done")

        expect(yield* limiter.withPermit("k")(work)).toBe("done")
        expect(yield* Ref.get(runs)).toBe(1)

        const refused = yield* Effect.either(limiter.withPermit("k")(work))
        expect(Either.isLeft(refused) && refused.left._tag === "RateLimited").toBe(true)
        expect(yield* Ref.get(runs)).toBe(1)

        // The cost is passed through: another key, cost 2 > limit 1, is refused too.
        const tooCostly = yield* Effect.either(limiter.withPermit("other", 2)(work))
        expect(Either.isLeft(tooCostly)).toBe(true)
        expect(yield* Ref.get(runs)).toBe(1)
      }).pipe(provideStore))

    it.effect("withPermit in wait mode runs the effect after the wait", () =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "wp",
          limit: 1,
          window: "1 second",
          onExceeded: "wait",
          maxWait: "5 seconds"
        })
        const runs = yield* Ref.make(0)
        const work = Ref.updateAndGet(runs, (n) => n + 1)
        expect(yield* limiter.withPermit("k")(work)).toBe(1)
        const fiber = yield* forkSettled(limiter.withPermit("k")(work))
        yield* advance(999)
        expect(yield* Ref.get(runs)).toBe(1)
        yield* advance(1)
        expect(yield* Fiber.join(fiber)).toBe(2)
      }).pipe(provideStore))
  })

  // -------------------------------------------------------------------------
  // Properties

  const request = FastCheck.record({
    // Many zero gaps (bursts), some short, some longer than a small window.
    gap: FastCheck.oneof(FastCheck.constant(0), FastCheck.integer({ min: 0, max: 500 }), FastCheck.integer({ min: 0, max: 6000 })),
    cost: FastCheck.integer({ min: 1, max: 5 }),
    // After a refusal, check that retryAfter is exact: refused 1 ms before, admitted at it.
    retry: FastCheck.boolean()
  })
  const shape = {
    limit: FastCheck.integer({ min: 1, max: 20 }),
    window: FastCheck.integer({ min: 1000, max: 10_000 }),
    requests: FastCheck.array(request, { minLength: 1, maxLength: 50 })
  }

  /** Runs a fail-mode scenario, checking retryAfter exactness, and returns what was admitted. */
  const runFailMode = (
    algorithm: RateLimiter.Algorithm,
    limit: number,
    window: number,
    requests: ReadonlyArray<{ readonly gap: number; readonly cost: number; readonly retry: boolean }>,
    onRefused: (admitted: ReadonlyArray<Admitted>, t: number, cost: number, retryAfter: number) => void
  ) =>
    Effect.gen(function*() {
      const limiter = yield* RateLimiter.make({ name: "prop", algorithm, limit, window: Duration.millis(window) })
      const admitted: Array<Admitted> = []
      for (const { cost, gap, retry } of requests) {
        if (gap > 0) yield* advance(gap)
        const t = yield* now
        const outcome = yield* attempt(limiter, "k", cost)
        if (Either.isRight(outcome)) {
          admitted.push({ time: t, cost })
          continue
        }
        const retryAfter = millis(expectLimited(outcome).retryAfter)
        if (cost > limit) continue
        expect(retryAfter).toBeGreaterThan(0)
        onRefused(admitted, t, cost, retryAfter)
        if (!retry) continue
        if (retryAfter > 1) {
          yield* advance(retryAfter - 1)
          expectLimited(yield* attempt(limiter, "k", cost))
          yield* advance(1)
        } else {
          yield* advance(retryAfter)
        }
        expectPermit(yield* attempt(limiter, "k", cost))
        admitted.push({ time: yield* now, cost })
      }
      return admitted
    }).pipe(provideStore)

  it.effect.prop(
    "sliding window (fail): never more than limit in any window; refusals are justified and retryAfter exact",
    shape,
    ({ limit, requests, window }) =>
      Effect.gen(function*() {
        const admitted = yield* runFailMode("sliding-window", limit, window, requests, (admitted, t, cost, retryAfter) => {
          // Refused only if it did not fit: what the window (t - w, t] holds plus this cost is over the limit.
          expect(usedAt(admitted, t, window) + cost).toBeGreaterThan(limit)
          // retryAfter is the first moment it fits.
          expect(usedAt(admitted, t + retryAfter, window) + cost).toBeLessThanOrEqual(limit)
          expect(usedAt(admitted, t + retryAfter - 1, window) + cost).toBeGreaterThan(limit)
        })
        expect(maxInAnyWindow(admitted, window).cost).toBeLessThanOrEqual(limit)
      }),
    { timeout: 60_000, fastCheck: { numRuns: 60 } }
  )

  it.effect.prop(
    "token bucket (fail): admitted cost over any span T is at most limit + T * limit / window",
    shape,
    ({ limit, requests, window }) =>
      Effect.gen(function*() {
        const admitted = yield* runFailMode("token-bucket", limit, window, requests, () => {})
        for (let i = 0; i < admitted.length; i++) {
          let sum = 0
          for (let j = i; j < admitted.length; j++) {
            sum += admitted[j]!.cost
            const span = admitted[j]!.time - admitted[i]!.time
            // sum <= limit + span * limit / window, multiplied out to stay in exact integers.
            expect(sum * window).toBeLessThanOrEqual(limit * window + span * limit)
          }
        }
      }),
    { timeout: 60_000, fastCheck: { numRuns: 60 } }
  )

  it.effect.prop(
    "sliding window (wait): effective times never put more than limit in any window; slots are the earliest FIFO ones",
    { ...shape, maxWait: FastCheck.integer({ min: 0, max: 20_000 }) },
    ({ limit, maxWait, requests, window }) =>
      Effect.gen(function*() {
        const limiter = yield* RateLimiter.make({
          name: "prop",
          algorithm: "sliding-window",
          limit,
          window: Duration.millis(window),
          onExceeded: "wait",
          maxWait: Duration.millis(maxWait)
        })
        // Admitted at their effective time (request time + waited), in reservation order.
        const admitted: Array<Admitted> = []
        const pending: Array<{
          readonly fiber: Fiber.RuntimeFiber<Outcome>
          readonly t: number
          readonly wait: number
          readonly cost: number
        }> = []
        for (const { cost, gap } of requests) {
          if (gap > 0) yield* advance(gap)
          const t = yield* now
          // The model: the earliest slot at or after both now and the last reservation where it fits.
          const last = admitted.length > 0 ? admitted[admitted.length - 1]!.time : t
          const start = Math.max(t, last)
          let slot = start
          if (usedAt(admitted, start, window) + cost > limit) {
            slot = Infinity
            for (const a of admitted) {
              const candidate = a.time + window
              if (candidate > start && usedAt(admitted, candidate, window) + cost <= limit) {
                slot = Math.min(slot, candidate)
              }
            }
          }
          const fiber = yield* forkSettled(attempt(limiter, "k", cost))
          if (cost > limit) {
            expectLimited(yield* expectDone(fiber))
            continue
          }
          expect(slot).toBeLessThan(Infinity)
          const modelWait = slot - t
          if (modelWait > maxWait) {
            // Refused at once, with the wait it would have needed.
            expect(millis(expectLimited(yield* expectDone(fiber)).retryAfter)).toBe(modelWait)
          } else {
            admitted.push({ time: slot, cost })
            pending.push({ fiber, t, wait: modelWait, cost })
          }
        }
        // Let every reservation run, then check what each permit reported.
        yield* advance(maxWait + 1)
        const effective: Array<Admitted> = []
        for (const { cost, fiber, t, wait } of pending) {
          const permit = expectPermit(yield* Fiber.join(fiber))
          expect(millis(permit.waited)).toBeLessThanOrEqual(maxWait)
          expect(millis(permit.waited)).toBe(wait)
          effective.push({ time: t + millis(permit.waited), cost })
        }
        // The invariant, on effective times as reported by the permits.
        expect(maxInAnyWindow(effective, window).cost).toBeLessThanOrEqual(limit)
      }).pipe(provideStore),
    { timeout: 60_000, fastCheck: { numRuns: 60 } }
  )
})
