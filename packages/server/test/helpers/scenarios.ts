/** Scenarios shared by the console's tests. */

/**
 * A scenario with a `primary` (priority 1) and a `secondary` (priority 2),
 * both at $2 / $8 per million tokens, sent gpt-4.1 requests of 100 prompt and
 * 50 completion tokens (each answer $0.0006). Each field holds the lines
 * (without their indentation) of its place: `head` before `upstreams`, `primary`
 * and `secondary` between the upstream's name and its price, `workload` before
 * its models, `breakwater` after its upstreams.
 */
export const primaryAndSecondary = (lines: {
  readonly head: ReadonlyArray<string>
  readonly primary: ReadonlyArray<string>
  readonly secondary: ReadonlyArray<string>
  readonly workload: ReadonlyArray<string>
  readonly breakwater?: ReadonlyArray<string>
}): string => {
  const at = (indent: string, some: ReadonlyArray<string> = []) => some.map((line) => `${indent}${line}\n`).join("")
  return "\n" + at("", lines.head) +
    "upstreams:\n" +
    "  - name: primary\n" + at("    ", lines.primary) + "    price: { input: 2, output: 8 }\n" +
    "  - name: secondary\n" + at("    ", lines.secondary) + "    price: { input: 2, output: 8 }\n" +
    "workload:\n" + at("  ", lines.workload) + "  models: { gpt-4.1: 1 }\n  promptTokens: 100\n  completionTokens: 50\n" +
    "breakwater:\n  upstreams:\n    - { name: primary, priority: 1 }\n    - { name: secondary, priority: 2 }\n" +
    at("  ", lines.breakwater)
}

/** A 5-minute scenario whose primary is down from minute 1 to minute 3. */
export const OUTAGE_SCENARIO = primaryAndSecondary({
  head: ["name: console-outage", "duration: 5m", "seed: 5"],
  primary: ["latency: { p50: 100ms, p99: 300ms }", "outages: [{ from: 1m, to: 3m, mode: error }]"],
  secondary: ["latency: { p50: 200ms, p99: 600ms }"],
  workload: ["requestsPerSecond: 2"]
})
