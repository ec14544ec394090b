import { it, expect } from "@effect/vitest"
import { Effect, Layer, Redacted, Stream } from "effect"
import * as Cooldown from "../../src/Cooldown.js"
import * as Pricing from "../../src/Pricing.js"
import * as RateLimiter from "../../src/RateLimiter.js"
import * as Relay from "../../src/Relay.js"
import * as ResponseCache from "../../src/ResponseCache.js"
import * as UpstreamClient from "../../src/UpstreamClient.js"
import * as Fake from "../../src/testing/FakeUpstream.js"

it.live("smoke", () =>
  Effect.gen(function*() {
    const a = yield* Fake.make({ name: "a", faults: { rate5xx: 1 } })
    const b = yield* Fake.make({ name: "b" })
    const layer = Relay.layer({
      upstreams: [
        { name: "a", baseUrl: a.url, apiKey: Redacted.make("ka"), models: "*", priority: 1 },
        { name: "b", baseUrl: b.url, apiKey: Redacted.make("kb"), models: "*", priority: 2 }
      ]
    }).pipe(Layer.provide(Layer.mergeAll(RateLimiter.layerStoreMemory, Cooldown.layerStoreMemory, UpstreamClient.layerUndici, Pricing.layer(), ResponseCache.layerMemory())))
    yield* Effect.gen(function*() {
      const relay = yield* Relay.Relay
      const r = yield* relay.chat({ model: "gpt-4.1", messages: [{ role: "user", content: "hi" }] })
      console.log(r.metadata, r.body.slice(0, 80))
      expect(r.metadata.upstream).toBe("b")
      const r2 = yield* relay.chat({ model: "gpt-4.1", messages: [{ role: "user", content: "hi" }] })
      expect(r2.metadata.cache).toBe("hit")
      const s = yield* relay.chatStream({ model: "gpt-4.1", stream: true, messages: [{ role: "user", content: "hi" }] })
      const events = yield* Stream.runCollect(s.events)
      console.log([...events].join("").slice(0, 300))
      console.log(yield* s.done)
    }).pipe(Effect.provide(layer))
  }).pipe(Effect.scoped))
