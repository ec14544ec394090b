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
 * most of its own overhead. Each implementation loads its HTTP stack when its
 * layer is built (`undici`, `@effect/platform-node`), not when this module is
 * imported: a program on another HttpClient never loads undici.
 *
 * @since 0.1.0
 */
import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
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
  /**
   * Optional: `post` one level down, for the relay's hot path (no effect,
   * no fiber per call). Starts the call at once and reports how it ended to
   * `done`, once: a transport failure, or the whole answer. The returned
   * function aborts the call (its connection is closed, nothing is left
   * open); after it, `done` is not called. `done` runs inside the HTTP
   * stack's callbacks: it must not throw. A client without it is called
   * through `post` (in a fiber of its own, under the relay's timer).
   */
  readonly unsafePost?:
    | ((
      upstream: Upstream,
      path: string,
      body: string | Uint8Array,
      headers: Readonly<Record<string, string>> | undefined,
      done: (error: UpstreamUnreachable | undefined, reply: Reply | undefined) => void
    ) => () => void)
    | undefined
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

/**
 * Over any `@effect/platform` HttpClient, here the platform's undici one
 * (`@effect/platform-node`'s `NodeHttpClient.layerUndici`, loaded when the
 * layer is built).
 */
export const layerHttpClient: Layer.Layer<UpstreamClient> = layer.pipe(
  Layer.provide(
    Layer.unwrapEffect(Effect.map(Effect.promise(() => import("@effect/platform-node/NodeHttpClient")), (m) => m.layerUndici))
  )
)

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

/**
 * undici's `request` on a dedicated Agent. The Agent is destroyed with the
 * layer, without waiting for calls still in flight: at that point nothing
 * will read their answers, and a shutdown must not wait on a hung upstream.
 *
 * `undici` is loaded when this runs, not when this module is imported.
 */
export const makeUndici = (options: UndiciOptions = {}): Effect.Effect<UpstreamClient, never, Scope.Scope> =>
  Effect.flatMap(Effect.promise(() => import("./internal/undici.js")), (undici) => undici.makeUndici(options))

/** undici with its own connection pools: the default. */
export const layerUndici: Layer.Layer<UpstreamClient> = Layer.scoped(UpstreamClient, makeUndici())

/** undici with options (backstop timeouts, pool size). */
export const layerUndiciWith = (options: UndiciOptions): Layer.Layer<UpstreamClient> =>
  Layer.scoped(UpstreamClient, makeUndici(options))
