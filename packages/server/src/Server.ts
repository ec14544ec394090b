/**
 * The server: the relay pipeline and its stores, built from a config, behind
 * a Node HTTP server. One `node:http` server per process; keep-alive on.
 *
 * Shutdown drains: for `server.drainGrace` new requests get 503 with
 * `Connection: close`, then the listener closes, requests in flight (streams
 * included) finish up to `server.shutdownTimeout`, then what is left is closed.
 *
 * Connections are bounded: at most `server.maxConnections` open at once, a
 * request must arrive within `server.headersTimeout` (headers) and
 * `server.bodyTimeout` (all of it), and an idle kept-alive connection closes
 * after `server.keepAliveTimeout`. Node's HTTP server enforces all four; this
 * module sets them and answers its refusals with OpenAI error bodies.
 */
import {
  Cooldown,
  Health,
  OpenAI,
  Pacing,
  Pricing,
  ProviderClient,
  RateLimiter,
  Relay,
  ResponseCache,
  Spend,
  Upstream,
  UpstreamClient
} from "@breakwater/core"
import type * as Redis from "@breakwater/core/Redis"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as Redacted from "effect/Redacted"
import * as FiberId from "effect/FiberId"
import * as Runtime from "effect/Runtime"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as HashSet from "effect/HashSet"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import { createServer, type IncomingMessage, type Server as NodeServer, type ServerResponse } from "node:http"
import type { Socket } from "node:net"
import type { SpanProcessor } from "@opentelemetry/sdk-trace-base"
import type { ServerConfig } from "./Config.js"
import * as Config from "./Config.js"
import * as Events from "./Events.js"
import * as Gateway from "./Gateway.js"
import * as Http from "./Http.js"
import * as Log from "./Log.js"
import * as Reload from "./Reload.js"
import * as RequestLog from "./RequestLog.js"

/** The core services the HTTP app needs, from the config (in-memory stores). */
/**
 * `@breakwater/core/Redis` (and so `ioredis`), loaded only when a config asks
 * for Redis: a gateway with in-memory stores never loads them.
 */
const loadRedis = (): Promise<typeof Redis> => import("@breakwater/core/Redis")

/** Every shared store on one Redis connection, the response cache over it. */
const redisStores = (
  config: ServerConfig,
  url: Redacted.Redacted<string>,
  prefix: string,
  commandTimeout: Duration.Duration
): Layer.Layer<
  RateLimiter.RateLimiterStore | Cooldown.CooldownStore | Spend.SpendStore | ResponseCache.ResponseCache
> => {
  const shared = Layer.unwrapEffect(
    Effect.map(Effect.promise(loadRedis), (Redis) => Redis.layer({ url: Redacted.value(url), prefix, commandTimeout }))
  )
  return Layer.merge(shared, ResponseCache.layer({ ttl: config.cache.ttl }).pipe(Layer.provide(shared)))
}

/** The shared stores, as `store.kind` says. */
export type Stores = RateLimiter.RateLimiterStore | Cooldown.CooldownStore | Spend.SpendStore | ResponseCache.ResponseCache

/**
 * The stores (rate-limit counters, cooldowns, spend, the response cache),
 * from the `store` and `cache` sections. A server builds them once: a
 * config reload keeps them, and so every key's spend and counters and every
 * upstream's cooldowns.
 */
export const storesLayer = (config: ServerConfig): Layer.Layer<Stores> =>
  // `store.kind` switches every shared store at once. Layers are memoised
  // by reference, so each store (and the Redis connection) is built once.
  config.store.kind === "redis"
    ? redisStores(config, config.store.url, config.store.prefix, config.store.commandTimeout)
    : Layer.mergeAll(
      RateLimiter.layerStoreMemory,
      Cooldown.layerStoreMemory,
      Spend.layerStoreMemory,
      ResponseCache.layerMemory({ ttl: config.cache.ttl, maxEntries: config.cache.maxEntries })
    )

/**
 * What a config builds over the stores: the upstream client, pricing, the
 * relay (`relay`, which needs those three) and the gateway.
 */
const pipelineLayer = (
  config: ServerConfig,
  relay: Layer.Layer<Relay.Relay, never, Stores | UpstreamClient.UpstreamClient | Pricing.Pricing>
) => {
  // One client (one connection pool) for the relay and the health probes.
  const openAIClient = UpstreamClient.layerUndiciWith(Config.toUndiciOptions(config))
  // Upstreams of other kinds (Anthropic, Gemini, Azure, other auth): translated per upstream.
  const providers = Config.toProviders(config)
  const upstreamClient = Object.keys(providers).length === 0
    ? openAIClient
    : ProviderClient.layer(
      (name) => Object.prototype.hasOwnProperty.call(providers, name) ? providers[name] : undefined,
      Config.toUndiciOptions(config)
    ).pipe(Layer.provide(openAIClient))
  // Metric labels: configured models, aliases and their targets, and key names, as they are.
  const pricing = Pricing.layer(config.pricing, { models: configuredModels(config), keys: config.keys.map((k) => k.name) })
  const gateway = Layer.effect(
    Gateway.Gateway,
    Effect.flatMap(Relay.Relay, (r) =>
      Gateway.make(config.keys, {
        // What a request for `model` may be sent as: one name per upstream that
        // serves it or one of its fallbacks (a budget holds the highest price).
        targets: (model) => {
          const fallbacks = r.fallbacksOf(model)
          return (fallbacks.length === 0 ? [model] : [model, ...fallbacks]).flatMap((m) =>
            r.upstreams.flatMap((u) => {
              const target = u.modelFor(m)
              return target === undefined ? [] : [target]
            })
          )
        },
        unknown: config.pricingPolicy.unknown,
        estimatedOutputTokens: config.pricingPolicy.estimatedOutputTokens
      }))
  )
  return gateway.pipe(Layer.provideMerge(relay), Layer.provideMerge(Layer.merge(upstreamClient, pricing)))
}

/** Health checks of the relay's upstreams, probing while the layer lives. */
const healthLayer = (config: ServerConfig, previous?: Health.Health) =>
  Layer.scoped(
    Health.Health,
    Effect.flatMap(Relay.Relay, (r) =>
      Health.make(r.upstreams, {
        interval: config.healthCheck.interval,
        timeout: config.healthCheck.timeout,
        authFailedCooldown: config.cooldown.authFailed,
        previous
      }))
  )

/** The core services the HTTP app needs, from the config: stores, client, pricing, relay, health checks, gateway. */
export const servicesLayer = (config: ServerConfig) => {
  const stores = storesLayer(config)
  const pipeline = pipelineLayer(config, Relay.layer(Config.toRelayOptions(config)))
  return healthLayer(config).pipe(Layer.provideMerge(pipeline), Layer.provideMerge(stores))
}

/** Every model name the config mentions: upstreams' models, aliases and their targets. */
export const configuredModels = (config: ServerConfig): ReadonlyArray<string> => [
  ...new Set(config.upstreams.flatMap((u) => [
    ...(u.models === "*" ? [] : u.models),
    ...Object.keys(u.aliases),
    ...Object.values(u.aliases)
  ]))
]

/**
 * Names the configured models (and alias targets) without a price, once at
 * start: their calls cost $0 for keys without a budget, and what
 * `pricing.unknown` says for keys with one.
 */
export const unpricedModels = (config: ServerConfig, pricing: Pricing.Pricing): ReadonlyArray<string> => {
  const names = new Set<string>()
  for (const u of config.upstreams) {
    if (u.models !== "*") for (const m of u.models) if (u.aliases[m] === undefined) names.add(m)
    for (const target of Object.values(u.aliases)) names.add(target)
  }
  return [...names].filter((m) => pricing.price(m) === undefined).sort()
}

const warnUnpriced = (config: ServerConfig, pricing: Pricing.Pricing): Effect.Effect<void> => {
  const missing = unpricedModels(config, pricing)
  const budgets = config.keys.some((k) => k.budgetUsd !== undefined)
  const unknown = config.pricingPolicy.unknown
  const rule = !budgets
    ? "they cost $0 in metrics"
    : unknown === "reject"
    ? "keys with a budget are refused them (pricing.unknown: reject)"
    : unknown === "highest"
    ? `keys with a budget are charged the highest price, $${pricing.highest.input}/$${pricing.highest.output} per million tokens (pricing.unknown)`
    : `keys with a budget are charged $${unknown.input}/$${unknown.output} per million tokens (pricing.unknown)`
  const any = config.upstreams.filter((u) => u.models === "*").map((u) => u.name)
  const lines: Array<string> = []
  if (missing.length > 0) {
    lines.push(`no price for ${missing.map((m) => `'${m}'`).join(", ")}: ${rule}. Add them under pricing.models.`)
  }
  if (any.length > 0) {
    lines.push(`upstream(s) ${any.map((n) => `'${n}'`).join(", ")} serve any model: models not in the price table (dated ${Pricing.pricesDate}): ${rule}.`)
  }
  return Effect.forEach(lines, (line) => Effect.logWarning(line), { discard: true })
}

export interface Running {
  readonly server: NodeServer
  readonly url: string
  /** Requests being answered right now (streams count until they end). */
  readonly inFlight: () => number
  /** From now on, new relay requests and /readyz get 503, and every response `Connection: close` (see {@link drain}). */
  readonly startDraining: () => void
  /** The config served now: the last reload's (restart-only settings as they run). */
  readonly config: () => ServerConfig
  /**
   * Re-reads the config file and swaps it in, or refuses it (Reload.ts);
   * one reload at a time. Logs the outcome; `trigger` (`SIGHUP`,
   * `POST /admin/reload`) says what asked for it. Never fails.
   */
  readonly reload: (trigger: string) => Promise<Reload.Outcome>
  /**
   * Chat completions the fast path (Http.Handler.fast) answered without a
   * fiber, and those whose caller hung up while its call was out; for tests
   * and benchmarks.
   */
  readonly fastPath: () => { readonly answered: number; readonly hungUp: number }
}

// ---------------------------------------------------------------------------
// connection limits

const connectionsRefused = Metric.counter("breakwater_connections_refused_total", {
  description: "Connections closed at once because server.maxConnections were open",
  incremental: true
})
const connectionsOpen = Metric.gauge("breakwater_connections_open", {
  description: "Client connections open now (at most server.maxConnections)"
})
const clientErrors = Metric.counter("breakwater_client_errors_total", {
  description: "Requests the HTTP parser refused, by status: 408 too slow, 400 malformed, 431 headers too large",
  incremental: true
})
const clientErrorsBy = {
  "408": Metric.tagged(clientErrors, "status", "408"),
  "400": Metric.tagged(clientErrors, "status", "400"),
  "431": Metric.tagged(clientErrors, "status", "431")
}

const STATUS_TEXT = { "408": "Request Timeout", "400": "Bad Request", "431": "Request Header Fields Too Large" } as const

/** A complete HTTP/1.1 response with an OpenAI error body, written straight to a socket. */
const rawFailure = (status: keyof typeof STATUS_TEXT, message: string, code: string): string => {
  const body = OpenAI.errorBody(message, "invalid_request_error", null, code)
  return `HTTP/1.1 ${status} ${STATUS_TEXT[status]}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
}

/**
 * File descriptors kept for everything but client connections (upstream
 * sockets, Redis, files) when checking `server.maxConnections` against the
 * process's limit.
 */
export const RESERVED_FDS = 1_024

/**
 * A warning when `maxConnections` client connections, plus RESERVED_FDS,
 * would not fit in the process's open-files limit (read from Linux's
 * `/proc/self/limits`, after Node has raised the soft limit to the hard
 * one); undefined when they fit or the limit is unknown.
 */
export const openFilesWarning = (procSelfLimits: string, maxConnections: number): string | undefined => {
  const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(procSelfLimits)
  if (m === null || m[1] === "unlimited") return undefined
  const limit = Number(m[1])
  if (maxConnections + RESERVED_FDS <= limit) return undefined
  return `warning: server.maxConnections (${maxConnections}) + ${RESERVED_FDS} for upstreams and files exceeds this process's ` +
    `open-files limit (${limit}): past it new connections fail in the kernel, not with the gateway's refusal. ` +
    `Lower maxConnections to ${Math.max(1, limit - RESERVED_FDS)} or raise the limit (ulimit -n, LimitNOFILE=).`
}

/** How often Node checks headersTimeout and bodyTimeout: each second, or a quarter of the shorter one. */
const checkingInterval = (headersMs: number, bodyMs: number): number =>
  Math.max(100, Math.min(1_000, Math.floor(Math.min(headersMs, bodyMs) / 4)))

/** Reads a request body up to `max` bytes; undefined (and the rest discarded) beyond. */
const readBody = (req: IncomingMessage, max: number): Effect.Effect<string | undefined> =>
  Effect.async<string | undefined>((resume) => {
    const declared = Number(req.headers["content-length"] ?? 0)
    if (declared > max) {
      req.resume()
      return resume(Effect.succeed(undefined))
    }
    const chunks: Array<Buffer> = []
    let size = 0
    let over = false
    req.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > max) over = true
      else chunks.push(chunk)
    })
    req.once("end", () => resume(Effect.succeed(over ? undefined : Buffer.concat(chunks, size).toString("utf8"))))
    req.once("error", () => resume(Effect.succeed(undefined)))
  })

const ignore = (): void => {}

/**
 * A connection's error outside any request (a malformed request, a reset
 * while headers arrive): answer as Node would (400, 408 or 431) when nothing
 * was written yet, then close it. Never thrown, never logged per connection.
 */
/** Writes a stream of text to `res`, respecting backpressure. */
const pipeStream = (res: ServerResponse, body: Stream.Stream<string>): Effect.Effect<void> =>
  Stream.runForEach(body, (chunk) =>
    res.write(chunk) ? Effect.void : Effect.async<void>((resume) => {
      res.once("drain", () => resume(Effect.void))
    }))

/**
 * Serves `config` until the scope closes. Returns the running server; the
 * caller decides when to drain (see {@link drain}).
 *
 * Requests are handled by a plain `node:http` listener that runs the Effect
 * handler (Http.ts) as one fiber per request. @effect/platform's HTTP server
 * was the first version; on this 2-core machine it answered 3.4k req/s for an
 * empty handler against 20.7k for `node:http`, and capped the gateway at
 * about 1k req/s (README, Performance). The handler itself is unchanged.
 */
export interface ServeOptions {
  /** How the server logs (see Log.ts). Default `json`. */
  readonly logFormat?: Log.Format | undefined
  /**
   * Where spans go instead of the OTLP exporter; turns traces on even
   * without `telemetry` in the config (tests give an in-memory exporter).
   */
  readonly spanProcessor?: SpanProcessor | undefined
  /**
   * Whether chat completions may take the fast path (Http.Handler.fast, no
   * fiber per request). Default true; false runs every request through the
   * Effect handler (tests compare the two).
   */
  readonly fastPath?: boolean | undefined
  /**
   * Where a reload reads the config: the file's name (for the log) and how
   * to load it, with the same command-line overrides as at start. Without
   * it (the demo), a reload answers that there is nothing to reload.
   */
  readonly reload?: {
    readonly file: string
    readonly load: Effect.Effect<ServerConfig, Config.ConfigInvalid | Config.ConfigUnreadable>
  } | undefined
}

/**
 * An upstream endpoint (a name and a base URL) across configs: the scope its
 * breaker and bulkhead live in, the upstream as last built, and how many
 * configs still in use (served, or finishing requests) have it. Its scope
 * closes when the last of them is released.
 */
interface Lineage {
  readonly key: string
  readonly scope: Scope.CloseableScope
  current: Upstream.Upstream
  users: number
}

/** One config being served, or finishing the requests that started on it. */
interface Generation {
  readonly config: ServerConfig
  readonly handler: Http.Handler
  readonly runFork: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>
  /** The request runtime, as the relay's fast path reads it. */
  readonly caller: Relay.Caller
  readonly health: Health.Health
  /** What the console's feed reads of this config. */
  readonly source: Events.Source
  /** Owns its client, relay, gateway; its health checks have a scope of their own inside. */
  readonly scope: Scope.CloseableScope
  readonly healthScope: Scope.CloseableScope
  readonly lineages: ReadonlyArray<Lineage>
  readonly since: number
  /** Requests started on it that have not ended. */
  inFlight: number
  /** Requests it served in all. */
  served: number
  /** Replaced by a newer config: released when its last request ends. */
  retired: boolean
}

const lineageKey = (name: string, baseUrl: string) => `${name}\u0000${baseUrl.replace(/\/+$/, "")}`

/**
 * Serves `config` until the scope closes. Returns the running server; the
 * caller decides when to drain (see {@link drain}).
 *
 * Requests are handled by a plain `node:http` listener that runs the Effect
 * handler (Http.ts) as one fiber per request. @effect/platform's HTTP server
 * was the first version; on this 2-core machine it answered 3.4k req/s for an
 * empty handler against 20.7k for `node:http`, and capped the gateway at
 * about 1k req/s (README, Performance). The handler itself is unchanged.
 *
 * A config reload (`Running.reload`) builds the new config's pipeline (over
 * the same stores, and over the same upstream objects, or ones carried on
 * from them, for upstreams whose name and URL did not change), then swaps
 * one reference: each request reads it once, at its start, and runs wholly
 * on the config it found. A replaced config is released when its last
 * request (streams included) ends.
 */
export const serve = (config: ServerConfig, options: ServeOptions = {}): Effect.Effect<Running, never, Scope.Scope> =>
  Effect.gen(function*() {
    const logger = Log.logger(options.logFormat ?? "json")
    // Background fibers forked while building (health probes, Redis) log as
    // request fibers do: one format, at the configured level.
    const withLogs = (level: LogLevel.Literal) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      effect.pipe(
        Effect.locally(FiberRef.currentLoggers, HashSet.make(logger)),
        Logger.withMinimumLogLevel(LogLevel.fromLiteral(level))
      )
    const serverScope = yield* Effect.scope
    // Request lines, in the server's format, buffered per turn of the event
    // loop; flushed when the server's scope closes. One for every config.
    const requestLog = yield* RequestLog.scoped({ format: options.logFormat ?? "json" })
    // Traces: the OpenTelemetry SDK is loaded only when they are on. Read at
    // start: a reload keeps the tracer (the telemetry section needs a restart).
    const telemetry = config.telemetry === undefined && options.spanProcessor === undefined
      ? undefined
      : yield* Effect.flatMap(
        Effect.promise(() => import("./Telemetry.js")),
        (Telemetry) =>
          Telemetry.make(config.telemetry, {
            spanProcessor: options.spanProcessor,
            warn: (message) => Effect.runFork(withLogs(config.server.logLevel)(Effect.logWarning(message)))
          })
      )
    // The console's feed (Events.ts): its cooldown events come from the store, observed.
    const feed = Events.make(() => current.source)
    yield* Effect.addFinalizer(() => Effect.sync(() => feed.close()))
    const stores = yield* withLogs(config.server.logLevel)(Layer.build(storesLayer(config)))
    const shared = Context.add(stores, Cooldown.CooldownStore, feed.observe(Context.get(stores, Cooldown.CooldownStore)))
    const base = yield* withLogs(config.server.logLevel)(Effect.runtime<never>())
    const runBase = Runtime.runFork(base)
    let draining = false
    let inFlight = 0
    const lineages = new Map<string, Lineage>()
    // Set below, before the server listens (the handler calls it for `POST /admin/reload`).
    let reloadFn: (trigger: string) => Promise<Reload.Outcome>

    /** The upstreams of `config`: carried on from the lineage of each name and URL, or new. */
    const upstreamsOf = (config: ServerConfig) =>
      Effect.gen(function*() {
        const relayOptions = Config.toRelayOptions(config)
        const built: Array<readonly [Lineage | undefined, string, Scope.CloseableScope, Upstream.Upstream]> = []
        for (const c of relayOptions.upstreams) {
          const key = lineageKey(c.name, c.baseUrl)
          const lineage = lineages.get(key)
          const scope = lineage?.scope ?? (yield* Scope.fork(serverScope, ExecutionStrategy.sequential))
          const upstream = yield* Upstream.make(c, { breaker: relayOptions.breaker, previous: lineage?.current }).pipe(
            Scope.extend(scope),
            Effect.provide(shared)
          )
          built.push([lineage, key, scope, upstream])
        }
        // Building cannot fail: only now is the lineages' state changed.
        const used = built.map(([lineage, key, scope, upstream]) => {
          const l = lineage ?? { key, scope, current: upstream, users: 0 }
          l.current = upstream
          l.users++
          lineages.set(key, l)
          return l
        })
        return { upstreams: built.map(([, , , u]) => u), used }
      })

    /** Builds the pipeline and the HTTP handler of `config`. Never fails: the config was validated. */
    const build = (config: ServerConfig, previous: Generation | undefined) =>
      withLogs(config.server.logLevel)(Effect.gen(function*() {
        // A console's stream ends when its config is replaced: it reconnects, and its key is checked again.
        let self: Generation | undefined
        const events: Events.Feed = {
          ...feed,
          subscribe: (closing) => feed.subscribe(() => closing() || self?.retired === true)
        }
        const { upstreams, used } = yield* upstreamsOf(config)
        const scope = yield* Scope.fork(serverScope, ExecutionStrategy.sequential)
        const relayOptions = Config.toRelayOptions(config)
        const relay = Layer.effect(
          Relay.Relay,
          Relay.makeWith(upstreams, telemetry === undefined ? relayOptions : { ...relayOptions, tracing: telemetry.relay })
        )
        const pipeline = yield* Layer.build(pipelineLayer(config, relay)).pipe(Effect.provide(shared), Scope.extend(scope))
        const context = Context.merge(shared, pipeline)
        const healthScope = yield* Scope.fork(scope, ExecutionStrategy.sequential)
        const healthContext = yield* Layer.build(healthLayer(config, previous?.health)).pipe(
          Effect.provide(context),
          Scope.extend(healthScope)
        )
        const all = Context.add(Context.merge(context, healthContext), RequestLog.RequestLog, requestLog)
        const handler = yield* Effect.provide(
          Http.make({
            maxBodyBytes: config.server.maxBodyBytes,
            adminKey: config.server.adminKey,
            knownModels: configuredModels(config),
            draining: () => draining,
            reload: () => Effect.promise(() => reloadFn("POST /admin/reload")),
            tracing: telemetry?.requests,
            events: config.server.console === false ? undefined : events,
            console: config.server.console !== false
          }),
          all
        )
        // Request fibers log in the server's format at this config's level, and
        // trace with the OpenTelemetry tracer when traces are on.
        const runtime = yield* (telemetry === undefined
          ? Effect.runtime<never>()
          : Effect.withTracer(Effect.runtime<never>(), telemetry.tracer))
        const requestRuntime = Runtime.make({ ...runtime, context: Context.merge(runtime.context, all) })
        // A cleared cooldown (a reset, here or on another replica) ends this generation's pacer holds too.
        yield* Scope.extend(Pacing.followClears(Context.get(shared, Cooldown.CooldownStore), upstreams), scope)
        // Breaker transitions, as they happen, for the console (a breaker kept across configs is told once).
        yield* Effect.forEach(upstreams, (u) =>
          Effect.flatMap(Scope.extend(u.breaker.changes, scope), (changes) =>
            Effect.forkIn(Stream.runForEach(changes, (t) => Effect.sync(() => feed.transition(t))), scope)), { discard: true })
        const generation: Generation = {
          config,
          handler,
          runFork: Runtime.runFork(requestRuntime),
          caller: Relay.callerOf(requestRuntime),
          health: Context.get(all, Health.Health),
          source: {
            upstreams,
            health: Context.get(all, Health.Health),
            keys: Context.get(all, Gateway.Gateway).keys,
            cooldowns: Context.get(shared, Cooldown.CooldownStore),
            run: Runtime.runPromise(requestRuntime)
          },
          scope,
          healthScope,
          lineages: used,
          since: performance.now(),
          inFlight: 0,
          served: 0,
          retired: false
        }
        yield* warnUnpriced(config, Context.get(all, Pricing.Pricing))
        self = generation
        return generation
      }))

    /** A replaced config whose last request has ended: close what it alone holds. */
    const release = (g: Generation) => {
      runBase(
        Effect.gen(function*() {
          yield* Scope.close(g.scope, Exit.void)
          for (const l of g.lineages) {
            if (--l.users === 0) {
              lineages.delete(l.key)
              yield* Scope.close(l.scope, Exit.void)
            }
          }
          yield* Effect.logDebug("previous config released").pipe(Effect.annotateLogs({
            requests: g.served,
            servedMs: Math.round(performance.now() - g.since)
          }))
        })
      )
    }

    let current = yield* build(config, undefined)

    // ----- reload -------------------------------------------------------------

    const reloading = yield* Effect.makeSemaphore(1)
    const source = options.reload

    const reload = (trigger: string): Effect.Effect<Reload.Outcome> =>
      Effect.gen(function*() {
        if (source === undefined) {
          yield* Effect.logWarning(`${trigger}: ${Reload.UNAVAILABLE_MESSAGE}`).pipe(Effect.annotateLogs({ trigger }))
          return { _tag: "Unavailable", message: Reload.UNAVAILABLE_MESSAGE } as const
        }
        const running = current
        const loaded = yield* Effect.either(source.load)
        if (loaded._tag === "Left") {
          yield* Effect.logError(`${trigger}: config not reloaded, the running one keeps serving. ${loaded.left.message}`).pipe(
            Effect.annotateLogs({ trigger, file: source.file })
          )
          return { _tag: "Refused", message: loaded.left.message } as const
        }
        const restart = Reload.restartRequired(running.config, loaded.right)
        const next = Reload.pinned(running.config, loaded.right)
        const unsafe = Reload.refusal(next)
        if (unsafe !== undefined) {
          yield* Effect.logError(`${trigger}: config not reloaded, the running one keeps serving. ${unsafe}`).pipe(
            Effect.annotateLogs({ trigger, file: source.file })
          )
          return { _tag: "Refused", message: unsafe } as const
        }
        const changes = Reload.changes(running.config, next)
        const fresh = yield* build(next, running)
        // An upstream at a new URL is another endpoint: the cooldown its name had (in the store) is not its own.
        const cooldowns = Context.get(shared, Cooldown.CooldownStore)
        yield* Effect.forEach(changes.upstreams.replaced, (name) => cooldowns.clear(name), { discard: true })
        // The swap: requests from now on run on `fresh`, those in flight finish on `running`.
        current = fresh
        running.retired = true
        runBase(Scope.close(running.healthScope, Exit.void))
        if (running.inFlight === 0) release(running)
        yield* withLogs(next.server.logLevel)(Effect.gen(function*() {
          yield* Effect.logInfo(`config reloaded (${trigger}): ${Reload.summary(changes)}`).pipe(Effect.annotateLogs({
            trigger,
            file: source.file,
            upstreams: changes.upstreams,
            keys: changes.keys,
            settings: changes.settings,
            inFlightOnPrevious: running.inFlight
          }))
          if (restart.length > 0) {
            yield* Effect.logWarning(
              `config reloaded, but these settings need a restart and keep their running values: ${restart.join(", ")}`
            ).pipe(Effect.annotateLogs({ trigger, restartRequired: restart }))
          }
          if (next.keys.length === 0) {
            yield* Effect.logWarning("no gateway keys are configured: any caller on this machine is accepted.")
          }
        }))
        return { _tag: "Reloaded", changes, restartRequired: restart } as const
      }).pipe(withLogs(current.config.server.logLevel), reloading.withPermits(1))

    reloadFn = (trigger) => Runtime.runPromise(base)(reload(trigger))

    /** A request's end, however it ended: counted, and its config released if it was the last on a replaced one. */
    const ended = (g: Generation) => {
      g.served++
      if (--g.inFlight === 0 && g.retired) release(g)
    }

    /** Writes a complete reply. */
    const send = (res: ServerResponse, reply: Http.Reply & { readonly body: string }) => {
      reply.headers["content-length"] = String(Buffer.byteLength(reply.body))
      res.writeHead(reply.status, reply.headers)
      res.end(reply.body)
    }

    /**
     * Runs `answer` (the handler's, or what the fast path handed over) as
     * the request's fiber and writes its reply. `gone`: the caller has
     * already hung up (the request is interrupted where it waits, and logged
     * as such: `answer` is interrupted where it waits).
     */
    const runRequest = (
      g: Generation,
      res: ServerResponse,
      incoming: Http.Incoming,
      answer: Effect.Effect<Http.Reply>,
      gone: boolean
    ) => {
      const handler = g.handler
      let hungUp = gone
      const fiber = g.runFork(Effect.flatMap(answer, (reply) => {
        if (typeof reply.body === "string") {
          send(res, reply as Http.Reply & { readonly body: string })
          return Effect.void
        }
        res.writeHead(reply.status, reply.headers)
        return Effect.ensuring(pipeStream(res, reply.body), Effect.sync(() => res.end()))
      }))
      fiber.addObserver((exit) => {
        if (exit._tag === "Failure" && !res.headersSent) {
          res.writeHead(500, { "content-type": "application/json" })
          res.end(OpenAI.errorBody("The gateway failed unexpectedly.", "server_error", null, "internal_error"))
        }
        // The caller left: the request is logged as such (499), and a stream
        // interrupted before its body was written is released.
        if (hungUp) g.runFork(handler.hungUp(incoming))
        ended(g)
      })
      // A caller that goes away stops its request (and its upstream stream).
      // One gone already is stopped where its request waits (a fiber runs at
      // once, up to its first wait: the request is on record by then).
      if (gone) fiber.unsafeInterruptAsFork(FiberId.none)
      else {
        res.once("close", () => {
          if (!res.writableFinished) {
            hungUp = true
            fiber.unsafeInterruptAsFork(FiberId.none)
          }
        })
      }
    }

    const incomingOf = (req: IncomingMessage, body: Effect.Effect<string | undefined>, started: number): Http.Incoming => ({
      method: req.method ?? "GET",
      url: req.url ?? "/",
      headers: req.headers as Record<string, string | undefined>,
      body,
      started,
      state: undefined
    })

    const fastPath = options.fastPath !== false
    const fastCounts = { answered: 0, hungUp: 0 }

    /**
     * `POST /v1/chat/completions`: the body read by plain callbacks, then the
     * handler's fast path (Http.Handler.fast), which answers the common
     * request without a fiber; what it declines or hands over runs as
     * `runRequest` would have run it.
     */
    const onChat = (g: Generation, req: IncomingMessage, res: ServerResponse) => {
      const started = performance.now()
      const max = g.config.server.maxBodyBytes
      if (Number(req.headers["content-length"] ?? 0) > max) {
        const incoming = incomingOf(req, readBody(req, max), started)
        return runRequest(g, res, incoming, g.handler(incoming), false)
      }
      const chunks: Array<Buffer> = []
      let size = 0
      let over = false
      // "body": reading it; "calling": the fast path's call is out; "done": answered or handed over.
      let phase: "body" | "calling" | "done" = "body"
      let cancel: Relay.Cancel | undefined
      const general = (body: Effect.Effect<string | undefined>, gone: boolean) => {
        phase = "done"
        const incoming = incomingOf(req, body, started)
        runRequest(g, res, incoming, g.handler(incoming), gone)
      }
      // A caller that leaves before its body is in is a hang-up, logged as the handler logs one.
      res.once("close", () => {
        if (phase === "body") return general(Effect.never, true)
        if (phase === "calling" && !res.writableFinished) {
          phase = "done"
          fastCounts.hungUp++
          cancel!((left) => {
            if (left !== Effect.void) g.runFork(left)
            ended(g)
          })
        }
      })
      req.on("data", (chunk: Buffer) => {
        size += chunk.length
        if (size > max) over = true
        else chunks.push(chunk)
      })
      req.once("error", () => {
        if (phase === "body") general(Effect.succeed(undefined), false)
      })
      req.once("end", () => {
        if (phase !== "body") return
        if (over) return general(Effect.succeed(undefined), false)
        const text = (chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size)).toString("utf8")
        const incoming = incomingOf(req, Effect.succeed(text), started)
        phase = "calling"
        let taken: ReturnType<Http.Handler["fast"]>
        try {
          taken = g.handler.fast(incoming, text, g.caller, (answer) => {
            if (phase !== "calling") return
            phase = "done"
            if (Effect.isEffect(answer)) return runRequest(g, res, incoming, answer, false)
            fastCounts.answered++
            send(res, answer as Http.Reply & { readonly body: string })
            ended(g)
          })
        } catch (defect) {
          // A defect of the fast path's plain code: a 500 (and its log), as a request fiber's defect is; never the process's.
          if (phase !== "calling") return
          phase = "done"
          return runRequest(g, res, incoming, Effect.zipRight(Effect.logError("unexpected failure", Cause.die(defect)), Effect.die(defect)), false)
        }
        if (taken === undefined) return general(Effect.succeed(text), false)
        if (Effect.isEffect(taken)) {
          phase = "done"
          return runRequest(g, res, incoming, taken, false)
        }
        cancel = taken
      })
    }

    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      // The request runs wholly on the config served now, even if a reload
      // swaps it meanwhile: that one read is all a reload costs a request.
      const g = current
      g.inFlight++
      inFlight++
      // A caller that resets its connection makes these emit 'error'; unheard,
      // that would end the process. The 'close' below handles the hang-up.
      req.on("error", ignore)
      res.on("error", ignore)
      res.once("close", () => inFlight--)
      if (fastPath && req.method === "POST" && req.url === "/v1/chat/completions" && g.handler.fastAccepts(req.headers as Record<string, string | undefined>)) {
        return onChat(g, req, res)
      }
      const incoming = incomingOf(req, readBody(req, g.config.server.maxBodyBytes), performance.now())
      runRequest(g, res, incoming, g.handler(incoming), false)
    }

    // Node enforces these timeouts (a connection that sends nothing counts
    // as slow headers); its check runs every `connectionsCheckingInterval`.
    const bodyMs = Duration.toMillis(config.server.bodyTimeout)
    const headersMs = Math.min(Duration.toMillis(config.server.headersTimeout), bodyMs)
    const server = createServer({
      // Node arms the idle timer 1 s past this (so that the client closes first): keep the sum in a timer's range.
      keepAliveTimeout: Math.min(Duration.toMillis(config.server.keepAliveTimeout), Config.MAX_DURATION_MILLIS - 1_000),
      headersTimeout: headersMs,
      requestTimeout: bodyMs,
      connectionsCheckingInterval: checkingInterval(headersMs, bodyMs)
    }, onRequest)
    server.maxConnections = config.server.maxConnections

    const log = (level: "Info" | "Warning", message: string, annotations: Record<string, unknown>) =>
      current.runFork(Effect.logWithLevel(LogLevel.fromLiteral(level), message).pipe(Effect.annotateLogs(annotations)))

    let open = 0
    server.on("connection", (socket: Socket) => {
      connectionsOpen.unsafeUpdate(++open, [])
      socket.once("close", () => connectionsOpen.unsafeUpdate(--open, []))
    })
    // Node closes a connection beyond maxConnections at once; say so, at most every 10 s.
    let refused = 0
    let refusedLoggedAt = 0
    server.on("drop", () => {
      connectionsRefused.unsafeUpdate(1, [])
      refused++
      const now = Date.now()
      if (now - refusedLoggedAt >= 10_000) {
        log("Warning", "connection refused: server.maxConnections are open", {
          maxConnections: config.server.maxConnections,
          refused
        })
        refusedLoggedAt = now
        refused = 0
      }
    })
    // What Node's parser refuses, answered as OpenAI errors (Node's own
    // answers have no body). A connection that has not sent a byte (a
    // client's pre-opened one) is closed without an answer.
    server.on("clientError", (error: NodeJS.ErrnoException, socket: Socket) => {
      // The socket may error again while being answered or destroyed: never an unhandled 'error'.
      socket.on("error", ignore)
      const response = (socket as { _httpMessage?: ServerResponse | null })._httpMessage
      // A client that hung up mid-request (a reset, or its end before the
      // request was whole) is gone: nothing to answer, not a bad request.
      const hungUp = error.code === "ECONNRESET" || error.code === "HPE_INVALID_EOF_STATE"
      if (socket.writable && socket.bytesRead > 0 && !hungUp && (response == null || !response.headersSent)) {
        let status: keyof typeof STATUS_TEXT
        let reply: string
        if (error.code === "ERR_HTTP_REQUEST_TIMEOUT") {
          status = "408"
          reply = response == null
            ? rawFailure(status, `The request headers were not received within ${Duration.format(headersMs)}.`, "request_timeout")
            : rawFailure(status, `The request body was not received within ${Duration.format(bodyMs)}.`, "request_timeout")
        } else if (error.code === "HPE_HEADER_OVERFLOW") {
          status = "431"
          reply = rawFailure(status, "The request headers are too large.", "headers_too_large")
        } else {
          status = "400"
          reply = rawFailure(status, "The request is not valid HTTP.", "bad_request")
        }
        socket.write(reply)
        clientErrorsBy[status].unsafeUpdate(1, [])
        log("Info", "client error", { status: Number(status), code: error.code ?? null })
      }
      socket.destroy()
    })
    yield* Effect.acquireRelease(
      Effect.async<void>((resume) => {
        server.listen(config.server.port, config.server.host, () => resume(Effect.void))
      }),
      () => Effect.sync(() => {
        server.close()
        server.closeAllConnections()
      })
    )
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : config.server.port
    return {
      server,
      url: `http://${config.server.host}:${port}`,
      inFlight: () => inFlight,
      startDraining: () => {
        draining = true
      },
      config: () => current.config,
      reload: reloadFn,
      fastPath: () => ({ ...fastCounts })
    }
  })

/**
 * Drains the server, within `timeout` in all:
 *
 * 1. for `grace` (part of `timeout`), it keeps listening but answers new relay
 *    requests and /readyz with 503 and every response with `Connection:
 *    close`, so that load balancers take it out and kept-alive clients
 *    reconnect elsewhere;
 * 2. then it stops accepting connections and closes idle ones as they go
 *    idle, while requests in flight (streams included) finish;
 * 3. at `timeout`, it closes every connection left.
 *
 * `drained` says whether every request finished by itself.
 */
export const drain = (
  running: Running,
  timeout: Duration.DurationInput,
  grace: Duration.DurationInput = 0
): Promise<{ readonly drained: boolean }> =>
  new Promise((resolve) => {
    const started = Date.now()
    const deadline = started + Duration.toMillis(timeout)
    const listenUntil = Math.min(started + Duration.toMillis(grace), deadline)
    running.startDraining()
    let listening = true
    const tick = () => {
      const now = Date.now()
      if (listening && now >= listenUntil) {
        listening = false
        running.server.close()
      }
      if (!listening) running.server.closeIdleConnections()
      if ((!listening && running.inFlight() === 0) || now >= deadline) {
        const drained = running.inFlight() === 0
        if (listening) running.server.close()
        running.server.closeAllConnections()
        resolve({ drained })
        return
      }
      setTimeout(tick, Math.max(1, Math.min(25, (listening ? listenUntil : deadline) - now)))
    }
    tick()
  })
