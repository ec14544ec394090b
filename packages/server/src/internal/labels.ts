/**
 * (A copy of the core's internal helper: internals are not part of the
 * core's published surface.)
 *
 * Bounded metric label values. Every distinct label value is a new series,
 * kept for the life of the process; values chosen by callers (a model name
 * through a `"*"` upstream) would grow `/metrics` and memory without end.
 * Known values (from the configuration) are kept as they are; at most `max`
 * other values are kept too, first seen first, and every later one is `other`.
 */

export const OTHER = "other"

export const boundedLabel = (known: Iterable<string>, max: number): (value: string) => string => {
  const allowed = new Set<string>(known)
  let others = 0
  return (value) => {
    if (allowed.has(value)) return value
    if (others >= max) return OTHER
    others++
    allowed.add(value)
    return value
  }
}
