/**
 * Breakwater core: resilience services for LLM relays, as Effect services.
 *
 * @since 0.1.0
 */
export * as CircuitBreaker from "./CircuitBreaker.js"
export * as Bulkhead from "./Bulkhead.js"
export * as RateLimiter from "./RateLimiter.js"
export * as Timeout from "./Timeout.js"
export * as Retry from "./Retry.js"
export * as ResponseCache from "./ResponseCache.js"
