/**
 * Pacing (issue 15) under TestClock: what a pacer learns from an upstream's
 * answers, and the relay's queue in front of a rate-limited upstream —
 * requests wait their turn (FIFO, as many per window as the limit allows)
 * instead of failing, waiting costs no attempt, and a full queue, the
 * deadline or `maxRetryAfter` fail the request as before. Also the
 * `unreachable` cooldown of an upstream that refuses connections.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as TestClock from "effect/TestClock"
import * as Cooldown from "../src/Cooldown.js"
import * as Pacing from "../src/Pacing.js"
import * as Relay from "../src/Relay.js"
import type * as Upstream from "../src/Upstream.js"
import * as Scripted from "./support/ScriptedClient.js"
import { type ScriptedRelay, scriptedRelay, upstream as configOf } from "./support/ScriptedRelay.js"

const MODEL = "gpt-4.1"

const upstream = (name: string, extra: Partial<Upstream.Config> = {}): Upstream.Config => configOf(name, [MODEL], extra)

const setup = scriptedRelay

let seq = 0
const ask = () => ({ model: MODEL, messages: [{ role: "user" as const, content: `q${++seq}` }] })

/**
 * An upstream's quota, as a provider enforces one: `limit` calls per window
 * of `windowMs` from the first call after the last window ended, with
 * OpenAI's headers; beyond it a 429 with `Retry-After` (whole seconds).
 */
const quota = (limit: number, windowMs = 1000) => {
  let end = 0
  let used = 0
  const refused: Array<number> = []
  const reply: Scripted.Reply = (call) =>
    Effect.sync(() => {
      if (call.at >= end) {
        end = call.at + windowMs
        used = 0
      }
      const over = used >= limit
      if (!over) used++
      const headers = {
        "x-ratelimit-limit-requests": String(limit),
        "x-ratelimit-remaining-requests": String(limit - used),
        "x-ratelimit-reset-requests": `${end - call.at}ms`
      }
      if (!over) return { status: 200, headers, text: Scripted.completion() }
      refused.push(call.at)
      return {
        status: 429,
        headers: { ...headers, "retry-after": String(Math.ceil((end - call.at) / 1000)) },
        text: Scripted.errorJson("Rate limit reached", "rate_limit_exceeded", "rate_limit_exceeded")
      }
    })
  return { reply, refused }
}

const counter = (upstream: string, outcome: string) =>
  Effect.map(
    Metric.value(Metric.taggedWithLabels(Pacing.pacedTotal, [MetricLabel.make("upstream", upstream), MetricLabel.make("outcome", outcome)])),
    (s) => s.count
  )

/** Lets forked requests run as far as they can without the clock moving. */
const settle = Effect.gen(function*() {
  for (let i = 0; i < 50; i++) yield* Effect.yieldNow()
})

describe("followClears", () => {
  it.scoped("a clear of the memory store ends the hold of the upstream's pacer, and only while the scope lasts", () =>
    Effect.gen(function*() {
      const store = yield* Cooldown.makeStoreMemory
      const upstream = { name: "held" }
      const other = { name: "other" }
      const hold = (u: { readonly name: string }) => {
        const p = Pacing.pacerOf(u)
        p.tryTake(0)
        p.sent()
        p.tryTake(0)
        p.sent() // hangs
        p.answered(0, 429, {})
        p.cooled(0, 60_000)
        return p
      }
      const held = hold(upstream)
      const untouched = hold(other)
      const scope = yield* Scope.make()
      yield* Scope.extend(Pacing.followClears(store, [upstream, other]), scope)
      yield* TestClock.adjust("5 millis")
      yield* store.clear("held")
      expect(held.tryTake(10)).toBe(true)
      expect(untouched.tryTake(10)).toBe(false)
      // The scope closed: clears are no longer followed.
      yield* Scope.close(scope, Exit.void)
      yield* store.clear("other")
      expect(untouched.tryTake(20)).toBe(false)
    }))
})

describe("Pacer", () => {
  it("learns the window from headers, minus calls still in flight; nothing is held back before", () => {
    const p = new Pacing.Pacer("a")
    expect(p.tryTake(0)).toBe(true)
    p.sent()
    expect(p.tryTake(0)).toBe(true)
    p.sent()
    expect(p.tryTake(0)).toBe(true)
    p.sent()
    // Three in flight; the first answer says 2 remain until 1000: the two others may not be counted yet.
    p.learn(10, { "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "990ms" })
    p.done(10)
    expect(p.left).toBe(0)
    expect(p.resetAt).toBe(1000)
    expect(p.tryTake(999)).toBe(false)
    // A new window: as many calls as the limit.
    expect(p.tryTake(1000)).toBe(true)
    expect(p.left).toBe(2)
  })

  it("a 429's Retry-After blocks until then; without a known limit nothing is held back after it", () => {
    const p = new Pacing.Pacer("a")
    p.block(0, 2000)
    expect(p.tryTake(1999)).toBe(false)
    expect(p.tryTake(2000)).toBe(true)
    expect(p.tryTake(2000)).toBe(true)
    expect(p.left).toBeUndefined()
  })

  it("with a known limit, a window's end lets that many through", () => {
    const p = new Pacing.Pacer("a")
    p.learn(0, { "x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s" })
    expect(p.tryTake(999)).toBe(false)
    expect(p.tryTake(1000)).toBe(true)
    expect(p.tryTake(1000)).toBe(true)
    expect(p.tryTake(1000)).toBe(false)
  })

  it("a 429 without limit headers holds calls while others are in flight; then nothing is held back", () => {
    const p = new Pacing.Pacer("a")
    expect(p.tryTake(0)).toBe(true)
    p.sent()
    expect(p.tryTake(0)).toBe(true)
    p.sent()
    p.answered(5, 429, { "retry-after": "1" })
    // One call still in flight: it may tell more.
    expect(p.tryTake(5)).toBe(false)
    p.answered(6, 429, {})
    // Nothing in flight and no limit ever announced: the cooldown keeps the router away until its end, the pacer nothing.
    for (let i = 0; i < 5; i++) expect(p.tryTake(1000)).toBe(true)
  })

  it("without a known limit, a call still in flight (a hang) holds calls after a 429 only until the cooldown's end the relay tells", () => {
    const p = new Pacing.Pacer("a")
    expect(p.tryTake(0)).toBe(true)
    p.sent() // hangs: never answered here
    expect(p.tryTake(0)).toBe(true)
    p.sent()
    // The pacer does not read Retry-After itself: the relay tells the end of the cooldown it started.
    p.answered(10, 429, { "retry-after": "2" })
    p.cooled(10, 7010)
    // The hung call may still tell more, until the cooldown is over; then nothing is held back.
    expect(p.tryTake(7009)).toBe(false)
    for (let i = 0; i < 5; i++) expect(p.tryTake(7010)).toBe(true)
    expect(p.left).toBeUndefined()
  })

  it("until the relay tells the cooldown's end, the hold lasts at most 1 s (a request gone before starting its cooldown)", () => {
    const p = new Pacing.Pacer("a")
    for (let i = 0; i < 3; i++) {
      expect(p.tryTake(0)).toBe(true)
      p.sent()
    }
    p.answered(0, 429, {})
    expect(p.tryTake(999)).toBe(false)
    expect(p.tryTake(1000)).toBe(true)
    // Told: a shorter cooldown ends the hold sooner.
    const q = new Pacing.Pacer("b")
    for (let i = 0; i < 2; i++) {
      expect(q.tryTake(0)).toBe(true)
      q.sent()
    }
    q.answered(0, 429, {})
    q.cooled(0, 300)
    expect(q.tryTake(299)).toBe(false)
    expect(q.tryTake(300)).toBe(true)
  })

  it("a cooldown told with nothing held (no 429, or a known limit) changes nothing; a cleared cooldown ends the hold", () => {
    const p = new Pacing.Pacer("a")
    expect(p.tryTake(0)).toBe(true)
    p.sent()
    p.cooled(0, 5000) // an unreachable cooldown, say: the pacer had no 429
    expect(p.tryTake(1)).toBe(true)
    p.sent()
    p.answered(2, 429, {})
    p.cooled(2, 60_000)
    expect(p.tryTake(30_000)).toBe(false)
    p.cleared(30_000)
    expect(p.tryTake(30_000)).toBe(true)
  })

  it("a 429 after a told hold ran out (nobody asked in between) holds again until told, not freed by the old end", () => {
    const p = new Pacing.Pacer("a")
    for (let i = 0; i < 3; i++) {
      expect(p.tryTake(0)).toBe(true)
      p.sent()
    }
    p.answered(0, 429, {})
    p.cooled(0, 500)
    // No call asked the pacer until 600; then another 429 (a call sent before).
    p.answered(600, 429, {})
    expect(p.tryTake(600)).toBe(false)
    p.cooled(600, 2600)
    expect(p.tryTake(2599)).toBe(false)
    expect(p.tryTake(2600)).toBe(true)
  })

  it.effect("without a known limit, waiters behind a hung call after a 429 are let through at the cooldown's end, not at their timeout", () =>
    Effect.gen(function*() {
      const p = new Pacing.Pacer("a")
      expect(p.tryTake(0)).toBe(true)
      p.sent() // hangs
      expect(p.tryTake(0)).toBe(true)
      p.sent()
      p.answered(0, 429, {})
      const waiters = yield* Effect.forEach([1, 2, 3], () => Effect.fork(p.wait(10_000, 100)))
      yield* settle
      expect(p.queued).toBe(3)
      // The relay tells the cooldown it started: 2.5 s (past the 1 s bound while untold).
      p.cooled(0, 2500)
      yield* TestClock.adjust("2499 millis")
      yield* settle
      expect(p.queued).toBe(3)
      yield* TestClock.adjust("1 millis")
      yield* settle
      expect(p.queued).toBe(0)
      // (Before the bound, they stayed queued until their own 10 s ran out.)
      yield* TestClock.adjust("10 seconds")
      expect(yield* Effect.forEach(waiters, Fiber.join)).toEqual(["granted", "granted", "granted"])
      expect(p.inFlight).toBe(1)
    }))

  it("a taken call that is not sent is given back", () => {
    const p = new Pacing.Pacer("a")
    p.learn(0, { "x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "1s" })
    expect(p.tryTake(0)).toBe(true)
    expect(p.tryTake(0)).toBe(false)
    p.giveBack(0)
    expect(p.tryTake(0)).toBe(true)
  })
})

describe("Relay pacing", () => {
  it.scoped("2 calls a second: six requests at once all succeed, two per window, FIFO, no 429 once the limit is known, one attempt each", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], maxAttempts: 1 })
      const q = quota(2)
      client.fallback("a", q.reply)
      // The first answer tells the limit (2 a second, 1 left).
      const first = yield* relay.chat(ask())
      expect(first.metadata.attempts).toBe(1)
      const fibers: Array<Fiber.RuntimeFiber<Relay.Result, Relay.RelayError>> = []
      for (let i = 0; i < 5; i++) {
        fibers.push(yield* Effect.fork(relay.chat(ask())))
        yield* settle
      }
      expect(client.calls.map((c) => c.at)).toEqual([0, 0])
      yield* TestClock.adjust("999 millis")
      expect(client.calls).toHaveLength(2)
      yield* TestClock.adjust("1 millis")
      yield* settle
      expect(client.calls.map((c) => c.at)).toEqual([0, 0, 1000, 1000])
      yield* TestClock.adjust("1000 millis")
      yield* settle
      expect(client.calls.map((c) => c.at)).toEqual([0, 0, 1000, 1000, 2000, 2000])
      const results = yield* Effect.forEach(fibers, Fiber.join)
      // Waiting cost no attempt: maxAttempts 1 was enough for every one.
      expect(results.map((r) => r.metadata.attempts)).toEqual([1, 1, 1, 1, 1])
      expect(q.refused).toEqual([])
      expect(yield* counter("a", "granted")).toBeGreaterThanOrEqual(3)
    }))

  it.scoped("requests that got a 429 before the limit was known queue for the window, behind nobody", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], maxAttempts: 2 })
      const q = quota(2)
      // Every answer takes 10 ms: four calls go out before anything is known.
      client.fallback("a", Scripted.delayed("10 millis", q.reply))
      const fibers = yield* Effect.forEach([1, 2, 3, 4], () => Effect.fork(relay.chat(ask())))
      yield* settle
      expect(client.calls).toHaveLength(4)
      yield* TestClock.adjust("10 millis")
      yield* settle
      expect(q.refused).toEqual([0, 0])
      // Backoff before the next round (at most 200 ms), then the queue, until the window's end (and its Retry-After) at 1010.
      for (let t = 10; t < 1010; t += 50) {
        yield* TestClock.adjust("50 millis")
        yield* settle
      }
      yield* TestClock.adjust("20 millis")
      yield* settle
      expect(client.calls.slice(4).map((c) => c.at)).toEqual([1010, 1010])
      const results = yield* Effect.forEach(fibers, Fiber.join)
      expect(results.map((r) => r.metadata.attempts).sort()).toEqual([1, 1, 2, 2])
      expect(q.refused).toEqual([0, 0])
    }))

  it.scoped("a full queue fails at once as before (503 NoUpstreamAvailable with retryAfter), counted", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a")],
        pacing: { queue: 2 },
        retry: { maxRetryAfter: "30 seconds" }
      })
      client.fallback("a", quota(1, 10_000).reply)
      yield* relay.chat(ask())
      const before = yield* counter("a", "queue-full")
      const waiting = yield* Effect.forEach([1, 2], () => Effect.fork(relay.chat(ask())))
      yield* settle
      const error = yield* Effect.flip(relay.chat(ask()))
      expect(error._tag).toBe("NoUpstreamAvailable")
      expect((error as Relay.NoUpstreamAvailable).retryAfter).toBeDefined()
      expect(yield* counter("a", "queue-full")).toBe(before + 1)
      // The two in the queue are let through, one per 10 s window.
      yield* TestClock.adjust("10 seconds")
      yield* settle
      yield* TestClock.adjust("10 seconds")
      yield* Effect.forEach(waiting, Fiber.join)
      expect(client.calls.map((c) => c.at)).toEqual([0, 10_000, 20_000])
    }))

  it.scoped("a window that opens after maxRetryAfter fails at once; a wait past the deadline fails at the deadline", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a")],
        requestTimeout: "1500 millis",
        retry: { maxRetryAfter: "5 seconds" }
      })
      client.fallback("a", quota(1, 20_000).reply)
      yield* relay.chat(ask())
      // 20 s away: more than maxRetryAfter.
      const tooLong = yield* Effect.flip(relay.chat(ask()))
      expect(tooLong._tag).toBe("NoUpstreamAvailable")
      expect(client.calls).toHaveLength(1)

      const { client: client2, relay: relay2 } = yield* setup({
        upstreams: [upstream("b")],
        requestTimeout: "1500 millis"
      })
      client2.fallback("b", quota(1, 1000).reply)
      yield* relay2.chat(ask())
      yield* TestClock.adjust("1 millis")
      // The next window at 1000: the first waiter gets it, the second would wait until 2000, past its deadline (1501).
      const first = yield* Effect.fork(relay2.chat(ask()))
      yield* settle
      const second = yield* Effect.fork(relay2.chat(ask()))
      yield* settle
      yield* TestClock.adjust("1000 millis")
      yield* settle
      expect((yield* Fiber.join(first)).metadata.attempts).toBe(1)
      yield* TestClock.adjust("499 millis")
      const late = yield* Effect.flip(Fiber.join(second))
      expect(late._tag).toBe("NoUpstreamAvailable")
      expect(client2.calls.map((c) => c.at)).toEqual([0, 1000])
    }))
})

describe("Relay pacing behind a hung call", () => {
  it.scoped("an upstream with no known limit: after its 429's cooldown, a hung call of it holds no request (seed-article's 503s)", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, timeout: "30 seconds" }), upstream("b", { priority: 2 })],
        maxAttempts: 3
      })
      // a: one call hangs (30 s), the next answers 429 without any header (a 1 s cooldown), then 200s.
      client.script("a", Scripted.hang, Scripted.status(429))
      client.fallback("a", Scripted.ok("from a"))
      // b: 200, then a 429 with Retry-After 5 s, then 200s.
      client.script("b", Scripted.ok("from b"), Scripted.status(429, { "retry-after": "5" }))
      client.fallback("b", Scripted.ok("from b"))
      const hung = yield* Effect.fork(relay.chat(ask()))
      yield* settle
      expect((yield* relay.chat(ask())).metadata.upstream).toBe("b")
      // a's cooldown is over (b's next answer would be a 429 with Retry-After 5 s): the request must go to a at once.
      yield* TestClock.adjust("1500 millis")
      const late = yield* Effect.fork(Effect.either(relay.chat(ask())))
      yield* settle
      // (Before the fix it failed: "a: rate-limit window spent" twice, held behind the hung call, and b cooling down.)
      for (let i = 0; i < 12; i++) {
        yield* TestClock.adjust("1 second")
        yield* settle
      }
      const result = yield* Fiber.join(late)
      expect(result._tag === "Right" ? result.right.metadata.upstream : result.left._tag).toBe("a")
      // a first, as its priority says: no longer held back by its hung call.
      expect(client.calls.map((c) => [c.upstream, c.at])).toEqual([["a", 0], ["a", 0], ["b", 0], ["a", 1500]])
      yield* Fiber.interrupt(hung)
    }))
})

describe("Relay pacing: the hold after a 429 is the cooldown the relay started", () => {
  /**
   * a: one call hangs (an hour), the next is answered with `answer` (at
   * `answerAt` ms); b serves the rest. Returns a's pacer and when a waiter
   * in its queue, arriving just after the 429, is let through.
   */
  const holdAfter = (
    options: Partial<Relay.Options>,
    answer: Scripted.Reply,
    before: (cooldowns: ScriptedRelay["cooldowns"]) => Effect.Effect<void> = () => Effect.void
  ) =>
    Effect.gen(function*() {
      const { client, cooldowns, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, timeout: "1 hour" }), upstream("b", { priority: 2 })],
        maxAttempts: 3,
        ...options
      })
      client.script("a", Scripted.hang, Scripted.delayed("100 millis", answer))
      client.fallback("b", Scripted.ok("from b"))
      const hung = yield* Effect.fork(relay.chat(ask()))
      yield* settle
      const second = yield* Effect.fork(relay.chat(ask()))
      yield* settle
      yield* before(cooldowns)
      yield* TestClock.adjust("100 millis")
      yield* settle
      expect((yield* Fiber.join(second)).metadata.upstream).toBe("b")
      const pacer = Pacing.pacerOf(relay.upstreams.find((u) => u.name === "a")!)
      expect(pacer.inFlight).toBe(1) // the hung call
      const waiter = yield* Effect.fork(pacer.wait(3_600_000, 100))
      let grantedAt: number | undefined
      for (let t = 100; t < 200_000 && grantedAt === undefined; t += 100) {
        yield* TestClock.adjust("100 millis")
        yield* settle
        if (waiter.unsafePoll() !== null) grantedAt = t + 100
      }
      expect(yield* Fiber.join(waiter)).toBe("granted")
      const active = yield* cooldowns.active(100)
      yield* Fiber.interrupt(hung)
      return { grantedAt, cooldownUntil: active.get("a")?.until }
    })

  it.scoped("a quota's 429: held for the quota cooldown (20 s here), not the rate-limit cooldown (1 s before)", () =>
    Effect.gen(function*() {
      const { cooldownUntil, grantedAt } = yield* holdAfter({ quotaCooldown: "20 seconds" }, Scripted.status(429, {}, Scripted.quotaBody))
      expect(cooldownUntil).toBe(20_100)
      expect(grantedAt).toBe(20_100)
    }))

  it.scoped("a longer cooldown from another replica already in the store: held until it ends (5 s), not for this 429's 1 s", () =>
    Effect.gen(function*() {
      const { cooldownUntil, grantedAt } = yield* holdAfter(
        {},
        Scripted.status(429),
        (cooldowns) => cooldowns.start("a", { until: 5000, reason: "rate-limited" })
      )
      expect(cooldownUntil).toBe(5000)
      expect(grantedAt).toBe(5000)
    }))

  // The two cases below agreed before too (the pacer read the same Retry-After and was given rateLimitCooldown): guards.
  it.scoped("a Retry-After above maxRetryAfter (30 s > 10 s): held until the cooldown's end, 30 s", () =>
    Effect.gen(function*() {
      const { cooldownUntil, grantedAt } = yield* holdAfter(
        { retry: { maxRetryAfter: "10 seconds" } },
        Scripted.status(429, { "retry-after": "30" })
      )
      expect(cooldownUntil).toBe(30_100)
      expect(grantedAt).toBe(30_100)
    }))

  it.scoped("a rateLimitCooldown of 3 s and no Retry-After: held 3 s", () =>
    Effect.gen(function*() {
      const { cooldownUntil, grantedAt } = yield* holdAfter({ rateLimitCooldown: "3 seconds" }, Scripted.status(429))
      expect(cooldownUntil).toBe(3100)
      expect(grantedAt).toBe(3100)
    }))
})

describe("unreachable cooldown", () => {
  it.scoped("a refused connection takes the upstream out for 5 s: the next requests go straight to the other", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a", { priority: 1 }), upstream("b", { priority: 2 })] })
      client.fallback("a", Scripted.unreachable("ECONNREFUSED"))
      const first = yield* relay.chat(ask())
      expect(first.metadata.upstream).toBe("b")
      expect(first.metadata.failures).toEqual(["a: connection failed (ECONNREFUSED)"])
      for (let i = 0; i < 3; i++) expect((yield* relay.chat(ask())).metadata.attempts).toBe(1)
      expect(client.callsTo("a")).toHaveLength(1)
      yield* TestClock.adjust("4999 millis")
      yield* relay.chat(ask())
      expect(client.callsTo("a")).toHaveLength(1)
      yield* TestClock.adjust("1 millis")
      yield* relay.chat(ask())
      expect(client.callsTo("a")).toHaveLength(2)
    }))

  it.scoped("never twice within one request, whatever the rounds; unreachableCooldown is configurable", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1 }), upstream("b", { priority: 2 })],
        maxAttempts: 5,
        retry: { maxRetries: 3, baseDelay: "10 millis" },
        unreachableCooldown: "1 second"
      })
      client.fallback("a", Scripted.unreachable("ECONNREFUSED"))
      client.script("b", ...[1, 2, 3, 4].map(() => Scripted.status(503)))
      const fiber = yield* Effect.fork(relay.chat(ask()))
      for (let i = 0; i < 20; i++) {
        yield* TestClock.adjust("10 millis")
        yield* settle
      }
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error._tag).toBe("AllUpstreamsFailed")
      expect(client.callsTo("a")).toHaveLength(1)
      // Four rounds: a in the first only.
      expect(client.calls.map((c) => c.upstream)).toEqual(["a", "b", "b", "b", "b"])
      yield* TestClock.adjust("1 second")
      expect((yield* relay.chat(ask())).metadata.failures).toEqual(["a: connection failed (ECONNREFUSED)"])
      expect(client.callsTo("a")).toHaveLength(2)
    }))

  it.scoped("a reset connection is not a refusal: no cooldown", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a", { priority: 1 }), upstream("b", { priority: 2 })] })
      client.script("a", Scripted.unreachable("ECONNRESET"))
      expect((yield* relay.chat(ask())).metadata.upstream).toBe("b")
      expect((yield* relay.chat(ask())).metadata.upstream).toBe("a")
    }))
})
