/**
 * Anthropic's Messages API (`POST /v1/messages`) behind the OpenAI chat
 * completions surface: requests translated to it, its answers, errors and
 * streams translated back. Pure functions and one incremental state machine
 * (the stream), no I/O: the upstream client sends what they build.
 *
 * What maps and what is refused is listed in the README (Providers). In
 * short: system and developer messages become `system`; text, image (URL or
 * base64) and PDF parts map; tools, `tool_choice`, assistant `tool_calls`
 * and `tool` results map; `max_tokens` gets a default because Anthropic
 * requires it; `n > 1`, `logprobs`, `seed`, penalties, `logit_bias`,
 * `response_format` JSON modes, audio and unknown fields are refused by name.
 *
 * @since 0.1.0
 */
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import type * as OpenAI from "../OpenAI.js"
import { parseRetryAfter } from "../Retry.js"
import {
  QuotaExhausted,
  UpstreamAuthFailed,
  type UpstreamError,
  UpstreamModelNotFound,
  UpstreamRateLimited,
  UpstreamRejected,
  UpstreamServerError
} from "../UpstreamError.js"
import {
  chunk,
  count,
  DONE,
  isRecord,
  isUnset,
  parseDataUrl,
  sse,
  sseEvents,
  type StreamOptions,
  type StreamTranslator,
  textOf,
  UntranslatableField,
  usage
} from "./Translation.js"

/** The Messages API's path under the upstream's `baseUrl` (which ends in `/v1`). */
export const MESSAGES_PATH = "/messages"

/** The API version sent in `anthropic-version`. */
export const API_VERSION = "2023-06-01"

/** `max_tokens` when the caller gave none: Anthropic requires one. */
export const DEFAULT_MAX_TOKENS = 4096

/** The headers that authenticate a call: `x-api-key`, and the API version. */
export const headers = (apiKey: string, version: string = API_VERSION): Record<string, string> => ({
  "x-api-key": apiKey,
  "anthropic-version": version
})

export interface RequestOptions {
  /** The model name Anthropic knows (after aliases). */
  readonly model: string
  /** Default {@link DEFAULT_MAX_TOKENS}. */
  readonly defaultMaxTokens?: number | undefined
}

const IMAGE_TYPES = new Set(["image/jpeg", "image/png", "image/gif", "image/webp"])

/**
 * Fields that have no Anthropic equivalent, with the values that change
 * nothing (and so may be dropped): any other value is refused.
 */
const NEUTRAL: Record<string, (v: any) => boolean> = {
  n: (v) => isUnset(v, 1),
  logprobs: (v) => isUnset(v, false),
  top_logprobs: (v) => isUnset(v, 0),
  presence_penalty: (v) => isUnset(v, 0),
  frequency_penalty: (v) => isUnset(v, 0),
  logit_bias: (v) => isUnset(v) || (isRecord(v) && Object.keys(v).length === 0),
  seed: (v) => isUnset(v),
  store: (v) => isUnset(v, false),
  metadata: (v) => isUnset(v) || (isRecord(v) && Object.keys(v).length === 0),
  reasoning_effort: (v) => isUnset(v),
  modalities: (v) => isUnset(v) || (Array.isArray(v) && v.every((m) => m === "text")),
  audio: (v) => isUnset(v),
  prediction: (v) => isUnset(v),
  service_tier: (v) => isUnset(v, "auto", "default"),
  stream_options: () => true,
  function_call: (v) => isUnset(v),
  functions: (v) => isUnset(v)
}

/** Fields translated below. */
const MAPPED = new Set([
  "model",
  "messages",
  "max_tokens",
  "max_completion_tokens",
  "temperature",
  "top_p",
  "stop",
  "stream",
  "tools",
  "tool_choice",
  "parallel_tool_calls",
  "response_format",
  "user"
])

const refuse = (field: string, reason: string) => new UntranslatableField({ provider: "anthropic", field, reason })

class Refused {
  constructor(readonly error: UntranslatableField) {}
}

const fail = (field: string, reason: string): never => {
  throw new Refused(refuse(field, reason))
}

/** One content part of a user message as an Anthropic content block. */
const partToBlock = (part: Record<string, any>, path: string): Record<string, unknown> => {
  switch (part["type"]) {
    case "text":
      return { type: "text", text: String(part["text"] ?? "") }
    case "image_url": {
      const ref = part["image_url"]
      const url = typeof ref === "string" ? ref : isRecord(ref) ? ref["url"] : undefined
      if (typeof url !== "string") return fail(`${path}.image_url.url`, "expected an image URL")
      if (url.startsWith("data:")) {
        const data = parseDataUrl(url)
        if (data === undefined) return fail(`${path}.image_url.url`, "a data URL must be base64")
        if (!IMAGE_TYPES.has(data.mediaType)) {
          return fail(`${path}.image_url.url`, `images must be JPEG, PNG, GIF or WebP, got ${data.mediaType}`)
        }
        return { type: "image", source: { type: "base64", media_type: data.mediaType, data: data.data } }
      }
      if (/^https?:\/\//i.test(url)) return { type: "image", source: { type: "url", url } }
      return fail(`${path}.image_url.url`, "expected an http(s) URL or a base64 data URL")
    }
    case "file": {
      const file = part["file"]
      const data = isRecord(file) && typeof file["file_data"] === "string" ? parseDataUrl(file["file_data"]) : undefined
      if (data === undefined || data.mediaType !== "application/pdf") {
        return fail(`${path}.file`, "only PDF files sent inline as a base64 data URL (file_data) can be sent")
      }
      return { type: "document", source: { type: "base64", media_type: "application/pdf", data: data.data } }
    }
    default:
      return fail(`${path}.type`, `content parts of type '${String(part["type"])}' have no Anthropic equivalent`)
  }
}

/** Text-only content (system, developer, tool results): a string, or text parts. */
const textContent = (content: unknown, path: string): string => {
  if (typeof content === "string") return content
  if (Array.isArray(content)) {
    content.forEach((part, j) => {
      if (!isRecord(part) || part["type"] !== "text") fail(`${path}[${j}]`, "only text parts can be sent here")
    })
  }
  return textOf(content)
}

const toolInput = (args: string, path: string): unknown => {
  if (args.trim() === "") return {}
  try {
    const input: unknown = JSON.parse(args)
    if (isRecord(input)) return input
  } catch {
    // refused below
  }
  return fail(path, "tool call arguments must be a JSON object")
}

/**
 * The Messages API body for an OpenAI chat request, or the first field it
 * cannot carry.
 */
export const toRequest = (
  request: OpenAI.ChatCompletionRequest,
  options: RequestOptions
): Either.Either<Record<string, unknown>, UntranslatableField> => {
  try {
    return Either.right(build(request, options))
  } catch (e) {
    if (e instanceof Refused) return Either.left(e.error)
    throw e
  }
}

const build = (request: OpenAI.ChatCompletionRequest, options: RequestOptions): Record<string, unknown> => {
  const r = request as Record<string, any>
  for (const key of Object.keys(r)) {
    if (MAPPED.has(key)) continue
    const neutral = NEUTRAL[key]
    if (neutral === undefined) fail(key, "not a parameter this gateway can translate to the Messages API")
    else if (!neutral(r[key])) fail(key, "the Messages API has no equivalent")
  }

  const system: Array<string> = []
  const messages: Array<{ role: "user" | "assistant"; content: string | Array<Record<string, unknown>> }> = []
  /** The user message collecting consecutive tool results. */
  let results: Array<Record<string, unknown>> | undefined
  request.messages.forEach((m, i) => {
    const path = `messages[${i}]`
    if (m.role !== "tool") results = undefined
    switch (m.role) {
      case "system":
      case "developer":
        system.push(textContent(m.content, `${path}.content`))
        return
      case "user": {
        const content = typeof m.content === "string"
          ? m.content
          : m.content.map((part, j) => partToBlock(part, `${path}.content[${j}]`))
        messages.push({ role: "user", content })
        return
      }
      case "assistant": {
        const blocks: Array<Record<string, unknown>> = []
        const text = m.content === undefined || m.content === null ? "" : textContent(m.content, `${path}.content`)
        if (text !== "") blocks.push({ type: "text", text })
        m.tool_calls?.forEach((call, j) => {
          blocks.push({
            type: "tool_use",
            id: call.id,
            name: call.function.name,
            input: toolInput(call.function.arguments, `${path}.tool_calls[${j}].function.arguments`)
          })
        })
        if (blocks.length === 0) return
        messages.push({ role: "assistant", content: blocks.length === 1 && text !== "" ? text : blocks })
        return
      }
      case "tool": {
        const block = {
          type: "tool_result",
          tool_use_id: m.tool_call_id,
          content: textContent(m.content, `${path}.content`)
        }
        if (results === undefined) {
          results = [block]
          messages.push({ role: "user", content: results })
        } else results.push(block)
        return
      }
    }
  })

  const body: Record<string, unknown> = {
    model: options.model,
    max_tokens: r["max_completion_tokens"] ?? r["max_tokens"] ?? options.defaultMaxTokens ?? DEFAULT_MAX_TOKENS,
    messages
  }
  if (system.length > 0) body["system"] = system.join("\n\n")
  if (!isUnset(r["temperature"])) {
    if (r["temperature"] > 1) fail("temperature", "Anthropic accepts a temperature from 0 to 1")
    body["temperature"] = r["temperature"]
  }
  if (!isUnset(r["top_p"])) body["top_p"] = r["top_p"]
  if (!isUnset(r["stop"])) body["stop_sequences"] = typeof r["stop"] === "string" ? [r["stop"]] : r["stop"]
  if (r["stream"] === true) body["stream"] = true
  if (typeof r["user"] === "string" && r["user"] !== "") body["metadata"] = { user_id: r["user"] }
  const format = r["response_format"]
  if (isRecord(format) && format["type"] !== "text") {
    fail("response_format", `'${String(format["type"])}' has no equivalent in the Messages API`)
  }

  const tools = request.tools
  if (tools !== undefined && tools.length > 0) {
    body["tools"] = tools.map((t) => ({
      name: t.function.name,
      ...(t.function.description === undefined ? {} : { description: t.function.description }),
      input_schema: t.function.parameters ?? { type: "object", properties: {} }
    }))
  }
  const choice = r["tool_choice"]
  const serial = r["parallel_tool_calls"] === false
  let toolChoice: Record<string, unknown> | undefined
  if (choice === "auto") toolChoice = { type: "auto" }
  else if (choice === "required") toolChoice = { type: "any" }
  else if (choice === "none") toolChoice = { type: "none" }
  else if (isRecord(choice)) {
    const name = isRecord(choice["function"]) ? choice["function"]["name"] : undefined
    if (choice["type"] !== "function" || typeof name !== "string") {
      fail("tool_choice", "expected 'none', 'auto', 'required' or a function to call")
    }
    toolChoice = { type: "tool", name }
  }
  if (serial && body["tools"] !== undefined) toolChoice ??= { type: "auto" }
  if (toolChoice !== undefined) {
    if (serial && toolChoice["type"] !== "none") toolChoice["disable_parallel_tool_use"] = true
    body["tool_choice"] = toolChoice
  }
  return body
}

// ---------------------------------------------------------------------------
// Responses

const FINISH: Record<string, string> = {
  end_turn: "stop",
  stop_sequence: "stop",
  pause_turn: "stop",
  max_tokens: "length",
  model_context_window_exceeded: "length",
  tool_use: "tool_calls",
  refusal: "content_filter"
}

/** OpenAI's `finish_reason` for Anthropic's `stop_reason`. */
export const finishReason = (stopReason: unknown): string =>
  typeof stopReason === "string" ? FINISH[stopReason] ?? "stop" : "stop"

/**
 * OpenAI usage from Anthropic's: its `input_tokens` leaves out the tokens
 * read from and written to the prompt cache, OpenAI's `prompt_tokens`
 * counts them all, the cache reads as `cached_tokens`.
 */
export const usageOf = (u: unknown) => {
  if (!isRecord(u)) return usage(0, 0, 0)
  const read = count(u["cache_read_input_tokens"])
  const prompt = count(u["input_tokens"]) + count(u["cache_creation_input_tokens"]) + read
  return usage(prompt, count(u["output_tokens"]), read)
}

export type Translated =
  | { readonly _tag: "Ok"; readonly json: Record<string, unknown> }
  | { readonly _tag: "Invalid"; readonly reason: string }

/**
 * An OpenAI chat completion from a Messages API answer. `model` is the name
 * the caller asked for; `created` is in seconds.
 */
export const fromResponse = (text: string, options: { readonly model: string; readonly created: number }): Translated => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return { _tag: "Invalid", reason: `body is not JSON: ${e instanceof Error ? e.message : String(e)}` }
  }
  if (!isRecord(json) || !Array.isArray(json["content"])) {
    return { _tag: "Invalid", reason: "body is not a message (no content)" }
  }
  let content = ""
  const toolCalls: Array<Record<string, unknown>> = []
  for (const block of json["content"]) {
    if (!isRecord(block)) continue
    if (block["type"] === "text" && typeof block["text"] === "string") content += block["text"]
    else if (block["type"] === "tool_use") {
      toolCalls.push({
        id: String(block["id"]),
        type: "function",
        function: { name: String(block["name"]), arguments: JSON.stringify(block["input"] ?? {}) }
      })
    }
  }
  const message: Record<string, unknown> = { role: "assistant", content: content === "" && toolCalls.length > 0 ? null : content }
  if (toolCalls.length > 0) message["tool_calls"] = toolCalls
  if (json["stop_reason"] === "refusal" && content === "") message["refusal"] = "refused by the model"
  return {
    _tag: "Ok",
    json: {
      id: typeof json["id"] === "string" ? json["id"] : "msg",
      object: "chat.completion",
      created: options.created,
      model: options.model,
      choices: [{ index: 0, message, finish_reason: finishReason(json["stop_reason"]), logprobs: null }],
      usage: usageOf(json["usage"])
    }
  }
}

// ---------------------------------------------------------------------------
// Errors

interface ErrorInfo {
  readonly type: string
  readonly message: string
}

const errorInfo = (text: string): ErrorInfo => {
  try {
    const json: unknown = JSON.parse(text)
    const error = isRecord(json) ? json["error"] : undefined
    if (isRecord(error)) {
      return {
        type: typeof error["type"] === "string" ? error["type"] : "api_error",
        message: typeof error["message"] === "string" ? error["message"] : ""
      }
    }
  } catch {
    // not JSON
  }
  return { type: "api_error", message: text.slice(0, 200) }
}

/** Anthropic's error body as an OpenAI one, so that a caller on the OpenAI SDK reads it. */
export const openAIErrorBody = (text: string, status: number): string => {
  const info = errorInfo(text)
  const type = status === 400 || status === 413 || status === 422 || status === 404 ? "invalid_request_error" : info.type
  return JSON.stringify({ error: { message: info.message, type, param: null, code: info.type } })
}

/**
 * The failover class of a Messages API answer that is not a 200. `now` is
 * the clock's epoch millis (for a `retry-after` date).
 *
 * 429 is a rate limit (its `retry-after` kept); 529 `overloaded_error` and
 * other 5xx are the server's; 401/403 the gateway's key; 404 about a model
 * is a model this upstream lacks; 400 about the credit balance is a spent
 * quota; other 400s, 404s, 413 and 422 are the caller's, relayed as an
 * OpenAI error body.
 */
export const errorFrom = (
  upstream: string,
  status: number,
  responseHeaders: Readonly<Record<string, string | undefined>>,
  text: string,
  now: number
): UpstreamError => {
  const info = errorInfo(text)
  if (status === 429) {
    const ra = responseHeaders["retry-after"]
    const retryAfter = ra === undefined ? undefined : Option.getOrUndefined(parseRetryAfter(ra, now))
    return new UpstreamRateLimited({ upstream, retryAfter })
  }
  if (status === 401 || status === 403) return new UpstreamAuthFailed({ upstream, status })
  if (status === 400 && /credit balance/i.test(info.message)) {
    return new QuotaExhausted({ upstream, code: "insufficient_quota" })
  }
  if (status === 404 && (info.type === "not_found_error" && /\bmodel\b/i.test(info.message))) {
    return new UpstreamModelNotFound({ upstream, status, body: openAIErrorBody(text, status), contentType: "application/json" })
  }
  if (status === 400 || status === 404 || status === 413 || status === 422) {
    return new UpstreamRejected({ upstream, status, body: openAIErrorBody(text, status), contentType: "application/json" })
  }
  return new UpstreamServerError({ upstream, status })
}

/**
 * OpenAI's `x-ratelimit-*` headers from Anthropic's `anthropic-ratelimit-*`
 * ones (remaining counts, and reset times as RFC 3339 dates turned into
 * waits from `now`), so that headroom steering reads them as it reads
 * OpenAI's. Of the token limits (total, input, output), the one with the
 * fewest remaining counts. The other headers are kept.
 */
export const rateLimitHeaders = (
  responseHeaders: Readonly<Record<string, string | undefined>>,
  now: number
): Record<string, string | undefined> => {
  const out: Record<string, string | undefined> = { ...responseHeaders }
  const wait = (reset: string | undefined): string | undefined => {
    if (reset === undefined) return undefined
    const at = Date.parse(reset)
    return Number.isNaN(at) ? undefined : `${Math.max(0, at - now)}ms`
  }
  const requests = responseHeaders["anthropic-ratelimit-requests-remaining"]
  if (requests !== undefined) {
    out["x-ratelimit-remaining-requests"] = requests
    out["x-ratelimit-reset-requests"] = wait(responseHeaders["anthropic-ratelimit-requests-reset"])
    const limit = responseHeaders["anthropic-ratelimit-requests-limit"]
    if (limit !== undefined) out["x-ratelimit-limit-requests"] = limit
  }
  let fewest: { remaining: number; reset: string | undefined } | undefined
  for (const kind of ["tokens", "input-tokens", "output-tokens"]) {
    const remaining = responseHeaders[`anthropic-ratelimit-${kind}-remaining`]
    if (remaining === undefined || !/^\d+$/.test(remaining.trim())) continue
    const n = Number(remaining)
    if (fewest === undefined || n < fewest.remaining) {
      fewest = { remaining: n, reset: responseHeaders[`anthropic-ratelimit-${kind}-reset`] }
    }
  }
  if (fewest !== undefined) {
    out["x-ratelimit-remaining-tokens"] = String(fewest.remaining)
    out["x-ratelimit-reset-tokens"] = wait(fewest.reset)
  }
  return out
}

// ---------------------------------------------------------------------------
// Streams

/**
 * Translates a Messages API stream (`message_start`, `content_block_start`,
 * `content_block_delta` with `text_delta` or `input_json_delta`,
 * `message_delta`, `message_stop`, `ping`, `error`) into OpenAI chunks
 * ending in `data: [DONE]`. Incremental: it holds only the parser's
 * unfinished line and a few counters, whatever the stream's length, and its
 * output does not depend on how the body was split.
 */
export const streamTranslator = (options: StreamOptions): StreamTranslator => {
  let id = options.id ?? "msg"
  let out = ""
  let done = false
  let failed: { readonly type: string; readonly message: string } | undefined
  let inputUsage: unknown = undefined
  let outputTokens = 0
  /** Content block index -> OpenAI tool call index. */
  const toolIndex = new Map<number, number>()
  let tools = 0
  let finish: string | undefined
  /**
   * The role chunk of `message_start`, held until something follows it: an
   * `error` right after `message_start` (Anthropic's overload, typically)
   * is then the stream's first event, and the relay can still fail over.
   */
  let rolePending = false

  const emit = (delta: Record<string, unknown>, finishReason: string | null = null) => {
    const meta = { id, created: options.created, model: options.model }
    if (rolePending) {
      rolePending = false
      out += sse(chunk(meta, { role: "assistant", content: "" }, null))
    }
    out += sse(chunk(meta, delta, finishReason))
  }

  const onEvent = (data: string) => {
    if (done || failed !== undefined) return
    let event: unknown
    try {
      event = JSON.parse(data)
    } catch {
      failed = { type: "invalid_response", message: "the provider sent an event that is not JSON" }
      out += sse({ error: { ...failed, param: null, code: null } })
      return
    }
    if (!isRecord(event)) return
    switch (event["type"]) {
      case "message_start": {
        const message = event["message"]
        if (isRecord(message)) {
          if (typeof message["id"] === "string") id = message["id"]
          inputUsage = message["usage"]
          outputTokens = count(isRecord(message["usage"]) ? message["usage"]["output_tokens"] : 0)
        }
        rolePending = true
        return
      }
      case "content_block_start": {
        const block = event["content_block"]
        const index = count(event["index"])
        if (!isRecord(block)) return
        if (block["type"] === "tool_use") {
          const n = tools++
          toolIndex.set(index, n)
          emit({
            tool_calls: [{ index: n, id: String(block["id"]), type: "function", function: { name: String(block["name"]), arguments: "" } }]
          })
        } else if (block["type"] === "text" && typeof block["text"] === "string" && block["text"] !== "") {
          emit({ content: block["text"] })
        }
        return
      }
      case "content_block_delta": {
        const delta = event["delta"]
        if (!isRecord(delta)) return
        if (delta["type"] === "text_delta" && typeof delta["text"] === "string") emit({ content: delta["text"] })
        else if (delta["type"] === "input_json_delta" && typeof delta["partial_json"] === "string") {
          const n = toolIndex.get(count(event["index"]))
          if (n !== undefined && delta["partial_json"] !== "") {
            emit({ tool_calls: [{ index: n, function: { arguments: delta["partial_json"] } }] })
          }
        }
        return
      }
      case "message_delta": {
        const delta = event["delta"]
        if (isRecord(delta) && delta["stop_reason"] !== undefined && delta["stop_reason"] !== null) {
          finish = finishReason(delta["stop_reason"])
        }
        if (isRecord(event["usage"]) && event["usage"]["output_tokens"] !== undefined) {
          outputTokens = count(event["usage"]["output_tokens"])
        }
        return
      }
      case "message_stop": {
        emit({}, finish ?? "stop")
        if (options.includeUsage) {
          const u = isRecord(inputUsage) ? { ...inputUsage, output_tokens: outputTokens } : { output_tokens: outputTokens }
          out += sse({ id, object: "chat.completion.chunk", created: options.created, model: options.model, choices: [], usage: usageOf(u) })
        }
        out += DONE
        done = true
        return
      }
      case "error": {
        rolePending = false
        const error = event["error"]
        failed = {
          type: isRecord(error) && typeof error["type"] === "string" ? error["type"] : "api_error",
          message: isRecord(error) && typeof error["message"] === "string" ? error["message"] : "stream error"
        }
        out += sse({ error: { message: failed.message, type: failed.type, param: null, code: failed.type } })
        return
      }
      default:
        // ping, content_block_stop, and event types added later
        return
    }
  }

  const events = sseEvents((event) => onEvent(event.data))
  const take = () => {
    const text = out
    out = ""
    return text
  }
  return {
    feed: (bytes) => {
      events.feed(bytes)
      return take()
    },
    end: () => {
      events.end()
      return take()
    },
    complete: () => done,
    error: () => failed
  }
}
