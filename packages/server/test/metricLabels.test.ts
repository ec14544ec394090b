/**
 * Metric labels stay bounded whatever model names callers choose: through a
 * `"*"` upstream every name used to become new series of
 * `breakwater_requests_total`, `breakwater_tokens_total` and
 * `breakwater_cost_usd_total`, forever (3,000 names grew /metrics to 2 MB).
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { captureStdout, startServer, type TestServer } from "./helpers/e2e.js"

let upstream: FakeUpstream.FakeUpstream
let server: TestServer
let restoreStdout: (() => void) | undefined

beforeAll(async () => {
  restoreStdout = captureStdout()
  upstream = await FakeUpstream.start({ name: "wide" })
  server = await startServer(`
upstreams:
  - { name: wide, baseUrl: "${upstream.url}", apiKey: "sk-wide", models: "*", aliases: { fast: gpt-4.1-mini } }
cache: { enabled: false }
`)
})

afterAll(async () => {
  await server?.close()
  await upstream?.close()
  restoreStdout?.()
})

const chat = (model: string) =>
  fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] })
  }).then(async (res) => {
    await res.arrayBuffer()
    return res.status
  })

/** The distinct values of `label` in the series of `metric` (on upstream "wide"). */
const labelValues = (text: string, metric: string, label: string): Set<string> => {
  const values = new Set<string>()
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${metric}{`) || !line.includes(`upstream="wide"`)) continue
    const m = new RegExp(`${label}="([^"]*)"`).exec(line)
    if (m !== null) values.add(m[1]!)
  }
  return values
}

describe("metric labels through a \"*\" upstream", () => {
  it("3,000 distinct model names: /metrics stays small, at most 50 other names, then 'other'", async () => {
    const before = await (await fetch(`${server.url}/metrics`)).text()
    const names = Array.from({ length: 3000 }, (_, i) => `caller-model-${i}`)
    const statuses: Array<number> = []
    // 3,000 requests, 50 at a time.
    for (let i = 0; i < names.length; i += 50) statuses.push(...await Promise.all(names.slice(i, i + 50).map(chat)))
    expect(statuses.every((s) => s === 200)).toBe(true)
    expect(await chat("fast")).toBe(200)

    const text = await (await fetch(`${server.url}/metrics`)).text()
    for (const metric of ["breakwater_requests_total", "breakwater_tokens_total"]) {
      const models = labelValues(text, metric, "model")
      expect(models.size, metric).toBeLessThanOrEqual(52)
      expect(models.has("other"), metric).toBe(true)
      expect(models.has("caller-model-2999"), metric).toBe(false)
    }
    // The configured alias keeps its own label (requests by the caller's name, tokens by the upstream's).
    expect(labelValues(text, "breakwater_requests_total", "model").has("fast")).toBe(true)
    expect(labelValues(text, "breakwater_tokens_total", "model").has("gpt-4.1-mini")).toBe(true)
    // Series, not bytes, are what grows: count them.
    const series = text.split("\n").filter((l) => l.startsWith("breakwater_") && !l.startsWith("#")).length
    expect(series).toBeLessThan(600)
    expect(text.length).toBeLessThan(before.length + 100_000)
  }, 60_000)
})
