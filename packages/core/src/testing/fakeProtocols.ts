/**
 * The fake upstream's answers in the wire formats other than OpenAI's
 * (Anthropic's Messages API, Gemini's generateContent), as JSON and SSE
 * text. Internal to the fake: shapes follow the providers' API references.
 */
import { parseResetDuration } from "../Cooldown.js"
import * as Duration from "effect/Duration"

export type Protocol = "openai" | "azure-openai" | "anthropic" | "gemini"

const isRecord = (u: unknown): u is Record<string, any> => typeof u === "object" && u !== null && !Array.isArray(u)

/** Characters of text in a provider request's prompt, for estimated usage. */
export const promptChars = (protocol: Protocol, request: Record<string, unknown>): number => {
  let n = 0
  const add = (t: unknown) => {
    if (typeof t === "string") n += t.length
  }
  if (protocol === "gemini") {
    const parts = (c: unknown) => (isRecord(c) && Array.isArray(c["parts"]) ? c["parts"] : [])
    for (const p of parts(request["systemInstruction"])) add(isRecord(p) ? p["text"] : undefined)
    for (const c of Array.isArray(request["contents"]) ? request["contents"] : []) {
      for (const p of parts(c)) add(isRecord(p) ? p["text"] : undefined)
    }
    return n
  }
  add(request["system"])
  for (const m of Array.isArray(request["messages"]) ? request["messages"] : []) {
    const c = isRecord(m) ? m["content"] : undefined
    if (typeof c === "string") add(c)
    else if (Array.isArray(c)) for (const b of c) add(isRecord(b) ? b["text"] : undefined)
  }
  return n
}

/** The tool the fake calls (`callTools`): the first one offered, unless the conversation ends with a tool result. */
export const toolToCall = (protocol: Protocol, request: Record<string, unknown>): string | undefined => {
  if (protocol === "gemini") {
    const tools = Array.isArray(request["tools"]) ? request["tools"] : []
    const decls = isRecord(tools[0]) && Array.isArray(tools[0]["functionDeclarations"]) ? tools[0]["functionDeclarations"] : []
    const name = isRecord(decls[0]) ? decls[0]["name"] : undefined
    const contents = Array.isArray(request["contents"]) ? request["contents"] : []
    const last = contents[contents.length - 1]
    const answered = isRecord(last) && Array.isArray(last["parts"]) &&
      last["parts"].some((p: unknown) => isRecord(p) && p["functionResponse"] !== undefined)
    return typeof name === "string" && !answered ? name : undefined
  }
  const tools = Array.isArray(request["tools"]) ? request["tools"] : []
  const first = tools[0]
  const name = protocol === "anthropic"
    ? (isRecord(first) ? first["name"] : undefined)
    : (isRecord(first) && isRecord(first["function"]) ? first["function"]["name"] : undefined)
  const messages = Array.isArray(request["messages"]) ? request["messages"] : []
  const last = messages[messages.length - 1]
  const answered = protocol === "anthropic"
    ? isRecord(last) && Array.isArray(last["content"]) &&
      last["content"].some((b: unknown) => isRecord(b) && b["type"] === "tool_result")
    : isRecord(last) && last["role"] === "tool"
  return typeof name === "string" && !answered ? name : undefined
}

/** A reply's words, each with its following space. */
const wordsOf = (reply: string): Array<string> => {
  if (reply === "") return []
  const parts = reply.split(" ")
  return parts.map((p, i) => (i < parts.length - 1 ? `${p} ` : p))
}

// ---------------------------------------------------------------------------
// Anthropic

const ANTHROPIC_TYPES: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  413: "request_too_large",
  429: "rate_limit_error",
  500: "api_error",
  529: "overloaded_error"
}

export const anthropicError = (status: number, model: string): string => {
  const type = ANTHROPIC_TYPES[status] ?? (status >= 500 ? "api_error" : "invalid_request_error")
  const message = status === 404
    ? `model: ${model}`
    : status === 529
    ? "Overloaded"
    : status === 429
    ? "Number of requests has exceeded your rate limit (injected by the fake upstream)."
    : `Request failed with status ${status} (injected by the fake upstream).`
  return JSON.stringify({ type: "error", error: { type, message } })
}

export const ANTHROPIC_CREDIT = JSON.stringify({
  type: "error",
  error: {
    type: "invalid_request_error",
    message: "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."
  }
})

/** `anthropic-ratelimit-*` headers from the fake's rate-limit fault (reset durations become dates). */
export const anthropicRateLimitHeaders = (
  h: { remainingRequests: number; remainingTokens: number; resetRequests: string; resetTokens: string },
  now: number
): Record<string, string> => {
  const at = (d: string) => new Date(now + Duration.toMillis(parseResetDuration(d) ?? Duration.zero)).toISOString()
  return {
    "anthropic-ratelimit-requests-remaining": String(h.remainingRequests),
    "anthropic-ratelimit-requests-reset": at(h.resetRequests),
    "anthropic-ratelimit-tokens-remaining": String(h.remainingTokens),
    "anthropic-ratelimit-tokens-reset": at(h.resetTokens)
  }
}

export interface Answer {
  readonly id: string
  readonly model: string
  readonly reply: string
  /** Answer with a call of this tool (arguments `{}`), not text. */
  readonly tool: string | undefined
  readonly promptTokens: number
  readonly completionTokens: number
  readonly omitUsage: boolean
  /** Prompt tokens read from the prompt cache (not in `promptTokens`). */
  readonly cachedTokens: number
  /** No content at all (the fake's `emptyChoices`). */
  readonly empty: boolean
}

const anthropicUsage = (a: Answer, output: number) =>
  a.omitUsage
    ? {}
    : { input_tokens: a.promptTokens, output_tokens: output, cache_creation_input_tokens: 0, cache_read_input_tokens: a.cachedTokens }

export const anthropicMessage = (a: Answer): string => {
  const content = a.empty
    ? []
    : a.tool !== undefined
    ? [{ type: "tool_use", id: `toolu_${a.id}`, name: a.tool, input: {} }]
    : [{ type: "text", text: a.reply }]
  return JSON.stringify({
    id: `msg_${a.id}`,
    type: "message",
    role: "assistant",
    model: a.model,
    content,
    stop_reason: a.tool !== undefined ? "tool_use" : "end_turn",
    stop_sequence: null,
    usage: anthropicUsage(a, a.completionTokens)
  })
}

const event = (type: string, data: unknown) => `event: ${type}\ndata: ${JSON.stringify(data)}\n\n`

export const anthropicStream = (a: Answer): Array<string> => {
  const events = [
    event("message_start", {
      type: "message_start",
      message: {
        id: `msg_${a.id}`,
        type: "message",
        role: "assistant",
        model: a.model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: anthropicUsage(a, 1)
      }
    })
  ]
  if (!a.empty && a.tool !== undefined) {
    events.push(
      event("content_block_start", {
        type: "content_block_start",
        index: 0,
        content_block: { type: "tool_use", id: `toolu_${a.id}`, name: a.tool, input: {} }
      }),
      event("content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "input_json_delta", partial_json: "{" } }),
      event("content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "input_json_delta", partial_json: "}" } }),
      event("content_block_stop", { type: "content_block_stop", index: 0 })
    )
  } else if (!a.empty) {
    events.push(
      event("content_block_start", { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } }),
      event("ping", { type: "ping" })
    )
    for (const w of wordsOf(a.reply)) {
      events.push(event("content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: w } }))
    }
    events.push(event("content_block_stop", { type: "content_block_stop", index: 0 }))
  }
  events.push(
    event("message_delta", {
      type: "message_delta",
      delta: { stop_reason: a.tool !== undefined ? "tool_use" : "end_turn", stop_sequence: null },
      usage: a.omitUsage ? {} : { output_tokens: a.completionTokens }
    }),
    event("message_stop", { type: "message_stop" })
  )
  return events
}

/** An overloaded stream: `message_start`, then the `error` event (no content, no `message_stop`). */
export const anthropicStreamError = (a: Answer): Array<string> => [
  anthropicStream(a)[0]!,
  event("error", { type: "error", error: { type: "overloaded_error", message: "Overloaded" } })
]

// ---------------------------------------------------------------------------
// Gemini

const GEMINI_STATUSES: Record<number, string> = {
  400: "INVALID_ARGUMENT",
  401: "UNAUTHENTICATED",
  403: "PERMISSION_DENIED",
  404: "NOT_FOUND",
  429: "RESOURCE_EXHAUSTED",
  500: "INTERNAL",
  503: "UNAVAILABLE",
  504: "DEADLINE_EXCEEDED"
}

export const geminiError = (status: number, model: string, retryDelaySeconds?: number): string => {
  const s = GEMINI_STATUSES[status] ?? (status >= 500 ? "INTERNAL" : "INVALID_ARGUMENT")
  const message = status === 404
    ? `models/${model} is not found for API version v1beta, or is not supported for generateContent.`
    : status === 503
    ? "The model is overloaded. Please try again later."
    : status === 429
    ? "Resource has been exhausted (injected by the fake upstream)."
    : `Request failed with status ${status} (injected by the fake upstream).`
  const details = retryDelaySeconds === undefined
    ? []
    : [{ "@type": "type.googleapis.com/google.rpc.RetryInfo", retryDelay: `${retryDelaySeconds}s` }]
  return JSON.stringify({ error: { code: status, message, status: s, details } })
}

export const GEMINI_QUOTA = JSON.stringify({
  error: {
    code: 429,
    message: "You exceeded your current quota, please check your plan and billing details.",
    status: "RESOURCE_EXHAUSTED",
    details: [{
      "@type": "type.googleapis.com/google.rpc.QuotaFailure",
      violations: [{ quotaMetric: "generativelanguage.googleapis.com/generate_content_free_tier_requests", quotaId: "GenerateRequestsPerDayPerProjectPerModel-FreeTier" }]
    }]
  }
})

const geminiUsage = (a: Answer) =>
  a.omitUsage
    ? {}
    : {
      usageMetadata: {
        promptTokenCount: a.promptTokens + a.cachedTokens,
        candidatesTokenCount: a.completionTokens,
        totalTokenCount: a.promptTokens + a.cachedTokens + a.completionTokens,
        ...(a.cachedTokens > 0 ? { cachedContentTokenCount: a.cachedTokens } : {})
      }
    }

const geminiParts = (a: Answer): Array<unknown> =>
  a.tool !== undefined ? [{ functionCall: { name: a.tool, args: {} } }] : [{ text: a.reply }]

export const geminiResponse = (a: Answer): string =>
  JSON.stringify({
    candidates: a.empty ? [] : [{ content: { role: "model", parts: geminiParts(a) }, finishReason: "STOP", index: 0 }],
    ...geminiUsage(a),
    modelVersion: a.model,
    responseId: `fake-${a.id}`
  })

export const geminiStream = (a: Answer): Array<string> => {
  const data = (json: unknown) => `data: ${JSON.stringify(json)}\r\n\r\n`
  const responseId = `fake-${a.id}`
  if (a.empty) return [data({ candidates: [], ...geminiUsage(a), modelVersion: a.model, responseId })]
  const words = a.tool !== undefined ? [] : wordsOf(a.reply)
  const events: Array<string> = []
  for (let i = 0; i < words.length - 1; i++) {
    events.push(data({ candidates: [{ content: { role: "model", parts: [{ text: words[i] }] }, index: 0 }], modelVersion: a.model, responseId }))
  }
  const lastParts = a.tool !== undefined ? geminiParts(a) : [{ text: words[words.length - 1] ?? "" }]
  events.push(data({
    candidates: [{ content: { role: "model", parts: lastParts }, finishReason: "STOP", index: 0 }],
    ...geminiUsage(a),
    modelVersion: a.model,
    responseId
  }))
  return events
}

/** An overloaded stream: Gemini's `UNAVAILABLE` error object as the only event. */
export const geminiStreamError = (a: Answer): Array<string> => [`data: ${geminiError(503, a.model)}\r\n\r\n`]

/** `embedContent` (one) or `batchEmbedContents` (several) answers, from the fake's embedding vectors. */
export const geminiEmbeddings = (vectors: ReadonlyArray<string>, batch: boolean): string =>
  batch
    ? `{"embeddings":[${vectors.map((v) => `{"values":${v}}`).join(",")}]}`
    : `{"embedding":{"values":${vectors[0] ?? "[]"}}}`

/** The texts of an `embedContent` or `batchEmbedContents` request. */
export const geminiEmbeddingInputs = (request: Record<string, unknown>, batch: boolean): Array<string> => {
  const text = (content: unknown) =>
    isRecord(content) && Array.isArray(content["parts"])
      ? content["parts"].map((p: unknown) => (isRecord(p) && typeof p["text"] === "string" ? p["text"] : "")).join("")
      : ""
  if (!batch) return [text(request["content"])]
  return (Array.isArray(request["requests"]) ? request["requests"] : []).map((r: unknown) => text(isRecord(r) ? r["content"] : undefined))
}
