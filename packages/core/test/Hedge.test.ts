/**
 * Hedging (Relay `hedge` option, `Hedge` module) under TestClock against a
 * scripted client: when the hedge fires, who wins, that the loser is
 * interrupted and its slot given back, the budget's cap, the upstreams a
 * hedge may not go to, the caller's opt-out, `after: p95`, and streams.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as Cooldown from "../src/Cooldown.js"
import * as Hedge from "../src/Hedge.js"
import type * as OpenAI from "../src/OpenAI.js"
import type * as Relay from "../src/Relay.js"
import * as Upstream from "../src/Upstream.js"
import * as Scripted from "./support/ScriptedClient.js"
import * as Support from "./support/ScriptedRelay.js"

const MODEL = "gpt-4.1"

const ordered = (...names: ReadonlyArray<string>): Array<Upstream.Config> => Support.ordered([MODEL], ...names)

interface Harness extends Support.ScriptedRelay {
  readonly up: (name: string) => Upstream.Upstream
}

/** A relay over upstreams a, b, c (unless `options` names others), with `up` to find one by name. */
const setup = (options: Partial<Relay.Options>): Effect.Effect<Harness, never, Scope.Scope> =>
  Effect.map(
    Support.scriptedRelay({ upstreams: ordered("a", "b", "c"), ...options }),
    (harness) => ({ ...harness, up: (name) => harness.relay.upstreams.find((u) => u.name === name)! })
  )

const request = (extra: Partial<OpenAI.ChatCompletionRequest> = {}): OpenAI.ChatCompletionRequest => ({
  model: MODEL,
  messages: [{ role: "user", content: "hi" }],
  ...extra
})

const names = (calls: ReadonlyArray<Scripted.Call>) => calls.map((c) => c.upstream)

/** A reply that never comes, counting its interruption (the HTTP call aborted). */
const hangCounting = (counter: { interrupted: number }): Scripted.Reply & Scripted.StreamReply => () =>
  Effect.never.pipe(Effect.onInterrupt(() => Effect.sync(() => void counter.interrupted++)))

/** `delayed`, counting an interruption during the delay. */
const slow = <R extends Scripted.Reply | Scripted.StreamReply>(
  delay: Duration.DurationInput,
  then: R,
  counter: { interrupted: number }
): R => {
  const f = (call: Scripted.Call) =>
    Effect.zipRight(
      Effect.sleep(Duration.decode(delay)).pipe(Effect.onInterrupt(() => Effect.sync(() => void counter.interrupted++))),
      (then as Scripted.Reply)(call)
    )
  return f as unknown as R
}

/** Lets forked fibers run without moving the clock. */
const yieldMany = Effect.gen(function*() {
  for (let i = 0; i < 50; i++) yield* Effect.yieldNow()
})

/** Forks `call`, lets it start, moves the clock by `duration` and lets it run again: the fiber, to look at before it ends. */
const forkAndAdvance = <A, E>(call: Effect.Effect<A, E>, duration: Duration.DurationInput) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(call)
    yield* yieldMany
    yield* TestClock.adjust(duration)
    yield* yieldMany
    return fiber
  })

/** Forks `call`, lets it start, moves the clock by `duration`, and joins it. */
const joinAfter = <A, E>(call: Effect.Effect<A, E>, duration: Duration.DurationInput) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(call)
    yield* yieldMany
    yield* TestClock.adjust(duration)
    return yield* Fiber.join(fiber)
  })

const hedgedCount = (upstream: string, outcome: string) =>
  Effect.map(Metric.value(Hedge.hedgedBy(upstream, outcome)), (s) => s.count)

describe("hedging: when it fires and who wins", () => {
  it.scoped("fires after `after` and not before; the faster hedge wins and the slow call is aborted, its slot back", () =>
    Effect.gen(function*() {
      const { client, relay, up } = yield* setup({ hedge: { after: Duration.millis(800), maxExtra: 1 } })
      const primary = { interrupted: 0 }
      client.script("a", slow(Duration.seconds(2), Scripted.ok("from a"), primary))
      client.script("b", Scripted.delayed(Duration.millis(100), Scripted.ok("from b")))
      const wonBefore = yield* hedgedCount("b", "won")

      const fiber = yield* forkAndAdvance(relay.chat(request()), Duration.millis(799))
      expect(names(client.calls)).toEqual(["a"])
      expect(up("a").bulkhead.unsafeStats().active).toBe(1)

      yield* TestClock.adjust(Duration.millis(1))
      yield* yieldMany
      expect(names(client.calls)).toEqual(["a", "b"])
      expect(client.calls[1]!.at - client.calls[0]!.at).toBe(800)
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)

      yield* TestClock.adjust(Duration.millis(100))
      const result = yield* Fiber.join(fiber)
      expect(result.body).toContain("from b")
      expect(result.metadata.upstream).toBe("b")
      expect(result.metadata.attempts).toBe(2)
      expect(result.metadata.hedge).toEqual({ upstream: "b", outcome: "won" })
      // The loser was interrupted (its call aborted) and both slots are free when the answer is back.
      expect(primary.interrupted).toBe(1)
      expect(up("a").bulkhead.unsafeStats().active).toBe(0)
      expect(up("b").bulkhead.unsafeStats().active).toBe(0)
      expect((yield* hedgedCount("b", "won")) - wonBefore).toBe(1)
    }))

  it.scoped("an answer before `after` sends no hedge", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ hedge: { after: Duration.millis(800), maxExtra: 1 } })
      client.script("a", Scripted.delayed(Duration.millis(799), Scripted.ok("from a")))
      const result = yield* joinAfter(relay.chat(request()), Duration.millis(799))
      expect(result.metadata.upstream).toBe("a")
      expect(result.metadata.hedge).toBeUndefined()
      yield* TestClock.adjust(Duration.seconds(5))
      expect(names(client.calls)).toEqual(["a"])
    }))

  it.scoped("the first call answering first wins: the hedge is aborted (outcome lost)", () =>
    Effect.gen(function*() {
      const { client, relay, up } = yield* setup({ hedge: { after: Duration.millis(500), maxExtra: 1 } })
      const hedge = { interrupted: 0 }
      client.script("a", Scripted.delayed(Duration.millis(600), Scripted.ok("from a")))
      client.script("b", hangCounting(hedge))
      const result = yield* joinAfter(relay.chat(request()), Duration.millis(600))
      expect(result.metadata.upstream).toBe("a")
      expect(result.metadata.hedge).toEqual({ upstream: "b", outcome: "lost" })
      expect(names(client.calls)).toEqual(["a", "b"])
      expect(hedge.interrupted).toBe(1)
      expect(up("b").bulkhead.unsafeStats().active).toBe(0)
    }))

  it.scoped("a call that fails after the hedge went out leaves the hedge to answer; both failing moves on to the next", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ hedge: { after: Duration.millis(500), maxExtra: 1 } })
      client.script("a", Scripted.delayed(Duration.millis(700), Scripted.status(503)))
      client.script("b", Scripted.delayed(Duration.millis(400), Scripted.ok("from b")))
      const result = yield* joinAfter(relay.chat(request()), Duration.millis(900))
      expect(result.metadata.upstream).toBe("b")
      expect(result.metadata.hedge).toEqual({ upstream: "b", outcome: "won" })
      expect(result.metadata.failures).toEqual(["a: server error (503)"])

      client.clear()
      client.script("a", Scripted.delayed(Duration.millis(700), Scripted.status(503)))
      client.script("b", Scripted.delayed(Duration.millis(100), Scripted.status(502)))
      const second = yield* forkAndAdvance(relay.chat(request()), Duration.millis(700))
      yield* TestClock.adjust(Duration.millis(10))
      const moved = yield* Fiber.join(second)
      expect(names(client.calls)).toEqual(["a", "b", "c"])
      expect(moved.metadata.upstream).toBe("c")
      expect(moved.metadata.hedge).toEqual({ upstream: "b", outcome: "failed" })
      expect(moved.metadata.attempts).toBe(3)
    }))
})

describe("hedging: limits", () => {
  it.scoped("maxExtra caps hedges at that share of requests over the window", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ hedge: { after: Duration.millis(100), maxExtra: 0.25 } })
      client.fallback("a", Scripted.delayed(Duration.millis(300), Scripted.ok("from a")))
      client.fallback("b", Scripted.delayed(Duration.millis(300), Scripted.ok("from b")))
      const hedgedTo = []
      for (let i = 0; i < 8; i++) {
        const result = yield* joinAfter(relay.chat(request()), Duration.millis(300))
        if (result.metadata.hedge !== undefined) hedgedTo.push(i)
      }
      // A quarter of 8 requests: the 4th (1 <= 0.25 * 4) and the 8th (2 <= 0.25 * 8).
      expect(hedgedTo).toEqual([3, 7])
      expect(client.callsTo("b").length).toBe(2)
    }))

  it("the budget: no floor, a sliding window", () => {
    const budget = Hedge.makeBudget(0.1, 10_000)
    for (let i = 0; i < 9; i++) budget.recordPrimary(0)
    expect(budget.tryAcquire(0)).toBe(false)
    budget.recordPrimary(500)
    expect(budget.tryAcquire(500)).toBe(true)
    expect(budget.tryAcquire(500)).toBe(false)
    // 10 s later the window holds none of them.
    expect(budget.stats(10_999)).toEqual({ primaries: 0, hedges: 0 })
    budget.recordPrimary(11_000)
    expect(budget.tryAcquire(11_000)).toBe(false)
  })

  it.scoped("no hedge to an upstream whose breaker is open, nor to one cooling down", () =>
    Effect.gen(function*() {
      const { client, cooldowns, relay, up } = yield* setup({
        upstreams: ordered("a", "b"),
        hedge: { after: Duration.millis(100), maxExtra: 1 }
      })
      client.fallback("a", Scripted.delayed(Duration.seconds(1), Scripted.ok("from a")))
      yield* up("b").breaker.forceOpen
      const result = yield* joinAfter(relay.chat(request()), Duration.seconds(1))
      expect(result.metadata.upstream).toBe("a")
      expect(result.metadata.hedge).toBeUndefined()
      expect(names(client.calls)).toEqual(["a"])

      yield* up("b").breaker.reset
      yield* Effect.provideService(Cooldown.start("b", Duration.minutes(1), "rate-limited"), Cooldown.CooldownStore, cooldowns)
      const cooling = yield* joinAfter(relay.chat(request()), Duration.seconds(1))
      expect(cooling.metadata.hedge).toBeUndefined()
      expect(names(client.calls)).toEqual(["a", "a"])
    }))

  it.scoped("a hedge spends from the retry budget: with it spent, a slow call is waited for", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        hedge: { after: Duration.millis(100), maxExtra: 1 },
        retryBudget: { ratio: 0, minPerSecond: 0 }
      })
      client.fallback("a", Scripted.delayed(Duration.seconds(1), Scripted.ok("from a")))
      const result = yield* joinAfter(relay.chat(request()), Duration.seconds(1))
      expect(result.metadata.upstream).toBe("a")
      expect(result.metadata.hedge).toBeUndefined()
      expect(names(client.calls)).toEqual(["a"])
      expect(relay.retryBudget.unsafeStats().exhausted).toBe(1)
    }))

  it.scoped("hedges use at most half the retry budget: the failover after a 429 still has its token", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        hedge: { after: Duration.millis(100), maxExtra: 1 },
        // Two tokens over the 10 s window, whatever the traffic.
        retryBudget: { ratio: 0, minPerSecond: 0.2 }
      })
      client.fallback("b", Scripted.ok("from b"))
      for (let i = 0; i < 2; i++) {
        client.script("a", Scripted.delayed(Duration.seconds(1), Scripted.ok("from a")))
        yield* joinAfter(relay.chat(request()), Duration.seconds(1))
      }
      // The first slow call was hedged (token 1 of 2), the second was not: the hedges' half is spent.
      expect(names(client.calls)).toEqual(["a", "b", "a"])
      client.script("a", Scripted.status(429))
      const result = yield* relay.chat(request())
      expect(result.metadata.upstream).toBe("b")
      expect(names(client.calls)).toEqual(["a", "b", "a", "a", "b"])
      expect(relay.retryBudget.unsafeStats()).toMatchObject({ spent: 2, exhausted: 0 })
    }))

  it.scoped("a hedge whose connection was refused reached no upstream: the failover after the slow call's failure is free", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        hedge: { after: Duration.millis(100), maxExtra: 1 },
        retryBudget: { ratio: 0, minPerSecond: 0.2 },
        unreachableCooldown: "0 millis"
      })
      client.script("a", Scripted.delayed(Duration.seconds(1), Scripted.status(503)))
      client.fallback("b", Scripted.unreachable("ECONNREFUSED"))
      client.fallback("c", Scripted.ok("from c"))
      const result = yield* joinAfter(relay.chat(request()), Duration.seconds(1))
      expect(result.metadata.upstream).toBe("c")
      expect(names(client.calls)).toEqual(["a", "b", "c"])
      // The hedge paid one token; the refused connection gave it back to the call after it.
      expect(relay.retryBudget.unsafeStats()).toMatchObject({ spent: 1, exhausted: 0 })
    }))

  it.scoped("a request marked `hedge: false` (x-breakwater-hedge: off) is never hedged", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ hedge: { after: Duration.millis(100), maxExtra: 1 } })
      client.fallback("a", Scripted.delayed(Duration.seconds(1), Scripted.ok("from a")))
      const result = yield* joinAfter(relay.chat(request(), { hedge: false }), Duration.seconds(1))
      expect(result.metadata.upstream).toBe("a")
      expect(names(client.calls)).toEqual(["a"])
      // Without the mark the same request is hedged.
      const hedged = yield* joinAfter(relay.chat(request()), Duration.seconds(1))
      expect(hedged.metadata.hedge?.upstream).toBe("b")
    }))
})

describe("hedging: after p95", () => {
  it.scoped("uses initialDelay until the upstream has 20 measured calls, then its 95th percentile", () =>
    Effect.gen(function*() {
      const { client, relay, up } = yield* setup({
        hedge: { after: Hedge.percentile(95), maxExtra: 1, initialDelay: Duration.millis(700) }
      })
      const policy = Hedge.make({ after: Hedge.percentile(95), initialDelay: Duration.millis(700) })
      expect(policy.delayFor(up("a"))).toBe(700)
      // 19 calls at 100 ms and one at 400 ms: p95 of 20 samples is the 19th, 100 ms.
      for (let i = 0; i < 20; i++) {
        client.script("a", Scripted.delayed(Duration.millis(i === 19 ? 400 : 100), Scripted.ok()))
        yield* joinAfter(relay.chat(request(), { hedge: false }), Duration.millis(i === 19 ? 400 : 100))
      }
      expect(Upstream.latencyQuantile(up("a"), 0.95, 20)).toBe(100)
      expect(policy.delayFor(up("a"))).toBe(100)
      // Now a slow call is hedged after 100 ms.
      client.clear()
      client.script("a", Scripted.delayed(Duration.seconds(2), Scripted.ok("from a")))
      client.script("b", Scripted.delayed(Duration.millis(50), Scripted.ok("from b")))
      const fiber = yield* forkAndAdvance(relay.chat(request()), Duration.millis(100))
      expect(names(client.calls)).toEqual(["a", "b"])
      yield* TestClock.adjust(Duration.millis(50))
      const result = yield* Fiber.join(fiber)
      expect(result.metadata.upstream).toBe("b")
    }))

  it("a minimum delay: a very fast upstream's percentile is not taken below minDelay", () => {
    const u = { stats: { latencies: undefined } } as unknown as Upstream.Upstream
    Upstream.keepLatencies(u)
    for (let i = 0; i < 30; i++) Upstream.noteLatency(u, 5)
    expect(Hedge.make({ after: Hedge.percentile(95) }).delayFor(u)).toBe(50)
    expect(Hedge.make({ after: Hedge.percentile(95), minDelay: Duration.millis(2) }).delayFor(u)).toBe(5)
  })
})

describe("hedging: who keeps latencies", () => {
  it.scoped("only a relay hedging after a percentile keeps its upstreams' latencies; without it, none is written", () =>
    Effect.gen(function*() {
      // No hedge: successes count (EWMA, counters), no latency sample is kept.
      const plain = yield* setup({})
      plain.client.fallback("a", Scripted.delayed(Duration.millis(100), Scripted.ok()))
      for (let i = 0; i < 5; i++) yield* joinAfter(plain.relay.chat(request()), Duration.millis(100))
      expect(plain.up("a").stats.successes).toBe(5)
      expect(plain.up("a").stats.latencyEwmaMs).toBe(100)
      expect(plain.up("a").stats.latencies).toBeUndefined()
      // A fixed delay reads no percentile either, nor keeps the lower bound of a call that lost its race.
      const fixed = yield* setup({ hedge: { after: Duration.millis(100), maxExtra: 1 } })
      fixed.client.script("a", Scripted.delayed(Duration.seconds(1), Scripted.ok("from a")), Scripted.ok())
      fixed.client.script("b", Scripted.delayed(Duration.millis(50), Scripted.ok("from b")))
      const raced = yield* joinAfter(fixed.relay.chat(request()), Duration.millis(150))
      expect(raced.metadata.hedge).toEqual({ upstream: "b", outcome: "won" })
      // The relay's own count of its hedges (the other relays here sent none).
      expect(fixed.relay.hedges()).toEqual({ won: 1, lost: 0, failed: 0 })
      expect(plain.relay.hedges()).toEqual({ won: 0, lost: 0, failed: 0 })
      yield* fixed.relay.chat(request())
      expect(fixed.up("a").stats.successes).toBe(1)
      expect(fixed.up("a").stats.latencies).toBeUndefined()
      expect(fixed.up("b").stats.latencies).toBeUndefined()
      // p95: every success is a sample (the percentile hedge itself: "hedging: after p95" above).
      const p95 = yield* setup({ hedge: { after: Hedge.percentile(95), maxExtra: 1 } })
      p95.client.fallback("a", Scripted.delayed(Duration.millis(100), Scripted.ok()))
      for (let i = 0; i < 3; i++) yield* joinAfter(p95.relay.chat(request(), { hedge: false }), Duration.millis(100))
      expect(p95.up("a").stats.latencies?.total).toBe(3)
      expect(Array.from(p95.up("a").stats.latencies!.ring.slice(0, 4))).toEqual([100, 100, 100, 0])
      expect(p95.up("b").stats.latencies?.total).toBe(0)
    }))
})

describe("hedging: the first call's latency sample after a race", () => {
  it.scoped("a first call cut short by its hedge adds its time so far (a lower bound); a first call that won adds its own, once", () =>
    Effect.gen(function*() {
      const { client, relay, up } = yield* setup({ hedge: { after: Hedge.percentile(95), maxExtra: 1, minDelay: Duration.millis(1) } })
      // 20 samples of 100 ms: the p95 is 100 ms, so the next slow call is hedged after 100 ms.
      client.fallback("a", Scripted.delayed(Duration.millis(100), Scripted.ok()))
      for (let i = 0; i < 20; i++) yield* joinAfter(relay.chat(request(), { hedge: false }), Duration.millis(100))
      const ring = () => up("a").stats.latencies!
      expect(ring().total).toBe(20)
      // The hedge wins at 100 + 50 ms: a's call is interrupted after 150 ms, its sample 150.
      client.script("a", Scripted.delayed(Duration.seconds(2), Scripted.ok("from a")))
      client.script("b", Scripted.delayed(Duration.millis(50), Scripted.ok("from b")))
      const hedged = yield* joinAfter(relay.chat(request()), Duration.millis(150))
      expect(hedged.metadata.hedge).toEqual({ upstream: "b", outcome: "won" })
      expect(ring().total).toBe(21)
      expect(ring().ring[20]).toBe(150)
      // The first call wins at 130 ms against a hedge started at 100 ms: one sample, 130.
      client.script("a", Scripted.delayed(Duration.millis(130), Scripted.ok("from a")))
      client.script("b", Scripted.delayed(Duration.seconds(2), Scripted.ok("from b")))
      const lost = yield* joinAfter(relay.chat(request()), Duration.millis(130))
      expect(lost.metadata.hedge).toEqual({ upstream: "b", outcome: "lost" })
      expect(ring().total).toBe(22)
      expect(ring().ring[21]).toBe(130)
    }))
})

describe("hedging: streams", () => {
  it.scoped("a stream without a first event after `after` is hedged; the first stream to send one wins, the other is closed", () =>
    Effect.gen(function*() {
      const { client, relay, up } = yield* setup({ hedge: { after: Duration.millis(800), maxExtra: 1 } })
      const primary = { interrupted: 0 }
      client.scriptStream("a", slow(Duration.seconds(2), Scripted.sseOk("slow"), primary))
      client.scriptStream("b", Scripted.delayed(Duration.millis(100), Scripted.sseOk("fast")))
      const fiber = yield* forkAndAdvance(relay.chatStream(request({ stream: true })), Duration.millis(799))
      expect(names(client.calls)).toEqual(["a"])
      yield* TestClock.adjust(Duration.millis(101))
      const result = yield* Fiber.join(fiber)
      expect(result.upstream).toBe("b")
      expect(primary.interrupted).toBe(1)
      expect(up("a").bulkhead.unsafeStats().active).toBe(0)
      const events = Chunk.toReadonlyArray(yield* Stream.runCollect(result.events))
      expect(events.join("")).toContain("[DONE]")
      const done = yield* result.done
      expect(done.streamOutcome).toBe("completed")
      expect(done.hedge).toEqual({ upstream: "b", outcome: "won" })
      expect(up("b").bulkhead.unsafeStats().active).toBe(0)
    }))

  it.scoped("a stream whose first event comes first keeps going; the hedge is closed, its slot back", () =>
    Effect.gen(function*() {
      const { client, relay, up } = yield* setup({ hedge: { after: Duration.millis(300), maxExtra: 1 } })
      const hedge = { interrupted: 0 }
      client.scriptStream("a", Scripted.delayed(Duration.millis(400), Scripted.sseOk("first")))
      client.scriptStream("b", hangCounting(hedge))
      const result = yield* joinAfter(relay.chatStream(request({ stream: true })), Duration.millis(400))
      expect(result.upstream).toBe("a")
      expect(hedge.interrupted).toBe(1)
      expect(up("b").bulkhead.unsafeStats().active).toBe(0)
      yield* Stream.runDrain(result.events)
      expect((yield* result.done).hedge).toEqual({ upstream: "b", outcome: "lost" })
    }))
})

describe("hedging off", () => {
  it.scoped("without `hedge` a slow call is simply waited for", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({})
      client.script("a", Scripted.delayed(Duration.seconds(5), Scripted.ok("from a")))
      const fiber = yield* Effect.fork(relay.chat(request()))
      yield* yieldMany
      yield* TestClock.adjust(Duration.seconds(5))
      const exit = yield* Fiber.await(fiber)
      expect(Exit.isSuccess(exit) && exit.value.metadata.upstream).toBe("a")
      expect(names(client.calls)).toEqual(["a"])
    }))
})

describe("hedging: sameUpstream (a second call to the same upstream)", () => {
  it.scoped("off by default: a relay with one upstream never hedges", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a"), hedge: { after: Duration.millis(100), maxExtra: 1 } })
      client.fallback("a", Scripted.delayed(Duration.seconds(1), Scripted.ok("from a")))
      const result = yield* joinAfter(relay.chat(request()), Duration.seconds(1))
      expect(result.metadata.hedge).toBeUndefined()
      expect(names(client.calls)).toEqual(["a"])
    }))

  it.scoped("on, with no other upstream eligible: a second call to the same one; the faster wins, the slow one is aborted", () =>
    Effect.gen(function*() {
      const { client, relay, up } = yield* setup({
        upstreams: ordered("a"),
        hedge: { after: Duration.millis(800), maxExtra: 1, sameUpstream: true }
      })
      const first = { interrupted: 0 }
      client.script("a", slow(Duration.seconds(2), Scripted.ok("first call"), first))
      client.script("a", Scripted.delayed(Duration.millis(100), Scripted.ok("second call")))
      const fiber = yield* forkAndAdvance(relay.chat(request()), Duration.millis(799))
      expect(names(client.calls)).toEqual(["a"])
      yield* TestClock.adjust(Duration.millis(1))
      yield* yieldMany
      expect(names(client.calls)).toEqual(["a", "a"])
      expect(up("a").bulkhead.unsafeStats().active).toBe(2)
      yield* TestClock.adjust(Duration.millis(100))
      const result = yield* Fiber.join(fiber)
      expect(result.body).toContain("second call")
      expect(result.metadata.hedge).toEqual({ upstream: "a", outcome: "won" })
      expect(result.metadata.attempts).toBe(2)
      expect(first.interrupted).toBe(1)
      expect(up("a").bulkhead.unsafeStats().active).toBe(0)
    }))

  it.scoped("another eligible upstream is preferred; the same one is never hedged to while cooling down or open", () =>
    Effect.gen(function*() {
      const { client, cooldowns, relay, up } = yield* setup({
        upstreams: ordered("a", "b"),
        hedge: { after: Duration.millis(100), maxExtra: 1, sameUpstream: true }
      })
      client.fallback("a", Scripted.delayed(Duration.seconds(1), Scripted.ok("from a")))
      client.fallback("b", Scripted.delayed(Duration.millis(50), Scripted.ok("from b")))
      const other = yield* joinAfter(relay.chat(request()), Duration.seconds(1))
      expect(other.metadata.hedge).toEqual({ upstream: "b", outcome: "won" })
      expect(names(client.calls)).toEqual(["a", "b"])

      // b cooling down: the second call goes to a itself.
      client.clear()
      yield* Effect.provideService(Cooldown.start("b", Duration.minutes(1), "rate-limited"), Cooldown.CooldownStore, cooldowns)
      const same = yield* joinAfter(relay.chat(request()), Duration.seconds(1))
      expect(same.metadata.hedge?.upstream).toBe("a")
      expect(names(client.calls)).toEqual(["a", "a"])

      // a starts cooling down while its first call is out: no second call to it.
      client.clear()
      const cooling = yield* Effect.fork(relay.chat(request()))
      yield* yieldMany
      yield* Effect.provideService(Cooldown.start("a", Duration.minutes(1), "rate-limited"), Cooldown.CooldownStore, cooldowns)
      yield* TestClock.adjust(Duration.seconds(1))
      expect((yield* Fiber.join(cooling)).metadata.hedge).toBeUndefined()
      expect(names(client.calls)).toEqual(["a"])
      yield* cooldowns.clear("a")

      // a's breaker open (a call already admitted): no second call to it.
      client.clear()
      const open = yield* Effect.fork(relay.chat(request()))
      yield* yieldMany
      yield* up("a").breaker.forceOpen
      yield* TestClock.adjust(Duration.seconds(1))
      expect((yield* Fiber.join(open)).metadata.hedge).toBeUndefined()
      expect(names(client.calls)).toEqual(["a"])
    }))
})
