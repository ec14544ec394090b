import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Stream from "effect/Stream"
import * as Cooldown from "../../src/Cooldown.js"
import * as OpenAI from "../../src/OpenAI.js"
import * as Anthropic from "../../src/providers/Anthropic.js"
import { translateStream, type UntranslatableField } from "../../src/providers/Translation.js"

const decode = (body: unknown): OpenAI.ChatCompletionRequest => {
  const r = OpenAI.decodeChatRequest(body)
  if (Either.isLeft(r)) throw new Error(r.left.message)
  return r.right
}

const translate = (body: Record<string, unknown>) =>
  Anthropic.toRequest(decode({ model: "claude-sonnet-4.5", ...body }), { model: "claude-sonnet-4-5-20250929" })

const ok = (body: Record<string, unknown>) => {
  const r = translate(body)
  if (Either.isLeft(r)) throw new Error(r.left.message)
  return r.right
}

const refused = (body: Record<string, unknown>): UntranslatableField => {
  const r = translate(body)
  if (Either.isRight(r)) throw new Error(`expected a refusal, got ${JSON.stringify(r.right)}`)
  return r.left
}

const PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"

describe("Anthropic requests", () => {
  it("translates a conversation with system, images, tools and tool results to the Messages API shape", () => {
    const body = ok({
      messages: [
        { role: "system", content: "You are terse." },
        { role: "developer", content: [{ type: "text", text: "Use tools." }] },
        {
          role: "user",
          content: [
            { type: "text", text: "What is in these pictures, and the weather in Paris?" },
            { type: "image_url", image_url: { url: "https://example.com/cat.jpg", detail: "high" } },
            { type: "image_url", image_url: { url: `data:image/png;base64,${PNG}` } }
          ]
        },
        {
          role: "assistant",
          content: "Checking.",
          tool_calls: [
            { id: "toolu_1", type: "function", function: { name: "weather", arguments: "{\"city\":\"Paris\"}" } },
            { id: "toolu_2", type: "function", function: { name: "time", arguments: "" } }
          ]
        },
        { role: "tool", tool_call_id: "toolu_1", content: "18C" },
        { role: "tool", tool_call_id: "toolu_2", content: [{ type: "text", text: "noon" }] },
        { role: "assistant", content: "A cat; 18C at noon." },
        { role: "user", content: "Thanks" }
      ],
      tools: [
        {
          type: "function",
          function: {
            name: "weather",
            description: "Current weather",
            parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
          }
        },
        { type: "function", function: { name: "time" } }
      ],
      tool_choice: { type: "function", function: { name: "weather" } },
      parallel_tool_calls: false,
      temperature: 0.5,
      top_p: 0.9,
      stop: "END",
      max_completion_tokens: 300,
      stream: true,
      stream_options: { include_usage: true },
      user: "user-42"
    })
    // The Messages API request, field by field (docs.anthropic.com/en/api/messages).
    expect(body).toEqual({
      model: "claude-sonnet-4-5-20250929",
      max_tokens: 300,
      system: "You are terse.\n\nUse tools.",
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "What is in these pictures, and the weather in Paris?" },
            { type: "image", source: { type: "url", url: "https://example.com/cat.jpg" } },
            { type: "image", source: { type: "base64", media_type: "image/png", data: PNG } }
          ]
        },
        {
          role: "assistant",
          content: [
            { type: "text", text: "Checking." },
            { type: "tool_use", id: "toolu_1", name: "weather", input: { city: "Paris" } },
            { type: "tool_use", id: "toolu_2", name: "time", input: {} }
          ]
        },
        {
          role: "user",
          content: [
            { type: "tool_result", tool_use_id: "toolu_1", content: "18C" },
            { type: "tool_result", tool_use_id: "toolu_2", content: "noon" }
          ]
        },
        { role: "assistant", content: "A cat; 18C at noon." },
        { role: "user", content: "Thanks" }
      ],
      temperature: 0.5,
      top_p: 0.9,
      stop_sequences: ["END"],
      stream: true,
      metadata: { user_id: "user-42" },
      tools: [
        {
          name: "weather",
          description: "Current weather",
          input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
        },
        { name: "time", input_schema: { type: "object", properties: {} } }
      ],
      tool_choice: { type: "tool", name: "weather", disable_parallel_tool_use: true }
    })
  })

  it("gives max_tokens a default (required by Anthropic), else takes max_completion_tokens over max_tokens", () => {
    const plain = ok({ messages: [{ role: "user", content: "hi" }] })
    expect(plain).toEqual({
      model: "claude-sonnet-4-5-20250929",
      max_tokens: Anthropic.DEFAULT_MAX_TOKENS,
      messages: [{ role: "user", content: "hi" }]
    })
    expect(ok({ messages: [{ role: "user", content: "hi" }], max_tokens: 50 })["max_tokens"]).toBe(50)
    expect(ok({ messages: [{ role: "user", content: "hi" }], max_tokens: 50, max_completion_tokens: 70 })["max_tokens"]).toBe(70)
    const custom = Anthropic.toRequest(decode({ model: "m", messages: [{ role: "user", content: "hi" }] }), {
      model: "m",
      defaultMaxTokens: 1000
    })
    expect(Either.getOrThrow(custom)["max_tokens"]).toBe(1000)
  })

  it("maps tool_choice auto, required and none", () => {
    const tools = [{ type: "function", function: { name: "f" } }]
    const m = [{ role: "user", content: "hi" }]
    expect(ok({ messages: m, tools, tool_choice: "auto" })["tool_choice"]).toEqual({ type: "auto" })
    expect(ok({ messages: m, tools, tool_choice: "required" })["tool_choice"]).toEqual({ type: "any" })
    expect(ok({ messages: m, tools, tool_choice: "none" })["tool_choice"]).toEqual({ type: "none" })
    expect(ok({ messages: m, tools, parallel_tool_calls: false })["tool_choice"]).toEqual({
      type: "auto",
      disable_parallel_tool_use: true
    })
    expect(ok({ messages: m, tools })["tool_choice"]).toBeUndefined()
  })

  it("accepts fields whose value changes nothing (n: 1, logprobs: false, zero penalties)", () => {
    const body = ok({
      messages: [{ role: "user", content: "hi" }],
      n: 1,
      logprobs: false,
      presence_penalty: 0,
      frequency_penalty: 0,
      response_format: { type: "text" },
      store: false
    })
    expect(body).toEqual({ model: "claude-sonnet-4-5-20250929", max_tokens: 4096, messages: [{ role: "user", content: "hi" }] })
  })

  it("refuses what it cannot translate, naming the field", () => {
    const m = [{ role: "user", content: "hi" }]
    expect(refused({ messages: m, logprobs: true })).toMatchObject({ provider: "anthropic", field: "logprobs" })
    expect(refused({ messages: m, n: 2 }).field).toBe("n")
    expect(refused({ messages: m, seed: 7 }).field).toBe("seed")
    expect(refused({ messages: m, presence_penalty: 0.5 }).field).toBe("presence_penalty")
    expect(refused({ messages: m, temperature: 1.5 }).field).toBe("temperature")
    expect(refused({ messages: m, response_format: { type: "json_object" } }).field).toBe("response_format")
    expect(refused({ messages: m, web_search_options: {} }).field).toBe("web_search_options")
    const audio = refused({
      messages: [{ role: "user", content: [{ type: "input_audio", input_audio: { data: "AAAA", format: "wav" } }] }]
    })
    expect(audio.field).toBe("messages[0].content[0].type")
    expect(audio.message).toBe(
      "'messages[0].content[0].type' cannot be sent to Anthropic: content parts of type 'input_audio' have no Anthropic equivalent"
    )
    const args = refused({
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", tool_calls: [{ id: "a", type: "function", function: { name: "f", arguments: "[1]" } }] }
      ]
    })
    expect(args.field).toBe("messages[1].tool_calls[0].function.arguments")
    const tiff = [{ type: "image_url", image_url: { url: "data:image/tiff;base64,AAAA" } }]
    expect(refused({ messages: [{ role: "user", content: tiff }] }).field).toBe("messages[0].content[0].image_url.url")
  })
})

describe("Anthropic responses", () => {
  it("translates text, tool use, stop reason and usage with cache tokens", () => {
    const text = JSON.stringify({
      id: "msg_01",
      type: "message",
      role: "assistant",
      model: "claude-sonnet-4-5-20250929",
      content: [
        { type: "text", text: "Let me check." },
        { type: "tool_use", id: "toolu_9", name: "weather", input: { city: "Paris" } }
      ],
      stop_reason: "tool_use",
      stop_sequence: null,
      usage: { input_tokens: 10, cache_creation_input_tokens: 5, cache_read_input_tokens: 20, output_tokens: 7 }
    })
    const r = Anthropic.fromResponse(text, { model: "claude-sonnet-4.5", created: 1700000000 })
    expect(r).toEqual({
      _tag: "Ok",
      json: {
        id: "msg_01",
        object: "chat.completion",
        created: 1700000000,
        model: "claude-sonnet-4.5",
        choices: [{
          index: 0,
          message: {
            role: "assistant",
            content: "Let me check.",
            tool_calls: [{ id: "toolu_9", type: "function", function: { name: "weather", arguments: "{\"city\":\"Paris\"}" } }]
          },
          finish_reason: "tool_calls",
          logprobs: null
        }],
        usage: { prompt_tokens: 35, completion_tokens: 7, total_tokens: 42, prompt_tokens_details: { cached_tokens: 20 } }
      }
    })
    // The relay's own check of a completion accepts it, with its usage.
    const inspected = OpenAI.inspectChatCompletion(JSON.stringify(r._tag === "Ok" ? r.json : null))
    expect(inspected._tag).toBe("Ok")
  })

  it("maps every stop_reason to a finish_reason", () => {
    expect(Anthropic.finishReason("end_turn")).toBe("stop")
    expect(Anthropic.finishReason("stop_sequence")).toBe("stop")
    expect(Anthropic.finishReason("max_tokens")).toBe("length")
    expect(Anthropic.finishReason("tool_use")).toBe("tool_calls")
    expect(Anthropic.finishReason("refusal")).toBe("content_filter")
    expect(Anthropic.finishReason("pause_turn")).toBe("stop")
  })

  it("calls a body that is not a message invalid", () => {
    expect(Anthropic.fromResponse("{\"type\":\"message\"", { model: "m", created: 0 })._tag).toBe("Invalid")
    expect(Anthropic.fromResponse("{\"type\":\"message\"}", { model: "m", created: 0 })).toEqual({
      _tag: "Invalid",
      reason: "body is not a message (no content)"
    })
  })
})

describe("Anthropic errors", () => {
  const body = (type: string, message: string) => JSON.stringify({ type: "error", error: { type, message } })
  const NOW = Date.UTC(2026, 0, 1)

  it("429 is a rate limit with its retry-after", () => {
    const e = Anthropic.errorFrom("claude", 429, { "retry-after": "7" }, body("rate_limit_error", "Slow down"), NOW)
    expect(e._tag).toBe("UpstreamRateLimited")
    expect(e.retryable).toBe(true)
    expect(e._tag === "UpstreamRateLimited" && e.retryAfter && Duration.toMillis(e.retryAfter)).toBe(7000)
  })

  it("529 overloaded_error and 500 are retryable server errors", () => {
    const e = Anthropic.errorFrom("claude", 529, {}, body("overloaded_error", "Overloaded"), NOW)
    expect(e).toMatchObject({ _tag: "UpstreamServerError", status: 529, retryable: true })
    expect(Anthropic.errorFrom("claude", 500, {}, body("api_error", "boom"), NOW)).toMatchObject({
      _tag: "UpstreamServerError",
      status: 500
    })
  })

  it("400 is the caller's, relayed as an OpenAI error body", () => {
    const e = Anthropic.errorFrom("claude", 400, {}, body("invalid_request_error", "messages: roles must alternate"), NOW)
    expect(e._tag).toBe("UpstreamRejected")
    expect(e.retryable).toBe(false)
    if (e._tag !== "UpstreamRejected") return
    expect(e.contentType).toBe("application/json")
    expect(JSON.parse(e.body)).toEqual({
      error: {
        message: "messages: roles must alternate",
        type: "invalid_request_error",
        param: null,
        code: "invalid_request_error"
      }
    })
  })

  it("401/403 refuse the gateway's key; 404 about a model and a spent credit balance move on", () => {
    expect(Anthropic.errorFrom("c", 401, {}, body("authentication_error", "invalid x-api-key"), NOW)._tag).toBe(
      "UpstreamAuthFailed"
    )
    expect(Anthropic.errorFrom("c", 403, {}, body("permission_error", "no"), NOW)._tag).toBe("UpstreamAuthFailed")
    expect(Anthropic.errorFrom("c", 404, {}, body("not_found_error", "model: claude-9"), NOW)._tag).toBe(
      "UpstreamModelNotFound"
    )
    expect(Anthropic.errorFrom("c", 404, {}, body("not_found_error", "Not found"), NOW)._tag).toBe("UpstreamRejected")
    expect(
      Anthropic.errorFrom("c", 400, {}, body("invalid_request_error", "Your credit balance is too low to access the Anthropic API."), NOW)
    ).toMatchObject({ _tag: "QuotaExhausted", code: "insufficient_quota" })
  })

  it("anthropic-ratelimit-* headers steer headroom as OpenAI's x-ratelimit-* do", () => {
    const headers = Anthropic.rateLimitHeaders({
      "anthropic-ratelimit-requests-remaining": "0",
      "anthropic-ratelimit-requests-reset": new Date(NOW + 12_000).toISOString(),
      "anthropic-ratelimit-tokens-remaining": "5000",
      "anthropic-ratelimit-tokens-reset": new Date(NOW + 30_000).toISOString(),
      "anthropic-ratelimit-output-tokens-remaining": "0",
      "anthropic-ratelimit-output-tokens-reset": new Date(NOW + 45_000).toISOString()
    }, NOW)
    expect(headers["x-ratelimit-remaining-requests"]).toBe("0")
    expect(headers["x-ratelimit-reset-requests"]).toBe("12000ms")
    expect(headers["x-ratelimit-remaining-tokens"]).toBe("0")
    expect(headers["x-ratelimit-reset-tokens"]).toBe("45000ms")
    expect(Duration.toMillis(Cooldown.headroomCooldown(headers)!)).toBe(45_000)
    expect(Cooldown.headroomCooldown(Anthropic.rateLimitHeaders({ "anthropic-ratelimit-requests-remaining": "9" }, NOW)))
      .toBeUndefined()
  })
})

// ---------------------------------------------------------------------------
// Streams

const event = (type: string, data: unknown) => `event: ${type}\ndata: ${JSON.stringify(data)}\n\n`

/** A Messages API stream: text with a multi-byte character, then a tool call in JSON pieces. */
const STREAM = [
  event("message_start", {
    type: "message_start",
    message: {
      id: "msg_1",
      type: "message",
      role: "assistant",
      content: [],
      model: "claude-sonnet-4-5",
      stop_reason: null,
      stop_sequence: null,
      usage: { input_tokens: 25, cache_read_input_tokens: 100, output_tokens: 1 }
    }
  }),
  event("content_block_start", { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } }),
  event("ping", { type: "ping" }),
  event("content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Héllo " } }),
  event("content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "wörld 🌍" } }),
  event("content_block_stop", { type: "content_block_stop", index: 0 }),
  event("content_block_start", {
    type: "content_block_start",
    index: 1,
    content_block: { type: "tool_use", id: "toolu_1", name: "weather", input: {} }
  }),
  event("content_block_delta", { type: "content_block_delta", index: 1, delta: { type: "input_json_delta", partial_json: "" } }),
  event("content_block_delta", { type: "content_block_delta", index: 1, delta: { type: "input_json_delta", partial_json: "{\"city\": " } }),
  event("content_block_delta", { type: "content_block_delta", index: 1, delta: { type: "input_json_delta", partial_json: "\"Paris\"}" } }),
  event("content_block_stop", { type: "content_block_stop", index: 1 }),
  event("message_delta", { type: "message_delta", delta: { stop_reason: "tool_use", stop_sequence: null }, usage: { output_tokens: 15 } }),
  event("message_stop", { type: "message_stop" })
].join("")

const options = { model: "claude-sonnet-4.5", created: 1700000000, includeUsage: true }

const base = { id: "msg_1", object: "chat.completion.chunk", created: 1700000000, model: "claude-sonnet-4.5" }
const choice = (delta: unknown, finish: string | null = null) => ({
  ...base,
  choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }]
})

const EXPECTED = [
  choice({ role: "assistant", content: "" }),
  choice({ content: "Héllo " }),
  choice({ content: "wörld 🌍" }),
  choice({ tool_calls: [{ index: 0, id: "toolu_1", type: "function", function: { name: "weather", arguments: "" } }] }),
  choice({ tool_calls: [{ index: 0, function: { arguments: "{\"city\": " } }] }),
  choice({ tool_calls: [{ index: 0, function: { arguments: "\"Paris\"}" } }] }),
  choice({}, "tool_calls"),
  {
    ...base,
    choices: [],
    usage: { prompt_tokens: 125, completion_tokens: 15, total_tokens: 140, prompt_tokens_details: { cached_tokens: 100 } }
  }
]

/** The SSE text's events: JSON payloads, and "[DONE]" as such. */
const events = (text: string) =>
  text.split("\n\n").filter((e) => e !== "").map((e) => {
    expect(e.startsWith("data: ")).toBe(true)
    const data = e.slice(6)
    return data === "[DONE]" ? data : JSON.parse(data)
  })

const bytes = new TextEncoder().encode(STREAM)

/** `bytes` cut at the given offsets (sorted, deduplicated). */
const split = (data: Uint8Array, cuts: ReadonlyArray<number>): Array<Uint8Array> => {
  const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b)
  const out: Array<Uint8Array> = []
  let at = 0
  for (const p of points) {
    out.push(data.subarray(at, p))
    at = p
  }
  out.push(data.subarray(at))
  return out
}

describe("Anthropic streams", () => {
  it("translates a stream into OpenAI chunks ending in [DONE]", () => {
    const t = Anthropic.streamTranslator(options)
    const text = t.feed(bytes) + t.end()
    expect(events(text)).toEqual([...EXPECTED, "[DONE]"])
    expect(t.complete()).toBe(true)
    expect(t.error()).toBeUndefined()
  })

  it("leaves out the usage chunk unless asked", () => {
    const t = Anthropic.streamTranslator({ ...options, includeUsage: false })
    expect(events(t.feed(bytes) + t.end())).toEqual([...EXPECTED.slice(0, -1), "[DONE]"])
  })

  it.prop(
    "any split of the byte stream yields the same chunks",
    [FastCheck.array(FastCheck.nat(), { maxLength: 40 })],
    ([cuts]) => {
      const t = Anthropic.streamTranslator(options)
      let text = ""
      for (const piece of split(bytes, cuts)) text += t.feed(piece)
      text += t.end()
      expect(events(text)).toEqual([...EXPECTED, "[DONE]"])
    },
    { fastCheck: { numRuns: 200 } }
  )

  it.effect.prop(
    "as an Effect Stream, split into single bytes or any pieces, the output is the same",
    [FastCheck.array(FastCheck.nat(), { maxLength: 300 })],
    ([cuts]) =>
      Effect.gen(function*() {
        const body = Stream.fromIterable(split(bytes, cuts))
        const out = yield* Stream.runCollect(translateStream(body, Anthropic.streamTranslator(options)))
        expect(events(Chunk.join(out, ""))).toEqual([...EXPECTED, "[DONE]"])
      }),
    { fastCheck: { numRuns: 50 } }
  )

  it("an error event ends the stream with an OpenAI error event, without [DONE]", () => {
    const t = Anthropic.streamTranslator(options)
    const text = t.feed(
      STREAM.split("event: content_block_stop")[0]! +
        event("error", { type: "error", error: { type: "overloaded_error", message: "Overloaded" } }) +
        event("message_stop", { type: "message_stop" })
    ) + t.end()
    const out = events(text)
    expect(out.slice(0, 3)).toEqual(EXPECTED.slice(0, 3))
    expect(out.at(-1)).toEqual({
      error: { message: "Overloaded", type: "overloaded_error", param: null, code: "overloaded_error" }
    })
    expect(out).not.toContain("[DONE]")
    expect(t.complete()).toBe(false)
    expect(t.error()).toEqual({ type: "overloaded_error", message: "Overloaded" })
    // The relay's check of a stream chunk sees the error.
    expect(OpenAI.inspectStreamChunk(JSON.stringify(out.at(-1)))._tag).toBe("Error")
  })

  it("an error right after message_start is the first event sent, so that the relay can still fail over", () => {
    const t = Anthropic.streamTranslator(options)
    const text = t.feed(
      STREAM.slice(0, STREAM.indexOf("event: content_block_start")) +
        event("error", { type: "error", error: { type: "overloaded_error", message: "Overloaded" } })
    ) + t.end()
    const out = events(text)
    expect(out).toEqual([{ error: { message: "Overloaded", type: "overloaded_error", param: null, code: "overloaded_error" } }])
    expect(OpenAI.inspectStreamChunk(JSON.stringify(out[0]))._tag).toBe("Error")
  })

  it("a stream cut before message_stop is not complete and sends no [DONE]", () => {
    const t = Anthropic.streamTranslator(options)
    const text = t.feed(STREAM.slice(0, STREAM.indexOf("event: message_delta"))) + t.end()
    expect(events(text)).not.toContain("[DONE]")
    expect(t.complete()).toBe(false)
  })
})
