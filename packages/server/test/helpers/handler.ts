/**
 * The gateway's services built in process for tests of the HTTP handler:
 * the relay over an upstream client the test writes, in-memory stores (the
 * rate-limit store replaceable, e.g. by one that answers later), pricing and
 * the gateway, from a parsed config.
 */
import { Cooldown, Pricing, RateLimiter, Relay, ResponseCache, Spend, UpstreamClient } from "@breakwater/core"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Config from "../../src/Config.js"
import * as Gateway from "../../src/Gateway.js"

/** A chat completion as an upstream answers it (gpt-4.1, "Hi.", 12 + 4 tokens). */
export const COMPLETION = JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 0,
  model: "gpt-4.1",
  choices: [{ index: 0, message: { role: "assistant", content: "Hi." }, finish_reason: "stop" }],
  usage: { prompt_tokens: 12, completion_tokens: 4, total_tokens: 16 }
})

export const buildGateway = async (
  config: Config.ServerConfig,
  client: UpstreamClient.UpstreamClient,
  rateLimits: Layer.Layer<RateLimiter.RateLimiterStore> = RateLimiter.layerStoreMemory
) => {
  const stores = Layer.mergeAll(
    rateLimits,
    Cooldown.layerStoreMemory,
    Spend.layerStoreMemory,
    ResponseCache.layerMemory({ ttl: config.cache.ttl, maxEntries: config.cache.maxEntries })
  )
  const pricing = Pricing.layer(config.pricing)
  const relay = Relay.layer(Config.toRelayOptions(config)).pipe(
    Layer.provide(Layer.mergeAll(stores, Layer.succeed(UpstreamClient.UpstreamClient, client), pricing))
  )
  const gateway = Layer.effect(Gateway.Gateway, Gateway.make(config.keys))
  const scope = Effect.runSync(Scope.make())
  const built = await Effect.runPromise(
    Scope.extend(Layer.build(gateway.pipe(Layer.provideMerge(relay), Layer.provideMerge(Layer.merge(stores, pricing)))), scope)
  )
  return { built, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}
