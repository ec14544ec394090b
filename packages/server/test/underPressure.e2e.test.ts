/**
 * End-to-end, through the real server on 127.0.0.1 and fake upstreams over
 * HTTP: a request refused a failover by the retry budget (issue 15) fails as
 * when attempts run out (502 `upstream_failed`), and says why in its error,
 * its request log line and `/metrics`.
 */
import { describe, expect, it } from "vitest"
import { captured, openAIError, recordingFetch, testBed } from "./helpers/e2e.js"

const GATEWAY_KEY = "gw-key-PRESSURE-SECRET-1"

const { fake, serve } = testBed()

const chat = (url: string, content: string, id: string) =>
  recordingFetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${GATEWAY_KEY}`, "content-type": "application/json", "x-request-id": id },
    body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content }] })
  })

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe("retry budget, end to end", { timeout: 20_000 }, () => {
  it("a spent budget: 502 upstream_failed naming it, in the request log's failures and breakwater_retry_budget_exhausted_total", async () => {
    const sick = await fake("sick", { status: 503 })
    const spare = await fake("spare")
    const server = await serve(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: sick, baseUrl: "${sick.url}", apiKey: k1, models: [gpt-4.1], priority: 1, breaker: { failureThreshold: 1000 } }
  - { name: spare, baseUrl: "${spare.url}", apiKey: k2, models: [gpt-4.1], priority: 2 }
routing: { retryBudget: { ratio: 0.5, window: 10s, minPerSecond: 0 } }
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
`)
    // One primary call allows half a failover: refused. Two allow one.
    const first = await chat(server.url, "one", "pressure-1")
    expect(first.status).toBe(502)
    const error = openAIError(await first.text())
    expect(error.code).toBe("upstream_failed")
    expect(error.message).toContain("spare: retry budget exhausted")
    expect(first.headers.get("x-breakwater-upstream")).toBe("sick")
    const second = await chat(server.url, "two", "pressure-2")
    expect(second.status).toBe(200)
    expect(second.headers.get("x-breakwater-upstream")).toBe("spare")
    expect(spare.counters().chat).toBe(1)

    const metrics = await (await recordingFetch(`${server.url}/metrics`)).text()
    expect(metrics).toMatch(/^breakwater_retry_budget_exhausted_total(\{[^}]*\})? 1$/m)

    let line: Record<string, unknown> | undefined
    for (let i = 0; i < 40 && line === undefined; i++) {
      const found = captured.logs.find((l) => l.includes(`"requestId":"pressure-1"`))
      if (found !== undefined) line = JSON.parse(found) as Record<string, unknown>
      else await sleep(25)
    }
    expect(line).toMatchObject({ level: "WARN", status: 502, attempts: 1 })
    expect(line?.["failures"]).toEqual([expect.stringContaining("sick: "), "spare: retry budget exhausted"])
  })
})
