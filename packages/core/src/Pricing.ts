/**
 * What each result costs: per-model prices (USD per million tokens) and the
 * metrics that add up tokens and dollars per upstream, model and key, so that
 * spending can be watched and budgeted.
 *
 * A model is priced by its exact name, else by the longest priced name it
 * starts with (at a word boundary), so that dated snapshots such as
 * `gpt-4.1-2025-04-14` price as `gpt-4.1`. A variant that is not in the table
 * (`gpt-4.1-mini`) therefore prices as its base model: add it to the table
 * when that overestimate matters.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import { taggedBy } from "./internal/taggedMetrics.js"
import type { Usage } from "./OpenAI.js"

/** USD per million tokens. */
export interface Price {
  readonly input: number
  readonly output: number
}

/** Output prices as published; input prices are defaults to override per deployment. */
export const defaults: Record<string, Price> = {
  "deepseek-v3.2": { input: 0.28, output: 0.42 },
  "gemini-2.5-flash": { input: 0.30, output: 2.50 },
  "gpt-4.1": { input: 2.00, output: 8.00 },
  "claude-sonnet-4.5": { input: 3.00, output: 15.00 }
}

export interface Labels {
  readonly upstream: string
  readonly model: string
  readonly key: string
}

export interface Pricing {
  readonly price: (model: string) => Price | undefined
  /** USD for `usage` of `model`; undefined when the model has no price. */
  readonly cost: (model: string, usage: Usage) => number | undefined
  /** Adds the tokens and the cost of one result to the metrics. */
  readonly record: (labels: Labels, usage: Usage | undefined, costUsd: number | undefined) => Effect.Effect<void>
}

export const Pricing = Context.GenericTag<Pricing>("@breakwater/core/Pricing")

export const tokensTotal = Metric.counter("breakwater_tokens_total", {
  description: "Tokens used, by upstream, model, key and kind (prompt, completion)",
  incremental: true
})
export const costTotal = Metric.counter("breakwater_cost_usd_total", {
  description: "Cost of results in USD, by upstream, model and key",
  incremental: true
})

/** A character that may follow a priced name in a longer model name (not a letter or digit). */
const isBoundary = (c: string | undefined): boolean => c === undefined || !/[A-Za-z0-9]/.test(c)

export const make = (table: Record<string, Price> = {}): Pricing => {
  const prices = new Map<string, Price>(Object.entries({ ...defaults, ...table }))
  // Longest first, so the first prefix found is the most specific.
  const names = [...prices.keys()].sort((a, b) => b.length - a.length)

  const price = (model: string): Price | undefined => {
    const exact = prices.get(model)
    if (exact !== undefined) return exact
    for (const name of names) {
      if (model.startsWith(name) && isBoundary(model[name.length])) return prices.get(name)
    }
    return undefined
  }

  const cost = (model: string, usage: Usage): number | undefined => {
    const p = price(model)
    if (p === undefined) return undefined
    return (usage.prompt_tokens * p.input + usage.completion_tokens * p.output) / 1_000_000
  }

  const tokensBy = taggedBy(tokensTotal, ["upstream", "model", "key", "kind"])
  const costBy = taggedBy(costTotal, ["upstream", "model", "key"])

  const record = (labels: Labels, usage: Usage | undefined, costUsd: number | undefined): Effect.Effect<void> =>
    Effect.suspend(() => {
      const effects: Array<Effect.Effect<void>> = []
      // Counters only go up: zero, negative and NaN amounts are skipped.
      if (usage !== undefined && usage.prompt_tokens > 0) {
        effects.push(Metric.incrementBy(tokensBy(labels.upstream, labels.model, labels.key, "prompt"), usage.prompt_tokens))
      }
      if (usage !== undefined && usage.completion_tokens > 0) {
        effects.push(
          Metric.incrementBy(tokensBy(labels.upstream, labels.model, labels.key, "completion"), usage.completion_tokens)
        )
      }
      if (costUsd !== undefined && costUsd > 0) {
        effects.push(Metric.incrementBy(costBy(labels.upstream, labels.model, labels.key), costUsd))
      }
      return Effect.all(effects, { discard: true })
    })

  return Pricing.of({ price, cost, record })
}

export const layer = (table?: Record<string, Price>): Layer.Layer<Pricing> => Layer.succeed(Pricing, make(table))
