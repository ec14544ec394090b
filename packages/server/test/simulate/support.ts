/** Scenarios for the simulator's tests, small enough to work out by hand. */
import * as Either from "effect/Either"
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import * as Scenario from "../../src/simulate/Scenario.js"
import { primaryAndSecondary } from "../helpers/scenarios.js"

export const SCENARIOS = fileURLToPath(new URL("../../scenarios/", import.meta.url))

export const parse = (text: string, file = "test.yaml"): Scenario.Scenario => {
  const parsed = Scenario.parse(text, { file })
  if (Either.isLeft(parsed)) throw new Error(parsed.left.message)
  return parsed.right
}

export const load = (name: string): Scenario.Scenario => {
  const file = `${SCENARIOS}${name}`
  return parse(readFileSync(file, "utf8"), file)
}

/**
 * One healthy upstream, a fixed 100 ms, one request a second (evenly
 * spaced: at 0 s, 1 s, ... 59 s), no repeats, 100 prompt and 50 completion
 * tokens at $2 / $8 per million: each answer costs (100*2 + 50*8) / 1e6 =
 * $0.0006.
 */
export const healthy = `
duration: 60s
seed: 3
upstreams:
  - name: only
    latency: { p50: 100ms, p99: 100ms }
    price: { input: 2, output: 8 }
workload:
  requestsPerSecond: 1
  arrivals: uniform
  models: { gpt-4.1: 1 }
  promptTokens: 100
  completionTokens: 50
breakwater:
  upstreams:
    - { name: only }
`

/**
 * The same traffic; the primary answers every call 429 with Retry-After 10 s
 * after 50 ms, a secondary answers in 100 ms.
 */
export const rateLimitedPrimary = primaryAndSecondary({
  head: ["duration: 60s", "seed: 3"],
  primary: ["latency: { p50: 100ms, p99: 100ms }", "errorLatency: 50ms", "rate429: 1", "retryAfter: 10s"],
  secondary: ["latency: { p50: 100ms, p99: 100ms }"],
  workload: ["requestsPerSecond: 1", "arrivals: uniform"]
})
