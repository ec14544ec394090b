/**
 * A scripted `UpstreamClient` for unit tests of the relay: no HTTP. Each
 * upstream name has a queue of replies (consumed one per call) and a fallback
 * used once the queue is empty. A reply is any effect, so it can be a plain
 * answer, a connection failure, a delay (`Effect.sleep`, driven by TestClock)
 * or a hang (`Effect.never`), and a stream may stall after some events
 * (`sseStall`). Every call is recorded with the Clock's time.
 */
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { Upstream } from "../../src/Upstream.js"
import * as UpstreamClient from "../../src/UpstreamClient.js"
import { UpstreamUnreachable } from "../../src/UpstreamError.js"

export type Headers = Readonly<Record<string, string | undefined>>

export interface Call {
  readonly upstream: string
  readonly kind: "post" | "stream" | "get"
  readonly path: string
  /** The body as text (bytes are decoded as UTF-8). */
  readonly body: string
  /** Clock time of the call, epoch millis. */
  readonly at: number
  /** The extra headers the relay sent (its trace context), if any. */
  readonly headers: Readonly<Record<string, string>> | undefined
}

/** A scripted answer to `post`/`get`. */
export type Reply = (call: Call) => Effect.Effect<UpstreamClient.Reply, UpstreamUnreachable>
/** A scripted answer to `postStream`. */
export type StreamReply = (call: Call) => Effect.Effect<UpstreamClient.StreamReply, UpstreamUnreachable, Scope.Scope>

// ---------------------------------------------------------------------------
// Bodies

export const usage = { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 } as const

/** A valid chat completion body whose answer is `content`. */
export const completion = (content = "hi", model = "m"): string =>
  JSON.stringify({
    id: "x",
    object: "chat.completion",
    created: 0,
    model,
    choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
    usage
  })

/** An OpenAI error body. */
export const errorJson = (message: string, type: string, code: string | null = null): string =>
  JSON.stringify({ error: { message, type, param: null, code } })

export const quotaBody = errorJson(
  "You exceeded your current quota, please check your plan and billing details.",
  "insufficient_quota",
  "insufficient_quota"
)

/** A stream chunk carrying `content`. */
export const chunk = (content: string): string =>
  JSON.stringify({
    id: "x",
    object: "chat.completion.chunk",
    created: 0,
    model: "m",
    choices: [{ index: 0, delta: { content }, finish_reason: null }]
  })

/** The final usage chunk of a stream with `stream_options.include_usage`. */
export const usageChunk = JSON.stringify({
  id: "x",
  object: "chat.completion.chunk",
  created: 0,
  model: "m",
  choices: [],
  usage
})

// ---------------------------------------------------------------------------
// Replies

const json = { "content-type": "application/json" }

/** Any status with a body and headers. */
export const reply = (status: number, text: string, headers: Headers = {}): Reply => () =>
  Effect.succeed({ status, headers: { ...json, ...headers }, text })

/** A 200 with a valid completion of `content`. */
export const ok = (content = "hi", headers: Headers = {}): Reply => reply(200, completion(content), headers)

/** A status with an OpenAI-style error body. */
export const status = (code: number, headers: Headers = {}, text = errorJson(`status ${code}`, "error")): Reply =>
  reply(code, text, headers)

/** No HTTP answer at all. */
export const unreachable = (reason = "ECONNRESET"): Reply & StreamReply => (call) =>
  Effect.fail(new UpstreamUnreachable({ upstream: call.upstream, reason }))

/** Never answers. */
export const hang: Reply & StreamReply = () => Effect.never

/** Answers with `then` after `delay` (Clock time). */
export const delayed = <R extends Reply | StreamReply>(delay: Duration.DurationInput, then: R): R => {
  const d = Duration.decode(delay)
  const f = (call: Call) => Effect.zipRight(Effect.sleep(d), (then as Reply)(call))
  return f as unknown as R
}

/** Runs `before` (e.g. awaits a Deferred), then answers with `then`. */
export const after = <R extends Reply | StreamReply>(before: Effect.Effect<unknown>, then: R): R => {
  const f = (call: Call) => Effect.zipRight(before, (then as Reply)(call))
  return f as unknown as R
}

const encoder = new TextEncoder()

/** SSE blocks `data: <x>\n\n`, one byte chunk each. */
export const sseBytes = (datas: ReadonlyArray<string>): Array<Uint8Array> =>
  datas.map((d) => encoder.encode(`data: ${d}\n\n`))

/** A 200 stream of the given `data:` payloads (add "[DONE]" yourself). */
export const sse = (
  datas: ReadonlyArray<string>,
  options: { readonly headers?: Headers; readonly failWith?: string } = {}
): StreamReply =>
(call) => {
  let body: Stream.Stream<Uint8Array, UpstreamUnreachable> = Stream.fromIterable(sseBytes(datas))
  if (options.failWith !== undefined) {
    body = Stream.concat(body, Stream.fail(new UpstreamUnreachable({ upstream: call.upstream, reason: options.failWith })))
  }
  return Effect.succeed({ status: 200, headers: { "content-type": "text/event-stream", ...options.headers }, body })
}

/**
 * A 200 stream that sends the given `data:` payloads and then nothing more,
 * as a stalled upstream does. Like the real client's body, it ends (failing
 * with `UpstreamUnreachable("aborted")`) when the scope of the call closes;
 * `onRelease` is called then.
 */
export const sseStall = (datas: ReadonlyArray<string>, onRelease: () => void = () => {}): StreamReply => (call) =>
  Effect.gen(function*() {
    const released = yield* Deferred.make<void>()
    yield* Effect.addFinalizer(() =>
      Effect.sync(onRelease).pipe(Effect.zipRight(Deferred.succeed(released, undefined)))
    )
    const body: Stream.Stream<Uint8Array, UpstreamUnreachable> = Stream.concat(
      Stream.fromIterable(sseBytes(datas)),
      Stream.fromEffect(Deferred.await(released)).pipe(
        Stream.flatMap(() => Stream.fail(new UpstreamUnreachable({ upstream: call.upstream, reason: "aborted" })))
      )
    )
    return { status: 200, headers: { "content-type": "text/event-stream" }, body }
  })

/** A normal complete stream: two content chunks, a usage chunk, [DONE]. */
export const sseOk = (text = "hi"): StreamReply => sse([chunk(text.slice(0, 1)), chunk(text.slice(1)), usageChunk, "[DONE]"])

/** A non-200 answer to a stream request. */
export const streamStatus = (code: number, text = errorJson(`status ${code}`, "error"), headers: Headers = {}): StreamReply => () =>
  Effect.succeed({ status: code, headers: { ...json, ...headers }, body: Stream.make(encoder.encode(text)) })

// ---------------------------------------------------------------------------
// The client

export interface Scripted {
  readonly layer: Layer.Layer<UpstreamClient.UpstreamClient>
  readonly client: UpstreamClient.UpstreamClient
  /** Every call, in order. */
  readonly calls: Array<Call>
  readonly callsTo: (upstream: string) => ReadonlyArray<Call>
  /** Appends replies to `upstream`'s queue for `post`/`get`. */
  readonly script: (upstream: string, ...replies: ReadonlyArray<Reply>) => void
  /** The reply once the queue is empty (default: `ok()`). */
  readonly fallback: (upstream: string, reply: Reply) => void
  readonly scriptStream: (upstream: string, ...replies: ReadonlyArray<StreamReply>) => void
  /** The stream reply once the queue is empty (default: `sseOk()`). */
  readonly fallbackStream: (upstream: string, reply: StreamReply) => void
  /** Forgets recorded calls. */
  readonly clear: () => void
}

const decoder = new TextDecoder()

export const make = (): Scripted => {
  const calls: Array<Call> = []
  const queues = new Map<string, Array<Reply>>()
  const fallbacks = new Map<string, Reply>()
  const streamQueues = new Map<string, Array<StreamReply>>()
  const streamFallbacks = new Map<string, StreamReply>()

  const record = (
    upstream: Upstream,
    kind: Call["kind"],
    path: string,
    body: string | Uint8Array | undefined,
    headers?: Readonly<Record<string, string>>
  ) =>
    Effect.map(Clock.currentTimeMillis, (at) => {
      const call: Call = {
        upstream: upstream.name,
        kind,
        path,
        body: body === undefined ? "" : typeof body === "string" ? body : decoder.decode(body),
        at,
        headers
      }
      calls.push(call)
      return call
    })

  const next = (upstream: string): Reply => queues.get(upstream)?.shift() ?? fallbacks.get(upstream) ?? ok()
  const nextStream = (upstream: string): StreamReply =>
    streamQueues.get(upstream)?.shift() ?? streamFallbacks.get(upstream) ?? sseOk()

  const client = UpstreamClient.UpstreamClient.of({
    post: (upstream, path, body, headers) =>
      Effect.flatMap(record(upstream, "post", path, body, headers), (call) => next(upstream.name)(call)),
    get: (upstream, path) => Effect.flatMap(record(upstream, "get", path, undefined), (call) => next(upstream.name)(call)),
    postStream: (upstream, path, body, headers) =>
      Effect.flatMap(record(upstream, "stream", path, body, headers), (call) => nextStream(upstream.name)(call))
  })

  const push = <A>(map: Map<string, Array<A>>, upstream: string, items: ReadonlyArray<A>) => {
    const q = map.get(upstream) ?? []
    q.push(...items)
    map.set(upstream, q)
  }

  return {
    layer: Layer.succeed(UpstreamClient.UpstreamClient, client),
    client,
    calls,
    callsTo: (upstream) => calls.filter((c) => c.upstream === upstream),
    script: (upstream, ...replies) => push(queues, upstream, replies),
    fallback: (upstream, r) => {
      fallbacks.set(upstream, r)
    },
    scriptStream: (upstream, ...replies) => push(streamQueues, upstream, replies),
    fallbackStream: (upstream, r) => {
      streamFallbacks.set(upstream, r)
    },
    clear: () => {
      calls.length = 0
    }
  }
}
