/**
 * The server: the relay pipeline and its stores, built from a config, behind
 * a Node HTTP server. One `node:http` server per process; keep-alive on.
 *
 * Shutdown drains: stop accepting, let requests in flight (streams included)
 * finish up to `server.shutdownTimeout`, then close what is left.
 */
import { Cooldown, Health, Pricing, RateLimiter, Relay, ResponseCache, Spend, UpstreamClient } from "@breakwater/core"
import * as HttpServer from "@effect/platform/HttpServer"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as HashSet from "effect/HashSet"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import { createServer, type Server as NodeServer } from "node:http"
import type { ServerConfig } from "./Config.js"
import * as Config from "./Config.js"
import * as Gateway from "./Gateway.js"
import * as Http from "./Http.js"

/** The core services the HTTP app needs, from the config (in-memory stores). */
export const servicesLayer = (config: ServerConfig) => {
  const stores = Layer.mergeAll(
    RateLimiter.layerStoreMemory,
    Cooldown.layerStoreMemory,
    Spend.layerStoreMemory,
    ResponseCache.layerMemory({ ttl: config.cache.ttl, maxEntries: config.cache.maxEntries })
  )
  const relay = Relay.layer(Config.toRelayOptions(config)).pipe(
    Layer.provide(Layer.mergeAll(stores, UpstreamClient.layerUndici, Pricing.layer(config.pricing)))
  )
  const health = Layer.scoped(
    Health.Health,
    Effect.flatMap(Relay.Relay, (r) =>
      Health.make(r.upstreams, { interval: config.healthCheck.interval, timeout: config.healthCheck.timeout }))
  ).pipe(Layer.provide(Layer.mergeAll(UpstreamClient.layerUndici, stores)))
  const gateway = Gateway.layer(config.keys)
  return Layer.mergeAll(health, gateway).pipe(Layer.provideMerge(relay), Layer.provideMerge(stores))
}

export interface Running {
  readonly server: NodeServer
  readonly url: string
  /** Requests being answered right now (streams count until they end). */
  readonly inFlight: () => number
}

/**
 * Serves `config` until the scope closes. Returns the running server; the
 * caller decides when to drain (see {@link drain}).
 */
export const serve = (config: ServerConfig): Effect.Effect<Running, unknown, import("effect/Scope").Scope> =>
  Effect.gen(function*() {
    const server = createServer({ keepAliveTimeout: 65_000 })
    let inFlight = 0
    server.on("request", (_req, res) => {
      inFlight++
      res.once("close", () => inFlight--)
    })
    // Request fibers inherit the fiber refs of the effect that starts serving:
    // JSON logs, one line per request, at the configured level.
    const app = Effect.flatMap(
      Http.make({ maxBodyBytes: config.server.maxBodyBytes, adminKey: config.server.adminKey }),
      (handler) => HttpServer.serveEffect(handler)
    ).pipe(
      Effect.locally(FiberRef.currentLoggers, HashSet.make(Logger.withConsoleLog(Logger.jsonLogger))),
      Logger.withMinimumLogLevel(LogLevel.fromLiteral(config.server.logLevel))
    )
    yield* Layer.buildWithScope(
      Layer.scopedDiscard(app).pipe(
        Layer.provide(servicesLayer(config)),
        Layer.provide(NodeHttpServer.layer(() => server, { host: config.server.host, port: config.server.port }))
      ),
      yield* Effect.scope
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
