/**
 * Cooldowns reach every replica at once (issue 15): two relays ("replicas"),
 * each with its own Redis stores (its own connections), on a real
 * `redis-server`, in front of the same two fake upstreams over HTTP.
 * Replica A meets a 429 (`Retry-After: 5`) on `x`; replica B sees that
 * cooldown within 50 ms (over Redis pub/sub; the periodic re-read is set to
 * 10 s here, so it cannot be what carries it) and sends its next request
 * to `y`, not into the known 429.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Cooldown from "../../src/Cooldown.js"
import * as Pricing from "../../src/Pricing.js"
import * as Redis from "../../src/Redis.js"
import * as Relay from "../../src/Relay.js"
import * as ResponseCache from "../../src/ResponseCache.js"
import type * as Upstream from "../../src/Upstream.js"
import * as UpstreamClient from "../../src/UpstreamClient.js"
import * as Fake from "../../src/testing/FakeUpstream.js"
import { available, type RedisServer, start } from "../support/redisServer.js"

if (!available) console.warn("skipping cooldown propagation test: redis-server not on PATH")

let server: RedisServer

const up = (fake: Fake.FakeUpstream, priority: number): Upstream.Config => ({
  name: fake.name,
  baseUrl: fake.url,
  apiKey: Redacted.make(`sk-${fake.name}`),
  models: "*",
  priority
})

/** When a replica's relay started its first cooldown (the call to its store). */
let startedAt: number | undefined

/** A replica: its own Redis stores (connections), its own relay. */
const replica = (prefix: string, upstreams: ReadonlyArray<Upstream.Config>) =>
  Effect.gen(function*() {
    const stores = yield* Layer.build(
      Redis.layer({ url: server.url, prefix, cooldownRefresh: Duration.seconds(10), commandTimeout: Duration.seconds(2) })
    )
    const deps = yield* Layer.build(Layer.mergeAll(UpstreamClient.layerUndici, Pricing.layer(), ResponseCache.layerMemory()))
    const cooldowns = Context.get(stores, Cooldown.CooldownStore)
    const timed: typeof cooldowns = {
      ...cooldowns,
      start: (upstream, cooldown) =>
        Effect.zipRight(
          Effect.sync(() => {
            startedAt ??= performance.now()
          }),
          cooldowns.start(upstream, cooldown)
        )
    }
    const relay = yield* Relay.make({ upstreams, cacheMode: "none" }).pipe(
      Effect.provide(Context.add(Context.merge(stores, deps), Cooldown.CooldownStore, timed))
    )
    return { relay, cooldowns }
  })

describe.skipIf(!available)("cooldowns across replicas", () => {
  beforeAll(async () => {
    server = await start()
  }, 10_000)
  afterAll(async () => {
    await server?.stop()
  })

  it.scopedLive("a 429 cooldown learnt on replica A is seen by replica B within 50 ms; B's next request avoids it", () =>
    Effect.gen(function*() {
      const x = yield* Fake.make({ name: "x", faults: { rate429: 1, retryAfter: "5" } })
      const y = yield* Fake.make({ name: "y" })
      const prefix = `propagation-${process.pid}:`
      const a = yield* replica(prefix, [up(x, 1), up(y, 2)])
      const b = yield* replica(prefix, [up(x, 1), up(y, 2)])
      // Both connected and past their first snapshot: nothing cools down yet.
      expect((yield* b.cooldowns.active(Date.now())).size).toBe(0)

      // B watches its own view of the cooldowns, every millisecond.
      let seenAt: number | undefined
      const watch = Effect.gen(function*() {
        while (seenAt === undefined) {
          const active = yield* b.cooldowns.active(Date.now())
          if (active.get("x")?.reason === "rate-limited") seenAt = performance.now()
          else yield* Effect.sleep(Duration.millis(1))
        }
      })
      const watcher = yield* Effect.fork(watch)

      const sentAt = performance.now()
      const first = yield* a.relay.chat({ model: "m", messages: [{ role: "user", content: "one" }] })
      const answeredAt = performance.now()
      expect(first.metadata.upstream).toBe("y")
      expect(first.metadata.failures).toEqual(["x: rate limited (429), retry after 5s"])
      // When A knew: its cooldown was written while its request failed over, before it answered.
      yield* watcher.await.pipe(Effect.timeout(Duration.seconds(2)))
      const delay = seenAt! - startedAt!
      console.log(
        `cooldown propagation: replica B saw A's 429 cooldown ${delay.toFixed(1)} ms after A started it ` +
          `(A's request: ${(answeredAt - sentAt).toFixed(1)} ms, answered ${(answeredAt - seenAt!).toFixed(1)} ms after B knew)`
      )
      expect(delay).toBeLessThan(50)

      // B's next request goes to y: x is not asked again.
      const second = yield* b.relay.chat({ model: "m", messages: [{ role: "user", content: "two" }] })
      expect(second.metadata.upstream).toBe("y")
      expect(second.metadata.attempts).toBe(1)
      expect(x.counters().chat).toBe(1)
    }), 20_000)

  it.scopedLive("a reset on replica A (its cooldown cleared) ends replica B's pacer hold after a 429 while B's call still hangs", () =>
    Effect.gen(function*() {
      const x = yield* Fake.make({ name: "x" })
      const y = yield* Fake.make({ name: "y" })
      const prefix = `reset-${process.pid}:`
      const a = yield* replica(prefix, [up(x, 1), up(y, 2)])
      const b = yield* replica(prefix, [up(x, 1), up(y, 2)])
      const chat = (content: string) => b.relay.chat({ model: "m", messages: [{ role: "user", content }] })
      // B's call to x hangs (interrupted when the test's scope ends).
      x.setFaults({ hang: 1 })
      yield* Effect.forkScoped(chat("hangs"))
      for (let i = 0; i < 400 && x.counters().chat === 0; i++) yield* Effect.sleep(Duration.millis(5))
      expect(x.counters().chat).toBe(1)
      // The next meets a 429 (Retry-After 60): x cools down, and B's pacer of x holds while the hung call is out.
      x.setFaults({ status: 429, retryAfter: "60" })
      expect((yield* chat("a 429")).metadata.upstream).toBe("y")
      x.setFaults({})
      // The operator resets x on replica A: its cooldown is cleared, and the clear published.
      yield* a.cooldowns.clear("x")
      for (let i = 0; i < 400 && (yield* b.cooldowns.active(Date.now())).has("x"); i++) yield* Effect.sleep(Duration.millis(5))
      expect((yield* b.cooldowns.active(Date.now())).has("x")).toBe(false)
      // B sends to x at once, not held behind its hung call for the rest of the 60 s.
      const after = yield* chat("x is back")
      expect(after.metadata.upstream).toBe("x")
    }), 20_000)
})
