/**
 * End-to-end: what the gateway answers to bodies that are valid JSON but
 * hostile or wrong (deeply nested, fields of the wrong kind), through the
 * real server on 127.0.0.1 with a fake upstream behind it. The answer is
 * always a 400 in OpenAI's shape with one short line of message, and the
 * upstream is never called.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import OpenAI, { BadRequestError } from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { captureStdout, openAIError, recordingFetch, startServer, type TestServer } from "./helpers/e2e.js"

const KEY = "gw-key-REQUESTS-SECRET-1"

let upstream: FakeUpstream.FakeUpstream
let server: TestServer
let restoreStdout: (() => void) | undefined

beforeAll(async () => {
  restoreStdout = captureStdout()
  upstream = await FakeUpstream.start({ name: "only" })
  server = await startServer(`
keys:
  - { name: team, key: "${KEY}" }
upstreams:
  - { name: only, baseUrl: "${upstream.url}", apiKey: "sk-upstream-REQUESTS-SECRET", models: [gpt-4.1, text-embedding-3-small] }
`)
})

afterAll(async () => {
  await server?.close()
  await upstream?.close()
  restoreStdout?.()
})

const post = (path: string, body: string) =>
  recordingFetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
    body
  })

const sdk = () => new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0, timeout: 10_000, fetch: recordingFetch })

/** `[[[ ... ]]]` nested `depth` deep, as text. */
const nestedArrays = (depth: number) => "[".repeat(depth) + "]".repeat(depth)
/** `{"a":{"a":...}}` nested `depth` deep, as text. */
const nestedObjects = (depth: number) => `{"a":`.repeat(depth) + "1" + "}".repeat(depth)

describe("deeply nested JSON", () => {
  const cases: ReadonlyArray<readonly [string, string, string]> = [
    ["a top-level array 4,000 deep", "/v1/chat/completions", nestedArrays(4000)],
    [
      "a message content 4,000 deep",
      "/v1/chat/completions",
      `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"metadata_extra":${nestedObjects(4000)}}`
    ],
    [
      "cacheable (temperature 0) with a deep unknown field",
      "/v1/chat/completions",
      `{"model":"gpt-4.1","temperature":0,"messages":[{"role":"user","content":"hi"}],"x":${nestedArrays(4000)}}`
    ],
    ["an embeddings input 4,000 deep", "/v1/embeddings", `{"model":"text-embedding-3-small","input":${nestedArrays(4000)}}`]
  ]
  for (const [name, path, body] of cases) {
    it(`${name} (${body.length} bytes) -> 400 naming the nesting limit; the upstream is not called`, async () => {
      const calls = () => upstream.counters().chat + upstream.counters().embeddings
      const before = calls()
      const res = await post(path, body)
      const text = await res.text()
      expect(res.status, text).toBe(400)
      const e = openAIError(text)
      expect(e.type).toBe("invalid_request_error")
      expect(e.message).toMatch(/nest.*128/)
      expect(e.message).not.toContain("\n")
      expect(calls() - before).toBe(0)
    })
  }

  it("brackets inside strings do not count; a body nested 100 deep is relayed", async () => {
    const schema = nestedObjects(100)
    const body = JSON.stringify({
      model: "gpt-4.1",
      messages: [{ role: "user", content: "[[[[{{{{".repeat(500) + "\\\"[[" }],
      response_format: { type: "json_schema", json_schema: { name: "deep", schema: JSON.parse(schema) } }
    })
    const res = await post("/v1/chat/completions", body)
    expect(res.status, await res.text()).toBe(200)
  })

  it("the server keeps serving afterwards", async () => {
    await post("/v1/chat/completions", nestedArrays(50_000))
    const completion = await sdk().chat.completions.create({ model: "gpt-4.1", messages: [{ role: "user", content: "still there?" }] })
    expect(completion.choices[0]?.message.content).toContain("Hello from only")
  })
})

describe("fields of the wrong kind: one short line with param", () => {
  const base = { model: "gpt-4.1", messages: [{ role: "user", content: "hi" }] }
  const cases: ReadonlyArray<readonly [string, Record<string, unknown>, string, RegExp]> = [
    ["messages as a string", { ...base, messages: "hello" }, "messages", /expected an array of messages/],
    ["messages as an object", { ...base, messages: { role: "user", content: "hi" } }, "messages", /expected an array of messages/],
    ["messages as a number", { ...base, messages: 42 }, "messages", /expected an array of messages/],
    ["a message that is a number", { ...base, messages: [42] }, "messages[0]", /expected a message object/],
    ["content as an object", { ...base, messages: [{ role: "user", content: { text: "hi" } }] }, "messages[0].content", /expected a string or an array of content parts/],
    ["a content part without type", { ...base, messages: [{ role: "user", content: [{ text: "hi" }] }] }, "messages[0].content[0].type", /Missing required parameter/],
    ["tool_choice as a number", { ...base, tool_choice: 3 }, "tool_choice", /expected 'none', 'auto', 'required'/],
    ["stop as an object", { ...base, stop: { a: 1 } }, "stop", /expected a string or an array of strings/],
    ["response_format as a string", { ...base, response_format: "json" }, "response_format", /expected an object with a type/],
    ["tools as a string", { ...base, tools: "search" }, "tools", /expected an array of tools/],
    ["tool_calls as a number", { ...base, messages: [{ role: "assistant", tool_calls: 5 }] }, "messages[0].tool_calls", /expected an array/],
    ["stream_options as a number", { ...base, stream_options: 1 }, "stream_options", /expected an object/]
  ]
  for (const [name, body, param, message] of cases) {
    it(`${name} -> 400, param ${param}`, async () => {
      const e = await sdk().chat.completions.create(body as never).then(
        () => undefined,
        (e: unknown) => e
      )
      expect(e).toBeInstanceOf(BadRequestError)
      const err = e as BadRequestError
      expect(err.param).toBe(param)
      const msg = (err.error as { message: string }).message
      expect(msg).toMatch(message)
      expect(msg.length).toBeLessThan(160)
      expect(msg).not.toMatch(/readonly|ReadonlyArray|\n/)
    })
  }

  it("embeddings input as an object -> 400, param input, one line", async () => {
    const res = await post("/v1/embeddings", JSON.stringify({ model: "text-embedding-3-small", input: { text: "hi" } }))
    expect(res.status).toBe(400)
    const e = openAIError(await res.text())
    expect(e.param).toBe("input")
    expect(e.message.length).toBeLessThan(160)
  })
})
