/**
 * Budgets end to end: the real server on 127.0.0.1, a fake upstream, real
 * HTTP. Concurrent requests must not overshoot a key's budget (each reserves
 * an estimate before the call and settles to the real cost after).
 */
import { Pricing } from "@breakwater/core"
import { describe, expect, it } from "vitest"
import { captured, openAIError, testBed, type TestServer } from "./helpers/e2e.js"

const KEY = "gw-key-BUDGET-SECRET-1"
const ADMIN = "admin-key-BUDGET-SECRET"

const { fake, serve } = testBed()

/** A fake whose answers take 100 ms and are 60 characters (15 completion tokens). */
const slowFake = async (name: string) => {
  return fake(name, { latencyMs: 100 }, { reply: () => "x".repeat(60) })
}

interface Outcome {
  readonly status: number
  readonly costUsd: number
  readonly body: string
  readonly headers: Headers
}

const post = async (server: TestServer, body: unknown, key = KEY): Promise<Outcome> => {
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify(body)
  })
  const text = await res.text()
  return { status: res.status, costUsd: Number(res.headers.get("x-breakwater-cost-usd") ?? 0), body: text, headers: res.headers }
}

// 60 characters of prompt: 15 prompt tokens. At gpt-4.1's $2/$8 per million:
// 15 * 2 + 15 * 8 = 150 micro-dollars a request, $0.006 for 40.
const PROMPT = "p".repeat(60)
const REAL_COST = (15 * 2 + 15 * 8) / 1e6

describe("budgets under concurrency", () => {
  it("40 concurrent requests on a $0.001 key spend at most the budget (plus the bounded estimate error); the rest get 429", async () => {
    const upstream = await slowFake("budget-a")
    const server = await serve(`
server: { adminKey: "${ADMIN}" }
keys:
  - { name: tight, key: "${KEY}", budgetUsd: 0.001 }
upstreams:
  - { name: a, baseUrl: "${upstream.url}", apiKey: "sk-a", models: [gpt-4.1] }
cache: { enabled: false }
`)
    // max_tokens 20: the estimate (15 * 2 + 20 * 8 = 190 micro-dollars) is above the real cost.
    const outcomes = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        post(server, { model: "gpt-4.1", max_tokens: 20, messages: [{ role: "user", content: PROMPT.slice(0, 56) + String(1000 + i) }] }))
    )
    const ok = outcomes.filter((o) => o.status === 200)
    const refused = outcomes.filter((o) => o.status === 429)
    const spent = ok.reduce((sum, o) => sum + o.costUsd, 0)
    if (process.env["BUDGET_FIGURES"] !== undefined) console.log("max_tokens 20:", { ok: ok.length, spent })
    expect(ok.length + refused.length).toBe(40)
    expect(ok[0]!.costUsd).toBeCloseTo(REAL_COST, 10)
    // Every estimate was at least the real cost: no overshoot at all.
    expect(spent).toBeLessThanOrEqual(0.001 + 1e-9)
    expect(ok.length).toBeGreaterThanOrEqual(5)
    expect(refused.length).toBeGreaterThan(0)
    for (const r of refused) {
      expect(openAIError(r.body)).toMatchObject({ type: "insufficient_quota", code: "budget_exceeded" })
    }
    expect(upstream.counters().chat).toBe(ok.length)
  })

  it("without max_tokens (estimatedOutputTokens below the real output) the overshoot is bounded by the estimate error", async () => {
    const upstream = await slowFake("budget-b")
    const server = await serve(`
keys:
  - { name: tight, key: "${KEY}", budgetUsd: 0.001 }
upstreams:
  - { name: b, baseUrl: "${upstream.url}", apiKey: "sk-b", models: [gpt-4.1] }
cache: { enabled: false }
pricing: { estimatedOutputTokens: 5 }
`)
    // Estimate 15 * 2 + 5 * 8 = 70 micro-dollars; real 150: an error of 80 per request in flight.
    const outcomes = await Promise.all(
      Array.from({ length: 40 }, (_, i) => post(server, { model: "gpt-4.1", messages: [{ role: "user", content: PROMPT.slice(0, 56) + String(1000 + i) }] }))
    )
    const ok = outcomes.filter((o) => o.status === 200)
    const spent = ok.reduce((sum, o) => sum + o.costUsd, 0)
    // At most floor(0.001 / 0.00007) = 14 requests are admitted before any settles.
    const bound = 0.001 + 14 * (REAL_COST - 70e-6)
    if (process.env["BUDGET_FIGURES"] !== undefined) console.log("no max_tokens:", { ok: ok.length, spent, bound })
    expect(spent).toBeLessThanOrEqual(bound + 1e-9)
    expect(outcomes.filter((o) => o.status === 429).length).toBeGreaterThan(0)
  })
})

describe("reservations are given back", () => {
  it("when the caller goes away mid-request, and when every upstream fails", async () => {
    const upstream = await fake("budget-release", { latencyMs: 400 })
    const server = await serve(`
keys:
  - { name: one-at-a-time, key: "${KEY}", budgetUsd: 0.001 }
upstreams:
  - { name: r, baseUrl: "${upstream.url}", apiKey: "sk-r", models: [gpt-4.1], timeout: 5s }
cache: { enabled: false }
retry: { maxRetries: 0 }
`)
    // max_tokens 100: an estimate of $0.0008, so only one request fits at a time.
    const body = { model: "gpt-4.1", max_tokens: 100, messages: [{ role: "user", content: "hello" }] }
    const abort = new AbortController()
    const first = fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
      body: JSON.stringify(body),
      signal: abort.signal
    }).catch((e: unknown) => e)
    await new Promise((r) => setTimeout(r, 100))
    expect((await post(server, body)).status).toBe(429) // the first holds the budget
    abort.abort()
    await first
    await new Promise((r) => setTimeout(r, 100))
    const second = await post(server, body)
    expect(second.status).toBe(200)

    upstream.setFaults({ status: 500 })
    expect((await post(server, body)).status).toBe(502)
    upstream.setFaults({})
    expect((await post(server, body)).status).toBe(200)
  })
})

describe("keys and spend in the admin API", () => {
  it("GET /admin/keys shows spend, budget, period and reset time (never the key); reset-spend zeroes the period", async () => {
    const upstream = await fake("admin-keys", {}, { reply: () => "x".repeat(60) })
    const server = await serve(`
server: { adminKey: "${ADMIN}" }
keys:
  - { name: daily, key: "${KEY}", budgetUsd: 0.0005, budgetPeriod: day }
  - { name: open, key: "gw-key-OPEN-SECRET-2", requestsPerMinute: 60 }
upstreams:
  - { name: u, baseUrl: "${upstream.url}", apiKey: "sk-u", models: [gpt-4.1] }
cache: { enabled: false }
`)
    const admin = (path: string, method = "GET", key = ADMIN) =>
      fetch(`${server.url}${path}`, { method, headers: { authorization: `Bearer ${key}` } })
    const ask = (i: number) => post(server, { model: "gpt-4.1", max_tokens: 16, messages: [{ role: "user", content: PROMPT.slice(0, 56) + String(1000 + i) }] })
    let spent = 0
    for (let i = 0; i < 10; i++) {
      const o = await ask(i)
      if (o.status !== 200) {
        expect(o.status).toBe(429)
        expect(openAIError(o.body).message).toMatch(/per day budget of key 'daily'.*It resets at \d{4}-\d\d-\d\dT00:00:00\.000Z\./)
        break
      }
      spent += o.costUsd
    }
    expect(spent).toBeGreaterThan(0)
    const res = await admin("/admin/keys")
    expect(res.status).toBe(200)
    const text = await res.text()
    expect(text).not.toContain("SECRET")
    const list = JSON.parse(text) as { object: string; data: Array<Record<string, unknown>> }
    expect(list.object).toBe("list")
    const tomorrow = new Date(Math.floor(Date.now() / 86_400_000 + 1) * 86_400_000).toISOString()
    expect(list.data[0]).toMatchObject({
      name: "daily",
      budgetUsd: 0.0005,
      budgetPeriod: "day",
      heldUsd: 0,
      resetsAt: tomorrow
    })
    expect(list.data[0]!["spentUsd"]).toBeCloseTo(spent, 12)
    expect(list.data[1]).toEqual({
      name: "open",
      budgetUsd: null,
      budgetPeriod: "total",
      spentUsd: null,
      heldUsd: null,
      remainingUsd: null,
      periodStart: null,
      resetsAt: null,
      requestsPerMinute: 60,
      tokensPerMinute: null
    })

    const reset = await admin("/admin/keys/daily/reset-spend", "POST")
    expect(reset.status).toBe(200)
    expect(await reset.json()).toMatchObject({ name: "daily", spentUsd: 0, remainingUsd: 0.0005 })
    expect((await ask(100)).status).toBe(200)

    expect((await admin("/admin/keys/nobody/reset-spend", "POST")).status).toBe(404)
    expect((await admin("/admin/keys/%E0%A4%A/reset-spend", "POST")).status).toBe(400)
    expect((await admin("/admin/keys/daily/reset-spend")).status).toBe(405)
    expect((await admin("/admin/keys", "POST")).status).toBe(405)
    expect((await admin("/admin/keys", "GET", KEY)).status).toBe(401)
  })
})

describe("models without a price", () => {
  it("a key with a budget is charged the highest price and told so; with pricing.unknown: reject it is refused (403) before any call", async () => {
    const upstream = await fake("unpriced", {}, { reply: () => "x".repeat(60) })
    const yaml = (extra: string) => `
keys:
  - { name: budgeted, key: "${KEY}", budgetUsd: 100 }
  - { name: free, key: "gw-key-FREE-SECRET-3" }
upstreams:
  - { name: any, baseUrl: "${upstream.url}", apiKey: "sk-any", models: "*" }
  - { name: listed, baseUrl: "${upstream.url}", apiKey: "sk-listed", models: [house-model-7b], priority: 2 }
cache: { enabled: false }
${extra}
`
    const highest = await serve(yaml(""))
    // Warned at start: a configured model without a price, and a "*" upstream.
    expect(captured.logs.some((l) => l.includes("no price for 'house-model-7b'") && l.includes("highest price"))).toBe(true)
    expect(captured.logs.some((l) => l.includes("'any' serve any model"))).toBe(true)

    const body = { model: "mystery-model", messages: [{ role: "user", content: PROMPT }] }
    const charged = await post(highest, body)
    expect(charged.status).toBe(200)
    expect(charged.headers.get("x-breakwater-cost-basis")).toBe("unpriced")
    // 15 prompt and 15 completion tokens at the table's highest prices.
    const { input, output } = Pricing.make().highest
    expect(charged.costUsd).toBeCloseTo((15 * input + 15 * output) / 1e6, 8)
    const free = await post(highest, body, "gw-key-FREE-SECRET-3")
    expect(free.status).toBe(200)
    expect(free.costUsd).toBe(0)
    expect(free.headers.get("x-breakwater-cost-basis")).toBeNull()
    expect(captured.logs.some((l) => l.includes("model 'mystery-model' has no price"))).toBe(true)

    const reject = await serve(yaml("pricing: { unknown: reject }"))
    const before = upstream.counters().chat
    const refused = await post(reject, body)
    expect(refused.status).toBe(403)
    expect(openAIError(refused.body)).toMatchObject({ type: "permission_error", code: "model_not_priced", param: "model" })
    expect(upstream.counters().chat).toBe(before)
    expect((await post(reject, { ...body, model: "gpt-4.1" })).status).toBe(200)
    expect((await post(reject, body, "gw-key-FREE-SECRET-3")).status).toBe(200)
  })
})

