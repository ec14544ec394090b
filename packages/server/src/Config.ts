/**
 * The server's configuration file: YAML or JSON, with `${ENV_VAR}`
 * interpolation, validated with `effect/Schema` into a typed `ServerConfig`.
 *
 * ```yaml
 * server:
 *   host: 127.0.0.1                       # default 127.0.0.1
 *   port: 8080                            # default 8080
 *   adminKey: ${BREAKWATER_ADMIN_KEY}     # optional
 *   maxBodyBytes: 10485760                # default 10 MiB
 *   console: true                         # default true: GET /console and /admin/events (need adminKey)
 *   logLevel: info                        # trace | debug | info | warning | error | fatal | none
 *   shutdownTimeout: 10s                  # exit within this (+1s) after SIGTERM/SIGINT
 *   drainGrace: 2s                        # new requests get 503 this long before the listener closes
 *   maxConnections: 10000                 # client connections open at once; more are closed at once
 *   bodyTimeout: 30s                      # a request must arrive in full within this (else 408)
 *   headersTimeout: 10s                   # its headers within this
 *   keepAliveTimeout: 65s                 # an idle kept-alive connection is closed after this
 * keys:                                   # gateway keys; optional
 *   - name: team-a
 *     key: ${TEAM_A_KEY}
 *     requestsPerMinute: 600
 *     tokensPerMinute: 200000
 *     budgetUsd: 50
 *     budgetPeriod: month                 # day | week | month (UTC calendar) | total (default)
 * upstreams:                              # required, at least one
 *   - name: primary
 *     baseUrl: https://relay.example.com/v1
 *     apiKey: ${PRIMARY_API_KEY}
 *     models: [gpt-4.1, deepseek-v3.2]    # or "*" (the default)
 *     aliases: { gpt-4: gpt-4.1 }
 *     priority: 1
 *     weight: 1
 *     maxConcurrent: 20
 *     requestsPerMinute: 3000
 *     tokensPerMinute: 400000
 *     timeout: 30s
 *     streamIdleTimeout: 60s              # overrides routing.streamIdleTimeout
 *     breaker: { failureThreshold: 5 }    # overrides of the section below
 *     retry: { maxRetries: 1 }            # maxRetries, baseDelay, maxDelay
 *     kind: openai                        # openai (default) | azure-openai | anthropic | gemini
 *     auth: bearer                        # openai, azure-openai: bearer | api-key | none (apiKey optional then)
 *     headers: { OpenAI-Organization: "${ORG_ID}" }   # static extra headers (secrets: never shown)
 *   - name: azure
 *     kind: azure-openai
 *     baseUrl: https://my-resource.openai.azure.com
 *     apiKey: ${AZURE_KEY}
 *     deployments: { gpt-4.1: my-gpt41 }  # required for azure-openai: model -> deployment
 *     apiVersion: 2024-10-21              # azure-openai (api-version) and anthropic (anthropic-version)
 * routing: { strategy: priority, maxAttempts: 3, requestTimeout: 60s, streamIdleTimeout: 60s,
 *            fallbacks: { gpt-4.1: [claude-sonnet-4.5, gemini-2.5-flash] } }   # when every gpt-4.1 upstream failed
 * #        pacing: { queue: 100 }       # requests that may wait for a rate-limited upstream's window (0: off)
 * #        hedge: { after: p95, maxExtra: 10% }   # off unless set; after: a duration or p50..p99.9; sameUpstream: false
 * #        panic: 0.5                    # below half the upstreams' breakers closed, route across all; false: off
 * #        retryBudget: { enabled: true, ratio: 0.2, window: 10s, minPerSecond: 3 }
 * #                                      # calls beyond a request's first: at most 20% of first calls over 10 s
 * breaker: { failureThreshold: 10, successThreshold: 3, openDuration: 30s, halfOpenMaxCalls: 3 }
 * #        failureRate: { threshold: 0.5, minimumCalls: 20, window: 10s }   # the default; or calls: N instead of window
 * retry: { maxRetries: 2, baseDelay: 200ms, maxDelay: 5s, maxRetryAfter: 10s }
 * cooldown: { rateLimited: 1s, quota: 1h, authFailed: 5m, unreachable: 5s, headroomWatermark: 0 }
 * cache: { enabled: true, ttl: 5m, maxEntries: 10000, mode: deterministic, scope: key }
 *                                       # mode: deterministic (temperature 0 or a seed) | all
 *                                       # scope: key (per gateway key and user) | shared
 * healthCheck: { interval: 10s, timeout: 5s }
 * pricing:                               # over the shipped table (core's prices.json)
 *   models: { gpt-4.1: { input: 2.00, output: 8.00, cachedInput: 0.50 } }   # USD per million tokens
 *   unknown: highest                      # highest | reject | { input, output }: unpriced models, keys with a budget
 *   estimatedOutputTokens: 1024           # budget reservations, for requests without max_tokens
 * store: { kind: memory }                 # or { kind: redis, url: ..., prefix: "breakwater:", commandTimeout: 50ms }
 * telemetry:                              # traces over OTLP/HTTP; off without an endpoint
 *   otlp:
 *     endpoint: http://otel-collector:4318   # spans go to <endpoint>/v1/traces
 *     headers: { x-api-key: "${OTLP_KEY}" }  # secrets, sent with every export
 *   serviceName: breakwater               # default OTEL_SERVICE_NAME, else "breakwater"
 *   sampleRatio: 1                        # share of new traces kept (a caller's choice is followed)
 * ```
 *
 * Rules:
 * - A file ending in `.json` is read as JSON, anything else as YAML.
 * - `${NAME}` in a string value is replaced by the environment variable
 *   `NAME`; `${NAME:-default}` uses `default` when `NAME` is unset or empty;
 *   `$${` stands for a literal `${`. Interpolation happens after parsing, so a
 *   value can never change the file's structure. In a YAML flow collection
 *   (`{ ... }`, `[ ... ]`) quote the reference: `{ key: "${TEAM_A_KEY}" }`.
 * - Durations are strings with a unit: `200ms`, `30s`, `5m`, `1h`, `1d`,
 *   `1.5s`, `1m30s`. A plain number is not a duration.
 * - Numbers and booleans may also be given as strings (`port: ${PORT:-8080}`).
 * - Unknown fields are errors, so that a misspelt setting is not ignored.
 * - `pricing` may also list prices directly (`pricing: { gpt-4.1: {...} }`,
 *   the form of earlier versions): every field but `models`, `unknown` and
 *   `estimatedOutputTokens` is then a model's price.
 * - Every problem is reported at once, each with its path
 *   (`upstreams[0].timeout`). Secrets (`server.adminKey`, `keys[].key`,
 *   `upstreams[].apiKey`, `store.url`, `telemetry.otlp.headers`) are never
 *   shown in messages.
 * - Traces also follow the standard variables when the file does not say:
 *   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is) or
 *   `OTEL_EXPORTER_OTLP_ENDPOINT` (plus `/v1/traces`) turn them on,
 *   `OTEL_EXPORTER_OTLP_HEADERS` and `..._TRACES_HEADERS` add headers,
 *   `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` describe the service;
 *   `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn them off.
 *
 * Defaults not stated above are those of `@breakwater/core`.
 *
 * @since 0.1.0
 */
import type { Pricing, ProviderClient, Relay, Router, Spend, Upstream, UpstreamClient } from "@breakwater/core"
import * as Hedge from "@breakwater/core/Hedge"
import * as Pacing from "@breakwater/core/Pacing"
import * as RedisDefaults from "@breakwater/core/RedisDefaults"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as fs from "node:fs/promises"
import { parseDocument } from "yaml"

// ---------------------------------------------------------------------------
// The typed configuration

export interface ServerSection {
  readonly host: string
  readonly port: number
  /** The admin API's bearer key; the admin API is off without one. */
  readonly adminKey?: Redacted.Redacted<string> | undefined
  /** The operator console (`GET /console`, `GET /admin/events`); on unless false. Needs `adminKey`. */
  readonly console?: boolean | undefined
  readonly maxBodyBytes: number
  /** For `LogLevel.fromLiteral`; the file says `info`, `debug`, ... */
  readonly logLevel: LogLevel.Literal
  /** How long in-flight requests may take to finish on shutdown. */
  readonly shutdownTimeout: Duration.Duration
  /**
   * After SIGTERM/SIGINT, how long new requests (and /readyz) get 503 with
   * `Connection: close` before the listener closes; part of shutdownTimeout.
   */
  readonly drainGrace: Duration.Duration
  /** Client connections open at once; a new one beyond is closed at once. */
  readonly maxConnections: number
  /** A request (headers and body) must be received in full within this, else 408. */
  readonly bodyTimeout: Duration.Duration
  /** A request's headers must be received within this (at most bodyTimeout), else 408. */
  readonly headersTimeout: Duration.Duration
  /** An idle kept-alive connection is closed after this. */
  readonly keepAliveTimeout: Duration.Duration
}

/** A gateway key: who may call the server, and their limits. */
export interface KeyConfig {
  readonly name: string
  readonly key: Redacted.Redacted<string>
  readonly requestsPerMinute?: number | undefined
  readonly tokensPerMinute?: number | undefined
  readonly budgetUsd?: number | undefined
  /** The budget's period (UTC calendar); `total` (the default) never resets. */
  readonly budgetPeriod?: Spend.Period | undefined
}

/** A failure-rate rule, as in core's CircuitBreaker.FailureRate. */
export interface FailureRateConfig {
  readonly threshold: number
  readonly minimumCalls: number
  readonly window?: Duration.Duration | undefined
  readonly calls?: number | undefined
}

export interface BreakerConfig {
  readonly failureRate?: FailureRateConfig | undefined
  readonly failureThreshold: number
  readonly successThreshold: number
  readonly openDuration: Duration.Duration
  readonly halfOpenMaxCalls: number
}

export interface RetryConfig {
  readonly maxRetries: number
  readonly baseDelay: Duration.Duration
  readonly maxDelay: Duration.Duration
  readonly maxRetryAfter: Duration.Duration
}

export interface UpstreamConfig {
  readonly name: string
  readonly baseUrl: string
  readonly apiKey: Redacted.Redacted<string>
  readonly models: ReadonlyArray<string> | "*"
  readonly aliases: Readonly<Record<string, string>>
  readonly priority: number
  readonly weight: number
  readonly maxConcurrent: number
  readonly requestsPerMinute?: number | undefined
  readonly tokensPerMinute?: number | undefined
  readonly timeout: Duration.Duration
  /** Overrides `routing.streamIdleTimeout` for this upstream. */
  readonly streamIdleTimeout?: Duration.Duration | undefined
  /** Only the fields set in the file. */
  readonly breaker?: Partial<BreakerConfig> | undefined
  /** Only the fields set in the file. */
  readonly retry?: Partial<Pick<RetryConfig, "maxRetries" | "baseDelay" | "maxDelay">> | undefined
  /** The wire format the upstream speaks (core's `Translation.Kind`). Default `openai`. */
  readonly kind: UpstreamKind
  /** How the key is sent, for kinds `openai` (default `bearer`) and `azure-openai` (default `api-key`). */
  readonly auth: UpstreamAuth
  /** Static headers added to every call (values are secrets). Default none. */
  readonly headers: Readonly<Record<string, Redacted.Redacted<string>>>
  /** `azure-openai`: model (after aliases) -> deployment. */
  readonly deployments?: Readonly<Record<string, string>> | undefined
  /** `azure-openai`: the `api-version`; `anthropic`: the `anthropic-version`. Default: core's. */
  readonly apiVersion?: string | undefined
}

/** The wire formats an upstream may speak (core's `Translation.Kind`). */
export type UpstreamKind = "openai" | "azure-openai" | "anthropic" | "gemini"
const UPSTREAM_KINDS = ["openai", "azure-openai", "anthropic", "gemini"] as const
/** How an OpenAI-format upstream's key is sent (core's `OpenAICompatible.Auth`). */
export type UpstreamAuth = "bearer" | "api-key" | "none"
const UPSTREAM_AUTHS = ["bearer", "api-key", "none"] as const

export interface RoutingConfig {
  readonly strategy: Router.Strategy
  readonly maxAttempts: number
  readonly requestTimeout: Duration.Duration
  /**
   * The panic threshold (Router.Options.panic): below this share of
   * upstreams with a breaker admitting calls, route across all of them.
   * Default 0.5; `true` is 0.5, `false` turns it off.
   */
  readonly panic: boolean | number
  /** Calls beyond a request's first, at most a share of primary calls (core's RetryBudget). */
  readonly retryBudget: RetryBudgetConfig
  /** A stream silent this long after its first event is ended with an error event. */
  readonly streamIdleTimeout: Duration.Duration
  /** Model -> the models that answer, in order, when every upstream of that model failed. Default none. */
  readonly fallbacks: Readonly<Record<string, ReadonlyArray<string>>>
  /** Pacing (core's `Pacing`): how many requests may wait for one rate-limited upstream's window. Default 100; 0: off. */
  readonly pacing: { readonly queue: number }
  /** Hedging of slow first calls (core's `Hedge`); undefined: off (the default). */
  readonly hedge: HedgeConfig | undefined
}

export interface RetryBudgetConfig {
  /** Default true; false: only `maxAttempts` bounds retries. */
  readonly enabled: boolean
  /** Default 0.2. */
  readonly ratio: number
  /** Default 10 s. */
  readonly window: Duration.Duration
  /** Default 3. */
  readonly minPerSecond: number
}

/** `routing.hedge`, defaults filled in. */
export interface HedgeConfig {
  /** A fixed delay, or a percentile (`p95`) of the first upstream's recent latency. */
  readonly after: Duration.Duration | Hedge.Percentile
  /** Hedges as a share of requests over `window`. Default 0.1 (`10%`). */
  readonly maxExtra: number
  /** The cap's sliding window. Default 10 s. */
  readonly window: Duration.Duration
  /** Under `after: pNN`, the delay until the upstream has 20 measured calls. Default 1 s. */
  readonly initialDelay: Duration.Duration
  /** Under `after: pNN`, the shortest delay. Default 50 ms. */
  readonly minDelay: Duration.Duration
  /** With no other upstream eligible, hedge to the first call's own upstream (a second connection). Default false. */
  readonly sameUpstream: boolean
}

export interface CooldownConfig {
  readonly rateLimited: Duration.Duration
  readonly quota: Duration.Duration
  /** After an upstream refused its own key (401/403); a successful health probe ends it early. */
  readonly authFailed: Duration.Duration
  /** After an upstream refused the connection (nothing listening, no such host). Default 5 s. */
  readonly unreachable: Duration.Duration
  readonly headroomWatermark: number
}

export interface CacheConfig {
  readonly enabled: boolean
  readonly ttl: Duration.Duration
  readonly maxEntries: number
  /** `deterministic`: only `temperature: 0` or a `seed`; `all`: every exact match. */
  readonly mode: "all" | "deterministic"
  /** `key`: entries per gateway key (and `user`); `shared`: across keys (still per `user`). */
  readonly scope: "key" | "shared"
}

export interface HealthCheckConfig {
  readonly interval: Duration.Duration
  readonly timeout: Duration.Duration
}

export interface PricingPolicy {
  /** Keys with a budget and a model without a price: charge the highest price, refuse, or charge this price. */
  readonly unknown: "highest" | "reject" | Pricing.Price
  /** Output tokens a budget reserves for a request without `max_tokens`. */
  readonly estimatedOutputTokens: number
}

export type StoreConfig =
  | { readonly kind: "memory" }
  | {
    readonly kind: "redis"
    /** May hold a password, hence redacted. */
    readonly url: Redacted.Redacted<string>
    readonly prefix: string
    /** How long a Redis command may take before that call is answered from memory. Default 50 ms. */
    readonly commandTimeout: Duration.Duration
  }

/**
 * Traces, resolved from the file's `telemetry` section and the standard
 * `OTEL_*` variables (the file wins). Absent: no spans at all.
 */
export interface TelemetryConfig {
  /** Where spans are POSTed, OTLP/HTTP with protobuf bodies: the collector's `/v1/traces`. */
  readonly tracesUrl: string
  /** Sent with every export (a hosted collector's API key, say): secrets. */
  readonly headers: Readonly<Record<string, Redacted.Redacted<string>>>
  readonly serviceName: string
  /** The resource's other attributes, from `OTEL_RESOURCE_ATTRIBUTES`. */
  readonly resourceAttributes: Readonly<Record<string, string>>
  /**
   * Share of new traces kept (0..1). Undefined: the SDK decides
   * (`OTEL_TRACES_SAMPLER`, by default every trace). A caller's own sampled
   * flag is followed either way.
   */
  readonly sampleRatio?: number | undefined
}

/** The decoded configuration, defaults filled in. */
export interface ServerConfig {
  readonly server: ServerSection
  readonly keys: ReadonlyArray<KeyConfig>
  readonly upstreams: readonly [UpstreamConfig, ...Array<UpstreamConfig>]
  readonly routing: RoutingConfig
  readonly breaker: BreakerConfig
  readonly retry: RetryConfig
  readonly cooldown: CooldownConfig
  readonly cache: CacheConfig
  readonly healthCheck: HealthCheckConfig
  /** Prices from the file only; `Pricing.make` adds its defaults. */
  readonly pricing: Readonly<Record<string, Pricing.Price>>
  /** The rest of the `pricing` section: how budgets price what they cannot look up. */
  readonly pricingPolicy: PricingPolicy
  readonly store: StoreConfig
  /** Traces; undefined (the default) is off. */
  readonly telemetry?: TelemetryConfig | undefined
}

// ---------------------------------------------------------------------------
// Errors

export interface Problem {
  /** Where, e.g. `upstreams[0].timeout`; empty for the whole file. */
  readonly path: string
  readonly message: string
}

/** The file was read and parsed, but some values are wrong. Lists all of them. */
export class ConfigInvalid extends Data.TaggedError("ConfigInvalid")<{
  readonly file: string
  readonly problems: ReadonlyArray<Problem>
}> {
  override get message(): string {
    const n = this.problems.length
    const lines = this.problems.map((p) => `  - ${p.path === "" ? "(top level)" : p.path}: ${p.message}`)
    return [`Invalid config ${this.file} (${n} ${n === 1 ? "problem" : "problems"}):`, ...lines].join("\n")
  }
}

/** The file could not be read or parsed, or references an unset variable. */
export class ConfigUnreadable extends Data.TaggedError("ConfigUnreadable")<{
  readonly file: string
  readonly reason: string
}> {
  override get message(): string {
    return `Cannot read config ${this.file}: ${this.reason}`
  }
}

// ---------------------------------------------------------------------------
// Durations

const DURATION_PART = /(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)/y
const UNIT_MILLIS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/**
 * Reads a duration such as `200ms`, `30s`, `5m`, `1h`, `1d`, `1.5s` or
 * `1m30s`. A unit is required.
 */
export const parseDuration = (s: string): Option.Option<Duration.Duration> => {
  const text = s.trim()
  if (text === "") return Option.none()
  let millis = 0
  let at = 0
  while (at < text.length) {
    DURATION_PART.lastIndex = at
    const m = DURATION_PART.exec(text)
    if (m === null) return Option.none()
    millis += Number(m[1]) * (UNIT_MILLIS[m[2] ?? ""] ?? Number.NaN)
    at = DURATION_PART.lastIndex
  }
  return Number.isFinite(millis) ? Option.some(Duration.millis(millis)) : Option.none()
}

// ---------------------------------------------------------------------------
// Leaf schemas: each decodes an unknown value and, when it cannot, says why
// in words, showing the value only when it is not a secret.

/** A short description of a value for messages; never the contents of a list or mapping. */
const show = (u: unknown): string => {
  if (u === null || u === undefined) return "an empty value"
  if (Array.isArray(u)) return "a list"
  if (typeof u === "object") return "a mapping"
  if (typeof u === "string") return JSON.stringify(u.length > 80 ? `${u.slice(0, 77)}...` : u)
  return String(u)
}

const leaf = <A>(decode: (u: unknown) => Either.Either<A, string>): Schema.Schema<A, unknown> =>
  Schema.transformOrFail(Schema.Unknown, Schema.declare((_: unknown): _ is A => true), {
    strict: true,
    decode: (u, _, ast) =>
      Either.match(decode(u), {
        onLeft: (message) => ParseResult.fail(new ParseResult.Type(ast, u, message)),
        onRight: ParseResult.succeed
      }),
    encode: ParseResult.succeed
  })

const NUMERIC = /^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$/

/** A number, or a numeric string (as interpolation produces). */
const asNumber = (u: unknown): number | undefined =>
  typeof u === "number" ? u : typeof u === "string" && NUMERIC.test(u) ? Number(u) : undefined

const number = (what: string, ok: (n: number) => boolean) =>
  leaf((u) => {
    const n = asNumber(u)
    return n !== undefined && Number.isFinite(n) && ok(n) ? Either.right(n) : Either.left(`expected ${what}, got ${show(u)}`)
  })

const PositiveInt = number("a positive integer", (n) => Number.isInteger(n) && n > 0)
const NonNegativeInt = number("an integer of 0 or more", (n) => Number.isInteger(n) && n >= 0)
const PositiveNumber = number("a positive number", (n) => n > 0)
const Share = number("a share above 0 and at most 1", (n) => n > 0 && n <= 1)
const NonNegativeNumber = number("a number of 0 or more", (n) => n >= 0)
const Port = number("a port number from 0 to 65535", (n) => Number.isInteger(n) && n >= 0 && n <= 65535)

const Bool = leaf((u) =>
  u === true || u === "true"
    ? Either.right(true)
    : u === false || u === "false"
    ? Either.right(false)
    : Either.left(`expected true or false, got ${show(u)}`)
)

/** `routing.panic`: true or false, or a threshold (a share above 0, at most 1). */
const Panic = leaf((u): Either.Either<boolean | number, string> => {
  if (u === true || u === "true") return Either.right(true)
  if (u === false || u === "false") return Either.right(false)
  const n = asNumber(u)
  return n !== undefined && n > 0 && n <= 1
    ? Either.right(n)
    : Either.left(`expected true, false or a threshold above 0 and at most 1 (like 0.5), got ${show(u)}`)
})

const NonEmptyString = leaf((u) =>
  typeof u === "string" && u.trim() !== "" ? Either.right(u) : Either.left(`expected a non-empty string, got ${show(u)}`)
)

/** A secret: never shown, whatever is wrong with it. */
const Secret = leaf((u) =>
  typeof u === "string"
    ? u === "" ? Either.left("must not be empty") : Either.right(Redacted.make(u))
    : Either.left(
      typeof u === "number" || typeof u === "boolean"
        ? "expected a string (quote the value)"
        : "expected a string"
    )
)

/**
 * The longest duration a config may hold: a timer (`setTimeout`, and Effect's
 * clock on top of it) waits at most 2^31-1 ms; beyond that Node fires it at
 * once and Effect never does, so `timeout: 25d` would fail every request.
 */
export const MAX_DURATION_MILLIS = 2 ** 31 - 1
const MAX_DURATION_TEXT = "24d20h31m23.647s"

const durationLeaf = (positive: boolean) =>
  leaf((u) => {
    const d = typeof u === "string" ? parseDuration(u) : Option.none()
    if (Option.isSome(d) && Duration.toMillis(d.value) > MAX_DURATION_MILLIS) {
      return Either.left(
        `expected a duration of at most ${MAX_DURATION_TEXT} (${MAX_DURATION_MILLIS} ms, the longest a timer can wait), got ${show(u)}`
      )
    }
    return Option.isSome(d) && (!positive || Duration.greaterThan(d.value, Duration.zero))
      ? Either.right(d.value)
      : Either.left(`expected a ${positive ? "positive " : ""}duration like "30s", got ${show(u)}`)
  })

/** Zero allowed. */
const Dur = durationLeaf(false)
const PositiveDur = durationLeaf(true)

/** `routing.hedge.after`: a positive duration, or a percentile `p50`..`p99.9`. */
const hedgeAfter = (u: unknown): Either.Either<Duration.Duration | Hedge.Percentile, string> => {
  if (typeof u === "string") {
    const p = /^\s*p(\d+(?:\.\d+)?)\s*$/i.exec(u)
    if (p !== null) {
      const n = Number(p[1])
      if (n > 0 && n < 100) return Either.right({ _tag: "Percentile", quantile: n / 100 })
    } else {
      const d = parseDuration(u)
      if (Option.isSome(d) && Duration.greaterThan(d.value, Duration.zero) && Duration.toMillis(d.value) <= MAX_DURATION_MILLIS) {
        return Either.right(d.value)
      }
    }
  }
  return Either.left(`expected a positive duration like "800ms" or a percentile like "p95", got ${show(u)}`)
}
const HedgeAfter = leaf(hedgeAfter)

/** A share above 0 and at most 1, as a number (`0.1`) or a percentage (`10%`). */
const sharePercent = (u: unknown): Either.Either<number, string> => {
  const text = typeof u === "string" ? u.trim() : undefined
  const n = text !== undefined && text.endsWith("%") ? asNumber(text.slice(0, -1)) : asNumber(u)
  const share = n === undefined ? undefined : text !== undefined && text.endsWith("%") ? n / 100 : n
  return share !== undefined && Number.isFinite(share) && share > 0 && share <= 1
    ? Either.right(share)
    : Either.left(`expected a share above 0 and at most 1, like 0.1 or "10%", got ${show(u)}`)
}
const SharePercent = leaf(sharePercent)

const oneOf = <const L extends ReadonlyArray<string>>(literals: L) =>
  leaf((u): Either.Either<L[number], string> =>
    typeof u === "string" && literals.includes(u)
      ? Either.right(u as L[number])
      : Either.left(`expected one of ${literals.map((l) => JSON.stringify(l)).join(", ")}, got ${show(u)}`)
  )

const LOG_LEVELS: Record<string, LogLevel.Literal> = {
  all: "All",
  trace: "Trace",
  debug: "Debug",
  info: "Info",
  warning: "Warning",
  warn: "Warning",
  error: "Error",
  fatal: "Fatal",
  none: "None"
}

/** A log level's name as the config and `--log-level` spell it (`info`, `warning`, ...), or undefined. */
export const logLevelOf = (name: string): LogLevel.Literal | undefined => LOG_LEVELS[name.toLowerCase()]

const LogLevelLeaf = leaf((u) => {
  const level = typeof u === "string" ? LOG_LEVELS[u.toLowerCase()] : undefined
  return level !== undefined
    ? Either.right(level)
    : Either.left(`expected one of "trace", "debug", "info", "warning", "error", "fatal", "none", got ${show(u)}`)
})

const HttpUrl = leaf((u) => {
  const expected = `expected an http(s) URL like "https://api.openai.com/v1"`
  if (typeof u !== "string") return Either.left(`${expected}, got ${show(u)}`)
  let url: URL
  try {
    url = new URL(u)
  } catch {
    return Either.left(`${expected}, got ${show(u)}`)
  }
  if (url.username !== "" || url.password !== "") {
    // Not shown: the credentials are secrets.
    return Either.left("must not contain credentials (put the key in apiKey)")
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return Either.left(`${expected}, got ${show(u)}`)
  return Either.right(u)
})

const OtlpUrl = leaf((u) => {
  const expected = `expected an http(s) URL like "http://otel-collector:4318"`
  if (typeof u !== "string") return Either.left(`${expected}, got ${show(u)}`)
  return checkOtlpUrl(u)
})

/** An OTLP endpoint: http(s), no credentials in it (they belong in headers, and URLs end up in messages). */
const checkOtlpUrl = (u: string): Either.Either<string, string> => {
  const expected = `expected an http(s) URL like "http://otel-collector:4318"`
  let url: URL
  try {
    url = new URL(u)
  } catch {
    return Either.left(`${expected}, got ${show(u)}`)
  }
  if (url.username !== "" || url.password !== "") return Either.left("must not contain credentials (put them in headers)")
  if (url.protocol !== "http:" && url.protocol !== "https:") return Either.left(`${expected}, got ${show(u)}`)
  return Either.right(u)
}

const Ratio = number("a number from 0 to 1", (n) => n >= 0 && n <= 1)

/** Never shown: a Redis URL may carry a password. */
const RedisUrl = leaf((u) => {
  if (typeof u !== "string") return Either.left(`expected a redis:// or rediss:// URL`)
  try {
    const url = new URL(u)
    if (url.protocol === "redis:" || url.protocol === "rediss:") return Either.right(Redacted.make(u))
  } catch {
    // fall through
  }
  return Either.left(`expected a redis:// or rediss:// URL`)
})

const Models = leaf((u): Either.Either<ReadonlyArray<string> | "*", string> => {
  if (u === "*") return Either.right("*")
  if (Array.isArray(u) && u.length > 0 && u.every((m) => typeof m === "string" && m.trim() !== "")) {
    return Either.right(u as Array<string>)
  }
  return Either.left(`expected "*" or a non-empty list of model names, got ${show(u)}`)
})

/**
 * `routing.hedge` from its two main settings as written (`p95`, `800ms`;
 * `10%`, `0.1`), the other fields at their defaults: for the simulator's
 * `--hedge`. Left: what is wrong, in words.
 */
export const hedgeOf = (after: unknown, maxExtra: unknown = 0.1): Either.Either<HedgeConfig, string> => {
  const a = hedgeAfter(after)
  if (Either.isLeft(a)) return Either.left(`hedge: ${a.left}`)
  const m = sharePercent(maxExtra)
  if (Either.isLeft(m)) return Either.left(`hedge-max-extra: ${m.left}`)
  return Either.right(hedgeWithDefaults({ after: a.right, maxExtra: m.right }))
}

/** `routing.hedge` with the fields it leaves out at their defaults. */
const hedgeWithDefaults = (h: {
  readonly after: HedgeConfig["after"]
  readonly maxExtra?: number | undefined
  readonly window?: Duration.Duration | undefined
  readonly initialDelay?: Duration.Duration | undefined
  readonly minDelay?: Duration.Duration | undefined
  readonly sameUpstream?: boolean | undefined
}): HedgeConfig => ({
  after: h.after,
  maxExtra: h.maxExtra ?? Hedge.defaults.maxExtra,
  window: h.window ?? Hedge.defaults.window,
  initialDelay: h.initialDelay ?? Hedge.defaults.initialDelay,
  minDelay: h.minDelay ?? Hedge.defaults.minDelay,
  sameUpstream: h.sameUpstream ?? Hedge.defaults.sameUpstream
})

// ---------------------------------------------------------------------------
// The file's schema (before defaults)

/** Exact: absent is fine, but an explicit `undefined` (never produced by YAML or JSON) is not. */
const opt = <S extends Schema.Schema.All>(schema: S) => Schema.optionalWith(schema, { exact: true })

/** Trip on a failure rate over the last `calls` calls, or the last `window` of time. */
const FailureRateFields = Schema.Struct({
  threshold: Share,
  minimumCalls: PositiveInt,
  window: opt(PositiveDur),
  calls: opt(PositiveInt)
}).pipe(Schema.filter((r) =>
  (r.window === undefined) !== (r.calls === undefined) || "set exactly one of window (a duration) or calls (a count)"
))

const BreakerFields = {
  failureRate: opt(FailureRateFields),
  failureThreshold: opt(PositiveInt),
  successThreshold: opt(PositiveInt),
  openDuration: opt(PositiveDur),
  halfOpenMaxCalls: opt(PositiveInt)
}

const PriceFields = Schema.Struct({
  input: NonNegativeNumber,
  output: NonNegativeNumber,
  cachedInput: opt(NonNegativeNumber)
})

const UnknownPrice = leaf((u): Either.Either<"highest" | "reject" | Pricing.Price, string> => {
  if (u === "highest" || u === "reject") return Either.right(u)
  if (isRecord(u) && Object.keys(u).every((k) => k === "input" || k === "output")) {
    const input = asNumber(u["input"])
    const output = asNumber(u["output"])
    if (input !== undefined && output !== undefined && input >= 0 && output >= 0) return Either.right({ input, output })
  }
  return Either.left(`expected "highest", "reject" or a price { input, output } in USD per million tokens, got ${show(u)}`)
})

/** The fields of `pricing` that are not model names. */
const PRICING_FIELDS = new Set(["models", "unknown", "estimatedOutputTokens"])

/**
 * `pricing: { gpt-4.1: {...} }` (prices listed directly, as earlier versions
 * read them) as `pricing: { models: { gpt-4.1: {...} } }`. Returns the moved
 * names, so that problems can be reported at the paths the file uses.
 */
const normalisePricing = (root: Record<string, unknown>): { root: Record<string, unknown>; moved: ReadonlySet<string> } => {
  const pricing = root["pricing"]
  if (!isRecord(pricing)) return { root, moved: new Set() }
  const moved = Object.keys(pricing).filter((k) => !PRICING_FIELDS.has(k))
  if (moved.length === 0) return { root, moved: new Set() }
  const models: Record<string, unknown> = isRecord(pricing["models"]) ? { ...pricing["models"] } : {}
  const next: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(pricing)) {
    if (PRICING_FIELDS.has(k)) {
      if (k !== "models") next[k] = v
    } else {
      Object.defineProperty(models, k, { value: v, enumerable: true, writable: true, configurable: true })
    }
  }
  next["models"] = models
  return { root: { ...root, pricing: next }, moved: new Set(moved) }
}

const File = Schema.Struct({
  server: opt(Schema.Struct({
    host: opt(NonEmptyString),
    port: opt(Port),
    adminKey: opt(Secret),
    console: opt(Bool),
    maxBodyBytes: opt(PositiveInt),
    logLevel: opt(LogLevelLeaf),
    shutdownTimeout: opt(Dur),
    drainGrace: opt(Dur),
    maxConnections: opt(PositiveInt),
    bodyTimeout: opt(PositiveDur),
    headersTimeout: opt(PositiveDur),
    keepAliveTimeout: opt(PositiveDur)
  })),
  keys: opt(Schema.Array(Schema.Struct({
    name: NonEmptyString,
    key: Secret,
    requestsPerMinute: opt(PositiveInt),
    tokensPerMinute: opt(PositiveInt),
    budgetUsd: opt(PositiveNumber),
    budgetPeriod: opt(oneOf(["day", "week", "month", "total"] as const))
  }))),
  upstreams: Schema.Array(Schema.Struct({
    name: NonEmptyString,
    baseUrl: HttpUrl,
    // Required unless auth is none: see upstreamChecks.
    apiKey: opt(Secret),
    models: opt(Models),
    aliases: opt(Schema.Record({ key: Schema.String, value: NonEmptyString })),
    priority: opt(NonNegativeInt),
    weight: opt(PositiveNumber),
    maxConcurrent: opt(PositiveInt),
    requestsPerMinute: opt(PositiveInt),
    tokensPerMinute: opt(PositiveInt),
    timeout: opt(PositiveDur),
    streamIdleTimeout: opt(PositiveDur),
    breaker: opt(Schema.Struct(BreakerFields)),
    retry: opt(Schema.Struct({ maxRetries: opt(NonNegativeInt), baseDelay: opt(Dur), maxDelay: opt(Dur) })),
    kind: opt(oneOf(UPSTREAM_KINDS)),
    auth: opt(oneOf(UPSTREAM_AUTHS)),
    headers: opt(Schema.Record({ key: Schema.String, value: Secret })),
    deployments: opt(Schema.Record({ key: Schema.String, value: NonEmptyString })),
    apiVersion: opt(NonEmptyString)
  })).pipe(Schema.filter((ups) => ups.length > 0 || "expected at least one upstream")),
  routing: opt(Schema.Struct({
    strategy: opt(oneOf(["priority", "weighted", "latency", "least-busy"] as const)),
    maxAttempts: opt(PositiveInt),
    requestTimeout: opt(PositiveDur),
    panic: opt(Panic),
    retryBudget: opt(Schema.Struct({
      enabled: opt(Bool),
      ratio: opt(NonNegativeNumber),
      window: opt(PositiveDur),
      minPerSecond: opt(NonNegativeNumber)
    })),
    streamIdleTimeout: opt(PositiveDur),
    fallbacks: opt(Schema.Record({ key: Schema.String, value: Schema.Array(NonEmptyString) })),
    pacing: opt(Schema.Struct({ queue: opt(NonNegativeInt) })),
    hedge: opt(Schema.Struct({
      after: HedgeAfter,
      maxExtra: opt(SharePercent),
      window: opt(PositiveDur),
      initialDelay: opt(PositiveDur),
      minDelay: opt(Dur),
      sameUpstream: opt(Bool)
    }))
  })),
  breaker: opt(Schema.Struct(BreakerFields)),
  retry: opt(Schema.Struct({
    maxRetries: opt(NonNegativeInt),
    baseDelay: opt(Dur),
    maxDelay: opt(Dur),
    maxRetryAfter: opt(Dur)
  })),
  cooldown: opt(Schema.Struct({
    rateLimited: opt(Dur),
    quota: opt(Dur),
    authFailed: opt(PositiveDur),
    unreachable: opt(Dur),
    headroomWatermark: opt(NonNegativeNumber)
  })),
  cache: opt(Schema.Struct({
    enabled: opt(Bool),
    ttl: opt(PositiveDur),
    maxEntries: opt(PositiveInt),
    mode: opt(oneOf(["all", "deterministic"] as const)),
    scope: opt(oneOf(["key", "shared"] as const))
  })),
  healthCheck: opt(Schema.Struct({ interval: opt(PositiveDur), timeout: opt(PositiveDur) })),
  pricing: opt(Schema.Struct({
    models: opt(Schema.Record({ key: Schema.String, value: PriceFields })),
    unknown: opt(UnknownPrice),
    estimatedOutputTokens: opt(PositiveInt)
  })),
  store: opt(Schema.Struct({
    kind: opt(oneOf(["memory", "redis"] as const)),
    url: opt(RedisUrl),
    prefix: opt(NonEmptyString),
    commandTimeout: opt(PositiveDur)
  })),
  telemetry: opt(Schema.Struct({
    otlp: opt(Schema.Struct({
      endpoint: opt(OtlpUrl),
      headers: opt(Schema.Record({ key: Schema.String, value: Secret }))
    })),
    serviceName: opt(NonEmptyString),
    sampleRatio: opt(Ratio)
  }))
})

type File = Schema.Schema.Type<typeof File>

const decodeFile = Schema.decodeUnknownEither(File, { errors: "all", onExcessProperty: "error" })

// ---------------------------------------------------------------------------
// Problems: paths and messages

type Path = ReadonlyArray<PropertyKey>

const renderPath = (path: Path): string =>
  path.reduce<string>(
    (acc, seg) => typeof seg === "number" ? `${acc}[${seg}]` : acc === "" ? String(seg) : `${acc}.${String(seg)}`,
    ""
  )

const editDistance = (a: string, b: string): number => {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    let diag = row[0]!
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const up = row[j]!
      row[j] = Math.min(up + 1, row[j - 1]! + 1, diag + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1))
      diag = up
    }
  }
  return row[b.length]!
}

const unknownField = (key: PropertyKey | undefined, known: ReadonlyArray<string>): string => {
  const name = String(key)
  const close = known
    .map((k) => [k, editDistance(name, k)] as const)
    .filter(([, d]) => d <= Math.max(1, Math.floor(name.length / 3)))
    .sort((a, b) => a[1] - b[1])[0]
  if (close !== undefined) return `unknown field (did you mean "${close[0]}"?)`
  return known.length === 0 ? "unknown field" : `unknown field (expected one of: ${known.join(", ")})`
}

const structural = (ast: { readonly _tag: string }, u: unknown): string =>
  ast._tag === "TypeLiteral"
    ? `expected a mapping, got ${show(u)}`
    : ast._tag === "TupleType"
    ? `expected a list, got ${show(u)}`
    : `unexpected value ${show(u)}`

const collect = (issue: ParseResult.ParseIssue, path: Path, known: ReadonlyArray<string>, out: Array<Problem>) => {
  switch (issue._tag) {
    case "Pointer": {
      const segs: Path = Array.isArray(issue.path) ? issue.path : [issue.path as PropertyKey]
      collect(issue.issue, [...path, ...segs], known, out)
      return
    }
    case "Composite": {
      const keys = issue.ast._tag === "TypeLiteral" ? issue.ast.propertySignatures.map((p) => String(p.name)) : known
      const issues: ReadonlyArray<ParseResult.ParseIssue> = Array.isArray(issue.issues) ?
        issue.issues :
        [issue.issues as ParseResult.ParseIssue]
      for (const i of issues) collect(i, path, keys, out)
      return
    }
    case "Refinement":
    case "Transformation":
      collect(issue.issue, path, known, out)
      return
    case "Missing":
      out.push({ path: renderPath(path), message: "is required" })
      return
    case "Unexpected":
      out.push({ path: renderPath(path), message: unknownField(path[path.length - 1], known) })
      return
    case "Type":
      out.push({ path: renderPath(path), message: issue.message ?? structural(issue.ast, issue.actual) })
      return
    case "Forbidden":
      out.push({ path: renderPath(path), message: issue.message ?? "cannot be checked" })
      return
  }
}

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

const entries = (u: unknown): ReadonlyArray<readonly [number, Record<string, unknown>]> =>
  Array.isArray(u) ? u.flatMap((e, i) => isRecord(e) ? [[i, e] as const] : []) : []

/** Checks across fields, run on the input whatever the schema says, so that all problems come at once. */
const crossChecks = (input: Record<string, unknown>): Array<Problem> => {
  const problems: Array<Problem> = []
  const unique = (section: "upstreams" | "keys", field: string, what: string, showValue: boolean) => {
    const seen = new Map<string, number>()
    for (const [i, e] of entries(input[section])) {
      const v = e[field]
      if (typeof v !== "string" || v === "") continue
      const first = seen.get(v)
      if (first === undefined) seen.set(v, i)
      else {
        problems.push({
          path: `${section}[${i}].${field}`,
          message: showValue
            ? `duplicate ${what} ${JSON.stringify(v)} (also ${section}[${first}])`
            : `the same ${what} as ${section}[${first}]`
        })
      }
    }
  }
  unique("upstreams", "name", "upstream name", true)
  unique("keys", "name", "key name", true)
  unique("keys", "key", "key", false)
  const store = input["store"]
  if (isRecord(store) && store["kind"] === "redis" && store["url"] === undefined) {
    problems.push({ path: "store.url", message: `is required when store.kind is "redis"` })
  }
  const telemetry = input["telemetry"]
  const otlp = isRecord(telemetry) ? telemetry["otlp"] : undefined
  const headers = isRecord(otlp) ? otlp["headers"] : undefined
  if (isRecord(headers)) {
    for (const [name, value] of Object.entries(headers)) {
      const path = `telemetry.otlp.headers.${name}`
      if (!HEADER_NAME.test(name)) problems.push({ path, message: "is not a valid HTTP header name" })
      else if (typeof value === "string" && /[\r\n\0]/.test(value)) problems.push({ path, message: "must not contain line breaks" })
    }
  }
  problems.push(...upstreamChecks(input), ...fallbackChecks(input))
  return problems
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

const quoted = (names: ReadonlyArray<string>) => names.map((n) => JSON.stringify(n)).join(" and ")

/** The fields of `upstreams[]` that depend on its kind, and its headers' names. */
const upstreamChecks = (input: Record<string, unknown>): Array<Problem> => {
  const problems: Array<Problem> = []
  for (const [i, u] of entries(input["upstreams"])) {
    const at = (field: string) => `upstreams[${i}].${field}`
    const kind = u["kind"] === undefined ? "openai" : u["kind"]
    // An unknown kind is named by the schema; nothing else depends on it then.
    const known = typeof kind === "string" && (UPSTREAM_KINDS as ReadonlyArray<string>).includes(kind)
    if (u["apiKey"] === undefined && u["auth"] !== "none") {
      problems.push({ path: at("apiKey"), message: "is required" })
    }
    if (!known) continue
    const only = (field: string, kinds: ReadonlyArray<string>, why = "") => {
      if (u[field] !== undefined && !kinds.includes(kind as string)) {
        problems.push({
          path: at(field),
          message: `applies to kind${kinds.length > 1 ? "s" : ""} ${quoted(kinds)} only, not ${JSON.stringify(kind)}${why}`
        })
      }
    }
    only("auth", ["openai", "azure-openai"], kind === "anthropic" ? " (its key goes in x-api-key)" : kind === "gemini" ? " (its key goes in x-goog-api-key)" : "")
    only("deployments", ["azure-openai"])
    only("apiVersion", ["azure-openai", "anthropic"])
    if (kind === "azure-openai") {
      const deployments = u["deployments"]
      if (deployments === undefined) {
        problems.push({
          path: at("deployments"),
          message: `is required for kind "azure-openai": map each model to its deployment, e.g. { gpt-4.1: my-gpt41 }`
        })
      } else if (isRecord(deployments)) {
        if (Object.keys(deployments).length === 0) problems.push({ path: at("deployments"), message: "must name at least one deployment" })
        const aliases = isRecord(u["aliases"]) ? u["aliases"] : {}
        const models = Array.isArray(u["models"]) ? u["models"] : []
        for (const model of models) {
          if (typeof model !== "string") continue
          const target = typeof aliases[model] === "string" ? aliases[model] as string : model
          if (!Object.prototype.hasOwnProperty.call(deployments, target)) {
            problems.push({ path: at("models"), message: `${JSON.stringify(model)} has no deployment (add it to deployments)` })
          }
        }
      }
    }
    const headers = u["headers"]
    if (isRecord(headers)) {
      for (const [name, value] of Object.entries(headers)) {
        const path = `${at("headers")}.${name}`
        if (!HEADER_NAME.test(name)) problems.push({ path, message: "is not a valid HTTP header name" })
        else if (typeof value === "string" && /[\r\n\0]/.test(value)) problems.push({ path, message: "must not contain line breaks" })
      }
    }
  }
  return problems
}

/**
 * The models some upstream serves, or "*" when one serves any: its
 * `models` (default any, or for `azure-openai` the models of its
 * `deployments`) and its aliases.
 */
const servedModels = (input: Record<string, unknown>): ReadonlySet<string> | "*" => {
  const served = new Set<string>()
  for (const [, u] of entries(input["upstreams"])) {
    const models = u["models"]
    if (Array.isArray(models)) for (const m of models) typeof m === "string" && served.add(m)
    else if (u["kind"] === "azure-openai" && isRecord(u["deployments"])) for (const m of Object.keys(u["deployments"])) served.add(m)
    else return "*"
    if (isRecord(u["aliases"])) for (const m of Object.keys(u["aliases"])) served.add(m)
  }
  return served
}

/**
 * `routing.fallbacks`: every fallback is a model some upstream serves, and
 * no chain of fallbacks leads back to where it started (fallbacks are
 * followed on: a fallback's own fallbacks come after it).
 */
const fallbackChecks = (input: Record<string, unknown>): Array<Problem> => {
  const routing = input["routing"]
  const fallbacks = isRecord(routing) ? routing["fallbacks"] : undefined
  if (!isRecord(fallbacks)) return []
  const problems: Array<Problem> = []
  const served = servedModels(input)
  const graph = new Map<string, ReadonlyArray<string>>()
  for (const [model, list] of Object.entries(fallbacks)) {
    if (!Array.isArray(list)) continue
    const targets = list.filter((t): t is string => typeof t === "string" && t.trim() !== "")
    graph.set(model, targets)
    list.forEach((target, j) => {
      if (typeof target !== "string" || target.trim() === "") return
      if (served !== "*" && !served.has(target)) {
        problems.push({
          path: renderPath(["routing", "fallbacks", model, j]),
          message: `no upstream serves ${JSON.stringify(target)} (see upstreams[].models, aliases and deployments)`
        })
      }
    })
  }
  // Cycles, each named once, from where the file first reaches it.
  const state = new Map<string, "open" | "done">()
  const reported = new Set<string>()
  const stack: Array<string> = []
  const visit = (model: string): void => {
    state.set(model, "open")
    stack.push(model)
    for (const next of graph.get(model) ?? []) {
      if (state.get(next) === "open") {
        const cycle = [...stack.slice(stack.indexOf(next)), next]
        const key = [...cycle.slice(0, -1)].sort().join("\u0000")
        if (!reported.has(key)) {
          reported.add(key)
          problems.push({ path: renderPath(["routing", "fallbacks", model]), message: `fallback cycle: ${cycle.join(" -> ")}` })
        }
      } else if (state.get(next) === undefined) visit(next)
    }
    stack.pop()
    state.set(model, "done")
  }
  for (const model of graph.keys()) if (state.get(model) === undefined) visit(model)
  return problems
}

// ---------------------------------------------------------------------------
// Telemetry: the file's section and the standard OTEL_* variables

const envValue = (env: Env, name: string): string | undefined => {
  const v = env[name]?.trim()
  return v === undefined || v === "" ? undefined : v
}

/** Whether the standard variables turn traces off whatever else says. */
const otelDisabled = (env: Env): boolean =>
  envValue(env, "OTEL_SDK_DISABLED")?.toLowerCase() === "true" || envValue(env, "OTEL_TRACES_EXPORTER")?.toLowerCase() === "none"

/** `<base>/v1/traces`, unless the URL already names that path. */
const tracesUrlOf = (endpoint: string): string => {
  const url = new URL(endpoint)
  if (/\/v1\/traces\/?$/.test(url.pathname)) return endpoint
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/v1/traces`
  return url.toString()
}

/** `a=1,b=2` (values percent-encoded), as the OTEL_* variables write lists; undefined when malformed. */
const keyValueList = (text: string): Record<string, string> | undefined => {
  const out: Record<string, string> = {}
  for (const part of text.split(",")) {
    if (part.trim() === "") continue
    const eq = part.indexOf("=")
    if (eq <= 0) return undefined
    const key = part.slice(0, eq).trim()
    let value: string
    try {
      value = decodeURIComponent(part.slice(eq + 1).trim())
    } catch {
      return undefined
    }
    if (key === "" || /[\r\n\0]/.test(value)) return undefined
    Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true })
  }
  return out
}

/**
 * Problems in the OTEL_* variables that traces would use (never their
 * values: headers carry secrets). A `telemetry` section needs an endpoint,
 * from the file or the variables.
 */
const telemetryEnvChecks = (input: Record<string, unknown>, env: Env): Array<Problem> => {
  if (otelDisabled(env)) return []
  const problems: Array<Problem> = []
  const telemetry = input["telemetry"]
  const otlp = isRecord(telemetry) ? telemetry["otlp"] : undefined
  const fileEndpoint = isRecord(otlp) ? otlp["endpoint"] : undefined
  let on = fileEndpoint !== undefined
  if (!on) {
    const name = envValue(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") !== undefined
      ? "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
      : envValue(env, "OTEL_EXPORTER_OTLP_ENDPOINT") !== undefined
      ? "OTEL_EXPORTER_OTLP_ENDPOINT"
      : undefined
    if (name !== undefined) {
      on = true
      // Not shown: a variable may hold a secret by mistake.
      if (Either.isLeft(checkOtlpUrl(envValue(env, name)!))) {
        problems.push({ path: `${name} (environment)`, message: "expected an http(s) URL without credentials (value not shown)" })
      }
    } else if (telemetry !== undefined) {
      problems.push({
        path: "telemetry.otlp.endpoint",
        message: "is required for traces (or set OTEL_EXPORTER_OTLP_ENDPOINT); remove the telemetry section to turn them off"
      })
    }
  }
  if (on) {
    // The exporter speaks OTLP/HTTP with protobuf bodies only: a collector expecting gRPC or JSON would refuse every batch.
    for (const name of ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]) {
      const protocol = envValue(env, name)
      if (protocol !== undefined && protocol !== "http/protobuf") {
        problems.push({
          path: `${name} (environment)`,
          // A protocol's name is shown; anything longer may be a secret set by mistake.
          message: `only "http/protobuf" is supported, got ${
            /^[a-z/]{1,16}$/.test(protocol) ? show(protocol) : "another value (not shown)"
          }; point the endpoint at the collector's OTLP/HTTP port (4318)`
        })
      }
    }
    for (const name of ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"]) {
      const text = envValue(env, name)
      if (text === undefined) continue
      const parsed = keyValueList(text)
      if (parsed === undefined || Object.keys(parsed).some((k) => !HEADER_NAME.test(k))) {
        problems.push({ path: `${name} (environment)`, message: "expected name=value pairs separated by commas (values not shown)" })
      }
    }
  }
  return problems
}

/** Traces from the decoded section and the variables (checked by telemetryEnvChecks); undefined when off. */
const resolveTelemetry = (section: File["telemetry"], env: Env): TelemetryConfig | undefined => {
  if (otelDisabled(env)) return undefined
  const fileEndpoint = section?.otlp?.endpoint
  const tracesUrl = fileEndpoint !== undefined
    ? tracesUrlOf(fileEndpoint)
    : envValue(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") ??
      (envValue(env, "OTEL_EXPORTER_OTLP_ENDPOINT") === undefined
        ? undefined
        : tracesUrlOf(envValue(env, "OTEL_EXPORTER_OTLP_ENDPOINT")!))
  if (tracesUrl === undefined) return undefined
  const headers: Record<string, Redacted.Redacted<string>> = {}
  const add = (from: Readonly<Record<string, string | Redacted.Redacted<string>>>) => {
    for (const [k, v] of Object.entries(from)) {
      // Header names are case-insensitive: the later source wins whatever the case.
      for (const existing of Object.keys(headers)) if (existing.toLowerCase() === k.toLowerCase()) delete headers[existing]
      Object.defineProperty(headers, k, {
        value: typeof v === "string" ? Redacted.make(v) : v,
        enumerable: true,
        writable: true,
        configurable: true
      })
    }
  }
  add(keyValueList(envValue(env, "OTEL_EXPORTER_OTLP_HEADERS") ?? "") ?? {})
  add(keyValueList(envValue(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS") ?? "") ?? {})
  add(section?.otlp?.headers ?? {})
  const resourceAttributes = keyValueList(envValue(env, "OTEL_RESOURCE_ATTRIBUTES") ?? "") ?? {}
  const serviceName = section?.serviceName ?? envValue(env, "OTEL_SERVICE_NAME") ?? resourceAttributes["service.name"] ??
    "breakwater"
  return {
    tracesUrl,
    headers,
    serviceName,
    resourceAttributes,
    ...only("sampleRatio", section?.sampleRatio)
  }
}

/** The strings at secret paths, to be sure none reaches a message. */
const secretsIn = (input: Record<string, unknown>): Array<string> => {
  const out: Array<string> = []
  const add = (v: unknown) => {
    if (typeof v === "string" && v.length >= 4) out.push(v)
  }
  if (isRecord(input["server"])) add(input["server"]["adminKey"])
  for (const [, k] of entries(input["keys"])) add(k["key"])
  for (const [, u] of entries(input["upstreams"])) {
    add(u["apiKey"])
    if (isRecord(u["headers"])) for (const v of Object.values(u["headers"])) add(v)
  }
  if (isRecord(input["store"])) add(input["store"]["url"])
  const telemetry = input["telemetry"]
  const otlp = isRecord(telemetry) ? telemetry["otlp"] : undefined
  if (isRecord(otlp) && isRecord(otlp["headers"])) for (const v of Object.values(otlp["headers"])) add(v)
  return out.sort((a, b) => b.length - a.length)
}

const scrub = (secrets: ReadonlyArray<string>) => (p: Problem): Problem =>
  secrets.some((s) => p.message.includes(s) || p.path.includes(s))
    ? {
      path: secrets.reduce((acc, s) => acc.split(s).join("<redacted>"), p.path),
      message: secrets.reduce((acc, s) => acc.split(s).join("<redacted>"), p.message)
    }
    : p

// ---------------------------------------------------------------------------
// Reading: syntax, interpolation

/** The first line of a parser message, without its position and without echoing source text. */
const syntaxReason = (message: string): string =>
  (message.split("\n")[0] ?? "")
    .replace(/ at line \d+, column \d+:?\s*$/, "")
    .replace(/:\s*".*"\s*$/, "")
    .trim()

const parseText = (text: string, file: string): Either.Either<unknown, ConfigUnreadable> => {
  const unreadable = (reason: string) => Either.left(new ConfigUnreadable({ file, reason }))
  const yamlError = (kind: string): Either.Either<unknown, ConfigUnreadable> | undefined => {
    const doc = parseDocument(text, { prettyErrors: true })
    const error = doc.errors[0]
    if (error === undefined) return undefined
    const pos = error.linePos?.[0]
    const line = pos === undefined ? undefined : text.split(/\r?\n/)[pos.line - 1]
    const hint = line !== undefined && line.includes("${") && /[{[]/.test(line.replace(/\$\{[^}]*\}/g, ""))
      ? ` (in a { ... } or [ ... ] collection, quote references: "\${NAME}")`
      : ""
    const where = pos === undefined ? "" : ` at line ${pos.line}, column ${pos.col}`
    return unreadable(`${kind} syntax error${where}: ${syntaxReason(error.message)}${hint}`)
  }
  if (file.toLowerCase().endsWith(".json")) {
    try {
      return Either.right(JSON.parse(text))
    } catch (e) {
      // V8 quotes the text in some messages: keep only the description, and say where when it does.
      const message = (e instanceof Error ? e.message : String(e)).replace(/,\s*".*$/s, "")
      const at = /\s*in JSON at position (\d+)(?:\s*\(line \d+ column \d+\))?/.exec(message)
      if (at !== null) {
        const before = text.slice(0, Number(at[1])).split(/\r?\n/)
        const where = `line ${before.length}, column ${(before[before.length - 1]?.length ?? 0) + 1}`
        return unreadable(`JSON syntax error at ${where}: ${syntaxReason(message.replace(at[0], ""))}`)
      }
      // Otherwise the YAML parser, which reads JSON too, can usually say where.
      return yamlError("JSON") ?? unreadable(`JSON syntax error: ${syntaxReason(message)}`)
    }
  }
  const failed = yamlError("YAML")
  if (failed !== undefined) return failed
  try {
    return Either.right(parseDocument(text).toJS({ maxAliasCount: 100 }))
  } catch (e) {
    return unreadable(`YAML error: ${syntaxReason(e instanceof Error ? e.message : String(e))}`)
  }
}

type Env = Record<string, string | undefined>

/** A string value that took text from the environment: the variables, and the value they made. */
interface FromEnv {
  readonly names: ReadonlyArray<string>
  readonly value: string
}

/** The interpolated file, and which values (by path) came from the environment. */
interface Interpolated {
  readonly value: unknown
  readonly fromEnv: ReadonlyMap<string, FromEnv>
}

const REFERENCE = /^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$/s

/**
 * Replaces `${NAME}` and `${NAME:-default}` in every string value. Collects
 * unset variables and malformed references rather than stopping at the first.
 */
const interpolate = (value: unknown, env: Env, file: string): Either.Either<Interpolated, ConfigUnreadable> => {
  const problems: Array<string> = []
  const fromEnv = new Map<string, FromEnv>()
  const inString = (s: string, path: Path): string => {
    if (!s.includes("$")) return s
    const names: Array<string> = []
    let out = ""
    let i = 0
    while (i < s.length) {
      const j = s.indexOf("$", i)
      if (j < 0) {
        out += s.slice(i)
        break
      }
      out += s.slice(i, j)
      if (s.startsWith("$${", j)) {
        out += "${"
        i = j + 3
      } else if (s.startsWith("${", j)) {
        const end = s.indexOf("}", j + 2)
        const m = end < 0 ? null : REFERENCE.exec(s.slice(j + 2, end))
        if (m === null) {
          problems.push(`${renderPath(path)} has a malformed reference (expected \${NAME} or \${NAME:-default})`)
          return s
        }
        const name = m[1]!
        const fallback = m[2]
        const set = env[name]
        if (set !== undefined && (fallback === undefined || set !== "")) {
          out += set
          if (!names.includes(name)) names.push(name)
        } else if (fallback !== undefined) out += fallback
        else problems.push(`${renderPath(path)} uses \${${name}}, which is not set`)
        i = end + 1
      } else {
        out += "$"
        i = j + 1
      }
    }
    if (names.length > 0) fromEnv.set(renderPath(path), { names, value: out })
    return out
  }
  // Objects on the way down: a recursive YAML alias would otherwise recurse forever.
  const ancestors = new Set<object>()
  const go = (v: unknown, path: Path): unknown => {
    if (typeof v === "string") return inString(v, path)
    if (typeof v !== "object" || v === null) return v
    if (ancestors.has(v)) {
      problems.push(`${renderPath(path)} contains itself (a recursive alias)`)
      return undefined
    }
    ancestors.add(v)
    try {
      if (Array.isArray(v)) return v.map((e, i) => go(e, [...path, i]))
      const out: Record<string, unknown> = {}
      for (const [k, e] of Object.entries(v)) {
        Object.defineProperty(out, k, { value: go(e, [...path, k]), enumerable: true, writable: true, configurable: true })
      }
      return out
    } finally {
      ancestors.delete(v)
    }
  }
  const result = go(value, [])
  return problems.length === 0
    ? Either.right({ value: result, fromEnv })
    : Either.left(new ConfigUnreadable({ file, reason: problems.join("; ") }))
}

/**
 * Takes out of a problem every value that came from the environment: such a
 * value may be a secret put in the wrong field (`baseUrl: ${UPSTREAM_KEY}`),
 * so the message names the variable instead. At the problem's own path the
 * value is replaced where it is quoted; anywhere else, any value of 4
 * characters or more that the environment supplied is replaced too.
 */
const hideEnv = (fromEnv: ReadonlyMap<string, FromEnv>) => {
  const refs = (names: ReadonlyArray<string>) => names.map((n) => `\${${n}}`).join(", ")
  const everywhere = [...fromEnv.values()]
    .filter((f) => f.value.length >= 4)
    .sort((a, b) => b.value.length - a.value.length)
  return (p: Problem): Problem => {
    let message = p.message
    const own = fromEnv.get(p.path)
    if (own !== undefined) {
      const shown = show(own.value)
      const what = own.names.length === 1 ? `the value of ${refs(own.names)}` : `a value made from ${refs(own.names)}`
      message = message.split(`got ${shown}`).join(`got ${what} (not shown)`).split(` ${shown}`).join(
        ` from ${refs(own.names)}`
      )
    }
    for (const f of everywhere) {
      if (message.includes(f.value)) message = message.split(f.value).join(`<value from ${refs(f.names)}>`)
    }
    return message === p.message ? p : { path: p.path, message }
  }
}

// ---------------------------------------------------------------------------
// Defaults

const only = <K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } =>
  (value === undefined ? {} : { [key]: value }) as { [P in K]?: V }

const build = (f: File, env: Env): ServerConfig => {
  const s = f.server ?? {}
  const routing = f.routing ?? {}
  const breaker = f.breaker ?? {}
  const retry = f.retry ?? {}
  const cooldown = f.cooldown ?? {}
  const cache = f.cache ?? {}
  const health = f.healthCheck ?? {}
  const store = f.store ?? {}
  const upstreams = f.upstreams.map((u): UpstreamConfig => ({
    name: u.name,
    baseUrl: u.baseUrl,
    // Absent only with auth: none (checked), when no key is sent.
    apiKey: u.apiKey ?? Redacted.make(""),
    models: u.models ?? (u.kind === "azure-openai" && u.deployments !== undefined ? Object.keys(u.deployments) : "*"),
    aliases: u.aliases ?? {},
    priority: u.priority ?? 1,
    weight: u.weight ?? 1,
    maxConcurrent: u.maxConcurrent ?? 64,
    ...only("requestsPerMinute", u.requestsPerMinute),
    ...only("tokensPerMinute", u.tokensPerMinute),
    timeout: u.timeout ?? Duration.seconds(30),
    ...only("streamIdleTimeout", u.streamIdleTimeout),
    ...only(
      "breaker",
      u.breaker && {
        ...only("failureRate", u.breaker.failureRate),
        ...only("failureThreshold", u.breaker.failureThreshold),
        ...only("successThreshold", u.breaker.successThreshold),
        ...only("openDuration", u.breaker.openDuration),
        ...only("halfOpenMaxCalls", u.breaker.halfOpenMaxCalls)
      }
    ),
    ...only(
      "retry",
      u.retry && {
        ...only("maxRetries", u.retry.maxRetries),
        ...only("baseDelay", u.retry.baseDelay),
        ...only("maxDelay", u.retry.maxDelay)
      }
    ),
    kind: u.kind ?? "openai",
    auth: u.auth ?? (u.kind === "azure-openai" ? "api-key" : "bearer"),
    headers: u.headers ?? {},
    ...only("deployments", u.deployments),
    ...only("apiVersion", u.apiVersion)
  }))
  return {
    server: {
      host: s.host ?? "127.0.0.1",
      port: s.port ?? 8080,
      ...only("adminKey", s.adminKey),
      console: s.console ?? true,
      maxBodyBytes: s.maxBodyBytes ?? 10 * 1024 * 1024,
      logLevel: s.logLevel ?? "Info",
      shutdownTimeout: s.shutdownTimeout ?? Duration.seconds(10),
      drainGrace: s.drainGrace ?? Duration.seconds(2),
      maxConnections: s.maxConnections ?? 10_000,
      bodyTimeout: s.bodyTimeout ?? Duration.seconds(30),
      headersTimeout: s.headersTimeout ?? Duration.seconds(10),
      keepAliveTimeout: s.keepAliveTimeout ?? Duration.seconds(65)
    },
    keys: (f.keys ?? []).map((k) => ({
      name: k.name,
      key: k.key,
      ...only("requestsPerMinute", k.requestsPerMinute),
      ...only("tokensPerMinute", k.tokensPerMinute),
      ...only("budgetUsd", k.budgetUsd),
      ...only("budgetPeriod", k.budgetPeriod)
    })),
    // Non-empty: checked by the schema.
    upstreams: upstreams as unknown as ServerConfig["upstreams"],
    routing: {
      strategy: routing.strategy ?? "priority",
      maxAttempts: routing.maxAttempts ?? 3,
      requestTimeout: routing.requestTimeout ?? Duration.seconds(60),
      panic: routing.panic ?? 0.5,
      retryBudget: {
        enabled: routing.retryBudget?.enabled ?? true,
        ratio: routing.retryBudget?.ratio ?? 0.2,
        window: routing.retryBudget?.window ?? Duration.seconds(10),
        minPerSecond: routing.retryBudget?.minPerSecond ?? 3
      },
      streamIdleTimeout: routing.streamIdleTimeout ?? Duration.seconds(60),
      fallbacks: routing.fallbacks ?? {},
      pacing: { queue: routing.pacing?.queue ?? Pacing.defaultQueue },
      hedge: routing.hedge === undefined ? undefined : hedgeWithDefaults(routing.hedge)
    },
    breaker: {
      failureRate: breaker.failureRate ?? { threshold: 0.5, minimumCalls: 20, window: Duration.seconds(10) },
      failureThreshold: breaker.failureThreshold ?? 10,
      successThreshold: breaker.successThreshold ?? 3,
      openDuration: breaker.openDuration ?? Duration.seconds(30),
      halfOpenMaxCalls: breaker.halfOpenMaxCalls ?? 3
    },
    retry: {
      maxRetries: retry.maxRetries ?? 2,
      baseDelay: retry.baseDelay ?? Duration.millis(200),
      maxDelay: retry.maxDelay ?? Duration.seconds(5),
      maxRetryAfter: retry.maxRetryAfter ?? Duration.seconds(10)
    },
    cooldown: {
      rateLimited: cooldown.rateLimited ?? Duration.seconds(1),
      quota: cooldown.quota ?? Duration.hours(1),
      authFailed: cooldown.authFailed ?? Duration.minutes(5),
      unreachable: cooldown.unreachable ?? Duration.seconds(5),
      headroomWatermark: cooldown.headroomWatermark ?? 0
    },
    cache: {
      enabled: cache.enabled ?? true,
      ttl: cache.ttl ?? Duration.minutes(5),
      maxEntries: cache.maxEntries ?? 10_000,
      mode: cache.mode ?? "deterministic",
      scope: cache.scope ?? "key"
    },
    healthCheck: {
      interval: health.interval ?? Duration.seconds(10),
      timeout: health.timeout ?? Duration.seconds(5)
    },
    pricing: f.pricing?.models ?? {},
    pricingPolicy: {
      unknown: f.pricing?.unknown ?? "highest",
      estimatedOutputTokens: f.pricing?.estimatedOutputTokens ?? 1024
    },
    // A redis store without a url is refused by the cross-field checks.
    store: store.kind === "redis" && store.url !== undefined
      ? { kind: "redis", url: store.url, prefix: store.prefix ?? RedisDefaults.prefix, commandTimeout: store.commandTimeout ?? RedisDefaults.commandTimeout }
      : { kind: "memory" },
    ...only("telemetry", resolveTelemetry(f.telemetry, env))
  }
}

// ---------------------------------------------------------------------------
// API

/** Parses, interpolates and validates the text of a config file. `file` picks the format and names it in errors. */
export const parse = (
  text: string,
  options: { readonly file: string; readonly env: Env }
): Either.Either<ServerConfig, ConfigInvalid | ConfigUnreadable> => {
  const { env, file } = options
  return Either.flatMap(
    Either.flatMap(parseText(text, file), (parsed) => interpolate(parsed, env, file)),
    ({ fromEnv, value: input }): Either.Either<ServerConfig, ConfigInvalid> => {
      // An empty file is an empty mapping (and then lacks its upstreams).
      const root = input === null || input === undefined ? {} : input
      if (!isRecord(root)) {
        return Either.left(
          new ConfigInvalid({
            file,
            problems: [hideEnv(fromEnv)({ path: "", message: `expected a mapping of sections, got ${show(root)}` })]
          })
        )
      }
      const { moved, root: normalised } = normalisePricing(root)
      const decoded = decodeFile(normalised)
      const problems: Array<Problem> = []
      if (Either.isLeft(decoded)) collect(decoded.left.issue, [], [], problems)
      problems.push(...crossChecks(root), ...telemetryEnvChecks(root, env))
      // A price listed directly under `pricing` is reported where the file has it.
      for (let i = 0; i < problems.length; i++) {
        const p = problems[i]!
        const m = /^pricing\.models\.(.+?)(\.(?:input|output|cachedInput))?$/.exec(p.path)
        if (m !== null && moved.has(m[1]!)) problems[i] = { ...p, path: `pricing.${m[1]}${m[2] ?? ""}` }
      }
      if (problems.length > 0) {
        const seen = new Set<string>()
        const distinct = problems.filter((p) => {
          const k = `${p.path}\u0000${p.message}`
          return seen.has(k) ? false : (seen.add(k), true)
        })
        const hide = hideEnv(fromEnv)
        const scrubSecrets = scrub(secretsIn(root))
        return Either.left(new ConfigInvalid({ file, problems: distinct.map((p) => scrubSecrets(hide(p))) }))
      }
      // No problems means the schema decoded.
      return Either.map(decoded as Either.Either<File, never>, (f) => build(f, env))
    }
  )
}

const readReason = (e: unknown): string => {
  const code = (e as { readonly code?: unknown } | null)?.code
  switch (code) {
    case "ENOENT":
      return "no such file"
    case "EACCES":
    case "EPERM":
      return "permission denied"
    case "EISDIR":
      return "is a directory"
    default:
      return e instanceof Error ? e.message : String(e)
  }
}

/**
 * How to call each upstream that is not a plain OpenAI one (another kind,
 * another `auth`, extra headers), by name, for core's `ProviderClient`.
 * Empty when every upstream is plain: the client is then used as it is.
 */
export const toProviders = (config: ServerConfig): Readonly<Record<string, ProviderClient.Provider>> => {
  const out: Record<string, ProviderClient.Provider> = {}
  for (const u of config.upstreams) {
    const headers = Object.keys(u.headers).length === 0
      ? undefined
      : Object.fromEntries(Object.entries(u.headers).map(([k, v]) => [k, Redacted.value(v)]))
    if (u.kind === "openai" && u.auth === "bearer" && headers === undefined) continue
    Object.defineProperty(out, u.name, {
      value: {
        kind: u.kind,
        auth: u.auth,
        headers,
        deployments: u.deployments,
        apiVersion: u.apiVersion
      } satisfies ProviderClient.Provider,
      enumerable: true
    })
  }
  return out
}

/** Reads and parses a config file; `env` defaults to `process.env`. */
export const load = (
  file: string,
  env: Env = process.env
): Effect.Effect<ServerConfig, ConfigInvalid | ConfigUnreadable> =>
  Effect.tryPromise({
    try: () => fs.readFile(file, "utf8"),
    catch: (e) => new ConfigUnreadable({ file, reason: readReason(e) })
  }).pipe(
    Effect.flatMap((text) => parse(text, { file, env }))
  )

/** The relay's options from the config (keys, pricing, cache size and the rest are the server's). */
/** The breaker section as core's options: a failure-rate window is either calls or time. */
const breakerOptions = ({ failureRate, ...rest }: Partial<BreakerConfig>) => ({
  ...rest,
  ...(failureRate === undefined ? {} : {
    failureRate: {
      threshold: failureRate.threshold,
      minimumCalls: failureRate.minimumCalls,
      window: failureRate.calls !== undefined
        ? { calls: failureRate.calls }
        : { duration: failureRate.window ?? Duration.seconds(30) }
    }
  })
})

export const toRelayOptions = (config: ServerConfig): Relay.Options => ({
  upstreams: config.upstreams.map((u): Upstream.Config => ({
    name: u.name,
    baseUrl: u.baseUrl,
    apiKey: u.apiKey,
    models: u.models,
    aliases: u.aliases,
    priority: u.priority,
    weight: u.weight,
    maxConcurrent: u.maxConcurrent,
    requestsPerMinute: u.requestsPerMinute,
    tokensPerMinute: u.tokensPerMinute,
    timeout: u.timeout,
    streamIdleTimeout: u.streamIdleTimeout,
    breaker: u.breaker === undefined ? undefined : breakerOptions(u.breaker),
    retry: u.retry
  })),
  maxAttempts: config.routing.maxAttempts,
  retryBudget: config.routing.retryBudget.enabled
    ? {
      ratio: config.routing.retryBudget.ratio,
      window: config.routing.retryBudget.window,
      minPerSecond: config.routing.retryBudget.minPerSecond
    }
    : false,
  requestTimeout: config.routing.requestTimeout,
  fallbacks: config.routing.fallbacks,
  router: { strategy: config.routing.strategy, panic: config.routing.panic },
  breaker: breakerOptions(config.breaker),
  retry: { ...config.retry },
  rateLimitCooldown: config.cooldown.rateLimited,
  quotaCooldown: config.cooldown.quota,
  authFailedCooldown: config.cooldown.authFailed,
  unreachableCooldown: config.cooldown.unreachable,
  pacing: { queue: config.routing.pacing.queue },
  headroomWatermark: config.cooldown.headroomWatermark,
  cacheMode: config.cache.enabled ? config.cache.mode : "none",
  cacheScope: config.cache.scope,
  streamIdleTimeout: config.routing.streamIdleTimeout,
  hedge: config.routing.hedge
})

/**
 * The upstream client's backstop timeouts: past every limit of our own
 * (attempt timeouts, the request deadline, health-check timeouts, stream
 * idle timeouts) plus 5 s, so that they only ever end a call that our own
 * limits somehow missed.
 */
export const toUndiciOptions = (config: ServerConfig): UpstreamClient.UndiciOptions => {
  let wait = Math.max(Duration.toMillis(config.routing.requestTimeout), Duration.toMillis(config.healthCheck.timeout))
  let idle = Duration.toMillis(config.routing.streamIdleTimeout)
  for (const u of config.upstreams) {
    wait = Math.max(wait, Duration.toMillis(u.timeout))
    if (u.streamIdleTimeout !== undefined) idle = Math.max(idle, Duration.toMillis(u.streamIdleTimeout))
  }
  // Timers hold at most 2^31 - 1 ms.
  const cap = (ms: number) => Math.min(ms, 2_147_483_647)
  return { headersTimeout: cap(wait + 5_000), bodyTimeout: cap(Math.max(wait, idle) + 5_000) }
}
