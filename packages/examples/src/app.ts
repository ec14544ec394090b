import {
  Bulkhead,
  CircuitBreaker,
  Cooldown,
  Pricing,
  RateLimiter,
  Relay,
  ResponseCache,
  Retry,
  Timeout,
  UpstreamClient
} from "@breakwater/core"
import { FakeUpstream } from "@breakwater/core/testing"
import { Console, Data, Effect, Layer, Redacted } from "effect"

class HttpError extends Data.TaggedError("HttpError")<{ readonly status: number }> {}

/** The call to protect: one chat completion over fetch. Any call works the same way. */
const complete = (baseUrl: string, content: string) =>
  Effect.tryPromise({
    // Effect's signal aborts the request when a timeout interrupts the call.
    try: (signal) =>
      fetch(`${baseUrl}/chat/completions`, {
        method: "POST",
        signal,
        headers: { "content-type": "application/json", authorization: "Bearer sk-example" },
        body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content }] })
      }),
    catch: () => new HttpError({ status: 0 })
  }).pipe(Effect.filterOrElse((res) => res.ok, (res) => Effect.fail(new HttpError({ status: res.status }))))

/** 1. One dependency, guarded: bulkhead, breaker and timeout per attempt; retries; a deadline. */
const guarded = Effect.gen(function*() {
  const down = yield* FakeUpstream.make({ name: "down", faults: { status: 503 } })
  const breaker = yield* CircuitBreaker.make({ name: "down", failureThreshold: 3, openDuration: "30 seconds" })
  const bulkhead = yield* Bulkhead.make({ name: "down", maxConcurrent: 10 })
  const call = (content: string) =>
    complete(down.url, content).pipe(
      Timeout.attempt("2 seconds"), // AttemptTimedOut after 2 s
      breaker.protect, // CircuitOpen while open
      bulkhead.run, // BulkheadFull beyond 10 in flight
      Retry.retry({ maxRetries: 2, baseDelay: "50 millis" }), // full-jitter backoff
      Timeout.withDeadline("10 seconds") // DeadlineExceeded: retries included
    )
  const first = yield* Effect.flip(call("Hello"))
  yield* Console.log(
    `guarded call: ${first._tag} ${first._tag === "HttpError" ? first.status : ""} after ${down.counters().chat} attempts; ` +
      `breaker ${yield* breaker.state}`
  )
  const second = yield* Effect.flip(call("Hello again"))
  yield* Console.log(`next call: ${second._tag} at once (the upstream saw ${down.counters().chat} requests)`)
})

/** 2. The relay: failover across upstreams, each with its own breaker, bulkhead and limits. */
const relayed = Effect.gen(function*() {
  const primary = yield* FakeUpstream.make({ name: "primary", faults: { status: 503 } })
  const fallback = yield* FakeUpstream.make({ name: "fallback" })
  const RelayLive = Relay.layer({
    upstreams: [
      { name: "primary", baseUrl: primary.url, apiKey: Redacted.make("sk-primary"), models: ["gpt-4.1"], priority: 1 },
      { name: "fallback", baseUrl: fallback.url, apiKey: Redacted.make("sk-fallback"), models: "*", priority: 2 }
    ],
    maxAttempts: 3,
    requestTimeout: "30 seconds"
  }).pipe(
    Layer.provide(Layer.mergeAll(
      RateLimiter.layerStoreMemory,
      Cooldown.layerStoreMemory,
      // undici's connection pools; or any @effect/platform HttpClient, e.g.
      // UpstreamClient.layer.pipe(Layer.provide(FetchHttpClient.layer)), which loads no undici.
      UpstreamClient.layerUndici,
      Pricing.layer(),
      ResponseCache.layerMemory()
    ))
  )
  const answer = yield* Effect.flatMap(Relay.Relay, (relay) =>
    relay.chat({ model: "gpt-4.1", messages: [{ role: "user", content: "Hello" }] })).pipe(Effect.provide(RelayLive))
  const { upstream, attempts, failures } = answer.metadata
  yield* Console.log(`relay: ${upstream} answered after ${attempts} attempts (${failures.join("; ")})`)
})

Effect.runPromise(Effect.scoped(Effect.andThen(guarded, relayed))).catch((error) => {
  console.error(error)
  process.exit(1)
})
