import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as http from "node:http"
import type { Faults, FakeUpstream, Options } from "../src/testing/FakeUpstream.js"
import * as Fake from "../src/testing/FakeUpstream.js"

// Integration tests with real HTTP on 127.0.0.1: real (short) time is fine here.

const opened: Array<FakeUpstream> = []

afterEach(async () => {
  await Promise.all(opened.splice(0).map((u) => u.close()))
})

const fake = async (options?: Options): Promise<FakeUpstream> => {
  const u = await Fake.start(options)
  opened.push(u)
  return u
}

const KEY = "Bearer sk-upstream-key"

const post = (u: FakeUpstream, path: string, body: unknown, init: RequestInit = {}) =>
  fetch(`${u.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: KEY },
    body: typeof body === "string" ? body : JSON.stringify(body),
    ...init
  })

const chat = (u: FakeUpstream, body: Record<string, unknown> = {}, init: RequestInit = {}) =>
  post(u, "/chat/completions", { model: "gpt-test", messages: [{ role: "user", content: "hi" }], ...body }, init)

const adminUrl = (u: FakeUpstream, path: string) => `http://127.0.0.1:${u.port}${path}`

/** The JSON payloads of an SSE body, and whether it ended with [DONE]. */
const parseSse = (text: string) => {
  const events = text.split("\n\n").filter((e) => e.length > 0)
  const done = events.at(-1) === "data: [DONE]"
  const chunks = events
    .filter((e) => e !== "data: [DONE]")
    .map((e) => {
      expect(e.startsWith("data: ")).toBe(true)
      return JSON.parse(e.slice("data: ".length))
    })
  return { chunks, done }
}

const contentOf = (chunks: Array<any>) =>
  chunks.map((ch) => ch.choices?.[0]?.delta?.content ?? "").join("")

/** Polls `cond` every 5 ms for up to 1 s. */
const waitFor = async (label: string, cond: () => boolean) => {
  for (let i = 0; i < 200; i++) {
    if (cond()) return
    await new Promise((r) => setTimeout(r, 5))
  }
  throw new Error(`condition never held: ${label}`)
}

describe("FakeUpstream endpoints", () => {
  it("answers a chat completion with the OpenAI shape and estimated usage", async () => {
    const u = await fake({ name: "alpha" })
    expect(u.name).toBe("alpha")
    expect(u.url).toBe(`http://127.0.0.1:${u.port}/v1`)
    const res = await chat(u, {
      messages: [
        { role: "system", content: "12345678" },
        { role: "user", content: [{ type: "text", text: "abc" }] }
      ]
    })
    expect(res.status).toBe(200)
    expect(res.headers.get("content-type")).toBe("application/json")
    expect(res.headers.get("x-fake-upstream")).toBe("alpha")
    expect(res.headers.get("connection")).not.toBe("close")
    const body = await res.json() as any
    expect(body.id).toMatch(/^chatcmpl-\d+$/)
    expect(body.object).toBe("chat.completion")
    expect(Math.abs(body.created - Date.now() / 1000)).toBeLessThan(5)
    expect(body.model).toBe("gpt-test")
    expect(body.system_fingerprint).toBe("fake-alpha")
    expect(body.choices).toEqual([
      { index: 0, message: { role: "assistant", content: "Hello from alpha" }, finish_reason: "stop", logprobs: null }
    ])
    // 8 + 3 chars -> ceil(11/4) = 3; "Hello from alpha" is 16 chars -> 4
    expect(body.usage).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 })
  })

  it("echoes the default model when the request has none, and uses a custom reply", async () => {
    const seen: Array<unknown> = []
    const u = await fake({
      model: "my-model",
      reply: (request) => {
        seen.push(request)
        return `echo ${request.messages[0].content}`
      }
    })
    const res = await post(u, "/chat/completions", { messages: [{ role: "user", content: "ping" }] })
    const body = await res.json() as any
    expect(body.model).toBe("my-model")
    expect(body.system_fingerprint).toBe("fake-fake")
    expect(body.choices[0].message.content).toBe("echo ping")
    expect(seen).toEqual([{ messages: [{ role: "user", content: "ping" }] }])
    const plain = await fake()
    const b2 = await (await post(plain, "/chat/completions", { messages: [] })).json() as any
    expect(b2.model).toBe("fake-model")
    expect(b2.choices[0].message.content).toBe("Hello from fake")
  })

  it("streams chunks that reassemble the reply and end with [DONE]", async () => {
    const u = await fake({ name: "s", reply: () => "one two three four" })
    const res = await chat(u, { stream: true })
    expect(res.status).toBe(200)
    expect(res.headers.get("content-type")).toBe("text/event-stream")
    expect(res.headers.get("x-fake-upstream")).toBe("s")
    const { chunks, done } = parseSse(await res.text())
    expect(done).toBe(true)
    expect(chunks.every((ch) => ch.object === "chat.completion.chunk" && ch.model === "gpt-test")).toBe(true)
    expect(new Set(chunks.map((ch) => ch.id)).size).toBe(1)
    expect(chunks[0].choices[0].delta.role).toBe("assistant")
    expect(chunks.slice(1, -1).map((ch) => ch.choices[0].delta.content)).toEqual(["one ", "two ", "three ", "four"])
    expect(contentOf(chunks)).toBe("one two three four")
    const last = chunks.at(-1)
    expect(last.choices[0]).toMatchObject({ delta: {}, finish_reason: "stop" })
    expect(chunks.slice(0, -1).every((ch) => ch.choices[0].finish_reason === null)).toBe(true)
    expect(chunks.some((ch) => ch.usage !== undefined && ch.usage !== null)).toBe(false)
  })

  it("adds a usage chunk with empty choices when stream_options.include_usage is set", async () => {
    const u = await fake()
    const res = await chat(u, {
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: "user", content: "12345" }]
    })
    const { chunks, done } = parseSse(await res.text())
    expect(done).toBe(true)
    const last = chunks.at(-1)
    expect(last.choices).toEqual([])
    // "12345" -> 2; "Hello from fake" (15 chars) -> 4
    expect(last.usage).toEqual({ prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 })
    expect(chunks.at(-2).choices[0].finish_reason).toBe("stop")
    expect(contentOf(chunks)).toBe("Hello from fake")
  })

  it("answers embeddings for a string and for an array input", async () => {
    const u = await fake()
    const one = await (await post(u, "/embeddings", { model: "emb", input: "hello world!" })).json() as any
    expect(one.object).toBe("list")
    expect(one.model).toBe("emb")
    expect(one.data).toHaveLength(1)
    expect(one.data[0]).toMatchObject({ object: "embedding", index: 0 })
    expect(one.data[0].embedding).toHaveLength(8)
    expect(one.data[0].embedding.every((x: unknown) => typeof x === "number" && Math.abs(x) <= 1)).toBe(true)
    expect(one.usage).toEqual({ prompt_tokens: 3, total_tokens: 3 })

    const many = await (await post(u, "/embeddings", { input: ["a", "b", "c"] })).json() as any
    expect(many.model).toBe("fake-model")
    expect(many.data.map((d: any) => d.index)).toEqual([0, 1, 2])
    expect(many.data.every((d: any) => d.embedding.length === 8)).toBe(true)
    expect(many.usage.prompt_tokens).toBe(3)
  })

  it("lists models, with modelsStatus and unaffected by request faults", async () => {
    const u = await fake({ model: "m1", faults: { rate429: 1, reset: 0, status: undefined } })
    const res = await fetch(`${u.url}/models`)
    expect(res.status).toBe(200)
    expect(res.headers.get("x-fake-upstream")).toBe("fake")
    expect(await res.json()).toEqual({
      object: "list",
      data: [{ id: "m1", object: "model", created: 0, owned_by: "fake" }]
    })
    u.setFaults({ modelsStatus: 503, status: 400 })
    const down = await fetch(`${u.url}/models`)
    expect(down.status).toBe(503)
    expect(((await down.json()) as any).error.type).toBe("server_error")
    expect(u.counters().models).toBe(2)
    const several = await fake({ models: ["a", "b/c"] })
    expect(((await (await fetch(`${several.url}/models`)).json()) as any).data.map((m: any) => m.id)).toEqual(["a", "b/c"])
  })

  it("answers 404 for unknown paths and 400 for invalid JSON", async () => {
    const u = await fake()
    const nf = await fetch(`${u.url}/nope`)
    expect(nf.status).toBe(404)
    expect(nf.headers.get("x-fake-upstream")).toBe("fake")
    expect(((await nf.json()) as any).error).toMatchObject({ type: "invalid_request_error", param: null })
    const bad = await post(u, "/chat/completions", "{not json")
    expect(bad.status).toBe(400)
    expect(((await bad.json()) as any).error.type).toBe("invalid_request_error")
    const notObject = await post(u, "/embeddings", "42")
    expect(notObject.status).toBe(400)
    await notObject.text()
  })

  it("keeps connections alive", async () => {
    const u = await fake()
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    try {
      const once = () =>
        new Promise<{ reused: boolean; connection: string | undefined; status: number | undefined }>(
          (resolve, reject) => {
            const req = http.request(`${u.url}/models`, { agent }, (res) => {
              res.resume()
              res.on("end", () =>
                resolve({ reused: req.reusedSocket, connection: res.headers.connection, status: res.statusCode }))
            })
            req.on("error", reject)
            req.end()
          }
        )
      const first = await once()
      const second = await once()
      expect(first).toMatchObject({ reused: false, status: 200 })
      expect(first.connection).not.toBe("close")
      expect(second).toMatchObject({ reused: true, status: 200 })
    } finally {
      agent.destroy()
    }
  })
})

describe("FakeUpstream faults", () => {
  it("answers 429 with Retry-After and retry-after-ms", async () => {
    const u = await fake({ faults: { rate429: 1, retryAfter: "2", retryAfterMs: 1500 } })
    const res = await chat(u)
    expect(res.status).toBe(429)
    expect(res.headers.get("retry-after")).toBe("2")
    expect(res.headers.get("retry-after-ms")).toBe("1500")
    expect(res.headers.get("x-fake-upstream")).toBe("fake")
    const body = await res.json() as any
    expect(body.error).toMatchObject({ type: "rate_limit_exceeded", code: "rate_limit_exceeded", param: null })
    expect(typeof body.error.message).toBe("string")

    u.setFaults({ rate429: 1 })
    const bare = await post(u, "/embeddings", { input: "x" })
    expect(bare.status).toBe(429)
    expect(bare.headers.get("retry-after")).toBeNull()
    expect(bare.headers.get("retry-after-ms")).toBeNull()
    await bare.text()
  })

  it("answers insufficient_quota as a 429 or as a 200", async () => {
    const expected = {
      error: {
        message: expect.stringMatching(/^You exceeded your current quota/),
        type: "insufficient_quota",
        param: null,
        code: "insufficient_quota"
      }
    }
    const u = await fake({ faults: { quota: "429", retryAfter: "1" } })
    const r429 = await chat(u)
    expect(r429.status).toBe(429)
    expect(await r429.json()).toEqual(expected)
    u.setFaults({ quota: "200" })
    const r200 = await chat(u)
    expect(r200.status).toBe(200)
    expect(await r200.json()).toEqual(expected)
  })

  it("answers 503 with a server_error body", async () => {
    const u = await fake({ faults: { rate5xx: 1 } })
    const res = await chat(u)
    expect(res.status).toBe(503)
    expect(((await res.json()) as any).error).toMatchObject({ type: "server_error", param: null })
  })

  it("answers a forced status (400, 401) and checks faults in order", async () => {
    const u = await fake({ faults: { status: 400, quota: "429", rate429: 1, rate5xx: 1 } })
    const r400 = await chat(u)
    expect(r400.status).toBe(400)
    expect(((await r400.json()) as any).error.type).toBe("invalid_request_error")
    u.setFaults({ status: 401 })
    const r401 = await post(u, "/embeddings", { input: "x" })
    expect(r401.status).toBe(401)
    expect(((await r401.json()) as any).error.code).toBe("invalid_api_key")
    u.setFaults({ quota: "200", rate429: 1 })
    expect(((await (await chat(u)).json()) as any).error.type).toBe("insufficient_quota")
    u.setFaults({ rate429: 1, rate5xx: 1 })
    expect((await chat(u)).status).toBe(429)
    expect(() => u.setFaults({ status: 42 })).toThrow(TypeError)
  })

  it("hangs until the client gives up", async () => {
    const u = await fake({ faults: { hang: 1 } })
    const started = Date.now()
    await expect(chat(u, {}, { signal: AbortSignal.timeout(200) })).rejects.toThrow()
    expect(Date.now() - started).toBeGreaterThanOrEqual(150)
    expect(u.counters()).toMatchObject({ hangs: 1, byStatus: {} })
    await waitFor("in-flight drains after the abort", () => u.counters().inFlight === 0)
  })

  it("truncates the JSON body of a 200", async () => {
    const u = await fake({ faults: { truncated: 1 } })
    const res = await chat(u)
    expect(res.status).toBe(200)
    const text = await res.text()
    expect(text.startsWith("{\"id\":\"chatcmpl-")).toBe(true)
    expect(() => JSON.parse(text)).toThrow()
    const emb = await post(u, "/embeddings", { input: "x" })
    expect(emb.status).toBe(200)
    const embText = await emb.text()
    expect(() => JSON.parse(embText)).toThrow()
  })

  it("answers an empty message content without tool_calls", async () => {
    const u = await fake({ faults: { emptyContent: 1 } })
    const body = await (await chat(u)).json() as any
    expect(body.choices).toHaveLength(1)
    expect(body.choices[0].message).toEqual({ role: "assistant", content: "" })
    expect(body.choices[0].message.tool_calls).toBeUndefined()
    expect(body.usage.completion_tokens).toBe(0)
  })

  it("answers empty choices", async () => {
    const u = await fake({ faults: { emptyChoices: 1 } })
    const res = await chat(u)
    expect(res.status).toBe(200)
    const body = await res.json() as any
    expect(body.object).toBe("chat.completion")
    expect(body.choices).toEqual([])
  })

  it("cuts a stream after about half the events without [DONE]", async () => {
    const u = await fake({ faults: { streamCut: 1 }, reply: () => "a b c d e f" })
    const res = await chat(u, { stream: true })
    expect(res.status).toBe(200)
    const text = await res.text()
    expect(text).not.toContain("[DONE]")
    const { chunks, done } = parseSse(text)
    expect(done).toBe(false)
    // role + 6 words + stop = 8 events -> 4 sent
    expect(chunks).toHaveLength(4)
    expect(contentOf(chunks)).toBe("a b c ")
    expect(chunks.every((ch) => ch.choices[0].finish_reason === null)).toBe(true)
    // a non-stream request is not affected by streamCut
    expect((await (await chat(u)).json() as any).choices[0].message.content).toBe("a b c d e f")
  })

  it("paces a stream: streamDelayMs between events, counted in streamsOpen while it lasts", async () => {
    const u = await fake({ faults: { streamDelayMs: 40 }, reply: () => "a b c" })
    const t0 = performance.now()
    const res = await chat(u, { stream: true })
    expect(res.status).toBe(200)
    expect(res.headers.get("content-type")).toBe("text/event-stream")
    await waitFor("the stream is open", () => u.counters().streamsOpen === 1)
    const { chunks, done } = parseSse(await res.text())
    // role + 3 words + stop + [DONE] = 6 writes, 5 gaps of 40 ms.
    expect(performance.now() - t0).toBeGreaterThanOrEqual(180)
    expect(done).toBe(true)
    expect(contentOf(chunks)).toBe("a b c")
    await waitFor("the stream is closed", () => u.counters().streamsOpen === 0)
    expect(u.counters().byStatus).toEqual({ 200: 1 })
  })

  it("stalls a stream after streamStallAfter events, the connection left open until the caller leaves", async () => {
    const u = await fake({ faults: { streamStallAfter: 2 }, reply: () => "a b c" })
    const controller = new AbortController()
    const res = await chat(u, { stream: true }, { signal: controller.signal })
    const reader = res.body!.getReader()
    let text = ""
    while (text.split("\n\n").length < 3) text += new TextDecoder().decode((await reader.read()).value)
    expect(parseSse(text).chunks).toHaveLength(2)
    await waitFor("the stall is counted", () => u.counters().stalls === 1)
    await new Promise((r) => setTimeout(r, 50))
    expect(u.counters()).toMatchObject({ inFlight: 1, streamsOpen: 1 })
    controller.abort()
    await reader.read().catch(() => undefined)
    await waitFor("the connection closed", () => u.counters().inFlight === 0 && u.counters().streamsOpen === 0)
  })

  it("omitUsage: no usage in answers, nor a usage chunk in streams even when asked", async () => {
    const u = await fake({ faults: { omitUsage: true } })
    const body = await (await chat(u)).json() as any
    expect(body.usage).toBeUndefined()
    expect(body.choices[0].message.content).toBe("Hello from fake")
    const text = await (await chat(u, { stream: true, stream_options: { include_usage: true } })).text()
    expect(text).not.toContain("usage")
    expect(parseSse(text).done).toBe(true)
  })

  it("resets the connection without a response", async () => {
    const u = await fake({ faults: { reset: 1, status: 500 } })
    await expect(chat(u)).rejects.toThrow()
    const c = u.counters()
    expect(c.resets).toBe(1)
    expect(c.byStatus).toEqual({})
    await waitFor("in-flight drains after the reset", () => u.counters().inFlight === 0)
  })

  it("sends x-ratelimit-* headers on 200s only", async () => {
    const rateLimitHeaders = { remainingRequests: 59, remainingTokens: 149000, resetRequests: "1s", resetTokens: "6m0s" }
    const u = await fake({ faults: { rateLimitHeaders } })
    const ok = await chat(u)
    expect(ok.status).toBe(200)
    expect(ok.headers.get("x-ratelimit-remaining-requests")).toBe("59")
    expect(ok.headers.get("x-ratelimit-remaining-tokens")).toBe("149000")
    expect(ok.headers.get("x-ratelimit-reset-requests")).toBe("1s")
    expect(ok.headers.get("x-ratelimit-reset-tokens")).toBe("6m0s")
    await ok.text()
    const streamed = await chat(u, { stream: true })
    expect(streamed.headers.get("x-ratelimit-remaining-requests")).toBe("59")
    await streamed.text()
    u.setFaults({ rateLimitHeaders, rate429: 1 })
    const limited = await chat(u)
    expect(limited.status).toBe(429)
    expect(limited.headers.get("x-ratelimit-remaining-requests")).toBeNull()
    await limited.text()
  })

  it("adds latency before answering", async () => {
    const u = await fake({ faults: { latencyMs: 60, jitterMs: 20 } })
    const started = Date.now()
    const res = await chat(u)
    const elapsed = Date.now() - started
    expect(res.status).toBe(200)
    await res.text()
    expect(elapsed).toBeGreaterThanOrEqual(55)
  })
})

describe("FakeUpstream counters and control", () => {
  it("counts requests, endpoints, statuses, the last Authorization and the raw last body", async () => {
    const u = await fake()
    const raw = "{ \"model\" : \"x\",\n  \"messages\": [ {\"role\":\"user\",\"content\":\"héllo\"} ] }"
    await (await post(u, "/chat/completions", raw)).text()
    await (await post(u, "/embeddings", { input: "a" })).text()
    await (await fetch(`${u.url}/models`, { headers: { authorization: "Bearer sk-last" } })).text()
    await (await fetch(`${u.url}/unknown`)).text()
    let c = u.counters()
    expect(c).toMatchObject({ requests: 4, chat: 1, embeddings: 1, models: 1, inFlight: 0, resets: 0, hangs: 0 })
    expect(c.byStatus).toEqual({ 200: 3, 404: 1 })
    expect(c.lastAuthorization).toBeUndefined()
    expect(c.lastBody).toBe("{\"input\":\"a\"}")

    await (await post(u, "/chat/completions", raw)).text()
    c = u.counters()
    expect(c.lastAuthorization).toBe(KEY)
    expect(c.lastBody).toBe(raw)

    // counters() is a copy
    c.byStatus[200] = 999
    c.requests = 999
    expect(u.counters().byStatus[200]).toBe(4)
    expect(u.counters().requests).toBe(5)

    u.resetCounters()
    expect(u.counters()).toEqual({
      requests: 0,
      chat: 0,
      embeddings: 0,
      models: 0,
      inFlight: 0,
      maxInFlight: 0,
      byStatus: {},
      resets: 0,
      hangs: 0,
      stalls: 0,
      streamsOpen: 0,
      aborted: 0,
      lastAuthorization: undefined,
      lastBody: undefined,
      quotaRefusedAt: []
    })
  })

  it("counts requests whose client closed the connection before the answer (aborted), not answered ones nor its own resets", async () => {
    const u = await fake({ faults: { latencyMs: 300 } })
    const controller = new AbortController()
    const pending = chat(u, {}, { signal: controller.signal }).catch((e: unknown) => e)
    await waitFor("the request in flight", () => u.counters().inFlight === 1)
    controller.abort()
    expect(await pending).toBeInstanceOf(Error)
    await waitFor("the abort seen", () => u.counters().aborted === 1)
    expect(u.counters().byStatus[200]).toBeUndefined()
    // An answered request is not an abort, nor is a reset the fake does itself.
    expect((await chat(u)).status).toBe(200)
    u.setFaults({ reset: 1 })
    await chat(u).catch(() => undefined)
    await waitFor("the reset counted", () => u.counters().resets === 1 && u.counters().inFlight === 0)
    expect(u.counters().aborted).toBe(1)
  })

  it("tracks inFlight and maxInFlight across concurrent slow requests", async () => {
    const u = await fake({ faults: { latencyMs: 50 } })
    const pending = Array.from({ length: 5 }, () => chat(u).then((r) => r.text()))
    await waitFor("all five in flight", () => u.counters().inFlight === 5)
    await Promise.all(pending)
    await waitFor("in-flight drains", () => u.counters().inFlight === 0)
    expect(u.counters()).toMatchObject({ maxInFlight: 5, chat: 5, byStatus: { 200: 5 } })
  })

  it("switches faults at runtime with setFaults", async () => {
    const u = await fake()
    expect((await chat(u)).status).toBe(200)
    u.setFaults({ rate429: 1 })
    expect((await chat(u)).status).toBe(429)
    u.setFaults({ rate5xx: 1 })
    expect((await chat(u)).status).toBe(503)
    u.setFaults({})
    expect((await chat(u)).status).toBe(200)
    expect(u.counters().byStatus).toEqual({ 200: 2, 429: 1, 503: 1 })
  })

  it("switches faults and reads/resets counters over HTTP, without counting admin calls", async () => {
    const u = await fake({ name: "remote" })
    const faults: Faults = { status: 500 }
    const set = await fetch(adminUrl(u, "/_fake/faults"), { method: "POST", body: JSON.stringify(faults) })
    expect(set.status).toBe(200)
    await set.text()
    const current = await (await fetch(adminUrl(u, "/_fake/faults"))).json()
    expect(current).toEqual(faults)
    const failed = await chat(u)
    expect(failed.status).toBe(500)
    expect(((await failed.json()) as any).error.type).toBe("server_error")

    const counters = await (await fetch(adminUrl(u, "/_fake/counters"))).json() as any
    expect(counters).toMatchObject({ requests: 1, chat: 1, byStatus: { "500": 1 }, lastAuthorization: KEY })

    const bad = await fetch(adminUrl(u, "/_fake/faults"), { method: "POST", body: "{nope" })
    expect(bad.status).toBe(400)
    await bad.text()

    await (await fetch(adminUrl(u, "/_fake/faults"), { method: "POST", body: "{}" })).text()
    expect((await chat(u)).status).toBe(200)

    const reset = await fetch(adminUrl(u, "/_fake/reset"), { method: "POST" })
    expect(reset.status).toBe(200)
    await reset.text()
    expect(u.counters()).toMatchObject({ requests: 0, chat: 0, byStatus: {} })
  })

  it("draws deterministically from a seed", async () => {
    const statuses = async (u: FakeUpstream) => {
      const out: Array<number> = []
      for (let i = 0; i < 24; i++) {
        const r = await chat(u)
        await r.text()
        out.push(r.status)
      }
      return out
    }
    const a = await fake({ seed: 42, faults: { rate429: 0.5 } })
    const b = await fake({ seed: 42, faults: { rate429: 0.5 } })
    const sa = await statuses(a)
    const sb = await statuses(b)
    expect(sa).toEqual(sb)
    expect(sa).toContain(200)
    expect(sa).toContain(429)
  })

  it("close() does not hang with a hung request open", async () => {
    const u = await fake({ faults: { hang: 1 } })
    const hung = chat(u).then(() => "answered", () => "rejected")
    await waitFor("the request is hung", () => u.counters().hangs === 1)
    const closed = await Promise.race([
      u.close().then(() => "closed"),
      new Promise((r) => setTimeout(() => r("timeout"), 1_000))
    ])
    expect(closed).toBe("closed")
    expect(await hung).toBe("rejected")
    await u.close() // idempotent
    await expect(fetch(`${u.url}/models`)).rejects.toThrow()
  })

  it.live("make() is scoped: the server closes with the scope", () =>
    Effect.gen(function*() {
      const url = yield* Effect.scoped(
        Effect.gen(function*() {
          const u = yield* Fake.make({ name: "scoped" })
          const res = yield* Effect.promise(() => fetch(`${u.url}/models`))
          expect(res.status).toBe(200)
          expect(res.headers.get("x-fake-upstream")).toBe("scoped")
          yield* Effect.promise(() => res.text())
          return u.url
        })
      )
      const after = yield* Effect.promise(() => fetch(`${url}/models`).then(() => "answered", () => "refused"))
      expect(after).toBe("refused")
    }))
})
