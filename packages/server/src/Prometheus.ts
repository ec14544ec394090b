/**
 * Renders Effect's metric registry in the Prometheus text exposition format
 * (version 0.0.4).
 *
 * - Series are grouped into one family per metric name, each with at most one
 *   `# HELP` line (when the metric has a non-empty description) and one
 *   `# TYPE` line. Families are sorted by name, series by their labels.
 * - Counters and gauges render one line each. Counter names are kept as they
 *   are (no `_total` suffix is added).
 * - Histograms render `_bucket` lines (cumulative; Effect's histogram state
 *   already holds cumulative counts), a `le="+Inf"` bucket equal to the
 *   count, then `_sum` and `_count`.
 * - Frequencies render as a counter with one series per occurrence, the
 *   occurrence in a `key` label.
 * - Summaries render one line per quantile (`quantile` label; `NaN` when the
 *   quantile has no value yet), then `_sum` and `_count`.
 * - Metric names are sanitized to `[a-zA-Z_:][a-zA-Z0-9_:]*` and label names
 *   to `[a-zA-Z_][a-zA-Z0-9_]*`; invalid characters become `_`. When a label
 *   name appears twice on a metric, the last value wins; the label added by
 *   the renderer (`le`, `quantile`, `key`) replaces a tag of the same name.
 * - If metrics of different kinds share a name, the family's type is
 *   `untyped` (each series still renders by its own kind).
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"

/** The `Content-Type` of the text exposition format 0.0.4. */
export const contentType = "text/plain; version=0.0.4; charset=utf-8"

type FamilyType = "counter" | "gauge" | "histogram" | "summary" | "untyped"

type Label = readonly [name: string, value: string]

/** One or more lines that stay together and sort as a unit within a family. */
interface Group {
  readonly sortKey: string
  readonly lines: ReadonlyArray<string>
  readonly type: Exclude<FamilyType, "untyped">
  readonly help: string | undefined
}

// ---------------------------------------------------------------------------
// Formatting helpers
// ---------------------------------------------------------------------------

/** Integers without decimals, `NaN`, `+Inf` / `-Inf`; bigints as they are. */
const formatNumber = (n: number | bigint): string => {
  if (typeof n === "bigint") return n.toString()
  if (Number.isNaN(n)) return "NaN"
  if (n === Number.POSITIVE_INFINITY) return "+Inf"
  if (n === Number.NEGATIVE_INFINITY) return "-Inf"
  return String(n) // String(-0) === "0"; integers print without decimals
}

const escapeHelp = (s: string): string => s.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")

const escapeLabelValue = (s: string): string => s.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")

const sanitizeMetricName = (name: string): string => {
  const s = name.replace(/[^a-zA-Z0-9_:]/g, "_")
  return s === "" ? "_" : /^[0-9]/.test(s) ? `_${s}` : s
}

const sanitizeLabelName = (name: string): string => {
  const s = name.replace(/[^a-zA-Z0-9_]/g, "_")
  return s === "" ? "_" : /^[0-9]/.test(s) ? `_${s}` : s
}

/** Code-unit comparison: deterministic whatever the locale. */
const compareStrings = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0)

/** Sanitized, deduplicated (last wins) and sorted by name. */
const baseLabels = (pair: MetricPair.MetricPair.Untyped): ReadonlyArray<Label> => {
  const byName = new Map<string, string>()
  for (const tag of pair.metricKey.tags) byName.set(sanitizeLabelName(tag.key), tag.value)
  return [...byName.entries()].sort(([a], [b]) => compareStrings(a, b))
}

/** Base labels plus an optional renderer-owned label, which comes last. */
const withExtra = (labels: ReadonlyArray<Label>, extra?: Label): ReadonlyArray<Label> =>
  extra === undefined ? labels : [...labels.filter(([name]) => name !== extra[0]), extra]

const formatLabels = (labels: ReadonlyArray<Label>): string =>
  labels.length === 0
    ? ""
    : `{${labels.map(([name, value]) => `${name}="${escapeLabelValue(value)}"`).join(",")}}`

const line = (name: string, labels: ReadonlyArray<Label>, value: number | bigint): string =>
  `${name}${formatLabels(labels)} ${formatNumber(value)}`

// ---------------------------------------------------------------------------
// Pairs to groups
// ---------------------------------------------------------------------------

const toGroups = (name: string, pair: MetricPair.MetricPair.Untyped): ReadonlyArray<Group> => {
  const state: unknown = pair.metricState
  const help = Option.getOrUndefined(pair.metricKey.description)
  const labels = baseLabels(pair)
  const sortKey = formatLabels(labels)

  if (MetricState.isCounterState(state)) {
    return [{ sortKey, type: "counter", help, lines: [line(name, labels, state.count)] }]
  }
  if (MetricState.isGaugeState(state)) {
    return [{ sortKey, type: "gauge", help, lines: [line(name, labels, state.value)] }]
  }
  if (MetricState.isFrequencyState(state)) {
    return [...state.occurrences.entries()].map(([key, count]): Group => {
      const all = withExtra(labels, ["key", key])
      return { sortKey: formatLabels(all), type: "counter", help, lines: [line(name, all, count)] }
    })
  }
  if (MetricState.isHistogramState(state)) {
    // Effect's histogram buckets are `[boundary, cumulativeCount]`, sorted by
    // boundary, and its boundaries always end with +Infinity. The +Inf bucket
    // is written from `count` (what Prometheus requires it to equal) rather
    // than from the state's last bucket.
    const lines: Array<string> = []
    for (const [boundary, cumulative] of state.buckets) {
      if (boundary === Number.POSITIVE_INFINITY) continue
      lines.push(line(`${name}_bucket`, withExtra(labels, ["le", formatNumber(boundary)]), cumulative))
    }
    lines.push(line(`${name}_bucket`, withExtra(labels, ["le", "+Inf"]), state.count))
    lines.push(line(`${name}_sum`, labels, state.sum))
    lines.push(line(`${name}_count`, labels, state.count))
    return [{ sortKey, type: "histogram", help, lines }]
  }
  if (MetricState.isSummaryState(state)) {
    const quantiles = [...state.quantiles].sort(([a], [b]) => a - b)
    const lines: Array<string> = quantiles.map(([q, value]) =>
      line(name, withExtra(labels, ["quantile", formatNumber(q)]), Option.getOrElse(value, () => Number.NaN))
    )
    lines.push(line(`${name}_sum`, labels, state.sum))
    lines.push(line(`${name}_count`, labels, state.count))
    return [{ sortKey, type: "summary", help, lines }]
  }
  return [] // not a state Effect produces
}

const compareGroups = (a: Group, b: Group): number =>
  compareStrings(a.sortKey, b.sortKey) || compareStrings(a.lines.join("\n"), b.lines.join("\n"))

/**
 * Renders metric pairs as Prometheus text. Pure; the result ends with a
 * newline unless it is empty.
 */
export const renderPairs = (pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>): string => {
  const families = new Map<string, Array<Group>>()
  for (const pair of pairs) {
    const name = sanitizeMetricName(pair.metricKey.name)
    const groups = toGroups(name, pair)
    if (groups.length === 0) continue
    const family = families.get(name)
    if (family === undefined) families.set(name, [...groups])
    else family.push(...groups)
  }

  const out: Array<string> = []
  for (const name of [...families.keys()].sort(compareStrings)) {
    const groups = (families.get(name) ?? []).sort(compareGroups)
    const types = new Set(groups.map((g) => g.type))
    const [first] = types
    const type: FamilyType = types.size === 1 && first !== undefined ? first : "untyped"
    const help = groups.find((g) => g.help !== undefined && g.help !== "")?.help
    if (help !== undefined) out.push(`# HELP ${name} ${escapeHelp(help)}`)
    out.push(`# TYPE ${name} ${type}`)
    for (const group of groups) out.push(...group.lines)
  }
  return out.length === 0 ? "" : `${out.join("\n")}\n`
}

/** Renders every metric in Effect's default registry as Prometheus text. */
export const render: Effect.Effect<string> = Effect.map(Metric.snapshot, renderPairs)
