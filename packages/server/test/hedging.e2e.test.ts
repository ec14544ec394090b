/**
 * Hedging through the real server on 127.0.0.1 (`routing.hedge`), with fake
 * upstreams over HTTP and the official SDK: a slow primary is hedged to a
 * fast secondary, the request line and the metrics say so, the primary's
 * request is aborted, and `x-breakwater-hedge: off` keeps a request to one
 * call.
 */
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import { describe, expect, it } from "vitest"
import * as Config from "../src/Config.js"
import { captured, configOf, openAIError, recordingFetch, sdkFor, testBed, type TestServer } from "./helpers/e2e.js"

const GATEWAY_KEY = "gw-key-HEDGING-SECRET-1"
const { fake, serve } = testBed()

const start = async (primaryLatency: number) => {
  const primary = await fake("primary", { latencyMs: primaryLatency })
  const secondary = await fake("secondary", { latencyMs: 50 })
  const server = await serve(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: primary, baseUrl: "${primary.url}", apiKey: sk-primary, models: [gpt-4.1], priority: 1, timeout: 10s }
  - { name: secondary, baseUrl: "${secondary.url}", apiKey: sk-secondary, models: [gpt-4.1], priority: 2, timeout: 10s }
routing: { hedge: { after: 200ms, maxExtra: "100%" } }
cache: { enabled: false }
`)
  return { primary, secondary, server }
}

const sdk = (server: TestServer, headers: Record<string, string> = {}) => sdkFor(server, GATEWAY_KEY, headers)

const lineOf = (requestId: string): Record<string, unknown> | undefined => {
  for (const l of captured.logs) {
    if (!l.includes(requestId)) continue
    try {
      const parsed = JSON.parse(l) as Record<string, unknown>
      if (parsed["requestId"] === requestId && parsed["msg"] === "request") return parsed
    } catch {
      // not a JSON line
    }
  }
  return undefined
}

const eventually = async (cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10))
  return cond()
}

describe("routing.hedge through the server", () => {
  it("a slow primary is hedged: the secondary answers, the line and the metrics say so, the primary's request is aborted", async () => {
    const { primary, server } = await start(3_000)
    const started = performance.now()
    const { data, response } = await sdk(server, { "x-request-id": "hedged-1" }).chat.completions
      .create({ model: "gpt-4.1", messages: [{ role: "user", content: "hello" }] })
      .withResponse()
    const elapsed = performance.now() - started
    expect(response.headers.get("x-breakwater-upstream")).toBe("secondary")
    expect(data.system_fingerprint).toBe("fake-secondary")
    expect(elapsed).toBeLessThan(1_500)
    expect(await eventually(() => primary.counters().aborted === 1)).toBe(true)
    expect(await eventually(() => lineOf("hedged-1") !== undefined)).toBe(true)
    const line = lineOf("hedged-1")!
    expect(line["hedge"]).toBe("won")
    expect(line["hedgeUpstream"]).toBe("secondary")
    expect(line["upstream"]).toBe("secondary")
    expect(line["attempts"]).toBe(2)
    const metrics = await (await recordingFetch(`${server.url}/metrics`)).text()
    expect(metrics).toMatch(/breakwater_hedged_total\{[^}]*outcome="won"[^}]*upstream="secondary"[^}]*\} 1/)
    expect(metrics).toMatch(/breakwater_upstream_requests_total\{[^}]*outcome="interrupted"[^}]*upstream="primary"[^}]*\} 1/)
  })

  it("x-breakwater-hedge: off keeps the request on the primary; a value other than on/off is a 400", async () => {
    const { primary, secondary, server } = await start(600)
    const { response } = await sdk(server, { "x-breakwater-hedge": "off", "x-request-id": "unhedged-1" }).chat.completions
      .create({ model: "gpt-4.1", messages: [{ role: "user", content: "must run once" }] })
      .withResponse()
    expect(response.headers.get("x-breakwater-upstream")).toBe("primary")
    expect(primary.counters().chat).toBe(1)
    expect(secondary.counters().chat).toBe(0)
    expect(await eventually(() => lineOf("unhedged-1") !== undefined)).toBe(true)
    expect(lineOf("unhedged-1")!["hedge"]).toBeUndefined()

    const bad = await recordingFetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${GATEWAY_KEY}`, "content-type": "application/json", "x-breakwater-hedge": "maybe" },
      body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "hi" }] })
    })
    expect(bad.status).toBe(400)
    expect(openAIError(await bad.text()).message).toContain("x-breakwater-hedge")
    expect(primary.counters().chat).toBe(1)
  })
})

describe("routing.hedge in the config", () => {
  const base = `
upstreams:
  - { name: a, baseUrl: "http://127.0.0.1:1/v1", apiKey: sk-a }
`
  it("is off by default; `after: p95, maxExtra: 10%` and a fixed delay read with their defaults", () => {
    expect(configOf(base).routing.hedge).toBeUndefined()
    expect(Config.toRelayOptions(configOf(base)).hedge).toBeUndefined()
    const p95 = configOf(`${base}routing: { hedge: { after: p95, maxExtra: 10% } }\n`).routing.hedge!
    expect(p95.after).toEqual({ _tag: "Percentile", quantile: 0.95 })
    expect(p95.maxExtra).toBeCloseTo(0.1)
    expect(Duration.toMillis(p95.window)).toBe(10_000)
    expect(Duration.toMillis(p95.initialDelay)).toBe(1_000)
    expect(Duration.toMillis(p95.minDelay)).toBe(50)
    expect(p95.sameUpstream).toBe(false)
    expect(configOf(`${base}routing: { hedge: { after: p95, sameUpstream: true } }\n`).routing.hedge!.sameUpstream).toBe(true)
    const fixed = configOf(`${base}routing: { hedge: { after: 800ms, maxExtra: 0.05, window: 30s } }\n`)
    expect(Duration.toMillis(fixed.routing.hedge!.after as Duration.Duration)).toBe(800)
    expect(fixed.routing.hedge!.maxExtra).toBe(0.05)
    expect(Config.toRelayOptions(fixed).hedge).toBe(fixed.routing.hedge)
  })

  it("a bad value gets a message naming the field", () => {
    const parsed = Config.parse(`${base}routing: { hedge: { after: soon, maxExtra: 150% } }\n`, { file: "t.yaml", env: {} })
    if (Either.isRight(parsed) || parsed.left._tag !== "ConfigInvalid") throw new Error("expected ConfigInvalid")
    expect(parsed.left.problems).toEqual([
      { path: "routing.hedge.after", message: `expected a positive duration like "800ms" or a percentile like "p95", got "soon"` },
      { path: "routing.hedge.maxExtra", message: `expected a share above 0 and at most 1, like 0.1 or "10%", got "150%"` }
    ])
    const missing = Config.parse(`${base}routing: { hedge: { maxExtra: 0.1 } }\n`, { file: "t.yaml", env: {} })
    if (Either.isRight(missing) || missing.left._tag !== "ConfigInvalid") throw new Error("expected ConfigInvalid")
    expect(missing.left.problems.map((p) => p.path)).toEqual(["routing.hedge.after"])
  })
})
