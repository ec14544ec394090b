/**
 * The simulator's `hedge` setting (`routing.hedge` in a scenario, or
 * `RunOptions.hedge` / `--hedge`) and its report: a hand-worked scenario,
 * the budget's cap, seed-article at p95 against the same run without, and
 * the CLI.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import * as Config from "../../src/Config.js"
import * as Simulate from "../../src/simulate/Simulate.js"
import * as VirtualTime from "../../src/simulate/VirtualTime.js"
import { runCli } from "../helpers/process.js"
import { primaryAndSecondary } from "../helpers/scenarios.js"
import { load, parse } from "./support.js"

/**
 * A primary with a long tail (p50 100 ms, p99 2 s) and a secondary that
 * always takes 100 ms, 20 requests a second for a minute, no repeats, each
 * answer $0.0006; Breakwater hedges after 300 ms, uncapped (no hedge cap, no retry budget).
 */
const tail = primaryAndSecondary({
  head: ["duration: 60s", "seed: 5"],
  primary: ["latency: { p50: 100ms, p99: 2s }"],
  secondary: ["latency: { p50: 100ms, p99: 100ms }"],
  workload: ["requestsPerSecond: 20"],
  breakwater: [
    "# Uncapped: neither the hedge's own cap nor the retry budget (which hedges spend from) holds a hedge back.",
    'routing: { hedge: { after: 300ms, maxExtra: "100%" }, retryBudget: { enabled: false } }'
  ]
})

const hedgeOf = (after: string, maxExtra: string) => Either.getOrThrow(Config.hedgeOf(after, maxExtra))

describe("simulate: hedge", { timeout: 120_000 }, () => {
  it("a hand-worked tail: every primary call past 300 ms is hedged; no answer takes more than 300 + 100 ms", () => {
    const r = Simulate.run(parse(tail))
    const b = r.breakwater
    const h = b.hedged!
    expect(r.requests).toBeGreaterThan(1000)
    expect(r.direct.p99Ms).toBeGreaterThan(1500)
    expect(b.p99Ms).toBeLessThanOrEqual(400)
    expect(b.availability).toBe(1)
    expect(h.calls).toBeGreaterThan(0.1 * r.requests)
    expect(h.won + h.lost).toBe(h.calls)
    expect(h.failed).toBe(0)
    // The loser's call was aborted: the primary's when the hedge won, the hedge's when it lost.
    const [primary, secondary] = b.upstreams
    expect(primary!.aborted).toBe(h.won)
    expect(secondary!.aborted).toBe(h.lost)
    expect(secondary!.calls).toBe(h.calls)
    expect(b.upstreamCalls).toBe(r.requests + h.calls)
    // Aborted calls are billed in full: the worst case.
    expect(b.costUsd).toBeCloseTo(0.0006 * (r.requests + h.calls), 9)
    expect(r.direct.costUsd).toBeCloseTo(0.0006 * r.requests, 9)
    expect(r.direct.hedged).toBeNull()
  })

  it("maxExtra caps the hedges; `hedge: null` turns the scenario's hedging off", () => {
    const scenario = parse(tail)
    const capped = Simulate.run(scenario, { hedge: hedgeOf("300ms", "10%") })
    expect(capped.breakwater.hedged!.calls).toBeGreaterThan(0)
    expect(capped.breakwater.hedged!.calls).toBeLessThanOrEqual(0.1 * capped.requests)
    const off = Simulate.run(scenario, { hedge: null })
    expect(off.breakwater.hedged).toBeNull()
    expect(off.breakwater.upstreamCalls).toBe(off.requests)
    expect(off.breakwater.p99Ms).toBe(off.direct.p99Ms)
  })

  it("sameUpstream: a lone long-tailed upstream is hedged to itself (a second call, a fresh draw); off, it is not hedged", () => {
    // Only the primary: no other upstream to hedge to.
    const lone = tail
      .replace(/  - name: secondary\n    latency: \{ p50: 100ms, p99: 100ms \}\n    price: \{ input: 2, output: 8 \}\n/, "")
      .replace("    - { name: secondary, priority: 2 }\n", "")
    expect(lone).not.toContain("secondary")
    const off = Simulate.run(parse(lone))
    expect(off.breakwater.hedged!.calls).toBe(0)
    expect(off.breakwater.p99Ms).toBe(off.direct.p99Ms)
    const same = Simulate.run(parse(lone.replace("hedge: { after: 300ms, maxExtra: \"100%\" }", "hedge: { after: 300ms, maxExtra: \"100%\", sameUpstream: true }")))
    const h = same.breakwater.hedged!
    expect(h.calls).toBeGreaterThan(0.1 * same.requests)
    expect(h.won + h.lost + h.failed).toBe(h.calls)
    expect(h.won).toBeGreaterThan(0)
    expect(same.breakwater.upstreams[0]!.calls).toBe(same.requests + h.calls)
    // min(first, 300 ms + a second draw): p99 about 0.8 s, where direct's is about 2 s.
    expect(same.direct.p99Ms!).toBeGreaterThan(1500)
    expect(same.breakwater.p99Ms!).toBeLessThan(1000)
    expect(same.breakwater.availability).toBe(1)
  })

  it("a tail of rare stalls (3% of calls at about 2 s on both upstreams): hedging at p95 within 10% halves direct's p99", () => {
    // Both upstreams: p50 100 ms, p99 200 ms, and 3% of the answers stalled (p50 2 s, p99 3 s).
    // Their p95 is under 200 ms, so a stalled first call is hedged there and the hedge
    // (another upstream, 97% of the time not stalled) answers about 100 ms later.
    const stalls = tail
      .replace(/latency: \{ p50: 100ms, p99: (2s|100ms) \}/g, "latency: { p50: 100ms, p99: 200ms }\n    stalls: { share: 0.03, latency: { p50: 2s, p99: 3s } }")
      .replace("duration: 60s", "duration: 5m")
      .replace(/  routing: \{ hedge: .*\n/, "  routing: { hedge: { after: p95, maxExtra: 10% } }\n")
    expect(stalls.match(/stalls:/g)).toHaveLength(2)
    const r = Simulate.run(parse(stalls))
    const off = Simulate.run(parse(stalls), { hedge: null })
    expect(r.requests).toBeGreaterThan(5000)
    expect(r.direct.p99Ms!).toBeGreaterThan(1500)
    expect(off.breakwater.p99Ms!).toBeGreaterThan(1500)
    expect(r.breakwater.p99Ms!).toBeLessThanOrEqual(0.5 * r.direct.p99Ms!)
    expect(r.breakwater.upstreamCalls / off.breakwater.upstreamCalls - 1).toBeLessThanOrEqual(0.1)
    expect(r.breakwater.costUsd / off.breakwater.costUsd - 1).toBeLessThanOrEqual(0.1)
    expect(r.breakwater.hedged!.won).toBeGreaterThan(0)
    expect(r.breakwater.availability).toBe(1)
  })

  it("two simulations at once count their own hedges (each its relay's, not the process-wide metric's difference)", () => {
    const uncapped = parse(tail)
    const capped = parse(tail.replace("seed: 5", "seed: 6"))
    const cap = { hedge: hedgeOf("300ms", "10%") }
    const alone = [Simulate.run(uncapped), Simulate.run(capped, cap)]
    // Both in one virtual time: their requests and hedges interleave.
    const exit = VirtualTime.run(Effect.all([Simulate.program(uncapped), Simulate.program(capped, cap)], { concurrency: "unbounded" }))
    expect(Exit.isSuccess(exit)).toBe(true)
    const together = Exit.isSuccess(exit) ? exit.value : []
    expect(alone[0]!.breakwater.hedged!.calls).toBeGreaterThan(0)
    expect(alone[1]!.breakwater.hedged!.calls).toBeGreaterThan(0)
    for (const i of [0, 1]) {
      expect(together[i]!.requests).toBe(alone[i]!.requests)
      expect(together[i]!.breakwater.hedged).toEqual(alone[i]!.breakwater.hedged)
    }
  })

  it("seed-article (seed 42, first 5 minutes): hedging at p95 costs at most 10% more upstream calls and cuts p99", () => {
    const scenario = load("seed-article.yaml")
    const duration = 5 * 60_000
    const without = Simulate.run(scenario, { duration })
    const hedged = Simulate.run(scenario, { duration, hedge: hedgeOf("p95", "10%") })
    expect(hedged.requests).toBe(without.requests)
    expect(without.breakwater.hedged).toBeNull()
    const h = hedged.breakwater.hedged!
    expect(h.calls).toBeGreaterThan(0)
    const extraCalls = hedged.breakwater.upstreamCalls / without.breakwater.upstreamCalls - 1
    expect(extraCalls).toBeLessThanOrEqual(0.1)
    expect(hedged.breakwater.costUsd / without.breakwater.costUsd - 1).toBeLessThanOrEqual(0.1)
    expect(hedged.breakwater.p99Ms!).toBeLessThan(without.breakwater.p99Ms!)
    expect(hedged.breakwater.availability).toBeGreaterThanOrEqual(without.breakwater.availability)
  })
})

const dir = mkdtempSync(join(tmpdir(), "breakwater-simulate-hedge-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe("breakwater simulate --hedge", () => {
  const file = join(dir, "tail.yaml")
  writeFileSync(file, tail.replace(/  routing: \{ hedge: .*\n/, "  routing: { retryBudget: { enabled: false } }\n"))

  it("--hedge 300ms --hedge-max-extra 100% adds the hedged-calls row; without it there is none", { timeout: 30_000 }, async () => {
    const hedged = await runCli(["simulate", file, "--hedge", "300ms", "--hedge-max-extra", "100%"])
    expect(hedged.code).toBe(0)
    expect(hedged.stdout).toMatch(/Hedged calls\s+n\/a\s+[\d,]+ \(\d+\.\d\d%\)/)
    expect(hedged.stdout).toMatch(/Hedges: [\d,]+ won, [\d,]+ lost, 0 failed; [\d,]+ calls aborted/)
    const plain = await runCli(["simulate", file])
    expect(plain.code).toBe(0)
    expect(plain.stdout).not.toContain("Hedged calls")
  })

  it("a bad --hedge: the problem on stderr, exit 1", { timeout: 30_000 }, async () => {
    const out = await runCli(["simulate", file, "--hedge", "soon"])
    expect(out.code).toBe(1)
    expect(out.stdout).toBe("")
    expect(out.stderr).toContain(`--hedge: expected a positive duration like "800ms" or a percentile like "p95", got "soon"`)
  })
})
