/**
 * The HTTP side of an attempt: one request to one upstream, with the
 * upstream's key (never the caller's). Bodies are sent as the caller's bytes
 * when nothing in them changes, and answers come back as text, unparsed:
 * deciding what they mean is the relay's job.
 *
 * Two implementations: {@link layerUndici} (the default) calls undici's
 * `request` on its own `Agent`, which keeps a keep-alive connection pool per
 * origin; {@link layer} goes through any `@effect/platform` HttpClient. The
 * default skips the HttpClient's request/response wrappers because they cost
 * about 200 µs of CPU per call on the project's 2-core machine, against
 * 45 µs for undici's `request` (see README, Performance): on a relay that is
 * most of its own overhead.
 *
 * @since 0.1.0
 */
import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import type { Readable } from "node:stream"
import { Agent, request as undiciRequest } from "undici"
import * as Stream from "effect/Stream"
import type { Upstream } from "./Upstream.js"
import { UpstreamUnreachable } from "./UpstreamError.js"

export interface Reply {
  readonly status: number
  readonly headers: Readonly<Record<string, string | undefined>>
  readonly text: string
}

export interface StreamReply {
  readonly status: number
  readonly headers: Readonly<Record<string, string | undefined>>
  /** The body; read it within the scope the call was made in. */
  readonly body: Stream.Stream<Uint8Array, UpstreamUnreachable>
}

export interface UpstreamClient {
  /**
   * POSTs `body` (JSON text or bytes) to `upstream.baseUrl + path` and reads
   * the whole answer. `headers` are added to the request (the relay's trace
   * context, when it traces); they never replace the upstream's
   * `authorization` or the content headers.
   */
  readonly post: (
    upstream: Upstream,
    path: string,
    body: string | Uint8Array,
    headers?: Readonly<Record<string, string>>
  ) => Effect.Effect<Reply, UpstreamUnreachable>
  /** The same, leaving the body as a stream open in the scope. */
  readonly postStream: (
    upstream: Upstream,
    path: string,
    body: string | Uint8Array,
    headers?: Readonly<Record<string, string>>
  ) => Effect.Effect<StreamReply, UpstreamUnreachable, Scope.Scope>
  readonly get: (upstream: Upstream, path: string) => Effect.Effect<Reply, UpstreamUnreachable>
}

export const UpstreamClient = Context.GenericTag<UpstreamClient>("@breakwater/core/UpstreamClient")

/** A transport error, named without URL or headers (they may hold secrets). */
const unreachable = (upstream: Upstream) => (error: HttpClientError.HttpClientError) => {
  const cause = error.cause as { readonly code?: string; readonly cause?: { readonly code?: string } } | undefined
  const code = cause?.code ?? cause?.cause?.code
  return new UpstreamUnreachable({ upstream: upstream.name, reason: code ?? error.reason })
}

export const make: Effect.Effect<UpstreamClient, never, HttpClient.HttpClient> = Effect.map(
  HttpClient.HttpClient,
  (client) => {
    // The client's own trace propagation would replace the relay's trace
    // headers with a span of its own: calls that carry them go without it.
    const carrying = HttpClient.withTracerPropagation(client, false)
    const request = (
      upstream: Upstream,
      method: "GET" | "POST",
      path: string,
      body?: string | Uint8Array,
      headers?: Readonly<Record<string, string>>
    ) => {
      let req = HttpClientRequest.make(method)(upstream.baseUrl + path)
      if (headers !== undefined) req = HttpClientRequest.setHeaders(req, headers)
      req = req.pipe(
        HttpClientRequest.setHeader("authorization", `Bearer ${Redacted.value(upstream.apiKey)}`),
        HttpClientRequest.acceptJson
      )
      if (body !== undefined) {
        req = typeof body === "string"
          ? HttpClientRequest.bodyText(req, body, "application/json")
          : HttpClientRequest.bodyUint8Array(req, body, "application/json")
      }
      return req
    }

    const readAll = (
      upstream: Upstream,
      method: "GET" | "POST",
      path: string,
      body?: string | Uint8Array,
      headers?: Readonly<Record<string, string>>
    ) =>
      Effect.scoped(
        Effect.flatMap((headers === undefined ? client : carrying).execute(request(upstream, method, path, body, headers)), (res) =>
          Effect.map(res.text, (text): Reply => ({ status: res.status, headers: res.headers, text })))
      ).pipe(Effect.mapError(unreachable(upstream)))

    return UpstreamClient.of({
      post: (upstream, path, body, headers) => readAll(upstream, "POST", path, body, headers),
      get: (upstream, path) => readAll(upstream, "GET", path),
      postStream: (upstream, path, body, headers) =>
        Effect.map(
          Effect.mapError(
            (headers === undefined ? client : carrying).execute(request(upstream, "POST", path, body, headers)),
            unreachable(upstream)
          ),
          (res): StreamReply => ({
            status: res.status,
            headers: res.headers,
            body: Stream.mapError(res.stream, unreachable(upstream))
          })
        )
    })
  }
)

export const layer: Layer.Layer<UpstreamClient, never, HttpClient.HttpClient> = Layer.effect(UpstreamClient, make)

/** Over any `@effect/platform` HttpClient, here the platform's undici one. */
export const layerHttpClient: Layer.Layer<UpstreamClient> = layer.pipe(Layer.provide(NodeHttpClient.layerUndici))

const flatHeaders = (headers: Record<string, string | Array<string> | undefined>): Record<string, string | undefined> => {
  const out: Record<string, string | undefined> = {}
  for (const key in headers) {
    const v = headers[key]
    out[key] = Array.isArray(v) ? v.join(", ") : v
  }
  return out
}

const transportError = (upstream: Upstream, error: unknown) => {
  const e = error as { readonly code?: string; readonly name?: string; readonly cause?: { readonly code?: string } } | undefined
  return new UpstreamUnreachable({ upstream: upstream.name, reason: e?.code ?? e?.cause?.code ?? e?.name ?? "transport error" })
}

export interface UndiciOptions {
  /** Idle keep-alive connections are kept this long. Default 30 s. */
  readonly keepAliveTimeout?: number
  /** Connections per origin; default: unlimited (the bulkhead limits concurrency). */
  readonly connections?: number
  /**
   * A backstop on the wait for an answer's headers, ms. The relay's attempt
   * timeout is the real limit; this only bounds a call made without one.
   * Default 120 s (undici's own default is 300 s).
   */
  readonly headersTimeout?: number
  /**
   * A backstop on the silence between two chunks of a body, ms. Keep it
   * above the relay's `streamIdleTimeout`, which ends a stalled stream with a
   * proper error event first. Default 120 s.
   */
  readonly bodyTimeout?: number
}

const noop = (): void => {}

/** Our headers plus `extra` (trace context), which never replaces one of ours, whatever its case. */
const withExtra = (ours: Record<string, string>, extra: Readonly<Record<string, string>>): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const key in extra) if (!(key.toLowerCase() in ours)) out[key] = extra[key]!
  return Object.assign(out, ours)
}

/**
 * A response body as an async iterable whose `return` destroys the body at
 * once. Node's own iterator only finishes a pending read when the next chunk
 * arrives, so a stalled upstream would hold the connection (and whatever
 * waits on the release) until it spoke again.
 */
const bodyIterable = (body: Readable): AsyncIterable<Uint8Array> => ({
  [Symbol.asyncIterator]: () => {
    const it = body[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>
    return {
      next: () => it.next(),
      return: () => {
        body.destroy()
        return Promise.resolve({ done: true as const, value: undefined })
      }
    }
  }
})

/**
 * undici's `request` on a dedicated Agent. The Agent is destroyed with the
 * layer, without waiting for calls still in flight: at that point nothing
 * will read their answers, and a shutdown must not wait on a hung upstream.
 */
export const makeUndici = (options: UndiciOptions = {}): Effect.Effect<UpstreamClient, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() =>
        new Agent({
          keepAliveTimeout: options.keepAliveTimeout ?? 30_000,
          headersTimeout: options.headersTimeout ?? 120_000,
          bodyTimeout: options.bodyTimeout ?? 120_000,
          ...(options.connections === undefined ? {} : { connections: options.connections })
        })
      ),
      (agent) => Effect.promise(() => agent.destroy().catch(noop))
    ),
    (agent) => {
      const headersFor = (upstream: Upstream, body: boolean): Record<string, string> =>
        body
          ? {
            authorization: `Bearer ${Redacted.value(upstream.apiKey)}`,
            accept: "application/json",
            "content-type": "application/json"
          }
          : { authorization: `Bearer ${Redacted.value(upstream.apiKey)}`, accept: "application/json" }

      const send = (
        upstream: Upstream,
        method: "GET" | "POST",
        path: string,
        body: string | Uint8Array | undefined,
        signal: AbortSignal,
        extra?: Readonly<Record<string, string>>
      ) =>
        undiciRequest(upstream.baseUrl + path, {
          method,
          headers: extra === undefined ? headersFor(upstream, body !== undefined) : withExtra(headersFor(upstream, body !== undefined), extra),
          ...(body === undefined ? {} : { body }),
          signal,
          dispatcher: agent
        })

      const readAll = (
        upstream: Upstream,
        method: "GET" | "POST",
        path: string,
        body?: string | Uint8Array,
        headers?: Readonly<Record<string, string>>
      ) =>
        Effect.tryPromise({
          try: async (signal) => {
            const res = await send(upstream, method, path, body, signal, headers)
            // A destroyed body emits 'error': never without a listener (it would end the process).
            res.body.on("error", noop)
            const text = await res.body.text()
            return { status: res.statusCode, headers: flatHeaders(res.headers), text } satisfies Reply
          },
          catch: (error) => transportError(upstream, error)
        })

      /**
       * The request is interruptible up to the answer's headers (the signal
       * aborts it); the body's release is registered in the same
       * uninterruptible step that receives the answer, so no body is ever
       * left open. An answer that arrives just as the call is interrupted is
       * destroyed on the spot (undici does so too, through the signal).
       */
      const postStream = (
        upstream: Upstream,
        path: string,
        body: string | Uint8Array,
        headers?: Readonly<Record<string, string>>
      ) =>
        Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(
            restore(Effect.tryPromise({
              try: async (signal) => {
                const res = await send(upstream, "POST", path, body, signal, headers)
                res.body.on("error", noop)
                if (signal.aborted) res.body.destroy()
                return res
              },
              catch: (error) => transportError(upstream, error)
            })),
            (res) =>
              Effect.as(
                Effect.addFinalizer(() => Effect.sync(() => res.body.destroy())),
                {
                  status: res.statusCode,
                  headers: flatHeaders(res.headers),
                  body: Stream.fromAsyncIterable(bodyIterable(res.body), (error) => transportError(upstream, error))
                } satisfies StreamReply
              )
          )
        )

      return UpstreamClient.of({
        post: (upstream, path, body, headers) => readAll(upstream, "POST", path, body, headers),
        get: (upstream, path) => readAll(upstream, "GET", path),
        postStream
      })
    }
  )

/** undici with its own connection pools: the default. */
export const layerUndici: Layer.Layer<UpstreamClient> = Layer.scoped(UpstreamClient, makeUndici())

/** undici with options (backstop timeouts, pool size). */
export const layerUndiciWith = (options: UndiciOptions): Layer.Layer<UpstreamClient> =>
  Layer.scoped(UpstreamClient, makeUndici(options))
