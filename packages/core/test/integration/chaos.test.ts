/**
 * The acceptance chaos test: 2,000 chat requests at concurrency 20 through the
 * relay, over real HTTP on 127.0.0.1, to three fake upstreams that misbehave:
 *
 * - "primary" (priority 1) answers 429 to 12.3% of requests, without a
 *   `Retry-After` header, so the relay's default `rateLimitCooldown` (1 s)
 *   applies after each;
 * - "secondary" (priority 2) answers 503 to 5% of requests;
 * - "tertiary" (priority 3) is healthy but slower (20 ms + 0..10 ms jitter).
 *
 * With `maxAttempts: 3` a request can only fail if all three fail it, which
 * a healthy tertiary never does: the client should see (almost) no errors.
 *
 * The fakes and the relay's `Random` are seeded; the interleaving of
 * concurrent requests is not, so the split between upstreams varies a little
 * from run to run.
 */
import { expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import * as Redacted from "effect/Redacted"
import { writeFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import * as Relay from "../../src/Relay.js"
import * as Fake from "../../src/testing/FakeUpstream.js"
import { httpRelayDeps as deps } from "../support/HttpDeps.js"

const REQUESTS = 2000
const CONCURRENCY = 20
const RESULT_FILE = fileURLToPath(new URL("./.chaos-result.json", import.meta.url))

/** Nearest-rank percentile of sorted values. */
const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!

const round2 = (x: number) => Math.round(x * 100) / 100

it.scopedLive("chaos: 2,000 requests at concurrency 20 over three misbehaving upstreams, < 0.1% errors", () =>
  Effect.gen(function*() {
    const primary = yield* Fake.make({ name: "primary", seed: 1231, faults: { rate429: 0.123 } })
    const secondary = yield* Fake.make({ name: "secondary", seed: 505, faults: { rate5xx: 0.05 } })
    const tertiary = yield* Fake.make({ name: "tertiary", seed: 2030, faults: { latencyMs: 20, jitterMs: 10 } })
    const fakes = [primary, secondary, tertiary]

    const layer = Relay.layer({
      upstreams: fakes.map((f, i) => ({
        name: f.name,
        baseUrl: f.url,
        apiKey: Redacted.make(`sk-${f.name}`),
        models: "*" as const,
        priority: i + 1
      })),
      router: { strategy: "priority" },
      maxAttempts: 3,
      cacheMode: "none"
    }).pipe(Layer.provide(deps))

    const outcome = yield* Effect.gen(function*() {
      const relay = yield* Relay.Relay
      const started = performance.now()
      const results = yield* Effect.forEach(
        Array.from({ length: REQUESTS }, (_, i) => i),
        (i) =>
          Effect.suspend(() => {
            const t0 = performance.now()
            return relay.chat({ model: "gpt-4.1", messages: [{ role: "user", content: `chaos prompt #${i}` }] }).pipe(
              Effect.either,
              Effect.map((result) => ({ result, ms: performance.now() - t0 }))
            )
          }),
        { concurrency: CONCURRENCY }
      ).pipe(Effect.withRandom(Random.make(42)))
      return { results, wallMs: performance.now() - started }
    }).pipe(Effect.provide(layer))

    const latencies: Array<number> = []
    const byUpstream: Record<string, number> = {}
    const errors: Array<string> = []
    let failedOver = 0
    for (const { ms, result } of outcome.results) {
      latencies.push(ms)
      if (result._tag === "Left") {
        errors.push(result.left.message)
        continue
      }
      const meta = result.right.metadata
      byUpstream[meta.upstream] = (byUpstream[meta.upstream] ?? 0) + 1
      if (meta.attempts > 1) failedOver++
    }
    latencies.sort((a, b) => a - b)
    const p50 = round2(percentile(latencies, 0.5))
    const p99 = round2(percentile(latencies, 0.99))
    const errorRate = errors.length / REQUESTS
    const upstreamCalls = Object.fromEntries(
      fakes.map((f) => {
        const c = f.counters()
        return [f.name, { calls: c.chat, byStatus: c.byStatus }]
      })
    )

    const line = `chaos: ${REQUESTS} requests, ${errors.length} errors (${(errorRate * 100).toFixed(2)}%), ` +
      `p50 ${p50.toFixed(2)} ms, p99 ${p99.toFixed(2)} ms, by upstream: ${JSON.stringify(byUpstream)}`
    console.log(line)
    writeFileSync(
      RESULT_FILE,
      JSON.stringify(
        {
          requests: REQUESTS,
          concurrency: CONCURRENCY,
          errors: errors.length,
          errorRate,
          p50Ms: p50,
          p99Ms: p99,
          maxMs: round2(latencies.at(-1) ?? Number.NaN),
          wallMs: round2(outcome.wallMs),
          byUpstream,
          failedOver,
          upstreamCalls,
          errorMessages: errors.slice(0, 10),
          line
        },
        null,
        2
      ) + "\n"
    )

    // The acceptance criterion: at most 1 error in 2,000.
    expect(errors.length, errors.slice(0, 5).join("\n")).toBeLessThanOrEqual(1)
    expect(errorRate).toBeLessThan(0.001)
    // Every request is accounted for, and the chaos did happen.
    expect(Object.values(byUpstream).reduce((a, b) => a + b, 0) + errors.length).toBe(REQUESTS)
    expect(primary.counters().byStatus[429] ?? 0).toBeGreaterThan(0)
    expect(failedOver).toBeGreaterThan(0)
  }), 120_000)
