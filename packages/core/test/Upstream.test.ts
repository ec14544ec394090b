/**
 * Carrying an upstream's state over a config change (a server's reload):
 * `CircuitBreaker.Options.resumeFrom`, `Upstream.make`'s `previous`,
 * `Relay.makeWith` over upstreams built elsewhere, and `Health`'s
 * `previous`. Under TestClock.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as Cooldown from "../src/Cooldown.js"
import * as Health from "../src/Health.js"
import * as Pricing from "../src/Pricing.js"
import * as RateLimiter from "../src/RateLimiter.js"
import * as Relay from "../src/Relay.js"
import * as ResponseCache from "../src/ResponseCache.js"
import * as Upstream from "../src/Upstream.js"
import { UpstreamClient } from "../src/UpstreamClient.js"
import * as Scripted from "./support/ScriptedClient.js"

const MODEL = "gpt-4.1"

const config = (name: string, extra: Partial<Upstream.Config> = {}): Upstream.Config => ({
  name,
  baseUrl: `https://${name}.example.test/v1`,
  apiKey: Redacted.make(`sk-secret-${name}`),
  models: [MODEL],
  ...extra
})

class Boom {
  readonly _tag = "UpstreamServerError"
}

/** Fails `n` calls through the breaker (each counts against it). */
const fail = (cb: CircuitBreaker.CircuitBreaker, n: number) =>
  Effect.forEach(Array.from({ length: n }), () => Effect.exit(cb.protect(Effect.fail(new Boom()))), { discard: true })

const build = (c: Upstream.Config, previous?: Upstream.Upstream, breaker?: Partial<CircuitBreaker.Options>) =>
  Upstream.make(c, { previous, breaker }).pipe(Effect.provide(RateLimiter.layerStoreMemory))

describe("CircuitBreaker resumeFrom", () => {
  it.scoped("an open breaker resumed with new settings stays open until the same time, then half-opens", () =>
    Effect.gen(function*() {
      const old = yield* CircuitBreaker.make({ name: "x", failureThreshold: 2, openDuration: "10 seconds" })
      yield* fail(old, 2)
      const snap = yield* old.snapshot
      expect(snap.state).toBe("Open")
      yield* TestClock.adjust("4 seconds")
      const resumed = yield* CircuitBreaker.make({
        name: "x",
        failureThreshold: 5,
        openDuration: "1 second",
        resumeFrom: yield* old.snapshot
      })
      expect(yield* resumed.snapshot).toMatchObject({ state: "Open", openUntil: snap.openUntil, trips: 1 })
      expect(resumed.unsafeIsAvailable(4_000)).toBe(false)
      yield* TestClock.adjust("5999 millis")
      expect(yield* resumed.state).toBe("Open")
      yield* TestClock.adjust("1 millis")
      expect(yield* resumed.state).toBe("HalfOpen")
    }))

  it.scoped("the wake-up of a resumed open period is announced", () =>
    Effect.gen(function*() {
      const resumed = yield* CircuitBreaker.make({
        name: "x",
        resumeFrom: {
          name: "x",
          state: "Open",
          consecutiveFailures: 0,
          windowCalls: 0,
          windowFailures: 0,
          openUntil: 3_000,
          trips: 2,
          halfOpenInFlight: 0
        }
      })
      // Subscribed here, before the clock moves: nothing can be missed.
      const changes = yield* resumed.changes
      const seen = yield* changes.pipe(Stream.take(1), Stream.runCollect, Effect.fork)
      yield* TestClock.adjust("3 seconds")
      // Announced by the breaker's own timer: nothing read its state meanwhile.
      const [transition] = Chunk.toReadonlyArray(yield* Fiber.join(seen))
      expect(transition).toMatchObject({ from: "Open", to: "HalfOpen", at: 3_000 })
    }))

  it.scoped("forced open, disabled and consecutive failures carry on; half-open restarts its trials", () =>
    Effect.gen(function*() {
      const make = (resumeFrom: CircuitBreaker.Snapshot) =>
        CircuitBreaker.make({ name: "y", failureThreshold: 3, resumeFrom })
      const base = yield* CircuitBreaker.make({ name: "y", failureThreshold: 3 })
      yield* fail(base, 2)
      const counting = yield* make(yield* base.snapshot)
      expect((yield* counting.snapshot).consecutiveFailures).toBe(2)
      yield* fail(counting, 1)
      expect(yield* counting.state).toBe("Open")

      yield* base.forceOpen
      expect(yield* (yield* make(yield* base.snapshot)).state).toBe("ForcedOpen")
      yield* base.disable
      expect(yield* (yield* make(yield* base.snapshot)).state).toBe("Disabled")
      const half = yield* make({ ...(yield* base.snapshot), state: "HalfOpen", halfOpenInFlight: 3 })
      expect(yield* half.snapshot).toMatchObject({ state: "HalfOpen", halfOpenInFlight: 0 })
    }))
})

describe("Upstream.make with previous", () => {
  it.scoped("same name and URL: the breaker, bulkhead and stats carry on; new settings apply", () =>
    Effect.gen(function*() {
      const first = yield* build(config("a", { weight: 1, maxConcurrent: 4 }))
      yield* first.breaker.forceOpen
      first.stats.requests = 7
      first.stats.latencyEwmaMs = 120
      const second = yield* build(
        config("a", { weight: 5, maxConcurrent: 4, apiKey: Redacted.make("sk-new"), models: [MODEL, "other"] }),
        first
      )
      expect(second.breaker).toBe(first.breaker)
      expect(second.bulkhead).toBe(first.bulkhead)
      expect(second.stats).toBe(first.stats)
      expect(second.stats.latencyEwmaMs).toBe(120)
      expect(second.weight).toBe(5)
      expect(Redacted.value(second.apiKey)).toBe("sk-new")
      expect(second.modelFor("other")).toBe("other")
      expect(first.modelFor("other")).toBeUndefined()
    }))

  it.scoped("changed breaker settings: a new breaker resumed from the old one's state (still open)", () =>
    Effect.gen(function*() {
      const first = yield* build(config("a"), undefined, { failureThreshold: 2, openDuration: "30 seconds" })
      yield* fail(first.breaker, 2)
      expect(yield* first.breaker.state).toBe("Open")
      const second = yield* build(config("a", { breaker: { failureThreshold: 9 } }), first, {
        failureThreshold: 2,
        openDuration: "30 seconds"
      })
      expect(second.breaker).not.toBe(first.breaker)
      expect(yield* second.breaker.state).toBe("Open")
      // Its new settings: 9 failures in a row now, once it has closed again.
      yield* second.breaker.reset
      yield* fail(second.breaker, 8)
      expect(yield* second.breaker.state).toBe("Closed")
      yield* fail(second.breaker, 1)
      expect(yield* second.breaker.state).toBe("Open")
    }))

  it.scoped("a new maxConcurrent gets a new bulkhead of that size", () =>
    Effect.gen(function*() {
      const first = yield* build(config("a", { maxConcurrent: 4 }))
      const second = yield* build(config("a", { maxConcurrent: 2 }), first)
      expect(second.bulkhead).not.toBe(first.bulkhead)
      expect(second.bulkhead.unsafeStats().maxConcurrent).toBe(2)
      expect(second.stats).toBe(first.stats)
    }))

  it.scoped("another URL (or name) is another upstream: nothing carries over", () =>
    Effect.gen(function*() {
      const first = yield* build(config("a"))
      yield* first.breaker.forceOpen
      first.stats.requests = 3
      const moved = yield* build(config("a", { baseUrl: "https://elsewhere.example.test/v1" }), first)
      expect(moved.breaker).not.toBe(first.breaker)
      expect(yield* moved.breaker.state).toBe("Closed")
      expect(moved.stats.requests).toBe(0)
      const renamed = yield* build({ ...config("b"), baseUrl: first.baseUrl }, first)
      expect(yield* renamed.breaker.state).toBe("Closed")
    }))
})

describe("Relay.makeWith", () => {
  const deps = (client: Scripted.Scripted) =>
    Layer.mergeAll(
      Layer.succeed(Cooldown.CooldownStore, Effect.runSync(Cooldown.makeStoreMemory)),
      client.layer,
      Pricing.layer(),
      ResponseCache.layerMemory()
    )

  it.scoped("routes over the upstreams it is given, with their state: an open breaker built elsewhere is left out", () =>
    Effect.gen(function*() {
      const client = Scripted.make()
      const a = yield* build(config("a", { priority: 1 }))
      const b = yield* build(config("b", { priority: 2, aliases: { fast: MODEL } }))
      yield* a.breaker.forceOpen
      const relay = yield* Relay.makeWith([a, b], { cacheMode: "none" }).pipe(Effect.provide(deps(client)))
      expect(relay.upstreams).toEqual([a, b])
      expect(relay.models).toEqual([MODEL, "fast"])
      const result = yield* relay.chat({ model: MODEL, messages: [{ role: "user", content: "hi" }] })
      expect(result.metadata.upstream).toBe("b")
      expect(client.callsTo("a")).toHaveLength(0)
      expect(b.stats.successes).toBe(1)
    }))

  it.scoped("two relays over the same upstreams share what they learn (one breaker, one set of stats)", () =>
    Effect.gen(function*() {
      const client = Scripted.make()
      client.script("a", Scripted.status(503), Scripted.status(503))
      const a = yield* build(config("a", { priority: 1 }), undefined, { failureThreshold: 2 })
      const b = yield* build(config("b", { priority: 2 }))
      const layer = deps(client)
      const before = yield* Relay.makeWith([a, b], { cacheMode: "none" }).pipe(Effect.provide(layer))
      yield* before.chat({ model: MODEL, messages: [{ role: "user", content: "1" }] })
      const after = yield* Relay.makeWith([yield* build(config("a", { priority: 1, weight: 3 }), a, { failureThreshold: 2 }), b], {
        cacheMode: "none"
      }).pipe(Effect.provide(layer))
      yield* after.chat({ model: MODEL, messages: [{ role: "user", content: "2" }] })
      expect(yield* a.breaker.state).toBe("Open")
      expect(after.upstreams[0]!.stats.failures).toBe(2)
    }))
})

describe("Health previous", () => {
  it.scoped("probe results of an upstream with the same name and URL carry over; others start afresh", () =>
    Effect.gen(function*() {
      const answers = new Map<string, number>([["a", 503], ["b", 503]])
      const client = UpstreamClient.of({
        get: (u) => Effect.succeed({ status: answers.get(u.name) ?? 200, headers: {}, text: `{"data":[{"id":"m-${u.name}"}]}` }),
        post: () => Effect.die("no"),
        postStream: () => Effect.die("no")
      })
      const deps = Layer.mergeAll(Layer.succeed(UpstreamClient, client), Cooldown.layerStoreMemory)
      const a = yield* build(config("a"))
      const b = yield* build(config("b"))
      const firstScope = yield* Scope.make()
      const first = yield* Health.make([a, b], { interval: "1 hour" }).pipe(Effect.provide(deps), Scope.extend(firstScope))
      yield* TestClock.adjust(0) // its first probes
      expect((yield* first.statusOf("a"))?.consecutiveProbeFailures).toBe(1)
      expect((yield* first.statusOf("b"))?.consecutiveProbeFailures).toBe(1)
      yield* Scope.close(firstScope, Exit.void)

      const moved = yield* build(config("b", { baseUrl: "https://b2.example.test/v1" }))
      const second = yield* Health.make([a, moved], { interval: "1 hour", previous: first }).pipe(Effect.provide(deps))
      yield* TestClock.adjust(0) // its first probes: both fail again
      expect((yield* second.statusOf("a"))?.consecutiveProbeFailures).toBe(2)
      expect((yield* second.statusOf("b"))?.consecutiveProbeFailures).toBe(1)

      answers.set("a", 200)
      yield* second.probeAll
      expect((yield* second.statusOf("a"))?.state).toBe("healthy")
      expect((yield* second.models).get("a")?.map((m) => m.id)).toEqual(["m-a"])
    }))
})
