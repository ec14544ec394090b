/**
 * The relay: one OpenAI-compatible request in, one answer out, from whichever
 * upstream can give it. Per attempt on one upstream:
 *
 *   limits -> Bulkhead -> CircuitBreaker -> Timeout -> HTTP -> validate -> record
 *
 * A retryable failure (429, quota, 5xx, connection, timeout, invalid body)
 * moves the request to the next upstream the router offers, up to
 * `maxAttempts` calls in all and within the request's deadline; the caller's
 * own bad request comes straight back. An upstream refusing its own key
 * (401/403) or not having the model (404 `model_not_found`) fails over too:
 * neither is the caller's doing. A 429's `Retry-After`, an exhausted quota
 * and a refused key put the upstream in a cooldown shared by all requests. When no
 * upstream is available, the relay waits for the first to come back if that
 * is within `maxRetryAfter`, and otherwise says so at once.
 *
 * Non-streaming chat completions go through the response cache, with
 * single-flight. Streams may fail over until their first event reaches the
 * caller; after that an upstream failure ends the stream with an error event,
 * never with a silent, truncated success.
 *
 * @since 0.1.0
 */
import * as Sse from "@effect/experimental/Sse"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as DefaultServices from "effect/DefaultServices"
import * as FiberId from "effect/FiberId"
import * as FiberRef from "effect/FiberRef"
import * as FiberRefs from "effect/FiberRefs"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Runtime from "effect/Runtime"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as Tracer from "effect/Tracer"
import type * as Bulkhead from "./Bulkhead.js"
import type * as CircuitBreaker from "./CircuitBreaker.js"
import * as Cooldown from "./Cooldown.js"
import * as Hedge from "./Hedge.js"
import { unsafeTimer } from "./internal/race.js"
import { taggedBy } from "./internal/taggedMetrics.js"
import * as OpenAI from "./OpenAI.js"
import * as Pacing from "./Pacing.js"
import * as Pricing from "./Pricing.js"
import type * as RateLimiter from "./RateLimiter.js"
import * as ResponseCache from "./ResponseCache.js"
import * as Retry from "./Retry.js"
import * as RetryBudget from "./RetryBudget.js"
import * as Router from "./Router.js"
import * as Timeout from "./Timeout.js"
import * as Upstream from "./Upstream.js"
import { type Reply, UpstreamClient } from "./UpstreamClient.js"
import {
  InvalidResponse,
  isAuthError,
  isCallerError,
  QuotaExhausted,
  UpstreamAuthFailed,
  type UpstreamError,
  UpstreamModelNotFound,
  UpstreamRateLimited,
  UpstreamRejected,
  UpstreamServerError,
  UpstreamTimeout,
  type UpstreamUnreachable,
  UNTRANSLATABLE_HEADER
} from "./UpstreamError.js"

// ---------------------------------------------------------------------------
// Results and errors

export interface Metadata {
  /** The upstream that answered (for a cache hit: the one that answered first). */
  readonly upstream: string
  /**
   * The model that answered, as the caller or `fallbacks` name it: the asked
   * model, unless a fallback model answered (see {@link Options.fallbacks}).
   */
  readonly model: string
  /** Upstream calls made for this request (0 for a cache hit). */
  readonly attempts: number
  readonly latencyMs: number
  readonly cache: ResponseCache.Status
  readonly usage: OpenAI.Usage | undefined
  readonly costUsd: number | undefined
  /**
   * Whether `usage` (and so `costUsd`) is the relay's own estimate because the
   * upstream reported none: the prompt's characters and the streamed text's,
   * about four a token.
   */
  readonly usageEstimated: boolean
  /** What went wrong on the way, one line per failed attempt. */
  readonly failures: ReadonlyArray<string>
  /** For a stream, how it ended (see {@link StreamOutcome}); absent for other results. */
  readonly streamOutcome?: StreamOutcome | undefined
  /** For a failed stream: what ended it, e.g. "no data for 1m" or "connection failed (ECONNRESET)". */
  readonly streamError?: string | undefined
  /** Set when the request was hedged (`Options.hedge`): where the hedge went and how it fared. */
  readonly hedge?: Hedge.Report | undefined
}

/**
 * How a stream ended: `completed` (the upstream's `[DONE]` was relayed),
 * `failed` (the upstream failed after the first event, and an error event
 * ended the stream; a failure of that upstream), or `abandoned` (the caller
 * stopped reading first; says nothing about the upstream).
 */
export type StreamOutcome = "completed" | "failed" | "abandoned"

export interface Result {
  /** The upstream's JSON body, as it came. */
  readonly body: string
  readonly metadata: Metadata
}

export interface StreamResult {
  /** Server-sent events, each a complete `data: ...\n\n` block. */
  readonly events: Stream.Stream<string>
  /** The upstream that is streaming and the attempts it took. */
  readonly upstream: string
  /** The model that is streaming: the asked one, or the fallback that took over. */
  readonly model: string
  readonly attempts: number
  /**
   * The final metadata (outcome, usage, cost), once `events` has ended. The
   * stream's outcome is recorded (breaker, upstream stats, metrics, cost)
   * when `events` ends, whether or not this is run. Run before `events` has
   * ended (or if it is never run), it releases the stream (its connection
   * and bulkhead slot) as abandoned.
   */
  readonly done: Effect.Effect<Metadata>
}

/** No upstream serves the model. */
export class UnknownModel extends Data.TaggedError("UnknownModel")<{ readonly model: string }> {
  override get message(): string {
    return `The model '${this.model}' does not exist or is not served by any upstream.`
  }
}

export interface Failure {
  readonly upstream: string
  readonly reason: string
  /**
   * Set when the upstream refused its key (now, or lately: its cooldown),
   * lacks the model, or cannot take a field of the request (`unsupported`);
   * `retry-budget`: it was not called because the retry budget was spent.
   */
  readonly kind?: "auth-failed" | "model-not-found" | "unsupported" | "retry-budget"
}

/** Every upstream that serves the model is unavailable right now (open, cooling down, full). */
export class NoUpstreamAvailable extends Data.TaggedError("NoUpstreamAvailable")<{
  readonly model: string
  /** Upstream calls made (0 unless calls failed before all were left out). */
  readonly attempts: number
  readonly failures: ReadonlyArray<Failure>
  /** When the first of them is expected back, if known. */
  readonly retryAfter: Duration.Duration | undefined
  /** The last upstream considered, for `x-breakwater-upstream`. */
  readonly upstream?: string | undefined
}> {
  override get message(): string {
    return `No upstream available for '${this.model}': ${describe(this.failures)}`
  }
}

/** Upstreams were tried and all failed. */
export class AllUpstreamsFailed extends Data.TaggedError("AllUpstreamsFailed")<{
  readonly model: string
  /** Upstream calls made. */
  readonly attempts: number
  readonly failures: ReadonlyArray<Failure>
  /** The last upstream called, for `x-breakwater-upstream`. */
  readonly upstream?: string | undefined
}> {
  override get message(): string {
    return `All upstreams failed for '${this.model}': ${describe(this.failures)}`
  }
}

/**
 * Every upstream that could serve the model refused the API key the gateway
 * holds for it (401/403), now or lately (it is in an `auth-failed`
 * cooldown). The caller can do nothing about it; the operator must.
 */
export class UpstreamKeysRejected extends Data.TaggedError("UpstreamKeysRejected")<{
  readonly model: string
  /** Upstream calls made. */
  readonly attempts: number
  /** The upstreams that refused their keys, in the order they were met. */
  readonly upstreams: ReadonlyArray<string>
  readonly failures: ReadonlyArray<Failure>
}> {
  override get message(): string {
    const names = this.upstreams.map((u) => `'${u}'`)
    return names.length === 1
      ? `Upstream ${names[0]} rejected the API key the gateway holds for it, and no other upstream can serve ` +
        `'${this.model}'; the gateway's operator must replace that key.`
      : `Upstreams ${names.slice(0, -1).join(", ")} and ${names[names.length - 1]} rejected the API keys the gateway ` +
        `holds for them, and no other upstream can serve '${this.model}'; the gateway's operator must replace those keys.`
  }
}

/** The request's deadline passed while `upstream` was being called. */
export class DeadlineExceededOn extends Timeout.DeadlineExceeded {
  constructor(budget: Duration.Duration, readonly upstream: string, attempts?: number) {
    super({ budget, attempts })
  }
}

/** Connection failures that say nothing listens there (or no such host): the upstream is taken out at once. */
const REFUSED = new Set(["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "ENETUNREACH", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT"])
const refused = (reason: string): boolean => REFUSED.has(reason)

/** Why a request did not call an upstream whose rate-limit window is spent (see `Pacing`). */
const PACED = "rate-limit window spent"

/** A bound on a request's waits in pacing queues (each is bounded in time too). */
const MAX_PACED_WAITS = 100

const describe = (failures: ReadonlyArray<Failure>) =>
  failures.length === 0 ? "none tried" : failures.map((f) => `${f.upstream}: ${f.reason}`).join("; ")

export type RelayError =
  | UnknownModel
  | NoUpstreamAvailable
  | AllUpstreamsFailed
  | UpstreamKeysRejected
  | UpstreamRejected
  | Timeout.DeadlineExceeded

/**
 * The upstream a failed request ended on, for `x-breakwater-upstream`: the
 * one whose error is relayed, the last one called (or, when none could be
 * called, the last one considered), the one being called when the deadline
 * passed. Undefined when no upstream was involved (an unknown model).
 */
export const upstreamOf = (error: RelayError): string | undefined => {
  switch (error._tag) {
    case "UnknownModel":
      return undefined
    case "UpstreamRejected":
      return error.upstream
    case "UpstreamKeysRejected":
      return error.upstreams[error.upstreams.length - 1]
    case "AllUpstreamsFailed":
    case "NoUpstreamAvailable":
      return error.upstream ?? error.failures[error.failures.length - 1]?.upstream
    case "DeadlineExceeded":
      return error instanceof DeadlineExceededOn ? error.upstream : undefined
  }
}

// ---------------------------------------------------------------------------
// Service

export interface CallOptions {
  /** The caller's name (a gateway key's name) for metrics and cost totals. */
  readonly key?: string | undefined
  /** The caller's cache directives (HTTP `cache-control`). */
  readonly cache?: ResponseCache.Control | undefined
  /**
   * The request body exactly as received. When no alias changes the model,
   * these bytes are forwarded as they are, without serialising again.
   */
  readonly rawBody?: string | Uint8Array | undefined
  /**
   * Per-request narrowing of the relay's policy (the server's
   * `x-breakwater-*` headers). Each only narrows: `fallbacks` keeps only
   * models of the configured chain (`[]`: none), `timeout` and `maxAttempts`
   * are capped by the relay's own, `upstream` pins the request to that
   * upstream (for the asked model and any fallback it also serves).
   */
  readonly fallbacks?: ReadonlyArray<string> | undefined
  readonly timeout?: Duration.Duration | undefined
  readonly maxAttempts?: number | undefined
  readonly upstream?: string | undefined
  /**
   * `false`: never hedge this request (the caller's `x-breakwater-hedge:
   * off`, for a request that must not run twice). Default: hedged when the
   * relay hedges (`Options.hedge`).
   */
  readonly hedge?: boolean | undefined
}

export interface Relay {
  readonly chat: (request: OpenAI.ChatCompletionRequest, options?: CallOptions) => Effect.Effect<Result, RelayError>
  /**
   * {@link chat} without a fiber, for a server's fast path: when the request
   * takes the hot path's first attempt, the call starts here, `done` hears
   * its outcome once (an `Exit` for a plain success, else an effect to run:
   * the general path's failover, or what a success still has to record), and
   * the call's cancel is returned (its callback gets the effect that gives
   * the slot back). Otherwise (cached, traced, hedged, a store not in this
   * process...) returns the effect `chat` would run. `caller` stands for the
   * fiber the request would run in ({@link callerOf}).
   */
  readonly unsafeChat: (
    caller: Caller,
    request: OpenAI.ChatCompletionRequest,
    options: CallOptions | undefined,
    done: (result: Effect.Effect<Result, RelayError>) => void
  ) => Effect.Effect<Result, RelayError> | Cancel
  readonly chatStream: (
    request: OpenAI.ChatCompletionRequest,
    options?: CallOptions
  ) => Effect.Effect<StreamResult, RelayError>
  readonly embeddings: (request: OpenAI.EmbeddingsRequest, options?: CallOptions) => Effect.Effect<Result, RelayError>
  readonly upstreams: ReadonlyArray<Upstream.Upstream>
  /** Client-visible model names (aliases included, of `"*"` upstreams too); `"*"` when an upstream serves any. */
  readonly models: ReadonlyArray<string>
  /** Whether at least one upstream could serve now. */
  readonly ready: Effect.Effect<boolean>
  /** The fallback models of `model`, in the order they are tried (followed on, see {@link Options.fallbacks}). */
  readonly fallbacksOf: (model: string) => ReadonlyArray<string>
  /** The relay's own `maxAttempts` and `requestTimeout`: what per-request options may narrow. */
  readonly maxAttempts: number
  readonly requestTimeout: Duration.Duration
  /**
   * The budget every upstream call beyond a request's first spends from
   * (see {@link Options.retryBudget}). Other features that add calls
   * (hedging) spend from it too: `relay.retryBudget.trySpend()`.
   */
  readonly retryBudget: RetryBudget.RetryBudget
  /**
   * Hedges this relay sent since it was made, by outcome: its own, where
   * `breakwater_hedged_total` adds up every relay in the process (several
   * simulations at once, a reload's old and new relay).
   */
  readonly hedges: () => Hedge.Tally
}

export const Relay = Context.GenericTag<Relay>("@breakwater/core/Relay")

/** A started call's cancel ({@link Relay.unsafeChat}): `then` runs once it is torn down, with what is left to run. */
export type Cancel = (then: (handoff: Effect.Effect<void>) => void) => void

/** What the hot path reads of the fiber a request runs in, taken from a runtime instead ({@link callerOf}). */
export interface Caller {
  readonly [CallerTypeId]: Fiber.RuntimeFiber<unknown, unknown>
}
const CallerTypeId: unique symbol = Symbol.for("@breakwater/core/Relay/Caller")

/**
 * A {@link Caller} for requests run outside a fiber under `runtime`: its
 * services (Clock, Random), fiber refs (metric labels, no deadline) and
 * scheduler, as a fiber forked from it would see them. Build it once per
 * runtime.
 */
export const callerOf = (runtime: Runtime.Runtime<never>): Caller => {
  // The parts of a fiber the hot path and its call read; nothing else is.
  const fiberLike = {
    get currentDefaultServices() {
      return FiberRefs.getOrDefault(runtime.fiberRefs, DefaultServices.currentServices)
    },
    get currentScheduler() {
      return FiberRefs.getOrDefault(runtime.fiberRefs, FiberRef.currentScheduler)
    },
    get currentContext() {
      return runtime.context
    },
    getFiberRef: <A>(ref: FiberRef.FiberRef<A>): A => FiberRefs.getOrDefault(runtime.fiberRefs, ref),
    getFiberRefs: () => runtime.fiberRefs,
    id: () => FiberId.none
  }
  return { [CallerTypeId]: fiberLike as unknown as Fiber.RuntimeFiber<unknown, unknown> }
}

export interface Options {
  readonly upstreams: ReadonlyArray<Upstream.Config>
  /** Upstream calls per request, failovers included. Default 3. */
  readonly maxAttempts?: number
  /**
   * The retry budget: every upstream call beyond a request's first (a retry,
   * a failover, a new round) spends from it, and when it is spent the request
   * fails with what it has (as when `maxAttempts` runs out), its failures
   * saying `retry budget exhausted`. Default on: 20% of primary calls over
   * 10 s, at least 3 a second (`RetryBudget.defaults`). Options build this
   * relay's own; a `RetryBudget` is shared (with another relay, a reload's
   * next); `false` turns it off.
   */
  readonly retryBudget?: RetryBudget.Options | RetryBudget.RetryBudget | false | undefined
  /** The whole request's deadline. Default 60 s. */
  readonly requestTimeout?: Duration.DurationInput
  /**
   * Model fallbacks: `{ "gpt-4.1": ["claude-sonnet-4.5", "gemini-2.5-flash"] }`.
   * When every upstream serving the asked model has failed or is
   * unavailable, the request goes on to these models, in order, within the
   * same `maxAttempts` and deadline (a round walks the asked model, then each
   * fallback; the next round starts over). A fallback's own fallbacks come
   * after the list (followed on breadth first, each model once). The answer
   * names its model (`Metadata.model`) and is priced by it. Default none.
   */
  readonly fallbacks?: Readonly<Record<string, ReadonlyArray<string>>> | undefined
  readonly router?: Router.Options
  /** Relay-wide breaker settings; upstreams may override them. */
  readonly breaker?: Partial<Omit<CircuitBreaker.Options, "name" | "isFailure">>
  /**
   * `maxRetries`: extra rounds over the upstreams after all have failed, with
   * backoff (`baseDelay`..`maxDelay`, full jitter). `maxRetryAfter`: the
   * longest wait for an upstream to come back when none is available.
   */
  readonly retry?: Pick<Retry.Options, "maxRetries" | "baseDelay" | "maxDelay" | "maxRetryAfter">
  /** Cooldown after a 429 without `Retry-After`. Default 1 s. */
  readonly rateLimitCooldown?: Duration.DurationInput
  /** Cooldown after quota exhaustion. Default 1 hour. */
  readonly quotaCooldown?: Duration.DurationInput
  /**
   * Cooldown after an upstream refused its own API key (401/403). Default 5
   * minutes; a health probe that succeeds with that key ends it early
   * (`Health`), so a replaced key is back within a probe interval.
   */
  readonly authFailedCooldown?: Duration.DurationInput
  /** Steer away when `x-ratelimit-remaining-*` is at or below this. Default 0. */
  readonly headroomWatermark?: number
  /**
   * Cooldown of an upstream that refused the connection (or whose name did
   * not resolve): out of rotation at once, for this long, so that neither
   * the same request nor the next ones try it again meanwhile. Default 5 s.
   */
  readonly unreachableCooldown?: Duration.DurationInput
  /**
   * Pacing (see `Pacing`): when the only upstreams left are rate limited
   * (their window spent, or cooling down after a 429) and the first comes
   * back within `retry.maxRetryAfter` and the request's deadline, the
   * request waits in that upstream's queue (FIFO, `queue` long, default
   * 100) and is sent when its window allows, instead of failing. Waiting
   * costs no attempt.
   */
  readonly pacing?: Pacing.Options | undefined
  /**
   * Which non-streaming chat requests are cached: `deterministic` (the
   * default: `temperature: 0`, or a `seed` given; a sampled answer is not
   * replayed), `all` (every exact match), or `none`.
   */
  readonly cacheMode?: "all" | "deterministic" | "none"
  /**
   * Who shares cache entries: `key` (the default: entries are scoped per
   * caller, `CallOptions.key`, so one tenant never receives another's
   * answer) or `shared` (one cache for all callers). Either way a request's
   * `user` is part of its key.
   */
  readonly cacheScope?: "key" | "shared"
  /**
   * A stream that has sent its first event and then gets no data from its
   * upstream for this long is ended with an error event, and counts as a
   * failure of that upstream. Upstreams may override it. Default 60 s.
   */
  readonly streamIdleTimeout?: Duration.DurationInput
  /** Spans for upstream attempts; off unless set (see {@link Tracing}). */
  readonly tracing?: Tracing | undefined
  /**
   * Hedging, off unless set (see `Hedge`): when a request's first upstream
   * call has not answered (a stream: sent no event) after `after`, the next
   * upstream whose breaker is closed and that is not cooling down is called
   * as well; the first answer wins, the other call is aborted. Capped by
   * `maxExtra`. A relay that hedges takes the general path for every request.
   */
  readonly hedge?: Hedge.Options | undefined
}

/**
 * Tracing of upstream attempts, off unless set (even `{}` turns it on). Each
 * upstream call is then a span of kind `client`, a child of the caller's
 * current span, made through Effect's `Tracer` (whichever the runtime has:
 * `@effect/opentelemetry`'s exports them), and the call carries it upstream in
 * the headers that {@link Tracing.headers} gives. Off, the relay makes no span
 * and reads no span: nothing is added to a request's path.
 *
 * An attempt's span says which upstream and model, the HTTP status, why it
 * failed (`error.type`, `breakwater.failure.reason`), its tokens and cost,
 * and as events the cooldown its failure starts and a change of the
 * upstream's breaker state. A stream's attempt span ends with the stream.
 * The current span gets an event for each upstream left out by our own
 * limits (`upstream skipped`) and for each wait (`waiting`). No span holds
 * a prompt, a completion, a key or a header.
 */
export interface Tracing {
  /**
   * The headers that name an attempt's span to its upstream. Default: a W3C
   * `traceparent` made from the span's ids.
   */
  readonly headers?: ((span: Tracer.Span) => Readonly<Record<string, string>>) | undefined
}

/** A W3C `traceparent` naming `span`. */
export const traceparentOf = (span: Tracer.Span): string => `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

const traceparentHeader = (span: Tracer.Span): Readonly<Record<string, string>> => ({ traceparent: traceparentOf(span) })

const requestsCounter = Metric.counter("breakwater_upstream_requests_total", {
  description: "Upstream calls by upstream and outcome",
  incremental: true
})
const latencyHistogram = Metric.histogram(
  "breakwater_upstream_latency_ms",
  MetricBoundaries.exponential({ start: 5, factor: 2, count: 14 }),
  "Latency of upstream calls, ms"
)

const requestsBy = taggedBy(requestsCounter, ["upstream", "outcome"])
const latencyBy = taggedBy(latencyHistogram, ["upstream"])

const CHAT = "/chat/completions"
const EMBEDDINGS = "/embeddings"

/** What an attempt on one upstream produced. */
type Attempted<A> =
  | { readonly _tag: "Ok"; readonly value: A }
  | { readonly _tag: "Failed"; readonly error: UpstreamError }
  /** Not called: our own limiter, bulkhead or breaker refused. Costs no attempt. */
  | { readonly _tag: "Skipped"; readonly reason: string }

type Classified =
  | { readonly _tag: "Ok"; readonly body: string; readonly usage: OpenAI.Usage | undefined }

/** Aborts a call; `then` runs once it is torn down. */
type Abort = (then: () => void) => void

/** The hot path's call, decided and ready: started with where its outcome goes, it returns its cancel. */
type Start = (resume: (result: Effect.Effect<Result, RelayError>) => void) => Cancel

/** What {@link Relay.unsafeChat}'s `json` returns once the call started (never run: the caller has the cancel). */
const STARTED: Effect.Effect<never> = Effect.dieMessage("Relay: a started direct call's placeholder was run")

/**
 * The time one call may take: the upstream's `timeout`, or what the
 * request's deadline leaves when that is sooner (`budget` is then the
 * deadline's). `millis <= 0`: the deadline has passed.
 */
interface Limit {
  readonly millis: number
  readonly budget: Duration.Duration | undefined
}

const limitOf = (
  u: Upstream.Upstream,
  deadline: readonly [at: number, budget: Duration.Duration] | undefined,
  now: number
): Limit => {
  const t = Duration.toMillis(u.timeout)
  if (deadline !== undefined) {
    const left = deadline[0] - now
    if (left < t) return { millis: left, budget: deadline[1] }
  }
  return { millis: t, budget: undefined }
}

/** What one request may use: models (the asked one first, then its fallbacks), attempts, deadline, pinned upstream. */
interface Policy {
  readonly models: ReadonlyArray<string>
  readonly maxAttempts: number
  readonly budget: Duration.Duration
  readonly pin: string | undefined
}

/** A cooldown that an attempt's outcome calls for. */
interface CooldownStarted {
  readonly reason: Cooldown.Reason
  readonly duration: Duration.DurationInput
}

/** What a traced attempt learns on the way, for its span (see {@link Tracing}). */
interface AttemptTrace {
  /** Set when the upstream call starts. */
  span: Tracer.Span | undefined
  /** The model as sent to the upstream. */
  model: string | undefined
  /** The HTTP status of the answer, once it came. */
  status: number | undefined
  usage: OpenAI.Usage | undefined
  /** The breaker's state when the call was admitted. */
  breaker: CircuitBreaker.State | undefined
  cooldown: CooldownStarted | undefined
}

const newTrace = (): AttemptTrace => ({
  span: undefined,
  model: undefined,
  status: undefined,
  usage: undefined,
  breaker: undefined,
  cooldown: undefined
})

/** Builds the relay and its upstreams (`Upstream.make`); the scope owns the upstreams' breakers. */
export const make = (
  options: Options
): Effect.Effect<
  Relay,
  never,
  | Scope.Scope
  | RateLimiter.RateLimiterStore
  | Cooldown.CooldownStore
  | UpstreamClient
  | Pricing.Pricing
  | ResponseCache.ResponseCache
> =>
  Effect.flatMap(
    Effect.forEach(options.upstreams, (c) => Upstream.make(c, { breaker: options.breaker })),
    (upstreams) =>
      Effect.zipLeft(
        makeWith(upstreams, options),
        // A cleared cooldown (a reset, here or on another replica) ends this relay's pacer holds too.
        Effect.flatMap(Cooldown.CooldownStore, (store) => Pacing.followClears(store, upstreams))
      )
  )

/**
 * A relay over upstreams built elsewhere (`Upstream.make`), in that order;
 * `options.upstreams` and `options.breaker` (the upstreams' own business)
 * are not read. The relay owns nothing: the upstreams belong to whoever
 * built them. This is how a server swaps its config without losing what its
 * upstreams know: the next relay is built over the same upstream objects,
 * or over ones carried on from them (`Upstream.make`'s `previous`), while
 * requests in flight finish on the relay they started on.
 */
export const makeWith = (
  upstreams: ReadonlyArray<Upstream.Upstream>,
  options: Omit<Options, "upstreams"> & { readonly upstreams?: ReadonlyArray<Upstream.Config> | undefined }
): Effect.Effect<
  Relay,
  never,
  Cooldown.CooldownStore | UpstreamClient | Pricing.Pricing | ResponseCache.ResponseCache
> =>
  Effect.gen(function*() {
    const client = yield* UpstreamClient
    const cooldowns = yield* Cooldown.CooldownStore
    const pricing = yield* Pricing.Pricing
    const cache = yield* ResponseCache.ResponseCache
    const router = Router.make(options.router)

    const maxAttempts = options.maxAttempts ?? 3
    const retryBudget: RetryBudget.RetryBudget = options.retryBudget === false
      ? RetryBudget.unlimited
      : options.retryBudget !== undefined && "trySpend" in options.retryBudget
      ? options.retryBudget
      : yield* RetryBudget.make(options.retryBudget ?? {})
    const budget = Duration.decode(options.requestTimeout ?? Duration.seconds(60))
    const maxRounds = 1 + (options.retry?.maxRetries ?? 2)
    const baseDelayMillis = Duration.toMillis(options.retry?.baseDelay ?? Duration.millis(200))
    const maxDelayMillis = Duration.toMillis(options.retry?.maxDelay ?? Duration.seconds(5))
    const maxRetryAfterMillis = Duration.toMillis(options.retry?.maxRetryAfter ?? Duration.seconds(10))
    const rateLimitCooldown = Duration.decode(options.rateLimitCooldown ?? Duration.seconds(1))
    const quotaCooldown = Duration.decode(options.quotaCooldown ?? Duration.hours(1))
    const authFailedCooldown = Duration.decode(options.authFailedCooldown ?? Duration.minutes(5))
    const watermark = options.headroomWatermark ?? 0
    const unreachableCooldown = Duration.decode(options.unreachableCooldown ?? Duration.seconds(5))
    const pacingQueue = Math.max(0, Math.floor(options.pacing?.queue ?? Pacing.defaultQueue))
    const cacheMode = options.cacheMode ?? "deterministic"
    const sharedCache = options.cacheScope === "shared"
    const streamIdleTimeout = Duration.decode(options.streamIdleTimeout ?? Duration.seconds(60))
    const hedging = options.hedge === undefined ? undefined : Hedge.make(options.hedge)
    const hedgeTally = { won: 0, lost: 0, failed: 0 }
    // Latencies are kept only where a percentile hedge reads them.
    if (hedging?.readsLatencies === true) for (const u of upstreams) Upstream.keepLatencies(u)

    // Which upstreams serve a model, computed once per model name.
    const servingCache = new Map<string, ReadonlyArray<Upstream.Upstream>>()
    const serving = (model: string): ReadonlyArray<Upstream.Upstream> => {
      let found = servingCache.get(model)
      if (found === undefined) {
        found = upstreams.filter((u) => u.modelFor(model) !== undefined)
        if (servingCache.size < 10_000) servingCache.set(model, found)
      }
      return found
    }

    // Fallback chains, followed on breadth first, each model once, computed once per model name.
    const fallbackTable = options.fallbacks ?? {}
    const chains = new Map<string, ReadonlyArray<string>>()
    const fallbacksOf = (model: string): ReadonlyArray<string> => {
      let chain = chains.get(model)
      if (chain === undefined) {
        const seen = new Set([model])
        const out: Array<string> = []
        for (let i = -1; i < out.length; i++) {
          const from = i < 0 ? model : out[i]!
          const next = Object.prototype.hasOwnProperty.call(fallbackTable, from) ? fallbackTable[from]! : []
          for (const m of next) {
            if (!seen.has(m)) {
              seen.add(m)
              out.push(m)
            }
          }
        }
        chain = out
        if (chains.size < 10_000) chains.set(model, chain)
      }
      return chain
    }

    /**
     * The request's policy: the models to walk (the asked one first), its
     * attempts and deadline, its pinned upstream; per-request options only
     * narrow the relay's own.
     */
    const policyOf = (model: string, options: CallOptions | undefined): Policy => {
      const configured = fallbacksOf(model)
      if (options === undefined || (options.fallbacks === undefined && options.timeout === undefined &&
        options.maxAttempts === undefined && options.upstream === undefined)) {
        return configured.length === 0 ? { models: [model], maxAttempts, budget, pin: undefined } : {
          models: [model, ...configured],
          maxAttempts,
          budget,
          pin: undefined
        }
      }
      const asked = options.fallbacks === undefined ? configured : options.fallbacks.filter((m) => configured.includes(m))
      return {
        models: [model, ...asked],
        maxAttempts: options.maxAttempts === undefined ? maxAttempts : Math.max(1, Math.min(maxAttempts, options.maxAttempts)),
        budget: options.timeout === undefined || Duration.greaterThan(options.timeout, budget) ? budget : options.timeout,
        pin: options.upstream
      }
    }

    /** The upstreams serving `model` that the policy allows (a pin leaves at most one). */
    const servingUnder = (model: string, pin: string | undefined): ReadonlyArray<Upstream.Upstream> => {
      const all = serving(model)
      return pin === undefined ? all : all.filter((u) => u.name === pin)
    }

    // An upstream serving "*" still names its aliases.
    const models = [...new Set(upstreams.flatMap((u) => u.models === "*" ? ["*", ...Object.keys(u.aliases)] : u.models))]

    // ----- one attempt ------------------------------------------------------

    /** The body to send to `u`: the caller's bytes unless an alias renames the model. */
    const bodyFor = (
      u: Upstream.Upstream,
      request: { readonly model: string },
      raw: string | Uint8Array | undefined
    ): string | Uint8Array => {
      const target = u.modelFor(request.model)!
      if (target === request.model && raw !== undefined) return raw
      return JSON.stringify(target === request.model ? request : { ...request, model: target })
    }

    /** Turns an HTTP answer that is not a 200 into the error it means. */
    const statusError = (
      u: Upstream.Upstream,
      status: number,
      headers: Readonly<Record<string, string | undefined>>,
      text: string
    ): Effect.Effect<UpstreamError> => {
      if (status === 429) {
        const quota = OpenAI.quotaInErrorBody(text)
        if (quota !== undefined) return Effect.succeed(new QuotaExhausted({ upstream: u.name, code: quota.code }))
        return Effect.map(Retry.retryAfterFromHeaders(headers), (retryAfter) =>
          new UpstreamRateLimited({ upstream: u.name, retryAfter: Option.getOrUndefined(retryAfter) }))
      }
      if (isAuthError(status)) return Effect.succeed(new UpstreamAuthFailed({ upstream: u.name, status }))
      if (status === 404 && OpenAI.isModelNotFound(text)) {
        return Effect.succeed(
          new UpstreamModelNotFound({ upstream: u.name, status, body: text, contentType: headers["content-type"] })
        )
      }
      if (isCallerError(status)) {
        // A field this upstream's kind cannot take (`ProviderClient` says which): another upstream may.
        const untranslatable = headers[UNTRANSLATABLE_HEADER]
        return Effect.succeed(
          new UpstreamRejected({ upstream: u.name, status, body: text, contentType: headers["content-type"], untranslatable })
        )
      }
      const quota = OpenAI.quotaInErrorBody(text)
      if (quota !== undefined) return Effect.succeed(new QuotaExhausted({ upstream: u.name, code: quota.code }))
      return Effect.succeed(new UpstreamServerError({ upstream: u.name, status }))
    }

    /** After an answer: steer away early if the account is about to run out. */
    const noteHeadroom = (
      u: Upstream.Upstream,
      headers: Readonly<Record<string, string | undefined>>,
      trace?: AttemptTrace
    ) => {
      if (headers["x-ratelimit-remaining-requests"] === undefined && headers["x-ratelimit-remaining-tokens"] === undefined) {
        return Effect.void
      }
      const wait = Cooldown.headroomCooldown(headers, watermark)
      if (trace !== undefined && wait !== undefined) trace.cooldown = { reason: "low-headroom", duration: wait }
      return wait === undefined ? Effect.void : Effect.provideService(
        Cooldown.start(u.name, wait, "low-headroom"),
        Cooldown.CooldownStore,
        cooldowns
      )
    }

    /** The cooldown that a failure calls for, if any. */
    const cooldownFor = (error: UpstreamError): CooldownStarted | undefined => {
      switch (error._tag) {
        case "UpstreamRateLimited":
          return { reason: "rate-limited", duration: error.retryAfter ?? rateLimitCooldown }
        case "QuotaExhausted":
          return { reason: "quota-exhausted", duration: quotaCooldown }
        case "UpstreamAuthFailed":
          return { reason: "auth-failed", duration: authFailedCooldown }
        case "UpstreamUnreachable":
          return refused(error.reason) ? { reason: "unreachable", duration: unreachableCooldown } : undefined
        default:
          return undefined
      }
    }

    const upstreamNamed = new Map(upstreams.map((u) => [u.name, u]))

    /**
     * Starts the cooldown that a failure calls for, and tells the
     * upstream's pacer when it ends (the store's end: a longer one already
     * there, from this replica or another, wins), so that the pacer holds
     * after a 429 exactly as long as the cooldown keeps requests away.
     */
    const coolDown = (error: UpstreamError): Effect.Effect<void> => {
      const cooldown = cooldownFor(error)
      if (cooldown === undefined) return Effect.void
      const u = upstreamNamed.get(error.upstream)
      const started = Effect.provideService(
        Cooldown.start(error.upstream, cooldown.duration, cooldown.reason),
        Cooldown.CooldownStore,
        cooldowns
      )
      const start = u === undefined ? started : Effect.zipRight(
        started,
        Effect.clockWith((clock) => {
          const now = clock.unsafeCurrentTimeMillis()
          return Effect.map(cooldowns.active(now), (active) => {
            Pacing.pacerOf(u).cooled(now, active.get(error.upstream)?.until ?? now + Duration.toMillis(cooldown.duration))
          })
        })
      )
      if (error._tag !== "UpstreamAuthFailed") return start
      // The operator must act: said at ERROR, naming the upstream (never
      // its key), once per incident (not by every request in flight then).
      return Effect.clockWith((clock) =>
        Effect.flatMap(cooldowns.active(clock.unsafeCurrentTimeMillis()), (active) =>
          active.get(error.upstream)?.reason === "auth-failed" ? start : Effect.zipRight(
            start,
            Effect.logError(
              `upstream '${error.upstream}' rejected its API key (${error.status}): out of rotation for ` +
                `${Duration.format(authFailedCooldown)} or until a health probe succeeds with its key; replace its key`
            ).pipe(Effect.annotateLogs({ upstream: error.upstream, status: error.status, cooldown: "auth-failed" }))
          ))
      )
    }

    // ----- tracing (only when options.tracing is set) -------------------------

    const tracing = options.tracing
    const traceHeaders = tracing?.headers ?? traceparentHeader
    /** Where each upstream is, for its attempts' spans (host and port only: a URL may carry a secret). */
    const upstreamHosts = new Map(upstreams.map((u) => {
      let host: { readonly address: string; readonly port: number | undefined } | undefined
      try {
        const url = new URL(u.baseUrl)
        host = { address: url.hostname, port: url.port === "" ? undefined : Number(url.port) }
      } catch {
        host = undefined
      }
      return [u.name, host] as const
    }))

    /** Adds an event to the current span, if there is one. */
    const spanEvent = (name: string, attributes: Record<string, unknown>): Effect.Effect<void> =>
      Effect.clockWith((clock) =>
        Effect.map(Effect.option(Effect.currentSpan), (span) => {
          if (Option.isSome(span)) span.value.event(name, clock.unsafeCurrentTimeNanos(), attributes)
        })
      )

    /** Sleeps `millis`; traced, the current span says why first. */
    const waiting = (millis: number, why: string): Effect.Effect<void> =>
      tracing === undefined
        ? Effect.sleep(Duration.millis(millis))
        : Effect.zipRight(
          spanEvent("waiting", { "breakwater.wait.ms": millis, "breakwater.wait.reason": why }),
          Effect.sleep(Duration.millis(millis))
        )

    /**
     * Starts an attempt's span (when the upstream call starts: an upstream
     * our own limits left out gets none) and runs the call with the headers
     * that carry it upstream.
     */
    const startAttempt = <A, E>(
      u: Upstream.Upstream,
      operation: "chat" | "embeddings",
      model: string,
      number: number,
      trace: AttemptTrace,
      run: (headers: Readonly<Record<string, string>>) => Effect.Effect<A, E>
    ): Effect.Effect<A, E> => {
      const server = upstreamHosts.get(u.name)
      const attributes: Record<string, unknown> = {
        "breakwater.upstream": u.name,
        "breakwater.attempt": number,
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "http.request.method": "POST"
      }
      if (server !== undefined) {
        attributes["server.address"] = server.address
        if (server.port !== undefined) attributes["server.port"] = server.port
      }
      return Effect.flatMap(
        Effect.makeSpan(`upstream ${u.name}`, { kind: "client", attributes, captureStackTrace: false }),
        (span) => {
          trace.span = span
          trace.model = model
          return Effect.flatMap(u.breaker.state, (state) => {
            trace.breaker = state
            return run(traceHeaders(span))
          })
        }
      )
    }

    /** Tokens and cost on a span. */
    const spanUsage = (span: Tracer.Span, model: string | undefined, usage: OpenAI.Usage | undefined, costUsd: number | undefined) => {
      if (usage !== undefined) {
        span.attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        if (usage.completion_tokens !== undefined) span.attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        const cost = costUsd ?? (model === undefined ? undefined : pricing.cost(model, usage))
        if (cost !== undefined) span.attribute("breakwater.cost_usd", cost)
      }
    }

    /**
     * Ends an attempt's span: its status, outcome, failure and the decisions
     * it led to (cooldown, a change of breaker state). `failure` undefined
     * is a success; a string is why the attempt ended otherwise.
     */
    const endAttemptSpan = (
      u: Upstream.Upstream,
      trace: AttemptTrace,
      clock: Clock.Clock,
      outcome: string,
      failure: UpstreamError | string | undefined
    ): Effect.Effect<void> => {
      const span = trace.span
      if (span === undefined || span.status._tag === "Ended") return Effect.void
      return Effect.map(u.breaker.state, (after) => {
        const now = clock.unsafeCurrentTimeNanos()
        span.attribute("breakwater.outcome", outcome)
        let status = trace.status
        let reason: string | undefined
        if (failure !== undefined) {
          if (typeof failure === "string") {
            reason = failure
          } else {
            reason = reasonOf(failure)
            span.attribute("error.type", failure._tag)
            status ??= "status" in failure ? failure.status : failure._tag === "UpstreamRateLimited" ? 429 : undefined
            trace.cooldown ??= cooldownFor(failure)
          }
          span.attribute("breakwater.failure.reason", reason)
        }
        if (status !== undefined) span.attribute("http.response.status_code", status)
        if (trace.breaker !== undefined && after !== trace.breaker) {
          span.event("breaker", now, { "breakwater.breaker.from": trace.breaker, "breakwater.breaker.to": after })
        } else if (trace.breaker === "HalfOpen") {
          span.attribute("breakwater.breaker.probe", true)
        }
        if (trace.cooldown !== undefined) {
          span.event("cooldown", now, {
            "breakwater.cooldown.reason": trace.cooldown.reason,
            "breakwater.cooldown.ms": Duration.toMillis(trace.cooldown.duration)
          })
        }
        span.end(now, reason === undefined ? Exit.void : Exit.fail(reason))
      })
    }

    /**
     * How a traced attempt ended, on its span: a success (a stream's span
     * stays open until the stream ends), a failure, the deadline, or the
     * caller leaving. An upstream left out by our own limits is an event on
     * the current span instead.
     */
    const endAttempt = (
      u: Upstream.Upstream,
      trace: AttemptTrace,
      clock: Clock.Clock,
      exit: Exit.Exit<Attempted<unknown>, Timeout.DeadlineExceeded>,
      streaming: boolean
    ): Effect.Effect<void> => {
      if (exit._tag === "Failure") {
        return Option.isSome(Cause.failureOption(exit.cause))
          ? endAttemptSpan(u, trace, clock, "deadline", "the request's deadline passed")
          : Cause.isInterruptedOnly(exit.cause)
          ? endAttemptSpan(u, trace, clock, "interrupted", undefined)
          : endAttemptSpan(u, trace, clock, "defect", "unexpected failure")
      }
      const outcome = exit.value
      switch (outcome._tag) {
        case "Skipped":
          return spanEvent("upstream skipped", { "breakwater.upstream": u.name, "breakwater.reason": outcome.reason })
        case "Failed":
          return endAttemptSpan(u, trace, clock, outcome.error._tag, outcome.error)
        case "Ok":
          if (streaming) return Effect.void
          if (trace.span !== undefined) spanUsage(trace.span, trace.model, trace.usage, undefined)
          return endAttemptSpan(u, trace, clock, "ok", undefined)
      }
    }

    /** Our own protections around one call: the account limits, the bulkhead,
    /**
     * Our own protections around one call: the account limits, the bulkhead,
     * the breaker (which sees the classified outcome) and the attempt's
     * timeout. Refusals by these are "Skipped": no upstream call was made.
     */
    const guarded = <A>(
      u: Upstream.Upstream,
      tokens: number,
      call: Effect.Effect<A, UpstreamError | Timeout.DeadlineExceeded>,
      bulkhead: "run" | "held",
      panic: boolean,
      progress: Progress,
      breaker: "protect" | "held" = "protect"
    ): Effect.Effect<Attempted<A>, Timeout.DeadlineExceeded> => {
      // A non-streaming call ("run") carries its own timer (`postTimed`); a
      // stream's attempt (up to its first event) runs under `Timeout.attempt`.
      const timed: Effect.Effect<A, UpstreamError | Timeout.DeadlineExceeded> = bulkhead === "run" ? call : Timeout.attempt(call, u.timeout).pipe(
        Effect.catchTag("AttemptTimedOut", (e) => Effect.fail(new UpstreamTimeout({ upstream: u.name, timeout: e.timeout })))
      )
      // In panic the open breaker is bypassed on purpose (Router.Options.panic).
      // "held": the caller holds a breaker permit and reports the outcome itself (streams).
      const broken = panic || breaker === "held" ? timed : u.breaker.protect(timed)
      let protectedCall: Effect.Effect<A, Refusal | UpstreamError | Timeout.DeadlineExceeded> = bulkhead === "run"
        ? u.bulkhead.run(broken)
        : broken
      if (u.tokenLimit !== undefined) protectedCall = Effect.zipRight(u.tokenLimit.acquire("account", tokens), protectedCall)
      if (u.requestLimit !== undefined) protectedCall = Effect.zipRight(u.requestLimit.acquire("account"), protectedCall)
      // The upstream's own rate limit, as learnt (see `Pacing`): a call the
      // window has no room for is not made; one let through by the queue
      // (`progress.granted`) has its room already.
      const pacer = Pacing.pacerOf(u)
      return Effect.clockWith((clock) => {
        if (progress.granted === u) progress.granted = undefined
        else if (!pacer.tryTake(clock.unsafeCurrentTimeMillis())) return Effect.succeed<Attempted<A>>({ _tag: "Skipped", reason: PACED })
        return Effect.tap(classifyOutcome(protectedCall, u.name, progress), (outcome) =>
          outcome._tag === "Skipped" ? Effect.sync(() => pacer.giveBack(clock.unsafeCurrentTimeMillis())) : Effect.void)
      })
    }

    // ----- one HTTP call under one timer ---------------------------------------

    /**
     * Starts one POST on `u`; `done` hears how it ended, once, unless the
     * returned abort comes first (its callback runs once the call is torn
     * down). Through the client's `unsafePost` when it has one (no fiber, no
     * effect); otherwise `post` runs in a fiber of the caller's runtime.
     */
    const unsafePost = client.unsafePost
    const startCall = (
      fiber: Fiber.RuntimeFiber<unknown, unknown>,
      u: Upstream.Upstream,
      path: string,
      body: string | Uint8Array,
      headers: Readonly<Record<string, string>> | undefined,
      done: (exit: Exit.Exit<Reply, UpstreamUnreachable>) => void
    ): Abort => {
      if (unsafePost !== undefined) {
        const abort = unsafePost(u, path, body, headers, (error, reply) =>
          done(error === undefined ? Exit.succeed(reply!) : Exit.fail(error)))
        return (then) => {
          abort()
          then()
        }
      }
      const runtime = Runtime.make({
        context: fiber.currentContext,
        fiberRefs: fiber.getFiberRefs(),
        runtimeFlags: Runtime.defaultRuntimeFlags
      })
      const child = Runtime.runFork(runtime)(client.post(u, path, body, headers))
      let aborted = false
      child.addObserver((exit) => {
        if (!aborted) done(exit)
      })
      return (then) => {
        aborted = true
        child.unsafeInterruptAsFork(fiber.id())
        // Once its finalizers (released permits, closed sockets) have run.
        child.addObserver(() => then())
      }
    }

    /**
     * Starts a call under `limit` with one timer (`setTimeout` under the live
     * clock, the clock's own `sleep` otherwise): whichever comes first, the
     * answer or the timer, settles it; the timer aborts the HTTP call itself.
     * `settle` hears the outcome once (a timeout as `limit`'s error). Returns
     * the cancel of an interrupted caller: timer and call both end.
     */
    const startTimedCall = (
      fiber: Fiber.RuntimeFiber<unknown, unknown>,
      clock: Clock.Clock,
      limit: Limit,
      u: Upstream.Upstream,
      path: string,
      body: string | Uint8Array,
      headers: Readonly<Record<string, string>> | undefined,
      settle: (exit: Exit.Exit<Reply, UpstreamUnreachable | UpstreamTimeout | Timeout.DeadlineExceeded>) => void
    ): Abort => {
      let settled = false
      let abort: Abort | undefined
      const pacer = Pacing.pacerOf(u)
      pacer.sent()
      const cancelTimer = unsafeTimer(clock, limit.millis, () => {
        if (settled) return
        settled = true
        pacer.done(clock.unsafeCurrentTimeMillis())
        const timedOut = limit.budget === undefined
          ? new UpstreamTimeout({ upstream: u.name, timeout: u.timeout })
          : new Timeout.DeadlineExceeded({ budget: limit.budget })
        const failed = Exit.fail(timedOut)
        if (abort === undefined) settle(failed)
        else abort(() => settle(failed))
      }, fiber)
      abort = startCall(fiber, u, path, body, headers, (exit) => {
        if (settled) return
        settled = true
        cancelTimer()
        const now = clock.unsafeCurrentTimeMillis()
        if (exit._tag === "Success") pacer.answered(now, exit.value.status, exit.value.headers)
        else pacer.done(now)
        settle(exit)
      })
      return (then) => {
        if (settled) return then()
        settled = true
        cancelTimer()
        pacer.done(clock.unsafeCurrentTimeMillis())
        abort!(then)
      }
    }

    /** {@link startTimedCall} as an effect (the general path). */
    const postTimed = (
      fiber: Fiber.RuntimeFiber<unknown, unknown>,
      clock: Clock.Clock,
      limit: Limit,
      u: Upstream.Upstream,
      path: string,
      body: string | Uint8Array,
      headers: Readonly<Record<string, string>> | undefined
    ): Effect.Effect<Reply, UpstreamUnreachable | UpstreamTimeout | Timeout.DeadlineExceeded> =>
      Effect.async((resume) => {
        const cancel = startTimedCall(fiber, clock, limit, u, path, body, headers, resume)
        return Effect.async<void>((resumeCancel) => cancel(() => resumeCancel(Effect.void)))
      })

    /** A non-streaming call: POST (under `limit`), read, classify, validate. */
    const callJson = (
      fiber: Fiber.RuntimeFiber<unknown, unknown>,
      clock: Clock.Clock,
      limit: Limit,
      u: Upstream.Upstream,
      path: string,
      body: string | Uint8Array,
      inspect: (text: string) => ReturnType<typeof OpenAI.inspectChatCompletion>,
      headers?: Readonly<Record<string, string>>,
      trace?: AttemptTrace
    ): Effect.Effect<Classified, UpstreamError | Timeout.DeadlineExceeded> =>
      Effect.flatMap(postTimed(fiber, clock, limit, u, path, body, headers), (reply): Effect.Effect<Classified, UpstreamError> => {
        if (trace !== undefined) trace.status = reply.status
        if (reply.status !== 200) return Effect.flatMap(statusError(u, reply.status, reply.headers, reply.text), Effect.fail)
        const inspected = inspect(reply.text)
        switch (inspected._tag) {
          case "Ok":
            if (trace !== undefined) trace.usage = inspected.usage
            return Effect.as(noteHeadroom(u, reply.headers, trace), { _tag: "Ok", body: reply.text, usage: inspected.usage })
          case "Quota":
            return Effect.fail(new QuotaExhausted({ upstream: u.name, code: inspected.problem.code }))
          case "Invalid":
            return Effect.fail(new InvalidResponse({ upstream: u.name, reason: inspected.problem.kind }))
        }
      })

    // ----- failover -----------------------------------------------------------

    interface Progress {
      attempts: number
      readonly failures: Array<Failure>
      /** The last upstream called. */
      last: string | undefined
      /** The last 404 `model_not_found`: relayed if every upstream says so. */
      notFound: UpstreamModelNotFound | undefined
      /** Upstreams that said they lack the model (or cannot take the request): not asked again in this request. */
      lacking: Set<string> | undefined
      /** The fallback model being tried; undefined while it is the asked one. */
      model: string | undefined
      /** The first refusal of a field an upstream's kind cannot take: the 400 when no upstream answers. */
      refused: UpstreamRejected | undefined
      /** A call beyond the first was paid for from the retry budget and not made yet (its upstream was skipped). */
      credit: boolean
      /** The upstream whose pacing queue let this request through: its call has room in the window. */
      granted: Upstream.Upstream | undefined
      /** An upstream this round left alone because its rate-limit window is spent. */
      pacedOn: Upstream.Upstream | undefined
      /** The index of the model `pacedOn` was left alone for. */
      pacedModel: number
      /** Times this request waited in a pacing queue. */
      pacedWaits: number
      /** Set once the request was hedged. */
      hedge?: Hedge.Report | undefined
    }

    const newProgress = (): Progress => ({
      attempts: 0,
      failures: [],
      last: undefined,
      notFound: undefined,
      lacking: undefined,
      model: undefined,
      refused: undefined,
      credit: false,
      granted: undefined,
      pacedOn: undefined,
      pacedModel: 0,
      pacedWaits: 0
    })

    /** Counts an upstream call: the request's first is a primary call of the retry budget; a later one uses its credit. */
    const countCall = (progress: Progress): void => {
      if (progress.attempts++ === 0) retryBudget.recordPrimary()
      else progress.credit = false
    }

    /** The retry budget is spent: the request ends with what it has, saying so. */
    const budgetSpent = (model: string, progress: Progress, u: Upstream.Upstream): RelayError => {
      progress.failures.push({ upstream: u.name, reason: "retry budget exhausted", kind: "retry-budget" })
      return allFailed(model, progress, [])
    }

    /**
     * Where the hot path hands a request over to the general one: the first
     * round's plan (made at `now`), the progress so far, and how the attempt
     * on the plan's first upstream went, if it was made.
     */
    interface Resume<A> {
      readonly progress: Progress
      /** The request's own deadline (epoch millis); undefined when an enclosing one is sooner. */
      readonly deadline: number | undefined
      readonly now: number
      readonly active: ReadonlyMap<string, Cooldown.Cooldown>
      readonly plan: Router.Plan
      readonly first: Attempted<A> | undefined
    }

    /** What a hedged request does with a losing call that answered anyway (`Hedge.race`). */
    type Discard<A> = (value: A, u: Upstream.Upstream) => Effect.Effect<void>

    /** Whether an attempt's outcome ends the request: an answer, or the caller's own error. */
    const settlesRequest = (outcome: Attempted<unknown>): boolean =>
      outcome._tag === "Ok" || (outcome._tag === "Failed" && outcome.error._tag === "UpstreamRejected")

    /**
     * Whether a hedge may go to `c` now: not cooling down (it would earn
     * another 429), a free slot, and its breaker closed (a hedge is no probe).
     */
    const hedgeable = (
      c: Upstream.Upstream,
      now: number,
      active: ReadonlyMap<string, Cooldown.Cooldown>
    ): Effect.Effect<boolean> => {
      const cooling = active.get(c.name)
      if (cooling !== undefined && cooling.until > now) return Effect.succeed(false)
      if (c.bulkhead.unsafeStats().available <= 0) return Effect.succeed(false)
      return Effect.map(c.breaker.state, (state) => state === "Closed" || state === "Disabled")
    }

    /**
     * The upstream a hedge may go to: the first in `plan.order` from `j` that
     * is {@link hedgeable} and has not said it lacks the model.
     */
    const hedgeTarget = (
      plan: Router.Plan,
      j: number,
      now: number,
      active: ReadonlyMap<string, Cooldown.Cooldown>,
      progress: Progress
    ): Effect.Effect<readonly [number, Upstream.Upstream] | undefined> => {
      while (j < plan.order.length && progress.lacking !== undefined && progress.lacking.has(plan.order[j]!.name)) j++
      if (j >= plan.order.length) return Effect.succeed(undefined)
      const c = plan.order[j]!
      const at = j
      return Effect.flatMap(hedgeable(c, now, active), (ok) =>
        ok ? Effect.succeed([at, c] as const) : hedgeTarget(plan, at + 1, now, active, progress))
    }

    /**
     * With `sameUpstream`, when no later upstream may take the hedge: the
     * first call's own upstream, if it is still {@link hedgeable}.
     */
    const sameAsLast = (
      found: Effect.Effect<readonly [number, Upstream.Upstream] | undefined>,
      policy: Hedge.Hedge,
      i: number,
      u: Upstream.Upstream,
      now: number,
      active: ReadonlyMap<string, Cooldown.Cooldown>
    ): Effect.Effect<readonly [number, Upstream.Upstream] | undefined> =>
      !policy.sameUpstream ? found : Effect.flatMap(found, (other) =>
        other !== undefined
          ? Effect.succeed(other)
          : Effect.map(hedgeable(u, now, active), (ok) => ok ? [i, u] as const : undefined))

    const failureOf = (error: UpstreamError): Failure =>
      error._tag === "UpstreamAuthFailed"
        ? { upstream: error.upstream, reason: reasonOf(error), kind: "auth-failed" }
        : error._tag === "UpstreamModelNotFound"
        ? { upstream: error.upstream, reason: reasonOf(error), kind: "model-not-found" }
        : { upstream: error.upstream, reason: reasonOf(error) }

    /** What one attempt on one upstream is, for the failover loop. */
    type AttemptOn<A> = (u: Upstream.Upstream, progress: Progress, panic: boolean) => Effect.Effect<Attempted<A>, Timeout.DeadlineExceeded>

    /**
     * A plan without panic: the open breakers stay out. A model with fallbacks
     * left does not panic into its open upstreams (that would call a dead
     * upstream on every request and spend the retry budget reaching the
     * fallback); panic is for the chain's last model, when nothing else is left.
     */
    const calm = (plan: Router.Plan, now: number): Router.Plan => {
      if (!plan.panic) return plan
      const order: Array<Upstream.Upstream> = []
      const excluded = [...plan.excluded]
      for (const u of plan.order) {
        if (u.breaker.unsafeIsAvailable(now)) order.push(u)
        else excluded.push([u, "circuit-open"])
      }
      return { order, excluded, panic: false }
    }

    /**
     * Tries upstreams in the router's order until `attempt` succeeds, the
     * caller is at fault, attempts run out, or the deadline passes. A round
     * walks the policy's models in order: the asked one (`attempt`), then
     * each fallback (`attemptOn(model)`), each planned when its turn comes.
     */
    const failover = <A>(
      policy: Policy,
      attempt: AttemptOn<A>,
      attemptOn: (model: string) => AttemptOn<A>,
      resume?: Resume<A>,
      hedge?: Discard<A>
    ): Effect.Effect<readonly [A, Upstream.Upstream, Progress], RelayError> => {
      const model = policy.models[0]!
      const maxAttempts = policy.maxAttempts
      const servers = servingUnder(model, policy.pin)
      if (servers.length === 0) {
        if (policy.pin === undefined || serving(model).length === 0) return Effect.fail(new UnknownModel({ model }))
        return Effect.fail(new NoUpstreamAvailable({
          model,
          attempts: 0,
          failures: [{ upstream: policy.pin, reason: `does not serve '${model}'` }],
          retryAfter: undefined
        }))
      }
      const progress: Progress = resume?.progress ?? newProgress()
      let hedgeCounted = false

      /**
       * One round: whether it made any upstream call, and the upstreams its
       * plans left out (with a cooldown's end, when that is why).
       */
      interface Round {
        readonly n: number
        readonly waits: number
        called: boolean
        /** Whether a model's plan in this round crossed the panic threshold (its open breakers bypassed). */
        panic: boolean
        /** Upstreams left out, why, when they come back (cooldowns), and the index of the model they were left out for. */
        readonly excluded: Array<readonly [Upstream.Upstream, Router.Exclusion, number | undefined, number]>
      }

      /**
       * `n`: the number of this round among those that call upstreams (retry
       * rounds are counted against `maxRetries`); `waits`: how many times the
       * request waited for an upstream to come back. A wait is not a retry: a
       * request that waited out a cooldown still has all its rounds.
       */
      const round = (n: number, waits: number): Effect.Effect<readonly [A, Upstream.Upstream, Progress], RelayError> => {
        progress.pacedOn = undefined
        return walk({ n, waits, called: false, panic: false, excluded: [] }, 0)
      }

      /** Plans the round's `k`th model (0: the asked one) and tries its upstreams. */
      const walk = (r: Round, k: number): Effect.Effect<readonly [A, Upstream.Upstream, Progress], RelayError> => {
        if (k >= policy.models.length) return nextRound(r)
        const on = k === 0 ? servers : servingUnder(policy.models[k]!, policy.pin)
        if (on.length === 0) return walk(r, k + 1)
        return Effect.clockWith((clock) => {
          const now = clock.unsafeCurrentTimeMillis()
          return Effect.flatMap(cooldowns.active(now), (active) =>
            Effect.flatMap(router.plan(on, now, active), (plan) =>
              planned(r, k, now, active, k < policy.models.length - 1 ? calm(plan, now) : plan, undefined)))
        })
      }

      /**
       * The round's `k`th model over `plan`; `first`: how the attempt on its
       * first upstream already went (the hot path made it), if it did.
       */
      const planned = (
        r: Round,
        k: number,
        now: number,
        active: ReadonlyMap<string, Cooldown.Cooldown>,
        plan: Router.Plan,
        first: Attempted<A> | undefined
      ): Effect.Effect<readonly [A, Upstream.Upstream, Progress], RelayError> => {
        const m = policy.models[k]!
        progress.model = k === 0 ? undefined : m
        if (plan.panic) r.panic = true
        const run = k === 0 ? attempt : attemptOn(m)
        /** Who lacks what: an upstream lacking the asked model may still serve a fallback. */
        const lackKey = (u: Upstream.Upstream) => k === 0 ? u.name : `${u.name}\u0000${m}`
        const note = (f: Failure) => progress.failures.push(k === 0 ? f : { ...f, reason: `${f.reason} (model ${m})` })
        const attemptsBefore = first === undefined ? progress.attempts : 0
        const tryAt = (i: number, retried = 0): Effect.Effect<readonly [A, Upstream.Upstream, Progress], RelayError> => {
          if (progress.attempts >= maxAttempts) return Effect.fail(allFailed(model, progress, []))
          if (i >= plan.order.length) {
            if (progress.attempts > attemptsBefore) r.called = true
            for (const [u, why] of plan.excluded) {
              r.excluded.push([u, why, why === "cooling-down" || why === "auth-failed" ? active.get(u.name)?.until : undefined, k])
            }
            return walk(r, k + 1)
          }
          const u = plan.order[i]!
          if (progress.lacking !== undefined && progress.lacking.has(lackKey(u))) return tryAt(i + 1)
          // The request's first upstream call, on the asked model, may be hedged (Options.hedge).
          if (hedge !== undefined && k === 0 && progress.attempts === 0 && !plan.panic && hedging !== undefined) {
            return hedgedAt(i, u, hedging, hedge)
          }
          const call = () => {
            // Every call beyond the request's first is paid for from the retry budget.
            if (progress.attempts > 0 && !progress.credit) {
              if (!retryBudget.trySpend()) return Effect.fail(budgetSpent(model, progress, u))
              progress.credit = true
            }
            // In panic, only the open breakers are bypassed: the others still hear their calls.
            const bypass = plan.panic && !u.breaker.unsafeIsAvailable(now)
            return Effect.flatMap(run(u, progress, bypass), (outcome) => after(i, retried, u, outcome))
          }
          if (i === 0 || plan.panic) return call()
          // An upstream that went into a cooldown since the plan was made
          // (a refused connection, a 429 met by another request) is left
          // out (it was not cooling down then: the plan has it).
          return Effect.clockWith((clock) => {
            const at = clock.unsafeCurrentTimeMillis()
            return Effect.flatMap(cooldowns.active(at), (current) => {
              const cooldown = current.get(u.name)
              return cooldown !== undefined && cooldown.until > at ? tryAt(i + 1) : call()
            })
          })
        }

        /** The first call, on `u` (plan.order[i]), with a hedge to a later upstream if it is slow. */
        const hedgedAt = (
          i: number,
          u: Upstream.Upstream,
          policy: Hedge.Hedge,
          discard: Discard<A>
        ): Effect.Effect<readonly [A, Upstream.Upstream, Progress], RelayError> =>
          Effect.clockWith((clock) => {
            const startedAt = clock.unsafeCurrentTimeMillis()
            if (!hedgeCounted) {
              hedgeCounted = true
              policy.budget.recordPrimary(startedAt)
            }
            let target: readonly [number, Upstream.Upstream] | undefined
            // Decided when the delay is up: a later upstream that is closed,
            // not cooling down and has room, attempts left, and the budget.
            const second = Effect.suspend(() => {
              const now = clock.unsafeCurrentTimeMillis()
              if (progress.attempts >= maxAttempts) return Effect.succeed(undefined)
              return Effect.flatMap(cooldowns.active(now), (active) =>
                Effect.map(sameAsLast(hedgeTarget(plan, i + 1, now, active, progress), policy, i, u, now, active), (found) => {
                  // A hedge is a call beyond the request's first: the retry budget pays for it too,
                  // from its first half only (the rest stays for failovers).
                  if (found === undefined || !policy.budget.tryAcquire(now) || !retryBudget.trySpend(RetryBudget.hedgeShare)) return undefined
                  progress.credit = true
                  target = found
                  return attempt(found[1], progress, false)
                }))
            })
            const raced = Hedge.race(
              attempt(u, progress, false),
              policy.delayFor(u),
              second,
              settlesRequest,
              (value, isHedge) => value._tag === "Ok" ? discard(value.value, isHedge ? target![1] : u) : Effect.void
            )
            return Effect.flatMap(raced, (r) => {
              if (r._tag === "Alone") return after(i, 0, u, r.value)
              const noted: Array<Effect.Effect<void>> = []
              const [j, h] = target!
              const hedgeValue = r.firstIsHedge ? r.first : r.second
              let outcome: Hedge.Report["outcome"]
              if (r.second === undefined) {
                // The other call was interrupted: aborted, its slot given back.
                const loser = r.firstIsHedge ? u : h
                const now = clock.unsafeCurrentTimeMillis()
                noted.push(Metric.increment(requestsBy(loser.name, "interrupted")))
                // The first call, cut short by its hedge: a lower bound of its latency, so that
                // slow calls cut short still count as slow (a first call that won noted its own).
                if (r.firstIsHedge) Upstream.noteLatency(u, now - startedAt)
                outcome = !r.firstIsHedge ? "lost" : r.first._tag === "Ok" ? "won" : "failed"
              } else {
                outcome = hedgeValue !== undefined && hedgeValue._tag === "Ok" ? "won" : "failed"
              }
              progress.hedge = { upstream: h.name, outcome }
              hedgeTally[outcome]++
              noted.push(Metric.increment(Hedge.hedgedBy(h.name, outcome)))
              const firstU = r.firstIsHedge ? h : u
              // After both, the request moves on past the hedge's upstream;
              // no retries on the same upstream after a hedge.
              if (r.second === undefined) {
                return Effect.zipRight(Effect.all(noted, { discard: true }), after(j, Number.MAX_SAFE_INTEGER, firstU, r.first))
              }
              const secondU = r.firstIsHedge ? u : h
              noted.push(noteFailure(firstU, r.first))
              return Effect.zipRight(Effect.all(noted, { discard: true }), after(j, Number.MAX_SAFE_INTEGER, secondU, r.second))
            })
          })

        /**
         * A failed or skipped call's bookkeeping: its failure, the pacer it
         * found full, a refused connection's credit, what the upstream lacks.
         * Returns the error when the upstream may cool down or retry it (or,
         * a caller's rejection, end the request), `undefined` to move on.
         */
        const book = (u: Upstream.Upstream, outcome: Exclude<Attempted<A>, { readonly _tag: "Ok" }>): UpstreamError | undefined => {
          if (outcome._tag === "Skipped") {
            note({ upstream: u.name, reason: outcome.reason })
            if (outcome.reason === PACED) {
              progress.pacedOn = u
              progress.pacedModel = k
            }
            return undefined
          }
          const error = outcome.error
          if (error._tag === "UpstreamRejected" && error.untranslatable !== undefined) {
            // Refused before any call (a field this kind cannot take): no
            // attempt spent, and another upstream may take the request.
            progress.attempts--
            progress.refused ??= error
            note({ upstream: u.name, reason: `cannot take '${error.untranslatable}'`, kind: "unsupported" })
            progress.lacking ??= new Set()
            progress.lacking.add(lackKey(u))
            return undefined
          }
          progress.last = u.name
          note(failureOf(error))
          // A call that never reached the upstream (the connection was
          // refused) added no load anywhere: the next call is not a retry
          // the budget must pay for.
          if (error._tag === "UpstreamUnreachable" && refused(error.reason)) progress.credit = true
          if (error._tag === "UpstreamModelNotFound") {
            progress.notFound = error
            progress.lacking ??= new Set()
            progress.lacking.add(lackKey(u))
            return undefined
          }
          return error
        }
        /** The hedge's call that failed first: booked and cooled down, while the other call decides what comes next. */
        const noteFailure = (u: Upstream.Upstream, outcome: Attempted<A>): Effect.Effect<void> => {
          if (outcome._tag === "Ok") return Effect.void
          const error = book(u, outcome)
          return error === undefined ? Effect.void : coolDown(error)
        }
        const after = (
          i: number,
          retried: number,
          u: Upstream.Upstream,
          outcome: Attempted<A>
        ): Effect.Effect<readonly [A, Upstream.Upstream, Progress], RelayError> => {
          if (outcome._tag === "Ok") return Effect.succeed([outcome.value, u, progress] as const)
          const error = book(u, outcome)
          if (error === undefined) return tryAt(i + 1)
          if (error._tag === "UpstreamRejected") {
            return Effect.fail(
              new UpstreamRejected({
                upstream: error.upstream,
                status: error.status,
                body: error.body,
                contentType: error.contentType,
                attempts: progress.attempts
              })
            )
          }
          // An upstream may ask for retries on itself (transient
          // errors only) before the request moves on.
          const sameUpstream = u.retry?.maxRetries ?? 0
          if (
            retried < sameUpstream && Upstream.countsAgainstBreaker(error) && progress.attempts < maxAttempts &&
            !(error._tag === "UpstreamUnreachable" && refused(error.reason))
          ) {
            return Effect.flatMap(backoff(u, retried + 1), (ok) => ok ? tryAt(i, retried + 1) : tryAt(i + 1))
          }
          return Effect.zipRight(coolDown(error), tryAt(i + 1))
        }
        return first === undefined ? tryAt(0) : after(0, 0, plan.order[0]!, first)
      }

      /** Every model's upstreams were tried or left out: wait for one, back off, or give up. */
      const nextRound = (r: Round): Effect.Effect<readonly [A, Upstream.Upstream, Progress], RelayError> =>
        Effect.clockWith((clock) =>
          Effect.flatMap(
            Effect.forEach(r.excluded, ([u, why, until]) =>
              why === "circuit-open"
                ? Effect.map(u.breaker.snapshot, (s) => s.openUntil)
                : Effect.succeed(until)),
            (comebacks) => {
              const now = clock.unsafeCurrentTimeMillis()
              // Pacing reads the cooldowns' reasons: only when no upstream was called.
              return r.called || pacingQueue === 0
                ? afterRound(r, now, undefined, comebacks)
                : Effect.flatMap(cooldowns.active(now), (active) => afterRound(r, now, active, comebacks))
            }
          ))

      /**
       * Waits in `u`'s pacing queue (at most `maxRetryAfter`, and within the
       * deadline); let through, the request calls `u` at once (for the
       * round's `k`th model: its call has room in the window). A queue that
       * is full, or a window that does not open in time, fails the request
       * as when no upstream is available.
       */
      const pace = (
        r: Round,
        k: number,
        u: Upstream.Upstream,
        at: number,
        excluded: ReadonlyArray<Failure>,
        front: boolean
      ): Effect.Effect<readonly [A, Upstream.Upstream, Progress], RelayError> =>
        Effect.flatMap(Timeout.remaining, (left) =>
          Effect.clockWith((clock) => {
            const now = clock.unsafeCurrentTimeMillis()
            const pacer = Pacing.pacerOf(u)
            const budget = Option.isSome(left) ? Math.min(maxRetryAfterMillis, Duration.toMillis(left.value) - 1) : maxRetryAfterMillis
            progress.pacedWaits++
            const waited = budget <= 0 ? Effect.succeed<Pacing.WaitOutcome>("too-long") : pacer.wait(budget, pacingQueue, front)
            const wait = tracing === undefined ? waited : Effect.zipRight(
              spanEvent("waiting", { "breakwater.wait.reason": `rate limited: queued for ${u.name}'s window`, "breakwater.upstream": u.name }),
              waited
            )
            return Effect.flatMap(wait, (outcome) => {
              const end = clock.unsafeCurrentTimeMillis()
              const recorded = outcome === "granted" && end === now ? Effect.void : Pacing.recordWait(pacer, outcome, end - now)
              if (outcome !== "granted") {
                return Effect.zipRight(recorded, Effect.fail(noneAvailable(model, excluded, progress, Math.max(0, at - end))))
              }
              return Effect.zipRight(
                recorded,
                Effect.flatMap(cooldowns.active(end), (active) => {
                  const cooldown = active.get(u.name)
                  if (cooldown !== undefined && cooldown.until > end) {
                    // A cooldown started meanwhile (here, or on another replica).
                    pacer.forfeit()
                    if (cooldown.reason !== "rate-limited" && cooldown.reason !== "low-headroom") return round(r.n, r.waits)
                    pacer.block(end, cooldown.until)
                    return pace(r, k, u, cooldown.until, excluded, true)
                  }
                  progress.granted = u
                  progress.pacedOn = undefined
                  // In a round that panicked, an open breaker is bypassed here too.
                  return planned({ n: r.n, waits: r.waits, called: false, panic: r.panic, excluded: [] }, k, end, active, {
                    order: [u],
                    excluded: [],
                    panic: r.panic && !u.breaker.unsafeIsAvailable(end)
                  }, undefined)
                })
              )
            })
          }))

      /**
       * A round where every upstream was left out or refused by our own
       * protections (none was called) waits for the first to come back
       * (cooldown or open breaker), within `maxRetryAfter` — in a pacing
       * queue when that one is only rate limited — or reports that none is
       * available. `active`: the cooldowns now, read when none was called.
       */
      const afterRound = (
        r: Round,
        now: number,
        active: ReadonlyMap<string, Cooldown.Cooldown> | undefined,
        comebacks: ReadonlyArray<number | undefined>
      ): Effect.Effect<readonly [A, Upstream.Upstream, Progress], RelayError> => {
        const { n, waits } = r
        const excluded = r.excluded.map(([u, why]): Failure =>
          why === "auth-failed" ? { upstream: u.name, reason: why, kind: why } : { upstream: u.name, reason: why }
        )
        let soonest: number | undefined
        for (const at of comebacks) if (at !== undefined && (soonest === undefined || at < soonest)) soonest = at
        if (!r.called && active !== undefined && progress.attempts < maxAttempts && progress.pacedWaits < MAX_PACED_WAITS) {
          // Pacing: when the first upstream to come back is one that is only
          // rate limited, wait in its queue rather than all at once.
          let target: Upstream.Upstream | undefined
          let targetModel = 0
          let targetAt = Infinity
          let cooling: number | undefined
          let other = Infinity
          r.excluded.forEach(([u, why, , k], j) => {
            const cooldown = active.get(u.name)
            if (why === "cooling-down" && cooldown !== undefined && (cooldown.reason === "rate-limited" || cooldown.reason === "low-headroom")) {
              const at = Math.max(cooldown.until, Pacing.pacerOf(u).resetAt)
              if (at < targetAt) {
                target = u
                targetModel = k
                targetAt = at
                cooling = cooldown.until
              }
            } else {
              const at = comebacks[j]
              if (at !== undefined && at < other) other = at
            }
          })
          const pacedOn = progress.pacedOn
          if (pacedOn !== undefined) {
            const at = Math.max(now, Pacing.pacerOf(pacedOn).resetAt)
            if (at < targetAt) {
              target = pacedOn
              targetModel = progress.pacedModel
              targetAt = at
              cooling = undefined
            }
          }
          if (target !== undefined && targetAt <= other) {
            // The pacer honours the cooldown, wherever it was learnt (another request, another replica).
            if (cooling !== undefined) Pacing.pacerOf(target).block(now, cooling)
            return pace(r, targetModel, target, targetAt, excluded, false)
          }
        }
        if (!r.called) {
          const waitMillis = soonest === undefined ? undefined : soonest - now
          if (waitMillis !== undefined && waitMillis <= maxRetryAfterMillis && waits < maxRounds + 1) {
            return Effect.flatMap(Timeout.remaining, (left) =>
              Option.isSome(left) && Duration.toMillis(left.value) <= waitMillis
                ? Effect.fail(noneAvailable(model, excluded, progress, waitMillis))
                : Effect.zipRight(waiting(waitMillis, "every upstream unavailable; the first comes back"), round(n, waits + 1)))
          }
          return Effect.fail(noneAvailable(model, excluded, progress, waitMillis))
        }
        // Another round cannot help when every upstream refused its key or lacks the model.
        if (n >= maxRounds || conclusive(model, progress.failures, progress) !== undefined) {
          return Effect.fail(allFailed(model, progress, []))
        }
        // Back off with full jitter before the next round, unless the deadline forbids.
        return Effect.flatMap(backoff(undefined, n), (ok) => ok ? round(n + 1, waits) : Effect.fail(allFailed(model, progress, [])))
      }

      // Every wait inside is deadline-aware (attempts, backoff, cooldown
      // waits), so the deadline needs no timer fiber of its own.
      if (resume === undefined) return Timeout.withCooperativeDeadline(round(1, 0), policy.budget)
      const body = planned({ n: 1, waits: 0, called: false, panic: false, excluded: [] }, 0, resume.now, resume.active, policy.models.length > 1 ? calm(resume.plan, resume.now) : resume.plan, resume.first)
      return resume.deadline === undefined ? body : Timeout.withCooperativeDeadlineAt(body, resume.deadline, policy.budget)
    }

    /** Sleeps a full-jitter backoff before retry `n` (on `u`, or a new round); false when the deadline forbids. */
    const backoff = (u: Upstream.Upstream | undefined, n: number): Effect.Effect<boolean> => {
      const base = u?.retry?.baseDelay === undefined ? baseDelayMillis : Duration.toMillis(u.retry.baseDelay)
      const max = u?.retry?.maxDelay === undefined ? maxDelayMillis : Duration.toMillis(u.retry.maxDelay)
      return Effect.flatMap(Random.nextRange(0, Math.min(max, base * 2 ** (n - 1))), (delay) =>
        Effect.flatMap(Timeout.remaining, (left) =>
          Option.isSome(left) && Duration.toMillis(left.value) <= delay
            ? Effect.succeed(false)
            : Effect.as(waiting(Math.floor(delay), u === undefined ? "backoff before the next round" : `backoff before a retry on ${u.name}`), true)))
    }

    /**
     * The failure that says it all, when the upstreams' own answers do: every
     * one lacks the model (the caller gets the last 404 as it came), or every
     * one refused its key, now or lately (the operator must act).
     */
    const conclusive = (model: string, failures: ReadonlyArray<Failure>, progress: Progress): RelayError | undefined => {
      if (failures.length === 0) return undefined
      let auth = 0
      let missing = 0
      let unsupported = 0
      for (const f of failures) {
        if (f.kind === "auth-failed") auth++
        else if (f.kind === "model-not-found") missing++
        else if (f.kind === "unsupported") unsupported++
      }
      // No upstream could take the request as it is: the 400 naming the field.
      if (unsupported > 0 && unsupported + missing === failures.length) return refusal(progress.refused!, progress, [])
      if (missing === failures.length && progress.notFound !== undefined) {
        const { body, contentType, status, upstream } = progress.notFound
        return new UpstreamRejected({ upstream, status, body, contentType, attempts: progress.attempts })
      }
      if (auth === failures.length) {
        return new UpstreamKeysRejected({ model, attempts: progress.attempts, upstreams: [...new Set(failures.map((f) => f.upstream))], failures })
      }
      return undefined
    }

    /** Upstreams were called and none answered: `excluded` adds those left out in the last round. */
    const allFailed = (model: string, progress: Progress, excluded: ReadonlyArray<Failure>): RelayError => {
      const failures = excluded.length === 0 ? progress.failures : [...progress.failures, ...excluded]
      return conclusive(model, failures, progress) ??
        (progress.refused !== undefined
          ? refusal(progress.refused, progress, failures)
          : new AllUpstreamsFailed({ model, attempts: progress.attempts, failures, upstream: progress.last }))
    }

    /**
     * A field some upstream's kind cannot take, when no upstream answered: a
     * 400 naming it (its `param`), saying what became of the upstreams that
     * could have taken it (`others`: failures other than refusals), so the
     * caller can drop the field or wait.
     */
    const refusal = (refused: UpstreamRejected, progress: Progress, failures: ReadonlyArray<Failure>): UpstreamRejected => {
      const others = failures.filter((f) => f.kind !== "unsupported")
      let body = refused.body
      if (others.length > 0) {
        try {
          const error = (JSON.parse(body) as { error: { message: string; param: string | null; code: string | null } }).error
          body = OpenAI.errorBody(
            `${error.message}. The upstreams that could take it did not answer: ${describe(others)}`,
            "invalid_request_error",
            error.param,
            error.code
          )
        } catch {
          // The refusal's own body, as it came.
        }
      }
      return new UpstreamRejected({
        upstream: refused.upstream,
        status: refused.status,
        body,
        contentType: refused.contentType,
        attempts: progress.attempts
      })
    }

    const noneAvailable = (
      model: string,
      excluded: ReadonlyArray<Failure>,
      progress: Progress,
      waitMillis: number | undefined
    ): RelayError => {
      if (progress.attempts > 0) return allFailed(model, progress, excluded)
      const failures = [...progress.failures, ...excluded]
      const known = conclusive(model, failures, progress)
      if (known !== undefined) return known
      if (progress.refused !== undefined) return refusal(progress.refused, progress, failures)
      return new NoUpstreamAvailable({
        model,
        attempts: progress.attempts,
        failures,
        retryAfter: waitMillis === undefined ? undefined : Duration.millis(Math.max(0, waitMillis))
      })
    }

    const reasonOf = (error: UpstreamError): string => {
      const own = `${error.upstream}: `
      return error.message.startsWith(own) ? error.message.slice(own.length) : error.message
    }

    /** Runs one non-streaming attempt and records it (metrics, stats, cost). */
    const jsonAttempt = (
      path: string,
      request: { readonly model: string },
      tokens: number,
      raw: string | Uint8Array | undefined,
      inspect: (text: string) => ReturnType<typeof OpenAI.inspectChatCompletion>
    ) =>
    (u: Upstream.Upstream, progress: Progress, panic: boolean): Effect.Effect<Attempted<readonly [Classified, number]>, Timeout.DeadlineExceeded> =>
      Effect.clockWith((clock) => {
        const started = clock.unsafeCurrentTimeMillis()
        const trace = tracing === undefined ? undefined : newTrace()
        // The time limit (attempt timeout or deadline) is the call's own
        // timer; a deadline already passed fails before any call is made.
        const call = Effect.withFiberRuntime<Classified, UpstreamError | Timeout.DeadlineExceeded>((fiber) => {
          const limit = limitOf(u, Timeout.unsafeDeadlineOf(fiber), clock.unsafeCurrentTimeMillis())
          if (limit.millis <= 0) return Effect.fail(new Timeout.DeadlineExceeded({ budget: limit.budget! }))
          countCall(progress)
          if (trace === undefined) return callJson(fiber, clock, limit, u, path, bodyFor(u, request, raw), inspect)
          const body = bodyFor(u, request, raw)
          return startAttempt(
            u,
            path === CHAT ? "chat" : "embeddings",
            u.modelFor(request.model) ?? request.model,
            progress.attempts,
            trace,
            (headers) => callJson(fiber, clock, limit, u, path, body, inspect, headers, trace)
          )
        })
        const attempted = Effect.tap(guarded(u, tokens, call, "run", panic, progress), (outcome) => {
          if (outcome._tag === "Skipped") return Effect.void
          const now = clock.unsafeCurrentTimeMillis()
          const latency = now - started
          Upstream.record(u, now, latency, outcome._tag === "Failed" ? outcome.error : undefined)
          return Effect.zipRight(
            Metric.increment(requestsBy(u.name, outcome._tag === "Ok" ? "ok" : outcome.error._tag)),
            Metric.update(latencyBy(u.name), latency)
          )
        }).pipe(
          Effect.map((outcome): Attempted<readonly [Classified, number]> =>
            outcome._tag === "Ok" ? { _tag: "Ok", value: [outcome.value, started] } : outcome
          )
        )
        return trace === undefined ? attempted : Effect.onExit(attempted, (exit) => endAttempt(u, trace, clock, exit, false))
      })

    const finish = (
      model: string,
      answered: string,
      key: string,
      value: readonly [Classified, number],
      u: Upstream.Upstream,
      progress: Progress,
      status: ResponseCache.Status,
      chatRequest?: OpenAI.ChatCompletionRequest
    ): Effect.Effect<Result> =>
      Effect.clockWith((clock) => {
        const [classified, started] = value
        const { costUsd, metadata, usage } = priced(model, answered, classified, started, clock.unsafeCurrentTimeMillis(), u, progress, status, chatRequest)
        return Effect.as(pricing.record({ upstream: u.name, model, key }, usage, costUsd), { body: classified.body, metadata })
      })

    /** A result's usage (estimated for a chat answer without any), cost (by `model`, as sent) and metadata. */
    const priced = (
      model: string,
      answered: string,
      classified: Classified,
      started: number,
      now: number,
      u: Upstream.Upstream,
      progress: Progress,
      status: ResponseCache.Status,
      chatRequest: OpenAI.ChatCompletionRequest | undefined
    ) => {
      let usage = classified.usage
      // A chat answer without usage is priced on an estimate, as a stream's is.
      const usageEstimated = usage === undefined && chatRequest !== undefined
      if (usageEstimated) {
        const prompt = OpenAI.estimatePromptTokens(chatRequest)
        const completion = OpenAI.estimateCompletionTokens(OpenAI.generatedChars(classified.body))
        usage = { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
      }
      const costUsd = usage === undefined ? undefined : pricing.cost(model, usage)
      let metadata: Metadata = {
        upstream: u.name,
        model: answered,
        attempts: progress.attempts,
        latencyMs: now - started,
        cache: status,
        usage,
        costUsd,
        usageEstimated,
        failures: progress.failures.map((f) => `${f.upstream}: ${f.reason}`)
      }
      if (progress.hedge !== undefined) metadata = { ...metadata, hedge: progress.hedge }
      return { usage, costUsd, metadata }
    }

    /**
     * A hedged request's losing call that answered anyway: the upstream
     * reported its usage, so its cost is counted (for the key, not the
     * answer's metadata).
     */
    const discardJson = (model: string, key: string) => ([classified]: readonly [Classified, number], u: Upstream.Upstream) => {
      const usage = classified.usage
      if (usage === undefined) return Effect.void
      const target = u.modelFor(model) ?? model
      return pricing.record({ upstream: u.name, model: target, key }, usage, pricing.cost(target, usage))
    }

    const isCacheable = (request: OpenAI.ChatCompletionRequest): boolean =>
      cacheMode === "all" ||
      (cacheMode === "deterministic" && (request.temperature === 0 || (request.seed !== undefined && request.seed !== null)))

    /**
     * A non-streaming request: failover over `jsonAttempt`s, then `finish`.
     * The first attempt of a simple request takes the hot path (see
     * {@link hot}); the rest of the request, if any, this general path.
     */
    const json = (
      path: string,
      request: { readonly model: string },
      tokens: number,
      options: CallOptions | undefined,
      inspect: (text: string) => ReturnType<typeof OpenAI.inspectChatCompletion>,
      status: ResponseCache.Status,
      chatRequest: OpenAI.ChatCompletionRequest | undefined,
      direct?: Direct
    ): Effect.Effect<Result, RelayError> => {
      const hedgeOn = hedging !== undefined && options?.hedge !== false
      const general = (resume?: Resume<readonly [Classified, number]>) =>
        Effect.flatMap(
          failover(
            policyOf(request.model, options),
            jsonAttempt(path, request, tokens, options?.rawBody, inspect),
            // A fallback model: the request as it is, under that model's name.
            (model) => jsonAttempt(path, { ...request, model }, tokens, undefined, inspect),
            resume,
            hedgeOn ? discardJson(request.model, options?.key ?? "anonymous") : undefined
          ),
          ([value, u, progress]) => {
            const answered = progress.model ?? request.model
            return finish(u.modelFor(answered) ?? answered, answered, options?.key ?? "anonymous", value, u, progress, status, chatRequest)
          }
        )
      if (!hotPath || hedgeOn) return general()
      if (direct !== undefined) return startDirect(direct, hotStart(direct.fiber, general, path, request, tokens, options, inspect, status, chatRequest))
      return Effect.withFiberRuntime((fiber) => hot(fiber, general, path, request, tokens, options, inspect, status, chatRequest))
    }

    /** {@link unsafeChat}'s request: where the hot path's outcome goes, and the cancel once the call started. */
    interface Direct {
      readonly fiber: Fiber.RuntimeFiber<unknown, unknown>
      readonly done: (result: Effect.Effect<Result, RelayError>) => void
      cancel: Cancel | undefined
    }

    const startDirect = (direct: Direct, started: Effect.Effect<Result, RelayError> | Start): Effect.Effect<Result, RelayError> => {
      if (Effect.isEffect(started)) return started
      direct.cancel = started(direct.done)
      return STARTED
    }

    const unsafeChat = (
      caller: Caller,
      request: OpenAI.ChatCompletionRequest,
      options: CallOptions | undefined,
      done: (result: Effect.Effect<Result, RelayError>) => void
    ): Effect.Effect<Result, RelayError> | Cancel => {
      if (!hotPath || (isCacheable(request) && (options?.cache?.lookup !== false || options.cache.store !== false))) {
        return chat(request, options)
      }
      const direct: Direct = { fiber: caller[CallerTypeId], done, cancel: undefined }
      const effect = json(CHAT, request, OpenAI.estimateTokens(request), options, OpenAI.inspectChatCompletion, "bypass", request, direct)
      return direct.cancel ?? effect
    }

    // ----- the hot path ---------------------------------------------------------

    const unsafeActive = cooldowns.unsafeActive
    const unsafePlan = router.unsafePlan
    const budgetMillis = Duration.toMillis(budget)
    /** Whether this relay can take the hot path at all (traces, remote cooldowns and attempts off take the general one). */
    const hotPath = tracing === undefined && maxAttempts >= 1 && unsafeActive !== undefined && unsafePlan !== undefined

    /**
     * The first attempt of a non-streaming request, decided in one
     * synchronous step and run as one asynchronous HTTP call, with one
     * handler for its end: no fiber, no FiberRef, a handful of effect
     * operations. Admission is what the general path decides, read without
     * effects: the cooldowns and the router's plan (with the fiber's `Random`,
     * the same draws), the account limits (memory store), a free bulkhead
     * slot, a closed breaker; the call's time limit (attempt timeout or
     * deadline) is its own timer. A success is recorded at once: breaker,
     * slot, upstream stats, metrics (prebuilt handles, `unsafeUpdate`),
     * cost.
     *
     * Anything else goes to the general path, with what was decided so far
     * (the plan, the progress, the attempt's outcome): a failure or a
     * timeout (failover, retries, cooldowns), a refusal by our own limits, a
     * breaker not closed (probes), a full bulkhead, panic mode, stores that
     * are not in this process (Redis), a Random without synchronous draws.
     */
    const hot = (
      fiber: Fiber.RuntimeFiber<Result, RelayError>,
      general: (resume?: Resume<readonly [Classified, number]>) => Effect.Effect<Result, RelayError>,
      path: string,
      request: { readonly model: string },
      tokens: number,
      options: CallOptions | undefined,
      inspect: (text: string) => ReturnType<typeof OpenAI.inspectChatCompletion>,
      status: ResponseCache.Status,
      chatRequest: OpenAI.ChatCompletionRequest | undefined
    ): Effect.Effect<Result, RelayError> => {
      const started = hotStart(fiber, general, path, request, tokens, options, inspect, status, chatRequest)
      if (Effect.isEffect(started)) return started
      return Effect.async<Result, RelayError>((resume) => {
        const cancel = started(resume)
        // The caller left: the call is aborted and the slot given back (the
        // breaker heard nothing, as under `protect`).
        return Effect.async<void>((resumeCancel) => cancel(resumeCancel))
      })
    }

    /**
     * {@link hot}'s decisions: the general path's effect (handed over), or
     * the call to start (it reports to `resume` once and returns its cancel).
     */
    const hotStart = (
      fiber: Fiber.RuntimeFiber<unknown, unknown>,
      general: (resume?: Resume<readonly [Classified, number]>) => Effect.Effect<Result, RelayError>,
      path: string,
      request: { readonly model: string },
      tokens: number,
      options: CallOptions | undefined,
      inspect: (text: string) => ReturnType<typeof OpenAI.inspectChatCompletion>,
      status: ResponseCache.Status,
      chatRequest: OpenAI.ChatCompletionRequest | undefined
    ): Effect.Effect<Result, RelayError> | Start => {
      const pin = options?.upstream
      const servers = pin === undefined ? serving(request.model) : servingUnder(request.model, pin)
      if (servers.length === 0) return general()
      // A caller's `timeout` may only shorten the request's deadline.
      const timeout = options?.timeout
      const reqBudget = timeout === undefined || Duration.greaterThan(timeout, budget) ? budget : timeout
      const services = fiber.currentDefaultServices
      const random = (Context.get(services, Random.Random) as unknown as { readonly PRNG?: Router.UnsafeRandom }).PRNG
      if (random === undefined || typeof random.number !== "function" || typeof random.integer !== "function") return general()
      const clock = Context.get(services, Clock.Clock)
      const now = clock.unsafeCurrentTimeMillis()
      // The request's deadline, as `withCooperativeDeadline` sets it: its
      // own, unless an enclosing one is sooner.
      const outer = Timeout.unsafeDeadlineOf(fiber)
      const own = now + (reqBudget === budget ? budgetMillis : Duration.toMillis(reqBudget))
      const deadline = outer !== undefined && outer[0] <= own ? undefined : own
      const active = unsafeActive!(now)
      const plan = unsafePlan!(servers, now, active, random)
      const progress = newProgress()
      const handOver = (first: Attempted<readonly [Classified, number]> | undefined) =>
        general({ progress, deadline, now, active, plan, first })
      if (plan.panic || plan.order.length === 0) return handOver(undefined)

      const u = plan.order[0]!
      const bulkhead = u.bulkhead
      const breaker = u.breaker
      const requestLimit = u.requestLimit
      const tokenLimit = u.tokenLimit
      // What can be decided here, checked before anything is taken.
      if (
        bulkhead.unsafeTryAcquire === undefined || bulkhead.unsafeRelease === undefined ||
        breaker.unsafeTryAdmit === undefined || breaker.unsafeRecord === undefined ||
        (requestLimit !== undefined && requestLimit.unsafeTryAcquire === undefined) ||
        (tokenLimit !== undefined && tokenLimit.unsafeTryAcquire === undefined)
      ) return handOver(undefined)
      const slots = bulkhead.unsafeStats()
      if (slots.available <= 0 || slots.waiting > 0) return handOver(undefined)
      const ticket = breaker.unsafeTryAdmit()
      if (ticket === undefined) return handOver(undefined)
      const limit = limitOf(u, outer !== undefined && deadline === undefined ? outer : [own, reqBudget], now)
      if (limit.millis <= 0) return handOver(undefined)

      // The account limits, in the general path's order; a refusal skips the upstream.
      const tags = fiber.getFiberRef(FiberRef.currentMetricLabels)
      if (requestLimit !== undefined && !requestLimit.unsafeTryAcquire!("account", 1, now, tags)) {
        return handOver({ _tag: "Skipped", reason: "local rate limit reached" })
      }
      if (tokenLimit !== undefined && !tokenLimit.unsafeTryAcquire!("account", tokens, now, tags)) {
        return handOver({ _tag: "Skipped", reason: "local rate limit reached" })
      }
      const pacer = Pacing.pacerOf(u)
      if (!pacer.tryTake(now)) return handOver({ _tag: "Skipped", reason: PACED })
      if (!bulkhead.unsafeTryAcquire()) {
        pacer.giveBack(now)
        return handOver({ _tag: "Skipped", reason: "bulkhead full" })
      }

      progress.attempts = 1
      retryBudget.recordPrimary()
      const started = now
      const body = bodyFor(u, request, options?.rawBody)
      // The slot goes back once, whoever gets there first: the call's end,
      // or a caller who leaves just as the answer comes in.
      let holding = true
      const releaseSlot = (): Effect.Effect<void> | undefined => {
        if (!holding) return undefined
        holding = false
        return bulkhead.unsafeRelease!()
      }

      /** How the call ended: a success is settled here; anything else by the general path's rules. */
      const settle = (exit: Exit.Exit<Reply, UpstreamUnreachable | UpstreamTimeout | Timeout.DeadlineExceeded>) => {
        if (exit._tag === "Success" && exit.value.status === 200) {
          const reply = exit.value
          const inspected = inspect(reply.text)
          if (inspected._tag === "Ok") {
            const end = clock.unsafeCurrentTimeMillis()
            const effects: Array<Effect.Effect<void>> = []
            const headroom = noteHeadroom(u, reply.headers)
            if (headroom !== Effect.void) effects.push(headroom)
            const transition = breaker.unsafeRecord!(ticket, Exit.void, end, started)
            if (transition !== undefined) effects.push(transition)
            const handoff = releaseSlot()
            if (handoff !== undefined) effects.push(handoff)
            const latency = end - started
            Upstream.record(u, end, latency, undefined)
            requestsBy(u.name, "ok").unsafeUpdate(1, tags)
            latencyBy(u.name).unsafeUpdate(latency, tags)
            const model = u.modelFor(request.model) ?? request.model
            const classified: Classified = { _tag: "Ok", body: reply.text, usage: inspected.usage }
            const { costUsd, metadata, usage } = priced(model, request.model, classified, started, end, u, progress, status, chatRequest)
            const key = options?.key ?? "anonymous"
            if (pricing.unsafeRecord !== undefined) pricing.unsafeRecord({ upstream: u.name, model, key }, usage, costUsd, tags)
            else effects.push(pricing.record({ upstream: u.name, model, key }, usage, costUsd))
            const result: Result = { body: reply.text, metadata }
            return effects.length === 0 ? Exit.succeed(result) : Effect.as(Effect.all(effects, { discard: true }), result)
          }
        }
        return failed(exit)
      }

      /** A failed call, as `guarded` and `jsonAttempt` record it; then the general path's failover. */
      const failed = (
        exit: Exit.Exit<Reply, UpstreamUnreachable | UpstreamTimeout | Timeout.DeadlineExceeded>
      ): Effect.Effect<Result, RelayError> => {
        const settleWith = (cause: Exit.Exit<unknown, unknown>): Effect.Effect<void> => {
          const effects: Array<Effect.Effect<void>> = []
          const transition = breaker.unsafeRecord!(ticket, cause, clock.unsafeCurrentTimeMillis(), started)
          if (transition !== undefined) effects.push(transition)
          const handoff = releaseSlot()
          if (handoff !== undefined) effects.push(handoff)
          return effects.length === 0 ? Effect.void : Effect.all(effects, { discard: true })
        }
        let error: Effect.Effect<UpstreamError | Timeout.DeadlineExceeded>
        if (exit._tag === "Failure") {
          const failure = Cause.failureOption(exit.cause)
          // A defect of the client's: recorded as the breaker records one, and passed on.
          if (failure._tag === "None") return Effect.zipRight(settleWith(exit), exit as Exit.Exit<never, never>)
          error = Effect.succeed(failure.value)
        } else {
          const reply = exit.value
          if (reply.status !== 200) {
            error = statusError(u, reply.status, reply.headers, reply.text)
          } else {
            const inspected = inspect(reply.text)
            error = Effect.succeed(
              inspected._tag === "Quota"
                ? new QuotaExhausted({ upstream: u.name, code: inspected.problem.code })
                : new InvalidResponse({ upstream: u.name, reason: inspected._tag === "Invalid" ? inspected.problem.kind : "unknown" })
            )
          }
        }
        return Effect.flatMap(error, (e) => {
          const settled = settleWith(Exit.fail(e))
          if (e._tag === "DeadlineExceeded") {
            return Effect.zipRight(settled, Effect.fail(new DeadlineExceededOn(e.budget, u.name, progress.attempts)))
          }
          const end = clock.unsafeCurrentTimeMillis()
          Upstream.record(u, end, end - started, e)
          requestsBy(u.name, e._tag).unsafeUpdate(1, tags)
          latencyBy(u.name).unsafeUpdate(end - started, tags)
          return Effect.zipRight(settled, handOver({ _tag: "Failed", error: e }))
        })
      }

      return (resume: (result: Effect.Effect<Result, RelayError>) => void): Cancel => {
        const cancel = startTimedCall(fiber, clock, limit, u, path, body, undefined, (exit) => {
          // Inside the HTTP stack's callback: nothing may throw out of here.
          try {
            resume(settle(exit))
          } catch (defect) {
            resume(Effect.die(defect))
          }
        })
        return (then) =>
          cancel(() => {
            const handoff = releaseSlot()
            then(handoff ?? Effect.void)
          })
      }
    }

    const chatUncached = (request: OpenAI.ChatCompletionRequest, options: CallOptions | undefined, status: ResponseCache.Status) =>
      json(CHAT, request, OpenAI.estimateTokens(request), options, OpenAI.inspectChatCompletion, status, request)

    const chat = (request: OpenAI.ChatCompletionRequest, options?: CallOptions): Effect.Effect<Result, RelayError> => {
      if (!isCacheable(request) || (options?.cache?.lookup === false && options.cache.store === false)) {
        return chatUncached(request, options, "bypass")
      }
      // The cache stores "<upstream>\n<body>": cheap to write and to split.
      // A fallback model's answer is "<upstream>\0<model>\n<body>" for the
      // requests that joined its flight, and is then dropped: the caller
      // asked for another model, which may be back next time.
      let fresh: Result | undefined
      const compute = Effect.map(chatUncached(request, options, "miss"), (result) => {
        fresh = result
        return result.metadata.model === request.model
          ? `${result.metadata.upstream}\n${result.body}`
          : `${result.metadata.upstream}\u0000${result.metadata.model}\n${result.body}`
      })
      return Effect.clockWith((clock) => {
        const started = clock.unsafeCurrentTimeMillis()
        const k = cache.key(request, sharedCache ? undefined : options?.key ?? "anonymous")
        return Effect.flatMap(cache.getOrCompute(k, compute, options?.cache), (lookup): Effect.Effect<Result> => {
          if (lookup.status !== "hit" && fresh !== undefined) {
            const result: Result = { ...fresh, metadata: { ...fresh.metadata, cache: lookup.status } }
            return fresh.metadata.model === request.model ? Effect.succeed(result) : Effect.as(cache.invalidate(k), result)
          }
          const nl = lookup.value.indexOf("\n")
          const head = lookup.value.slice(0, nl)
          const sep = head.indexOf("\u0000")
          return Effect.succeed({
            body: lookup.value.slice(nl + 1),
            metadata: {
              upstream: sep < 0 ? head : head.slice(0, sep),
              model: sep < 0 ? request.model : head.slice(sep + 1),
              attempts: 0,
              latencyMs: clock.unsafeCurrentTimeMillis() - started,
              cache: "hit",
              usage: undefined,
              costUsd: 0,
              usageEstimated: false,
              failures: []
            }
          })
        })
      })
    }

    const embeddings = (request: OpenAI.EmbeddingsRequest, options?: CallOptions): Effect.Effect<Result, RelayError> =>
      json(EMBEDDINGS, request, 0, options, OpenAI.inspectEmbeddings, "bypass", undefined)

    // ----- streaming ------------------------------------------------------------

    const errorEvent = (message: string, type = "upstream_error") =>
      `data: ${OpenAI.errorBody(message, type, null, type)}\n\n`

    interface Opened {
      readonly first: Chunk.Chunk<Sse.Event>
      readonly pull: Effect.Effect<Chunk.Chunk<Sse.Event>, Option.Option<UpstreamError>>
      /** Ends the upstream's body now; a read waiting on it fails. */
      readonly cut: Effect.Effect<void>
    }

    interface Streaming extends Opened {
      /** The attempt's breaker permit (none in panic mode), settled when the stream ends. */
      readonly permit: CircuitBreaker.Permit | undefined
      readonly started: number
      /** From the attempt's start to its first event. */
      readonly firstEventMs: number
      /** The attempt's span and what it learnt, when tracing: ended when the stream ends. */
      readonly trace: AttemptTrace | undefined
      /** Closes the attempt's scope: its slot, permit and connection. */
      readonly release: Effect.Effect<void>
    }

    /**
     * Opens a stream on `u` and reads up to its first event, all inside the
     * attempt (so failover is still possible); the rest is read later.
     */
    const openStream = (
      u: Upstream.Upstream,
      body: string | Uint8Array,
      scope: Scope.Scope,
      headers?: Readonly<Record<string, string>>,
      trace?: AttemptTrace
    ): Effect.Effect<Opened, UpstreamError> =>
      Effect.gen(function*() {
        // The body has a scope of its own inside the attempt's, so that the
        // idle timeout can end it under a waiting read without closing the
        // pull that read runs in.
        const bodyScope = yield* Scope.fork(scope, ExecutionStrategy.sequential)
        const pacer = Pacing.pacerOf(u)
        const clock = yield* Effect.clock
        pacer.sent()
        const reply = yield* Scope.extend(client.postStream(u, CHAT, body, headers), bodyScope).pipe(
          Effect.onExit((exit) =>
            Effect.sync(() => {
              const now = clock.unsafeCurrentTimeMillis()
              if (exit._tag === "Success") pacer.answered(now, exit.value.status, exit.value.headers)
              else pacer.done(now)
            })
          )
        )
        if (trace !== undefined) trace.status = reply.status
        if (reply.status !== 200) {
          const text = yield* Stream.runFold(Stream.decodeText(reply.body), "", (a, b) => a + b).pipe(
            Effect.catchAll(() => Effect.succeed(""))
          )
          return yield* Effect.flatMap(statusError(u, reply.status, reply.headers, text), Effect.fail)
        }
        yield* noteHeadroom(u, reply.headers, trace)
        const events = reply.body.pipe(
          Stream.decodeText(),
          Stream.pipeThroughChannel(Sse.makeChannel())
        )
        const pull = yield* Scope.extend(Stream.toPull(events), scope)
        // Read until the first event; an end or error before it is the upstream's failure.
        let first = Chunk.empty<Sse.Event>()
        while (Chunk.isEmpty(first)) {
          const next = yield* Effect.either(pull)
          if (next._tag === "Left") {
            return yield* Option.match(next.left, {
              onNone: () => Effect.fail(new InvalidResponse({ upstream: u.name, reason: "stream ended before any event" })),
              onSome: Effect.fail
            })
          }
          first = next.right
        }
        const head = Chunk.unsafeHead(first)
        const inspected = OpenAI.inspectStreamChunk(head.data)
        if (inspected._tag === "Quota") {
          return yield* Effect.fail(new QuotaExhausted({ upstream: u.name, code: inspected.problem.code }))
        }
        if (inspected._tag === "Error") {
          return yield* Effect.fail(new InvalidResponse({ upstream: u.name, reason: inspected.problem.detail }))
        }
        return { first, pull, cut: Scope.close(bodyScope, Exit.void) }
      })

    /**
     * The body sent for a stream. Usage is asked for on every stream, so
     * that every stream can be priced and charged: when the caller did not
     * ask, `stream_options.include_usage` is added (and the usage-only chunk
     * it brings is not passed on).
     */
    const streamBodyFor = (
      u: Upstream.Upstream,
      request: OpenAI.ChatCompletionRequest,
      raw: string | Uint8Array | undefined,
      callerAsked: boolean
    ): string | Uint8Array => {
      if (callerAsked) return bodyFor(u, request, raw)
      const target = u.modelFor(request.model)!
      // Usually the caller sent no stream_options: the field is added to the
      // caller's bytes, which are otherwise forwarded as they came.
      if (target === request.model && raw !== undefined && request.stream_options === undefined) {
        return withUsageOption(raw)
      }
      return JSON.stringify({
        ...request,
        model: target,
        stream_options: { ...request.stream_options, include_usage: true }
      })
    }

    /**
     * A stream: failover up to the first event (each attempt under the
     * upstream's `timeout`), then the upstream's events as they come. The
     * attempt's bulkhead slot, breaker permit and connection are held until
     * the stream ends; its outcome (completed, failed, abandoned) is recorded
     * once, when it ends: breaker, upstream stats, metrics, cost.
     */
    const chatStream = (request: OpenAI.ChatCompletionRequest, options?: CallOptions): Effect.Effect<StreamResult, RelayError> =>
      Effect.gen(function*() {
        // The stream outlives this effect: its connection, bulkhead slot and
        // pull live in a scope closed when the stream ends.
        const scope = yield* Scope.make()
        const tokens = OpenAI.estimateTokens(request)
        const callerAsked = request.stream_options?.include_usage === true
        /** An attempt for `request` (the asked model's, or a fallback's under its name; `raw`: the caller's bytes). */
        const attemptFor = (request: OpenAI.ChatCompletionRequest, raw: string | Uint8Array | undefined) =>
        (u: Upstream.Upstream, progress: Progress, panic: boolean) => {
          const trace = tracing === undefined ? undefined : newTrace()
          /** The attempt's scope, for an attempt interrupted (a hedge's loser): released at once. */
          let opening: Scope.CloseableScope | undefined
          const attempted = Effect.gen(function*() {
            const clock = yield* Effect.clock
            const started = clock.unsafeCurrentTimeMillis()
            // Each attempt gets its own scope inside the stream's: a failed
            // attempt gives its slot, permit and connection back at once.
            const attemptScope = yield* Scope.fork(scope, ExecutionStrategy.sequential)
            opening = attemptScope
            const release = Scope.close(attemptScope, Exit.void)
            const slot = yield* Effect.either(Scope.extend(u.bulkhead.acquire, attemptScope))
            if (Either.isLeft(slot)) {
              yield* release
              return { _tag: "Skipped", reason: "bulkhead full" } as Attempted<Streaming>
            }
            // The breaker hears the outcome when the stream ends, not when it
            // starts: a permit held for the stream (none in panic mode, where
            // the breaker is bypassed on purpose).
            let permit: CircuitBreaker.Permit | undefined
            if (!panic) {
              const admitted = yield* Effect.either(
                Scope.extend(Effect.acquireRelease(u.breaker.tryAcquirePermission, (p) => p.release), attemptScope)
              )
              if (Either.isLeft(admitted)) {
                yield* release
                return { _tag: "Skipped", reason: `circuit ${admitted.left.state}` } as Attempted<Streaming>
              }
              permit = admitted.right
            }
            const call = Effect.suspend(() => {
              countCall(progress)
              const body = streamBodyFor(u, request, raw, callerAsked)
              if (trace === undefined) return openStream(u, body, attemptScope)
              return startAttempt(
                u,
                "chat",
                u.modelFor(request.model) ?? request.model,
                progress.attempts,
                trace,
                (headers) => openStream(u, body, attemptScope, headers, trace)
              )
            })
            const outcome = yield* guarded(u, tokens, call, "held", panic, progress, "held").pipe(
              Effect.onError(() => release)
            )
            if (outcome._tag === "Ok") {
              const firstEventMs = clock.unsafeCurrentTimeMillis() - started
              return { _tag: "Ok", value: { ...outcome.value, permit, started, firstEventMs, trace, release } } as Attempted<Streaming>
            }
            if (outcome._tag === "Failed") {
              const now = clock.unsafeCurrentTimeMillis()
              Upstream.record(u, now, now - started, outcome.error)
              yield* Metric.increment(requestsBy(u.name, outcome.error._tag))
              if (permit !== undefined) yield* permit.onError(outcome.error)
            }
            yield* release
            return outcome
          })
          const interruptible = hedgeOn
            ? Effect.onInterrupt(attempted, () => opening === undefined ? Effect.void : Scope.close(opening, Exit.void))
            : attempted
          return trace === undefined
            ? interruptible
            : Effect.clockWith((clock) => Effect.onExit(interruptible, (exit) => endAttempt(u, trace, clock, exit, true)))
        }
        const hedgeOn = hedging !== undefined && options?.hedge !== false
        /** A losing stream that had sent its first event all the same: closed, nothing learnt. */
        const discard = (lost: Streaming, u: Upstream.Upstream): Effect.Effect<void> =>
          Effect.zipRight(
            Metric.increment(requestsBy(u.name, "interrupted")),
            lost.trace === undefined ? lost.release : Effect.zipRight(
              Effect.clockWith((clock) => endAttemptSpan(u, lost.trace!, clock, "interrupted", undefined)),
              lost.release
            )
          )
        const [opened, u, progress] = yield* failover(
          policyOf(request.model, options),
          attemptFor(request, options?.rawBody),
          (model) => attemptFor({ ...request, model }, undefined),
          undefined,
          hedgeOn ? discard : undefined
        ).pipe(
          Effect.onError(() => Scope.close(scope, Exit.void))
        )
        const clock = yield* Effect.clock
        const key = options?.key ?? "anonymous"
        const answered = progress.model ?? request.model
        const priced = u.modelFor(answered) ?? answered
        const idle = u.streamIdleTimeout ?? streamIdleTimeout
        const idleMillis = Duration.toMillis(idle)

        let usage: OpenAI.Usage | undefined
        let usageEstimated = false
        let costUsd: number | undefined
        /** Characters of generated text seen, for an estimate when no usage comes. */
        let generated = 0
        let sawDone = false
        let reachedEnd = false
        let idled = false
        let streamError: UpstreamError | undefined
        let ended: StreamOutcome | undefined
        let latencyMs = 0
        /** Clock time since which a read waits on the upstream; undefined while none does. */
        let waitingSince: number | undefined

        const relayEvent = (event: Sse.Event): string | undefined => {
          const data = event.data
          if (data === "[DONE]") {
            sawDone = true
            return "data: [DONE]\n\n"
          }
          generated += OpenAI.generatedChars(data)
          // Most chunks are relayed untouched; only those that carry a usage
          // object or an error are parsed.
          if (OpenAI.hasUsageObject(data) || data.includes("\"error\"")) {
            const inspected = OpenAI.inspectStreamChunk(data)
            if (inspected._tag === "Chunk" && inspected.usage !== undefined) {
              usage = inspected.usage
              const choices = inspected.json.choices
              // The usage-only chunk the caller did not ask for stays here.
              if (!callerAsked && Array.isArray(choices) && choices.length === 0) return undefined
            } else if (inspected._tag === "Quota") {
              streamError ??= new QuotaExhausted({ upstream: u.name, code: inspected.problem.code })
            } else if (inspected._tag === "Error") {
              streamError ??= new InvalidResponse({ upstream: u.name, reason: inspected.problem.detail })
            }
          }
          return `data: ${data}\n\n`
        }
        const relayChunk = (events: Chunk.Chunk<Sse.Event>): Chunk.Chunk<string> => {
          const out: Array<string> = []
          for (const event of events) {
            const text = relayEvent(event)
            if (text !== undefined) out.push(text)
          }
          return Chunk.unsafeFromArray(out)
        }

        const pull = Effect.suspend(() => {
          waitingSince = clock.unsafeCurrentTimeMillis()
          return Effect.map(opened.pull, (events) => {
            waitingSince = undefined
            return events
          })
        })

        // One watchdog per stream, not a timer per read: it wakes when the
        // read in progress would reach the idle limit and cuts the upstream's
        // body if it has. A caller that reads slowly is not idleness.
        const watchdog: Effect.Effect<void> = Effect.suspend(() => {
          if (ended !== undefined) return Effect.void
          const now = clock.unsafeCurrentTimeMillis()
          if (waitingSince !== undefined && now - waitingSince >= idleMillis) {
            idled = true
            return opened.cut
          }
          const wait = waitingSince === undefined ? idleMillis : waitingSince + idleMillis - now
          return Effect.zipRight(Effect.sleep(Duration.millis(wait)), watchdog)
        })
        yield* Effect.forkIn(watchdog, scope)

        /** Records the stream's outcome, once, and releases what it holds. */
        const end: Effect.Effect<void> = Effect.suspend(() => {
          if (ended !== undefined) return Effect.void
          const outcome: StreamOutcome = streamError !== undefined ? "failed" : reachedEnd ? "completed" : "abandoned"
          ended = outcome
          const now = clock.unsafeCurrentTimeMillis()
          latencyMs = now - opened.started
          if (usage === undefined) {
            usageEstimated = true
            const prompt = OpenAI.estimatePromptTokens(request)
            const completion = OpenAI.estimateCompletionTokens(generated)
            usage = { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
          }
          costUsd = pricing.cost(priced, usage)
          const effects: Array<Effect.Effect<void>> = [pricing.record({ upstream: u.name, model: priced, key }, usage, costUsd)]
          if (outcome === "completed") {
            Upstream.record(u, now, opened.firstEventMs, undefined)
            effects.push(
              Metric.increment(requestsBy(u.name, "ok")),
              Metric.update(latencyBy(u.name), opened.firstEventMs)
            )
            if (opened.permit !== undefined) effects.push(opened.permit.onSuccess(opened.firstEventMs))
          } else if (outcome === "failed") {
            const error = streamError!
            Upstream.record(u, now, opened.firstEventMs, error)
            effects.push(Metric.increment(requestsBy(u.name, error._tag)), coolDown(error))
            if (opened.permit !== undefined) effects.push(opened.permit.onError(error))
          } else {
            // The caller left: nothing learnt about the upstream (the permit
            // is released, neutral, with the scope).
            effects.push(Metric.increment(requestsBy(u.name, "abandoned")))
          }
          const trace = opened.trace
          if (trace?.span !== undefined) {
            // After the breaker heard the outcome, so that its span sees any change of state.
            spanUsage(trace.span, undefined, usage, costUsd)
            trace.span.attribute("breakwater.stream.outcome", outcome)
            trace.span.attribute("breakwater.first_event_ms", opened.firstEventMs)
            if (usageEstimated) trace.span.attribute("breakwater.usage_estimated", true)
            if (outcome === "failed") trace.cooldown ??= cooldownFor(streamError!)
            effects.push(
              endAttemptSpan(u, trace, clock, outcome === "completed" ? "ok" : outcome, outcome === "failed" ? streamError : undefined)
            )
          }
          effects.push(Scope.close(scope, Exit.void))
          return Effect.all(effects, { discard: true })
        })

        const events: Stream.Stream<string> = Stream.suspend(() => Stream.fromChunk(relayChunk(opened.first))).pipe(
          Stream.concat(Stream.mapChunks(Stream.repeatEffectChunkOption(pull), relayChunk)),
          // After the first event there is no failing over: a failure becomes
          // an error event, and an end without [DONE] is reported, not hidden.
          Stream.catchAll((error) => {
            streamError ??= idled ? new UpstreamTimeout({ upstream: u.name, timeout: idle, idle: true }) : error
            return Stream.make(errorEvent(`upstream stream failed: ${reasonOf(streamError)}`))
          }),
          Stream.concat(Stream.suspend(() => {
            reachedEnd = true
            if (sawDone || streamError !== undefined) return Stream.empty
            streamError = new InvalidResponse({ upstream: u.name, reason: "stream ended before [DONE]" })
            return Stream.make(errorEvent("upstream stream ended before [DONE]"))
          })),
          Stream.ensuring(end)
        )
        const done: Effect.Effect<Metadata> = Effect.map(end, (): Metadata => ({
          upstream: u.name,
          model: answered,
          attempts: progress.attempts,
          latencyMs,
          cache: "bypass",
          usage,
          costUsd,
          usageEstimated,
          failures: progress.failures.map((f) => `${f.upstream}: ${f.reason}`),
          streamOutcome: ended,
          ...(streamError === undefined ? {} : { streamError: reasonOf(streamError) }),
          ...(progress.hedge === undefined ? {} : { hedge: progress.hedge })
        }))
        return { events, upstream: u.name, model: answered, attempts: progress.attempts, done }
      })

    const ready = Effect.clockWith((clock) => {
      const now = clock.unsafeCurrentTimeMillis()
      return Effect.flatMap(cooldowns.active(now), (active) =>
        Effect.map(router.plan(upstreams, now, active), (plan) => plan.order.length > 0))
    })

    return Relay.of({ chat, unsafeChat, chatStream, embeddings, upstreams, models, ready, fallbacksOf, maxAttempts, requestTimeout: budget, retryBudget, hedges: () => ({ ...hedgeTally }) })
  })

const USAGE_OPTION = `,"stream_options":{"include_usage":true}`
const usageOptionBytes = new TextEncoder().encode(USAGE_OPTION)

/** A JSON object's text (or UTF-8 bytes) with `stream_options.include_usage: true` added before its closing brace. */
const withUsageOption = (raw: string | Uint8Array): string | Uint8Array => {
  if (typeof raw === "string") {
    const at = raw.lastIndexOf("}")
    return at < 0 ? raw : raw.slice(0, at) + USAGE_OPTION + raw.slice(at)
  }
  const at = raw.lastIndexOf(0x7d)
  if (at < 0) return raw
  const out = new Uint8Array(raw.length + usageOptionBytes.length)
  out.set(raw.subarray(0, at), 0)
  out.set(usageOptionBytes, at)
  out.set(raw.subarray(at), at + usageOptionBytes.length)
  return out
}

/** Our own protections' refusals: no upstream call was made. */
type Refusal =
  | RateLimiter.RateLimited
  | RateLimiter.RateLimiterStoreError
  | Bulkhead.BulkheadFull
  | CircuitBreaker.CircuitOpen

const classifyOutcome = <A>(
  effect: Effect.Effect<A, Refusal | UpstreamError | Timeout.DeadlineExceeded>,
  upstream: string,
  progress: { readonly attempts: number }
): Effect.Effect<Attempted<A>, Timeout.DeadlineExceeded> =>
  effect.pipe(
    Effect.map((value): Attempted<A> => ({ _tag: "Ok", value })),
    Effect.catchAll((e): Effect.Effect<Attempted<A>, Timeout.DeadlineExceeded> => {
      switch (e._tag) {
        case "DeadlineExceeded":
          // With the calls made so far, for the caller's logs.
          return Effect.fail(new DeadlineExceededOn(e.budget, upstream, progress.attempts))
        case "RateLimited":
          return Effect.succeed({ _tag: "Skipped", reason: "local rate limit reached" })
        case "RateLimiterStoreError":
          return Effect.succeed({ _tag: "Skipped", reason: "rate limit store unavailable" })
        case "BulkheadFull":
          return Effect.succeed({ _tag: "Skipped", reason: "bulkhead full" })
        case "CircuitOpen":
          return Effect.succeed({ _tag: "Skipped", reason: `circuit ${e.state}` })
        default:
          return Effect.succeed({ _tag: "Failed", error: e })
      }
    })
  )

export const layer = (
  options: Options
): Layer.Layer<
  Relay,
  never,
  RateLimiter.RateLimiterStore | Cooldown.CooldownStore | UpstreamClient | Pricing.Pricing | ResponseCache.ResponseCache
> => Layer.scoped(Relay, make(options))
