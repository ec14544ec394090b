import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import type { Usage } from "../src/OpenAI.js"
import * as Pricing from "../src/Pricing.js"

const usage = (prompt_tokens: number, completion_tokens: number): Usage => ({
  prompt_tokens,
  completion_tokens,
  total_tokens: prompt_tokens + completion_tokens
})

/** The current value of a counter with exactly these tags. */
const counterValue = (metric: typeof Pricing.tokensTotal, tags: Record<string, string>) =>
  Effect.map(
    Metric.value(Metric.taggedWithLabels(metric, Object.entries(tags).map(([k, v]) => MetricLabel.make(k, v)))),
    (state) => state.count
  )

describe("Pricing", () => {
  it("has the default prices, dated", () => {
    const pricing = Pricing.make()
    expect(pricing.price("deepseek-v3.2")).toMatchObject({ input: 0.28, output: 0.42 })
    expect(pricing.price("gemini-2.5-flash")).toMatchObject({ input: 0.30, output: 2.50 })
    expect(pricing.price("gpt-4.1")).toMatchObject({ input: 2.00, output: 8.00 })
    expect(pricing.price("claude-sonnet-4.5")).toMatchObject({ input: 3.00, output: 15.00 })
    expect(Pricing.pricesDate).toMatch(/^\d{4}-\d{2}-\d{2}$/)
    // Every entry is a price: numbers of 0 or more, output present.
    for (const [model, p] of Object.entries(Pricing.defaults)) {
      expect(p.input, model).toBeGreaterThanOrEqual(0)
      expect(p.output, model).toBeGreaterThanOrEqual(0)
      if (p.cachedInput !== undefined) expect(p.cachedInput, model).toBeLessThanOrEqual(p.input)
    }
  })

  it("costs gpt-4.1 with 1,000,000 prompt and 500,000 completion tokens at 2.00 + 4.00 = 6.00 USD", () => {
    expect(Pricing.make().cost("gpt-4.1", usage(1_000_000, 500_000))).toBe(6)
  })

  it("costs per million tokens", () => {
    const cost = Pricing.make().cost("claude-sonnet-4.5", usage(1_000, 2_000))
    expect(cost).toBeCloseTo((1_000 * 3 + 2_000 * 15) / 1_000_000, 12)
  })

  it("prices a dated snapshot as its undated name", () => {
    const pricing = Pricing.make({ "my-model": { input: 0.4, output: 1.6 } })
    expect(pricing.price("gpt-4.1-2025-04-14")).toMatchObject({ input: 2.00, output: 8.00 })
    expect(pricing.price("my-model-2025-04-14")).toEqual({ input: 0.4, output: 1.6 })
    expect(pricing.price("my-model-20250414")).toEqual({ input: 0.4, output: 1.6 })
    expect(pricing.price("my-model@20250414")).toEqual({ input: 0.4, output: 1.6 })
    expect(pricing.cost("gpt-4.1-2025-04-14", usage(1_000_000, 0))).toBe(2)
  })

  it("prices cached prompt tokens at cachedInput", () => {
    const pricing = Pricing.make({ m: { input: 2, cachedInput: 0.5, output: 8 }, plain: { input: 2, output: 8 } })
    const cached = { ...usage(1_000_000, 0), prompt_tokens_details: { cached_tokens: 400_000 } }
    expect(pricing.cost("m", cached)).toBeCloseTo(600_000 * 2 / 1e6 + 400_000 * 0.5 / 1e6, 12)
    expect(pricing.cost("plain", cached)).toBe(2)
  })

  it("knows the highest input and output price of its table", () => {
    expect(Pricing.make({ dear: { input: 1000, output: 1 } }).highest.input).toBe(1000)
    const highest = Pricing.make().highest
    for (const p of Object.values(Pricing.defaults)) {
      expect(highest.input).toBeGreaterThanOrEqual(p.input)
      expect(highest.output).toBeGreaterThanOrEqual(p.output)
    }
  })

  it("does not price a longer name by its priced prefix (gpt-4.10, gpt-4.1x)", () => {
    expect(Pricing.make().price("gpt-4.10")).toBeUndefined()
    expect(Pricing.make().price("gpt-4.1x")).toBeUndefined()
  })

  it("prices gpt-4.1-mini, gpt-4.1-nano and gemini-2.5-flash-lite as themselves, not as a longer priced prefix", () => {
    const pricing = Pricing.make()
    expect(pricing.price("gpt-4.1-mini")).toMatchObject({ input: 0.40, output: 1.60 })
    expect(pricing.price("gpt-4.1-nano")).toMatchObject({ input: 0.10, output: 0.40 })
    expect(pricing.price("gemini-2.5-flash-lite")).toMatchObject({ input: 0.10, output: 0.40 })
    expect(pricing.price("gpt-4o")).toMatchObject({ input: 2.50, output: 10.00 })
  })

  it("matches exactly, then only without a date suffix: never a prefix", () => {
    const pricing = Pricing.make()
    const mini = pricing.price("gpt-4.1-mini")
    expect(pricing.price("gpt-4.1-mini-2025-04-14")).toEqual(mini)
    expect(pricing.price("gpt-4.1-2025-04-14")).toEqual(pricing.price("gpt-4.1"))
    expect(pricing.price("claude-sonnet-4-5-20250929")).toEqual(pricing.price("claude-sonnet-4-5"))
    expect(pricing.price("claude-sonnet-4-5@20250929")).toEqual(pricing.price("claude-sonnet-4-5"))
    // A variant that is not in the table has no price, whatever it starts with.
    expect(pricing.price("gpt-4.1-turbo")).toBeUndefined()
    expect(pricing.price("gpt-4.1-mini-high")).toBeUndefined()
    expect(pricing.price("gemini-2.5-flash-lite-preview-06-17")).toBeUndefined()
    // Only a whole date is a date suffix.
    expect(pricing.price("gpt-4.1-2025")).toBeUndefined()
  })

  it("knows no price for an unknown model", () => {
    const pricing = Pricing.make()
    expect(pricing.price("llama-3-70b")).toBeUndefined()
    expect(pricing.cost("llama-3-70b", usage(10, 10))).toBeUndefined()
    expect(pricing.price("gpt-4")).toBeUndefined()
  })

  it("merges overrides over the defaults", () => {
    const pricing = Pricing.make({ "gpt-4.1": { input: 1.00, output: 4.00 }, "my-model": { input: 0.1, output: 0.2 } })
    expect(pricing.price("gpt-4.1")).toEqual({ input: 1.00, output: 4.00 })
    expect(pricing.price("my-model")).toEqual({ input: 0.1, output: 0.2 })
    expect(pricing.price("deepseek-v3.2")).toMatchObject({ input: 0.28, output: 0.42 })
    expect(pricing.cost("gpt-4.1", usage(1_000_000, 500_000))).toBe(3)
  })

  it.effect("is provided by layer", () =>
    Effect.gen(function*() {
      const pricing = yield* Pricing.Pricing
      expect(pricing.price("my-model")).toEqual({ input: 1, output: 1 })
      expect(pricing.price("gpt-4.1")).toMatchObject({ input: 2.00, output: 8.00 })
    }).pipe(Effect.provide(Pricing.layer({ "my-model": { input: 1, output: 1 } }))))

  it.effect("record adds tokens and cost to the metrics", () =>
    Effect.gen(function*() {
      const pricing = Pricing.make()
      const labels = { upstream: "openai-record-test", model: "gpt-4.1", key: "team-a" }
      const prompt = { ...labels, kind: "prompt" }
      const completion = { ...labels, kind: "completion" }
      const u = usage(1_000_000, 500_000)

      yield* pricing.record(labels, u, pricing.cost(labels.model, u))
      expect(yield* counterValue(Pricing.tokensTotal, prompt)).toBe(1_000_000)
      expect(yield* counterValue(Pricing.tokensTotal, completion)).toBe(500_000)
      expect(yield* counterValue(Pricing.costTotal, labels)).toBe(6)

      yield* pricing.record(labels, usage(10, 5), 0.5)
      expect(yield* counterValue(Pricing.tokensTotal, prompt)).toBe(1_000_010)
      expect(yield* counterValue(Pricing.tokensTotal, completion)).toBe(500_005)
      expect(yield* counterValue(Pricing.costTotal, labels)).toBe(6.5)

      // Nothing known: nothing recorded. Tokens without a price: tokens only.
      yield* pricing.record(labels, undefined, undefined)
      const other = { ...labels, key: "team-b" }
      yield* pricing.record(other, usage(7, 3), undefined)
      expect(yield* counterValue(Pricing.tokensTotal, prompt)).toBe(1_000_010)
      expect(yield* counterValue(Pricing.tokensTotal, { ...other, kind: "prompt" })).toBe(7)
      expect(yield* counterValue(Pricing.tokensTotal, { ...other, kind: "completion" })).toBe(3)
      expect(yield* counterValue(Pricing.costTotal, other)).toBe(0)
    }))

  it.effect("bounds model and key labels: known ones as they are, 50 others first seen, then 'other'", () =>
    Effect.gen(function*() {
      const pricing = Pricing.make({}, { models: ["gpt-4.1", "fast"], keys: ["team-a"] })
      const upstream = "bounded-labels-test"
      for (let i = 0; i < 3000; i++) {
        yield* pricing.record({ upstream, model: `caller-model-${i}`, key: i % 2 === 0 ? "team-a" : `stranger-${i}` }, usage(1, 1), 0.001)
      }
      yield* pricing.record({ upstream, model: "gpt-4.1", key: "anonymous" }, usage(1, 1), 0.001)
      yield* pricing.record({ upstream, model: "fast", key: "team-a" }, usage(1, 1), 0.001)
      const pairs = (yield* Metric.snapshot).filter((p) =>
        p.metricKey.name === "breakwater_cost_usd_total" &&
        Array.from(p.metricKey.tags).some((t) => t.key === "upstream" && t.value === upstream)
      )
      const values = (key: string) =>
        new Set(pairs.flatMap((p) => Array.from(p.metricKey.tags).filter((t) => t.key === key).map((t) => t.value)))
      const models = values("model")
      expect(models.size).toBe(50 + 2 + 1)
      expect(models.has("other")).toBe(true)
      expect(models.has("caller-model-49")).toBe(true)
      expect(models.has("caller-model-50")).toBe(false)
      expect(models.has("gpt-4.1") && models.has("fast")).toBe(true)
      const keys = values("key")
      expect(keys.has("team-a") && keys.has("anonymous") && keys.has("other")).toBe(true)
      expect(keys.size).toBe(50 + 2 + 1)
      // Nothing is lost: the total is the same.
      const total = pairs.reduce((sum, p) => sum + ((p.metricState as { count?: number }).count ?? 0), 0)
      expect(total).toBeCloseTo(3.002, 9)
    }))
})

