/** Scenarios shared by the console's tests. */

/** A 5-minute scenario whose primary is down from minute 1 to minute 3. */
export const OUTAGE_SCENARIO = `
name: console-outage
duration: 5m
seed: 5
upstreams:
  - name: primary
    latency: { p50: 100ms, p99: 300ms }
    outages: [{ from: 1m, to: 3m, mode: error }]
    price: { input: 2, output: 8 }
  - name: secondary
    latency: { p50: 200ms, p99: 600ms }
    price: { input: 2, output: 8 }
workload:
  requestsPerSecond: 2
  models: { gpt-4.1: 1 }
  promptTokens: 100
  completionTokens: 50
breakwater:
  upstreams:
    - { name: primary, priority: 1 }
    - { name: secondary, priority: 2 }
`
