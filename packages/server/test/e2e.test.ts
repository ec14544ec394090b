/**
 * End-to-end: the real server (`Server.serve`) on 127.0.0.1, fake upstreams
 * over real HTTP, and the official `openai` SDK as the client. Every response
 * (SDK or fetch) and every log line of the servers is captured; the last test
 * checks that no secret leaked into any of them.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import OpenAI, {
  APIError,
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  RateLimitError
} from "openai"
import { beforeAll, describe, expect, it } from "vitest"
import { everything, openAIError, recordingFetch, testBed, type TestServer } from "./helpers/e2e.js"

// ---------------------------------------------------------------------------
// secrets and clients

const UPSTREAM_KEYS = ["sk-upstream-SECRET-123", "sk-upstream-SECRET-456"] as const
const ADMIN_KEY = "admin-key-SECRET-999"
const GATEWAY_KEYS = {
  alpha: "gw-key-ALPHA-SECRET-111",
  bravo: "gw-key-BRAVO-SECRET-222",
  charlie: "gw-key-CHARLIE-SECRET-333",
  delta: "gw-key-DELTA-SECRET-444"
} as const

const KEYS_YAML = `
keys:
  - { name: alpha, key: "${GATEWAY_KEYS.alpha}" }
  - { name: bravo, key: "${GATEWAY_KEYS.bravo}", requestsPerMinute: 2 }
  - { name: delta, key: "${GATEWAY_KEYS.delta}", requestsPerMinute: 2 }
  - { name: charlie, key: "${GATEWAY_KEYS.charlie}", budgetUsd: 0.0003 }
`

const sdk = (server: TestServer, apiKey: string = GATEWAY_KEYS.alpha) =>
  new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0, timeout: 10_000, fetch: recordingFetch })

const bearer = (key: string) => ({ authorization: `Bearer ${key}` })

/** Runs `f`, expecting it to throw; returns what it threw. */
const thrown = async (f: () => Promise<unknown>): Promise<unknown> => {
  try {
    await f()
  } catch (e) {
    return e
  }
  throw new Error("expected a failure, got a success")
}

/** The SDK error's `error` object must be exactly OpenAI's shape. */
const shapeOf = (e: unknown) => {
  if (!(e instanceof APIError)) throw new Error(`expected an APIError, got ${String(e)}`)
  return openAIError(JSON.stringify({ error: e.error }))
}

const chatOf = (content: string, model = "gpt-4.1") => ({ model, messages: [{ role: "user" as const, content }] })

// ---------------------------------------------------------------------------
// servers

const { fake, serve } = testBed()

/** Two upstreams, a (priority 1) and b (priority 2), serving gpt-4.1. */
const pairYaml = (a: FakeUpstream.FakeUpstream, b: FakeUpstream.FakeUpstream, extra = "") => `
server: { adminKey: "${ADMIN_KEY}" }
${KEYS_YAML}
upstreams:
  - { name: ${a.name}, baseUrl: "${a.url}", apiKey: "${UPSTREAM_KEYS[0]}", models: [gpt-4.1], priority: 1, timeout: 5s }
  - { name: ${b.name}, baseUrl: "${b.url}", apiKey: "${UPSTREAM_KEYS[1]}", models: [gpt-4.1], priority: 2, timeout: 5s }
retry: { maxRetries: 0 }
${extra}
`

// ---------------------------------------------------------------------------
// the main server: two healthy upstreams, four keys, small body limit

describe("main server", () => {
  let primary: FakeUpstream.FakeUpstream
  let secondary: FakeUpstream.FakeUpstream
  let server: TestServer

  beforeAll(async () => {
    primary = await fake("primary")
    secondary = await fake("secondary")
    server = await serve(`
server: { adminKey: "${ADMIN_KEY}", maxBodyBytes: 2000 }
${KEYS_YAML}
upstreams:
  - name: primary
    baseUrl: "${primary.url}"
    apiKey: "${UPSTREAM_KEYS[0]}"
    models: [gpt-4.1, text-embedding-3-small]
    aliases: { gpt-4: gpt-4.1 }
    priority: 1
  - name: secondary
    baseUrl: "${secondary.url}"
    apiKey: "${UPSTREAM_KEYS[1]}"
    models: [gpt-4.1, text-embedding-3-small]
    priority: 2
routing: { strategy: priority, maxAttempts: 3 }
retry: { maxRetries: 0 }
pricing: { gpt-4.1: { input: 2.00, output: 8.00 } }
`)
  })

  describe("through the OpenAI SDK", () => {
    it("chat completion: the fake's content, x-breakwater-* headers, cache miss then hit", async () => {
      const client = sdk(server)
      // Deterministic, so cacheable under the default cache.mode.
      const request = { ...chatOf("cache me"), temperature: 0 }
      const first = await client.chat.completions.create(request).withResponse()
      expect(first.data.choices[0]?.message.content).toBe("Hello from primary")
      const h1 = first.response.headers
      expect(h1.get("x-breakwater-upstream")).toBe("primary")
      expect(h1.get("x-breakwater-attempts")).toBe("1")
      expect(h1.get("x-breakwater-cache")).toBe("miss")
      expect(Number(h1.get("x-breakwater-latency-ms"))).toBeGreaterThanOrEqual(0)
      expect(h1.get("x-breakwater-latency-ms")).toMatch(/^\d+(\.\d+)?$/)
      // gpt-4.1 at $2 / $8 per million: "cache me" is 2 prompt tokens, "Hello from primary" 5 completion tokens.
      expect(h1.get("x-breakwater-cost-usd")).toBe(((2 * 2 + 5 * 8) / 1e6).toFixed(8))
      expect(h1.get("x-request-id")).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
      // The upstream got its own key, never the gateway key.
      expect(primary.counters().lastAuthorization).toBe(`Bearer ${UPSTREAM_KEYS[0]}`)
      const calls = primary.counters().chat

      const second = await client.chat.completions
        .create(request, { headers: { "x-request-id": "e2e-trace-42" } })
        .withResponse()
      expect(second.data.choices[0]?.message.content).toBe("Hello from primary")
      const h2 = second.response.headers
      expect(h2.get("x-breakwater-cache")).toBe("hit")
      expect(h2.get("x-breakwater-upstream")).toBe("primary")
      expect(h2.get("x-breakwater-attempts")).toBe("0")
      expect(h2.get("x-breakwater-cost-usd")).toBe("0.00000000")
      expect(h2.get("x-request-id")).toBe("e2e-trace-42")
      expect(primary.counters().chat).toBe(calls)
    })

    it("streaming: chunks reassemble the fake's reply; include_usage yields the usage chunk", async () => {
      const client = sdk(server)
      const { data: stream, response } = await client.chat.completions
        .create({ ...chatOf("stream to me"), stream: true, stream_options: { include_usage: true } })
        .withResponse()
      expect(response.headers.get("content-type")).toContain("text/event-stream")
      expect(response.headers.get("x-breakwater-upstream")).toBe("primary")
      let text = ""
      const usages: Array<OpenAI.CompletionUsage> = []
      let chunks = 0
      for await (const chunk of stream) {
        chunks++
        text += chunk.choices[0]?.delta.content ?? ""
        if (chunk.usage) usages.push(chunk.usage)
      }
      expect(text).toBe("Hello from primary")
      expect(chunks).toBeGreaterThan(3)
      expect(usages).toHaveLength(1)
      expect(usages[0]).toMatchObject({ prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 })

      // Without include_usage there is no usage chunk.
      const plain = await client.chat.completions.create({ ...chatOf("stream again"), stream: true })
      let withUsage = 0
      let again = ""
      for await (const chunk of plain) {
        again += chunk.choices[0]?.delta.content ?? ""
        if (chunk.usage) withUsage++
      }
      expect(again).toBe("Hello from primary")
      expect(withUsage).toBe(0)
    })

    it("embeddings", async () => {
      const { data, response } = await sdk(server).embeddings
        .create({ model: "text-embedding-3-small", input: ["first", "second"], encoding_format: "float" })
        .withResponse()
      expect(data.data).toHaveLength(2)
      expect(data.data.map((d) => d.index)).toEqual([0, 1])
      expect(data.data[0]?.embedding).toHaveLength(8)
      expect(data.data[0]?.embedding).not.toEqual(data.data[1]?.embedding)
      expect(response.headers.get("x-breakwater-upstream")).toBe("primary")
      expect(response.headers.get("x-breakwater-attempts")).toBe("1")
    })

    it("models: the configured models and aliases", async () => {
      const page = await sdk(server).models.list()
      expect(page.data.map((m) => m.id).sort()).toEqual(["gpt-4", "gpt-4.1", "text-embedding-3-small"])
      expect(page.data[0]).toMatchObject({ object: "model" })
    })
  })

  describe("errors, with OpenAI's shape and the SDK's classes", () => {
    const post = (path: string, body: string, headers: Record<string, string> = bearer(GATEWAY_KEYS.alpha)) =>
      recordingFetch(`${server.url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body
      })

    it("malformed JSON -> 400", async () => {
      const res = await post("/v1/chat/completions", `{"model": "gpt-4.1", "messages": [`)
      expect(res.status).toBe(400)
      expect(res.headers.get("content-type")).toContain("application/json")
      const e = openAIError(await res.text())
      expect(e.type).toBe("invalid_request_error")
      expect(e.message).toMatch(/parse the JSON/)
    })

    it("empty body -> 400", async () => {
      const res = await post("/v1/chat/completions", "")
      expect(res.status).toBe(400)
      const e = openAIError(await res.text())
      expect(e.type).toBe("invalid_request_error")
      expect(e.message).toMatch(/empty/)
    })

    it("schema-invalid (temperature 5) -> 400 BadRequestError naming the field; the upstream is not called", async () => {
      const before = primary.counters().chat + secondary.counters().chat
      const e = await thrown(() => sdk(server).chat.completions.create({ ...chatOf("too hot"), temperature: 5 }))
      expect(e).toBeInstanceOf(BadRequestError)
      const err = e as BadRequestError
      expect(err.status).toBe(400)
      expect(err.param).toBe("temperature")
      expect(shapeOf(e)).toMatchObject({ type: "invalid_request_error", param: "temperature" })
      expect(primary.counters().chat + secondary.counters().chat).toBe(before)

      const noMessages = await thrown(() => sdk(server).chat.completions.create({ model: "gpt-4.1", messages: [] }))
      expect(noMessages).toBeInstanceOf(BadRequestError)
      expect((noMessages as BadRequestError).param).toBe("messages")
    })

    it("body over server.maxBodyBytes -> 413", async () => {
      const before = primary.counters().chat
      const res = await post("/v1/chat/completions", JSON.stringify(chatOf("x".repeat(5000))))
      expect(res.status).toBe(413)
      const e = openAIError(await res.text())
      expect(e.code).toBe("request_too_large")
      expect(e.message).toContain("2000")
      expect(primary.counters().chat).toBe(before)
      // Just under the limit is fine.
      const ok = await post("/v1/chat/completions", JSON.stringify(chatOf("y".repeat(1500))))
      expect(ok.status).toBe(200)
    })

    it("unknown model -> 404 NotFoundError, code model_not_found", async () => {
      const e = await thrown(() => sdk(server).chat.completions.create(chatOf("hi", "gpt-nonexistent")))
      expect(e).toBeInstanceOf(NotFoundError)
      expect((e as NotFoundError).code).toBe("model_not_found")
      expect(shapeOf(e)).toMatchObject({ code: "model_not_found", param: "model" })
    })

    it("missing key and wrong key -> 401 AuthenticationError", async () => {
      const missing = await thrown(() =>
        sdk(server).chat.completions.create(chatOf("who am I"), { headers: { Authorization: null } })
      )
      expect(missing).toBeInstanceOf(AuthenticationError)
      expect(shapeOf(missing)).toMatchObject({ code: "invalid_api_key" })
      expect((missing as AuthenticationError).message).toMatch(/didn't provide an API key/)

      const wrong = await thrown(() => sdk(server, "gw-key-WRONG-000").chat.completions.create(chatOf("who am I")))
      expect(wrong).toBeInstanceOf(AuthenticationError)
      expect(shapeOf(wrong)).toMatchObject({ code: "invalid_api_key", message: "Incorrect API key provided." })

      // The other routes under /v1 check the key too.
      expect(await thrown(() => sdk(server, "gw-key-WRONG-000").models.list())).toBeInstanceOf(AuthenticationError)
      expect(
        await thrown(() =>
          sdk(server, "gw-key-WRONG-000").embeddings.create({ model: "text-embedding-3-small", input: "x", encoding_format: "float" })
        )
      ).toBeInstanceOf(AuthenticationError)
    })

    it("key over its requestsPerMinute -> 429 RateLimitError with retry-after; other keys are not limited", async () => {
      const bravo = sdk(server, GATEWAY_KEYS.bravo)
      await bravo.chat.completions.create(chatOf("bravo 1"))
      await bravo.chat.completions.create(chatOf("bravo 2"))
      const e = await thrown(() => bravo.chat.completions.create(chatOf("bravo 3")))
      expect(e).toBeInstanceOf(RateLimitError)
      const err = e as RateLimitError
      expect(err.status).toBe(429)
      expect(shapeOf(e)).toMatchObject({ code: "rate_limit_exceeded" })
      const retryAfter = Number(err.headers.get("retry-after"))
      expect(retryAfter).toBeGreaterThanOrEqual(1)
      expect(retryAfter).toBeLessThanOrEqual(60)

      // delta has the same limit, in its own bucket; alpha has none.
      const delta = sdk(server, GATEWAY_KEYS.delta)
      const d1 = await delta.chat.completions.create(chatOf("delta 1")).withResponse()
      const d2 = await delta.chat.completions.create(chatOf("delta 2")).withResponse()
      expect([d1.response.status, d2.response.status]).toEqual([200, 200])
      expect((await sdk(server).chat.completions.create(chatOf("alpha while bravo is limited"))).choices).toHaveLength(1)
      // ... and bravo stays limited.
      expect(await thrown(() => bravo.chat.completions.create(chatOf("bravo 4")))).toBeInstanceOf(RateLimitError)
      expect(await thrown(() => delta.chat.completions.create(chatOf("delta 3")))).toBeInstanceOf(RateLimitError)
    })

    it("budget spent -> 429 with code budget_exceeded", async () => {
      const charlie = sdk(server, GATEWAY_KEYS.charlie)
      let successes = 0
      let refusal: unknown
      // Each request reserves its estimate first (2 prompt tokens + max_tokens 16 at $2/$8 per
      // million: $0.000132) and costs $0.000044: the fifth no longer fits in $0.0003.
      for (let i = 0; i < 6 && refusal === undefined; i++) {
        try {
          await charlie.chat.completions.create({ ...chatOf(`spend ${i}`), max_tokens: 16 })
          successes++
        } catch (e) {
          refusal = e
        }
      }
      expect(successes).toBeGreaterThanOrEqual(1)
      expect(refusal).toBeInstanceOf(RateLimitError)
      expect(shapeOf(refusal)).toMatchObject({ code: "budget_exceeded", type: "insufficient_quota" })
      // The budget holds for cached answers too.
      expect(await thrown(() => charlie.chat.completions.create({ ...chatOf("spend 0"), max_tokens: 16 }))).toBeInstanceOf(
        RateLimitError
      )
    })

    it("wrong method -> 405 with Allow; unknown path -> 404", async () => {
      const get = await recordingFetch(`${server.url}/v1/chat/completions`, { headers: bearer(GATEWAY_KEYS.alpha) })
      expect(get.status).toBe(405)
      expect(get.headers.get("allow")).toBe("POST")
      expect(openAIError(await get.text()).code).toBe("method_not_allowed")

      const postModels = await post("/v1/models", "{}")
      expect(postModels.status).toBe(405)
      expect(openAIError(await postModels.text()).code).toBe("method_not_allowed")

      for (const path of ["/v1/nope", "/nothing-here"]) {
        const res = await recordingFetch(`${server.url}${path}`, { headers: bearer(GATEWAY_KEYS.alpha) })
        expect(res.status).toBe(404)
        const e = openAIError(await res.text())
        expect(e.code).toBe("unknown_url")
        expect(e.message).toContain(path)
      }
      // The SDK sees NotFoundError for an unknown path too.
      const e = await thrown(() => sdk(server).get("/nope"))
      expect(e).toBeInstanceOf(NotFoundError)
    })
  })

  describe("probes and metrics", () => {
    it("/healthz 200 and /readyz 200", async () => {
      const health = await recordingFetch(`${server.url}/healthz`)
      expect(health.status).toBe(200)
      expect(await health.json()).toEqual({ status: "ok" })
      const ready = await recordingFetch(`${server.url}/readyz`)
      expect(ready.status).toBe(200)
      expect(await ready.json()).toEqual({ status: "ready" })
    })

    it("/metrics: Prometheus text with the gateway's series", async () => {
      const res = await recordingFetch(`${server.url}/metrics`)
      expect(res.status).toBe(200)
      expect(res.headers.get("content-type")).toContain("text/plain")
      const text = await res.text()
      const requestLines = text.split("\n").filter((l) => l.startsWith("breakwater_requests_total{"))
      expect(requestLines.length).toBeGreaterThan(0)
      for (const l of requestLines) {
        for (const label of ["upstream", "model", "key", "status"]) expect(l).toMatch(new RegExp(`[{,]${label}="`))
      }
      const has = (labels: ReadonlyArray<string>) => requestLines.some((l) => labels.every((x) => l.includes(x)))
      expect(has([`upstream="primary"`, `model="gpt-4.1"`, `key="alpha"`, `status="200"`])).toBe(true)
      expect(has([`upstream="none"`, `key="bravo"`, `status="429"`])).toBe(true)
      expect(has([`upstream="none"`, `key="anonymous"`, `status="401"`])).toBe(true)
      expect(has([`model="unknown"`, `status="404"`])).toBe(true)
      expect(text).toMatch(/^breakwater_breaker_state\{[^}]*breaker="primary"[^}]*\} 0$/m)
      expect(text).toMatch(/^breakwater_cache_lookups_total\{[^}]*\} \d+/m)
      expect(text).toMatch(/^breakwater_cost_usd_total\{[^}]*upstream="primary"[^}]*\} [0-9.e-]+$/m)
      const buckets = text.split("\n").filter((l) => l.startsWith("breakwater_upstream_latency_ms_bucket{"))
      expect(buckets.some((l) => l.includes(`upstream="primary"`) && /[{,]le="\+Inf"[,}] [1-9]\d*$/.test(l))).toBe(true)
      expect(text).toContain("# TYPE breakwater_requests_total counter")
    })
  })
})

// ---------------------------------------------------------------------------
// upstream failures

describe("upstream failures", () => {
  it("failover: primary answers 503 -> 200 from the secondary with x-breakwater-attempts: 2", async () => {
    const a = await fake("fo-primary", { status: 503 })
    const b = await fake("fo-secondary")
    const server = await serve(pairYaml(a, b))
    const { data, response } = await sdk(server).chat.completions.create(chatOf("fail over")).withResponse()
    expect(data.choices[0]?.message.content).toBe("Hello from fo-secondary")
    expect(response.headers.get("x-breakwater-upstream")).toBe("fo-secondary")
    expect(response.headers.get("x-breakwater-attempts")).toBe("2")
    expect(a.counters().byStatus[503]).toBe(1)
    expect(b.counters().chat).toBe(1)
  })

  it("all upstreams failing (500) -> 502 listing each upstream's failure", async () => {
    const a = await fake("bad-a", { status: 500 })
    const b = await fake("bad-b", { status: 500 })
    const server = await serve(pairYaml(a, b))
    const e = await thrown(() => sdk(server).chat.completions.create(chatOf("doomed")))
    expect(e).toBeInstanceOf(InternalServerError)
    expect((e as InternalServerError).status).toBe(502)
    const shape = shapeOf(e)
    expect(shape).toMatchObject({ type: "upstream_error", code: "upstream_failed" })
    expect(shape.message).toContain("bad-a: server error (500)")
    expect(shape.message).toContain("bad-b: server error (500)")
    expect(a.counters().chat).toBe(1)
    expect(b.counters().chat).toBe(1)
  })

  it("none available (both cooling down after a 429 with retry-after 60) -> 503 with retry-after", async () => {
    const a = await fake("cool-a", { status: 429, retryAfter: "60" })
    const b = await fake("cool-b", { status: 429, retryAfter: "60" })
    const server = await serve(pairYaml(a, b))
    const client = sdk(server)
    const first = await thrown(() => client.chat.completions.create(chatOf("rate limited")))
    expect(first).toBeInstanceOf(APIError)
    expect(a.counters().chat + b.counters().chat).toBe(2)

    const started = Date.now()
    const e = await thrown(() => client.chat.completions.create(chatOf("rate limited again")))
    expect(Date.now() - started).toBeLessThan(2000)
    expect(e).toBeInstanceOf(InternalServerError)
    const err = e as InternalServerError
    expect(err.status).toBe(503)
    expect(shapeOf(e)).toMatchObject({ type: "upstream_error", code: "no_upstream_available" })
    const retryAfter = Number(err.headers.get("retry-after"))
    expect(retryAfter).toBeGreaterThanOrEqual(55)
    expect(retryAfter).toBeLessThanOrEqual(60)
    // No upstream was called for the second request.
    expect(a.counters().chat + b.counters().chat).toBe(2)
  })

  it("deadline: hanging upstreams, routing.requestTimeout 500ms -> 504", async () => {
    const a = await fake("hang-a", { hang: 1 })
    const b = await fake("hang-b", { hang: 1 })
    const server = await serve(pairYaml(a, b, "routing: { requestTimeout: 500ms }"))
    const started = Date.now()
    const e = await thrown(() => sdk(server).chat.completions.create(chatOf("anyone there?")))
    const elapsed = Date.now() - started
    expect(e).toBeInstanceOf(InternalServerError)
    expect((e as InternalServerError).status).toBe(504)
    expect(shapeOf(e)).toMatchObject({ type: "upstream_error", code: "timeout" })
    expect(elapsed).toBeGreaterThanOrEqual(450)
    expect(elapsed).toBeLessThan(2500)
  })

  it("an upstream 400 is relayed unchanged -> BadRequestError with the fake's message, no failover", async () => {
    const a = await fake("rej-a", { status: 400 })
    const b = await fake("rej-b")
    const server = await serve(pairYaml(a, b))
    const e = await thrown(() => sdk(server).chat.completions.create(chatOf("rejected")))
    expect(e).toBeInstanceOf(BadRequestError)
    expect(shapeOf(e)).toEqual({
      message: "Bad request (injected by the fake upstream).",
      type: "invalid_request_error",
      param: null,
      code: null
    })
    expect(b.counters().chat).toBe(0)
  })

  it("models: an upstream serving \"*\" adds what its /models probe reports, not \"*\"", async () => {
    const a = await fake("list-a")
    const b = await fake("list-b")
    const server = await serve(`
${KEYS_YAML}
upstreams:
  - { name: list-a, baseUrl: "${a.url}", apiKey: "${UPSTREAM_KEYS[0]}", models: [gpt-4.1, deepseek-v3.2] }
  - { name: list-b, baseUrl: "${b.url}", apiKey: "${UPSTREAM_KEYS[1]}", models: "*" }
`)
    const ids = async () => (await sdk(server).models.list()).data.map((m) => m.id)
    // The probes at start-up report list-b's "fake-model"; poll briefly for it.
    for (let i = 0; i < 100 && !(await ids()).includes("fake-model"); i++) await new Promise((r) => setTimeout(r, 20))
    expect(await ids()).toEqual(["gpt-4.1", "deepseek-v3.2", "fake-model"])
    // "*" still serves any model.
    const any = await sdk(server).chat.completions.create(chatOf("any model", "some-other-model")).withResponse()
    expect(any.response.headers.get("x-breakwater-upstream")).toBe("list-b")
  })
})

// ---------------------------------------------------------------------------
// admin and readiness

describe("admin API and readiness", () => {
  let a: FakeUpstream.FakeUpstream
  let b: FakeUpstream.FakeUpstream
  let server: TestServer

  beforeAll(async () => {
    a = await fake("ops-a")
    b = await fake("ops-b")
    server = await serve(pairYaml(a, b, "cache: { enabled: false }"))
  })

  /** `key: null` sends no Authorization header. */
  const admin = async (method: "GET" | "POST", path: string, key: string | null = ADMIN_KEY) => {
    const res = await recordingFetch(`${server.url}${path}`, {
      method,
      headers: key === null ? {} : bearer(key)
    })
    return { status: res.status, headers: res.headers, text: await res.text() }
  }

  interface View {
    name: string
    health: string
    breaker: string
    cooldownUntil: string | null
    inFlight: number
    latencyMs: number | null
    requests: number
    successes: number
    failures: number
  }

  const list = async (): Promise<Array<View>> => {
    const res = await admin("GET", "/admin/upstreams")
    expect(res.status).toBe(200)
    const body = JSON.parse(res.text) as { object: string; data: Array<View> }
    expect(body.object).toBe("list")
    return body.data
  }
  const viewOf = async (name: string): Promise<View> => {
    const v = (await list()).find((u) => u.name === name)
    if (v === undefined) throw new Error(`no upstream ${name} in the admin list`)
    return v
  }
  const upstreamOf = async (content: string) => {
    const { response } = await sdk(server).chat.completions.create(chatOf(content)).withResponse()
    return response.headers.get("x-breakwater-upstream")
  }

  it("GET /admin/upstreams: 401 without the admin key, with a wrong key, with a gateway key", async () => {
    for (const key of [null, "admin-key-WRONG", GATEWAY_KEYS.alpha]) {
      const res = await admin("GET", "/admin/upstreams", key)
      expect(res.status).toBe(401)
      expect(openAIError(res.text).code).toBe("invalid_api_key")
    }
  })

  it("GET /admin/upstreams: each upstream's name, health, breaker, cooldown, in-flight, latency and counters", async () => {
    expect(await upstreamOf("warm up")).toBe("ops-a")
    const views = await list()
    expect(views.map((v) => v.name)).toEqual(["ops-a", "ops-b"])
    const va = views[0]!
    expect(va).toMatchObject({
      name: "ops-a",
      health: "healthy",
      breaker: "Closed",
      cooldownUntil: null,
      inFlight: 0,
      requests: 1,
      successes: 1,
      failures: 0
    })
    expect(typeof va.latencyMs).toBe("number")
    expect(views[1]).toMatchObject({ name: "ops-b", breaker: "Closed", requests: 0, latencyMs: null })
  })

  it("POST /admin/upstreams/NAME/open forces it open; /reset restores it", async () => {
    const opened = await admin("POST", "/admin/upstreams/ops-a/open")
    expect(opened.status).toBe(200)
    expect(JSON.parse(opened.text)).toMatchObject({ name: "ops-a", breaker: "ForcedOpen" })
    expect((await viewOf("ops-a")).breaker).toBe("ForcedOpen")
    const before = a.counters().chat
    expect(await upstreamOf("while a is forced open")).toBe("ops-b")
    expect(a.counters().chat).toBe(before)

    const reset = await admin("POST", "/admin/upstreams/ops-a/reset")
    expect(reset.status).toBe(200)
    expect(JSON.parse(reset.text)).toMatchObject({ name: "ops-a", breaker: "Closed" })
    expect(await upstreamOf("after reset")).toBe("ops-a")
  })

  it("/reset clears a cooldown", async () => {
    a.setFaults({ status: 429, retryAfter: "60" })
    const { response } = await sdk(server).chat.completions.create(chatOf("a will 429")).withResponse()
    expect(response.headers.get("x-breakwater-upstream")).toBe("ops-b")
    expect(response.headers.get("x-breakwater-attempts")).toBe("2")
    a.setFaults({})
    const cooling = await viewOf("ops-a")
    expect(cooling.cooldownUntil).not.toBeNull()
    const until = Date.parse(cooling.cooldownUntil!)
    expect(until - Date.now()).toBeGreaterThan(50_000)
    expect(until - Date.now()).toBeLessThanOrEqual(60_000)
    expect(cooling.health).toBe("cooling-down")
    // Still cooling down: a is not called even though it is fine again.
    const before = a.counters().chat
    expect(await upstreamOf("a is cooling down")).toBe("ops-b")
    expect(a.counters().chat).toBe(before)

    const reset = await admin("POST", "/admin/upstreams/ops-a/reset")
    expect(reset.status).toBe(200)
    expect(JSON.parse(reset.text)).toMatchObject({ name: "ops-a", cooldownUntil: null })
    expect((await viewOf("ops-a")).cooldownUntil).toBeNull()
    expect(await upstreamOf("a is back")).toBe("ops-a")
  })

  it("/reset also ends the pacer's hold after a 429 while a call of that upstream still hangs", async () => {
    // A call to a hangs (until a's 5 s timeout, then b answers it).
    a.setFaults({ hang: 1 })
    const chatBefore = a.counters().chat
    const hung = sdk(server).chat.completions.create(chatOf("a hangs")).withResponse()
    for (let i = 0; i < 200 && a.counters().chat === chatBefore; i++) await new Promise((r) => setTimeout(r, 5))
    expect(a.counters().chat).toBe(chatBefore + 1)
    // The next gets a 429 with Retry-After 60: a cools down, and its pacer holds while the hung call is out.
    a.setFaults({ status: 429, retryAfter: "60" })
    expect(await upstreamOf("a will 429")).toBe("ops-b")
    a.setFaults({})
    expect((await admin("POST", "/admin/upstreams/ops-a/reset")).status).toBe(200)
    // Reset: a is called at once, not held behind the hung call for the rest of the 60 s.
    expect(await upstreamOf("a is back despite the hung call")).toBe("ops-a")
    const { response } = await hung
    expect(response.headers.get("x-breakwater-upstream")).toBe("ops-b")
  }, 20_000)

  it("unknown upstream name -> 404; wrong method -> 405; unknown admin path -> 404", async () => {
    for (const action of ["open", "reset"]) {
      const res = await admin("POST", `/admin/upstreams/nope/${action}`)
      expect(res.status).toBe(404)
      expect(openAIError(res.text).code).toBe("upstream_not_found")
    }
    const get = await admin("GET", "/admin/upstreams/ops-a/open")
    expect(get.status).toBe(405)
    expect((await admin("GET", "/admin/nothing")).status).toBe(404)
    // Unauthenticated callers learn nothing about names.
    expect((await admin("POST", "/admin/upstreams/nope/open", null)).status).toBe(401)
  })

  it("/readyz says the replica can take traffic: still 200 when every upstream is forced open (a provider outage must not empty the load balancer); requests get 503", async () => {
    expect((await recordingFetch(`${server.url}/readyz`)).status).toBe(200)
    expect((await admin("POST", "/admin/upstreams/ops-a/open")).status).toBe(200)
    expect((await recordingFetch(`${server.url}/readyz`)).status).toBe(200)
    expect((await admin("POST", "/admin/upstreams/ops-b/open")).status).toBe(200)
    const ready = await recordingFetch(`${server.url}/readyz`)
    expect(ready.status).toBe(200)
    expect(await ready.json()).toEqual({ status: "ready" })
    expect((await recordingFetch(`${server.url}/healthz`)).status).toBe(200)
    // Upstream health is where it belongs: the admin view and the metrics.
    const view = JSON.parse((await admin("GET", "/admin/upstreams")).text) as { data: Array<{ name: string; health: string }> }
    expect(view.data.map((u) => u.health)).toEqual(["open", "open"])
    // And a request gets 503 with no upstream called.
    const calls = a.counters().chat + b.counters().chat
    const e = await thrown(() => sdk(server).chat.completions.create(chatOf("all forced open")))
    expect((e as APIError).status).toBe(503)
    expect(a.counters().chat + b.counters().chat).toBe(calls)

    expect((await admin("POST", "/admin/upstreams/ops-b/reset")).status).toBe(200)
    expect((await recordingFetch(`${server.url}/readyz`)).status).toBe(200)
    expect((await admin("POST", "/admin/upstreams/ops-a/reset")).status).toBe(200)
  })

  it("/metrics shows the forced-open breaker state", async () => {
    expect((await admin("POST", "/admin/upstreams/ops-b/open")).status).toBe(200)
    const text = await (await recordingFetch(`${server.url}/metrics`)).text()
    expect(text).toMatch(/^breakwater_breaker_state\{[^}]*breaker="ops-b"[^}]*\} 3$/m)
    expect((await admin("POST", "/admin/upstreams/ops-b/reset")).status).toBe(200)
  })
})

// ---------------------------------------------------------------------------
// secrets: must run last (it reads what every test above captured)

describe("secret redaction", () => {
  it("no upstream key anywhere; no gateway or admin key in any response, metric or log line", async () => {
    const { logs, responses } = await everything()
    // Something was captured: the checks below are not vacuous.
    expect(responses.length).toBeGreaterThan(10_000)
    expect(responses).toContain("breakwater_requests_total")
    expect(responses).toContain("upstream_failed")
    expect(logs).toContain("\"requestId\":\"e2e-trace-42\"")
    expect(logs).toContain("\"status\":401")
    expect(logs).toContain("\"key\":\"alpha\"")
    for (const secret of [...UPSTREAM_KEYS, ...Object.values(GATEWAY_KEYS), ADMIN_KEY, "gw-key-WRONG-000", "admin-key-WRONG"]) {
      expect(responses).not.toContain(secret)
      expect(logs).not.toContain(secret)
      // Nor a recognisable part of it.
      const tail = secret.slice(-10)
      expect(responses).not.toContain(tail)
      expect(logs).not.toContain(tail)
    }
  })
})
