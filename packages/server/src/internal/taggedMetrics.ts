/**
 * (A copy of the core's internal helper: internals are not part of the
 * core's published surface.)
 *
 * Tagged metrics made once per set of tag values. `Metric.tagged` builds a
 * new metric key (and the registry hashes it) on every call; on a request's
 * path that is measurable, so each distinct tag set is made once and kept.
 * At most `limit` tag sets are kept; beyond that each call builds its key
 * again (correct, only slower), so hostile tag values cannot grow memory.
 */
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"

export const taggedBy = <Type, In, Out>(
  metric: Metric.Metric<Type, In, Out>,
  keys: ReadonlyArray<string>,
  limit = 10_000
): (...values: ReadonlyArray<string>) => Metric.Metric<Type, In, Out> => {
  const made = new Map<string, Metric.Metric<Type, In, Out>>()
  return (...values) => {
    const id = values.join("\u0000")
    let m = made.get(id)
    if (m === undefined) {
      m = Metric.taggedWithLabels(metric, keys.map((k, i) => MetricLabel.make(k, values[i] ?? "")))
      if (made.size < limit) made.set(id, m)
    }
    return m
  }
}
