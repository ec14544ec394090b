/**
 * Breakwater core: resilience services for LLM relays, as Effect services,
 * and the relay pipeline that composes them.
 *
 * @since 0.1.0
 */

// The resilience services
export * as Bulkhead from "./Bulkhead.js"
export * as CircuitBreaker from "./CircuitBreaker.js"
export * as RateLimiter from "./RateLimiter.js"
export * as ResponseCache from "./ResponseCache.js"
export * as Retry from "./Retry.js"
export * as RetryBudget from "./RetryBudget.js"
export * as Timeout from "./Timeout.js"

// The relay pipeline
export * as Cooldown from "./Cooldown.js"
export * as OpenAI from "./OpenAI.js"
export * as Pacing from "./Pacing.js"
export * as Pricing from "./Pricing.js"
export * as Relay from "./Relay.js"
export * as Hedge from "./Hedge.js"
export * as Router from "./Router.js"
export * as Upstream from "./Upstream.js"
export * as UpstreamClient from "./UpstreamClient.js"
export * as UpstreamError from "./UpstreamError.js"
export * as Health from "./Health.js"
export * as Spend from "./Spend.js"
// The Redis stores' option defaults (the stores themselves: `@breakwater/core/Redis`, which loads `ioredis`)
export * as RedisDefaults from "./RedisDefaults.js"

// Providers: other wire formats behind the OpenAI surface
export * as Anthropic from "./providers/Anthropic.js"
export * as Azure from "./providers/Azure.js"
export * as Gemini from "./providers/Gemini.js"
export * as OpenAICompatible from "./providers/OpenAICompatible.js"
export * as ProviderClient from "./providers/ProviderClient.js"
export * as Translation from "./providers/Translation.js"
