/**
 * A fault-injecting fake OpenAI-compatible upstream.
 *
 * A plain `node:http` server bound to 127.0.0.1, used by integration tests,
 * benchmarks (as the 0 ms upstream) and the demo server. The request handler
 * is deliberately lean: no logging, no Effect, canned JSON built from template
 * strings, and no timer unless `latencyMs`/`jitterMs` ask for one.
 *
 * Faults are switchable at runtime, in-process with `setFaults` or from
 * another process over HTTP:
 *
 * - `POST /_fake/faults` with a JSON {@link Faults} body replaces the faults
 * - `GET  /_fake/faults` returns the current faults
 * - `GET  /_fake/counters` returns the {@link Counters} as JSON
 * - `POST /_fake/reset` resets the counters
 *
 * The admin paths are not counted in `requests`.
 *
 * A fake speaks one wire format, chosen by `protocol` (default `openai`):
 * `azure-openai` (Azure's deployment URLs, `url` is the resource root),
 * `anthropic` (`POST /v1/messages`, Anthropic's answers, errors and stream
 * events) or `gemini` (`/v1beta/models/{model}:generateContent`,
 * `:streamGenerateContent?alt=sse`, `:embedContent`, `:batchEmbedContents`).
 * The faults are the same for all; their errors come in each provider's own
 * shape (an Anthropic 5xx fault is a 529 `overloaded_error`, a Gemini one a
 * 503 `UNAVAILABLE`; a quota fault is Anthropic's 400 about the credit
 * balance, Gemini's per-day `RESOURCE_EXHAUSTED`).
 *
 * Streams are sent in one write unless a pacing fault asks otherwise:
 * `streamDelayMs` spaces the events out (the headers and the first event go
 * at once), and `streamStallAfter` stops sending after that many events and
 * keeps the connection open, as a stalled upstream does. Paced streams are
 * counted in `streamsOpen` while their connection is open.
 *
 * @since 0.1.0
 */
import * as http from "node:http"
import type { AddressInfo, Socket } from "node:net"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import {
  ANTHROPIC_CREDIT,
  anthropicError,
  anthropicMessage,
  anthropicRateLimitHeaders,
  anthropicStream,
  anthropicStreamError,
  type Answer,
  GEMINI_QUOTA,
  geminiEmbeddingInputs,
  geminiEmbeddings,
  geminiError,
  geminiResponse,
  geminiStream,
  geminiStreamError,
  promptChars,
  type Protocol,
  toolToCall
} from "./fakeProtocols.js"

export type { Protocol } from "./fakeProtocols.js"

/**
 * Faults to inject. Probabilities are in 0..1. For chat and embeddings the
 * checks run in this order: `reset`, `hang`, `status`, `quota`, `rate429`,
 * `rate5xx`, then a normal answer possibly spoiled by a content fault
 * (`truncated`, `emptyContent`, `emptyChoices`, `streamCut`, `streamError`).
 *
 * @since 0.1.0
 */
export interface Faults {
  /** Probability of answering 429 (type and code "rate_limit_exceeded"). */
  rate429?: number | undefined
  /** Value of the `Retry-After` header on 429s; omitted when undefined. */
  retryAfter?: string | undefined
  /** If set, 429s also carry `retry-after-ms`. */
  retryAfterMs?: number | undefined
  /** Answer every request with an insufficient_quota error, as a 429 or as a 200. */
  quota?: "429" | "200" | undefined
  /** Probability of answering 503 (type "server_error"). */
  rate5xx?: number | undefined
  /** If set, every request answers this status with an OpenAI error body. */
  status?: number | undefined
  /** Probability of never answering (the socket stays open). */
  hang?: number | undefined
  /** Fixed added latency before answering (default 0: answer synchronously). */
  latencyMs?: number | undefined
  /** Plus uniform random 0..jitterMs. */
  jitterMs?: number | undefined
  /** Probability of a 200 whose body is cut in the middle. */
  truncated?: number | undefined
  /** Probability of a 200 chat completion whose message content is "". */
  emptyContent?: number | undefined
  /** Probability of a 200 with `"choices": []`. */
  emptyChoices?: number | undefined
  /** For `stream: true`, probability of ending after about half the events, without `[DONE]`. */
  streamCut?: number | undefined
  /**
   * For `stream: true`, probability of a 200 whose stream carries the
   * provider's error event instead of content, as an overloaded provider
   * sends it: Anthropic's `message_start` then an `overloaded_error` event,
   * Gemini's `UNAVAILABLE` error object, OpenAI's `server_error` object.
   */
  streamError?: number | undefined
  /** Report no `usage` in chat answers and streams, even when asked (as some OpenAI-compatible servers do). */
  omitUsage?: boolean | undefined
  /** For `stream: true`: milliseconds between two events (the headers and first event go at once). Default 0. */
  streamDelayMs?: number | undefined
  /**
   * For `stream: true`: send this many events, then nothing more, keeping the
   * connection open (a stream that stalls). 0 stalls right after the headers.
   */
  streamStallAfter?: number | undefined
  /** Probability of destroying the socket without any response. */
  reset?: number | undefined
  /** `x-ratelimit-*` headers sent on 200s (Anthropic: `anthropic-ratelimit-*` ones, on 200s and 429s). */
  rateLimitHeaders?: {
    remainingRequests: number
    remainingTokens: number
    resetRequests: string
    resetTokens: string
  } | undefined
  /** Status for `GET /v1/models` (default 200). */
  modelsStatus?: number | undefined
  /**
   * A request quota, as a provider enforces one: at most `requests` chat or
   * embeddings calls per window of `windowMs` (default 1000), a window
   * starting with the first request after the last one ended. Every answer
   * says where the caller stands (`x-ratelimit-limit-requests`,
   * `-remaining-requests`, `-reset-requests` in ms; Anthropic's
   * `anthropic-ratelimit-requests-*` for that protocol); a request beyond
   * the quota gets a 429 (after `latencyMs`, as any answer) with
   * `Retry-After` in whole seconds (rounded up) and is not counted. Counted
   * when the request has arrived, before any other fault.
   */
  requestQuota?: { readonly requests: number; readonly windowMs?: number | undefined } | undefined
}

/**
 * @since 0.1.0
 */
export interface Counters {
  /** All requests received (any path but the `/_fake/` admin paths). */
  requests: number
  chat: number
  embeddings: number
  models: number
  inFlight: number
  maxInFlight: number
  /** Answers sent, by status (hangs and resets are not counted here). */
  byStatus: Record<number, number>
  resets: number
  hangs: number
  /** Streams that stalled (`streamStallAfter`). */
  stalls: number
  /** Paced streams (`streamDelayMs`, `streamStallAfter`) whose connection is still open. */
  streamsOpen: number
  /**
   * Requests whose client closed the connection before the answer was
   * complete (an aborted call: a timeout, a hedge's loser, a caller gone).
   */
  aborted: number
  /** The Authorization header of the last request. */
  lastAuthorization: string | undefined
  /** The W3C `traceparent` and `tracestate` headers of the last request (trace context from the gateway). */
  lastTraceparent: string | undefined
  lastTracestate: string | undefined
  /** The raw body text of the last POST. */
  lastBody: string | undefined
  /** The path and query of the last request (admin paths aside). */
  lastPath: string | undefined
  /** The headers of the last request, names in lower case (admin paths aside). */
  lastHeaders: Readonly<Record<string, string | ReadonlyArray<string> | undefined>> | undefined
  /** `requestQuota`: when (epoch ms) the first answer carrying the quota's headers was sent. */
  quotaAnnouncedAt: number | undefined
  /** `requestQuota`: when (epoch ms) each request refused with a 429 had arrived. */
  quotaRefusedAt: Array<number>
}

/**
 * @since 0.1.0
 */
export interface FakeUpstream {
  /**
   * Base URL as the protocol's upstreams are configured: including `/v1`,
   * e.g. `http://127.0.0.1:43817/v1` (`openai`, `anthropic`), `/v1beta`
   * (`gemini`), or the resource root (`azure-openai`).
   */
  readonly url: string
  readonly port: number
  readonly name: string
  /** Replaces all faults. */
  setFaults(faults: Faults): void
  /** A copy of the counters. */
  counters(): Counters
  resetCounters(): void
  /** Closes the server and destroys all open sockets (including hung ones). */
  close(): Promise<void>
}

/**
 * @since 0.1.0
 */
export interface Options {
  /** Default "fake"; shows in `system_fingerprint` (`fake-${name}`) and the `x-fake-upstream` header. */
  name?: string | undefined
  /** Default 0 (a free port). */
  port?: number | undefined
  faults?: Faults | undefined
  /** Seeds a deterministic PRNG (mulberry32) for all draws; default Math.random. */
  seed?: number | undefined
  /** Model name echoed when the request has none (and listed by /v1/models); default "fake-model". */
  model?: string | undefined
  /** The models `GET /v1/models` lists; default `[model]`. */
  models?: ReadonlyArray<string> | undefined
  /** Content of the assistant message; default `Hello from ${name}`. Called with the request as sent (in the fake's protocol). */
  reply?: ((request: any) => string) | undefined
  /** The wire format spoken; default `openai`. */
  protocol?: Protocol | undefined
  /**
   * When the request offers tools and does not end with a tool result,
   * answer with a call of the first tool (arguments `{}`), in any protocol.
   */
  callTools?: boolean | undefined
  /**
   * Prompt tokens reported as read from the provider's prompt cache, on top
   * of the estimated prompt tokens: OpenAI's `prompt_tokens_details.cached_tokens`
   * (counted in `prompt_tokens`), Anthropic's `cache_read_input_tokens` (not
   * in `input_tokens`), Gemini's `cachedContentTokenCount` (counted in
   * `promptTokenCount`). Default 0: no cache fields.
   */
  cachedTokens?: number | undefined
}

// ---------------------------------------------------------------------------
// helpers

const mulberry32 = (seed: number): () => number => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const errorBody = (message: string, type: string, code: string | null): string =>
  JSON.stringify({ error: { message, type, param: null, code } })

const RATE_LIMIT_BODY = errorBody(
  "Rate limit reached for requests (injected by the fake upstream). Please try again later.",
  "rate_limit_exceeded",
  "rate_limit_exceeded"
)
const QUOTA_ERROR = {
  error: {
    message: "You exceeded your current quota, please check your plan and billing details. " +
      "For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
    type: "insufficient_quota",
    param: null,
    code: "insufficient_quota"
  }
}
const QUOTA_BODY = JSON.stringify(QUOTA_ERROR)
const OVERLOADED_BODY = errorBody("The server is overloaded or not ready yet.", "server_error", null)
const INVALID_JSON_BODY = errorBody(
  "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. " +
    "The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
  "invalid_request_error",
  null
)

const statusBody = (status: number): string => {
  switch (status) {
    case 400:
      return errorBody("Bad request (injected by the fake upstream).", "invalid_request_error", null)
    case 401:
      return errorBody("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    case 403:
      return errorBody("You are not allowed to access this resource.", "permission_error", null)
    case 404:
      return errorBody(
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found"
      )
    case 429:
      return RATE_LIMIT_BODY
    case 503:
      return OVERLOADED_BODY
    default:
      return status >= 500
        ? errorBody("The server had an error while processing your request.", "server_error", null)
        : errorBody(`Request failed with status ${status} (injected by the fake upstream).`, "invalid_request_error", null)
  }
}

const isStatus = (n: unknown): n is number => typeof n === "number" && Number.isInteger(n) && n >= 100 && n <= 599

const validateFaults = (faults: unknown): string | undefined => {
  if (typeof faults !== "object" || faults === null || Array.isArray(faults)) return "faults must be a JSON object"
  const f = faults as Faults
  if (f.status !== undefined && !isStatus(f.status)) return "status must be an integer in 100..599"
  if (f.modelsStatus !== undefined && !isStatus(f.modelsStatus)) return "modelsStatus must be an integer in 100..599"
  if (f.quota !== undefined && f.quota !== "429" && f.quota !== "200") return "quota must be \"429\" or \"200\""
  if (f.requestQuota !== undefined) {
    const q = f.requestQuota as { requests?: unknown; windowMs?: unknown }
    if (typeof q !== "object" || q === null || !Number.isInteger(q.requests) || (q.requests as number) < 0) {
      return "requestQuota.requests must be an integer >= 0"
    }
    if (q.windowMs !== undefined && !(typeof q.windowMs === "number" && q.windowMs > 0)) return "requestQuota.windowMs must be > 0"
  }
  return undefined
}

const messageChars = (messages: unknown): number => {
  if (!Array.isArray(messages)) return 0
  let n = 0
  for (const m of messages) {
    const c = (m as { content?: unknown } | null)?.content
    if (typeof c === "string") n += c.length
    else if (Array.isArray(c)) {
      for (const part of c) {
        const t = (part as { text?: unknown } | null)?.text
        if (typeof t === "string") n += t.length
      }
    }
  }
  return n
}

const fnv1a = (s: string): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
  return h >>> 0
}

const embeddingOf = (input: unknown): string => {
  const h = fnv1a(typeof input === "string" ? input : JSON.stringify(input) ?? "")
  const v: Array<number> = []
  for (let i = 0; i < 8; i++) v.push((((Math.imul(h, 2 * i + 1) >>> 0) % 2001) - 1000) / 10000)
  return `[${v.join(",")}]`
}

const wordsOf = (reply: string): Array<string> => {
  if (reply === "") return []
  const parts = reply.split(" ")
  const out: Array<string> = []
  for (let i = 0; i < parts.length; i++) out.push(i < parts.length - 1 ? parts[i] + " " : parts[i]!)
  return out
}

type Kind = "chat" | "embeddings"

/** An OpenAI tool call of `name` with arguments `{}` (with `index` in a stream's delta). */
const toolCallJson = (name: string, id: string, indexed: boolean): string =>
  `{${indexed ? `"index":0,` : ""}"id":${id},"type":"function","function":{"name":${JSON.stringify(name)},"arguments":"{}"}}`

/** What a request's URL says: the endpoint, and for Gemini the model, whether it streams, whether it is a batch. */
interface Route {
  readonly kind: Kind
  readonly model?: string | undefined
  readonly stream?: boolean | undefined
  readonly batch?: boolean | undefined
}

const CHAT: Route = { kind: "chat" }
const EMBEDDINGS: Route = { kind: "embeddings" }

// ---------------------------------------------------------------------------
// server

/**
 * Starts a fake upstream on 127.0.0.1.
 *
 * @since 0.1.0
 */
export const start = (options: Options = {}): Promise<FakeUpstream> => {
  const name = options.name ?? "fake"
  const protocol: Protocol = options.protocol ?? "openai"
  const callTools = options.callTools === true
  const cachedTokens = options.cachedTokens ?? 0
  const defaultModel = options.model ?? "fake-model"
  const listed = options.models ?? [defaultModel]
  const modelList = protocol === "anthropic"
    ? JSON.stringify({
      data: listed.map((id) => ({ type: "model", id, display_name: id, created_at: "2025-01-01T00:00:00Z" })),
      has_more: false,
      first_id: listed[0] ?? null,
      last_id: listed[listed.length - 1] ?? null
    })
    : protocol === "gemini"
    ? JSON.stringify({
      models: listed.map((id) => ({
        name: `models/${id}`,
        displayName: id,
        supportedGenerationMethods: ["generateContent", "countTokens", "embedContent"]
      }))
    })
    : JSON.stringify({
      object: "list",
      data: listed.map((id) => ({ id, object: "model", created: 0, owned_by: "fake" }))
    })
  const fingerprint = JSON.stringify(`fake-${name}`)
  const defaultReply = `Hello from ${name}`
  const replyFn = options.reply
  const rand = options.seed === undefined ? Math.random : mulberry32(options.seed)
  const initial = options.faults ?? {}
  const invalid = validateFaults(initial)
  if (invalid !== undefined) return Promise.reject(new TypeError(`FakeUpstream: ${invalid}`))
  let faults: Faults = { ...initial }

  const freshCounters = (inFlight: number): Counters => ({
    requests: 0,
    chat: 0,
    embeddings: 0,
    models: 0,
    inFlight,
    maxInFlight: inFlight,
    byStatus: {},
    resets: 0,
    hangs: 0,
    stalls: 0,
    streamsOpen: 0,
    aborted: 0,
    lastAuthorization: undefined,
    lastTraceparent: undefined,
    lastTracestate: undefined,
    lastBody: undefined,
    lastPath: undefined,
    lastHeaders: undefined,
    quotaAnnouncedAt: undefined,
    quotaRefusedAt: []
  })
  let c = freshCounters(0)
  let seq = 0
  let closed = false
  const sockets = new Set<Socket>()
  const timers = new Set<NodeJS.Timeout>()

  const hit = (p: number | undefined): boolean => p !== undefined && p > 0 && rand() < p

  const send = (
    res: http.ServerResponse,
    status: number,
    contentType: string,
    body: string,
    extra: Record<string, string> | undefined,
    sized: boolean
  ): void => {
    const headers: Record<string, string | number> = {
      "content-type": contentType,
      "x-fake-upstream": name
    }
    if (sized) headers["content-length"] = Buffer.byteLength(body)
    if (extra !== undefined) Object.assign(headers, extra)
    c.byStatus[status] = (c.byStatus[status] ?? 0) + 1
    res.writeHead(status, headers)
    res.end(body)
  }

  const sendJson = (res: http.ServerResponse, status: number, body: string, extra?: Record<string, string>): void =>
    send(res, status, "application/json", body, extra, true)

  const rateLimitExtra = (f: Faults): Record<string, string> | undefined => {
    const h = f.rateLimitHeaders
    if (h === undefined) return undefined
    return {
      "x-ratelimit-remaining-requests": String(h.remainingRequests),
      "x-ratelimit-remaining-tokens": String(h.remainingTokens),
      "x-ratelimit-reset-requests": h.resetRequests,
      "x-ratelimit-reset-tokens": h.resetTokens
    }
  }

  const retryExtra = (f: Faults): Record<string, string> | undefined => {
    // Anthropic sends its rate-limit headers on 429s too.
    const anthropic = protocol === "anthropic" && f.rateLimitHeaders !== undefined
    if (f.retryAfter === undefined && f.retryAfterMs === undefined && !anthropic) return undefined
    const h: Record<string, string> = anthropic ? anthropicRateLimitHeaders(f.rateLimitHeaders!, Date.now()) : {}
    if (f.retryAfter !== undefined) h["retry-after"] = f.retryAfter
    if (f.retryAfterMs !== undefined) h["retry-after-ms"] = String(f.retryAfterMs)
    return h
  }

  /** An error body for `status`, in the fake's protocol. */
  const errorReply = (status: number, route: Route, f: Faults): string => {
    if (protocol === "anthropic") return anthropicError(status, defaultModel)
    if (protocol === "gemini") {
      const delay = status === 429 && f.retryAfter !== undefined && /^\d+$/.test(f.retryAfter) ? Number(f.retryAfter) : undefined
      return geminiError(status, route.model ?? defaultModel, delay)
    }
    return statusBody(status)
  }

  /** A successful answer in Anthropic's or Gemini's format. */
  const answerForeign = (res: http.ServerResponse, route: Route, f: Faults, request: Record<string, unknown>): void => {
    const truncated = hit(f.truncated)
    const extra = protocol === "anthropic" && f.rateLimitHeaders !== undefined
      ? anthropicRateLimitHeaders(f.rateLimitHeaders, Date.now())
      : undefined
    if (route.kind === "embeddings") {
      const inputs = geminiEmbeddingInputs(request, route.batch === true)
      let body = geminiEmbeddings(inputs.map(embeddingOf), route.batch === true)
      if (truncated) body = body.slice(0, body.length >> 1)
      sendJson(res, 200, body, extra)
      return
    }
    const emptyContent = hit(f.emptyContent)
    const emptyChoices = hit(f.emptyChoices)
    const reply = emptyContent ? "" : replyFn === undefined ? defaultReply : String(replyFn(request))
    const tool = callTools ? toolToCall(protocol, request) : undefined
    const answer: Answer = {
      id: String(++seq),
      model: route.model ?? (typeof request["model"] === "string" ? request["model"] : defaultModel),
      reply,
      tool,
      promptTokens: Math.ceil(promptChars(protocol, request) / 4),
      completionTokens: Math.ceil((tool === undefined ? reply.length : tool.length + 2) / 4),
      omitUsage: f.omitUsage === true,
      cachedTokens,
      empty: emptyChoices
    }
    const stream = protocol === "gemini" ? route.stream === true : request["stream"] === true
    if (stream) {
      const cut = hit(f.streamCut)
      const events = hit(f.streamError)
        ? protocol === "anthropic" ? anthropicStreamError(answer) : geminiStreamError(answer)
        : protocol === "anthropic"
        ? anthropicStream(answer)
        : geminiStream(answer)
      const parts = cut ? events.slice(0, Math.max(1, events.length >> 1)) : events
      const headers: Record<string, string> = { "cache-control": "no-cache" }
      if (extra !== undefined) Object.assign(headers, extra)
      const delay = f.streamDelayMs ?? 0
      const stallAfter = f.streamStallAfter
      if (delay > 0 || stallAfter !== undefined) return paced(res, parts, headers, delay, stallAfter)
      let body = parts.join("")
      if (truncated) body = body.slice(0, body.length >> 1)
      send(res, 200, "text/event-stream", body, headers, false)
      return
    }
    let body = protocol === "anthropic" ? anthropicMessage(answer) : geminiResponse(answer)
    if (truncated) body = body.slice(0, body.length >> 1)
    sendJson(res, 200, body, extra)
  }

  /** Builds and sends a successful (possibly content-faulted) answer. */
  const answerOk = (res: http.ServerResponse, route: Route, f: Faults, request: Record<string, unknown>): void => {
    if (protocol === "anthropic" || protocol === "gemini") return answerForeign(res, route, f, request)
    const kind = route.kind
    const model = typeof request["model"] === "string" ? JSON.stringify(request["model"]) : JSON.stringify(defaultModel)
    const truncated = hit(f.truncated)
    const extra = rateLimitExtra(f)

    if (kind === "embeddings") {
      const input = request["input"]
      const inputs: Array<unknown> = typeof input === "string"
        ? [input]
        : Array.isArray(input)
        ? (input.length > 0 && typeof input[0] === "number" ? [input] : input)
        : []
      let tokens = 0
      let data = ""
      for (let i = 0; i < inputs.length; i++) {
        const x = inputs[i]
        tokens += typeof x === "string" ? Math.ceil(x.length / 4) : Array.isArray(x) ? x.length : 0
        data += `${i === 0 ? "" : ","}{"object":"embedding","index":${i},"embedding":${embeddingOf(x)}}`
      }
      let body = `{"object":"list","data":[${data}],"model":${model},"usage":{"prompt_tokens":${tokens},"total_tokens":${tokens}}}`
      if (truncated) body = body.slice(0, body.length >> 1)
      sendJson(res, 200, body, extra)
      return
    }

    const emptyContent = hit(f.emptyContent)
    const emptyChoices = hit(f.emptyChoices)
    const reply = emptyContent ? "" : replyFn === undefined ? defaultReply : String(replyFn(request))
    const tool = callTools ? toolToCall("openai", request) : undefined
    const promptTokens = Math.ceil(messageChars(request["messages"]) / 4) + cachedTokens
    const completionTokens = Math.ceil(reply.length / 4)
    const usage = `{"prompt_tokens":${promptTokens},"completion_tokens":${completionTokens},"total_tokens":${
      promptTokens + completionTokens
    }${cachedTokens > 0 ? `,"prompt_tokens_details":{"cached_tokens":${cachedTokens}}` : ""}}`
    const id = `"chatcmpl-${++seq}"`
    const created = Math.floor(Date.now() / 1000)

    if (request["stream"] === true) {
      const cut = hit(f.streamCut)
      const streamOptions = request["stream_options"] as { include_usage?: unknown } | null | undefined
      const includeUsage = typeof streamOptions === "object" && streamOptions !== null &&
        streamOptions.include_usage === true && f.omitUsage !== true
      const head = `data: {"id":${id},"object":"chat.completion.chunk","created":${created},"model":${model},` +
        `"system_fingerprint":${fingerprint},`
      const tail = includeUsage ? `,"usage":null}\n\n` : `}\n\n`
      const choice = (delta: string, finish: string) =>
        `${head}"choices":[{"index":0,"delta":${delta},"finish_reason":${finish},"logprobs":null}]${tail}`
      const events: Array<string> = []
      const failed = hit(f.streamError)
      if (failed) {
        events.push(`data: ${OVERLOADED_BODY}\n\n`)
      } else if (emptyChoices) {
        events.push(`${head}"choices":[]${tail}`)
      } else {
        events.push(choice(`{"role":"assistant","content":""}`, "null"))
        if (tool !== undefined) {
          events.push(choice(`{"tool_calls":[${toolCallJson(tool, `"call_${seq}"`, true)}]}`, "null"))
          events.push(choice("{}", `"tool_calls"`))
        } else {
          for (const w of wordsOf(reply)) events.push(choice(`{"content":${JSON.stringify(w)}}`, "null"))
          events.push(choice("{}", `"stop"`))
        }
      }
      if (includeUsage && !failed) events.push(`${head}"choices":[],"usage":${usage}}\n\n`)
      const parts = failed ? events : cut ? events.slice(0, Math.max(1, events.length >> 1)) : [...events, "data: [DONE]\n\n"]
      const headers: Record<string, string> = { "cache-control": "no-cache" }
      if (extra !== undefined) Object.assign(headers, extra)
      const delay = f.streamDelayMs ?? 0
      const stallAfter = f.streamStallAfter
      if (delay > 0 || stallAfter !== undefined) return paced(res, parts, headers, delay, stallAfter)
      let body = parts.join("")
      if (truncated) body = body.slice(0, body.length >> 1)
      send(res, 200, "text/event-stream", body, headers, false)
      return
    }

    const choices = emptyChoices
      ? "[]"
      : tool !== undefined
      ? `[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[${
        toolCallJson(tool, `"call_${seq}"`, false)
      }]},"finish_reason":"tool_calls","logprobs":null}]`
      : `[{"index":0,"message":{"role":"assistant","content":${
        JSON.stringify(reply)
      }},"finish_reason":"stop","logprobs":null}]`
    let body = `{"id":${id},"object":"chat.completion","created":${created},"model":${model},` +
      `"system_fingerprint":${fingerprint},"choices":${choices}${f.omitUsage === true ? "" : `,"usage":${usage}`}}`
    if (truncated) body = body.slice(0, body.length >> 1)
    sendJson(res, 200, body, extra)
  }

  /** Sends SSE events one at a time, `delay` ms apart, stalling after `stallAfter` of them. */
  const paced = (
    res: http.ServerResponse,
    parts: ReadonlyArray<string>,
    headers: Record<string, string>,
    delay: number,
    stallAfter: number | undefined
  ): void => {
    c.byStatus[200] = (c.byStatus[200] ?? 0) + 1
    res.writeHead(200, { "content-type": "text/event-stream", "x-fake-upstream": name, ...headers })
    // Counted in the counters current when the stream started (resetCounters keeps it).
    c.streamsOpen++
    let timer: NodeJS.Timeout | undefined
    res.once("close", () => {
      c.streamsOpen--
      if (timer !== undefined) {
        clearTimeout(timer)
        timers.delete(timer)
      }
    })
    let i = 0
    const next = (): void => {
      timer = undefined
      if (closed || res.destroyed) return
      if (stallAfter !== undefined && i >= stallAfter) {
        c.stalls++
        return
      }
      if (i >= parts.length) {
        res.end()
        return
      }
      res.write(parts[i++])
      if (delay <= 0) return next()
      const t = setTimeout(() => {
        timers.delete(t)
        next()
      }, delay)
      timer = t
      timers.add(t)
    }
    next()
  }

  /** Runs the fault checks in order and answers (or not). */
  const answer = (req: http.IncomingMessage, res: http.ServerResponse, route: Route, f: Faults, raw: string): void => {
    if (hit(f.reset)) {
      c.resets++
      resetting.add(res)
      req.socket.destroy()
      return
    }
    if (hit(f.hang)) {
      c.hangs++
      return
    }
    if (f.status !== undefined) {
      sendJson(res, f.status, errorReply(f.status, route, f), f.status === 429 ? retryExtra(f) : undefined)
      return
    }
    if (f.quota !== undefined && protocol === "anthropic") return sendJson(res, 400, ANTHROPIC_CREDIT)
    if (f.quota !== undefined && protocol === "gemini") return sendJson(res, 429, GEMINI_QUOTA)
    if (f.quota === "429") return sendJson(res, 429, QUOTA_BODY)
    if (f.quota === "200") return sendJson(res, 200, QUOTA_BODY, rateLimitExtra(f))
    if (hit(f.rate429)) {
      return sendJson(res, 429, protocol === "anthropic" || protocol === "gemini" ? errorReply(429, route, f) : RATE_LIMIT_BODY, retryExtra(f))
    }
    if (hit(f.rate5xx)) {
      if (protocol === "anthropic") return sendJson(res, 529, anthropicError(529, defaultModel))
      if (protocol === "gemini") return sendJson(res, 503, errorReply(503, route, f))
      return sendJson(res, 503, OVERLOADED_BODY)
    }
    let request: unknown
    try {
      request = JSON.parse(raw)
    } catch {
      return sendJson(res, 400, INVALID_JSON_BODY)
    }
    if (typeof request !== "object" || request === null || Array.isArray(request)) {
      return sendJson(res, 400, INVALID_JSON_BODY)
    }
    answerOk(res, route, f, request as Record<string, unknown>)
  }

  // requestQuota: the current window's end (epoch ms) and the calls it has counted.
  let quotaWindowEnd = 0
  let quotaUsed = 0

  /**
   * `requestQuota`: counts the request in the current window and sets the
   * quota's headers on `res`; when it is over the quota, the 429 to send.
   */
  const overQuota = (res: http.ServerResponse, quota: NonNullable<Faults["requestQuota"]>): (() => void) | undefined => {
    const now = Date.now()
    if (now >= quotaWindowEnd) {
      quotaWindowEnd = now + (quota.windowMs ?? 1000)
      quotaUsed = 0
    }
    const allowed = quotaUsed < quota.requests
    if (allowed) quotaUsed++
    const resetMs = quotaWindowEnd - now
    if (protocol === "anthropic") {
      res.setHeader("anthropic-ratelimit-requests-limit", String(quota.requests))
      res.setHeader("anthropic-ratelimit-requests-remaining", String(quota.requests - quotaUsed))
      res.setHeader("anthropic-ratelimit-requests-reset", new Date(quotaWindowEnd).toISOString())
    } else {
      res.setHeader("x-ratelimit-limit-requests", String(quota.requests))
      res.setHeader("x-ratelimit-remaining-requests", String(quota.requests - quotaUsed))
      res.setHeader("x-ratelimit-reset-requests", `${resetMs}ms`)
    }
    res.once("finish", () => {
      c.quotaAnnouncedAt ??= Date.now()
    })
    if (allowed) return undefined
    c.quotaRefusedAt.push(now)
    const retryAfter = String(Math.max(1, Math.ceil(resetMs / 1000)))
    return () =>
      sendJson(
        res,
        429,
        protocol === "openai" || protocol === "azure-openai" ? RATE_LIMIT_BODY : errorReply(429, CHAT, { retryAfter }),
        { "retry-after": retryAfter }
      )
  }

  const handlePost = (req: http.IncomingMessage, res: http.ServerResponse, route: Route): void => {
    const f = faults
    let raw = ""
    req.setEncoding("utf8")
    req.on("data", (chunk: string) => {
      raw += chunk
    })
    req.on("end", () => {
      c.lastBody = raw
      if (closed || res.destroyed) return
      const refuse = f.requestQuota !== undefined ? overQuota(res, f.requestQuota) : undefined
      const respond = refuse === undefined ? () => answer(req, res, route, f, raw) : refuse
      const latency = f.latencyMs ?? 0
      const delay = latency + (f.jitterMs !== undefined && f.jitterMs > 0 ? rand() * f.jitterMs : 0)
      if (delay <= 0) return respond()
      const timer = setTimeout(() => {
        timers.delete(timer)
        if (!closed && !res.destroyed) respond()
      }, delay)
      timers.add(timer)
    })
  }

  const readBody = (req: http.IncomingMessage, k: (raw: string) => void): void => {
    let raw = ""
    req.setEncoding("utf8")
    req.on("data", (chunk: string) => {
      raw += chunk
    })
    req.on("end", () => k(raw))
  }

  const snapshot = (): Counters => ({ ...c, byStatus: { ...c.byStatus }, quotaRefusedAt: [...c.quotaRefusedAt] })

  const setFaults = (next: Faults): void => {
    const invalid = validateFaults(next)
    if (invalid !== undefined) throw new TypeError(`FakeUpstream: ${invalid}`)
    faults = { ...next }
  }

  const resetCounters = (): void => {
    const open = c.streamsOpen
    c = freshCounters(c.inFlight)
    c.streamsOpen = open
  }

  const admin = (req: http.IncomingMessage, res: http.ServerResponse, path: string): void => {
    const send200 = (body: string) => {
      res.writeHead(200, { "content-type": "application/json", "x-fake-upstream": name })
      res.end(body)
    }
    const fail = (status: number, message: string) => {
      res.writeHead(status, { "content-type": "application/json", "x-fake-upstream": name })
      res.end(errorBody(message, "invalid_request_error", null))
    }
    if (path === "/_fake/faults" && req.method === "POST") {
      return readBody(req, (raw) => {
        let parsed: unknown
        try {
          parsed = raw.trim() === "" ? {} : JSON.parse(raw)
        } catch {
          return fail(400, "faults body is not valid JSON")
        }
        const invalid = validateFaults(parsed)
        if (invalid !== undefined) return fail(400, invalid)
        faults = { ...(parsed as Faults) }
        send200(JSON.stringify({ ok: true, faults }))
      })
    }
    if (path === "/_fake/faults" && req.method === "GET") return send200(JSON.stringify(faults))
    if (path === "/_fake/counters" && req.method === "GET") return send200(JSON.stringify(snapshot()))
    if (path === "/_fake/reset" && req.method === "POST") {
      return readBody(req, () => {
        resetCounters()
        send200(`{"ok":true}`)
      })
    }
    req.resume()
    fail(404, `Unknown fake-upstream admin URL: ${req.method} ${path}`)
  }

  /** Answers whose socket the fake destroyed itself (`reset`): not the client's abort. */
  const resetting = new WeakSet<http.ServerResponse>()
  function onInFlightDone(this: http.ServerResponse) {
    c.inFlight--
    if (!this.writableEnded && !closed && !resetting.has(this)) c.aborted++
  }

  const server = http.createServer((req, res) => {
    const url = req.url ?? "/"
    const q = url.indexOf("?")
    const path = q === -1 ? url : url.slice(0, q)
    req.on("error", noop)
    res.on("error", noop)
    if (path.startsWith("/_fake/")) return admin(req, res, path)

    c.requests++
    c.lastAuthorization = req.headers.authorization
    c.lastTraceparent = req.headers.traceparent as string | undefined
    c.lastTracestate = req.headers.tracestate as string | undefined
    c.lastPath = url
    c.lastHeaders = req.headers
    if (++c.inFlight > c.maxInFlight) c.maxInFlight = c.inFlight
    // resetCounters carries inFlight over, so decrementing the current counters stays consistent.
    res.once("close", onInFlightDone)

    const method = req.method
    if (method === "POST") {
      const route = routeOf(path, q === -1 ? "" : url.slice(q + 1))
      if (route !== undefined) {
        if (route.kind === "chat") c.chat++
        else c.embeddings++
        return handlePost(req, res, route)
      }
      readBody(req, (raw) => {
        c.lastBody = raw
        notFound(res, method, path)
      })
      return
    }
    req.resume()
    if (method === "GET" && path === modelsPath) {
      c.models++
      const status = faults.modelsStatus ?? 200
      if (status === 200) {
        return sendJson(res, 200, modelList)
      }
      return sendJson(res, status, statusBody(status))
    }
    notFound(res, method ?? "GET", path)
  })

  /** The endpoint a POST's path names in the fake's protocol, if any. */
  const routeOf = (path: string, query: string): Route | undefined => {
    switch (protocol) {
      case "openai":
        return path === "/v1/chat/completions" ? CHAT : path === "/v1/embeddings" ? EMBEDDINGS : undefined
      case "azure-openai": {
        // Azure answers 404 without an api-version.
        const m = /^\/openai\/deployments\/[^/]+\/(chat\/completions|embeddings)$/.exec(path)
        if (m === null || !/(^|&)api-version=[^&]+/.test(query)) return undefined
        return m[1] === "embeddings" ? EMBEDDINGS : CHAT
      }
      case "anthropic":
        return path === "/v1/messages" ? CHAT : undefined
      case "gemini": {
        const m = /^\/v1beta\/models\/([^/:]+):(generateContent|streamGenerateContent|embedContent|batchEmbedContents)$/.exec(path)
        if (m === null) return undefined
        const model = decodeURIComponent(m[1]!)
        switch (m[2]) {
          case "generateContent":
            return { kind: "chat", model, stream: false }
          case "streamGenerateContent":
            return /(^|&)alt=sse(&|$)/.test(query) ? { kind: "chat", model, stream: true } : undefined
          case "embedContent":
            return { kind: "embeddings", model, batch: false }
          default:
            return { kind: "embeddings", model, batch: true }
        }
      }
    }
  }

  const modelsPath = protocol === "gemini" ? "/v1beta/models" : protocol === "azure-openai" ? "/openai/models" : "/v1/models"

  const notFound = (res: http.ServerResponse, method: string, path: string): void =>
    sendJson(
      res,
      404,
      errorBody(`Unknown request URL: ${method} ${path}. Please check the URL for typos.`, "invalid_request_error", "unknown_url")
    )

  server.keepAliveTimeout = 65_000
  server.headersTimeout = 66_000
  server.on("connection", (socket: Socket) => {
    sockets.add(socket)
    socket.once("close", () => sockets.delete(socket))
  })

  let closing: Promise<void> | undefined
  const close = (): Promise<void> => {
    if (closing !== undefined) return closing
    closed = true
    for (const t of timers) clearTimeout(t)
    timers.clear()
    closing = new Promise<void>((resolve) => {
      server.close(() => resolve())
    })
    for (const s of sockets) s.destroy()
    sockets.clear()
    return closing
  }

  return new Promise<FakeUpstream>((resolve, reject) => {
    const onError = (err: Error) => reject(err)
    server.once("error", onError)
    server.listen(options.port ?? 0, "127.0.0.1", () => {
      server.off("error", onError)
      const port = (server.address() as AddressInfo).port
      const root = `http://127.0.0.1:${port}`
      resolve({
        url: protocol === "gemini" ? `${root}/v1beta` : protocol === "azure-openai" ? root : `${root}/v1`,
        port,
        name,
        setFaults,
        counters: snapshot,
        resetCounters,
        close
      })
    })
  })
}

const noop = (): void => {}

/**
 * A scoped fake upstream: started on acquire, closed when the scope closes.
 *
 * @since 0.1.0
 */
export const make = (options?: Options): Effect.Effect<FakeUpstream, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.promise(() => start(options)), (u) => Effect.promise(() => u.close()))
