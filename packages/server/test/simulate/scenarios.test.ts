/**
 * The shipped scenarios parse and run (shortened where the full run would
 * be slow), and show what they are there to show. Plus the scenario
 * parser's errors.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import { readdirSync } from "node:fs"
import * as Scenario from "../../src/simulate/Scenario.js"
import * as Simulate from "../../src/simulate/Simulate.js"
import { healthy, load, SCENARIOS } from "./support.js"

const minutes = (n: number) => n * 60_000

/** Invariants of every run. */
const sane = (r: Simulate.Report, maxAttempts: number) => {
  expect(r.requests).toBeGreaterThan(0)
  expect(r.direct.requests).toBe(r.requests)
  expect(r.breakwater.requests).toBe(r.requests)
  expect(r.direct.callsPerRequest).toBe(1)
  expect(r.breakwater.callsPerRequest).toBeLessThanOrEqual(maxAttempts)
  for (const c of [r.direct, r.breakwater]) {
    expect(c.successes + Object.values(c.errors).reduce((a, b) => a + b, 0)).toBe(c.requests)
    expect(c.availability).toBeGreaterThanOrEqual(0)
    expect(c.availability).toBeLessThanOrEqual(1)
    expect(c.perMinute.reduce((a, m) => a + m.requests, 0)).toBe(c.requests)
  }
}

// Each run simulates thousands of requests on one core: seconds of CPU, more
// on a loaded machine. The timeout only guards against a hang.
describe("shipped scenarios", { timeout: 60_000 }, () => {
  it("every file in scenarios/ parses", () => {
    const files = readdirSync(SCENARIOS).filter((f) => f.endsWith(".yaml")).sort()
    expect(files).toEqual([
      "degraded-10.yaml",
      "degraded-30.yaml",
      "degraded-60.yaml",
      "primary-outage.yaml",
      "quota-exhaustion.yaml",
      "retry-storm.yaml",
      "seed-article-stalls.yaml",
      "seed-article.yaml"
    ])
    for (const f of files) expect(load(f).name).toBe(f.replace(".yaml", ""))
  })

  it("seed-article: the article's inputs (26.6 req/s, 12.3% 429s on the primary, 34% repeats)", () => {
    const s = load("seed-article.yaml")
    expect(s.duration).toBe(minutes(60))
    const r = Simulate.run(s, { duration: minutes(5) })
    sane(r, 3)
    expect(r.offeredRps).toBeGreaterThan(25)
    expect(r.offeredRps).toBeLessThan(28)
    expect(r.direct.rate429).toBeGreaterThan(0.1)
    expect(r.direct.rate429).toBeLessThan(0.15)
    expect(r.breakwater.rate429).toBe(0)
    expect(r.breakwater.availability).toBeGreaterThan(0.99)
    expect(r.breakwater.cacheHitRate).toBeGreaterThan(0.28)
    expect(r.breakwater.cacheHitRate).toBeLessThan(0.36)
    // The cache saves calls, and so money.
    expect(r.breakwater.callsPerRequest).toBeLessThan(0.8)
    expect(r.breakwater.costPerDayUsd).toBeLessThan(r.direct.costPerDayUsd)
  })

  it("primary-outage: the direct column loses the outage, Breakwater fails over and trips the breaker", () => {
    const r = Simulate.run(load("primary-outage.yaml"), { duration: minutes(12) })
    sane(r, 3)
    // Minutes 10 and 11 are in the outage.
    expect(r.direct.perMinute[10]!.errorRate).toBeGreaterThan(0.99)
    expect(r.direct.perMinute[11]!.errorRate).toBeGreaterThan(0.99)
    expect(r.breakwater.perMinute[10]!.errorRate).toBeLessThan(0.01)
    expect(r.breakwater.availability).toBeGreaterThan(0.99)
    const primary = r.breakwater.upstreams.find((u) => u.name === "primary")!
    expect(primary.breakerTrips).toBeGreaterThanOrEqual(2)
    // The open breaker spares the dead primary: far fewer calls meet the outage than requests arrive in it.
    expect(primary.outageAnswers).toBeLessThan(r.direct.upstreams[0]!.outageAnswers / 10)
  })

  it("quota-exhaustion: one 429 per cooldown instead of a 429 per request", () => {
    const r = Simulate.run(load("quota-exhaustion.yaml"), { duration: minutes(8) })
    sane(r, 3)
    const directQuota429s = r.direct.upstreams[0]!.quotaExceeded
    expect(directQuota429s).toBeGreaterThan(500)
    expect(r.direct.errors["429"]).toBe(directQuota429s)
    expect(r.breakwater.rate429).toBe(0)
    const primary = r.breakwater.upstreams.find((u) => u.name === "primary")!
    // Minutes 5..7 exceed the primary's quota: a few 429s each (those in flight when the first came back).
    expect(primary.quotaExceeded).toBeGreaterThan(0)
    expect(primary.quotaExceeded).toBeLessThan(3 * 4)
    expect(r.breakwater.availability).toBeGreaterThan(0.99)
  })

  it("retry-storm: with every upstream failing, Breakwater does not multiply the calls, and serves more than direct", () => {
    const s = load("retry-storm.yaml")
    const r = Simulate.run(s, { duration: minutes(7) })
    sane(r, s.breakwater.routing.maxAttempts)
    // Two degraded minutes out of seven, 60% of calls failing on all three upstreams.
    expect(r.direct.perMinute[6]!.errorRate).toBeGreaterThan(0.5)
    // The retry budget: at most 20% more calls than requests, where maxAttempts alone allows 3x.
    expect(r.breakwater.callsPerRequest).toBeLessThanOrEqual(1.2)
    // At 60% the breakers open (failure rate), and the panic threshold routes across them anyway.
    expect(r.breakwater.upstreams.every((u) => (u.breakerTrips ?? 0) > 0)).toBe(true)
    expect(r.breakwater.perMinute[6]!.errorRate).toBeLessThan(r.direct.perMinute[6]!.errorRate)
    expect(r.breakwater.errors["503"]).toBeUndefined()
  })

  it("degraded-30: a correlated 30% failure rate opens no breaker", () => {
    const r = Simulate.run(load("degraded-30.yaml"), { duration: minutes(10) })
    sane(r, 3)
    expect(r.direct.perMinute[6]!.errorRate).toBeGreaterThan(0.25)
    expect(r.breakwater.upstreams.map((u) => u.breakerTrips)).toEqual([0, 0, 0])
    expect(r.breakwater.errors["503"]).toBeUndefined()
  })
})

/**
 * Never worse than direct (issue 15): every shipped scenario, with its own
 * seed, run long enough to hold its event (the outage, the quota, the storm):
 * Breakwater's availability is at least the direct client's (strictly more
 * where an outage is there to be routed around), and its upstream calls per
 * request at most 1 + the retry budget's ratio.
 */
describe("never worse than direct", { timeout: 120_000 }, () => {
  /** Scenario -> the simulated minutes (the whole scenario unless it is long), and whether an outage can be routed around. */
  const runs: ReadonlyArray<readonly [file: string, minutes: number | undefined, routedAround: boolean]> = [
    ["degraded-10.yaml", undefined, false],
    ["degraded-30.yaml", undefined, false],
    ["degraded-60.yaml", undefined, false],
    ["primary-outage.yaml", undefined, true],
    ["quota-exhaustion.yaml", undefined, true],
    ["retry-storm.yaml", undefined, false],
    // An hour of the article's traffic; its 429s on the primary are routed around from the start.
    ["seed-article-stalls.yaml", 10, true],
    ["seed-article.yaml", 10, true]
  ]

  it("covers every shipped scenario", () => {
    const files = readdirSync(SCENARIOS).filter((f) => f.endsWith(".yaml")).sort()
    expect(runs.map(([f]) => f)).toEqual(files)
  })

  for (const [file, duration, routedAround] of runs) {
    it(`${file}: availability ${routedAround ? ">" : ">="} direct's, upstream calls / request <= 1 + budget`, () => {
      const s = load(file)
      const r = Simulate.run(s, { duration: duration === undefined ? undefined : minutes(duration) })
      sane(r, s.breakwater.routing.maxAttempts)
      const budget = s.breakwater.routing.retryBudget
      expect(budget.enabled).toBe(true)
      expect(r.breakwater.callsPerRequest).toBeLessThanOrEqual(1 + budget.ratio)
      if (routedAround) expect(r.breakwater.availability).toBeGreaterThan(r.direct.availability)
      else expect(r.breakwater.availability).toBeGreaterThanOrEqual(r.direct.availability)
    })
  }
})

describe("scenario errors", () => {
  const problems = (text: string): ReadonlyArray<string> => {
    const parsed = Scenario.parse(text, { file: "bad.yaml" })
    if (Either.isRight(parsed)) throw new Error("expected a problem")
    return parsed.left.problems
  }

  it("reports every problem with its path", () => {
    const found = problems(
      healthy
        .replace("duration: 60s", "duration: 60")
        .replace("p99: 100ms", "p99: 50ms")
        .replace("price: {", "rate429: 2\n    colour: red\n    price: {")
        .replace("{ name: only }", "{ name: other }")
    )
    expect(found).toEqual(expect.arrayContaining([
      `duration: expected a positive duration like "30s", got 60`,
      "upstreams[0].latency: p99 must not be below p50",
      "upstreams[0].rate429: expected a share from 0 to 1, got 2",
      expect.stringMatching(/^upstreams\[0\]\.colour: unknown field/),
      `breakwater.upstreams[0].name: "other" is not a simulated upstream (expected one of only)`
    ]))
  })

  it("names a bad stalls field", () => {
    const stalls = (line: string) => problems(healthy.replace("    price: {", `    ${line}\n    price: {`))
    expect(stalls("stalls: { share: 2, latency: { p50: 1s, p99: 2s } }")).toEqual([
      "upstreams[0].stalls.share: expected a share from 0 to 1, got 2"
    ])
    expect(stalls("stalls: { share: 0.1, latency: { p50: 2s, p99: 1s } }")).toEqual([
      "upstreams[0].stalls.latency: p99 must not be below p50"
    ])
    expect(stalls("stalls: { share: 0.1 }")).toEqual([expect.stringMatching(/^upstreams\[0\]\.stalls\.latency: /)])
    expect(stalls("stalls: { share: 0.1, latency: { p50: 1s, p99: 2s }, often: yes }")).toEqual([
      expect.stringMatching(/^upstreams\[0\]\.stalls\.often: unknown field/)
    ])
  })

  it("reports the Breakwater config's own problems under breakwater.", () => {
    const found = problems(healthy.replace("    - { name: only }", "    - { name: only, timeout: soon }"))
    expect(found).toEqual([`breakwater.upstreams[0].timeout: expected a positive duration like "30s", got "soon"`])
  })

  it("fills in dummy baseUrls and keys, and defaults", () => {
    const parsed = Scenario.parse(healthy, { file: "dir/healthy.yaml" })
    expect(Either.isRight(parsed)).toBe(true)
    if (Either.isLeft(parsed)) return
    const s = parsed.right
    expect(s.name).toBe("healthy")
    expect(s.breakwater.upstreams[0].baseUrl).toBe("http://sim/only/v1")
    expect(s.directTimeout).toBe(30_000)
    expect(s.upstreams[0].errorLatency).toBe(50)
    expect(s.upstreams[0].price("anything")).toEqual({ input: 2, output: 8 })
    expect(s.workload.steps).toEqual([{ at: 0, rps: 1 }])
  })
})
