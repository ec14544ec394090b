/**
 * The server: the relay pipeline and its stores, built from a config, behind
 * a Node HTTP server. One `node:http` server per process; keep-alive on.
 *
 * Shutdown drains: stop accepting, let requests in flight (streams included)
 * finish up to `server.shutdownTimeout`, then close what is left.
 */
import { Cooldown, Health, OpenAI, Pricing, RateLimiter, Relay, ResponseCache, Spend, UpstreamClient } from "@breakwater/core"
import * as Cause from "effect/Cause"
import * as Redis from "@breakwater/core/Redis"
import * as Context from "effect/Context"
import * as Redacted from "effect/Redacted"
import * as FiberId from "effect/FiberId"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as HashSet from "effect/HashSet"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import { createServer, type IncomingMessage, type Server as NodeServer, type ServerResponse, STATUS_CODES } from "node:http"
import type { Duplex } from "node:stream"
import type { ServerConfig } from "./Config.js"
import * as Config from "./Config.js"
import * as Gateway from "./Gateway.js"
import * as Http from "./Http.js"

/** The core services the HTTP app needs, from the config (in-memory stores). */
/** Every shared store on one Redis connection, the response cache over it. */
const redisStores = (
  config: ServerConfig,
  url: Redacted.Redacted<string>,
  prefix: string
): Layer.Layer<
  RateLimiter.RateLimiterStore | Cooldown.CooldownStore | Spend.SpendStore | ResponseCache.ResponseCache
> => {
  const shared = Redis.layer({ url: Redacted.value(url), prefix })
  return Layer.merge(shared, ResponseCache.layer({ ttl: config.cache.ttl }).pipe(Layer.provide(shared)))
}

export const servicesLayer = (config: ServerConfig) => {
  // `store.kind` switches every shared store at once. Layers are memoised
  // by reference, so each store (and the Redis connection) is built once.
  const stores = config.store.kind === "redis"
    ? redisStores(config, config.store.url, config.store.prefix)
    : Layer.mergeAll(
      RateLimiter.layerStoreMemory,
      Cooldown.layerStoreMemory,
      Spend.layerStoreMemory,
      ResponseCache.layerMemory({ ttl: config.cache.ttl, maxEntries: config.cache.maxEntries })
    )
  // One client (one connection pool) for the relay and the health probes.
  const upstreamClient = UpstreamClient.layerUndiciWith(Config.toUndiciOptions(config))
  // Metric labels: configured models, aliases and their targets, and key names, as they are.
  const pricing = Pricing.layer(config.pricing, { models: configuredModels(config), keys: config.keys.map((k) => k.name) })
  const relay = Relay.layer(Config.toRelayOptions(config)).pipe(
    Layer.provide(Layer.mergeAll(stores, upstreamClient, pricing))
  )
  const health = Layer.scoped(
    Health.Health,
    Effect.flatMap(Relay.Relay, (r) =>
      Health.make(r.upstreams, { interval: config.healthCheck.interval, timeout: config.healthCheck.timeout }))
  ).pipe(Layer.provide(Layer.mergeAll(upstreamClient, stores)))
  const gateway = Layer.effect(
    Gateway.Gateway,
    Effect.flatMap(Relay.Relay, (r) =>
      Gateway.make(config.keys, {
        // What a request for `model` may be sent as: one name per upstream that serves it.
        targets: (model) => r.upstreams.flatMap((u) => {
          const target = u.modelFor(model)
          return target === undefined ? [] : [target]
        }),
        unknown: config.pricingPolicy.unknown,
        estimatedOutputTokens: config.pricingPolicy.estimatedOutputTokens
      }))
  )
  return Layer.mergeAll(health, gateway).pipe(
    Layer.provideMerge(relay),
    Layer.provideMerge(Layer.merge(stores, pricing))
  )
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
}

/**
 * One JSON object per line on stdout: time, level, message and the log's
 * annotations as top-level fields. Flat on purpose: it is written for every
 * request, and Effect's `jsonLogger` (which nests and inspects every value)
 * costs several times more.
 */
const jsonLines = Logger.make(({ annotations, cause, date, logLevel, message }) => {
  const line: Record<string, unknown> = {
    time: date.toISOString(),
    level: logLevel.label,
    msg: Array.isArray(message) ? message.map(String).join(" ") : String(message)
  }
  for (const [k, v] of annotations) line[k] = v
  if (cause._tag !== "Empty") line["cause"] = Cause.pretty(cause)
  process.stdout.write(JSON.stringify(line) + "\n")
})

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
const onClientError = (error: NodeJS.ErrnoException, socket: Duplex): void => {
  socket.on("error", ignore)
  if (socket.writable && (socket as Duplex & { bytesWritten?: number }).bytesWritten === 0 && error.code !== "ECONNRESET") {
    const status = error.code === "HPE_HEADER_OVERFLOW" ? 431 : error.code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : 400
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`)
  }
  socket.destroy()
}

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
export const serve = (config: ServerConfig): Effect.Effect<Running, never, Scope.Scope> =>
  Effect.gen(function*() {
    const context = yield* Layer.build(servicesLayer(config))
    yield* warnUnpriced(config, Context.get(context, Pricing.Pricing))
    // Request fibers run with JSON logs at the configured level.
    const runtime = yield* Effect.runtime<never>().pipe(
      Effect.locally(FiberRef.currentLoggers, HashSet.make(jsonLines)),
      Logger.withMinimumLogLevel(LogLevel.fromLiteral(config.server.logLevel))
    )
    const handler = yield* Effect.provide(
      Http.make({
        maxBodyBytes: config.server.maxBodyBytes,
        adminKey: config.server.adminKey,
        knownModels: configuredModels(config)
      }),
      context
    )
    const runFork = Runtime.runFork(Runtime.make({ ...runtime, context: Context.merge(runtime.context, context) }))
    const maxBody = config.server.maxBodyBytes
    let inFlight = 0

    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      inFlight++
      // A caller that resets its connection makes these emit 'error'; unheard,
      // that would end the process. The 'close' below handles the hang-up.
      req.on("error", ignore)
      res.on("error", ignore)
      res.once("close", () => inFlight--)
      const incoming: Http.Incoming = {
        method: req.method ?? "GET",
        url: req.url ?? "/",
        headers: req.headers as Record<string, string | undefined>,
        body: readBody(req, maxBody),
        state: undefined
      }
      let hungUp = false
      const fiber = runFork(Effect.flatMap(handler(incoming), (reply) => {
        if (typeof reply.body === "string") {
          res.writeHead(reply.status, { ...reply.headers, "content-length": Buffer.byteLength(reply.body) })
          res.end(reply.body)
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
        if (hungUp) runFork(handler.hungUp(incoming))
      })
      // A caller that goes away stops its request (and its upstream stream).
      res.once("close", () => {
        if (!res.writableFinished) {
          hungUp = true
          fiber.unsafeInterruptAsFork(FiberId.none)
        }
      })
    }

    const server = createServer({ keepAliveTimeout: 65_000 }, onRequest)
    server.on("clientError", onClientError)
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
    return { server, url: `http://${config.server.host}:${port}`, inFlight: () => inFlight }
  })

/**
 * Stops accepting connections, waits for requests in flight to finish (up to
 * `timeout`), then closes every connection left. Idle keep-alive connections
 * are closed as soon as they go idle.
 */
export const drain = (running: Running, timeout: Duration.DurationInput): Promise<{ readonly drained: boolean }> =>
  new Promise((resolve) => {
    const deadline = Date.now() + Duration.toMillis(timeout)
    running.server.close()
    const tick = () => {
      running.server.closeIdleConnections()
      if (running.inFlight() === 0 || Date.now() >= deadline) {
        const drained = running.inFlight() === 0
        running.server.closeAllConnections()
        resolve({ drained })
        return
      }
      setTimeout(tick, 25)
    }
    tick()
  })
