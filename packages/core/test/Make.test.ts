/**
 * "Every service follows the same shape": `make(options)` is an `Effect`
 * that builds one (README, The services). A user who writes
 * `yield* Retry.make(...)` as for any other service gets a service.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Bulkhead from "../src/Bulkhead.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as RateLimiter from "../src/RateLimiter.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as Retry from "../src/Retry.js"
import * as Timeout from "../src/Timeout.js"

describe("each service's make is an Effect", () => {
  it("make returns an Effect in every module of The services", () => {
    const makes: Record<string, unknown> = {
      CircuitBreaker: CircuitBreaker.make({ name: "x" }),
      Bulkhead: Bulkhead.make({ name: "x", maxConcurrent: 1 }),
      RateLimiter: RateLimiter.make({ name: "x", limit: 1, window: "1 second" }),
      Retry: Retry.make({ maxRetries: 1 }),
      Timeout: Timeout.make({ attempt: "1 second" }),
      ResponseCache: ResponseCache.make()
    }
    const notEffects = Object.entries(makes).filter(([, made]) => !Effect.isEffect(made)).map(([name]) => name)
    expect(notEffects).toEqual([])
  })

  it.scoped("yield* make builds each service", () =>
    Effect.gen(function*() {
      const breaker = yield* CircuitBreaker.make({ name: "b" })
      const bulkhead = yield* Bulkhead.make({ name: "h", maxConcurrent: 2 })
      const limiter = yield* RateLimiter.make({ name: "l", limit: 3, window: "1 second" })
      const retry = yield* Retry.make({ maxRetries: 4 })
      const timeout = yield* Timeout.make({ attempt: "5 seconds" })
      const cache = yield* ResponseCache.make()
      expect(breaker.name).toBe("b")
      expect(bulkhead.name).toBe("h")
      expect(limiter.limit).toBe(3)
      expect(retry.options.maxRetries).toBe(4)
      expect(Duration.toMillis(timeout.attempt)).toBe(5_000)
      expect(typeof cache.key).toBe("function")
    }).pipe(Effect.provide(RateLimiter.layerStoreMemory), Effect.provide(ResponseCache.layerStoreMemory())))
})
