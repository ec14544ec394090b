/**
 * The server's fast path (issue 13): a plain chat completion with a valid
 * key is answered without a fiber (Http.Handler.fast, the relay's
 * `unsafeChat`), and answers exactly as the general (Effect) path does:
 * status, headers, body, log line, metrics. What it cannot take (failover,
 * streams, limits, wrong keys) goes to the general path; a caller that
 * hangs up mid-request releases its slot and socket and is logged as 499.
 *
 * Every comparison runs the same request through two servers on the same
 * fake upstreams: one as shipped, one with `fastPath: false`.
 */
import { Cooldown } from "@breakwater/core"
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import * as Effect from "effect/Effect"
import * as http from "node:http"
import { beforeAll, describe, expect, it } from "vitest"
import * as Events from "../src/Events.js"
import { lineOf, testBed, type TestServer } from "./helpers/e2e.js"

const GATEWAY_KEY = "gw-key-FAST-SECRET-1"
const LIMITED_KEY = "gw-key-FAST-LIMITED-2"
const BUDGET_KEY = "gw-key-FAST-BUDGET-4"
const ADMIN_KEY = "admin-key-FAST-SECRET-3"

const { fake, serve } = testBed()

const yamlOf = (
  primary: FakeUpstream.FakeUpstream,
  secondary: FakeUpstream.FakeUpstream,
  broken: FakeUpstream.FakeUpstream,
  slow: FakeUpstream.FakeUpstream
) => `
server: { adminKey: "${ADMIN_KEY}" }
keys:
  - { name: alpha, key: "${GATEWAY_KEY}" }
  - { name: limited, key: "${LIMITED_KEY}", requestsPerMinute: 2, tokensPerMinute: 100000 }
  - { name: budget, key: "${BUDGET_KEY}", budgetUsd: 100 }
upstreams:
  - { name: primary, baseUrl: "${primary.url}", apiKey: sk-up-1, models: [gpt-4.1], priority: 1, timeout: 5s }
  - { name: secondary, baseUrl: "${secondary.url}", apiKey: sk-up-2, models: [gpt-4.1, flaky-model], priority: 2, timeout: 5s }
  - { name: broken, baseUrl: "${broken.url}", apiKey: sk-up-3, models: [flaky-model], priority: 1, timeout: 5s }
  - { name: slow, baseUrl: "${slow.url}", apiKey: sk-up-4, models: [slow-model], maxConcurrent: 1, timeout: 5s }
retry: { maxRetries: 0 }
`

let fast: TestServer
let general: TestServer
let slowFake: FakeUpstream.FakeUpstream

beforeAll(async () => {
  const primary = await fake("primary")
  const secondary = await fake("secondary")
  const broken = await fake("broken", { status: 503 })
  slowFake = await fake("slow", { latencyMs: 1_500 })
  const yaml = yamlOf(primary, secondary, broken, slowFake)
  fast = await serve(yaml)
  general = await serve(yaml, { fastPath: false })
})

interface Answer {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: string
}

const post = async (server: TestServer, body: unknown, headers: Record<string, string> = {}): Promise<Answer> => {
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${GATEWAY_KEY}`, ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body)
  })
  return { status: res.status, headers: Object.fromEntries(res.headers.entries()), body: await res.text() }
}

/** What may differ between two answers to the same request: the time, ids, latency. */
const comparable = (a: Answer) => {
  const { date: _d, "x-request-id": _r, "x-breakwater-latency-ms": latency, ...headers } = a.headers
  expect(latency === undefined || /^\d+$/.test(latency)).toBe(true)
  let body: unknown = a.body
  try {
    const parsed = JSON.parse(a.body) as Record<string, unknown>
    delete parsed["id"]
    delete parsed["created"]
    body = parsed
  } catch {
    // not JSON: as it is
  }
  return { status: a.status, headers, body }
}

const comparableLine = (line: Record<string, unknown>) => {
  const { time: _t, requestId: _r, latencyMs, ...rest } = line
  expect(typeof latencyMs).toBe("number")
  return rest
}

/** The value of a Prometheus sample of `name` with these labels (0 when absent). Metrics are per process: both servers count in them. */
const sample = async (server: TestServer, name: string, labels: ReadonlyArray<string>): Promise<number> => {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && labels.every((x) => l.includes(x)))
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(" ") + 1))
}

/** The same request (a string body is sent as it is) through both servers, one after the other; both answers and log lines. */
const both = async (name: string, body: unknown, headers: Record<string, string> = {}) => {
  const a = await post(fast, body, { ...headers, "x-request-id": `${name}-fast` })
  const b = await post(general, body, { ...headers, "x-request-id": `${name}-general` })
  expect(a.headers["x-request-id"]).toBe(`${name}-fast`)
  expect(b.headers["x-request-id"]).toBe(`${name}-general`)
  return { a, b, lineA: await lineOf(`${name}-fast`), lineB: await lineOf(`${name}-general`) }
}

const CHAT = { model: "gpt-4.1", messages: [{ role: "user", content: "hello fast path" }], max_tokens: 20 }

describe("the server's fast path", { timeout: 30_000 }, () => {
  it("a plain chat completion is answered without a fiber, as the general path answers it: status, headers, body, log line, metrics", async () => {
    const labels = [`upstream="primary"`, `model="gpt-4.1"`, `key="alpha"`, `status="200"`]
    const before = await sample(fast, "breakwater_requests_total", labels)
    const fastBefore = fast.running.fastPath().answered
    const { a, b, lineA, lineB } = await both("plain", CHAT)
    expect(fast.running.fastPath().answered).toBe(fastBefore + 1)
    expect(general.running.fastPath().answered).toBe(0)
    expect(a.status).toBe(200)
    expect(a.headers["x-breakwater-upstream"]).toBe("primary")
    expect(a.headers["content-length"]).toBe(String(Buffer.byteLength(a.body)))
    expect(comparable(a)).toEqual(comparable(b))
    expect(lineA["status"]).toBe(200)
    expect(lineA["key"]).toBe("alpha")
    expect(comparableLine(lineA)).toEqual(comparableLine(lineB))
    // One count per request, whichever path answered it.
    expect(await sample(fast, "breakwater_requests_total", labels)).toBe(before + 2)
  })

  it("per-request control headers are honoured on the fast path", async () => {
    const fastBefore = fast.running.fastPath().answered
    const { a, b, lineA, lineB } = await both("pinned", CHAT, { "x-breakwater-upstream": "secondary" })
    expect(fast.running.fastPath().answered).toBe(fastBefore + 1)
    expect(a.headers["x-breakwater-upstream"]).toBe("secondary")
    expect(comparable(a)).toEqual(comparable(b))
    expect(comparableLine(lineA)).toEqual(comparableLine(lineB))
  })

  it("a key with limits in memory is admitted on the fast path, and refused there as the general path refuses it", async () => {
    const fastBefore = fast.running.fastPath().answered
    const headers = { authorization: `Bearer ${LIMITED_KEY}` }
    for (const i of [1, 2, 3]) {
      const { a, b, lineA, lineB } = await both(`limited-${i}`, CHAT, headers)
      expect(a.status).toBe(i <= 2 ? 200 : 429)
      expect(comparable(a)).toEqual(comparable(b))
      expect(comparableLine(lineA)).toEqual(comparableLine(lineB))
      if (i === 3) {
        expect(a.headers["retry-after"]).toMatch(/^\d+$/)
        expect(lineA["key"]).toBe("limited")
      }
    }
    // The two admitted answered without a fiber; the refusal is an answer like the general path's (its reply runs as an effect).
    expect(fast.running.fastPath().answered).toBe(fastBefore + 2)
  })

  it("a failed first attempt fails over on the general path, with the same answer and line", async () => {
    const fastBefore = fast.running.fastPath().answered
    const { a, b, lineA, lineB } = await both("failover", { ...CHAT, model: "flaky-model" })
    // Handed over to a fiber: not answered by the fast path.
    expect(fast.running.fastPath().answered).toBe(fastBefore)
    expect(a.status).toBe(200)
    expect(a.headers["x-breakwater-upstream"]).toBe("secondary")
    expect(a.headers["x-breakwater-attempts"]).toBe("2")
    expect(comparable(a)).toEqual(comparable(b))
    expect(comparableLine(lineA)).toEqual(comparableLine(lineB))
  })

  it("what the fast path does not take is answered by the general path, as before", async () => {
    const fastBefore = fast.running.fastPath().answered
    const cases: ReadonlyArray<readonly [string, unknown, Record<string, string>]> = [
      ["wrong-key", CHAT, { authorization: "Bearer gw-key-WRONG" }],
      ["budget-key", CHAT, { authorization: `Bearer ${BUDGET_KEY}` }],
      ["bad-json", "{", {}],
      ["bad-schema", { model: "gpt-4.1", messages: "no" }, {}],
      ["unknown-model", { ...CHAT, model: "no-such-model" }, {}],
      ["bad-control", CHAT, { "x-breakwater-timeout": "soon" }]
    ]
    for (const [name, body, headers] of cases) {
      const { a, b, lineA, lineB } = await both(name, body, headers)
      expect(comparable(a), name).toEqual(comparable(b))
      expect(a.status, name).toBe(name === "budget-key" ? 200 : name === "unknown-model" ? 404 : name === "wrong-key" ? 401 : 400)
      expect(comparableLine(lineA), name).toEqual(comparableLine(lineB))
    }
    const stream = await post(fast, { ...CHAT, stream: true })
    expect(stream.status).toBe(200)
    expect(stream.headers["content-type"]).toBe("text/event-stream")
    expect(stream.body).toContain("data: [DONE]")
    expect(fast.running.fastPath().answered).toBe(fastBefore)
  })

  it("a caller that hangs up mid-request: the call is aborted, its slot and socket released, the line says 499", async () => {
    const hangUp = (server: TestServer, requestId: string) =>
      new Promise<void>((resolve) => {
        const body = JSON.stringify({ ...CHAT, model: "slow-model" })
        const req = http.request({
          host: "127.0.0.1",
          port: server.port,
          method: "POST",
          path: "/v1/chat/completions",
          agent: false,
          headers: {
            "content-type": "application/json",
            "content-length": Buffer.byteLength(body),
            authorization: `Bearer ${GATEWAY_KEY}`,
            "x-request-id": requestId
          }
        })
        req.on("error", () => resolve())
        req.on("close", () => resolve())
        req.end(body)
        setTimeout(() => req.destroy(), 200)
      })
    const served = slowFake.counters().requests
    const hungUp = fast.running.fastPath().hungUp
    await hangUp(fast, "hangup-fast")
    await hangUp(general, "hangup-general")
    const lineA = await lineOf("hangup-fast")
    const lineB = await lineOf("hangup-general")
    expect(fast.running.fastPath().hungUp).toBe(hungUp + 1)
    expect(general.running.fastPath().hungUp).toBe(0)
    expect(lineA["status"]).toBe(499)
    expect(lineA["key"]).toBe("alpha")
    expect(lineA["model"]).toBe("slow-model")
    expect(comparableLine(lineA)).toEqual(comparableLine(lineB))
    expect(slowFake.counters().requests).toBe(served + 2)
    // Both upstream calls were aborted, long before the fake's 1.5 s answer.
    const t0 = Date.now()
    while (slowFake.counters().inFlight > 0 && Date.now() - t0 < 1_000) await new Promise((r) => setTimeout(r, 10))
    expect(slowFake.counters().inFlight).toBe(0)
    expect(Date.now() - t0).toBeLessThan(1_000)
    // Nothing left in flight, the upstream's one slot free again: the next call is served at once.
    for (let i = 0; i < 50 && fast.running.inFlight() > 0; i++) await new Promise((r) => setTimeout(r, 20))
    expect(fast.running.inFlight()).toBe(0)
    const res = await fetch(`${fast.url}/admin/upstreams`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
    const slow = (JSON.parse(await res.text()) as { data: Array<{ name: string; inFlight: number }> }).data.find((u) => u.name === "slow")
    expect(slow?.inFlight).toBe(0)
    const fastBefore = fast.running.fastPath().answered
    const next = await post(fast, { ...CHAT, model: "slow-model" })
    expect(next.status).toBe(200)
    expect(fast.running.fastPath().answered).toBe(fastBefore + 1)
  })
})

describe("a caller that hangs up before its body is in", { timeout: 30_000 }, () => {
  it("is logged as 499 with its key, as the general path logs it, and nothing is left in flight", async () => {
    const partial = (server: TestServer, requestId: string) =>
      new Promise<void>((resolve) => {
        const req = http.request({
          host: "127.0.0.1",
          port: server.port,
          method: "POST",
          path: "/v1/chat/completions",
          agent: false,
          headers: {
            "content-type": "application/json",
            "content-length": 1_000,
            authorization: `Bearer ${GATEWAY_KEY}`,
            "x-request-id": requestId
          }
        })
        req.on("error", () => resolve())
        req.on("close", () => resolve())
        req.write(`{"model":"gpt-4.1","messages":[`)
        setTimeout(() => req.destroy(), 150)
      })
    await partial(fast, "partial-fast")
    await partial(general, "partial-general")
    const lineA = await lineOf("partial-fast")
    const lineB = await lineOf("partial-general")
    expect(lineA["status"]).toBe(499)
    expect(lineA["key"]).toBe("alpha")
    expect(comparableLine(lineA)).toEqual(comparableLine(lineB))
    for (let i = 0; i < 50 && fast.running.inFlight() > 0; i++) await new Promise((r) => setTimeout(r, 20))
    expect(fast.running.inFlight()).toBe(0)
  })
})

describe("the console's view of the cooldown store", () => {
  it("keeps the store's synchronous read, without which the relay never takes its hot path", () => {
    const store = Effect.runSync(Effect.provide(Cooldown.CooldownStore, Cooldown.layerStoreMemory))
    expect(store.unsafeActive).toBeTypeOf("function")
    const feed = Events.make(() => {
      throw new Error("no source needed")
    })
    try {
      const observed = feed.observe(store)
      expect(observed.unsafeActive).toBeTypeOf("function")
      Effect.runSync(observed.start("u", { until: Date.now() + 60_000, reason: "rate-limited" }))
      expect([...observed.unsafeActive!(Date.now()).keys()]).toEqual(["u"])
    } finally {
      feed.close()
    }
  })
})
