/**
 * Both UpstreamClient implementations against the fake upstream over real
 * HTTP on 127.0.0.1: the default undici one and the one over any
 * @effect/platform HttpClient.
 */
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Redacted, Stream } from "effect"
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

