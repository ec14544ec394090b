/**
 * The HTTP face of the relay: decode, authenticate, call the pipeline, encode.
 * The server decides nothing about upstreams; the core does.
 *
 * Dispatch is a plain switch on method and path (a handful of fixed routes),
 * which also tells "wrong method" (405) from "no such path" (404). Every
 * error is OpenAI's `{"error":{"message","type","param","code"}}` with the
 * status the official SDK maps to its error classes.
 */
import { Cooldown, type Hedge, Health, OpenAI, Relay, type Upstream } from "@breakwater/core"
import { boundedLabel } from "./internal/labels.js"
import { taggedBy } from "./internal/taggedMetrics.js"
import { createHash, randomUUID, timingSafeEqual } from "node:crypto"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import type * as Tracer from "effect/Tracer"
import * as Console from "./Console.js"
import * as Controls from "./Controls.js"
import type * as Events from "./Events.js"
import { type Admitted, bearerToken, type BudgetExceeded, type Caller, type Charged, Gateway, type KeyRateLimited, type ModelNotPriced, Unauthorized } from "./Gateway.js"
import * as Prometheus from "./Prometheus.js"
import * as Reload from "./Reload.js"
import * as RequestLog from "./RequestLog.js"

/** What the handler needs of a request; the Node adapter (Server.ts) fills it in. */
export interface Incoming {
  readonly method: string
  readonly url: string
  readonly headers: Readonly<Record<string, string | undefined>>
  /** The body as text, or undefined when it is larger than `maxBodyBytes`. */
  readonly body: Effect.Effect<string | undefined>
  /**
   * `performance.now()` when the request arrived (its headers read): a
   * request's latency then counts the reading of its body on every path,
   * the fast one and the general one. The handler's own start when absent.
   */
  readonly started?: number
  /** The handler's own record of the request, for {@link Handler.hungUp}; adapters leave it alone. */
  state?: unknown
}

/** A response: a complete text body, or a stream of text (server-sent events). */
export interface Reply {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: string | Stream.Stream<string>
}

/** The HTTP handler, and what the adapter tells it about callers that leave. */
export interface Handler {
  (request: Incoming): Effect.Effect<Reply>
  /**
   * The caller hung up before the answer was complete, and the adapter has
   * interrupted the request: the request is logged and counted as 499, and a
   * stream whose body was never written is released. Does nothing for a
   * request already logged, so it may run after any interruption.
   */
  readonly hungUp: (request: Incoming) => Effect.Effect<void>
  /**
   * The fast path of a chat completion whose body has been read (`POST
   * /v1/chat/completions`): the request as the handler would answer it,
   * without a fiber when it can. Returns undefined when it does not apply
   * (nothing done: run the handler, with the body); an effect when the
   * relay handed the request over (run it as the handler's answer); or the
   * call's cancel (the caller hung up: `then` gets what is left to run, the
   * line is logged as 499), and `reply` gets the answer once, a reply or an
   * effect to run for one. `caller` is the relay's view of the request
   * runtime ({@link Relay.callerOf}). Its latency counts from
   * `request.started`.
   */
  readonly fast: (
    request: Incoming,
    body: string,
    caller: Relay.Caller,
    reply: (answer: Reply | Effect.Effect<Reply>) => void
  ) => Effect.Effect<Reply> | Relay.Cancel | undefined
  /**
   * Whether {@link fast} may take a chat completion with these headers, asked
   * before its body is read: a valid key, the RequestLog on, no traces, not
   * draining. (A wrong key is answered at once, before the body, by the handler.)
   */
  readonly fastAccepts: (headers: Readonly<Record<string, string | undefined>>) => boolean
}

const text = (status: number, body: string, contentType: string, headers: Record<string, string> = {}): Reply => ({
  status,
  headers: { "content-type": contentType, ...headers },
  body
})

export interface Options {
  readonly maxBodyBytes: number
  readonly adminKey: Redacted.Redacted<string> | undefined
  /** Model names used as metric labels as they are (configured models and aliases); others are bounded. */
  readonly knownModels?: ReadonlyArray<string> | undefined
  /**
   * True while the server drains before exit: new relay requests and /readyz
   * get 503, and every response `Connection: close`, so that load balancers
   * and kept-alive clients go elsewhere.
   */
  readonly draining?: (() => boolean) | undefined
  /**
   * `POST /admin/reload`: re-reads the config file and swaps it in (the
   * server's `Running.reload`). Without it, the route answers 409.
   */
  readonly reload?: (() => Effect.Effect<Reload.Outcome>) | undefined
  /** Spans for requests (see {@link RequestTracing}); none when absent. */
  readonly tracing?: RequestTracing | undefined
  /** The console's live feed (Events.ts): `GET /admin/events`, and each relay request's log record. */
  readonly events?: Events.Feed | undefined
  /** `GET /console`, the operator console (`server.console`). Default true when `events` is given. */
  readonly console?: boolean | undefined
}

/**
 * Spans for requests, through Effect's `Tracer` (Telemetry.ts installs an
 * OpenTelemetry one). Each `/v1/` request is a span of kind `server`, ended
 * when its log line is written (for a stream: when the stream ends), with
 * what the line says: status, key name, model, upstream, attempts, cache,
 * tokens, cost, a stream's outcome, why upstreams failed. Never a prompt, a
 * completion, a key or a header.
 */
export interface RequestTracing {
  /** The caller's span, from its W3C `traceparent` and `tracestate` headers; undefined without (a new trace). */
  readonly parentOf: (headers: Readonly<Record<string, string | undefined>>) => Tracer.AnySpan | undefined
}

// ---------------------------------------------------------------------------
// responses

const JSON_TYPE = "application/json"

const failure = (
  status: number,
  message: string,
  type: string,
  code: string | null,
  param: string | null = null,
  headers: Record<string, string> = {}
): Reply => text(status, OpenAI.errorBody(message, type, param, code), JSON_TYPE, headers)

const json = (status: number, body: unknown): Reply => text(status, JSON.stringify(body), JSON_TYPE)

const retryAfterHeader = (d: Duration.Duration | undefined): Record<string, string> =>
  d === undefined ? {} : { "retry-after": String(Math.max(1, Math.ceil(Duration.toMillis(d) / 1000))) }

/**
 * The relay's failures, as the OpenAI API would answer them. Each one that
 * involved an upstream says which in `x-breakwater-upstream` (the one that
 * answered, or the last one tried), like a success does.
 */
const relayFailure = (error: Relay.RelayError): Reply => {
  const upstream = Relay.upstreamOf(error)
  const headers: Record<string, string> = upstream === undefined ? {} : { "x-breakwater-upstream": upstream }
  switch (error._tag) {
    case "UnknownModel":
      return failure(404, error.message, "invalid_request_error", "model_not_found", "model")
    case "UpstreamRejected":
      // The caller's own mistake, as the upstream put it.
      return text(error.status, error.body, error.contentType ?? JSON_TYPE, headers)
    case "NoUpstreamAvailable":
      return failure(503, error.message, "upstream_error", "no_upstream_available", null, {
        ...headers,
        ...retryAfterHeader(error.retryAfter)
      })
    case "AllUpstreamsFailed":
      return failure(502, error.message, "upstream_error", "upstream_failed", null, headers)
    case "UpstreamKeysRejected":
      // The operator's problem: not a 401, which the caller would take for its own key.
      return failure(502, error.message, "upstream_error", "upstream_auth_failed", null, headers)
    case "DeadlineExceeded":
      return failure(
        504,
        `The request did not complete within ${Duration.format(error.budget)}.`,
        "upstream_error",
        "timeout",
        null,
        headers
      )
  }
}

// ---------------------------------------------------------------------------
// metrics

const requestsCounter = Metric.counter("breakwater_requests_total", {
  description: "Requests by upstream, model, key and status",
  incremental: true
})
const durationHistogram = Metric.histogram(
  "breakwater_request_duration_ms",
  MetricBoundaries.exponential({ start: 1, factor: 2, count: 16 }),
  "Request latency through the gateway, ms"
)

// ---------------------------------------------------------------------------
// the app

interface Log {
  requestId: string
  readonly method: string
  readonly path: string
  /** performance.now() at the start. */
  readonly started: number
  /** The line is written once: at the answer, or for a stream when it ends, or at a hang-up. */
  written: boolean
  /** A stream's line is written when the stream ends, not when its headers go out. */
  deferred: boolean
  key: string
  model: string | undefined
  /** The model that answered, when a fallback did (not the asked one). */
  servedModel: string | undefined
  upstream: string | undefined
  attempts: number | undefined
  status: number
  cache: string | undefined
  costUsd: number | undefined
  /** How the cost was priced, when not by the model's price (Gateway.CostBasis). */
  costBasis: string | undefined
  /** Why each upstream failed or was left out, when the relay failed. */
  failures: ReadonlyArray<string> | undefined
  /** For a stream: its end, once (it writes the line); also run if the caller leaves before the body is read. */
  finish: Effect.Effect<void> | undefined
  /** A stream's end: completed, failed or abandoned. */
  outcome: Relay.StreamOutcome | undefined
  /** What ended a failed stream. */
  error: string | undefined
  usageEstimated: boolean | undefined
  /** Set when the request was hedged: where the hedge went and how it fared. */
  hedge: Hedge.Report | undefined
  /** The request's span, when tracing. */
  span: Tracer.Span | undefined
}

export const make = (options: Options) =>
  Effect.gen(function*() {
    const relay = yield* Relay.Relay
    const gateway = yield* Gateway
    const health = yield* Effect.serviceOption(Health.Health)
    const cooldowns = yield* Cooldown.CooldownStore
    // Request lines go through the RequestLog when there is one (the server
    // provides it), at the log level in force where the handler is built
    // (the server builds one handler per config, at that config's level).
    const requestLog = Option.getOrUndefined(yield* Effect.serviceOption(RequestLog.RequestLog))
    const minimumLevel = yield* FiberRef.get(FiberRef.currentMinimumLogLevel)
    const infoOn = LogLevel.greaterThanEqual(LogLevel.Info, minimumLevel)
    const warnOn = LogLevel.greaterThanEqual(LogLevel.Warning, minimumLevel)
    const adminDigest = options.adminKey === undefined ? undefined : Redacted.value(options.adminKey)
    const knownModels = new Set([...relay.models, ...(options.knownModels ?? [])])
    // Model labels: configured models and aliases as they are, at most 50
    // other names (through a "*" upstream) first seen, then "other".
    const otherModel = boundedLabel([], 50)
    const modelLabel = (model: string | undefined): string =>
      model === undefined
        ? "unknown"
        : knownModels.has(model)
        ? model
        : knownModels.has("*")
        ? otherModel(model)
        : "unknown"
    const configuredModels = relay.models.filter((m) => m !== "*")
    /** Upstreams whose models come from their `/models` probes: those serving any model. */
    const listing = new Set(relay.upstreams.filter((u) => u.models === "*").map((u) => u.name))

    /**
     * The models callers may ask for: the configured ones and aliases first,
     * in config order, then what the `"*"` upstreams' health probes found,
     * sorted. A configured model an upstream also lists takes that listing's
     * `created` and `owned_by`.
     */
    const modelList: Effect.Effect<ReadonlyArray<Health.ReportedModel>> = Effect.map(
      Option.isSome(health) ? health.value.models : Effect.succeed(new Map<string, ReadonlyArray<Health.ReportedModel>>()),
      (reported) => {
        const known = new Map<string, Health.ReportedModel>()
        for (const models of reported.values()) for (const m of models) if (!known.has(m.id)) known.set(m.id, m)
        const out: Array<Health.ReportedModel> = configuredModels.map((id) =>
          known.get(id) ?? { id, created: 0, owned_by: "breakwater" }
        )
        const seen = new Set(configuredModels)
        const found: Array<Health.ReportedModel> = []
        for (const [upstream, models] of reported) {
          if (!listing.has(upstream)) continue
          for (const m of models) {
            if (seen.has(m.id)) continue
            seen.add(m.id)
            found.push(m)
          }
        }
        found.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
        return out.concat(found)
      }
    )

    const modelObject = (m: Health.ReportedModel) => ({ id: m.id, object: "model", created: m.created, owned_by: m.owned_by })

    /** `GET /v1/models` and `GET /v1/models/{id}`, for callers with a gateway key. */
    const models = (request: Incoming, path: string): Effect.Effect<Reply> => {
      if (request.method !== "GET") return Effect.succeed(methodNotAllowed(["GET"]))
      return Effect.suspend(() => {
        const caller = gateway.identify(request.headers["authorization"])
        if (caller instanceof Unauthorized) return Effect.succeed(failure(401, caller.message, "invalid_request_error", "invalid_api_key"))
        if (path === "/v1/models") {
          return Effect.map(modelList, (list) => json(200, { object: "list", data: list.map(modelObject) }))
        }
        // The rest of the path is the id, slashes included (`org/model`, or `org%2Fmodel` as the SDK sends it).
        let id: string
        try {
          id = decodeURIComponent(path.slice("/v1/models/".length))
        } catch {
          return Effect.succeed(failure(400, "The model id in the URL is not valid percent-encoding.", "invalid_request_error", null, "model"))
        }
        return Effect.map(modelList, (list) => {
          const found = list.find((m) => m.id === id)
          if (found !== undefined) return json(200, modelObject(found))
          const shown = id.length > 200 ? `${id.slice(0, 197)}...` : id
          return failure(
            404,
            `The model '${shown}' does not exist or is not served by this gateway.`,
            "invalid_request_error",
            "model_not_found",
            "model"
          )
        })
      })
    }


    const parseJson = (text: string): Either.Either<unknown, Reply> => {
      if (text.trim() === "") {
        return Either.left(failure(400, "The request body is empty; expected a JSON object.", "invalid_request_error", null))
      }
      // Before parsing: nothing recursive may ever see a body nested deeper.
      if (OpenAI.nestingExceeds(text)) {
        return Either.left(
          failure(
            400,
            `The JSON body nests objects and arrays deeper than ${OpenAI.MAX_JSON_DEPTH} levels, the gateway's limit.`,
            "invalid_request_error",
            "json_too_deep"
          )
        )
      }
      try {
        return Either.right(JSON.parse(text))
      } catch {
        return Either.left(
          failure(
            400,
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            "invalid_request_error",
            null
          )
        )
      }
    }

    const cacheControl = (request: Incoming) => {
      const header = request.headers["cache-control"]
      if (header === undefined) return undefined
      const v = header.toLowerCase()
      return { lookup: !v.includes("no-cache"), store: !v.includes("no-store") }
    }

    /** The relay's headers; a stream's cost and latency are not known when its headers go out. */
    const relayedHeaders = (
      m: Relay.Metadata | { readonly upstream: string; readonly model: string; readonly attempts: number },
      charged?: Charged
    ) => {
      const h: Record<string, string> = {
        "x-breakwater-upstream": m.upstream,
        "x-breakwater-model": m.model,
        "x-breakwater-attempts": String(m.attempts)
      }
      if ("cache" in m) {
        h["x-breakwater-cache"] = m.cache
        h["x-breakwater-latency-ms"] = String(m.latencyMs)
        h["x-breakwater-cost-usd"] = (charged?.usd ?? m.costUsd ?? 0).toFixed(8)
        if (charged !== undefined && charged.basis !== "table") h["x-breakwater-cost-basis"] = charged.basis
      }
      return h
    }

    /**
     * A relayed POST: auth, body limits, JSON, schema, key limits, then the
     * relay. Plain functions up to the body and again up to the admission:
     * an Effect step only where something may wait.
     */
    const relayed = (
      request: Incoming,
      log: Log,
      kind: "chat" | "embeddings"
    ): Effect.Effect<Reply> => {
      const caller = gateway.identify(request.headers["authorization"])
      if (caller instanceof Unauthorized) {
        return Effect.succeed(failure(401, caller.message, "invalid_request_error", "invalid_api_key"))
      }
      log.key = caller.name
      return Effect.flatMap(request.body, (body) => relayBody(request, log, kind, caller, body))
    }

    const relayBody = (
      request: Incoming,
      log: Log,
      kind: "chat" | "embeddings",
      caller: Caller,
      body: string | undefined
    ): Effect.Effect<Reply> => {
      if (body === undefined) {
        return Effect.succeed(failure(
          413,
          `The request body is larger than ${options.maxBodyBytes} bytes.`,
          "invalid_request_error",
          "request_too_large"
        ))
      }
      const parsed = parseJson(body)
      if (Either.isLeft(parsed)) return Effect.succeed(parsed.left)
      if (kind === "chat") {
        const decoded = OpenAI.decodeChatRequest(parsed.right)
        if (Either.isLeft(decoded)) {
          return Effect.succeed(failure(400, decoded.left.message, "invalid_request_error", "invalid_value", decoded.left.param))
        }
        return chat(request, log, caller, decoded.right, body)
      }
      const decoded = OpenAI.decodeEmbeddingsRequest(parsed.right)
      if (Either.isLeft(decoded)) {
        return Effect.succeed(failure(400, decoded.left.message, "invalid_request_error", "invalid_value", decoded.left.param))
      }
      const request_ = decoded.right
      log.model = request_.model
      const controls = Controls.read(request.headers, request_.model, relay)
      if (controls !== undefined && Controls.isInvalid(controls)) return Effect.succeed(invalidControl(controls))
      const promptTokens = embeddingTokens(request_.input)
      return admitThen(caller, { model: request_.model, promptTokens, maxOutputTokens: 0 }, 1, (admitted) =>
        relayedJson(
          log,
          admitted,
          relay.embeddings(request_, controls === undefined ? { key: caller.name, rawBody: body } : { key: caller.name, rawBody: body, ...controls })
        ))
    }

    /** A control header the gateway cannot honour: a 400 naming it. */
    const invalidControl = (e: Controls.InvalidControl): Reply =>
      failure(400, e.message, "invalid_request_error", "invalid_header", e.header)

    /** Admits the request (a key's limits and budget), then runs `then`; a refusal is the reply. */
    const admitThen = (
      caller: Caller,
      admission: Parameters<typeof gateway.admit>[1],
      tokens: number,
      then: (admitted: Admitted) => Effect.Effect<Reply>
    ): Effect.Effect<Reply> => {
      const now = gateway.admitNow(caller, admission.model)
      if (now !== undefined) return then(now)
      return Effect.matchEffect(gateway.admit(caller, admission, tokens), {
        onFailure: (e) => Effect.succeed(refusal(e)),
        onSuccess: then
      })
    }

    const refusal = (e: KeyRateLimited | BudgetExceeded | ModelNotPriced): Reply => {
      switch (e._tag) {
        case "KeyRateLimited":
          return failure(429, e.message, "rate_limit_exceeded", "rate_limit_exceeded", null, retryAfterHeader(e.retryAfter))
        case "BudgetExceeded":
          return failure(429, e.message, "insufficient_quota", "budget_exceeded")
        // A policy on this key, not a malformed request: 403, as OpenAI answers a model a project may not use.
        case "ModelNotPriced":
          return failure(403, e.message, "permission_error", "model_not_priced", "model")
      }
    }

    /**
     * A relayed JSON answer: settle its cost, then the reply; a failure is
     * the relay's error reply (the reservation released). For a key without
     * a budget nothing is held, and settling is a plain function.
     */
    const relayedJson = (
      log: Log,
      admitted: Admitted,
      call: Effect.Effect<Relay.Result, Relay.RelayError>
    ): Effect.Effect<Reply> => {
      if (admitted.hold === undefined) {
        return Effect.matchEffect(call, {
          onFailure: (e) => Effect.succeed(relayFailed(log, e)),
          onSuccess: (result) => {
            const charged = gateway.settleNow(admitted, result.metadata)
            return charged === undefined ? answered(log, admitted, result) : Effect.succeed(answer(log, result, charged))
          }
        })
      }
      return call.pipe(
        Effect.flatMap((result) => answered(log, admitted, result)),
        Effect.catchAll((e) => Effect.as(gateway.release(admitted), relayFailed(log, e))),
        releasing(admitted)
      )
    }

    /**
     * Gives the reservation back if the request ends without settling
     * (interrupted: the caller left). Nothing to do for keys without a budget.
     */
    const releasing = (admitted: Admitted) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
      admitted.hold === undefined ? effect : Effect.ensuring(effect, gateway.release(admitted))

    /** A relayed JSON answer: settle its cost, then the reply. */
    const answered = (log: Log, admitted: Admitted, result: Relay.Result) =>
      Effect.map(gateway.settle(admitted, result.metadata), (charged) => answer(log, result, charged))

    const answer = (log: Log, result: Relay.Result, charged: Charged): Reply => {
      noteResult(log, result.metadata, charged)
      return text(200, result.body, JSON_TYPE, relayedHeaders(result.metadata, charged))
    }

    /** A failed relay, logged with the upstream calls it made. */
    const relayFailed = (log: Log, error: Relay.RelayError): Reply => {
      if (error._tag === "AllUpstreamsFailed" || error._tag === "NoUpstreamAvailable" || error._tag === "UpstreamKeysRejected") {
        log.failures = error.failures.map((f) => `${f.upstream}: ${f.reason}`)
        log.attempts = error.attempts
      } else if (error._tag === "DeadlineExceeded") {
        log.attempts = error.attempts ?? 0
      } else if (error._tag === "UpstreamRejected") {
        log.upstream = error.upstream
        log.attempts = error.attempts ?? 1
      }
      return relayFailure(error)
    }

    const noteResult = (log: Log, m: Relay.Metadata, charged?: Charged) => {
      log.upstream = m.upstream
      if (m.model !== log.model) log.servedModel = m.model
      log.attempts = m.attempts
      log.cache = m.cache
      log.costUsd = charged?.usd ?? m.costUsd
      if (charged !== undefined && charged.basis !== "table") log.costBasis = charged.basis
      log.usageEstimated = m.usageEstimated
      if (m.hedge !== undefined) log.hedge = m.hedge
      if (log.span !== undefined && m.usage !== undefined) {
        log.span.attribute("gen_ai.usage.input_tokens", m.usage.prompt_tokens)
        if (m.usage.completion_tokens !== undefined) log.span.attribute("gen_ai.usage.output_tokens", m.usage.completion_tokens)
      }
    }

    const chat = (
      request: Incoming,
      log: Log,
      caller: Caller,
      body: OpenAI.ChatCompletionRequest,
      raw: string
    ): Effect.Effect<Reply> => {
      log.model = body.model
      const controls = Controls.read(request.headers, body.model, relay)
      if (controls !== undefined && Controls.isInvalid(controls)) return Effect.succeed(invalidControl(controls))
      const tokens = OpenAI.estimateTokens(body)
      const maxOutputTokens = body.max_completion_tokens ?? body.max_tokens ?? undefined
      return admitThen(
        caller,
        { model: body.model, promptTokens: tokens - (maxOutputTokens ?? 0), maxOutputTokens },
        tokens,
        (admitted) => {
          const options: Relay.CallOptions = controls === undefined
            ? { key: caller.name, rawBody: raw, cache: cacheControl(request) }
            : { key: caller.name, rawBody: raw, cache: cacheControl(request), ...controls }
          if (body.stream === true) return chatStream(log, admitted, body, options)
          return relayedJson(log, admitted, relay.chat(body, options))
        }
      )
    }

    const chatStream = (
      log: Log,
      admitted: Admitted,
      body: OpenAI.ChatCompletionRequest,
      options: Relay.CallOptions
    ): Effect.Effect<Reply> =>
      relay.chatStream(body, options).pipe(
        Effect.map((result): Reply => {
          log.upstream = result.upstream
          if (result.model !== log.model) log.servedModel = result.model
          log.attempts = result.attempts
          log.cache = "bypass"
          log.deferred = true
          // From here the stream settles when it ends, however it ends
          // (or, through hungUp, if it is never read): its real outcome,
          // cost and charge, then the request's log line. Once.
          let finished = false
          const finish = Effect.suspend(() => {
            if (finished) return Effect.void
            finished = true
            return Effect.flatMap(result.done, (m) => {
              log.outcome = m.streamOutcome
              log.error = m.streamError
              return Effect.flatMap(gateway.settle(admitted, m), (charged) => {
                noteResult(log, m, charged)
                return writeLog(log, m.streamOutcome === "abandoned" ? 499 : 200)
              })
            })
          })
          log.finish = finish
          return {
            status: 200,
            headers: { "content-type": "text/event-stream", "cache-control": "no-cache", ...relayedHeaders(result) },
            body: Stream.ensuring(result.events, finish)
          }
        }),
        Effect.catchAll((e) => Effect.as(gateway.release(admitted), relayFailed(log, e))),
        (effect) => admitted.hold === undefined ? effect : Effect.onInterrupt(effect, () => gateway.release(admitted))
      )

    // ----- admin ------------------------------------------------------------

    const adminAuth = (request: Incoming): Reply | undefined => {
      if (adminDigest === undefined) {
        return failure(403, "The admin API is disabled: set server.adminKey to enable it.", "permission_error", "admin_disabled")
      }
      const presented = bearerToken(request.headers["authorization"])
      if (presented === undefined || !constantTimeEqual(presented, adminDigest)) {
        return failure(401, "Admin routes need 'Authorization: Bearer <server.adminKey>'.", "invalid_request_error", "invalid_api_key")
      }
      return undefined
    }

    const upstreamView = (u: Upstream.Upstream, now: number, active: ReadonlyMap<string, Cooldown.Cooldown>) =>
      Effect.gen(function*() {
        const snap = yield* u.breaker.snapshot
        const status = Option.isSome(health) ? yield* health.value.statusOf(u.name) : undefined
        const cooldown = active.get(u.name)
        const bulk = u.bulkhead.unsafeStats()
        return {
          name: u.name,
          health: status?.state ?? (snap.state === "Closed" ? "healthy" : snap.state),
          breaker: snap.state,
          cooldownUntil: cooldown === undefined || cooldown.until <= now ? null : new Date(cooldown.until).toISOString(),
          cooldownReason: cooldown?.reason ?? null,
          inFlight: bulk.active,
          maxConcurrent: bulk.maxConcurrent,
          latencyMs: u.stats.latencyEwmaMs === undefined ? null : Math.round(u.stats.latencyEwmaMs * 10) / 10,
          probeLatencyMs: status?.probeLatencyMs ?? null,
          requests: u.stats.requests,
          successes: u.stats.successes,
          failures: u.stats.failures,
          consecutiveFailures: snap.consecutiveFailures,
          lastError: u.stats.lastError ?? null
        }
      })

    /**
     * `GET /console`: the console's page (Console.ts). It holds no data, but
     * only a request with the admin key gets 200; others get the same
     * sign-in page with 401, as every admin route refuses them.
     */
    const consolePage = (request: Incoming): Reply => {
      if (options.console === false || options.events === undefined) return notFound("/console")
      if (request.method !== "GET" && request.method !== "HEAD") return methodNotAllowed(PROBE_METHODS)
      if (adminDigest === undefined) {
        return failure(403, "The console is disabled: set server.adminKey to enable it.", "permission_error", "admin_disabled")
      }
      const page = Console.page()
      if (page === undefined) {
        return failure(500, "The console's files are missing from this installation.", "server_error", "console_missing")
      }
      return { status: adminAuth(request) === undefined ? 200 : 401, headers: { ...page.headers }, body: page.html }
    }

    /** `GET /admin/events`: the console's server-sent events, until the caller leaves or the server drains. */
    const events = (request: Incoming): Reply => {
      if (request.method !== "GET") return methodNotAllowed(["GET"])
      if (options.events === undefined) return notFound("/admin/events")
      return {
        status: 200,
        headers: { "content-type": "text/event-stream", "cache-control": "no-store", "x-accel-buffering": "no" },
        body: options.events.subscribe(draining)
      }
    }

    const admin = (request: Incoming, path: string) =>
      Effect.gen(function*() {
        const denied = adminAuth(request)
        if (denied !== undefined) return denied
        if (path === "/admin/events") return events(request)
        if (path === "/admin/upstreams") {
          if (request.method !== "GET") return methodNotAllowed(["GET"])
          const now = yield* Effect.clockWith((c) => Effect.succeed(c.unsafeCurrentTimeMillis()))
          const active = yield* cooldowns.active(now)
          const upstreams = yield* Effect.forEach(relay.upstreams, (u) => upstreamView(u, now, active))
          return json(200, { object: "list", data: upstreams })
        }
        if (path === "/admin/keys") {
          if (request.method !== "GET") return methodNotAllowed(["GET"])
          return json(200, { object: "list", data: yield* gateway.keys })
        }
        if (path === "/admin/reload") {
          if (request.method !== "POST") return methodNotAllowed(["POST"])
          return yield* reloaded
        }
        const k = /^\/admin\/keys\/([^/]+)\/reset-spend$/.exec(path)
        if (k !== null) {
          if (request.method !== "POST") return methodNotAllowed(["POST"])
          let name: string
          try {
            name = decodeURIComponent(k[1]!)
          } catch {
            return failure(400, "The key name in the path is not valid percent-encoding.", "invalid_request_error", "invalid_path")
          }
          const reset = yield* gateway.resetSpend(name)
          if (reset === undefined) {
            return failure(404, `No key named '${name.slice(0, 200)}'.`, "invalid_request_error", "key_not_found")
          }
          if (!reset.reset) {
            return failure(503, "The spend store is unavailable: nothing was reset. Retry.", "server_error", "store_unavailable")
          }
          yield* Effect.logInfo("admin: spend reset").pipe(Effect.annotateLogs({ action: "reset-spend", key: name }))
          return json(200, reset.view)
        }
        const m = /^\/admin\/upstreams\/([^/]+)\/(reset|open)$/.exec(path)
        if (m === null) return notFound(path)
        if (request.method !== "POST") return methodNotAllowed(["POST"])
        let name: string
        try {
          name = decodeURIComponent(m[1]!)
        } catch {
          return failure(
            400,
            "The upstream name in the path has a malformed percent-encoding.",
            "invalid_request_error",
            "invalid_path"
          )
        }
        const u = relay.upstreams.find((x) => x.name === name)
        if (u === undefined) return failure(404, `No upstream named '${name}'.`, "invalid_request_error", "upstream_not_found")
        const action = m[2] === "reset" ? "reset" : "open"
        if (action === "reset") {
          yield* u.breaker.reset
          // The pacer's hold after a 429 ends with the cooldown (Pacing.followClears, on every replica).
          yield* cooldowns.clear(u.name)
        } else {
          yield* u.breaker.forceOpen
        }
        yield* Effect.logInfo("admin action").pipe(
          Effect.annotateLogs({ action, upstream: u.name, path, method: request.method })
        )
        const now = yield* Effect.clockWith((c) => Effect.succeed(c.unsafeCurrentTimeMillis()))
        return json(200, yield* upstreamView(u, now, yield* cooldowns.active(now)))
      })

    /**
     * `POST /admin/reload`: 200 with what changed (and what needs a restart);
     * 400 with `check-config`'s messages when the file is refused (the
     * running config keeps serving); 409 when there is no file to reload.
     */
    const reloaded: Effect.Effect<Reply> = options.reload === undefined
      ? Effect.succeed(failure(409, Reload.UNAVAILABLE_MESSAGE, "invalid_request_error", "reload_unavailable"))
      : Effect.map(options.reload(), (outcome) => {
        switch (outcome._tag) {
          case "Reloaded":
            return json(200, {
              status: "reloaded",
              upstreams: outcome.changes.upstreams,
              keys: outcome.changes.keys,
              settings: outcome.changes.settings,
              restartRequired: outcome.restartRequired
            })
          case "Refused":
            return failure(400, outcome.message, "invalid_request_error", "config_invalid")
          case "Unavailable":
            return failure(409, outcome.message, "invalid_request_error", "reload_unavailable")
        }
      })

    const notFound = (path: string) =>
      failure(404, `Unknown request URL: ${path.slice(0, 200)}.`, "invalid_request_error", "unknown_url")

    const methodNotAllowed = (allowed: ReadonlyArray<string>) =>
      failure(405, `Method not allowed; use ${allowed.join(" or ")}.`, "invalid_request_error", "method_not_allowed", null, {
        allow: allowed.join(", ")
      })

    // ----- dispatch ---------------------------------------------------------

    const route = (request: Incoming, path: string, log: Log) => {
      switch (path) {
        case "/v1/chat/completions":
          return request.method === "POST" ? relayed(request, log, "chat") : Effect.succeed(methodNotAllowed(["POST"]))
        case "/v1/embeddings":
          return request.method === "POST" ? relayed(request, log, "embeddings") : Effect.succeed(methodNotAllowed(["POST"]))
        case "/v1/models":
          return models(request, path)
        // Probes answer HEAD too (Node sends a HEAD reply's headers without its body).
        case "/healthz":
          return Effect.succeed(
            request.method === "GET" || request.method === "HEAD" ? json(200, { status: "ok" }) : methodNotAllowed(PROBE_METHODS)
          )
        // This replica can take traffic: its config is loaded and it listens
        // (it answers), and it is not draining (see refusedWhileDraining).
        // Not "an upstream is healthy": during a provider outage that would
        // take every replica out of the load balancer at once, when each can
        // still fail over, wait out a cooldown or answer from its cache.
        // Upstream health is in /admin/upstreams and the metrics.
        case "/readyz":
          return Effect.succeed(
            request.method === "GET" || request.method === "HEAD"
              ? text(200, READY_BODY, JSON_TYPE)
              : methodNotAllowed(PROBE_METHODS)
          )
        case "/metrics":
          if (request.method !== "GET") return Effect.succeed(methodNotAllowed(["GET"]))
          return Effect.zipRight(
            Effect.forEach(relay.upstreams, (u) => u.bulkhead.updateGauges, { discard: true }),
            Effect.map(Prometheus.render, (body) => text(200, body, Prometheus.contentType))
          )
        case "/console":
          return Effect.sync(() => consolePage(request))
        default:
          if (path.startsWith("/v1/models/") && path.length > "/v1/models/".length) return models(request, path)
          if (path.startsWith("/admin/")) return admin(request, path)
          return Effect.succeed(notFound(path))
      }
    }

    // ----- tracing (only when options.tracing is set) --------------------------

    const tracing = options.tracing
    /** The clock request spans end by (the one they start by). */
    const clock = yield* Effect.clock

    /** Runs `effect` under the request's span, when there is one. */
    const inSpan = <A>(log: Log, effect: Effect.Effect<A>): Effect.Effect<A> =>
      log.span === undefined ? effect : Effect.withParentSpan(effect, log.span)

    // ----- draining -----------------------------------------------------------

    const draining = options.draining ?? (() => false)
    const feed = options.events

    /** While draining: new relay requests and /readyz are refused; the rest (/healthz, /metrics, admin) is served. */
    const refusedWhileDraining = (path: string): Reply | undefined =>
      path === "/readyz"
        ? json(503, { status: "not ready", reason: "shutting down" })
        : path.startsWith("/v1/")
        ? failure(503, "The gateway is shutting down; retry the request.", "server_error", "shutting_down", null, {
          "retry-after": "1"
        })
        : undefined


    /**
     * The request's metric and log line, written once: at the answer; for a
     * stream when it ends, with its outcome; for a caller that hung up, as
     * 499. Failed relays (5xx) and failed streams are warnings.
     *
     * Synchronous: the metrics by their handles, the line through the
     * RequestLog (a plain object, buffered per turn of the event loop). The
     * Effect it returns is only for a handler built without a RequestLog,
     * which logs through Effect's logger instead.
     */
    const writeLog = (log: Log, status: number): Effect.Effect<void> => {
      if (log.written) return Effect.void
      log.written = true
      log.status = status
      const elapsed = performance.now() - log.started
      const fields: Record<string, unknown> = {
        requestId: log.requestId,
        method: log.method,
        path: log.path,
        key: log.key,
        model: log.model ?? null,
        upstream: log.upstream ?? null,
        attempts: log.attempts ?? 0,
        status,
        latencyMs: Math.round(elapsed * 10) / 10,
        cache: log.cache ?? null,
        costUsd: log.costUsd ?? 0
      }
      if (log.costBasis !== undefined) fields["costBasis"] = log.costBasis
      if (log.servedModel !== undefined) {
        fields["servedModel"] = log.servedModel
        fallbacksBy(modelLabel(log.model), modelLabel(log.servedModel), String(status)).unsafeUpdate(1, NO_TAGS)
      }
      if (log.failures !== undefined) fields["failures"] = log.failures
      if (log.outcome !== undefined) {
        fields["outcome"] = log.outcome
        if (log.error !== undefined) fields["error"] = log.error
      }
      if (log.outcome !== undefined || log.usageEstimated === true) fields["usageEstimated"] = log.usageEstimated ?? false
      if (log.hedge !== undefined) {
        fields["hedge"] = log.hedge.outcome
        fields["hedgeUpstream"] = log.hedge.upstream
      }
      requestsBy(log.upstream ?? "none", modelLabel(log.model), log.key, String(status)).unsafeUpdate(1, NO_TAGS)
      durationHistogram.unsafeUpdate(elapsed, NO_TAGS)
      if (feed !== undefined) feed.record(log, status, elapsed)
      if (log.span !== undefined) endRequestSpan(log.span, fields, status, log.outcome === "failed", clock.unsafeCurrentTimeNanos())
      const warning = status >= 500 || log.outcome === "failed"
      if (requestLog === undefined) return Effect.annotateLogs(warning ? Effect.logWarning("request") : Effect.logInfo("request"), fields)
      if (warning ? warnOn : infoOn) requestLog.write(warning ? "WARN" : "INFO", "request", fields)
      return Effect.void
    }

    /**
     * One request: its record (for the log line), the route, the line.
     * Plain code around one Effect (the route's), so that a request that
     * needs nothing asynchronous pays for few Effect steps.
     */
    const handle = (request: Incoming): Effect.Effect<Reply> => {
      const q = request.url.indexOf("?")
      const path = q === -1 ? request.url : request.url.slice(0, q)
      const log = openLog(request, path)
      const logged = path.startsWith("/v1/")
      if (logged) request.state = log
      if (tracing !== undefined && logged) {
        return Effect.flatMap(requestSpan(tracing, request, path, log.requestId), (span) => {
          log.span = span
          return respond(request, path, log, logged)
        })
      }
      return respond(request, path, log, logged)
    }

    /** A request's record, from its arrival (now, when the adapter did not say). */
    const openLog = (request: Incoming, path: string): Log => {
      const started = request.started ?? performance.now()
      const incoming = request.headers["x-request-id"]
      const requestId = incoming !== undefined && REQUEST_ID.test(incoming) ? incoming : randomUUID()
      return {
        requestId,
        method: request.method,
        path,
        started,
        written: false,
        deferred: false,
        key: "anonymous",
        model: undefined,
        servedModel: undefined,
        upstream: undefined,
        attempts: undefined,
        status: 0,
        cache: undefined,
        costUsd: undefined,
        costBasis: undefined,
        failures: undefined,
        finish: undefined,
        outcome: undefined,
        error: undefined,
        usageEstimated: undefined,
        hedge: undefined,
        span: undefined
      }
    }

    const respond = (request: Incoming, path: string, log: Log, logged: boolean): Effect.Effect<Reply> => {
      const closing = draining()
      const refused = closing ? refusedWhileDraining(path) : undefined
      if (refused !== undefined) return Effect.suspend(() => replied(refused, log, logged, closing))
      // Suspended: whatever the route's plain code throws is a defect of this request's fiber (a 500), never the adapter's.
      const routed = inSpan(log, Effect.catchAllCause(Effect.suspend(() => route(request, path, log)), unexpected))
      return Effect.flatMap(routed, (response) => replied(response, log, logged, closing))
    }

    const unexpected = (cause: Cause.Cause<unknown>): Effect.Effect<Reply> =>
      Effect.as(
        Effect.logError("unexpected failure", cause),
        failure(500, "The gateway failed unexpectedly.", "server_error", "internal_error")
      )

    /** The answer's last touches and the request's line (unless a stream writes it when it ends). */
    const replied = (response: Reply, log: Log, logged: boolean, closing: boolean): Effect.Effect<Reply> => {
      // Kept-alive clients (and load balancers) reconnect, to another instance.
      if (closing) response.headers["connection"] = "close"
      log.status = response.status
      response.headers["x-request-id"] = log.requestId
      const pending = logged && !log.deferred ? writeLog(log, response.status) : undefined
      return pending === undefined || pending === Effect.void ? Effect.succeed(response) : Effect.as(pending, response)
    }

    // Run by the adapter after it interrupted the request: nothing per
    // request on the way in, only for callers that leave.
    const hungUp = (request: Incoming): Effect.Effect<void> =>
      Effect.suspend((): Effect.Effect<void> => {
        const log = request.state as Log | undefined
        if (log === undefined || log.written) return Effect.void
        return log.finish ?? writeLog(log, 499)
      })

    // ----- the fast path --------------------------------------------------------

    /** Chat completions on the fast path: only with the RequestLog (a synchronous line) and without traces. */
    const fastOn = requestLog !== undefined && tracing === undefined

    /**
     * {@link Handler.fast}: the general path's steps for the common request
     * (a valid key that needs no admission work, a valid non-streaming
     * body, no invalid control header, not draining), each as plain code,
     * then the relay's {@link Relay.Relay.unsafeChat}. Anything else is
     * declined before anything is done, and the handler answers it.
     */
    const fast = (
      request: Incoming,
      body: string,
      caller: Relay.Caller,
      reply: (answer: Reply | Effect.Effect<Reply>) => void
    ): Effect.Effect<Reply> | Relay.Cancel | undefined => {
      try {
        return fastUnsafe(request, body, caller, reply)
      } catch (defect) {
        // A defect of this plain code: a 500 with its request line and
        // metrics, as a request fiber's defect is (the log opened here if
        // the path had not opened it yet).
        const log = (request.state as Log | undefined) ?? openLog(request, "/v1/chat/completions")
        request.state = log
        return defectReply(log, defect)
      }
    }

    /** The 500 for a defect of the fast path's plain code, written and counted as the general path's. */
    const defectReply = (log: Log, defect: unknown): Effect.Effect<Reply> =>
      Effect.flatMap(unexpected(Cause.die(defect)), (response) => replied(response, log, true, false))

    const fastUnsafe = (
      request: Incoming,
      body: string,
      caller: Relay.Caller,
      reply: (answer: Reply | Effect.Effect<Reply>) => void
    ): Effect.Effect<Reply> | Relay.Cancel | undefined => {
      if (!fastOn || draining()) return undefined
      const who = gateway.identify(request.headers["authorization"])
      if (who instanceof Unauthorized) return undefined
      const parsed = parseJson(body)
      if (Either.isLeft(parsed)) return undefined
      const decoded = OpenAI.decodeChatRequest(parsed.right)
      if (Either.isLeft(decoded) || decoded.right.stream === true) return undefined
      const chat = decoded.right
      const controls = Controls.read(request.headers, chat.model, relay)
      if (controls !== undefined && Controls.isInvalid(controls)) return undefined
      const tokens = OpenAI.estimateTokens(chat)
      const now = clock.unsafeCurrentTimeMillis()
      const admitted = gateway.admitAt(who, chat.model, tokens, now)
      if (admitted === undefined) {
        const later = gateway.admitLater(who, chat.model, tokens)
        return later === undefined ? undefined : fastLater(request, body, caller, reply, who, chat, controls, later)
      }
      // Taken: from here the request is this path's (or, handed over, the general path's from where it is).
      const log = openFastLog(request, who, chat)
      if ("_tag" in admitted) return replied(refusal(admitted), log, true, false)
      return fastCall(request, body, caller, reply, who, chat, controls, log, admitted)
    }

    /**
     * {@link fast} for a key whose limits decide elsewhere (Redis): the log
     * is opened, the store asked (one command, no fiber), and the call
     * started from its answer as {@link fast} starts it; a refusal is the
     * same 429. Returns the request's cancel: a caller that hangs up while
     * the store has not answered is logged as 499 and nothing is called
     * (what the store took stays taken, as on the general path).
     */
    const fastLater = (
      request: Incoming,
      body: string,
      caller: Relay.Caller,
      reply: (answer: Reply | Effect.Effect<Reply>) => void,
      who: Caller,
      chat: OpenAI.ChatCompletionRequest,
      controls: Controls.Controls | undefined,
      later: NonNullable<ReturnType<Gateway["admitLater"]>>
    ): Relay.Cancel => {
      const log = openFastLog(request, who, chat)
      let cancel: Relay.Cancel | undefined
      let gone = false
      later((admitted) => {
        if (gone) return
        try {
          if (Effect.isEffect(admitted)) {
            // The store answered from its fallback: the rest as the general path runs it.
            return reply(Effect.matchEffect(admitted, {
              onFailure: (e) => replied(refusal(e), log, true, false),
              onSuccess: (a) => relayedFast(log, a, relay.chat(chat, optionsOf(request, body, who, controls)))
            }))
          }
          if ("_tag" in admitted) return reply(replied(refusal(admitted), log, true, false))
          const call = fastCall(request, body, caller, reply, who, chat, controls, log, admitted)
          if (Effect.isEffect(call)) reply(call)
          else cancel = call
        } catch (defect) {
          // A defect of this plain code: a 500 and its log, as a request fiber's defect is.
          reply(defectReply(log, defect))
        }
      })
      return (then) => {
        if (cancel !== undefined) return cancel(then)
        gone = true
        writeLog(log, 499)
        then(Effect.void)
      }
    }

    /** The record of a request {@link fast} has taken, on the request. */
    const openFastLog = (request: Incoming, who: Caller, chat: OpenAI.ChatCompletionRequest): Log => {
      const log = openLog(request, "/v1/chat/completions")
      request.state = log
      log.key = who.name
      log.model = chat.model
      return log
    }

    /** A fast-path request's call as the general path answers it (an effect, for a fiber). */
    const relayedFast = (log: Log, admitted: Admitted, call: Effect.Effect<Relay.Result, Relay.RelayError>): Effect.Effect<Reply> =>
      Effect.flatMap(relayedJson(log, admitted, call), (response) => replied(response, log, true, false))

    const optionsOf = (request: Incoming, body: string, who: Caller, controls: Controls.Controls | undefined): Relay.CallOptions =>
      controls === undefined
        ? { key: who.name, rawBody: body, cache: cacheControl(request) }
        : { key: who.name, rawBody: body, cache: cacheControl(request), ...controls }

    /** {@link fast}'s call, once the request is admitted: the relay's hot path, or the effect it hands over. */
    const fastCall = (
      request: Incoming,
      body: string,
      caller: Relay.Caller,
      reply: (answer: Reply | Effect.Effect<Reply>) => void,
      who: Caller,
      chat: OpenAI.ChatCompletionRequest,
      controls: Controls.Controls | undefined,
      log: Log,
      admitted: Admitted
    ): Effect.Effect<Reply> | Relay.Cancel => {
      const options = optionsOf(request, body, who, controls)
      const call = relay.unsafeChat(caller, chat, options, (result) => {
        const exit = Exit.isExit(result) ? result as Exit.Exit<Relay.Result, Relay.RelayError> : undefined
        if (exit !== undefined && exit._tag === "Success") {
          const charged = gateway.settleNow(admitted, exit.value.metadata)
          if (charged !== undefined) {
            const response = answer(log, exit.value, charged)
            response.headers["x-request-id"] = log.requestId
            // The reply first, then the line and the metrics: formatting the line must not delay
            // the answer (the line goes out at the turn's end anyway). Its latency counts the write.
            try {
              return reply(response)
            } finally {
              writeLog(log, response.status)
            }
          }
        }
        reply(relayedFast(log, admitted, result))
      })
      if (Effect.isEffect(call)) return relayedFast(log, admitted, call)
      return (then) =>
        call((left) => {
          writeLog(log, 499)
          then(left)
        })
    }

    const fastAccepts = (headers: Readonly<Record<string, string | undefined>>): boolean =>
      fastOn && !draining() && !(gateway.identify(headers["authorization"]) instanceof Unauthorized)

    return Object.assign(handle, { hungUp, fast, fastAccepts }) satisfies Handler
  })

const PROBE_METHODS = ["GET", "HEAD"] as const
const REQUEST_ID = /^[\w.:-]{1,128}$/
const READY_BODY = JSON.stringify({ status: "ready" })

/** The routes as span names and `http.route`; other paths are named by their method alone. */
const routeOf = (path: string): string | undefined =>
  path === "/v1/chat/completions" || path === "/v1/embeddings" || path === "/v1/models"
    ? path
    : path.startsWith("/v1/models/")
    ? "/v1/models/{model}"
    : undefined

/** A request's span (kind `server`), under the caller's span when it sent one. */
const requestSpan = (tracing: RequestTracing, request: Incoming, path: string, requestId: string): Effect.Effect<Tracer.Span> => {
  const route = routeOf(path)
  const parent = tracing.parentOf(request.headers)
  const attributes: Record<string, unknown> = {
    "http.request.method": request.method,
    "url.path": path.length > 200 ? path.slice(0, 200) : path,
    "breakwater.request_id": requestId
  }
  if (route !== undefined) attributes["http.route"] = route
  return Effect.makeSpan(route === undefined ? request.method : `${request.method} ${route}`, {
    kind: "server",
    attributes,
    captureStackTrace: false,
    ...(parent === undefined ? { root: true } : { parent })
  })
}

/** The request log line's fields on its span, as OpenTelemetry names them where a convention exists. */
const SPAN_NAMES: Record<string, string> = {
  key: "breakwater.key",
  model: "gen_ai.request.model",
  upstream: "breakwater.upstream",
  attempts: "breakwater.attempts",
  cache: "breakwater.cache",
  costUsd: "breakwater.cost_usd",
  costBasis: "breakwater.cost_basis",
  failures: "breakwater.failures",
  outcome: "breakwater.stream.outcome",
  error: "breakwater.stream.error",
  usageEstimated: "breakwater.usage_estimated"
}

/**
 * Ends a request's span with its log line's fields. A 5xx, or a stream that
 * failed, is an error; a 4xx is the caller's and is not (OpenTelemetry's
 * convention for server spans).
 */
const endRequestSpan = (
  span: Tracer.Span,
  fields: Record<string, unknown>,
  status: number,
  streamFailed: boolean,
  now: bigint
): void => {
  span.attribute("http.response.status_code", status)
  for (const key in SPAN_NAMES) {
    const v = fields[key]
    // A list (why upstreams failed) as one string: the OpenTelemetry bridge would write it as JSON.
    if (v !== undefined && v !== null) span.attribute(SPAN_NAMES[key]!, Array.isArray(v) ? v.join("; ") : v)
  }
  span.end(
    now,
    status >= 500 ? Exit.fail(`HTTP ${status}`) : streamFailed ? Exit.fail(`stream failed: ${String(fields["error"])}`) : Exit.void
  )
}

const NO_TAGS: ReadonlyArray<never> = []

const requestsBy = taggedBy(requestsCounter, ["upstream", "model", "key", "status"])
/** Requests a fallback model answered: the asked `model`, the `fallback` that answered. */
const fallbacksCounter = Metric.counter("breakwater_fallbacks_total", {
  description: "Requests answered by a fallback model, by asked model and answering model",
  incremental: true
})
const fallbacksBy = taggedBy(fallbacksCounter, ["model", "fallback", "status"])

/** Prompt tokens of an embeddings input, estimated as the chat estimate does (4 characters a token). */
const embeddingTokens = (input: OpenAI.EmbeddingsRequest["input"]): number => {
  if (typeof input === "string") return Math.ceil(input.length / 4)
  let tokens = 0
  for (const x of input as ReadonlyArray<unknown>) {
    tokens += typeof x === "string" ? Math.ceil(x.length / 4) : Array.isArray(x) ? x.length : 1
  }
  return tokens
}

const constantTimeEqual = (a: string, b: string): boolean =>
  timingSafeEqual(createHash("sha256").update(a).digest(), createHash("sha256").update(b).digest())
