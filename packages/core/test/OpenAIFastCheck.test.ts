/**
 * The hand-written check of common request shapes (OpenAI.isPlainChatRequest,
 * isPlainEmbeddingsRequest) against the schemas: it never accepts what the
 * schema rejects (it may leave a request to the schema), it accepts the
 * common shapes, and decoding answers as the schema alone would, errors
 * included.
 */
import { FastCheck as fc } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import * as Either from "effect/Either"
import { describe, expect, it } from "vitest"
import * as OpenAI from "../src/OpenAI.js"

/** Values near what the schema checks: right and wrong kinds, edges of ranges. */
const tricky: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(
    null,
    undefined,
    "",
    "x",
    "user",
    "function",
    "none",
    "auto",
    "json_schema",
    "text",
    "float",
    0,
    -0,
    1,
    2,
    2.5,
    -2,
    -3,
    0.5,
    1.5,
    20,
    21,
    -1,
    Number.NaN,
    Number.MAX_SAFE_INTEGER + 1,
    true,
    false,
    [],
    {},
    [1],
    ["a"],
    [[1]],
    [[]],
    [{}],
    [{ type: "text" }],
    [{ type: 1 }],
    { type: "function" },
    { type: "text" },
    { name: "f", arguments: "{}" },
    { include_usage: "yes" }
  ),
  fc.jsonValue({ maxDepth: 2 })
)

const KEYS = [
  "model", "messages", "temperature", "top_p", "n", "stream", "stream_options", "stop", "max_tokens",
  "max_completion_tokens", "presence_penalty", "frequency_penalty", "logit_bias", "user", "seed", "tools",
  "tool_choice", "parallel_tool_calls", "response_format", "metadata", "store", "logprobs", "top_logprobs",
  "reasoning_effort", "modalities", "audio", "prediction", "service_tier", "unknown_field"
]
const MESSAGE_KEYS = ["role", "content", "name", "refusal", "tool_calls", "function_call", "audio", "tool_call_id", "extra"]

/** Replaces the value at one random path of `value` with `replacement`. */
const mutate = (value: unknown, choices: ReadonlyArray<number>, replacement: unknown, deleteIt: boolean): unknown => {
  const copy = structuredClone(value)
  let node: unknown = copy
  let parent: Record<string | number, unknown> | undefined
  let key: string | number | undefined
  for (const c of choices) {
    if (typeof node !== "object" || node === null) break
    const keys = Object.keys(node)
    if (keys.length === 0) break
    parent = node as Record<string, unknown>
    const k = keys[c % keys.length]!
    key = Array.isArray(node) ? Number(k) : k
    node = parent[key]
  }
  if (parent === undefined || key === undefined) return replacement
  if (deleteIt && !Array.isArray(parent)) delete parent[key]
  else parent[key] = replacement
  return copy
}

const validChat = Arbitrary.make(OpenAI.ChatCompletionRequest)
const validEmbeddings = Arbitrary.make(OpenAI.EmbeddingsRequest)

const mutated = (valid: fc.Arbitrary<unknown>) =>
  fc.tuple(valid, fc.array(fc.nat(), { minLength: 1, maxLength: 6 }), tricky, fc.boolean()).map(([v, path, r, d]) => mutate(v, path, r, d))

/** Valid messages of each role, to put near-miss fields in. */
const MESSAGES: ReadonlyArray<Record<string, unknown>> = [
  { role: "system", content: "be brief" },
  { role: "developer", content: [{ type: "text", text: "x" }] },
  { role: "user", content: "hi", name: "u" },
  { role: "assistant", content: null, tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" } }] },
  { role: "assistant", content: "ok" },
  { role: "tool", content: "42", tool_call_id: "c1" }
]

/**
 * A valid request with one to three fields set to near-miss values: at the
 * top level (any known field name) or in one of its messages.
 */
const nearChat = fc.tuple(
  fc.array(fc.nat({ max: MESSAGES.length - 1 }), { minLength: 1, maxLength: 4 }),
  fc.array(
    fc.tuple(fc.boolean(), fc.nat(), fc.constantFrom(...KEYS), fc.constantFrom(...MESSAGE_KEYS), tricky),
    { minLength: 1, maxLength: 3 }
  )
).map(([picks, changes]) => {
  const body: Record<string, unknown> = { model: "gpt-4.1", messages: picks.map((i) => structuredClone(MESSAGES[i]!)) }
  const messages = body["messages"] as Array<Record<string, unknown>>
  for (const [top, at, key, messageKey, value] of changes) {
    if (top) body[key] = value
    else messages[at % messages.length]![messageKey] = value
  }
  return body
})
const nearEmbeddings = fc.record({
  model: fc.oneof(fc.constant("text-embedding-3-small"), tricky),
  input: fc.oneof(tricky, fc.array(fc.oneof(fc.string(), fc.double(), fc.array(fc.double())), { maxLength: 3 })),
  rest: fc.dictionary(fc.constantFrom("encoding_format", "dimensions", "user", "other"), tricky)
}).map(({ input, model, rest }) => ({ ...rest, model, input }))

/** Fast accepts ⇒ the schema accepts, and decodes to the same value. */
const agrees = (
  fast: (u: unknown) => boolean,
  schema: (u: unknown) => Either.Either<unknown, OpenAI.InvalidRequest>
) =>
(body: unknown) => {
  if (!fast(body)) return true
  const decoded = schema(body)
  if (Either.isLeft(decoded)) {
    throw new Error(`the fast check accepted what the schema rejects (${decoded.left.message}): ${JSON.stringify(body)}`)
  }
  // The same value (the schema's copy drops an own `__proto__` key, which the fast path keeps as it came).
  if (!JSON.stringify(body).includes("__proto__")) expect(decoded.right).toEqual(body)
  return true
}

const RUNS = 3_000

// Generating valid chat requests from the schema takes a few ms each.
describe("the fast check of chat requests never accepts what the schema rejects", { timeout: 60_000 }, () => {
  const check = agrees(OpenAI.isPlainChatRequest, OpenAI.decodeChatRequestBySchema)
  it("valid requests, one value replaced or removed", () => {
    fc.assert(fc.property(mutated(validChat), check), { numRuns: 1_000 })
  })
  it("valid requests as JSON, one value replaced or removed", () => {
    fc.assert(fc.property(mutated(validChat.map((v) => JSON.parse(JSON.stringify(v)) as unknown)), check), { numRuns: 500 })
  })
  it("objects of known field names and near-miss values", () => {
    fc.assert(fc.property(nearChat, check), { numRuns: RUNS })
  })
  it("any value", () => {
    fc.assert(fc.property(fc.anything(), check), { numRuns: 1_000 })
  })
  it("accepts what the schema generates, for the most part (it is not a check that defers everything)", () => {
    const samples = fc.sample(validChat.map((v) => JSON.parse(JSON.stringify(v)) as unknown), 500)
    const accepted = samples.filter((s) => OpenAI.isPlainChatRequest(s)).length
    expect(accepted).toBeGreaterThan(samples.length * 0.9)
  })
})

describe("the fast check of embeddings requests never accepts what the schema rejects", { timeout: 60_000 }, () => {
  const check = agrees(OpenAI.isPlainEmbeddingsRequest, OpenAI.decodeEmbeddingsRequestBySchema)
  it("valid requests, one value replaced or removed", () => {
    fc.assert(fc.property(mutated(validEmbeddings), check), { numRuns: RUNS })
  })
  it("objects of known field names and near-miss values", () => {
    fc.assert(fc.property(nearEmbeddings, check), { numRuns: RUNS })
  })
  it("accepts what the schema generates, for the most part", () => {
    const samples = fc.sample(validEmbeddings.map((v) => JSON.parse(JSON.stringify(v)) as unknown), 500)
    expect(samples.filter((s) => OpenAI.isPlainEmbeddingsRequest(s)).length).toBeGreaterThan(samples.length * 0.9)
  })
})

/** A realistic agent request: a system prompt, nine messages with tool calls and results, three tools. */
export const realisticChat = {
  model: "gpt-4.1",
  temperature: 0.2,
  max_tokens: 512,
  messages: [
    { role: "system", content: "You are a support agent for an online shop. Answer briefly; use the tools to look up orders." },
    { role: "user", content: "Where is my order 1234? It was due yesterday." },
    {
      role: "assistant",
      content: null,
      tool_calls: [{ id: "call_1", type: "function", function: { name: "get_order", arguments: "{\"order_id\":\"1234\"}" } }]
    },
    { role: "tool", tool_call_id: "call_1", content: "{\"status\":\"shipped\",\"carrier\":\"DHL\",\"eta\":\"tomorrow\"}" },
    { role: "assistant", content: "Your order shipped with DHL and should arrive tomorrow." },
    { role: "user", content: [{ type: "text", text: "Can you change the address?" }] },
    { role: "assistant", content: "Which address should it go to?" },
    { role: "user", content: "12 High Street, Leeds", name: "customer" },
    { role: "developer", content: "Addresses can only be changed before shipping." }
  ],
  tools: [
    { type: "function", function: { name: "get_order", description: "Look up an order", parameters: { type: "object", properties: { order_id: { type: "string" } }, required: ["order_id"] } } },
    { type: "function", function: { name: "change_address", parameters: { type: "object", properties: {} }, strict: true } },
    { type: "function", function: { name: "refund", description: "Refund an order" } }
  ],
  tool_choice: "auto",
  stream_options: null,
  response_format: { type: "text" },
  metadata: { team: "support" },
  custom_vendor_field: { anything: [1, 2, 3] }
}

describe("decodeChatRequest: the fast path and the schema answer alike", () => {
  it("a realistic request passes the fast check, as it is", () => {
    const body = JSON.parse(JSON.stringify(realisticChat)) as unknown
    expect(OpenAI.isPlainChatRequest(body)).toBe(true)
    const decoded = OpenAI.decodeChatRequest(body)
    expect(Either.isRight(decoded) && decoded.right).toBe(body)
  })
  it("errors are the schema's, message and param", () => {
    const bad = [
      { model: "gpt-4.1", messages: [] },
      { model: "", messages: [{ role: "user", content: "x" }] },
      { model: "gpt-4.1", messages: [{ role: "bot", content: "x" }] },
      { ...realisticChat, temperature: 3 },
      { ...realisticChat, tools: [{ type: "function", function: {} }] }
    ]
    for (const body of bad) {
      expect(OpenAI.isPlainChatRequest(body)).toBe(false)
      expect(OpenAI.decodeChatRequest(body)).toEqual(OpenAI.decodeChatRequestBySchema(body))
      expect(Either.isLeft(OpenAI.decodeChatRequest(body))).toBe(true)
    }
  })
  it("embeddings: common shapes pass as they are", () => {
    for (const input of ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]]) {
      const body = { model: "text-embedding-3-small", input, encoding_format: "float" }
      expect(OpenAI.isPlainEmbeddingsRequest(body)).toBe(true)
      const decoded = OpenAI.decodeEmbeddingsRequest(body)
      expect(Either.isRight(decoded) && decoded.right).toBe(body)
    }
  })
})
