/**
 * The fake upstream speaking Anthropic's, Gemini's and Azure's wire formats,
 * over real HTTP on 127.0.0.1, read back through the provider translations:
 * what the fake sends is what the translations must understand.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import * as Cooldown from "../src/Cooldown.js"
import * as OpenAI from "../src/OpenAI.js"
import * as Anthropic from "../src/providers/Anthropic.js"
import * as Azure from "../src/providers/Azure.js"
import * as Gemini from "../src/providers/Gemini.js"
import type { FakeUpstream, Options } from "../src/testing/FakeUpstream.js"
import * as Fake from "../src/testing/FakeUpstream.js"

const opened: Array<FakeUpstream> = []

afterEach(async () => {
  await Promise.all(opened.splice(0).map((u) => u.close()))
})

const fake = async (options: Options): Promise<FakeUpstream> => {
  const u = await Fake.start(options)
  opened.push(u)
  return u
}

const chatRequest = (body: Record<string, unknown>): OpenAI.ChatCompletionRequest =>
  Either.getOrThrow(OpenAI.decodeChatRequest({ model: "m", messages: [{ role: "user", content: "12345678" }], ...body }))

const headersOf = (res: Response): Record<string, string> => Object.fromEntries(res.headers.entries())

const NOW = () => Date.now()

// ---------------------------------------------------------------------------

describe("FakeUpstream protocol: anthropic", () => {
  const call = async (u: FakeUpstream, body: Record<string, unknown> = {}) => {
    const request = chatRequest(body)
    const translated = Either.getOrThrow(Anthropic.toRequest(request, { model: "claude-sonnet-4-5" }))
    return fetch(`${u.url}${Anthropic.MESSAGES_PATH}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...Anthropic.headers("sk-ant-test") },
      body: JSON.stringify(translated)
    })
  }

  it("answers POST /v1/messages with a message the translation turns into a valid OpenAI completion", async () => {
    const u = await fake({ name: "claude", protocol: "anthropic" })
    expect(u.url).toBe(`http://127.0.0.1:${u.port}/v1`)
    const res = await call(u)
    expect(res.status).toBe(200)
    const text = await res.text()
    const raw = JSON.parse(text)
    expect(raw).toMatchObject({
      type: "message",
      role: "assistant",
      model: "claude-sonnet-4-5",
      content: [{ type: "text", text: "Hello from claude" }],
      stop_reason: "end_turn",
      usage: { input_tokens: 2, output_tokens: 5 }
    })
    const r = Anthropic.fromResponse(text, { model: "claude-sonnet-4.5", created: 1 })
    expect(r._tag).toBe("Ok")
    const inspected = OpenAI.inspectChatCompletion(JSON.stringify(r._tag === "Ok" ? r.json : null))
    expect(inspected._tag === "Ok" && inspected.usage).toEqual({ prompt_tokens: 2, completion_tokens: 5, total_tokens: 7 })
    const c = u.counters()
    expect(c.chat).toBe(1)
    expect(c.lastPath).toBe("/v1/messages")
    expect(c.lastHeaders?.["x-api-key"]).toBe("sk-ant-test")
    expect(c.lastHeaders?.["anthropic-version"]).toBe(Anthropic.API_VERSION)
    expect(JSON.parse(c.lastBody!)).toEqual({
      model: "claude-sonnet-4-5",
      max_tokens: 4096,
      messages: [{ role: "user", content: "12345678" }]
    })
  })

  it("streams Anthropic events that translate to OpenAI chunks ending in [DONE]", async () => {
    const u = await fake({ name: "claude", protocol: "anthropic", reply: () => "one two three" })
    const res = await call(u, { stream: true })
    expect(res.headers.get("content-type")).toBe("text/event-stream")
    const t = Anthropic.streamTranslator({ model: "claude-sonnet-4.5", created: 1, includeUsage: true })
    const out = t.feed(new Uint8Array(await res.arrayBuffer())) + t.end()
    const events = out.split("\n\n").filter((e) => e !== "").map((e) => e.slice(6))
    expect(events.at(-1)).toBe("[DONE]")
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e))
    expect(chunks.map((ch) => ch.choices[0]?.delta?.content ?? "").join("")).toBe("one two three")
    expect(chunks.at(-2).choices[0].finish_reason).toBe("stop")
    expect(chunks.at(-1).usage).toEqual({ prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 })
  })

  it("calls the first tool when asked to, then answers the tool result with text", async () => {
    const u = await fake({ name: "claude", protocol: "anthropic", callTools: true })
    const tools = [{ type: "function", function: { name: "weather", parameters: { type: "object" } } }]
    const first = Anthropic.fromResponse(await (await call(u, { tools })).text(), { model: "c", created: 1 })
    const message = first._tag === "Ok" ? (first.json["choices"] as any)[0] : undefined
    expect(message.finish_reason).toBe("tool_calls")
    expect(message.message.tool_calls).toEqual([{ id: "toolu_1", type: "function", function: { name: "weather", arguments: "{}" } }])
    const followUp = await call(u, {
      tools,
      messages: [
        { role: "user", content: "weather?" },
        { role: "assistant", content: null, tool_calls: message.message.tool_calls },
        { role: "tool", tool_call_id: "toolu_1", content: "18C" }
      ]
    })
    const second = Anthropic.fromResponse(await followUp.text(), { model: "c", created: 1 })
    expect(second._tag === "Ok" && (second.json["choices"] as any)[0].message.content).toBe("Hello from claude")
  })

  it("injects faults in Anthropic's shapes, each mapping to its failover class", async () => {
    const u = await fake({ name: "claude", protocol: "anthropic", faults: { rate5xx: 1 } })
    const classify = async (res: Response) => Anthropic.errorFrom("claude", res.status, headersOf(res), await res.text(), NOW())
    const overloaded = await call(u)
    expect(overloaded.status).toBe(529)
    expect(await classify(overloaded)).toMatchObject({ _tag: "UpstreamServerError", status: 529 })

    u.setFaults({ rate429: 1, retryAfter: "2" })
    const limited = await classify(await call(u))
    expect(limited._tag === "UpstreamRateLimited" && limited.retryAfter && Duration.toMillis(limited.retryAfter)).toBe(2000)

    u.setFaults({ quota: "429" })
    expect((await classify(await call(u)))._tag).toBe("QuotaExhausted")
    u.setFaults({ status: 404 })
    expect((await classify(await call(u)))._tag).toBe("UpstreamModelNotFound")
    u.setFaults({ status: 400 })
    expect((await classify(await call(u)))._tag).toBe("UpstreamRejected")
    u.setFaults({ status: 401 })
    expect((await classify(await call(u)))._tag).toBe("UpstreamAuthFailed")
  })

  it("sends anthropic-ratelimit-* headers that steer headroom", async () => {
    const u = await fake({
      name: "claude",
      protocol: "anthropic",
      faults: { rateLimitHeaders: { remainingRequests: 0, remainingTokens: 100, resetRequests: "20s", resetTokens: "1s" } }
    })
    const res = await call(u)
    expect(res.headers.get("anthropic-ratelimit-requests-remaining")).toBe("0")
    const wait = Cooldown.headroomCooldown(Anthropic.rateLimitHeaders(headersOf(res), NOW()))
    expect(wait !== undefined && Duration.toMillis(wait)).toBeGreaterThan(15_000)
    expect(wait !== undefined && Duration.toMillis(wait)).toBeLessThanOrEqual(20_000)
  })

  it("cuts a stream before message_stop on streamCut", async () => {
    const u = await fake({ name: "claude", protocol: "anthropic", faults: { streamCut: 1 } })
    const t = Anthropic.streamTranslator({ model: "c", created: 1, includeUsage: false })
    const out = t.feed(new Uint8Array(await (await call(u, { stream: true })).arrayBuffer())) + t.end()
    expect(out).not.toContain("[DONE]")
    expect(t.complete()).toBe(false)
  })
})

describe("FakeUpstream protocol: gemini", () => {
  const call = async (u: FakeUpstream, body: Record<string, unknown> = {}, stream = false) => {
    const request = chatRequest(body)
    const translated = Either.getOrThrow(Gemini.toRequest(request))
    return fetch(`${u.url}${Gemini.chatPath("gemini-2.5-flash", stream)}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...Gemini.headers("AIza-test") },
      body: JSON.stringify(translated)
    })
  }

  it("answers generateContent with a response the translation turns into a valid OpenAI completion", async () => {
    const u = await fake({ name: "gem", protocol: "gemini" })
    expect(u.url).toBe(`http://127.0.0.1:${u.port}/v1beta`)
    const res = await call(u)
    expect(res.status).toBe(200)
    const text = await res.text()
    expect(JSON.parse(text)).toMatchObject({
      candidates: [{ content: { role: "model", parts: [{ text: "Hello from gem" }] }, finishReason: "STOP", index: 0 }],
      usageMetadata: { promptTokenCount: 2, candidatesTokenCount: 4, totalTokenCount: 6 },
      modelVersion: "gemini-2.5-flash"
    })
    const r = Gemini.fromResponse(text, { model: "gemini-2.5-flash", created: 1 })
    expect(r._tag === "Ok" && OpenAI.inspectChatCompletion(JSON.stringify(r.json))._tag).toBe("Ok")
    const c = u.counters()
    expect(c.lastPath).toBe("/v1beta/models/gemini-2.5-flash:generateContent")
    expect(c.lastHeaders?.["x-goog-api-key"]).toBe("AIza-test")
    expect(JSON.parse(c.lastBody!)).toEqual({ contents: [{ role: "user", parts: [{ text: "12345678" }] }] })
  })

  it("streams streamGenerateContent?alt=sse events that translate to OpenAI chunks ending in [DONE]", async () => {
    const u = await fake({ name: "gem", protocol: "gemini", reply: () => "one two three" })
    const res = await call(u, {}, true)
    expect(res.headers.get("content-type")).toBe("text/event-stream")
    const t = Gemini.streamTranslator({ model: "g", created: 1, includeUsage: true })
    const out = t.feed(new Uint8Array(await res.arrayBuffer())) + t.end()
    const events = out.split("\n\n").filter((e) => e !== "").map((e) => e.slice(6))
    expect(events.at(-1)).toBe("[DONE]")
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e))
    expect(chunks.map((ch) => ch.choices[0]?.delta?.content ?? "").join("")).toBe("one two three")
    expect(chunks.at(-1).usage).toEqual({ prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 })
    // Without alt=sse the fake, like Gemini, does not stream SSE.
    const plain = await fetch(`${u.url}/models/g:streamGenerateContent`, { method: "POST", body: "{}" })
    expect(plain.status).toBe(404)
  })

  it("calls the first tool when asked to", async () => {
    const u = await fake({ name: "gem", protocol: "gemini", callTools: true })
    const tools = [{ type: "function", function: { name: "weather" } }]
    const r = Gemini.fromResponse(await (await call(u, { tools })).text(), { model: "g", created: 1 })
    const choice = r._tag === "Ok" ? (r.json["choices"] as any)[0] : undefined
    expect(choice.finish_reason).toBe("tool_calls")
    expect(choice.message.tool_calls[0].function).toEqual({ name: "weather", arguments: "{}" })
  })

  it("embeds one text (embedContent) and several (batchEmbedContents)", async () => {
    const u = await fake({ name: "gem", protocol: "gemini" })
    const request = Either.getOrThrow(OpenAI.decodeEmbeddingsRequest({ model: "e", input: ["a", "b"] }))
    const callE = Either.getOrThrow(Gemini.toEmbeddingsRequest(request, { model: "gemini-embedding-001" }))
    const res = await fetch(`${u.url}${callE.path}`, { method: "POST", body: JSON.stringify(callE.body) })
    const r = Gemini.fromEmbeddingsResponse(await res.text(), request, { model: "e" })
    expect(r._tag === "Ok" && (r.json["data"] as Array<unknown>).length).toBe(2)
    const one = Either.getOrThrow(OpenAI.decodeEmbeddingsRequest({ model: "e", input: "a" }))
    const callOne = Either.getOrThrow(Gemini.toEmbeddingsRequest(one, { model: "gemini-embedding-001" }))
    const single = await fetch(`${u.url}${callOne.path}`, { method: "POST", body: JSON.stringify(callOne.body) })
    expect(Gemini.fromEmbeddingsResponse(await single.text(), one, { model: "e" })._tag).toBe("Ok")
    expect(u.counters().embeddings).toBe(2)
  })

  it("injects faults in Gemini's shapes, each mapping to its failover class", async () => {
    const u = await fake({ name: "gem", protocol: "gemini", faults: { rate429: 1, retryAfter: "4" } })
    const classify = async (res: Response) => Gemini.errorFrom("gem", res.status, headersOf(res), await res.text(), NOW())
    const limited = await call(u)
    expect(limited.status).toBe(429)
    const e = await classify(limited)
    expect(e._tag === "UpstreamRateLimited" && e.retryAfter && Duration.toMillis(e.retryAfter)).toBe(4000)
    u.setFaults({ rate5xx: 1 })
    const unavailable = await call(u)
    expect(unavailable.status).toBe(503)
    expect(((await unavailable.clone().json()) as any).error.status).toBe("UNAVAILABLE")
    expect((await classify(unavailable))._tag).toBe("UpstreamServerError")
    u.setFaults({ quota: "429" })
    expect((await classify(await call(u)))._tag).toBe("QuotaExhausted")
    u.setFaults({ status: 404 })
    expect((await classify(await call(u)))._tag).toBe("UpstreamModelNotFound")
    u.setFaults({ status: 403 })
    expect((await classify(await call(u)))._tag).toBe("UpstreamAuthFailed")
  })
})

describe("FakeUpstream protocol: azure-openai", () => {
  it("serves Azure's deployment URLs with an api-version, in OpenAI's format", async () => {
    const u = await fake({ name: "az", protocol: "azure-openai" })
    expect(u.url).toBe(`http://127.0.0.1:${u.port}`)
    const options = { deployments: { "gpt-4.1": "gpt41-prod", "emb": "emb-prod" } }
    const res = await fetch(`${u.url}${Azure.chatPath("gpt-4.1", options)}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...Azure.headers("az-key") },
      body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "hi" }] })
    })
    expect(res.status).toBe(200)
    expect(OpenAI.inspectChatCompletion(await res.text())._tag).toBe("Ok")
    expect(u.counters().lastHeaders?.["api-key"]).toBe("az-key")
    expect(u.counters().lastPath).toBe(`/openai/deployments/gpt41-prod/chat/completions?api-version=${Azure.DEFAULT_API_VERSION}`)
    const emb = await fetch(`${u.url}${Azure.embeddingsPath("emb", options)}`, {
      method: "POST",
      body: JSON.stringify({ model: "emb", input: "x" })
    })
    expect(OpenAI.inspectEmbeddings(await emb.text())._tag).toBe("Ok")
    const noVersion = await fetch(`${u.url}/openai/deployments/gpt41-prod/chat/completions`, { method: "POST", body: "{}" })
    expect(noVersion.status).toBe(404)
    u.setFaults({ rate5xx: 1 })
    const down = await fetch(`${u.url}${Azure.chatPath("gpt-4.1", options)}`, { method: "POST", body: "{}" })
    expect(down.status).toBe(503)
  })
})

describe("FakeUpstream protocol: openai, callTools", () => {
  it("calls the first tool, in a completion and in a stream, then answers the tool result with text", async () => {
    const u = await fake({ name: "oa", callTools: true })
    const tools = [{ type: "function", function: { name: "weather" } }]
    const post = (body: Record<string, unknown>) =>
      fetch(`${u.url}/chat/completions`, { method: "POST", body: JSON.stringify({ model: "m", tools, ...body }) })
    const first = await (await post({ messages: [{ role: "user", content: "weather?" }] })).json() as any
    expect(OpenAI.inspectChatCompletion(JSON.stringify(first))._tag).toBe("Ok")
    expect(first.choices[0]).toMatchObject({
      finish_reason: "tool_calls",
      message: { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "weather", arguments: "{}" } }] }
    })
    const streamed = await (await post({ messages: [{ role: "user", content: "weather?" }], stream: true })).text()
    const chunks = streamed.split("\n\n").filter((e) => e.startsWith("data: {")).map((e) => JSON.parse(e.slice(6)))
    expect(chunks[1].choices[0].delta.tool_calls).toEqual([
      { index: 0, id: "call_2", type: "function", function: { name: "weather", arguments: "{}" } }
    ])
    expect(chunks.at(-1).choices[0].finish_reason).toBe("tool_calls")
    const after = await (await post({
      messages: [
        { role: "user", content: "weather?" },
        first.choices[0].message,
        { role: "tool", tool_call_id: "call_1", content: "18C" }
      ]
    })).json() as any
    expect(after.choices[0].message.content).toBe("Hello from oa")
  })
})

describe("FakeUpstream: cachedTokens, and Anthropic's rate-limit headers on 429s", () => {
  it("reports cache reads in each protocol's own fields, which the translations read as cached prompt tokens", async () => {
    const prompt = Math.ceil("12345678".length / 4)
    const request = chatRequest({})
    const claude = await fake({ name: "claude", protocol: "anthropic", cachedTokens: 30 })
    const a = await (await fetch(`${claude.url}${Anthropic.MESSAGES_PATH}`, {
      method: "POST",
      body: JSON.stringify(Either.getOrThrow(Anthropic.toRequest(request, { model: "c" })))
    })).json() as any
    expect(a.usage).toMatchObject({ input_tokens: prompt, cache_read_input_tokens: 30 })
    expect(Anthropic.usageOf(a.usage)).toMatchObject({ prompt_tokens: prompt + 30, prompt_tokens_details: { cached_tokens: 30 } })

    const gem = await fake({ name: "gem", protocol: "gemini", cachedTokens: 30 })
    const g = await (await fetch(`${gem.url}${Gemini.chatPath("g", false)}`, {
      method: "POST",
      body: JSON.stringify(Either.getOrThrow(Gemini.toRequest(request)))
    })).json() as any
    expect(g.usageMetadata).toMatchObject({ promptTokenCount: prompt + 30, cachedContentTokenCount: 30 })
    expect(Gemini.usageOf(g.usageMetadata)).toMatchObject({ prompt_tokens: prompt + 30, prompt_tokens_details: { cached_tokens: 30 } })

    const oa = await fake({ name: "oa", cachedTokens: 30 })
    const o = await (await fetch(`${oa.url}/chat/completions`, { method: "POST", body: JSON.stringify(request) })).json() as any
    expect(o.usage).toMatchObject({ prompt_tokens: prompt + 30, prompt_tokens_details: { cached_tokens: 30 } })
  })

  it("an Anthropic 429 carries retry-after and the anthropic-ratelimit-* headers", async () => {
    const u = await fake({
      name: "claude",
      protocol: "anthropic",
      faults: {
        status: 429,
        retryAfter: "30",
        rateLimitHeaders: { remainingRequests: 0, remainingTokens: 0, resetRequests: "50s", resetTokens: "50s" }
      }
    })
    const res = await fetch(`${u.url}${Anthropic.MESSAGES_PATH}`, { method: "POST", body: "{}" })
    expect(res.status).toBe(429)
    expect(res.headers.get("retry-after")).toBe("30")
    expect(res.headers.get("anthropic-ratelimit-requests-remaining")).toBe("0")
    expect(Date.parse(res.headers.get("anthropic-ratelimit-requests-reset")!) - Date.now()).toBeGreaterThan(45_000)
  })
})

describe("FakeUpstream: streamError", () => {
  const post = (u: FakeUpstream, path: string, body: unknown) =>
    fetch(`${u.url}${path}`, { method: "POST", body: JSON.stringify(body) })

  it("a 200 stream that carries the provider's error event instead of content, which the translations make the first OpenAI event", async () => {
    const request = chatRequest({ stream: true })
    const claude = await fake({ name: "claude", protocol: "anthropic", faults: { streamError: 1 } })
    const a = await post(claude, Anthropic.MESSAGES_PATH, Either.getOrThrow(Anthropic.toRequest(request, { model: "c" })))
    expect(a.status).toBe(200)
    const at = Anthropic.streamTranslator({ model: "c", created: 1, includeUsage: false })
    const aOut = at.feed(new Uint8Array(await a.arrayBuffer())) + at.end()
    expect(aOut.split("\n\n").filter((e) => e !== "")).toHaveLength(1)
    expect(at.error()).toEqual({ type: "overloaded_error", message: "Overloaded" })
    expect(aOut).not.toContain("[DONE]")

    const gem = await fake({ name: "gem", protocol: "gemini", faults: { streamError: 1 } })
    const g = await post(gem, Gemini.chatPath("g", true), Either.getOrThrow(Gemini.toRequest(request)))
    expect(g.status).toBe(200)
    const gt = Gemini.streamTranslator({ model: "g", created: 1, includeUsage: false })
    const gOut = gt.feed(new Uint8Array(await g.arrayBuffer())) + gt.end()
    expect(gOut.split("\n\n").filter((e) => e !== "")).toHaveLength(1)
    expect(gt.error()).toEqual({ type: "UNAVAILABLE", message: "The model is overloaded. Please try again later." })

    const oa = await fake({ name: "oa", faults: { streamError: 1 } })
    const o = await post(oa, "/chat/completions", request)
    expect(o.status).toBe(200)
    const events = (await o.text()).split("\n\n").filter((e) => e !== "")
    expect(events).toHaveLength(1)
    expect(OpenAI.inspectStreamChunk(events[0]!.slice(6))._tag).toBe("Error")
    expect(oa.counters().byStatus).toEqual({ 200: 1 })
  })
})
