/**
 * Both UpstreamClient implementations against the fake upstream over real
 * HTTP on 127.0.0.1: the default undici one and the one over any
 * @effect/platform HttpClient.
 */
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Context, Effect, Exit, Fiber, Layer, Option, Redacted, Scope, Stream } from "effect"
import * as RateLimiter from "../src/RateLimiter.js"
import * as Upstream from "../src/Upstream.js"
import * as UpstreamClient from "../src/UpstreamClient.js"
import * as Fake from "../src/testing/FakeUpstream.js"

const upstreamAt = (url: string) =>
  Upstream.make({ name: "fake", baseUrl: url, apiKey: Redacted.make("sk-client-test"), models: "*" }).pipe(
    Effect.provide(RateLimiter.layerStoreMemory)
  )

const body = JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] })

for (const [name, layer] of [
  ["undici (default)", UpstreamClient.layerUndici],
  ["@effect/platform HttpClient", UpstreamClient.layerHttpClient]
] as const) {
  describe(`UpstreamClient over ${name}`, () => {
    it.scopedLive("posts the body as given with the upstream's key and reads status, headers and text", () =>
      Effect.gen(function*() {
        const fake = yield* Fake.make({ name: "client", faults: { rateLimitHeaders: { remainingRequests: 7, remainingTokens: 9, resetRequests: "1s", resetTokens: "2s" } } })
        const u = yield* upstreamAt(fake.url)
        const client = yield* UpstreamClient.UpstreamClient
        const reply = yield* client.post(u, "/chat/completions", body)
        expect(reply.status).toBe(200)
        expect(JSON.parse(reply.text).choices[0].message.content).toBe("Hello from client")
        expect(reply.headers["x-ratelimit-remaining-requests"]).toBe("7")
        expect(fake.counters().lastBody).toBe(body)
        expect(fake.counters().lastAuthorization).toBe("Bearer sk-client-test")
        const models = yield* client.get(u, "/models")
        expect(models.status).toBe(200)
        fake.setFaults({ status: 503 })
        expect((yield* client.post(u, "/chat/completions", new TextEncoder().encode(body))).status).toBe(503)
      }).pipe(Effect.provide(layer)))

    it.scopedLive("adds the relay's trace headers to a call, never in place of the upstream's own", () =>
      Effect.gen(function*() {
        const fake = yield* Fake.make({ name: "client" })
        const u = yield* upstreamAt(fake.url)
        const client = yield* UpstreamClient.UpstreamClient
        const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        const headers = { traceparent, tracestate: "vendor=1", Authorization: "Bearer not-the-upstream-key" }
        expect((yield* client.post(u, "/chat/completions", body, headers)).status).toBe(200)
        expect(fake.counters().lastTraceparent).toBe(traceparent)
        expect(fake.counters().lastTracestate).toBe("vendor=1")
        expect(fake.counters().lastAuthorization).toBe("Bearer sk-client-test")
        const stream = yield* client.postStream(u, "/chat/completions", JSON.stringify({ model: "m", stream: true, messages: [] }), {
          traceparent
        })
        expect(stream.status).toBe(200)
        expect(fake.counters().lastTraceparent).toBe(traceparent)
        // Without headers the default client adds none (the platform's
        // HttpClient propagates spans of its own, as it always has).
        yield* client.post(u, "/chat/completions", body)
        if (layer === UpstreamClient.layerUndici) expect(fake.counters().lastTraceparent).toBeUndefined()
        else expect(fake.counters().lastTraceparent).not.toBe(traceparent)
      }).pipe(Effect.provide(layer)))

    it.scopedLive("streams the body of a stream request", () =>
      Effect.gen(function*() {
        const fake = yield* Fake.make({ name: "client" })
        const u = yield* upstreamAt(fake.url)
        const client = yield* UpstreamClient.UpstreamClient
        const reply = yield* client.postStream(u, "/chat/completions", JSON.stringify({ model: "m", stream: true, messages: [{ role: "user", content: "hi" }] }))
        expect(reply.status).toBe(200)
        const text = Chunk.join(yield* Stream.runCollect(Stream.decodeText(reply.body)), "")
        expect(text).toContain("data: [DONE]")
      }).pipe(Effect.provide(layer)))

    it.scopedLive("a reset connection is UpstreamUnreachable naming the upstream, not its URL or key", () =>
      Effect.gen(function*() {
        const fake = yield* Fake.make({ name: "client", faults: { reset: 1 } })
        const u = yield* upstreamAt(fake.url)
        const client = yield* UpstreamClient.UpstreamClient
        const error = yield* Effect.flip(client.post(u, "/chat/completions", body))
        expect(error._tag).toBe("UpstreamUnreachable")
        expect(error.message.startsWith("fake: connection failed")).toBe(true)
        expect(error.message).not.toContain("127.0.0.1")
        expect(error.message).not.toContain("sk-client-test")
      }).pipe(Effect.provide(layer)))
  })
}


// ---------------------------------------------------------------------------
// Interruption and release of the default (undici) client: nothing waits on a
// silent upstream, and every connection is closed at once.

/** Polls `cond` every 10 ms for up to 2 s (real time: these talk HTTP). */
const eventually = (label: string, cond: () => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 200; i++) {
      if (cond()) return
      yield* Effect.sleep("10 millis")
    }
    return yield* Effect.dieMessage(`condition never held: ${label}`)
  })

const streamBody = JSON.stringify({ model: "m", stream: true, messages: [{ role: "user", content: "hi" }] })

describe("UpstreamClient over undici: interruption", () => {
  it.scopedLive("a stream request waiting for headers is interrupted at once and its connection closed", () =>
    Effect.gen(function*() {
      const fake = yield* Fake.make({ name: "silent", faults: { hang: 1 } })
      const u = yield* upstreamAt(fake.url)
      const client = yield* UpstreamClient.UpstreamClient
      const fiber = yield* Effect.fork(Effect.scoped(client.postStream(u, "/chat/completions", streamBody)))
      yield* eventually("the upstream holds the request", () => fake.counters().inFlight === 1)
      const t0 = Date.now()
      const interrupted = yield* Fiber.interrupt(fiber).pipe(Effect.timeout("2 seconds"), Effect.option)
      expect(Option.isSome(interrupted)).toBe(true)
      expect(Date.now() - t0).toBeLessThan(1_000)
      yield* eventually("the upstream saw the connection close", () => fake.counters().inFlight === 0)
    }).pipe(Effect.provide(UpstreamClient.layerUndici)))

  it.scopedLive("closing the scope of a stream whose read waits on a stalled upstream closes the connection at once", () =>
    Effect.gen(function*() {
      const fake = yield* Fake.make({ name: "stalls", faults: { streamStallAfter: 1 } })
      const u = yield* upstreamAt(fake.url)
      const client = yield* UpstreamClient.UpstreamClient
      const scope = yield* Scope.make()
      const reply = yield* Scope.extend(client.postStream(u, "/chat/completions", streamBody), scope)
      const pull = yield* Scope.extend(Stream.toPull(reply.body), scope)
      expect(Chunk.size(yield* pull)).toBeGreaterThan(0)
      // The next read waits for an event that never comes.
      const reader = yield* Effect.fork(Effect.either(pull))
      yield* eventually("the stream stalled", () => fake.counters().stalls === 1)
      const t0 = Date.now()
      const closed = yield* Scope.close(scope, Exit.void).pipe(Effect.timeout("2 seconds"), Effect.option)
      expect(Option.isSome(closed)).toBe(true)
      expect(Date.now() - t0).toBeLessThan(1_000)
      yield* Fiber.interrupt(reader)
      yield* eventually("the upstream saw the connection close", () => fake.counters().inFlight === 0)
    }).pipe(Effect.provide(UpstreamClient.layerUndici)))

  it.scopedLive("the layer's release does not wait for calls in flight", () =>
    Effect.gen(function*() {
      const fake = yield* Fake.make({ name: "silent", faults: { hang: 1 } })
      const u = yield* upstreamAt(fake.url)
      const scope = yield* Scope.make()
      const ctx = yield* Layer.buildWithScope(UpstreamClient.layerUndici, scope)
      const client = Context.get(ctx, UpstreamClient.UpstreamClient)
      const call = yield* Effect.fork(client.post(u, "/chat/completions", body))
      yield* eventually("the upstream holds the request", () => fake.counters().inFlight === 1)
      const t0 = Date.now()
      const closed = yield* Scope.close(scope, Exit.void).pipe(Effect.timeout("2 seconds"), Effect.option)
      expect(Option.isSome(closed)).toBe(true)
      expect(Date.now() - t0).toBeLessThan(1_000)
      const result = yield* Fiber.join(call).pipe(Effect.either, Effect.timeout("2 seconds"))
      expect(result._tag).toBe("Left")
      yield* eventually("the upstream saw the connection close", () => fake.counters().inFlight === 0)
    }))
})
