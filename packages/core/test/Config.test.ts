/**
 * Each service's `config` descriptor reads its keys under its kind and, for
 * named services, its name: two breakers (or bulkheads, limiters) configured
 * from the same environment read different variables.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Bulkhead from "../src/Bulkhead.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as RateLimiter from "../src/RateLimiter.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as Retry from "../src/Retry.js"
import * as Timeout from "../src/Timeout.js"

/** What `ConfigProvider.fromEnv().pipe(ConfigProvider.constantCase)` reads, from a map instead of process.env. */
const env = (vars: Record<string, string>) =>
  ConfigProvider.fromMap(new Map(Object.entries(vars)), { pathDelim: "_" }).pipe(ConfigProvider.constantCase)

/** Effect's own flat map, keys joined with ".". */
const paths = (vars: Record<string, string>) => ConfigProvider.fromMap(new Map(Object.entries(vars)))

class Boom {
  readonly _tag = "Boom"
}

describe("config descriptors read under their kind and name", () => {
  it.scoped("two breakers read different values (BREAKER_<NAME>_* under constant case)", () =>
    Effect.gen(function*() {
      const primary = yield* Effect.flatMap(CircuitBreaker.config("primary"), CircuitBreaker.make)
      const fallback = yield* Effect.flatMap(CircuitBreaker.config("fallback"), CircuitBreaker.make)
      yield* Effect.exit(primary.protect(Effect.fail(new Boom())))
      yield* Effect.exit(fallback.protect(Effect.fail(new Boom())))
      expect(yield* primary.state).toBe("Open")
      expect(yield* fallback.state).toBe("Closed")
      const [p, f] = [yield* primary.snapshot, yield* fallback.snapshot]
      expect(p.openUntil).toBe(Duration.toMillis("7 seconds"))
      expect(f.consecutiveFailures).toBe(1)
    }).pipe(Effect.withConfigProvider(env({
      BREAKER_PRIMARY_FAILURE_THRESHOLD: "1",
      BREAKER_PRIMARY_OPEN_DURATION: "7 seconds",
      BREAKER_FALLBACK_FAILURE_THRESHOLD: "3"
    }))))

  it.scoped("from process.env: BREAKER_<NAME>_FAILURE_THRESHOLD per breaker (fromEnv + constantCase)", () =>
    Effect.gen(function*() {
      const vars = { BREAKER_ENV_ONE_FAILURE_THRESHOLD: "1", BREAKER_ENV_TWO_FAILURE_THRESHOLD: "4" }
      yield* Effect.acquireRelease(
        Effect.sync(() => Object.assign(process.env, vars)),
        () => Effect.sync(() => Object.keys(vars).forEach((k) => delete process.env[k]))
      )
      const provider = ConfigProvider.fromEnv().pipe(ConfigProvider.constantCase)
      const [one, two] = yield* Effect.all([CircuitBreaker.config("env-one"), CircuitBreaker.config("env-two")]).pipe(
        Effect.withConfigProvider(provider)
      )
      expect([one.failureThreshold, two.failureThreshold]).toEqual([1, 4])
    }))

  it.effect("a breaker's keys are `breaker.<name>.<key>` paths (Config.nested)", () =>
    Effect.gen(function*() {
      const a = yield* CircuitBreaker.config("a")
      const b = yield* CircuitBreaker.config("b")
      expect([a.failureThreshold, a.successThreshold, a.halfOpenMaxCalls]).toEqual([2, 1, 5])
      expect(Duration.toMillis(a.openDuration!)).toBe(10_000)
      // Unset keys take the defaults: nothing leaks from `a`.
      expect([b.failureThreshold, b.successThreshold, b.halfOpenMaxCalls]).toEqual([5, 3, 3])
      expect(Duration.toMillis(b.openDuration!)).toBe(30_000)
      expect([a.name, b.name]).toEqual(["a", "b"])
    }).pipe(Effect.withConfigProvider(paths({
      "breaker.a.failureThreshold": "2",
      "breaker.a.successThreshold": "1",
      "breaker.a.halfOpenMaxCalls": "5",
      "breaker.a.openDuration": "10 seconds",
      // Flat keys (what config read before) are not read any more.
      "failureThreshold": "9"
    }))))

  it.effect("two bulkheads read different values; a bulkhead and a rate limiter of the same name do not share maxWait", () =>
    Effect.gen(function*() {
      const primary = yield* Effect.flatMap(Bulkhead.config("primary"), Bulkhead.make)
      const fallback = yield* Effect.flatMap(Bulkhead.config("fallback"), Bulkhead.make)
      expect((yield* primary.stats).maxConcurrent).toBe(20)
      expect((yield* fallback.stats).maxConcurrent).toBe(4)
      const options = yield* Bulkhead.config("primary")
      expect(options.maxWaiting).toBe(50)
      expect(Duration.toMillis(options.maxWait!)).toBe(2_000)
      const limiter = yield* RateLimiter.config("primary")
      expect(limiter.maxWait).toBeUndefined()
    }).pipe(Effect.withConfigProvider(env({
      BULKHEAD_PRIMARY_MAX_CONCURRENT: "20",
      BULKHEAD_PRIMARY_MAX_WAITING: "50",
      BULKHEAD_PRIMARY_MAX_WAIT: "2 seconds",
      BULKHEAD_FALLBACK_MAX_CONCURRENT: "4",
      RATE_LIMITER_PRIMARY_LIMIT: "600"
    }))))

  it.effect("two rate limiters read different values", () =>
    Effect.gen(function*() {
      const rpm = yield* Effect.flatMap(RateLimiter.config("rpm"), RateLimiter.make)
      const tpm = yield* Effect.flatMap(RateLimiter.config("tpm"), RateLimiter.make)
      expect([rpm.limit, tpm.limit]).toEqual([600, 200_000])
      const options = yield* RateLimiter.config("tpm")
      expect(options.algorithm).toBe("sliding-window")
      expect(options.onExceeded).toBe("wait")
      expect(Duration.toMillis(options.maxWait!)).toBe(5_000)
      expect((yield* RateLimiter.config("rpm")).algorithm).toBe("token-bucket")
    }).pipe(
      Effect.provide(RateLimiter.layerStoreMemory),
      Effect.withConfigProvider(env({
        RATE_LIMITER_RPM_LIMIT: "600",
        RATE_LIMITER_TPM_LIMIT: "200000",
        RATE_LIMITER_TPM_ALGORITHM: "sliding-window",
        RATE_LIMITER_TPM_ON_EXCEEDED: "wait",
        RATE_LIMITER_TPM_MAX_WAIT: "5 seconds"
      }))
    ))

  it.effect("Retry, Timeout and ResponseCache read under retry, timeout and cache", () =>
    Effect.gen(function*() {
      const retry = yield* Retry.config
      expect(retry.maxRetries).toBe(4)
      const timeout = yield* Timeout.config
      expect(Duration.toMillis(timeout.attempt!)).toBe(5_000)
      expect(Duration.toMillis(timeout.request!)).toBe(60_000)
      const cache = yield* ResponseCache.config
      expect(cache.maxEntries).toBe(100)
    }).pipe(Effect.withConfigProvider(env({
      RETRY_MAX_RETRIES: "4",
      TIMEOUT_ATTEMPT: "5 seconds",
      // A bare REQUEST (or MAX_RETRIES, MAX_ENTRIES) is not theirs.
      REQUEST: "1 second",
      CACHE_MAX_ENTRIES: "100"
    }))))

  it.effect("a descriptor can be nested further, e.g. per app", () =>
    Effect.gen(function*() {
      const options = yield* Config.nested(CircuitBreaker.config("primary"), "payments")
      expect(options.failureThreshold).toBe(2)
    }).pipe(Effect.withConfigProvider(env({ PAYMENTS_BREAKER_PRIMARY_FAILURE_THRESHOLD: "2" }))))
})
