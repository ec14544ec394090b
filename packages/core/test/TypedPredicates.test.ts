/**
 * Predicates over errors are typed by the errors they judge: `isFailure`
 * (CircuitBreaker) and `isRetryable` / `retryAfter` (Retry) take the effect's
 * error type, without casts. The type-level assertions are checked by `tsc`
 * (`npm test` runs `tsc -b`, which includes this file): an `@ts-expect-error`
 * that no longer errs, or an `expectTypeOf` that does not hold, fails the
 * build. The runtime assertions check that the typed predicates are the ones
 * consulted.
 */
import { describe, expect, expectTypeOf, it } from "@effect/vitest"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Ref from "effect/Ref"
import * as TestClock from "effect/TestClock"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Retry from "../src/Retry.js"

class Boom extends Data.TaggedError("Boom")<{ readonly code: number }> {}
class BadRequest extends Data.TaggedError("BadRequest")<{ readonly field: string }> {}
class Unrelated extends Data.TaggedError("Unrelated")<{}> {}
type MyError = Boom | BadRequest

/** A call that fails with each error of `errors` in turn, then succeeds; counts its runs. */
const calls = (errors: ReadonlyArray<MyError>) =>
  Effect.map(Ref.make(0), (runs) => ({
    runs,
    call: Effect.flatMap(Ref.getAndUpdate(runs, (n) => n + 1), (n): Effect.Effect<string, MyError> =>
      n < errors.length ? Effect.fail(errors[n]!) : Effect.succeed("ok"))
  }))

describe("CircuitBreaker: isFailure takes the error type", () => {
  it.scoped("a predicate over MyError, written without casts, is consulted", () =>
    Effect.gen(function*() {
      const breaker = yield* CircuitBreaker.make({
        name: "typed",
        failureThreshold: 2,
        isFailure: (e: MyError) => e._tag === "Boom" && e.code >= 500
      })
      expectTypeOf(breaker).toEqualTypeOf<CircuitBreaker.CircuitBreaker<MyError>>()
      const call: Effect.Effect<string, MyError> = Effect.fail(new BadRequest({ field: "model" }))
      const protectedCall = breaker.protect(call)
      // The error type flows through: the caller's errors, plus CircuitOpen.
      expectTypeOf(protectedCall).toEqualTypeOf<Effect.Effect<string, MyError | CircuitBreaker.CircuitOpen>>()
      // A narrower error type is kept as it is.
      expectTypeOf(breaker.protect(Effect.fail(new Boom({ code: 503 }))))
        .toEqualTypeOf<Effect.Effect<never, Boom | CircuitBreaker.CircuitOpen>>()
      // @ts-expect-error a breaker that judges MyError cannot protect a call failing with Unrelated
      breaker.protect(Effect.fail(new Unrelated()))
      // The permit reports errors of the same type.
      expectTypeOf<Parameters<CircuitBreaker.Permit<MyError>["onError"]>[0]>().toEqualTypeOf<MyError>()

      for (let i = 0; i < 5; i++) yield* Effect.exit(breaker.protect(call))
      expect(yield* breaker.state).toBe("Closed") // 400s are neutral
      yield* Effect.exit(breaker.protect(Effect.fail(new Boom({ code: 404 }))))
      yield* Effect.exit(breaker.protect(Effect.fail(new Boom({ code: 404 }))))
      expect(yield* breaker.state).toBe("Closed")
      yield* Effect.exit(breaker.protect(Effect.fail(new Boom({ code: 502 }))))
      yield* Effect.exit(breaker.protect(Effect.fail(new Boom({ code: 503 }))))
      expect(yield* breaker.state).toBe("Open")
    }))

  it.scoped("an unannotated predicate still takes unknown, and the breaker protects any call", () =>
    Effect.gen(function*() {
      const breaker = yield* CircuitBreaker.make({ name: "untyped", isFailure: (e) => !(e instanceof BadRequest) })
      expectTypeOf(breaker).toEqualTypeOf<CircuitBreaker.CircuitBreaker>()
      expectTypeOf(breaker.protect(Effect.fail(new Unrelated())))
        .toEqualTypeOf<Effect.Effect<never, Unrelated | CircuitBreaker.CircuitOpen>>()
      const plain = yield* CircuitBreaker.make({ name: "plain" })
      expectTypeOf(plain).toEqualTypeOf<CircuitBreaker.CircuitBreaker<unknown>>()
      // The tag's service, built by `layer`, judges unknown errors.
      expectTypeOf<CircuitBreaker.CircuitBreaker>().toEqualTypeOf<CircuitBreaker.CircuitBreaker<unknown>>()
      expect(yield* Effect.exit(breaker.protect(Effect.fail(new Unrelated())))).toStrictEqual(Exit.fail(new Unrelated()))
    }))

  it("the type argument can be given instead of annotating the parameter", () => {
    const made = CircuitBreaker.make<MyError>({ name: "explicit", isFailure: (e) => e._tag !== "BadRequest" })
    expectTypeOf(made).toEqualTypeOf<Effect.Effect<CircuitBreaker.CircuitBreaker<MyError>, never, import("effect/Scope").Scope>>()
    // @ts-expect-error `_tag` narrowing only knows MyError's tags
    CircuitBreaker.make<MyError>({ name: "wrong", isFailure: (e) => e._tag === "Nope" })
    // @ts-expect-error a typed predicate cannot go into the tag's breaker, which judges unknown errors
    CircuitBreaker.layer({ name: "tagged", isFailure: (e: MyError) => e._tag === "Boom" })
    expect(Effect.isEffect(made)).toBe(true)
  })
})

describe("Retry: isRetryable and retryAfter take the error type", () => {
  it.effect("data-first: the predicate's parameter is the effect's error type", () =>
    Effect.gen(function*() {
      const { call, runs } = yield* calls([new Boom({ code: 503 }), new BadRequest({ field: "x" }), new Boom({ code: 503 })])
      const retried = Retry.retry(call, {
        maxRetries: 5,
        baseDelay: "1 millis",
        isRetryable: (e) => e._tag === "Boom" // e: MyError, from `call`
      })
      expectTypeOf(retried).toEqualTypeOf<Effect.Effect<string, MyError>>()
      const fiber = yield* Effect.fork(retried)
      yield* TestClock.adjust("1 second")
      // Boom is retried; BadRequest is not: two runs, and the BadRequest comes back.
      expect(yield* fiber.await).toStrictEqual(Exit.fail(new BadRequest({ field: "x" })))
      expect(yield* Ref.get(runs)).toBe(2)
    }))

  it.effect("in a pipe: the predicate's parameter is inferred from the piped effect", () =>
    Effect.gen(function*() {
      const { call, runs } = yield* calls([new Boom({ code: 503 }), new Boom({ code: 503 })])
      const retried = call.pipe(Retry.retry({ maxRetries: 3, baseDelay: "1 millis", isRetryable: (e) => e._tag === "Boom" }))
      expectTypeOf(retried).toEqualTypeOf<Effect.Effect<string, MyError>>()
      const fiber = yield* Effect.fork(retried)
      yield* TestClock.adjust("1 second")
      expect(yield* fiber.await).toStrictEqual(Exit.succeed("ok"))
      expect(yield* Ref.get(runs)).toBe(3)
    }))

  it.effect("options built first: an annotated predicate types them, and restricts what they retry", () =>
    Effect.gen(function*() {
      const policy = Retry.retry({
        maxRetries: 1,
        isRetryable: (e: MyError) => e._tag === "Boom",
        retryAfter: (e: MyError) => e._tag === "Boom" && e.code === 429 ? Duration.seconds(2) : undefined
      })
      const { call, runs } = yield* calls([new Boom({ code: 429 })])
      const retried = policy(call)
      expectTypeOf(retried).toEqualTypeOf<Effect.Effect<string, MyError>>()
      // @ts-expect-error a policy over MyError cannot retry a call failing with Unrelated
      policy(Effect.fail(new Unrelated()))
      const fiber = yield* Effect.fork(retried)
      yield* TestClock.adjust("1999 millis")
      expect(yield* Ref.get(runs)).toBe(1)
      yield* TestClock.adjust("1 millis")
      expect(yield* fiber.await).toStrictEqual(Exit.succeed("ok"))
      expect(yield* Ref.get(runs)).toBe(2)
    }))

  it.effect("the Retry service and the schedule are typed the same way", () =>
    Effect.gen(function*() {
      const service = yield* Retry.make({ maxRetries: 2, isRetryable: (e: MyError) => e._tag === "Boom" })
      expectTypeOf(service).toEqualTypeOf<Retry.Retry<MyError>>()
      // @ts-expect-error the service judges MyError only
      service.retry(Effect.fail(new Unrelated()))
      const { call, runs } = yield* calls([new BadRequest({ field: "x" })])
      expect(yield* Effect.exit(service.retry(call))).toStrictEqual(Exit.fail(new BadRequest({ field: "x" })))
      expect(yield* Ref.get(runs)).toBe(1)

      const schedule = Retry.schedule({ isRetryable: (e: MyError) => e._tag === "Boom" })
      expectTypeOf(schedule).toEqualTypeOf<import("effect/Schedule").Schedule<Duration.Duration, MyError>>()
      // Or with the type argument (Effect.retry's overloads do not pass its error type down).
      const viaSchedule = Effect.retry(call, Retry.schedule<MyError>({ isRetryable: (e) => e._tag === "Boom" }))
      expectTypeOf(viaSchedule).toEqualTypeOf<Effect.Effect<string, MyError>>()
    }))
})
