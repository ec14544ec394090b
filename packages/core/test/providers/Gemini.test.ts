import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as OpenAI from "../../src/OpenAI.js"
import * as Gemini from "../../src/providers/Gemini.js"
import type { UntranslatableField } from "../../src/providers/Translation.js"

const decode = (body: unknown): OpenAI.ChatCompletionRequest => {
  const r = OpenAI.decodeChatRequest(body)
  if (Either.isLeft(r)) throw new Error(r.left.message)
  return r.right
}

const translate = (body: Record<string, unknown>) =>
  Gemini.toRequest(decode({ model: "gemini-2.5-flash", ...body }), { model: "gemini-2.5-flash" })

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

describe("Gemini requests", () => {
  it("paths: generateContent, streamGenerateContent with alt=sse", () => {
    expect(Gemini.chatPath("gemini-2.5-flash", false)).toBe("/models/gemini-2.5-flash:generateContent")
    expect(Gemini.chatPath("models/gemini-2.5-flash", true)).toBe("/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    expect(Gemini.headers("k")).toEqual({ "x-goog-api-key": "k" })
  })

  it("translates a conversation with system, images, tools and tool results to the generateContent shape", () => {
    const schema = { type: "object", properties: { answer: { type: "string" } }, required: ["answer"] }
    const body = ok({
      messages: [
        { role: "system", content: "You are terse." },
        { role: "developer", content: "Use tools." },
        {
          role: "user",
          content: [
            { type: "text", text: "What is this, and the weather in Paris?" },
            { type: "image_url", image_url: { url: `data:image/png;base64,${PNG}` } },
            { type: "input_audio", input_audio: { data: "UklGRg==", format: "wav" } }
          ]
        },
        {
          role: "assistant",
          content: null,
          tool_calls: [
            { id: "call_1", type: "function", function: { name: "weather", arguments: "{\"city\":\"Paris\"}" } },
            { id: "call_2", type: "function", function: { name: "time", arguments: "{}" } }
          ]
        },
        { role: "tool", tool_call_id: "call_1", content: "{\"celsius\":18}" },
        { role: "tool", tool_call_id: "call_2", content: "noon" },
        { role: "assistant", content: "A dot; 18C at noon." },
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
      temperature: 1.5,
      top_p: 0.9,
      n: 2,
      seed: 7,
      presence_penalty: 0.5,
      frequency_penalty: -0.5,
      stop: ["END", "STOP"],
      max_tokens: 300,
      response_format: { type: "json_schema", json_schema: { name: "a", schema } },
      stream: true,
      user: "u-1"
    })
    // The generateContent request, field by field (ai.google.dev/api/generate-content).
    expect(body).toEqual({
      contents: [
        {
          role: "user",
          parts: [
            { text: "What is this, and the weather in Paris?" },
            { inlineData: { mimeType: "image/png", data: PNG } },
            { inlineData: { mimeType: "audio/wav", data: "UklGRg==" } }
          ]
        },
        {
          role: "model",
          parts: [
            { functionCall: { name: "weather", args: { city: "Paris" } } },
            { functionCall: { name: "time", args: {} } }
          ]
        },
        {
          role: "user",
          parts: [
            { functionResponse: { name: "weather", response: { celsius: 18 } } },
            { functionResponse: { name: "time", response: { content: "noon" } } }
          ]
        },
        { role: "model", parts: [{ text: "A dot; 18C at noon." }] },
        { role: "user", parts: [{ text: "Thanks" }] }
      ],
      systemInstruction: { parts: [{ text: "You are terse." }, { text: "Use tools." }] },
      tools: [{
        functionDeclarations: [
          {
            name: "weather",
            description: "Current weather",
            parametersJsonSchema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
          },
          { name: "time" }
        ]
      }],
      toolConfig: { functionCallingConfig: { mode: "ANY", allowedFunctionNames: ["weather"] } },
      generationConfig: {
        maxOutputTokens: 300,
        temperature: 1.5,
        topP: 0.9,
        candidateCount: 2,
        seed: 7,
        presencePenalty: 0.5,
        frequencyPenalty: -0.5,
        stopSequences: ["END", "STOP"],
        responseMimeType: "application/json",
        responseJsonSchema: schema
      }
    })
  })

  it("a plain request has only contents; json_object asks for JSON; tool_choice modes", () => {
    expect(ok({ messages: [{ role: "user", content: "hi" }] })).toEqual({ contents: [{ role: "user", parts: [{ text: "hi" }] }] })
    expect(ok({ messages: [{ role: "user", content: "hi" }], response_format: { type: "json_object" } })["generationConfig"])
      .toEqual({ responseMimeType: "application/json" })
    const m = [{ role: "user", content: "hi" }]
    const tools = [{ type: "function", function: { name: "f" } }]
    expect(ok({ messages: m, tools, tool_choice: "auto" })["toolConfig"]).toEqual({ functionCallingConfig: { mode: "AUTO" } })
    expect(ok({ messages: m, tools, tool_choice: "required" })["toolConfig"]).toEqual({ functionCallingConfig: { mode: "ANY" } })
    expect(ok({ messages: m, tools, tool_choice: "none" })["toolConfig"]).toEqual({ functionCallingConfig: { mode: "NONE" } })
  })

  it("an https image URL is fileData with the type its path names (Gemini fetches public and signed URLs)", () => {
    expect(ok({
      messages: [{
        role: "user",
        content: [
          { type: "image_url", image_url: { url: "https://example.com/cat.JPG" } },
          { type: "image_url", image_url: { url: "https://bucket.s3.example/a/b.png?X-Amz-Signature=abc&x=.jpg", detail: "high" } },
          { type: "image_url", image_url: { url: "https://example.com/c.webp#frag" } }
        ]
      }]
    })).toEqual({
      contents: [{
        role: "user",
        parts: [
          { fileData: { mimeType: "image/jpeg", fileUri: "https://example.com/cat.JPG" } },
          { fileData: { mimeType: "image/png", fileUri: "https://bucket.s3.example/a/b.png?X-Amz-Signature=abc&x=.jpg" } },
          { fileData: { mimeType: "image/webp", fileUri: "https://example.com/c.webp#frag" } }
        ]
      }]
    })
  })

  it("refuses what it cannot translate, naming the field", () => {
    const m = [{ role: "user", content: "hi" }]
    expect(refused({ messages: m, logprobs: true })).toMatchObject({ provider: "gemini", field: "logprobs" })
    expect(refused({ messages: m, logit_bias: { "1": 5 } }).field).toBe("logit_bias")
    expect(refused({ messages: m, parallel_tool_calls: false }).field).toBe("parallel_tool_calls")
    expect(refused({ messages: m, modalities: ["text", "audio"] }).field).toBe("modalities")
    const url = refused({
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "https://example.com/image?id=7" } }] }]
    })
    expect(url.field).toBe("messages[0].content[0].image_url.url")
    expect(url.message).toBe(
      "'messages[0].content[0].image_url.url' cannot be sent to Gemini: Gemini needs an image URL's type: " +
        "give an https URL whose path ends in .png, .jpg, .jpeg, .webp, .heic or .heif, or a base64 data URL"
    )
    const plainHttp = refused({
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "http://example.com/cat.png" } }] }]
    })
    expect(plainHttp.field).toBe("messages[0].content[0].image_url.url")
    expect(refused({ messages: [{ role: "user", content: "hi" }, { role: "tool", tool_call_id: "nope", content: "x" }] }).field)
      .toBe("messages[1].tool_call_id")
  })
})

describe("Gemini responses", () => {
  it("translates candidates, function calls, finish reasons and usage (thoughts as output, cached content)", () => {
    const text = JSON.stringify({
      candidates: [
        {
          content: {
            role: "model",
            parts: [
              { text: "thinking...", thought: true },
              { text: "Let me check." },
              { functionCall: { name: "weather", args: { city: "Paris" } } }
            ]
          },
          finishReason: "STOP",
          index: 0
        },
        { content: { role: "model", parts: [{ text: "Too long" }] }, finishReason: "MAX_TOKENS", index: 1 }
      ],
      usageMetadata: {
        promptTokenCount: 40,
        candidatesTokenCount: 10,
        thoughtsTokenCount: 5,
        cachedContentTokenCount: 30,
        totalTokenCount: 55
      },
      modelVersion: "gemini-2.5-flash",
      responseId: "resp-1"
    })
    expect(Gemini.fromResponse(text, { model: "gemini-2.5-flash", created: 1700000000 })).toEqual({
      _tag: "Ok",
      json: {
        id: "resp-1",
        object: "chat.completion",
        created: 1700000000,
        model: "gemini-2.5-flash",
        choices: [
          {
            index: 0,
            message: {
              role: "assistant",
              content: "Let me check.",
              tool_calls: [{
                id: "call_resp-1_0_0",
                type: "function",
                function: { name: "weather", arguments: "{\"city\":\"Paris\"}" }
              }]
            },
            finish_reason: "tool_calls",
            logprobs: null
          },
          { index: 1, message: { role: "assistant", content: "Too long" }, finish_reason: "length", logprobs: null }
        ],
        usage: { prompt_tokens: 40, completion_tokens: 15, total_tokens: 55, prompt_tokens_details: { cached_tokens: 30 } }
      }
    })
  })

  it("a blocked prompt is a refusal with content_filter; no candidates otherwise is invalid", () => {
    const blocked = Gemini.fromResponse(JSON.stringify({ promptFeedback: { blockReason: "SAFETY" } }), { model: "g", created: 0 })
    expect(blocked._tag === "Ok" && blocked.json["choices"]).toEqual([{
      index: 0,
      message: { role: "assistant", content: null, refusal: "prompt blocked by Gemini (SAFETY)" },
      finish_reason: "content_filter",
      logprobs: null
    }])
    expect(blocked._tag === "Ok" && OpenAI.inspectChatCompletion(JSON.stringify(blocked.json))._tag).toBe("Ok")
    expect(Gemini.fromResponse("{}", { model: "g", created: 0 })).toEqual({ _tag: "Invalid", reason: "body has no candidates" })
    expect(Gemini.finishReason("SAFETY", false)).toBe("content_filter")
    expect(Gemini.finishReason("RECITATION", false)).toBe("content_filter")
    expect(Gemini.finishReason("STOP", false)).toBe("stop")
    expect(Gemini.finishReason("OTHER", false)).toBe("stop")
  })
})

describe("Gemini errors", () => {
  const NOW = Date.UTC(2026, 0, 1)
  const body = (code: number, status: string, message: string, details: Array<unknown> = []) =>
    JSON.stringify({ error: { code, message, status, details } })

  it("RESOURCE_EXHAUSTED is a rate limit, with RetryInfo's delay", () => {
    const e = Gemini.errorFrom("g", 429, {}, body(429, "RESOURCE_EXHAUSTED", "Quota exceeded", [
      { "@type": "type.googleapis.com/google.rpc.RetryInfo", retryDelay: "31s" }
    ]), NOW)
    expect(e._tag).toBe("UpstreamRateLimited")
    expect(e._tag === "UpstreamRateLimited" && e.retryAfter && Duration.toMillis(e.retryAfter)).toBe(31_000)
    const header = Gemini.errorFrom("g", 429, { "retry-after": "3" }, body(429, "RESOURCE_EXHAUSTED", "slow"), NOW)
    expect(header._tag === "UpstreamRateLimited" && header.retryAfter && Duration.toMillis(header.retryAfter)).toBe(3000)
  })

  it("a per-day quota is a spent quota", () => {
    const e = Gemini.errorFrom("g", 429, {}, body(429, "RESOURCE_EXHAUSTED", "Quota exceeded", [
      {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        violations: [{ quotaId: "GenerateRequestsPerDayPerProjectPerModel-FreeTier" }]
      }
    ]), NOW)
    expect(e).toMatchObject({ _tag: "QuotaExhausted", code: "insufficient_quota" })
  })

  it("UNAVAILABLE and INTERNAL are retryable server errors", () => {
    expect(Gemini.errorFrom("g", 503, {}, body(503, "UNAVAILABLE", "The model is overloaded."), NOW)).toMatchObject({
      _tag: "UpstreamServerError",
      status: 503,
      retryable: true
    })
    expect(Gemini.errorFrom("g", 500, {}, body(500, "INTERNAL", "boom"), NOW)._tag).toBe("UpstreamServerError")
  })

  it("an invalid key, 403; a missing model; and the caller's 400 relayed as an OpenAI body", () => {
    expect(Gemini.errorFrom("g", 400, {}, JSON.stringify({
      error: {
        code: 400,
        message: "API key not valid. Please pass a valid API key.",
        status: "INVALID_ARGUMENT",
        details: [{ "@type": "type.googleapis.com/google.rpc.ErrorInfo", reason: "API_KEY_INVALID" }]
      }
    }), NOW)._tag).toBe("UpstreamAuthFailed")
    expect(Gemini.errorFrom("g", 403, {}, body(403, "PERMISSION_DENIED", "no"), NOW)._tag).toBe("UpstreamAuthFailed")
    expect(
      Gemini.errorFrom("g", 404, {}, body(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"), NOW)._tag
    ).toBe("UpstreamModelNotFound")
    const e = Gemini.errorFrom("g", 400, {}, body(400, "INVALID_ARGUMENT", "Invalid JSON payload received."), NOW)
    expect(e._tag).toBe("UpstreamRejected")
    expect(e._tag === "UpstreamRejected" && JSON.parse(e.body)).toEqual({
      error: { message: "Invalid JSON payload received.", type: "invalid_request_error", param: null, code: "INVALID_ARGUMENT" }
    })
  })
})

// ---------------------------------------------------------------------------
// Streams

const data = (json: unknown) => `data: ${JSON.stringify(json)}\r\n\r\n`

const STREAM = [
  data({
    candidates: [{ content: { role: "model", parts: [{ text: "Héllo " }] }, index: 0 }],
    usageMetadata: { promptTokenCount: 12, totalTokenCount: 12 },
    responseId: "r1"
  }),
  data({ candidates: [{ content: { role: "model", parts: [{ text: "wörld 🌍" }] }, index: 0 }], responseId: "r1" }),
  data({
    candidates: [{
      content: { role: "model", parts: [{ functionCall: { name: "weather", args: { city: "Paris" } } }] },
      finishReason: "STOP",
      index: 0
    }],
    usageMetadata: { promptTokenCount: 12, candidatesTokenCount: 9, totalTokenCount: 21 },
    responseId: "r1"
  })
].join("")

const base = { id: "r1", object: "chat.completion.chunk", created: 1700000000, model: "gemini-2.5-flash" }
const choice = (delta: unknown, finish: string | null = null) => ({
  ...base,
  choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }]
})
const EXPECTED = [
  choice({ role: "assistant", content: "" }),
  choice({ content: "Héllo " }),
  choice({ content: "wörld 🌍" }),
  choice({
    tool_calls: [{ index: 0, id: "call_r1_0_0", type: "function", function: { name: "weather", arguments: "{\"city\":\"Paris\"}" } }]
  }),
  choice({}, "tool_calls"),
  { ...base, choices: [], usage: { prompt_tokens: 12, completion_tokens: 9, total_tokens: 21 } },
  "[DONE]"
]

const events = (text: string) =>
  text.split("\n\n").filter((e) => e !== "").map((e) => {
    const payload = e.slice(6)
    return payload === "[DONE]" ? payload : JSON.parse(payload)
  })

const bytes = new TextEncoder().encode(STREAM)
const options = { model: "gemini-2.5-flash", created: 1700000000, includeUsage: true }

describe("Gemini streams", () => {
  it("translates streamGenerateContent events into OpenAI chunks, [DONE] at the end", () => {
    const t = Gemini.streamTranslator(options)
    const text = t.feed(bytes) + t.end()
    expect(events(text)).toEqual(EXPECTED)
    expect(t.complete()).toBe(true)
  })

  it.prop(
    "any split of the byte stream yields the same chunks",
    [FastCheck.array(FastCheck.nat(), { maxLength: 40 })],
    ([cuts]) => {
      const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)
      const t = Gemini.streamTranslator(options)
      let text = ""
      let at = 0
      for (const p of points) {
        text += t.feed(bytes.subarray(at, p))
        at = p
      }
      text += t.feed(bytes.subarray(at)) + t.end()
      expect(events(text)).toEqual(EXPECTED)
    },
    { fastCheck: { numRuns: 200 } }
  )

  it("a stream that ends before a finishReason is not complete: no [DONE]", () => {
    const t = Gemini.streamTranslator(options)
    const text = t.feed(STREAM.slice(0, STREAM.lastIndexOf("data: "))) + t.end()
    expect(events(text)).toEqual(EXPECTED.slice(0, 3))
    expect(t.complete()).toBe(false)
  })

  it("an error object in the stream ends it with an OpenAI error event", () => {
    const t = Gemini.streamTranslator(options)
    const text = t.feed(STREAM.slice(0, STREAM.indexOf("data: ", 10)) +
      data({ error: { code: 503, message: "The model is overloaded.", status: "UNAVAILABLE" } })) + t.end()
    const out = events(text)
    expect(out.at(-1)).toEqual({
      error: { message: "The model is overloaded.", type: "UNAVAILABLE", param: null, code: "UNAVAILABLE" }
    })
    expect(out).not.toContain("[DONE]")
    expect(t.error()).toEqual({ type: "UNAVAILABLE", message: "The model is overloaded." })
  })
})

// ---------------------------------------------------------------------------
// Embeddings

const embeddings = (body: unknown) => {
  const r = OpenAI.decodeEmbeddingsRequest(body)
  if (Either.isLeft(r)) throw new Error(r.left.message)
  return r.right
}

describe("Gemini embeddings", () => {
  it("one text is embedContent, several are batchEmbedContents", () => {
    const one = Gemini.toEmbeddingsRequest(embeddings({ model: "text-embedding-004", input: "hello", dimensions: 256 }), {
      model: "text-embedding-004"
    })
    expect(Either.getOrThrow(one)).toEqual({
      path: "/models/text-embedding-004:embedContent",
      body: { content: { parts: [{ text: "hello" }] }, outputDimensionality: 256 }
    })
    const many = Gemini.toEmbeddingsRequest(embeddings({ model: "e", input: ["a", "b"] }), { model: "gemini-embedding-001" })
    expect(Either.getOrThrow(many)).toEqual({
      path: "/models/gemini-embedding-001:batchEmbedContents",
      body: {
        requests: [
          { model: "models/gemini-embedding-001", content: { parts: [{ text: "a" }] } },
          { model: "models/gemini-embedding-001", content: { parts: [{ text: "b" }] } }
        ]
      }
    })
    const tokens = Gemini.toEmbeddingsRequest(embeddings({ model: "e", input: [1, 2, 3] }), { model: "e" })
    expect(Either.isLeft(tokens) && tokens.left.field).toBe("input")
  })

  it("answers become an OpenAI list, floats or base64, with estimated usage", () => {
    const request = embeddings({ model: "e", input: ["abcd", "efgh"] })
    const r = Gemini.fromEmbeddingsResponse(
      JSON.stringify({ embeddings: [{ values: [0.5, -1] }, { values: [0.25, 2] }] }),
      request,
      { model: "e" }
    )
    expect(r).toEqual({
      _tag: "Ok",
      json: {
        object: "list",
        data: [
          { object: "embedding", index: 0, embedding: [0.5, -1] },
          { object: "embedding", index: 1, embedding: [0.25, 2] }
        ],
        model: "e",
        usage: { prompt_tokens: 2, total_tokens: 2 }
      }
    })
    expect(r._tag === "Ok" && OpenAI.inspectEmbeddings(JSON.stringify(r.json))._tag).toBe("Ok")
    const b64 = Gemini.fromEmbeddingsResponse(
      JSON.stringify({ embedding: { values: [0.5, -1] } }),
      embeddings({ model: "e", input: "x", encoding_format: "base64" }),
      { model: "e" }
    )
    const encoded = b64._tag === "Ok" ? (b64.json["data"] as any)[0].embedding : ""
    expect(Array.from(new Float32Array(new Uint8Array(Buffer.from(encoded, "base64")).buffer))).toEqual([0.5, -1])
    expect(Gemini.fromEmbeddingsResponse("{}", request, { model: "e" })._tag).toBe("Invalid")
  })
})
