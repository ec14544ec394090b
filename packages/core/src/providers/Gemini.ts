/**
 * Google's Gemini API (`models/{model}:generateContent`,
 * `:streamGenerateContent?alt=sse`, `:embedContent`, `:batchEmbedContents`,
 * key in `x-goog-api-key`) behind the OpenAI surface: requests translated to
 * it, its answers, errors and streams translated back. Pure functions and one
 * incremental state machine (the stream), no I/O.
 *
 * What maps and what is refused is listed in the README (Providers). In
 * short: system and developer messages become `systemInstruction`; text,
 * base64 images, audio and files map inline; https image URLs map to
 * `fileData` (Gemini fetches them) when their path names the type; tools,
 * `tool_choice`, assistant `tool_calls` and `tool` results map; `response_format` JSON modes map to
 * `responseMimeType`/`responseJsonSchema`; `logprobs`, `logit_bias`,
 * `parallel_tool_calls: false`, audio output and unknown fields are refused
 * by name.
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

/** The header that carries the API key. */
export const headers = (apiKey: string): Record<string, string> => ({ "x-goog-api-key": apiKey })

const modelId = (model: string): string => model.startsWith("models/") ? model.slice(7) : model

/**
 * The path of a call under the upstream's `baseUrl` (which ends in
 * `/v1beta`): `generateContent`, or `streamGenerateContent?alt=sse`.
 */
export const chatPath = (model: string, stream: boolean): string =>
  `/models/${encodeURIComponent(modelId(model))}:${stream ? "streamGenerateContent?alt=sse" : "generateContent"}`

export interface RequestOptions {
  /** The model name Gemini knows (after aliases). */
  readonly model: string
}

const NEUTRAL: Record<string, (v: any) => boolean> = {
  logprobs: (v) => isUnset(v, false),
  top_logprobs: (v) => isUnset(v, 0),
  logit_bias: (v) => isUnset(v) || (isRecord(v) && Object.keys(v).length === 0),
  parallel_tool_calls: (v) => isUnset(v, true),
  store: (v) => isUnset(v, false),
  metadata: (v) => isUnset(v) || (isRecord(v) && Object.keys(v).length === 0),
  reasoning_effort: (v) => isUnset(v),
  modalities: (v) => isUnset(v) || (Array.isArray(v) && v.every((m) => m === "text")),
  audio: (v) => isUnset(v),
  prediction: (v) => isUnset(v),
  service_tier: (v) => isUnset(v, "auto", "default"),
  stream_options: () => true,
  // An end-user id for the provider's abuse monitoring: it does not change the answer.
  user: () => true,
  function_call: (v) => isUnset(v),
  functions: (v) => isUnset(v)
}

const MAPPED = new Set([
  "model",
  "messages",
  "max_tokens",
  "max_completion_tokens",
  "temperature",
  "top_p",
  "n",
  "seed",
  "presence_penalty",
  "frequency_penalty",
  "stop",
  "stream",
  "tools",
  "tool_choice",
  "response_format"
])

class Refused {
  constructor(readonly error: UntranslatableField) {}
}

const fail = (field: string, reason: string): never => {
  throw new Refused(new UntranslatableField({ provider: "gemini", field, reason }))
}

const AUDIO_TYPES: Record<string, string> = { wav: "audio/wav", mp3: "audio/mp3" }

/** Image types Gemini reads, by file extension. */
const IMAGE_TYPES: Record<string, string> = {
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  webp: "image/webp",
  heic: "image/heic",
  heif: "image/heif"
}

/** The image type an https URL's path names by its extension (the query and fragment left out), if any. */
const imageTypeOf = (url: string): string | undefined => {
  const m = /^https:\/\/[^/?#]+\/[^?#]*\.([A-Za-z0-9]+)(?:[?#]|$)/.exec(url)
  return m === null ? undefined : IMAGE_TYPES[m[1]!.toLowerCase()]
}

const partOf = (part: Record<string, any>, path: string): Record<string, unknown> => {
  switch (part["type"]) {
    case "text":
      return { text: String(part["text"] ?? "") }
    case "image_url": {
      const ref = part["image_url"]
      const url = typeof ref === "string" ? ref : isRecord(ref) ? ref["url"] : undefined
      const data = typeof url === "string" ? parseDataUrl(url) : undefined
      if (data !== undefined) return { inlineData: { mimeType: data.mediaType, data: data.data } }
      // Gemini fetches public and signed https URLs itself, given the file's type (required there).
      const mimeType = typeof url === "string" ? imageTypeOf(url) : undefined
      if (mimeType === undefined) {
        return fail(
          `${path}.image_url.url`,
          "Gemini needs an image URL's type: give an https URL whose path ends in .png, .jpg, .jpeg, .webp, .heic or .heif, or a base64 data URL"
        )
      }
      return { fileData: { mimeType, fileUri: url } }
    }
    case "input_audio": {
      const audio = part["input_audio"]
      const mimeType = isRecord(audio) ? AUDIO_TYPES[String(audio["format"])] : undefined
      if (!isRecord(audio) || typeof audio["data"] !== "string" || mimeType === undefined) {
        return fail(`${path}.input_audio`, "expected base64 data in wav or mp3 format")
      }
      return { inlineData: { mimeType, data: audio["data"] } }
    }
    case "file": {
      const file = part["file"]
      const data = isRecord(file) && typeof file["file_data"] === "string" ? parseDataUrl(file["file_data"]) : undefined
      if (data === undefined) return fail(`${path}.file`, "only files sent inline as a base64 data URL (file_data) can be sent")
      return { inlineData: { mimeType: data.mediaType, data: data.data } }
    }
    default:
      return fail(`${path}.type`, `content parts of type '${String(part["type"])}' have no Gemini equivalent`)
  }
}

const textParts = (content: unknown, path: string): Array<{ text: string }> => {
  if (typeof content === "string") return content === "" ? [] : [{ text: content }]
  if (Array.isArray(content)) {
    content.forEach((part, j) => {
      if (!isRecord(part) || part["type"] !== "text") fail(`${path}[${j}]`, "only text parts can be sent here")
    })
  }
  const text = textOf(content)
  return text === "" ? [] : [{ text }]
}

const toolArgs = (args: string, path: string): Record<string, unknown> => {
  if (args.trim() === "") return {}
  try {
    const input: unknown = JSON.parse(args)
    if (isRecord(input)) return input
  } catch {
    // refused below
  }
  return fail(path, "tool call arguments must be a JSON object")
}

/** A tool result as Gemini's `response` object: the JSON object itself, or the text under `content`. */
const toolResponse = (text: string): Record<string, unknown> => {
  try {
    const json: unknown = JSON.parse(text)
    if (isRecord(json)) return json
  } catch {
    // plain text
  }
  return { content: text }
}

/** The `generateContent` body for an OpenAI chat request, or the first field it cannot carry. */
export const toRequest = (
  request: OpenAI.ChatCompletionRequest,
  _options?: RequestOptions
): Either.Either<Record<string, unknown>, UntranslatableField> => {
  try {
    return Either.right(build(request))
  } catch (e) {
    if (e instanceof Refused) return Either.left(e.error)
    throw e
  }
}

const build = (request: OpenAI.ChatCompletionRequest): Record<string, unknown> => {
  const r = request as Record<string, any>
  for (const key of Object.keys(r)) {
    if (MAPPED.has(key)) continue
    const neutral = NEUTRAL[key]
    if (neutral === undefined) fail(key, "not a parameter this gateway can translate to the Gemini API")
    else if (!neutral(r[key])) fail(key, "the Gemini API has no equivalent")
  }

  const system: Array<{ text: string }> = []
  const contents: Array<{ role: "user" | "model"; parts: Array<Record<string, unknown>> }> = []
  /** Tool call id -> function name: Gemini's function responses are matched by name. */
  const names = new Map<string, string>()
  let results: Array<Record<string, unknown>> | undefined
  request.messages.forEach((m, i) => {
    const path = `messages[${i}]`
    if (m.role !== "tool") results = undefined
    switch (m.role) {
      case "system":
      case "developer":
        system.push(...textParts(m.content, `${path}.content`))
        return
      case "user": {
        const parts = typeof m.content === "string"
          ? [{ text: m.content }]
          : m.content.map((part, j) => partOf(part, `${path}.content[${j}]`))
        contents.push({ role: "user", parts })
        return
      }
      case "assistant": {
        const parts: Array<Record<string, unknown>> = m.content === undefined || m.content === null
          ? []
          : textParts(m.content, `${path}.content`)
        m.tool_calls?.forEach((call, j) => {
          names.set(call.id, call.function.name)
          parts.push({
            functionCall: {
              name: call.function.name,
              args: toolArgs(call.function.arguments, `${path}.tool_calls[${j}].function.arguments`)
            }
          })
        })
        if (parts.length > 0) contents.push({ role: "model", parts })
        return
      }
      case "tool": {
        const name = names.get(m.tool_call_id)
        if (name === undefined) return fail(`${path}.tool_call_id`, "names no tool call of an earlier assistant message")
        const part = {
          functionResponse: { name, response: toolResponse(textOf(m.content)) }
        }
        if (results === undefined) {
          results = [part]
          contents.push({ role: "user", parts: results })
        } else results.push(part)
        return
      }
    }
  })

  const config: Record<string, unknown> = {}
  const maxTokens = r["max_completion_tokens"] ?? r["max_tokens"]
  if (!isUnset(maxTokens)) config["maxOutputTokens"] = maxTokens
  if (!isUnset(r["temperature"])) config["temperature"] = r["temperature"]
  if (!isUnset(r["top_p"])) config["topP"] = r["top_p"]
  if (!isUnset(r["n"], 1)) config["candidateCount"] = r["n"]
  if (!isUnset(r["seed"])) config["seed"] = r["seed"]
  if (!isUnset(r["presence_penalty"], 0)) config["presencePenalty"] = r["presence_penalty"]
  if (!isUnset(r["frequency_penalty"], 0)) config["frequencyPenalty"] = r["frequency_penalty"]
  if (!isUnset(r["stop"])) config["stopSequences"] = typeof r["stop"] === "string" ? [r["stop"]] : r["stop"]
  const format = r["response_format"]
  if (isRecord(format) && format["type"] === "json_object") config["responseMimeType"] = "application/json"
  else if (isRecord(format) && format["type"] === "json_schema") {
    config["responseMimeType"] = "application/json"
    const schema = isRecord(format["json_schema"]) ? format["json_schema"]["schema"] : undefined
    if (schema !== undefined) config["responseJsonSchema"] = schema
  }

  const body: Record<string, unknown> = { contents }
  if (system.length > 0) body["systemInstruction"] = { parts: system }
  const tools = request.tools
  if (tools !== undefined && tools.length > 0) {
    body["tools"] = [{
      functionDeclarations: tools.map((t) => ({
        name: t.function.name,
        ...(t.function.description === undefined ? {} : { description: t.function.description }),
        ...(t.function.parameters === undefined ? {} : { parametersJsonSchema: t.function.parameters })
      }))
    }]
  }
  const choice = r["tool_choice"]
  if (choice === "auto") body["toolConfig"] = { functionCallingConfig: { mode: "AUTO" } }
  else if (choice === "required") body["toolConfig"] = { functionCallingConfig: { mode: "ANY" } }
  else if (choice === "none") body["toolConfig"] = { functionCallingConfig: { mode: "NONE" } }
  else if (isRecord(choice)) {
    const name = isRecord(choice["function"]) ? choice["function"]["name"] : undefined
    if (choice["type"] !== "function" || typeof name !== "string") {
      fail("tool_choice", "expected 'none', 'auto', 'required' or a function to call")
    }
    body["toolConfig"] = { functionCallingConfig: { mode: "ANY", allowedFunctionNames: [name] } }
  }
  if (Object.keys(config).length > 0) body["generationConfig"] = config
  return body
}

// ---------------------------------------------------------------------------
// Responses

const FILTERED = new Set(["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"])

/** OpenAI's `finish_reason` for Gemini's `finishReason` (`tool_calls` when the candidate called functions). */
export const finishReason = (reason: unknown, calledTools: boolean): string => {
  if (reason === "MAX_TOKENS") return "length"
  if (typeof reason === "string" && FILTERED.has(reason)) return "content_filter"
  return calledTools ? "tool_calls" : "stop"
}

/**
 * OpenAI usage from `usageMetadata`: thinking tokens are billed as output,
 * so they count as completion tokens; tokens from the context cache are the
 * cached ones.
 */
export const usageOf = (u: unknown) => {
  if (!isRecord(u)) return usage(0, 0, 0)
  return usage(
    count(u["promptTokenCount"]) + count(u["toolUsePromptTokenCount"]),
    count(u["candidatesTokenCount"]) + count(u["thoughtsTokenCount"]),
    count(u["cachedContentTokenCount"])
  )
}

export type Translated =
  | { readonly _tag: "Ok"; readonly json: Record<string, unknown> }
  | { readonly _tag: "Invalid"; readonly reason: string }

const callId = (responseId: string, candidate: number, n: number, given: unknown): string =>
  typeof given === "string" && given !== "" ? given : `call_${responseId}_${candidate}_${n}`

/** A candidate's text (thoughts left out) and function calls. */
const partsOf = (candidate: Record<string, any>, responseId: string, index: number, from: number) => {
  let text = ""
  const calls: Array<Record<string, unknown>> = []
  const parts = isRecord(candidate["content"]) && Array.isArray(candidate["content"]["parts"]) ? candidate["content"]["parts"] : []
  for (const part of parts) {
    if (!isRecord(part) || part["thought"] === true) continue
    if (typeof part["text"] === "string") text += part["text"]
    else if (isRecord(part["functionCall"])) {
      const fc = part["functionCall"]
      calls.push({
        id: callId(responseId, index, from + calls.length, fc["id"]),
        type: "function",
        function: { name: String(fc["name"]), arguments: JSON.stringify(fc["args"] ?? {}) }
      })
    }
  }
  return { text, calls }
}

/** An OpenAI chat completion from a `generateContent` answer. */
export const fromResponse = (
  text: string,
  options: { readonly model: string; readonly created: number; readonly id?: string | undefined }
): Translated => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return { _tag: "Invalid", reason: `body is not JSON: ${e instanceof Error ? e.message : String(e)}` }
  }
  if (!isRecord(json)) return { _tag: "Invalid", reason: "body is not a JSON object" }
  const id = typeof json["responseId"] === "string" ? json["responseId"] : options.id ?? "gemini"
  const candidates = Array.isArray(json["candidates"]) ? json["candidates"] : []
  const choices: Array<Record<string, unknown>> = []
  candidates.forEach((candidate, i) => {
    if (!isRecord(candidate)) return
    const index = typeof candidate["index"] === "number" ? candidate["index"] : i
    const { calls, text } = partsOf(candidate, id, index, 0)
    const message: Record<string, unknown> = { role: "assistant", content: text === "" && calls.length > 0 ? null : text }
    if (calls.length > 0) message["tool_calls"] = calls
    const finish = finishReason(candidate["finishReason"], calls.length > 0)
    if (finish === "content_filter" && text === "") message["refusal"] = `blocked by Gemini (${String(candidate["finishReason"])})`
    choices.push({ index, message, finish_reason: finish, logprobs: null })
  })
  if (choices.length === 0) {
    const feedback = json["promptFeedback"]
    const blocked = isRecord(feedback) ? feedback["blockReason"] : undefined
    if (typeof blocked !== "string") return { _tag: "Invalid", reason: "body has no candidates" }
    choices.push({
      index: 0,
      message: { role: "assistant", content: null, refusal: `prompt blocked by Gemini (${blocked})` },
      finish_reason: "content_filter",
      logprobs: null
    })
  }
  return {
    _tag: "Ok",
    json: {
      id,
      object: "chat.completion",
      created: options.created,
      model: options.model,
      choices,
      usage: usageOf(json["usageMetadata"])
    }
  }
}

// ---------------------------------------------------------------------------
// Errors

interface ErrorInfo {
  readonly status: string
  readonly message: string
  readonly details: ReadonlyArray<unknown>
}

const errorInfo = (text: string): ErrorInfo => {
  try {
    const json: unknown = JSON.parse(text)
    const body = Array.isArray(json) ? json[0] : json
    const error = isRecord(body) ? body["error"] : undefined
    if (isRecord(error)) {
      return {
        status: typeof error["status"] === "string" ? error["status"] : "",
        message: typeof error["message"] === "string" ? error["message"] : "",
        details: Array.isArray(error["details"]) ? error["details"] : []
      }
    }
  } catch {
    // not JSON
  }
  return { status: "", message: text.slice(0, 200), details: [] }
}

const detail = (info: ErrorInfo, type: string): Record<string, any> | undefined =>
  info.details.find((d): d is Record<string, any> => isRecord(d) && String(d["@type"]).endsWith(type))

/** Gemini's error body as an OpenAI one. */
export const openAIErrorBody = (text: string): string => {
  const info = errorInfo(text)
  return JSON.stringify({ error: { message: info.message, type: "invalid_request_error", param: null, code: info.status || null } })
}

const SERVER_STATUSES = new Set(["UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "UNKNOWN"])

/**
 * The failover class of a Gemini answer that is not a 200. `now` is the
 * clock's epoch millis.
 *
 * `RESOURCE_EXHAUSTED` (429) is a rate limit, its wait taken from the
 * `RetryInfo` detail or `retry-after`; a per-day quota (a `QuotaFailure`
 * whose quota id says `PerDay`) is a spent quota. `UNAVAILABLE`,
 * `INTERNAL`, `DEADLINE_EXCEEDED` and other 5xx are the server's. An invalid
 * API key (400 `API_KEY_INVALID`), 401 and 403 are the gateway's key. 404
 * about a model is a model this upstream lacks; other 400s and 404s are the
 * caller's, relayed as an OpenAI error body.
 */
export const errorFrom = (
  upstream: string,
  status: number,
  responseHeaders: Readonly<Record<string, string | undefined>>,
  text: string,
  now: number
): UpstreamError => {
  const info = errorInfo(text)
  if (status === 429 || info.status === "RESOURCE_EXHAUSTED") {
    const quota = detail(info, "QuotaFailure")
    const violations: ReadonlyArray<unknown> = Array.isArray(quota?.["violations"]) ? quota["violations"] : []
    if (violations.some((v) => isRecord(v) && /PerDay/i.test(String(v["quotaId"])))) {
      return new QuotaExhausted({ upstream, code: "insufficient_quota" })
    }
    const delay = detail(info, "RetryInfo")?.["retryDelay"]
    const fromDetail = typeof delay === "string" && /^\d+(\.\d+)?s$/.test(delay)
      ? parseRetryAfter(delay.slice(0, -1), now)
      : Option.none()
    const ra = responseHeaders["retry-after"]
    const retryAfter = Option.getOrUndefined(fromDetail) ??
      (ra === undefined ? undefined : Option.getOrUndefined(parseRetryAfter(ra, now)))
    return new UpstreamRateLimited({ upstream, retryAfter })
  }
  if (status === 401 || status === 403 || info.status === "PERMISSION_DENIED" || info.status === "UNAUTHENTICATED") {
    return new UpstreamAuthFailed({ upstream, status })
  }
  if (status === 400 && (text.includes("API_KEY_INVALID") || /API key not valid/i.test(info.message))) {
    return new UpstreamAuthFailed({ upstream, status })
  }
  if (status >= 500 || SERVER_STATUSES.has(info.status)) {
    return new UpstreamServerError({ upstream, status: status >= 500 ? status : 503 })
  }
  if (status === 404 && /\bmodels?\b/i.test(info.message)) {
    return new UpstreamModelNotFound({ upstream, status, body: openAIErrorBody(text), contentType: "application/json" })
  }
  if (status === 400 || status === 404 || status === 413 || status === 422) {
    return new UpstreamRejected({ upstream, status, body: openAIErrorBody(text), contentType: "application/json" })
  }
  return new UpstreamServerError({ upstream, status })
}

// ---------------------------------------------------------------------------
// Streams

/**
 * Translates a `streamGenerateContent?alt=sse` stream (each event a partial
 * `GenerateContentResponse`) into OpenAI chunks. Gemini sends no end marker:
 * the stream is complete when every candidate has a `finishReason` and the
 * body ends, and then `[DONE]` follows (with the usage chunk first when
 * asked). Incremental, and independent of how the body was split.
 */
export const streamTranslator = (options: StreamOptions): StreamTranslator => {
  let id = options.id ?? "gemini"
  let out = ""
  let failed: { readonly type: string; readonly message: string } | undefined
  let lastUsage: unknown = undefined
  let ended = false
  /** Candidate index -> its state. */
  const candidates = new Map<number, { tools: number; finished: boolean }>()

  const emit = (index: number, delta: Record<string, unknown>, finish: string | null = null) => {
    out += sse(chunk({ id, created: options.created, model: options.model }, delta, finish, index))
  }

  const onData = (data: string) => {
    if (failed !== undefined) return
    let json: unknown
    try {
      json = JSON.parse(data)
    } catch {
      failed = { type: "invalid_response", message: "the provider sent an event that is not JSON" }
      out += sse({ error: { ...failed, param: null, code: null } })
      return
    }
    if (!isRecord(json)) return
    if (isRecord(json["error"])) {
      const info = errorInfo(data)
      failed = { type: info.status || "api_error", message: info.message }
      out += sse({ error: { message: failed.message, type: failed.type, param: null, code: failed.type } })
      return
    }
    if (candidates.size === 0 && typeof json["responseId"] === "string") id = json["responseId"]
    if (json["usageMetadata"] !== undefined) lastUsage = json["usageMetadata"]
    const list = Array.isArray(json["candidates"]) ? json["candidates"] : []
    list.forEach((candidate, i) => {
      if (!isRecord(candidate)) return
      const index = typeof candidate["index"] === "number" ? candidate["index"] : i
      let state = candidates.get(index)
      if (state === undefined) {
        state = { tools: 0, finished: false }
        candidates.set(index, state)
        emit(index, { role: "assistant", content: "" })
      }
      const { calls, text } = partsOf(candidate, id, index, state.tools)
      if (text !== "") emit(index, { content: text })
      if (calls.length > 0) {
        emit(index, { tool_calls: calls.map((call, k) => ({ index: state.tools + k, ...call })) })
        state.tools += calls.length
      }
      if (candidate["finishReason"] !== undefined && candidate["finishReason"] !== null && !state.finished) {
        state.finished = true
        emit(index, {}, finishReason(candidate["finishReason"], state.tools > 0))
      }
    })
    if (list.length === 0 && candidates.size === 0) {
      const feedback = json["promptFeedback"]
      const blocked = isRecord(feedback) ? feedback["blockReason"] : undefined
      if (typeof blocked === "string") {
        candidates.set(0, { tools: 0, finished: true })
        emit(0, { role: "assistant", content: null, refusal: `prompt blocked by Gemini (${blocked})` })
        emit(0, {}, "content_filter")
      }
    }
  }

  const complete = () =>
    failed === undefined && candidates.size > 0 && [...candidates.values()].every((c) => c.finished)

  const events = sseEvents((event) => onData(event.data))
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
      if (ended) return ""
      ended = true
      events.end()
      if (complete()) {
        if (options.includeUsage) {
          out += sse({ id, object: "chat.completion.chunk", created: options.created, model: options.model, choices: [], usage: usageOf(lastUsage) })
        }
        out += DONE
      }
      return take()
    },
    complete: () => ended && complete(),
    error: () => failed
  }
}

// ---------------------------------------------------------------------------
// Embeddings

export interface EmbeddingsCall {
  /** Under the upstream's `baseUrl`: `:embedContent` for one text, `:batchEmbedContents` for several. */
  readonly path: string
  readonly body: Record<string, unknown>
}

/** The Gemini call for an OpenAI embeddings request, or the field it cannot carry. */
export const toEmbeddingsRequest = (
  request: OpenAI.EmbeddingsRequest,
  options: RequestOptions
): Either.Either<EmbeddingsCall, UntranslatableField> => {
  const r = request as Record<string, any>
  const refuse = (field: string, reason: string) =>
    Either.left(new UntranslatableField({ provider: "gemini", field, reason }))
  for (const key of Object.keys(r)) {
    if (key === "model" || key === "input" || key === "dimensions" || key === "encoding_format" || key === "user") continue
    return refuse(key, "not a parameter this gateway can translate to the Gemini API")
  }
  const model = modelId(options.model)
  const dims = r["dimensions"] === undefined ? {} : { outputDimensionality: r["dimensions"] }
  const input = request.input
  if (typeof input === "string") {
    return Either.right({
      path: `/models/${encodeURIComponent(model)}:embedContent`,
      body: { content: { parts: [{ text: input }] }, ...dims }
    })
  }
  if (!input.every((x): x is string => typeof x === "string")) {
    return refuse("input", "Gemini embeds text only, not token arrays")
  }
  return Either.right({
    path: `/models/${encodeURIComponent(model)}:batchEmbedContents`,
    body: { requests: input.map((text) => ({ model: `models/${model}`, content: { parts: [{ text }] }, ...dims })) }
  })
}

const base64Floats = (values: ReadonlyArray<number>): string => {
  const bytes = new Uint8Array(new Float32Array(values).buffer)
  let binary = ""
  for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]!)
  return btoa(binary)
}

/**
 * An OpenAI embeddings list from an `embedContent` or `batchEmbedContents`
 * answer. Gemini reports no token counts: `usage` is estimated from the
 * input at four characters a token.
 */
export const fromEmbeddingsResponse = (
  text: string,
  request: OpenAI.EmbeddingsRequest,
  options: { readonly model: string }
): Translated => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return { _tag: "Invalid", reason: `body is not JSON: ${e instanceof Error ? e.message : String(e)}` }
  }
  const list: ReadonlyArray<unknown> = isRecord(json)
    ? Array.isArray(json["embeddings"]) ? json["embeddings"] : json["embedding"] !== undefined ? [json["embedding"]] : []
    : []
  if (list.length === 0) return { _tag: "Invalid", reason: "body has no embeddings" }
  const data: Array<Record<string, unknown>> = []
  for (let i = 0; i < list.length; i++) {
    const item = list[i]
    const values = isRecord(item) ? item["values"] : undefined
    if (!Array.isArray(values) || values.length === 0) return { _tag: "Invalid", reason: `embedding ${i} has no values` }
    data.push({ object: "embedding", index: i, embedding: request.encoding_format === "base64" ? base64Floats(values) : values })
  }
  const inputs = typeof request.input === "string" ? [request.input] : request.input
  let chars = 0
  for (const x of inputs) if (typeof x === "string") chars += x.length
  const tokens = Math.ceil(chars / 4)
  return {
    _tag: "Ok",
    json: { object: "list", data, model: options.model, usage: { prompt_tokens: tokens, total_tokens: tokens } }
  }
}
