/**
 * What a relay needs besides its options, for the integration tests over real
 * HTTP on 127.0.0.1: in-memory stores, the undici upstream client, the
 * default prices and an in-memory response cache.
 */
import * as Layer from "effect/Layer"
import * as Cooldown from "../../src/Cooldown.js"
import * as Pricing from "../../src/Pricing.js"
import * as RateLimiter from "../../src/RateLimiter.js"
import * as ResponseCache from "../../src/ResponseCache.js"
import * as UpstreamClient from "../../src/UpstreamClient.js"

export const httpRelayDeps = Layer.mergeAll(
  RateLimiter.layerStoreMemory,
  Cooldown.layerStoreMemory,
  UpstreamClient.layerUndici,
  Pricing.layer(),
  ResponseCache.layerMemory()
)
