/**
 * An `UpstreamClient` that speaks each upstream's own wire format: the relay
 * keeps posting OpenAI requests to `/chat/completions` and `/embeddings` and
 * reading OpenAI answers, and this client translates both ways for the
 * upstreams whose {@link Provider} says so (Anthropic, Gemini, Azure OpenAI,
 * or an OpenAI upstream with another `auth` or extra headers). Upstreams
 * without one, and plain OpenAI ones, go to the underlying client untouched:
 * their path is the same as without this layer.
 *
 * Errors come back as the OpenAI-shaped status, headers and body that the
 * relay classifies into the same failover class as the provider's own error
 * means (an Anthropic 529 stays a retryable 529; a credit-balance 400 becomes
 * a quota error; a Gemini `RetryInfo` delay becomes `retry-after-ms`). A
 * request the provider cannot take is a 400 naming the field.
 *
 * Translated calls use undici's `request` on an Agent of their own (undici
 * is loaded when the layer is built): the underlying client always sends the
 * key as `Authorization: Bearer`, which Gemini would refuse. When the
 * underlying client has the relay's low-level `unsafePost`, so does this one:
 * plain OpenAI upstreams keep the relay's first-attempt fast path.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { Readable } from "node:stream"
import * as OpenAI from "../OpenAI.js"
import type { Upstream } from "../Upstream.js"
import { type Reply, type StreamReply, type UndiciOptions, UpstreamClient } from "../UpstreamClient.js"
import { UNTRANSLATABLE_HEADER, type UpstreamError, UpstreamUnreachable } from "../UpstreamError.js"
import * as Anthropic from "./Anthropic.js"
import * as Azure from "./Azure.js"
import * as Gemini from "./Gemini.js"
import * as OpenAICompatible from "./OpenAICompatible.js"
import { type Kind, type StreamTranslator, translateStream, untranslatableBody, type UntranslatableField } from "./Translation.js"

/** How to call one upstream. */
export interface Provider {
  readonly kind: Kind
  /** `openai`, `azure-openai`: how the key is sent. Default `bearer` (`api-key` for Azure). */
  readonly auth?: OpenAICompatible.Auth | undefined
  /** Static headers added to every call (never replacing the key's). */
  readonly headers?: Readonly<Record<string, string>> | undefined
  /** `azure-openai`: model -> deployment. */
  readonly deployments?: Readonly<Record<string, string>> | undefined
  /** `azure-openai`: `api-version`; `anthropic`: `anthropic-version`. */
  readonly apiVersion?: string | undefined
  /** `anthropic`: `max_tokens` when the caller gave none. */
  readonly defaultMaxTokens?: number | undefined
}

const EMBEDDINGS = "/embeddings"

const json = (status: number, body: unknown, headers: Record<string, string | undefined> = {}): Reply => ({
  status,
  headers: { "content-type": "application/json", ...headers },
  text: typeof body === "string" ? body : JSON.stringify(body)
})

const openAIError = (message: string, type: string, code: string | null) =>
  ({ error: { message, type, param: null, code } })

/** A provider's error as the OpenAI-shaped reply that the relay classifies the same way. */
const replyFor = (error: UpstreamError): Reply => {
  switch (error._tag) {
    case "UpstreamRateLimited":
      return json(429, openAIError(error.message, "rate_limit_exceeded", "rate_limit_exceeded"), {
        "retry-after-ms": error.retryAfter === undefined ? undefined : String(Duration.toMillis(error.retryAfter))
      })
    case "QuotaExhausted":
      return json(429, openAIError(error.message, "insufficient_quota", "insufficient_quota"))
    case "UpstreamAuthFailed":
      return json(error.status === 403 ? 403 : 401, openAIError(error.message, "invalid_request_error", "invalid_api_key"))
    case "UpstreamModelNotFound":
      return json(404, openAIError(error.message, "invalid_request_error", "model_not_found"))
    case "UpstreamRejected":
      return { status: error.status, headers: { "content-type": error.contentType }, text: error.body }
    case "UpstreamServerError":
      return json(error.status >= 500 ? error.status : 502, openAIError(error.message, "server_error", null))
    default:
      return json(502, openAIError(error.message, "server_error", null))
  }
}

/** The 400 for a field this kind cannot take, with the header by which the relay tries another upstream first. */
const refusedReply = (error: UntranslatableField): Reply =>
  json(400, untranslatableBody(error), { [UNTRANSLATABLE_HEADER]: error.field })

const noModel = (upstream: string, what: string): Reply =>
  json(404, openAIError(`${upstream} does not serve ${what}`, "invalid_request_error", "model_not_found"))

const text = (body: string | Uint8Array): string => typeof body === "string" ? body : new TextDecoder().decode(body)

const flat = (headers: Record<string, string | Array<string> | undefined>): Record<string, string | undefined> => {
  const out: Record<string, string | undefined> = {}
  for (const key in headers) {
    const v = headers[key]
    out[key] = Array.isArray(v) ? v.join(", ") : v
  }
  return out
}

const noop = (): void => {}

/** An OpenAI upstream with the bearer key and no extra headers: the underlying client serves it as is. */
const plain = (p: Provider): boolean =>
  (p.kind === "openai" && (p.auth ?? "bearer") === "bearer" && (p.headers === undefined || Object.keys(p.headers).length === 0))

/**
 * Builds the client over `underlying`: `providerOf(name)` says how to call
 * the upstream of that name (undefined: as OpenAI, through `underlying`).
 */
export const make = (
  underlying: UpstreamClient,
  providerOf: (upstream: string) => Provider | undefined,
  options: UndiciOptions = {}
): Effect.Effect<UpstreamClient, never, Scope.Scope> =>
  Effect.gen(function*() {
    const undici = yield* Effect.promise(() => import("undici"))
    const agent = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new undici.Agent({
          keepAliveTimeout: options.keepAliveTimeout ?? 30_000,
          headersTimeout: options.headersTimeout ?? 120_000,
          bodyTimeout: options.bodyTimeout ?? 120_000,
          ...(options.connections === undefined ? {} : { connections: options.connections })
        })
      ),
      (a) => Effect.promise(() => a.destroy().catch(noop))
    )

    const unreachable = (u: Upstream) => (e: unknown) => {
      const err = e as { readonly code?: string; readonly name?: string; readonly cause?: { readonly code?: string } } | undefined
      return new UpstreamUnreachable({ upstream: u.name, reason: err?.code ?? err?.cause?.code ?? err?.name ?? "transport error" })
    }

    const headersOf = (u: Upstream, p: Provider, extra?: Readonly<Record<string, string>>): Record<string, string> => {
      const key = Redacted.value(u.apiKey)
      const own: Record<string, string> = p.kind === "anthropic"
        ? { ...lower(p.headers), ...Anthropic.headers(key, p.apiVersion) }
        : p.kind === "gemini"
        ? { ...lower(p.headers), ...Gemini.headers(key) }
        : OpenAICompatible.headers(p.auth ?? (p.kind === "azure-openai" ? "api-key" : "bearer"), key, p.headers)
      const out: Record<string, string> = { accept: "application/json", "content-type": "application/json" }
      if (extra !== undefined) for (const k in extra) out[k.toLowerCase()] = extra[k]!
      return Object.assign(out, own)
    }

    const send = (u: Upstream, p: Provider, method: "GET" | "POST", path: string, body: string | undefined, signal: AbortSignal, extra?: Readonly<Record<string, string>>) =>
      undici.request(u.baseUrl + path, {
        method,
        headers: headersOf(u, p, extra),
        ...(body === undefined ? {} : { body }),
        signal,
        dispatcher: agent
      })

    const call = (u: Upstream, p: Provider, method: "GET" | "POST", path: string, body?: string, extra?: Readonly<Record<string, string>>) =>
      Effect.tryPromise({
        try: async (signal) => {
          const res = await send(u, p, method, path, body, signal, extra)
          res.body.on("error", noop)
          return { status: res.statusCode, headers: flat(res.headers), text: await res.body.text() } satisfies Reply
        },
        catch: unreachable(u)
      })

    const callStream = (u: Upstream, p: Provider, path: string, body: string, extra?: Readonly<Record<string, string>>) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(
          restore(Effect.tryPromise({
            try: async (signal) => {
              const res = await send(u, p, "POST", path, body, signal, extra)
              res.body.on("error", noop)
              if (signal.aborted) res.body.destroy()
              return res
            },
            catch: unreachable(u)
          })),
          (res) =>
            Effect.as(Effect.addFinalizer(() => Effect.sync(() => res.body.destroy())), {
              status: res.statusCode,
              headers: flat(res.headers),
              body: res.body as Readable
            })
        )
      )

    const readText = (body: Readable): Promise<string> =>
      new Promise((resolve) => {
        let out = ""
        body.setEncoding("utf8")
        body.on("data", (c: string) => (out += c))
        body.on("end", () => resolve(out))
        body.on("error", () => resolve(out))
      })

    const streamOf = (u: Upstream, body: Readable) =>
      Stream.fromAsyncIterable(body as AsyncIterable<Uint8Array>, unreachable(u))

    /** The decoded OpenAI chat request in a body the relay built (so valid), or a 400. */
    const chatRequest = (body: string | Uint8Array): Either.Either<OpenAI.ChatCompletionRequest, Reply> => {
      let parsed: unknown
      try {
        parsed = JSON.parse(text(body))
      } catch {
        return Either.left(json(400, openAIError("Invalid JSON body.", "invalid_request_error", null)))
      }
      return Either.mapLeft(OpenAI.decodeChatRequest(parsed), (e) => json(400, openAIError(e.message, "invalid_request_error", null)))
    }

    const embeddingsRequest = (body: string | Uint8Array): Either.Either<OpenAI.EmbeddingsRequest, Reply> => {
      let parsed: unknown
      try {
        parsed = JSON.parse(text(body))
      } catch {
        return Either.left(json(400, openAIError("Invalid JSON body.", "invalid_request_error", null)))
      }
      return Either.mapLeft(OpenAI.decodeEmbeddingsRequest(parsed), (e) => json(400, openAIError(e.message, "invalid_request_error", null)))
    }

    /** The provider's call for a chat request: path, body, and how to read its answers. */
    const chatCall = (p: Provider, request: OpenAI.ChatCompletionRequest, stream: boolean, created: number) => {
      const includeUsage = request.stream_options?.include_usage === true
      const streamOptions = { model: request.model, created, includeUsage }
      if (p.kind === "anthropic") {
        return Either.map(
          Anthropic.toRequest(request, { model: request.model, defaultMaxTokens: p.defaultMaxTokens }),
          (body) => ({
            path: Anthropic.MESSAGES_PATH,
            body: JSON.stringify(body),
            translator: (): StreamTranslator => Anthropic.streamTranslator(streamOptions),
            fromResponse: (t: string) => Anthropic.fromResponse(t, { model: request.model, created }),
            errorFrom: Anthropic.errorFrom,
            headers: (h: Readonly<Record<string, string | undefined>>, now: number) => Anthropic.rateLimitHeaders(h, now)
          })
        )
      }
      return Either.map(Gemini.toRequest(request), (body) => ({
        path: Gemini.chatPath(request.model, stream),
        body: JSON.stringify(body),
        translator: (): StreamTranslator => Gemini.streamTranslator(streamOptions),
        fromResponse: (t: string) => Gemini.fromResponse(t, { model: request.model, created }),
        errorFrom: Gemini.errorFrom,
        headers: (h: Readonly<Record<string, string | undefined>>) => h
      }))
    }

    const seconds = Effect.map(Clock.currentTimeMillis, (ms) => Math.floor(ms / 1000))

    const post = (u: Upstream, path: string, body: string | Uint8Array, extra?: Readonly<Record<string, string>>): Effect.Effect<Reply, UpstreamUnreachable> => {
      const p = providerOf(u.name)
      if (p === undefined || plain(p)) {
        return underlying.post(u, path, body, extra)
      }
      if (p.kind === "openai") return call(u, p, "POST", path, text(body), extra)
      if (p.kind === "azure-openai") {
        const model = path === EMBEDDINGS
          ? Either.getOrUndefined(embeddingsRequest(body))?.model
          : Either.getOrUndefined(chatRequest(body))?.model
        const options = { deployments: p.deployments ?? {}, apiVersion: p.apiVersion }
        const azurePath = model === undefined
          ? undefined
          : path === EMBEDDINGS
          ? Azure.embeddingsPath(model, options)
          : Azure.chatPath(model, options)
        return azurePath === undefined
          ? Effect.succeed(noModel(u.name, model ?? "this request"))
          : call(u, p, "POST", azurePath, text(body), extra)
      }
      if (path === EMBEDDINGS) {
        if (p.kind !== "gemini") return Effect.succeed(noModel(u.name, "embeddings"))
        return Either.match(embeddingsRequest(body), {
          onLeft: Effect.succeed,
          onRight: (request) =>
            Either.match(Gemini.toEmbeddingsRequest(request, { model: request.model }), {
              onLeft: (e) => Effect.succeed(refusedReply(e)),
              onRight: (g) =>
                Effect.flatMap(call(u, p, "POST", g.path, JSON.stringify(g.body), extra), (reply) =>
                  Effect.map(Clock.currentTimeMillis, (now): Reply => {
                    if (reply.status !== 200) return replyFor(Gemini.errorFrom(u.name, reply.status, reply.headers, reply.text, now))
                    const r = Gemini.fromEmbeddingsResponse(reply.text, request, { model: request.model })
                    return r._tag === "Ok" ? json(200, r.json) : json(200, { error: { message: r.reason } })
                  }))
            })
        })
      }
      return Either.match(chatRequest(body), {
        onLeft: Effect.succeed,
        onRight: (request) =>
          Effect.flatMap(seconds, (created) =>
            Either.match(chatCall(p, request, false, created), {
              onLeft: (e) => Effect.succeed(refusedReply(e)),
              onRight: (c) =>
                Effect.flatMap(call(u, p, "POST", c.path, c.body, extra), (reply) =>
                  Effect.map(Clock.currentTimeMillis, (now): Reply => {
                    if (reply.status !== 200) return replyFor(c.errorFrom(u.name, reply.status, reply.headers, reply.text, now))
                    const r = c.fromResponse(reply.text)
                    // Not a usable answer: a body the relay's own check calls invalid, so that it fails over.
                    return r._tag === "Ok"
                      ? { status: 200, headers: { ...c.headers(reply.headers, now), "content-type": "application/json" }, text: JSON.stringify(r.json) }
                      : json(200, { error: { message: r.reason } })
                  }))
            }))
      })
    }

    const postStream = (
      u: Upstream,
      path: string,
      body: string | Uint8Array,
      extra?: Readonly<Record<string, string>>
    ): Effect.Effect<StreamReply, UpstreamUnreachable, Scope.Scope> => {
      const p = providerOf(u.name)
      if (p === undefined || plain(p)) {
        return underlying.postStream(u, path, body, extra)
      }
      const passThrough = (target: string) =>
        Effect.map(callStream(u, p, target, text(body), extra), (res): StreamReply => ({
          status: res.status,
          headers: res.headers,
          body: streamOf(u, res.body)
        }))
      const immediate = (reply: Reply): StreamReply => ({
        status: reply.status,
        headers: reply.headers,
        body: Stream.succeed(new TextEncoder().encode(reply.text))
      })
      if (p.kind === "openai") return passThrough(path)
      if (p.kind === "azure-openai") {
        const request = Either.getOrUndefined(chatRequest(body))
        const target = request === undefined ? undefined : Azure.chatPath(request.model, { deployments: p.deployments ?? {}, apiVersion: p.apiVersion })
        return target === undefined ? Effect.succeed(immediate(noModel(u.name, request?.model ?? "this request"))) : passThrough(target)
      }
      return Either.match(chatRequest(body), {
        onLeft: (reply) => Effect.succeed(immediate(reply)),
        onRight: (request) =>
          Effect.flatMap(seconds, (created) =>
            Either.match(chatCall(p, request, true, created), {
              onLeft: (e) => Effect.succeed(immediate(refusedReply(e))),
              onRight: (c) =>
                Effect.flatMap(callStream(u, p, c.path, c.body, extra), (res) =>
                  Effect.flatMap(Clock.currentTimeMillis, (now) => {
                    if (res.status !== 200) {
                      return Effect.map(
                        Effect.promise(() => readText(res.body)),
                        (t) => immediate(replyFor(c.errorFrom(u.name, res.status, res.headers, t, now)))
                      )
                    }
                    const encoder = new TextEncoder()
                    return Effect.succeed({
                      status: 200,
                      headers: { ...c.headers(res.headers, now), "content-type": "text/event-stream" },
                      body: Stream.map(translateStream(streamOf(u, res.body), c.translator()), (t) => encoder.encode(t))
                    } satisfies StreamReply)
                  }))
            }))
      })
    }

    const get = (u: Upstream, path: string): Effect.Effect<Reply, UpstreamUnreachable> => {
      const p = providerOf(u.name)
      if (p === undefined || plain(p)) {
        return underlying.get(u, path)
      }
      if (p.kind === "azure-openai") {
        return call(u, p, "GET", `/openai${path}?api-version=${encodeURIComponent(p.apiVersion ?? Azure.DEFAULT_API_VERSION)}`)
      }
      if (p.kind !== "gemini") return call(u, p, "GET", path)
      // Gemini lists `models/{id}` under `models`: as OpenAI's list, for the health probes.
      return Effect.map(call(u, p, "GET", path), (reply) => {
        if (reply.status !== 200) return reply
        try {
          const listed = JSON.parse(reply.text) as { models?: Array<{ name?: string }> }
          const data = (listed.models ?? []).map((m) => ({ id: String(m.name ?? "").replace(/^models\//, ""), object: "model" }))
          return json(200, { object: "list", data })
        } catch {
          return reply
        }
      })
    }

    /**
     * The relay's hot path (`unsafePost`, no fiber per call) whenever the
     * underlying client has one: plain OpenAI upstreams go straight to it;
     * translated ones run `post` in a fiber of this layer's runtime, as the
     * relay would without `unsafePost`.
     */
    const underlyingUnsafe = underlying.unsafePost
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const unsafePost: UpstreamClient["unsafePost"] = underlyingUnsafe === undefined ? undefined : (u, path, body, extra, done) => {
      const p = providerOf(u.name)
      if (p === undefined || plain(p)) return underlyingUnsafe(u, path, body, extra, done)
      const fiber = runFork(post(u, path, body, extra))
      let aborted = false
      fiber.addObserver((exit) => {
        if (aborted) return
        if (exit._tag === "Success") return done(undefined, exit.value)
        const failure = Cause.failureOption(exit.cause)
        done(failure._tag === "Some" ? failure.value : new UpstreamUnreachable({ upstream: u.name, reason: "translation failed" }), undefined)
      })
      return () => {
        aborted = true
        fiber.unsafeInterruptAsFork(fiber.id())
      }
    }

    return UpstreamClient.of(unsafePost === undefined ? { post, postStream, get } : { post, postStream, get, unsafePost })
  })

const lower = (headers: Readonly<Record<string, string>> | undefined): Record<string, string> => {
  const out: Record<string, string> = {}
  if (headers !== undefined) for (const k in headers) out[k.toLowerCase()] = headers[k]!
  return out
}

/**
 * The layer: wraps the `UpstreamClient` it is given with translations for
 * the upstreams `providerOf` names.
 */
export const layer = (
  providerOf: (upstream: string) => Provider | undefined,
  options?: UndiciOptions
): Layer.Layer<UpstreamClient, never, UpstreamClient> =>
  Layer.scoped(UpstreamClient, Effect.flatMap(UpstreamClient, (underlying) => make(underlying, providerOf, options)))
