/**
 * Demo mode: what `npm start` runs without a config. Three in-process fake
 * upstreams — one flaky with 429s, one slow, one steady — behind the real
 * gateway, so that a newcomer sees failover, cooldowns, the breaker and the
 * cache at work with curl or the OpenAI SDK. The demo caches every exact
 * match (`mode: all`), so a repeated curl shows a hit; the default caches
 * only deterministic requests.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Scope from "effect/Scope"
import * as Config from "./Config.js"

export interface Demo {
  readonly config: Config.ServerConfig
  readonly upstreams: ReadonlyArray<FakeUpstream.FakeUpstream>
}

/** What the demo's fake upstreams list as their models. */
export const DEMO_MODELS: ReadonlyArray<string> = ["gpt-4.1", "gpt-4.1-mini", "gpt-4o-mini", "text-embedding-3-small"]

/** The demo's config, in the same YAML an operator would write. */
export const yaml = (urls: { flaky: string; slow: string; steady: string }, port: number, host: string) => `
server: { host: ${host}, port: ${port}, adminKey: demo-admin-key, drainGrace: 0s }
upstreams:
  - { name: flaky, baseUrl: "${urls.flaky}", apiKey: sk-demo-flaky, models: "*", priority: 1 }
  - { name: slow, baseUrl: "${urls.slow}", apiKey: sk-demo-slow, models: "*", priority: 2 }
  - { name: steady, baseUrl: "${urls.steady}", apiKey: sk-demo-steady, models: "*", priority: 3 }
routing: { strategy: priority, maxAttempts: 3 }
breaker: { failureThreshold: 5, openDuration: 30s }
retry: { maxRetryAfter: 10s }
cache: { enabled: true, ttl: 5m, mode: all }
healthCheck: { interval: 10s }
`

/** Starts the three fake upstreams (closed with the scope) and builds the config. */
export const make = (options: { readonly port: number; readonly host: string }): Effect.Effect<Demo, Config.ConfigInvalid | Config.ConfigUnreadable, Scope.Scope> =>
  Effect.gen(function*() {
    // Each lists these from GET /models, which is what the gateway's /v1/models shows (every upstream is "*").
    const models = DEMO_MODELS
    const flaky = yield* FakeUpstream.make({ name: "flaky", models, faults: { rate429: 0.3, retryAfter: "2" } })
    const slow = yield* FakeUpstream.make({ name: "slow", models, faults: { latencyMs: 250, jitterMs: 250 } })
    const steady = yield* FakeUpstream.make({ name: "steady", models, faults: { latencyMs: 20 } })
    const text = yaml({ flaky: flaky.url, slow: slow.url, steady: steady.url }, options.port, options.host)
    const config = yield* Either.match(Config.parse(text, { file: "<demo>", env: {} }), {
      onLeft: Effect.fail,
      onRight: Effect.succeed
    })
    return { config, upstreams: [flaky, slow, steady] }
  })
