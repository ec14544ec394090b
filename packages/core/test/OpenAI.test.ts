import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import * as OpenAI from "../src/OpenAI.js"

// ---------------------------------------------------------------------------
// helpers

const user = (content: string) => ({ role: "user", content })

const base = { model: "gpt-4.1", messages: [user("What is 2 + 2?")] }

/** The decoded request; fails the test with the error when decoding fails. */
const decodeOk = (body: unknown): OpenAI.ChatCompletionRequest => {
  const result = OpenAI.decodeChatRequest(body)
  if (Either.isLeft(result)) throw new Error(`expected a valid request, got ${result.left.message}`)
  return result.right
}

/** The error of an invalid request; fails the test when decoding succeeds. */
const decodeErr = (body: unknown): OpenAI.InvalidRequest => {
  const result = OpenAI.decodeChatRequest(body)
  if (Either.isRight(result)) throw new Error(`expected an invalid request: ${JSON.stringify(body)}`)
  return result.left
}

const embeddingsErr = (body: unknown): OpenAI.InvalidRequest => {
  const result = OpenAI.decodeEmbeddingsRequest(body)
  if (Either.isRight(result)) throw new Error(`expected an invalid request: ${JSON.stringify(body)}`)
  return result.left
}

const completion = (message: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    id: "chatcmpl-1",
    object: "chat.completion",
    created: 1,
    model: "gpt-4.1",
    choices: [{ index: 0, message: { role: "assistant", ...message }, finish_reason: "stop" }],
    ...extra
  })

const usage = { prompt_tokens: 12, completion_tokens: 1, total_tokens: 13 }

// ---------------------------------------------------------------------------

describe("OpenAI", () => {
  describe("decodeChatRequest", () => {
    it("accepts a request with tools, tool calls and tool results", () => {
      const body = {
        model: "gpt-4.1",
        messages: [
          { role: "system", content: "You are terse." },
          { role: "developer", content: "Use tools when useful." },
          user("Weather in Paris?"),
          {
            role: "assistant",
            content: null,
            tool_calls: [{ id: "call_1", type: "function", function: { name: "weather", arguments: "{\"city\":\"Paris\"}" } }]
          },
          { role: "tool", tool_call_id: "call_1", content: "18C, sunny" }
        ],
        tools: [{
          type: "function",
          function: {
            name: "weather",
            description: "Current weather",
            parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
            strict: true
          }
        }],
        tool_choice: { type: "function", function: { name: "weather" } },
        parallel_tool_calls: false,
        temperature: 0.2,
        top_p: 1,
        n: 1,
        max_completion_tokens: 100,
        seed: 42,
        stop: ["\n\n"],
        logit_bias: { "50256": -100 },
        user: "u-1"
      }
      expect(decodeOk(body)).toEqual(body)
      expect(decodeOk({ ...base, tool_choice: "required" }).tool_choice).toBe("required")
    })

    it("accepts response_format json_schema, json_object and text", () => {
      const json_schema = {
        name: "answer",
        description: "The answer",
        schema: { type: "object", properties: { value: { type: "number" } } },
        strict: true
      }
      expect(decodeOk({ ...base, response_format: { type: "json_schema", json_schema } }).response_format)
        .toEqual({ type: "json_schema", json_schema })
      expect(decodeOk({ ...base, response_format: { type: "json_object" } }).response_format).toEqual({ type: "json_object" })
      expect(decodeOk({ ...base, response_format: { type: "text" } }).response_format).toEqual({ type: "text" })
    })

    it("accepts stream with stream_options", () => {
      const decoded = decodeOk({ ...base, stream: true, stream_options: { include_usage: true } })
      expect(decoded.stream).toBe(true)
      expect(decoded.stream_options).toEqual({ include_usage: true })
    })

    it("accepts content parts and null for the parameters the API marks nullable", () => {
      const parts = [
        { type: "text", text: "What is this?" },
        { type: "image_url", image_url: { url: "https://example.com/cat.png", detail: "low" } }
      ]
      const body = {
        ...base,
        messages: [{ role: "user", content: parts }],
        temperature: null,
        max_tokens: null,
        stop: null,
        stream_options: null
      }
      expect(decodeOk(body)).toEqual(body)
    })

    it("passes unknown fields through untouched, at every depth", () => {
      const body = {
        ...base,
        messages: [{
          role: "user",
          content: [{ type: "text", text: "hi", cache_control: { type: "ephemeral" } }],
          x_message_extra: 1
        }],
        reasoning: { effort: "high", summary: "auto" },
        web_search_options: { search_context_size: "low" },
        temperature: 1
      }
      const decoded = decodeOk(body) as unknown as Record<string, unknown>
      expect(decoded["reasoning"]).toEqual({ effort: "high", summary: "auto" })
      expect(decoded["web_search_options"]).toEqual({ search_context_size: "low" })
      expect(decoded).toEqual(body)
    })

    it.each([
      ["missing model", "model", { messages: base.messages }],
      ["empty model", "model", { ...base, model: "" }],
      ["missing messages", "messages", { model: "gpt-4.1" }],
      ["empty messages", "messages", { ...base, messages: [] }],
      ["messages not an array", "messages", { ...base, messages: "hi" }],
      ["bad role at index 1", "messages[1].role", { ...base, messages: [user("hi"), { role: "robot", content: "beep" }] }],
      ["user message without content", "messages[0].content", { ...base, messages: [{ role: "user" }] }],
      ["tool message without tool_call_id", "messages[0].tool_call_id", { ...base, messages: [{ role: "tool", content: "x" }] }],
      ["temperature 3", "temperature", { ...base, temperature: 3 }],
      ["temperature as text", "temperature", { ...base, temperature: "hot" }],
      ["top_p 1.5", "top_p", { ...base, top_p: 1.5 }],
      ["n 0", "n", { ...base, n: 0 }],
      ["n 1.5", "n", { ...base, n: 1.5 }],
      ["max_tokens 0", "max_tokens", { ...base, max_tokens: 0 }],
      ["max_completion_tokens -1", "max_completion_tokens", { ...base, max_completion_tokens: -1 }],
      ["presence_penalty -3", "presence_penalty", { ...base, presence_penalty: -3 }],
      ["frequency_penalty 2.5", "frequency_penalty", { ...base, frequency_penalty: 2.5 }],
      ["stream as text", "stream", { ...base, stream: "yes" }],
      ["stream_options.include_usage as text", "stream_options.include_usage", { ...base, stream_options: { include_usage: "y" } }],
      ["stop as number", "stop", { ...base, stop: 1 }],
      ["seed 1.5", "seed", { ...base, seed: 1.5 }],
      ["tool without a name", "tools[0].function.name", { ...base, tools: [{ type: "function", function: {} }] }],
      ["tool_choice unknown", "tool_choice", { ...base, tool_choice: "sometimes" }],
      ["response_format type xml", "response_format.type", { ...base, response_format: { type: "xml" } }],
      ["json_schema missing", "response_format.json_schema", { ...base, response_format: { type: "json_schema" } }]
    ])("%s → param %s", (_name, param, body) => {
      const error = decodeErr(body)
      expect(error._tag).toBe("InvalidRequest")
      expect(error.param).toBe(param)
      expect(error.message).toContain(`'${param}'`)
    })

    it("says what is wrong in short, human messages", () => {
      expect(decodeErr({ ...base, temperature: 3 }).message)
        .toBe("Invalid value for 'temperature': expected a number between 0 and 2.")
      expect(decodeErr({ model: "gpt-4.1" }).message).toBe("Missing required parameter: 'messages'.")
      expect(decodeErr({ messages: base.messages }).message).toBe("Missing required parameter: 'model'.")
      expect(decodeErr({ ...base, n: 0 }).message).toBe("Invalid value for 'n': expected an integer of at least 1.")
      expect(decodeErr({ ...base, messages: [] }).message)
        .toBe("Invalid value for 'messages': expected a non-empty array of messages.")
      expect(decodeErr({ ...base, messages: [user("hi"), { role: "robot", content: "x" }] }).message)
        .toMatch(/^Invalid value for 'messages\[1\]\.role': expected .*"user".* got "robot"\.$/)
    })

    it.each([
      ["messages a string", { ...base, messages: "hi" }, "messages", "expected an array of messages, got \"hi\""],
      ["messages an object", { ...base, messages: { role: "user", content: "hi" } }, "messages", "expected an array of messages, got an object"],
      ["messages a number", { ...base, messages: 42 }, "messages", "expected an array of messages, got 42"],
      ["a message a number", { ...base, messages: [42] }, "messages[0]", "expected a message object with a role, got 42"],
      ["content an object", { ...base, messages: [{ role: "user", content: { text: "x" } }] }, "messages[0].content", "expected a string or an array of content parts, got an object"],
      ["a content part a string", { ...base, messages: [{ role: "user", content: ["x"] }] }, "messages[0].content[0]", "expected a content part (an object with a type), got \"x\""],
      ["response_format a string", { ...base, response_format: "json" }, "response_format", "expected an object with a type of \"text\", \"json_object\" or \"json_schema\", got \"json\""],
      ["tools a string", { ...base, tools: "search" }, "tools", "expected an array of tools, got \"search\""],
      ["tool_calls a number", { ...base, messages: [{ role: "assistant", tool_calls: 5 }] }, "messages[0].tool_calls", "expected an array of tool calls, got 5"],
      ["stream_options a number", { ...base, stream_options: 1 }, "stream_options", "expected an object or null, got 1"],
      ["user a number", { ...base, user: 5 }, "user", "expected a string, got 5"]
    ])("a field of the wrong kind (%s): one short line naming what it takes", (_name, body, param, what) => {
      const error = decodeErr(body)
      expect(error.param).toBe(param)
      expect(error.message).toBe(`Invalid value for '${param}': ${what}.`)
    })

    it("a content part without type: the part's missing field, not a mismatch with the string form", () => {
      const error = decodeErr({ ...base, messages: [{ role: "user", content: [{ text: "hi" }] }] })
      expect(error.param).toBe("messages[0].content[0].type")
      expect(error.message).toBe("Missing required parameter: 'messages[0].content[0].type'.")
    })

    it("never echoes a long or structured value, and never prints a schema", () => {
      const long = "x".repeat(10_000)
      for (
        const body of [
          { ...base, messages: long },
          { ...base, messages: [{ role: "user", content: { text: long } }] },
          { ...base, messages: [{ role: long, content: "x" }] },
          { ...base, logit_bias: { [long]: "high" } },
          { ...base, tools: [{ type: "function", function: { name: 5 } }] },
          { ...base, response_format: { type: "json_schema", json_schema: { name: "x", schema: 5 } } }
        ]
      ) {
        const error = decodeErr(body)
        expect(error.message.length).toBeLessThan(200)
        expect(error.message).not.toMatch(/readonly|ReadonlyArray|xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx|\n/)
      }
    })

    it("refuses a top-level array nested 10,000 deep without a stack overflow", () => {
      let deep: unknown = []
      for (let i = 0; i < 10_000; i++) deep = [deep]
      const error = decodeErr(deep)
      expect(error.param).toBeNull()
      expect(error.message).toBe("Invalid request body: expected a JSON object.")
    })

    it("refuses a body that is not an object, naming no param", () => {
      for (const body of [null, "hi", 42, [base]]) {
        const error = decodeErr(body)
        expect(error.param).toBeNull()
        expect(error.message).toBe("Invalid request body: expected a JSON object.")
      }
    })
  })

  describe("nestingExceeds", () => {
    const arrays = (depth: number) => "[".repeat(depth) + "]".repeat(depth)

    it("counts objects and arrays, and stops at the limit", () => {
      expect(OpenAI.MAX_JSON_DEPTH).toBe(128)
      expect(OpenAI.nestingExceeds(arrays(128), 128)).toBe(false)
      expect(OpenAI.nestingExceeds(arrays(129), 128)).toBe(true)
      expect(OpenAI.nestingExceeds(`{"a":`.repeat(64) + `[`.repeat(64) + "1" + "]".repeat(64) + "}".repeat(64), 128)).toBe(false)
      expect(OpenAI.nestingExceeds(`{"a":`.repeat(65) + `[`.repeat(64) + "1" + "]".repeat(64) + "}".repeat(65), 128)).toBe(true)
      // Siblings do not add up.
      expect(OpenAI.nestingExceeds(`[${Array.from({ length: 1000 }, () => arrays(100)).join(",")}]`, 128)).toBe(false)
      expect(OpenAI.nestingExceeds(arrays(1_000_000), 128)).toBe(true)
    })

    it("ignores brackets inside strings, escaped quotes included", () => {
      const text = JSON.stringify({ a: "[".repeat(1000), b: "\\\"{{{{".repeat(500), c: ["\\", "{"] })
      expect(OpenAI.nestingExceeds(text, 2)).toBe(false)
      expect(OpenAI.nestingExceeds(JSON.stringify({ a: { b: "}}}}" } }), 1)).toBe(true)
    })

    it("says nothing of text that is not JSON (JSON.parse will)", () => {
      expect(OpenAI.nestingExceeds(`{"a": "never closed [[[[`, 1)).toBe(false)
      expect(OpenAI.nestingExceeds("", 1)).toBe(false)
    })
  })

  describe("decodeEmbeddingsRequest", () => {
    it.each([
      ["a string", "hello"],
      ["an array of strings", ["hello", "world"]],
      ["tokens", [1, 2, 3]],
      ["arrays of tokens", [[1, 2], [3]]]
    ])("accepts input as %s", (_name, input) => {
      const body = { model: "text-embedding-3-small", input, encoding_format: "float", dimensions: 256, user: "u" }
      expect(OpenAI.decodeEmbeddingsRequest(body)).toEqual(Either.right(body))
    })

    it("passes unknown fields through", () => {
      const body = { model: "text-embedding-3-small", input: "hi", input_type: "query" }
      expect(OpenAI.decodeEmbeddingsRequest(body)).toEqual(Either.right(body))
    })

    it.each([
      ["missing model", "model", { input: "hi" }],
      ["missing input", "input", { model: "e" }],
      ["empty input array", "input", { model: "e", input: [] }],
      ["empty token array", "input", { model: "e", input: [[]] }],
      ["input as object", "input", { model: "e", input: { text: "hi" } }],
      ["encoding_format hex", "encoding_format", { model: "e", input: "hi", encoding_format: "hex" }],
      ["dimensions 0", "dimensions", { model: "e", input: "hi", dimensions: 0 }]
    ])("%s → param %s", (_name, param, body) => {
      expect(embeddingsErr(body).param).toBe(param)
    })

    it("says a missing input is missing", () => {
      expect(embeddingsErr({ model: "e" }).message).toBe("Missing required parameter: 'input'.")
    })
  })

  describe("inspectChatCompletion", () => {
    it("accepts a short answer such as \"4\", with its usage", () => {
      const text = completion({ content: "4" }, { usage })
      const result = OpenAI.inspectChatCompletion(text)
      expect(result._tag).toBe("Ok")
      if (result._tag !== "Ok") return
      expect(result.usage).toEqual(usage)
      expect(result.json.choices[0].message.content).toBe("4")
    })

    it("accepts a tool call with null content", () => {
      const text = completion({
        content: null,
        tool_calls: [{ id: "call_1", type: "function", function: { name: "weather", arguments: "{}" } }]
      })
      expect(OpenAI.inspectChatCompletion(text)).toMatchObject({ _tag: "Ok", usage: undefined })
    })

    it("accepts whitespace-only content: only null, absent or \"\" is empty", () => {
      expect(OpenAI.inspectChatCompletion(completion({ content: " " }))._tag).toBe("Ok")
    })

    it("accepts a refusal and a legacy function call", () => {
      expect(OpenAI.inspectChatCompletion(completion({ content: null, refusal: "I can't help with that." }))._tag)
        .toBe("Ok")
      expect(OpenAI.inspectChatCompletion(completion({ content: null, function_call: { name: "f", arguments: "{}" } }))._tag)
        .toBe("Ok")
    })

    it("computes a missing total from the parts", () => {
      const result = OpenAI.inspectChatCompletion(completion({ content: "hi" }, { usage: { prompt_tokens: 3, completion_tokens: 2 } }))
      expect(result).toMatchObject({ _tag: "Ok", usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } })
    })

    it("keeps the cached prompt tokens of the usage (for cachedInput prices)", () => {
      const result = OpenAI.inspectChatCompletion(
        completion({ content: "hi" }, {
          usage: { prompt_tokens: 30, completion_tokens: 2, total_tokens: 32, prompt_tokens_details: { cached_tokens: 20 } }
        })
      )
      expect(result).toMatchObject({ _tag: "Ok", usage: { prompt_tokens: 30, prompt_tokens_details: { cached_tokens: 20 } } })
    })

    const invalid = (text: string) => {
      const result = OpenAI.inspectChatCompletion(text)
      if (result._tag !== "Invalid") throw new Error(`expected Invalid, got ${result._tag}`)
      return result.problem
    }

    it("not-json: an HTML page or an empty body", () => {
      expect(invalid("<html><body>502 Bad Gateway</body></html>").kind).toBe("not-json")
      expect(invalid("").kind).toBe("not-json")
      expect(invalid("upstream connect error").kind).toBe("not-json")
    })

    it("truncated: a body cut off mid-way", () => {
      const full = completion({ content: "The answer is four." }, { usage })
      expect(invalid(full.slice(0, full.length - 1)).kind).toBe("truncated")
      expect(invalid(full.slice(0, 60)).kind).toBe("truncated")
      // Cut between tokens, where JSON.parse complains about a missing comma rather than the end.
      expect(invalid("{\"id\":\"chatcmpl-1\",\"choices\":[]").kind).toBe("truncated")
      expect(invalid("{\"id\":\"chatcmpl-1\"").kind).toBe("truncated")
    })

    it("not-object: JSON that is not an object", () => {
      expect(invalid("[1,2]").kind).toBe("not-object")
      expect(invalid("null").kind).toBe("not-object")
      expect(invalid("\"ok\"").kind).toBe("not-object")
    })

    it("no-choices: no choices, or an error that is not about quota", () => {
      expect(invalid(JSON.stringify({ id: "x", object: "chat.completion" })).kind).toBe("no-choices")
      const error = invalid(JSON.stringify({ error: { message: "The server had an error", type: "server_error" } }))
      expect(error.kind).toBe("no-choices")
      expect(error.detail).toContain("The server had an error")
    })

    it("empty-choices", () => {
      expect(invalid(JSON.stringify({ id: "x", choices: [] })).kind).toBe("empty-choices")
    })

    it("empty-message: empty or null content and nothing else, or no message", () => {
      expect(invalid(completion({ content: "" })).kind).toBe("empty-message")
      expect(invalid(completion({ content: null })).kind).toBe("empty-message")
      expect(invalid(completion({ content: null, tool_calls: [] })).kind).toBe("empty-message")
      expect(invalid(completion({})).kind).toBe("empty-message")
      expect(invalid(JSON.stringify({ choices: [{ index: 0, finish_reason: "stop" }] })).kind).toBe("empty-message")
    })

    it("Quota: a 200 body that is a quota error", () => {
      const body = JSON.stringify({
        error: { message: "You exceeded your current quota.", type: "insufficient_quota", param: null, code: "insufficient_quota" }
      })
      expect(OpenAI.inspectChatCompletion(body)).toEqual({
        _tag: "Quota",
        problem: { code: "insufficient_quota", message: "You exceeded your current quota." }
      })
      const tokens = JSON.stringify({ error: { message: "Tokens limit exceeded", type: "tokens_limit_exceeded" } })
      expect(OpenAI.inspectChatCompletion(tokens)).toMatchObject({ _tag: "Quota", problem: { code: "tokens_limit_exceeded" } })
    })
  })

  describe("isModelNotFound", () => {
    it("OpenAI's model_not_found, and other providers' 404s about a model", () => {
      const error = (message: string, extra: Record<string, unknown> = {}) => JSON.stringify({ error: { message, ...extra } })
      expect(OpenAI.isModelNotFound(error("The model `gpt-5` does not exist", { code: "model_not_found" }))).toBe(true)
      expect(OpenAI.isModelNotFound(JSON.stringify({ type: "error", error: { type: "not_found_error", message: "model: claude-x" } })))
        .toBe(true)
      expect(OpenAI.isModelNotFound(JSON.stringify([{ error: { code: 404, message: "models/gemini-x is not found", status: "NOT_FOUND" } }])))
        .toBe(true)
    })

    it("a 404 about anything else is not", () => {
      expect(OpenAI.isModelNotFound(JSON.stringify({ error: { message: "No such file: file-123" } }))).toBe(false)
      expect(OpenAI.isModelNotFound(JSON.stringify({ error: { message: "Unknown request URL: POST /v1/chat" } }))).toBe(false)
      expect(OpenAI.isModelNotFound("<html>Not Found: /models-gateway</html>")).toBe(false)
      expect(OpenAI.isModelNotFound("")).toBe(false)
    })
  })

  describe("quotaInErrorBody", () => {
    it("finds insufficient_quota in a 429 body's code", () => {
      const body = JSON.stringify({
        error: { message: "You exceeded your current quota, please check your plan.", type: "insufficient_quota", param: null, code: "insufficient_quota" }
      })
      expect(OpenAI.quotaInErrorBody(body)).toEqual({
        code: "insufficient_quota",
        message: "You exceeded your current quota, please check your plan."
      })
    })

    it("finds tokens_limit_exceeded in the type, and in an array-wrapped body", () => {
      const error = { message: "Tokens limit exceeded", type: "tokens_limit_exceeded", code: null }
      expect(OpenAI.quotaInErrorBody(JSON.stringify({ error }))?.code).toBe("tokens_limit_exceeded")
      expect(OpenAI.quotaInErrorBody(JSON.stringify([{ error }]))?.code).toBe("tokens_limit_exceeded")
    })

    it("ignores other errors, mentions in prose and bodies that are not JSON", () => {
      expect(OpenAI.quotaInErrorBody(JSON.stringify({
        error: { message: "Rate limit reached for requests", type: "requests", code: "rate_limit_exceeded" }
      }))).toBeUndefined()
      expect(OpenAI.quotaInErrorBody(JSON.stringify({
        error: { message: "this is not insufficient_quota", type: "invalid_request_error", code: null }
      }))).toBeUndefined()
      expect(OpenAI.quotaInErrorBody("insufficient_quota")).toBeUndefined()
      expect(OpenAI.quotaInErrorBody("")).toBeUndefined()
    })
  })

  describe("inspectEmbeddings", () => {
    const embeddings = (data: unknown, extra: Record<string, unknown> = {}) =>
      JSON.stringify({ object: "list", data, model: "text-embedding-3-small", ...extra })

    it("accepts data with embeddings, with usage (no completion tokens)", () => {
      const result = OpenAI.inspectEmbeddings(embeddings(
        [{ object: "embedding", index: 0, embedding: [0.1, -0.2] }],
        { usage: { prompt_tokens: 8, total_tokens: 8 } }
      ))
      expect(result).toMatchObject({ _tag: "Ok", usage: { prompt_tokens: 8, completion_tokens: 0, total_tokens: 8 } })
    })

    it("accepts base64 embeddings", () => {
      expect(OpenAI.inspectEmbeddings(embeddings([{ index: 0, embedding: "AAAAAA==" }]))._tag).toBe("Ok")
    })

    it.each([
      ["data missing", "no-data", JSON.stringify({ object: "list" })],
      ["data empty", "no-data", embeddings([])],
      ["an item without embedding", "no-data", embeddings([{ index: 0, embedding: [0.1] }, { index: 1 }])],
      ["an empty embedding", "no-data", embeddings([{ index: 0, embedding: [] }])],
      ["a non-quota error", "no-data", JSON.stringify({ error: { message: "boom" } })],
      ["not an object", "not-object", "[]"],
      ["not JSON", "not-json", "Bad Gateway"],
      ["cut off", "truncated", embeddings([{ index: 0, embedding: [0.1, 0.2] }]).slice(0, 40)]
    ])("%s → %s", (_name, kind, text) => {
      expect(OpenAI.inspectEmbeddings(text)).toMatchObject({ _tag: "Invalid", problem: { kind } })
    })

    it("Quota in a 200 body", () => {
      const body = JSON.stringify({ error: { message: "quota", code: "insufficient_quota" } })
      expect(OpenAI.inspectEmbeddings(body)).toEqual({ _tag: "Quota", problem: { code: "insufficient_quota", message: "quota" } })
    })
  })

  describe("inspectStreamChunk", () => {
    const chunk = (extra: Record<string, unknown>) =>
      JSON.stringify({ id: "c", object: "chat.completion.chunk", model: "gpt-4.1", ...extra })

    it("Done for [DONE]", () => {
      expect(OpenAI.inspectStreamChunk("[DONE]")).toEqual({ _tag: "Done" })
      expect(OpenAI.inspectStreamChunk(" [DONE]\n")).toEqual({ _tag: "Done" })
    })

    it("Chunk without usage for a delta (usage absent or null)", () => {
      const delta = OpenAI.inspectStreamChunk(chunk({ choices: [{ index: 0, delta: { content: "4" } }] }))
      expect(delta._tag).toBe("Chunk")
      expect("usage" in delta).toBe(false)
      const nullUsage = OpenAI.inspectStreamChunk(chunk({ choices: [{ index: 0, delta: { content: "4" } }], usage: null }))
      expect(nullUsage._tag).toBe("Chunk")
      expect("usage" in nullUsage).toBe(false)
    })

    it("Chunk with usage for the final usage chunk (empty choices)", () => {
      const result = OpenAI.inspectStreamChunk(chunk({ choices: [], usage }))
      expect(result).toMatchObject({ _tag: "Chunk", usage })
    })

    it("Quota for a quota error payload", () => {
      const result = OpenAI.inspectStreamChunk(JSON.stringify({ error: { message: "quota", type: "insufficient_quota" } }))
      expect(result).toEqual({ _tag: "Quota", problem: { code: "insufficient_quota", message: "quota" } })
    })

    it("Error for another error payload and for invalid JSON", () => {
      const error = OpenAI.inspectStreamChunk(JSON.stringify({ error: { message: "overloaded", type: "server_error" } }))
      expect(error._tag).toBe("Error")
      if (error._tag === "Error") expect(error.problem.detail).toContain("overloaded")
      expect(OpenAI.inspectStreamChunk("{\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"he"))
        .toMatchObject({ _tag: "Error", problem: { kind: "truncated" } })
      expect(OpenAI.inspectStreamChunk("garbage")).toMatchObject({ _tag: "Error", problem: { kind: "not-json" } })
      expect(OpenAI.inspectStreamChunk("42")).toMatchObject({ _tag: "Error", problem: { kind: "not-object" } })
    })
  })

  describe("errorBody", () => {
    it("is OpenAI's error JSON", () => {
      const text = OpenAI.errorBody("Invalid value for 'temperature'.", "invalid_request_error", "temperature", null)
      expect(JSON.parse(text)).toEqual({
        error: { message: "Invalid value for 'temperature'.", type: "invalid_request_error", param: "temperature", code: null }
      })
      expect(text).toBe(
        "{\"error\":{\"message\":\"Invalid value for 'temperature'.\",\"type\":\"invalid_request_error\",\"param\":\"temperature\",\"code\":null}}"
      )
    })

    it("escapes what needs escaping", () => {
      const text = OpenAI.errorBody("say \"hi\"\n", "server_error", null, "upstream_failed")
      expect(JSON.parse(text).error).toEqual({ message: "say \"hi\"\n", type: "server_error", param: null, code: "upstream_failed" })
    })
  })

  describe("estimateTokens", () => {
    it("counts string contents and text parts at four characters a token, rounded up", () => {
      const request = decodeOk({
        model: "m",
        messages: [
          { role: "system", content: "abcd" }, // 4
          { role: "user", content: [{ type: "text", text: "abcdef" }, { type: "image_url", image_url: { url: "https://x" } }] }, // 6
          { role: "assistant", content: null, tool_calls: [] } // 0
        ]
      })
      expect(OpenAI.estimateTokens(request)).toBe(3) // ceil(10 / 4)
    })

    it("adds max_completion_tokens, else max_tokens, else nothing", () => {
      const messages = [user("12345678")] // 2 tokens
      expect(OpenAI.estimateTokens(decodeOk({ model: "m", messages, max_completion_tokens: 100, max_tokens: 50 }))).toBe(102)
      expect(OpenAI.estimateTokens(decodeOk({ model: "m", messages, max_tokens: 50 }))).toBe(52)
      expect(OpenAI.estimateTokens(decodeOk({ model: "m", messages }))).toBe(2)
      expect(OpenAI.estimateTokens(decodeOk({ model: "m", messages, max_tokens: null }))).toBe(2)
    })

    it("estimatePromptTokens is the prompt part alone; estimateCompletionTokens rounds characters up", () => {
      const request = decodeOk({ model: "m", messages: [user("123456789")], max_tokens: 50 })
      expect(OpenAI.estimatePromptTokens(request)).toBe(3)
      expect(OpenAI.estimateCompletionTokens(0)).toBe(0)
      expect(OpenAI.estimateCompletionTokens(9)).toBe(3)
    })
  })

  describe("stream chunk scans (no parse)", () => {
    const chunk = (delta: unknown, extra: Record<string, unknown> = {}) =>
      JSON.stringify({ id: "x", object: "chat.completion.chunk", choices: [{ index: 0, delta, finish_reason: null }], ...extra })

    it("generatedChars counts content, tool-call arguments, reasoning and refusals", () => {
      expect(OpenAI.generatedChars(chunk({ role: "assistant", content: "" }))).toBe(0)
      expect(OpenAI.generatedChars(chunk({ content: "Hello" }))).toBe(5)
      expect(OpenAI.generatedChars(chunk({ reasoning_content: "think" }))).toBe(5)
      expect(OpenAI.generatedChars(chunk({ reasoning: "abc" }))).toBe(3)
      expect(OpenAI.generatedChars(chunk({ refusal: "no" }))).toBe(2)
      const tool = chunk({ tool_calls: [{ index: 0, function: { name: "get_weather", arguments: "{\"city\":\"Paris\"}" } }] })
      expect(OpenAI.generatedChars(tool)).toBe("{\"city\":\"Paris\"}".length)
      expect(OpenAI.generatedChars(chunk({ content: null }))).toBe(0)
      expect(OpenAI.generatedChars(JSON.stringify({ choices: [], usage: { prompt_tokens: 1 } }))).toBe(0)
    })

    it("generatedChars counts an escape as one character, and is not fooled by keys inside text", () => {
      expect(OpenAI.generatedChars(chunk({ content: "a\nb\"c\u00e9" }))).toBe(6)
      expect(OpenAI.generatedChars(chunk({ content: "say \"content\": \"x\"" }))).toBe("say \"content\": \"x\"".length)
      // Spaces around the colon (some servers pretty-print).
      expect(OpenAI.generatedChars(`{"choices":[{"delta":{"content" : "abc"}}]}`)).toBe(3)
    })

    it("hasUsageObject: a usage object, not usage: null", () => {
      expect(OpenAI.hasUsageObject(chunk({ content: "x" }, { usage: null }))).toBe(false)
      expect(OpenAI.hasUsageObject(chunk({ content: "x" }))).toBe(false)
      expect(OpenAI.hasUsageObject(JSON.stringify({ choices: [], usage: { prompt_tokens: 1, completion_tokens: 2 } }))).toBe(true)
      expect(OpenAI.hasUsageObject(`{"choices":[],"usage" : {"prompt_tokens":1}}`)).toBe(true)
      expect(OpenAI.hasUsageObject(chunk({ content: "the \"usage\": {x}" }))).toBe(false)
    })
  })
})
