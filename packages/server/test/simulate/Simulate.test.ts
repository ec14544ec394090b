/**
 * The simulator: worked examples whose numbers follow from the relay's rules,
 * determinism, agreement between virtual time and TestClock, and the shipped
 * scenarios.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import * as Render from "../../src/simulate/Render.js"
import * as Simulate from "../../src/simulate/Simulate.js"
import { healthy, load, parse, rateLimitedPrimary } from "./support.js"

const COST = (100 * 2 + 50 * 8) / 1_000_000

// Whole simulated runs: seconds of CPU; the timeouts only guard against a hang.
describe("worked examples", { timeout: 60_000 }, () => {
  it("one healthy upstream, 100 ms, 1 req/s for 60 s: 60 requests, no errors, 100 ms, 60 answers billed", () => {
    const r = Simulate.run(parse(healthy))
    expect(r.requests).toBe(60)
    for (const c of [r.direct, r.breakwater]) {
      expect(c.requests).toBe(60)
      expect(c.successes).toBe(60)
      expect(c.errors).toEqual({})
      expect(c.rate429).toBe(0)
      expect(c.p50Ms).toBe(100)
      expect(c.p99Ms).toBe(100)
      expect(c.availability).toBe(1)
      expect(c.costUsd).toBeCloseTo(60 * COST, 12)
      // One minute simulated: a day is 1440 of them.
      expect(c.costPerDayUsd).toBeCloseTo(60 * COST * 1440, 9)
      expect(c.upstreamCalls).toBe(60)
      expect(c.callsPerRequest).toBe(1)
      expect(c.upstreams).toHaveLength(1)
      expect(c.upstreams[0]).toMatchObject({ name: "only", calls: 60, callShare: 1, served: 60, ok: 60 })
    }
    expect(r.direct.cacheHitRate).toBeNull()
    expect(r.breakwater.cacheHitRate).toBe(0)
    expect(r.breakwater.upstreams[0]!.breakerTrips).toBe(0)
    expect(r.direct.upstreams[0]!.breakerTrips).toBeNull()
    // Health probes every 10 s after the previous one ends (50 ms each): at
    // 0, 10.05, 20.1, 30.15, 40.2 and 50.25 s; the run ends at 59.1 s.
    expect(r.probes).toEqual({ only: 6 })
    expect(r.breakwater.perMinute).toEqual([{ minute: 0, requests: 60, errorRate: 0, p50Ms: 100, p99Ms: 100 }])
  })

  it("a primary that answers 429 (Retry-After 10 s) to everything: direct 100% 429s, Breakwater none, primary called 6 times", () => {
    const r = Simulate.run(parse(rateLimitedPrimary))
    // Direct: every request is the primary's 429.
    expect(r.direct.errors).toEqual({ "429": 60 })
    expect(r.direct.rate429).toBe(1)
    expect(r.direct.availability).toBe(0)
    expect(r.direct.p50Ms).toBeNull()
    expect(r.direct.costUsd).toBe(0)

    // Breakwater: the request at 0 s calls the primary, whose 429 arrives at
    // 50 ms and starts a cooldown until 10.05 s (the Retry-After, shared by
    // all requests); the request fails over to the secondary at once
    // (answered at 150 ms). Requests at 1..10 s skip the cooling primary
    // (100 ms each); the one at 11 s finds it free, calls it, and starts the
    // next cooldown. So the primary is called at 0, 11, 22, 33, 44 and 55 s:
    // 6 times (ceil(60 / 11)), and 6 requests take 150 ms.
    const b = r.breakwater
    expect(b.errors).toEqual({})
    expect(b.rate429).toBe(0)
    expect(b.availability).toBe(1)
    const [primary, secondary] = b.upstreams
    expect(primary).toMatchObject({ name: "primary", calls: 6, rateLimited: 6, ok: 0, served: 0, breakerTrips: 0 })
    expect(secondary).toMatchObject({ name: "secondary", calls: 60, ok: 60, served: 60, breakerTrips: 0 })
    expect(b.upstreamCalls).toBe(66)
    expect(b.callsPerRequest).toBeCloseTo(1.1, 12)
    // 54 requests at 100 ms and 6 at 150 ms: the median is 100, the 60th of 60 is 150.
    expect(b.p50Ms).toBe(100)
    expect(b.p99Ms).toBe(150)
    expect(b.costUsd).toBeCloseTo(60 * COST, 12)
  })

  for (const [name, text] of [["healthy", healthy], ["rate-limited primary", rateLimitedPrimary]] as const) {
    it.effect(`${name}: the same report under TestClock (100 ms steps) as in virtual time`, () =>
      Effect.gen(function*() {
        const scenario = parse(text)
        const fiber = yield* Effect.fork(Simulate.program(scenario))
        for (let i = 0; i < 10_000 && Option.isNone(yield* Fiber.poll(fiber)); i++) yield* TestClock.adjust("100 millis")
        const viaTestClock = yield* Fiber.join(fiber)
        expect(viaTestClock).toEqual(Simulate.run(scenario))
      }), { timeout: 60_000 })
  }
})

describe("determinism", { timeout: 60_000 }, () => {
  const scenario = load("seed-article.yaml")
  const twoMinutes = { duration: 120_000 }

  it("the same seed gives the same report", () => {
    const a = Render.json(Simulate.run(scenario, twoMinutes))
    const b = Render.json(Simulate.run(scenario, twoMinutes))
    expect(a).toBe(b)
    expect(Render.text(Simulate.run(scenario, twoMinutes))).toBe(Render.text(Simulate.run(scenario, twoMinutes)))
  })

  it("a different seed gives a different report", () => {
    const a = Simulate.run(scenario, twoMinutes)
    const b = Simulate.run(scenario, { ...twoMinutes, seed: scenario.seed + 1 })
    expect(b.seed).toBe(scenario.seed + 1)
    expect(Render.json(a)).not.toBe(Render.json(b))
    expect(a.requests).not.toBe(b.requests)
  })

  it("stalls: that share of the answers takes the stall latency; the other draws are unchanged", () => {
    // 100 ms always; a share of the answers stalled at 1 s. About 3,000 answers a minute.
    const fast = healthy.replace("arrivals: uniform", "arrivals: poisson").replace("requestsPerSecond: 1", "requestsPerSecond: 50")
    const stalled = (share: number) =>
      Simulate.run(parse(fast.replace("    price: {", `    stalls: { share: ${share}, latency: { p50: 1s, p99: 1s } }\n    price: {`)))
    const without = Simulate.run(parse(fast))
    const rare = stalled(0.005)
    const often = stalled(0.02)
    expect(rare.requests).toBe(without.requests)
    expect(often.requests).toBe(without.requests)
    expect(without.direct.p99Ms).toBe(100)
    // 0.5% stalled: under the 1% that p99 looks past; 2%: over it.
    expect(rare.direct.p99Ms).toBe(100)
    expect(often.direct.p50Ms).toBe(100)
    expect(often.direct.p99Ms).toBe(1000)
    expect(often.direct.availability).toBe(1)
  })

  it("the direct column and Breakwater's first call of a request draw the same answer", () => {
    // Lognormal latencies, no faults, no repeats: each request's one call
    // draws the same latency in both columns, so the distributions match exactly.
    const r = Simulate.run(parse(
      healthy.replace("{ p50: 100ms, p99: 100ms }", "{ p50: 100ms, p99: 1s }").replace("arrivals: uniform", "arrivals: poisson")
        .replace("requestsPerSecond: 1", "requestsPerSecond: 20")
    ))
    expect(r.requests).toBeGreaterThan(1000)
    expect(r.breakwater.p50Ms).toBe(r.direct.p50Ms)
    expect(r.breakwater.p99Ms).toBe(r.direct.p99Ms)
    expect(r.breakwater.perMinute).toEqual(r.direct.perMinute)
    expect(r.breakwater.costUsd).toBeCloseTo(r.direct.costUsd, 12)
    expect(r.direct.p99Ms! / r.direct.p50Ms!).toBeGreaterThan(5)
  })
})

// The fast path (FastPath.ts) plays cache hits, joins and first attempts that
// succeed without the relay's effects; everything else goes through the relay.
// Its report must be the relay's, byte for byte.
describe("fast path", { timeout: 120_000 }, () => {
  const relayOnly = { fastPath: false } as const

  for (const [name, text] of [["healthy", healthy], ["rate-limited primary", rateLimitedPrimary]] as const) {
    it(`${name}: the same report as every request through the relay`, () => {
      const scenario = parse(text)
      expect(Render.json(Simulate.run(scenario))).toBe(Render.json(Simulate.run(scenario, relayOnly)))
    })
  }

  // Long enough to reach each scenario's event (outage, quota, storm).
  for (const [file, minutes] of [
    ["seed-article.yaml", 2],
    ["primary-outage.yaml", 11],
    ["quota-exhaustion.yaml", 6],
    ["retry-storm.yaml", 6],
    ["degraded-30.yaml", 6]
  ] as const) {
    it(`${file}, ${minutes} min: the same report as every request through the relay`, () => {
      const scenario = load(file)
      const duration = minutes * 60_000
      const fast = Simulate.run(scenario, { duration })
      const relay = Simulate.run(scenario, { duration, ...relayOnly })
      expect(fast.requests).toBeGreaterThan(1000)
      expect(Render.json(fast)).toBe(Render.json(relay))
    })
  }

  it("a day (24 h, 1440 minutes) of a thin workload with an outage, 429s and hangs: the same report twice, and the relay's", () => {
    const day = parse(
      rateLimitedPrimary
        .replace("duration: 60s", "duration: 24h")
        .replace("rate429: 1\n", "rate429: 0.2\n    rate5xx: 0.02\n    hang: 0.01\n    outages: [{ from: 10h, to: 11h }]\n")
        .replace("requestsPerSecond: 1", "requestsPerSecond: 0.04")
        .replace("arrivals: uniform", "arrivals: poisson\n  repeatedPrompts: 0.3\n  promptPool: 50")
        .replace("breakwater:\n", "breakwater:\n  cache: { enabled: true, mode: all }\n")
    )
    expect(day.duration).toBe(86_400_000)
    const a = Simulate.run(day)
    expect(a.requests).toBeGreaterThan(3000)
    expect(a.breakwater.perMinute).toHaveLength(1440)
    expect(a.breakwater.cacheHitRate).toBeGreaterThan(0.03)
    expect(a.breakwater.upstreams[0]!.hangs).toBeGreaterThan(0)
    expect(a.breakwater.upstreams[0]!.outageAnswers).toBeGreaterThan(0)
    const json = Render.json(a)
    expect(Render.json(Simulate.run(day))).toBe(json)
    expect(Render.json(Simulate.run(day, relayOnly))).toBe(json)
  })
})
