/**
 * The reference article's usage example, done the Effect way: a relay over
 * two upstreams, each with its own breaker and bulkhead, behind a response
 * cache, answering a chat completion with automatic failover.
 *
 * Run it: `npm run example:relay`. It starts two fake upstreams on 127.0.0.1
 * (the primary answers 503 to every request) so you can watch the failover.
 */
import { Cooldown, Pricing, RateLimiter, Relay, ResponseCache, UpstreamClient } from "@breakwater/core"
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { Console, Effect, Layer, Redacted } from "effect"

/** The relay, built from Layers: stores, HTTP client, pricing, cache, then the pipeline. */
export const relayLayer = (primaryUrl: string, fallbackUrl: string) =>
  Relay.layer({
    upstreams: [
      {
        name: "primary",
        baseUrl: primaryUrl,
        apiKey: Redacted.make("sk-primary-example"),
        models: ["gpt-4.1", "deepseek-v3.2"],
        priority: 1,
        maxConcurrent: 20, // its bulkhead
        timeout: "30 seconds"
      },
      {
        name: "fallback",
        baseUrl: fallbackUrl,
        apiKey: Redacted.make("sk-fallback-example"),
        models: "*",
        priority: 2,
        maxConcurrent: 10
      }
    ],
    maxAttempts: 3,
    breaker: { failureThreshold: 5, openDuration: "30 seconds" }
  }).pipe(
    Layer.provide(Layer.mergeAll(
      RateLimiter.layerStoreMemory,
      Cooldown.layerStoreMemory,
      UpstreamClient.layerUndici,
      Pricing.layer(),
      ResponseCache.layerMemory({ ttl: "5 minutes", maxEntries: 10_000 })
    ))
  )

/** Sends one chat completion and prints who answered, how fast, and what. */
export const ask = (question: string) =>
  Effect.gen(function*() {
    const relay = yield* Relay.Relay
    const result = yield* relay.chat({
      model: "gpt-4.1",
      // Deterministic, so the answer may be cached (sampled answers are not, by default).
      temperature: 0,
      messages: [
        { role: "system", content: "You are a helpful assistant." },
        { role: "user", content: question }
      ]
    })
    const content: string = JSON.parse(result.body).choices[0].message.content
    const m = result.metadata
    yield* Console.log(
      `upstream=${m.upstream} attempts=${m.attempts} latency=${m.latencyMs}ms cache=${m.cache} ` +
        `cost=$${(m.costUsd ?? 0).toFixed(6)}${m.failures.length > 0 ? ` failed-over-from=[${m.failures.join("; ")}]` : ""}`
    )
    yield* Console.log(`content: ${content}`)
    return result
  })

/** The whole example: two fake upstreams, the relay, two questions (the second a cache hit). */
export const program = Effect.gen(function*() {
  const primary = yield* FakeUpstream.make({ name: "primary", faults: { rate5xx: 1 } })
  const fallback = yield* FakeUpstream.make({ name: "fallback" })
  return yield* Effect.gen(function*() {
    const first = yield* ask("Explain circuit breakers in one sentence.")
    const again = yield* ask("Explain circuit breakers in one sentence.")
    return [first, again] as const
  }).pipe(Effect.provide(relayLayer(primary.url, fallback.url)))
}).pipe(Effect.scoped)

if (import.meta.url === `file://${process.argv[1]}`) {
  Effect.runPromise(program).catch((error) => {
    console.error(error)
    process.exit(1)
  })
}
