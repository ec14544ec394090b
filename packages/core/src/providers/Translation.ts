/**
 * What every provider translation shares: the error for a request field a
 * provider cannot take, the incremental stream translator's interface, and
 * the OpenAI chunk and error shapes the translators write.
 *
 * A translation never drops what it cannot carry: a field that would change
 * the answer and has no equivalent at the provider is refused with an
 * {@link UntranslatableField} naming it, so that the relay can send the
 * request elsewhere or answer 400 naming the field.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Sse from "@effect/experimental/Sse"
import * as Stream from "effect/Stream"

/** The wire formats an upstream may speak. */
export type Kind = "openai" | "azure-openai" | "anthropic" | "gemini"

/** The upstream kinds, as the config spells them. */
export const kinds: ReadonlyArray<Kind> = ["openai", "azure-openai", "anthropic", "gemini"]

/**
 * A request field (a path such as `logprobs` or `messages[2].content[0]`)
 * that the provider cannot take without changing what the caller asked for.
 */
export class UntranslatableField extends Data.TaggedError("UntranslatableField")<{
  readonly provider: Kind
  /** The OpenAI request's path to the field, as an OpenAI error's `param`. */
  readonly field: string
  readonly reason: string
}> {
  override get message(): string {
    return `'${this.field}' cannot be sent to ${providerName[this.provider]}: ${this.reason}`
  }
}

const providerName: Record<Kind, string> = {
  "openai": "OpenAI",
  "azure-openai": "Azure OpenAI",
  "anthropic": "Anthropic",
  "gemini": "Gemini"
}

/** The OpenAI error body for a refused field: a 400 `invalid_request_error` naming it. */
export const untranslatableBody = (error: UntranslatableField): string =>
  JSON.stringify({ error: { message: error.message, type: "invalid_request_error", param: error.field, code: "unsupported_parameter" } })

/**
 * Turns a provider's stream (bytes, split anywhere) into OpenAI
 * `chat.completion.chunk` events. Each call returns the SSE text to send on
 * (`data: {...}\n\n`, possibly several events, possibly none); the last
 * event of a complete stream is `data: [DONE]`.
 */
export interface StreamTranslator {
  /** Feeds the next piece of the provider's body. */
  readonly feed: (bytes: Uint8Array | string) => string
  /** The provider's body ended: whatever is left to send. */
  readonly end: () => string
  /** Whether the provider's stream ended properly (so `[DONE]` was or will be sent). */
  readonly complete: () => boolean
  /** The provider's error event, as an OpenAI error object, if one came: the stream ends there. */
  readonly error: () => { readonly type: string; readonly message: string } | undefined
}

/**
 * A provider's stream body as OpenAI SSE text, through `translator`: the
 * text of each piece as it comes, then what the end leaves. Empty pieces are
 * left out.
 */
export const translateStream = <E, R>(
  body: Stream.Stream<Uint8Array, E, R>,
  translator: StreamTranslator
): Stream.Stream<string, E, R> =>
  Stream.filter(
    Stream.concat(Stream.map(body, translator.feed), Stream.suspend(() => Stream.succeed(translator.end()))),
    (text) => text !== ""
  )

/** What a stream translation needs to know of the request. */
export interface StreamOptions {
  /** The model name the caller asked for, shown in every chunk. */
  readonly model: string
  /** `created` of every chunk, in seconds. */
  readonly created: number
  /** Send the usage chunk (`choices: []`) before `[DONE]`. */
  readonly includeUsage: boolean
  /** The chunks' id when the provider gives none. */
  readonly id?: string | undefined
}

/**
 * The SSE side of a stream translator: text decoding that keeps a character
 * split across two pieces whole, and the SSE parser, so that the events seen
 * do not depend on where the body was split.
 */
export const sseEvents = (onEvent: (event: Sse.Event) => void): {
  readonly feed: (bytes: Uint8Array | string) => void
  readonly end: () => void
} => {
  const decoder = new TextDecoder()
  const parser = Sse.makeParser((event) => {
    if (event._tag === "Event") onEvent(event)
  })
  return {
    feed: (bytes) => {
      parser.feed(typeof bytes === "string" ? bytes : decoder.decode(bytes, { stream: true }))
    },
    end: () => {
      const rest = decoder.decode()
      // A last event without its blank line still counts, as browsers' EventSource does not, but providers' SDKs do.
      parser.feed(`${rest}\n\n`)
    }
  }
}

/** One OpenAI SSE event. */
export const sse = (json: unknown): string => `data: ${JSON.stringify(json)}\n\n`

export const DONE = "data: [DONE]\n\n"

/** A `chat.completion.chunk` with one choice. */
export const chunk = (
  options: { readonly id: string; readonly created: number; readonly model: string },
  delta: Record<string, unknown>,
  finishReason: string | null,
  index = 0
) => ({
  id: options.id,
  object: "chat.completion.chunk",
  created: options.created,
  model: options.model,
  choices: [{ index, delta, finish_reason: finishReason, logprobs: null }]
})

/** The OpenAI usage object, with cached prompt tokens when there are any. */
export const usage = (prompt: number, completion: number, cached: number) =>
  cached > 0
    ? {
      prompt_tokens: prompt,
      completion_tokens: completion,
      total_tokens: prompt + completion,
      prompt_tokens_details: { cached_tokens: Math.min(cached, prompt) }
    }
    : { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }

/** A `data:` URL's media type and base64 data, or undefined when it is not a base64 data URL. */
export const parseDataUrl = (url: string): { readonly mediaType: string; readonly data: string } | undefined => {
  const m = /^data:([^;,]+)((?:;[^;,]*)*);base64,(.*)$/s.exec(url)
  return m === null ? undefined : { mediaType: m[1]!.toLowerCase(), data: m[3]! }
}

export const isRecord = (u: unknown): u is Record<string, any> =>
  typeof u === "object" && u !== null && !Array.isArray(u)

export const count = (u: unknown): number => typeof u === "number" && Number.isFinite(u) && u >= 0 ? u : 0

/** The text of message content: a string, or the text parts of an array joined. */
export const textOf = (content: unknown): string => {
  if (typeof content === "string") return content
  if (!Array.isArray(content)) return ""
  let out = ""
  for (const part of content) if (isRecord(part) && typeof part["text"] === "string") out += part["text"]
  return out
}

/** Whether a value leaves the answer as it would be without the field (absent, null, or the API's default). */
export const isUnset = (value: unknown, ...neutral: ReadonlyArray<unknown>): boolean =>
  value === undefined || value === null || neutral.includes(value)
