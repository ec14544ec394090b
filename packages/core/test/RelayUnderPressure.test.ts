/**
 * Never worse than direct (issue 15), under TestClock against a scripted
 * upstream client: the relay's retry budget, its panic threshold, and the
 * breaker defaults of its upstreams.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as TestClock from "effect/TestClock"
import type * as OpenAI from "../src/OpenAI.js"
import * as Relay from "../src/Relay.js"
import * as RetryBudget from "../src/RetryBudget.js"
import type * as Upstream from "../src/Upstream.js"
import * as Scripted from "./support/ScriptedClient.js"
import { scriptedRelay } from "./support/ScriptedRelay.js"

const MODEL = "gpt-4.1"

/** Upstreams a, b, c... with priorities 1, 2, 3..., so that the order is deterministic. */
const ordered = (...names: ReadonlyArray<string>): Array<Upstream.Config> =>
  names.map((name, i) => ({
    name,
    baseUrl: `https://${name}.example.test/v1`,
    apiKey: Redacted.make(`sk-secret-${name}`),
    models: [MODEL],
    priority: i + 1
  }))

const setup = scriptedRelay

const request = (content: string): OpenAI.ChatCompletionRequest => ({ model: MODEL, messages: [{ role: "user", content }] })

/** Breakers that stay out of the way (no rule but 1,000 failures in a row). */
const patientBreaker = { failureThreshold: 1_000, failureRate: undefined }

const exhaustedTotal = Metric.counter("breakwater_retry_budget_exhausted_total", {
  description: "Retries and failovers not made because the retry budget was spent",
  incremental: true
})

describe("retry budget", () => {
  it.scoped("failovers beyond the ratio of primary calls are not made: the request fails with what it has, saying why", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b"),
        breaker: patientBreaker,
        retry: { maxRetries: 0 },
        retryBudget: { ratio: 0.5, window: "10 seconds", minPerSecond: 0 }
      })
      client.fallback("a", Scripted.status(503))
      client.fallback("b", Scripted.ok("from b"))
      const before = (yield* Metric.value(exhaustedTotal)).count
      const outcomes: Array<string> = []
      for (let i = 0; i < 8; i++) {
        const exit = yield* Effect.either(relay.chat(request(`r${i}`)))
        outcomes.push(exit._tag === "Right" ? exit.right.metadata.upstream : exit.left._tag)
      }
      // Every other request may fail over: 0.5 of the primary calls so far.
      expect(outcomes).toEqual([
        "AllUpstreamsFailed",
        "b",
        "AllUpstreamsFailed",
        "b",
        "AllUpstreamsFailed",
        "b",
        "AllUpstreamsFailed",
        "b"
      ])
      expect(client.callsTo("a")).toHaveLength(8)
      expect(client.callsTo("b")).toHaveLength(4)
      expect((yield* Metric.value(exhaustedTotal)).count - before).toBe(4)
      expect(relay.retryBudget.unsafeStats()).toMatchObject({ primary: 8, spent: 4, allowed: 4 })

      // The refused request fails as when attempts run out, with a's error and why b was not tried.
      const refused = yield* Effect.flip(relay.chat(request("r8")))
      expect(refused._tag).toBe("AllUpstreamsFailed")
      if (refused._tag !== "AllUpstreamsFailed") return
      expect(refused.attempts).toBe(1)
      expect(refused.upstream).toBe("a")
      expect(refused.failures).toEqual([
        { upstream: "a", reason: expect.stringContaining("503") },
        { upstream: "b", reason: "retry budget exhausted", kind: "retry-budget" }
      ])
      expect(refused.message).toContain("b: retry budget exhausted")
    }))

  it.scoped("the window slides: after a quiet window the primary calls of before no longer pay for failovers", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b"),
        breaker: patientBreaker,
        retry: { maxRetries: 0 },
        retryBudget: { ratio: 0.5, window: "10 seconds", minPerSecond: 0 }
      })
      client.fallback("b", Scripted.ok("from b"))
      // Ten healthy requests: ten primary calls, nothing spent.
      for (let i = 0; i < 10; i++) expect((yield* relay.chat(request(`ok${i}`))).metadata.upstream).toBe("a")
      client.fallback("a", Scripted.status(503))
      yield* TestClock.adjust("9 seconds")
      // Still in the window: 11 primaries pay for 5 failovers.
      for (let i = 0; i < 5; i++) expect((yield* relay.chat(request(`in${i}`))).metadata.upstream).toBe("b")
      yield* TestClock.adjust("1 second")
      // The ten healthy primaries left the window; 5 primaries (t = 9 s) allow 2.5, 5 spent.
      expect((yield* Effect.flip(relay.chat(request("out"))))._tag).toBe("AllUpstreamsFailed")
      yield* TestClock.adjust("9 seconds")
      // t = 19 s: the spent calls of t = 9 s left too; "out" (t = 10 s) is still in.
      expect(relay.retryBudget.unsafeStats()).toMatchObject({ primary: 1, spent: 0 })
      // Two primaries: one failover; three: 1.5, one spent already.
      expect((yield* relay.chat(request("later"))).metadata.upstream).toBe("b")
      expect((yield* Effect.flip(relay.chat(request("later2"))))._tag).toBe("AllUpstreamsFailed")
    }))

  it.scoped("the floor: a quiet gateway still fails over minPerSecond times a second", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b"),
        breaker: patientBreaker,
        retry: { maxRetries: 0 },
        retryBudget: { ratio: 0.2, window: "10 seconds", minPerSecond: 1 }
      })
      client.fallback("a", Scripted.status(503))
      client.fallback("b", Scripted.ok("from b"))
      // One request a second: 0.2 * 10 primaries = 2 in a window, the floor 10.
      for (let i = 0; i < 30; i++) {
        expect((yield* relay.chat(request(`r${i}`))).metadata.upstream).toBe("b")
        yield* TestClock.adjust("1 second")
      }
      // Ten failovers within one second exhaust the floor.
      const burst: Array<string> = []
      for (let i = 0; i < 12; i++) {
        const exit = yield* Effect.either(relay.chat(request(`burst${i}`)))
        burst.push(exit._tag === "Right" ? "ok" : exit.left._tag)
      }
      // The window (10 s) holds 9 earlier failovers and 9 + 12 primaries: max(4.2, 10) = 10, one left.
      expect(burst.filter((o) => o === "ok")).toHaveLength(1)
    }))

  it.scoped("retries on the same upstream and new rounds spend from it too", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a").map((u) => ({ ...u, retry: { maxRetries: 2, baseDelay: "10 millis" } })),
        breaker: patientBreaker,
        retry: { maxRetries: 2, baseDelay: "10 millis", maxDelay: "10 millis" },
        retryBudget: { ratio: 0, minPerSecond: 0 }
      })
      client.fallback("a", Scripted.status(503))
      const fiber = yield* Effect.fork(Effect.flip(relay.chat(request("x"))))
      yield* TestClock.adjust("1 second")
      const error = yield* Fiber.join(fiber)
      expect(client.callsTo("a")).toHaveLength(1)
      expect(error._tag === "AllUpstreamsFailed" && error.failures.map((f) => f.reason)).toEqual([
        expect.stringContaining("503"),
        "retry budget exhausted"
      ])
    }))

  it.scoped("a refused connection reached no upstream: the failover after it is free; a reset one is paid for", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b"),
        breaker: patientBreaker,
        retry: { maxRetries: 0 },
        retryBudget: { ratio: 0, minPerSecond: 0 },
        // No `unreachable` cooldown: a stays in the plan, so each request meets its refusal.
        unreachableCooldown: "0 millis"
      })
      client.fallback("a", Scripted.unreachable("ECONNREFUSED"))
      client.fallback("b", Scripted.ok("from b"))
      for (let i = 0; i < 3; i++) expect((yield* relay.chat(request(`refused${i}`))).metadata.upstream).toBe("b")
      expect(relay.retryBudget.unsafeStats()).toMatchObject({ primary: 3, spent: 0, exhausted: 0 })
      // A reset connection may have reached the upstream: its failover is a retry like any other.
      client.fallback("a", Scripted.unreachable("ECONNRESET"))
      const error = yield* Effect.flip(relay.chat(request("reset")))
      expect(error._tag).toBe("AllUpstreamsFailed")
      expect(client.callsTo("b")).toHaveLength(3)
    }))

  it.scoped("a stream's failover spends from it", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b"),
        breaker: patientBreaker,
        retry: { maxRetries: 0 },
        retryBudget: { ratio: 0, minPerSecond: 0 }
      })
      client.fallbackStream("a", Scripted.streamStatus(503))
      client.fallbackStream("b", Scripted.sseOk("hi"))
      const error = yield* Effect.flip(relay.chatStream({ ...request("s"), stream: true }))
      expect(error._tag).toBe("AllUpstreamsFailed")
      expect(client.callsTo("b")).toHaveLength(0)
    }))

  it.scoped("off (`retryBudget: false`): only maxAttempts bounds failovers; a shared budget is used as it is", () =>
    Effect.gen(function*() {
      const off = yield* setup({ upstreams: ordered("a", "b"), breaker: patientBreaker, retryBudget: false })
      off.client.fallback("a", Scripted.status(503))
      off.client.fallback("b", Scripted.ok("from b"))
      for (let i = 0; i < 20; i++) expect((yield* off.relay.chat(request(`r${i}`))).metadata.upstream).toBe("b")
      expect(off.relay.retryBudget).toBe(RetryBudget.unlimited)

      const shared = yield* RetryBudget.make({ ratio: 0, minPerSecond: 0 })
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b"), breaker: patientBreaker, retryBudget: shared })
      client.fallback("a", Scripted.status(503))
      expect(relay.retryBudget).toBe(shared)
      expect((yield* Effect.flip(relay.chat(request("x"))))._tag).toBe("AllUpstreamsFailed")
      expect(shared.unsafeStats()).toMatchObject({ primary: 1, spent: 0, exhausted: 1 })
    }))

  it.scoped("on by default: 20% over 10 s, at least 3 a second", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b"), breaker: patientBreaker, retry: { maxRetries: 0 } })
      client.fallback("a", Scripted.status(503))
      client.fallback("b", Scripted.ok("from b"))
      let served = 0
      for (let i = 0; i < 40; i++) {
        if ((yield* Effect.either(relay.chat(request(`r${i}`))))._tag === "Right") served++
      }
      // The floor, 3 a second over 10 s: 30 failovers (0.2 * 40 = 8 is less).
      expect(served).toBe(30)
    }))
})

describe("panic threshold", () => {
  /** Opens the breakers of `names` (one failure each opens them) with requests that fail everywhere. */
  const trip = (client: Scripted.Scripted, relay: Relay.Relay, names: ReadonlyArray<string>) =>
    Effect.gen(function*() {
      for (const n of names) client.script(n, Scripted.status(503))
      yield* Effect.either(relay.chat(request("trip")))
    })

  it.scoped("by default (0.5): two of three breakers open is below half healthy, so all three are tried", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b", "c"),
        breaker: { failureThreshold: 1, failureRate: undefined, openDuration: "60 seconds" },
        retry: { maxRetries: 0 }
      })
      client.fallback("a", Scripted.ok("from a"))
      client.fallback("b", Scripted.ok("from b"))
      client.fallback("c", Scripted.ok("from c"))
      client.script("a", Scripted.status(503))
      client.script("b", Scripted.status(503))
      // a and b fail once each (their breakers open), c answers.
      expect((yield* relay.chat(request("1"))).metadata.upstream).toBe("c")
      // 1 of 3 healthy < 0.5: panic, a first by priority, its open breaker bypassed.
      const r = yield* relay.chat(request("2"))
      expect(r.metadata.upstream).toBe("a")
      expect(r.metadata.failures).toEqual([])
      const a = relay.upstreams.find((u) => u.name === "a")!
      // Bypassed: the open breaker heard nothing.
      expect((yield* a.breaker.snapshot).state).toBe("Open")
    }))

  it.scoped("one of two open is not below half: the open one is left out", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b"),
        breaker: { failureThreshold: 1, failureRate: undefined, openDuration: "60 seconds" },
        retry: { maxRetries: 0 }
      })
      client.fallback("a", Scripted.ok("from a"))
      client.fallback("b", Scripted.ok("from b"))
      yield* trip(client, relay, ["a"])
      expect((yield* relay.chat(request("2"))).metadata.upstream).toBe("b")
      expect(client.callsTo("a")).toHaveLength(1)
    }))

  it.scoped("off (`panic: false`): open breakers refuse, whatever the share", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b", "c"),
        breaker: { failureThreshold: 1, failureRate: undefined, openDuration: "60 seconds" },
        retry: { maxRetries: 0 },
        router: { panic: false }
      })
      client.fallback("a", Scripted.ok("from a"))
      client.fallback("c", Scripted.ok("from c"))
      client.script("a", Scripted.status(503))
      client.script("b", Scripted.status(503))
      expect((yield* relay.chat(request("1"))).metadata.upstream).toBe("c")
      expect((yield* relay.chat(request("2"))).metadata.upstream).toBe("c")
      expect(client.callsTo("a")).toHaveLength(1)
    }))

  it.scoped("an operator's forceOpen is respected: never panicked into, and not counted", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b", "c"),
        breaker: { failureThreshold: 1, failureRate: undefined, openDuration: "60 seconds" },
        retry: { maxRetries: 0, maxRetryAfter: "0 millis" }
      })
      for (const n of ["a", "b", "c"]) client.fallback(n, Scripted.ok(`from ${n}`))
      const [a, b] = relay.upstreams
      yield* a!.breaker.forceOpen
      yield* b!.breaker.forceOpen
      // Only c counts: healthy, no panic.
      expect((yield* relay.chat(request("1"))).metadata.upstream).toBe("c")
      // c's breaker opens: 0 of 1 counted healthy, panic, but only c is tried.
      client.script("c", Scripted.status(503))
      yield* Effect.either(relay.chat(request("2")))
      expect((yield* relay.chat(request("3"))).metadata.upstream).toBe("c")
      expect(client.callsTo("a")).toHaveLength(0)
      expect(client.callsTo("b")).toHaveLength(0)
    }))

  it.scoped("every breaker open (one upstream): tried anyway, as a direct client would", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a"),
        breaker: { failureThreshold: 1, failureRate: undefined, openDuration: "60 seconds" },
        retry: { maxRetries: 0 }
      })
      client.script("a", Scripted.status(503))
      client.fallback("a", Scripted.ok("back"))
      yield* Effect.either(relay.chat(request("1")))
      expect((yield* relay.chat(request("2"))).metadata.upstream).toBe("a")
    }))
})

describe("breaker defaults of a relay's upstreams", () => {
  /** `n` requests to a alone (no failover, no retry), failing in bursts: `run` failures in every `period` calls. */
  const bursts = (n: number, run: number, period: number) =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a"), retry: { maxRetries: 0 }, router: { panic: false } })
      const replies: Array<Scripted.Reply> = []
      for (let i = 0; i < n; i++) replies.push(i % period < run ? Scripted.status(503) : Scripted.ok("ok"))
      client.script("a", ...replies)
      let refused = 0
      for (let i = 0; i < n; i++) {
        const exit = yield* Effect.either(relay.chat(request(`r${i}`)))
        if (exit._tag === "Left" && exit.left._tag === "NoUpstreamAvailable") refused++
        yield* TestClock.adjust("100 millis")
      }
      const a = relay.upstreams[0]!
      return { refused, trips: (yield* a.breaker.snapshot).trips, calls: client.callsTo("a").length }
    })

  it.scoped("a correlated 30% failure rate (bursts of 6 in 20) does not open it", () =>
    Effect.gen(function*() {
      // The bare breaker's 5 in a row would open on the first burst.
      const r = yield* bursts(200, 6, 20)
      expect(r).toEqual({ refused: 0, trips: 0, calls: 200 })
    }))

  it.scoped("a 60% failure rate over 20 calls or more opens it (failure rate 50%)", () =>
    Effect.gen(function*() {
      const r = yield* bursts(100, 3, 5)
      expect(r.trips).toBeGreaterThan(0)
      expect(r.refused).toBeGreaterThan(0)
    }))

  it.scoped("a dead upstream opens it after 10 calls, whatever the traffic", () =>
    Effect.gen(function*() {
      // No `unreachable` cooldown here: this is about the breaker's own count.
      const { client, relay } = yield* setup({
        upstreams: ordered("a"),
        retry: { maxRetries: 0 },
        router: { panic: false },
        unreachableCooldown: "0 millis"
      })
      client.fallback("a", Scripted.unreachable("ECONNREFUSED"))
      for (let i = 0; i < 15; i++) {
        yield* Effect.either(relay.chat(request(`r${i}`)))
        // One call a second: the 10 s window never holds 20 calls; 10 in a row is the rule that opens.
        yield* TestClock.adjust("1 second")
        if (i === 8) expect((yield* relay.upstreams[0]!.breaker.snapshot).state).toBe("Closed")
      }
      expect((yield* relay.upstreams[0]!.breaker.snapshot).state).toBe("Open")
      expect(client.callsTo("a")).toHaveLength(10)
    }))
})
