/**
 * What each result costs: per-model prices (USD per million tokens) and the
 * metrics that add up tokens and dollars per upstream, model and key, so that
 * spending can be watched and budgeted.
 *
 * The default prices are data: `prices.json`, dated, for the current models
 * of OpenAI, Anthropic, Google and DeepSeek; a table given to {@link make}
 * overrides and extends it. A model is priced by its exact name, else by its
 * name without a date suffix (`gpt-4.1-2025-04-14`, `claude-sonnet-4-5-20250929`,
 * `claude-sonnet-4-5@20250929`), and never by a prefix: `gpt-4.1-mini` is not
 * `gpt-4.1` (it costs a fifth), so a variant missing from the table has no
 * price rather than a wrong one.
 *
 * Metric labels are bounded: model and key values are the known ones
 * ({@link Options}) plus at most `maxOtherLabels` others first seen, then
 * `other`, so that caller-chosen model names cannot grow the registry.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import type * as MetricLabel from "effect/MetricLabel"
import { boundedLabel } from "./internal/labels.js"
import { taggedBy } from "./internal/taggedMetrics.js"
import type { Usage } from "./OpenAI.js"
import table from "./prices.json" with { type: "json" }

/** USD per million tokens. */
export interface Price {
  readonly input: number
  readonly output: number
  /** Prompt tokens served from the provider's cache; `input` when absent. */
  readonly cachedInput?: number | undefined
}

/** The shipped price table (`prices.json`), as published on {@link pricesDate}. */
export const defaults: Readonly<Record<string, Price>> = table.models

/** When the shipped prices were compiled (YYYY-MM-DD). */
export const pricesDate: string = table.date

export interface Labels {
  readonly upstream: string
  readonly model: string
  readonly key: string
}

export interface Options {
  /** Model names used as metric labels as they are (configured models, aliases and their targets). */
  readonly models?: Iterable<string> | undefined
  /** Key names used as metric labels as they are; "anonymous" always is. */
  readonly keys?: Iterable<string> | undefined
  /** Other model (and key) names labelled as themselves, first seen first; the rest are `other`. Default 50. */
  readonly maxOtherLabels?: number | undefined
}

export interface Pricing {
  /** The price of `model`: exact name, else the name without a date suffix. */
  readonly price: (model: string) => Price | undefined
  /** USD for `usage` of `model`; undefined when the model has no price. */
  readonly cost: (model: string, usage: Usage) => number | undefined
  /** The highest input and the highest output price in the table (for models without a price). */
  readonly highest: Price
  /** Adds the tokens and the cost of one result to the metrics. */
  readonly record: (labels: Labels, usage: Usage | undefined, costUsd: number | undefined) => Effect.Effect<void>
  /** {@link record} without an effect (`tags` added to the metrics), for a hot path. */
  readonly unsafeRecord?:
    | ((labels: Labels, usage: Usage | undefined, costUsd: number | undefined, tags: ReadonlyArray<MetricLabel.MetricLabel>) => void)
    | undefined
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

/** `-2025-04-14`, `-20250514`, `@20250514`, `@2025-05-14` at the end of a name. */
const DATE_SUFFIX = /[-@]20\d\d(?:-\d\d-\d\d|\d{4})$/

/** The name without its date suffix, or undefined when it has none. */
export const undated = (model: string): string | undefined => {
  const m = DATE_SUFFIX.exec(model)
  return m === null || m.index === 0 ? undefined : model.slice(0, m.index)
}

/** USD for `usage` at `price`; cached prompt tokens at `cachedInput` when the price has one. */
export const costAt = (price: Price, usage: Usage): number => {
  const cached = usage.prompt_tokens_details?.cached_tokens ?? 0
  const input = price.cachedInput === undefined || cached === 0
    ? usage.prompt_tokens * price.input
    : (usage.prompt_tokens - cached) * price.input + cached * price.cachedInput
  return (input + usage.completion_tokens * price.output) / 1_000_000
}

export const make = (overrides: Readonly<Record<string, Price>> = {}, options: Options = {}): Pricing => {
  const prices = new Map<string, Price>(Object.entries({ ...defaults, ...overrides }))

  const price = (model: string): Price | undefined => {
    const exact = prices.get(model)
    if (exact !== undefined) return exact
    const base = undated(model)
    return base === undefined ? undefined : prices.get(base)
  }

  let maxInput = 0
  let maxOutput = 0
  for (const p of prices.values()) {
    if (p.input > maxInput) maxInput = p.input
    if (p.output > maxOutput) maxOutput = p.output
  }
  const highest: Price = { input: maxInput, output: maxOutput }

  const cost = (model: string, usage: Usage): number | undefined => {
    const p = price(model)
    return p === undefined ? undefined : costAt(p, usage)
  }

  const maxOthers = options.maxOtherLabels ?? 50
  const modelLabel = boundedLabel(options.models ?? [], maxOthers)
  const keyLabel = boundedLabel(["anonymous", ...(options.keys ?? [])], maxOthers)
  const tokensBy = taggedBy(tokensTotal, ["upstream", "model", "key", "kind"])
  const costBy = taggedBy(costTotal, ["upstream", "model", "key"])

  const record = (labels: Labels, usage: Usage | undefined, costUsd: number | undefined): Effect.Effect<void> =>
    Effect.suspend(() => {
      const effects: Array<Effect.Effect<void>> = []
      const model = modelLabel(labels.model)
      const key = keyLabel(labels.key)
      // Counters only go up: zero, negative and NaN amounts are skipped.
      if (usage !== undefined && usage.prompt_tokens > 0) {
        effects.push(Metric.incrementBy(tokensBy(labels.upstream, model, key, "prompt"), usage.prompt_tokens))
      }
      if (usage !== undefined && usage.completion_tokens > 0) {
        effects.push(Metric.incrementBy(tokensBy(labels.upstream, model, key, "completion"), usage.completion_tokens))
      }
      if (costUsd !== undefined && costUsd > 0) {
        effects.push(Metric.incrementBy(costBy(labels.upstream, model, key), costUsd))
      }
      return Effect.all(effects, { discard: true })
    })

  const unsafeRecord = (
    labels: Labels,
    usage: Usage | undefined,
    costUsd: number | undefined,
    tags: ReadonlyArray<MetricLabel.MetricLabel>
  ): void => {
    const model = modelLabel(labels.model)
    const key = keyLabel(labels.key)
    if (usage !== undefined && usage.prompt_tokens > 0) {
      tokensBy(labels.upstream, model, key, "prompt").unsafeUpdate(usage.prompt_tokens, tags)
    }
    if (usage !== undefined && usage.completion_tokens > 0) {
      tokensBy(labels.upstream, model, key, "completion").unsafeUpdate(usage.completion_tokens, tags)
    }
    if (costUsd !== undefined && costUsd > 0) costBy(labels.upstream, model, key).unsafeUpdate(costUsd, tags)
  }

  return Pricing.of({ price, cost, highest, record, unsafeRecord })
}

export const layer = (overrides?: Readonly<Record<string, Price>>, options?: Options): Layer.Layer<Pricing> =>
  Layer.succeed(Pricing, make(overrides, options))
