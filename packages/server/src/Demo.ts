/**
 * Demo mode: what `npm start` runs without a config. Three in-process fake
 * upstreams — one flaky with 429s, one slow, one steady — behind the real
 * gateway, so that a newcomer sees failover, cooldowns, the breaker and the
 * cache at work with curl or the OpenAI SDK. And a provider outage: `gpt-5`'s
 * only upstream (`outage`, OpenAI's protocol) answers 503 to everything, and
 * `routing.fallbacks` sends its requests on to `claude-sonnet-4.5` on an
 * Anthropic-protocol fake (`claude`): the answer says so in
 * `x-breakwater-model`. The demo caches every exact match (`mode: all`), so
 * a repeated curl shows a hit; the default caches only deterministic
 * requests.
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

/** The model whose provider is down in the demo, and the fallback that answers for it. */
export const OUTAGE_MODEL = "gpt-5"
export const FALLBACK_MODEL = "claude-sonnet-4.5"

/**
 * The demo's config, in the same YAML an operator would write. Without
 * `outage` and `claude` URLs, the three OpenAI fakes serve any model.
 */
export const yaml = (
  urls: { flaky: string; slow: string; steady: string; outage?: string | undefined; claude?: string | undefined },
  port: number,
  host: string
) => {
  const fallback = urls.outage !== undefined && urls.claude !== undefined
  // With the outage shown, the OpenAI fakes serve their own models only (a "*" one would answer for gpt-5 too).
  const models = fallback ? `[${DEMO_MODELS.join(", ")}]` : `"*"`
  return `
server: { host: ${host}, port: ${port}, adminKey: demo-admin-key, drainGrace: 0s }
upstreams:
  - { name: flaky, baseUrl: "${urls.flaky}", apiKey: sk-demo-flaky, models: ${models}, priority: 1 }
  - { name: slow, baseUrl: "${urls.slow}", apiKey: sk-demo-slow, models: ${models}, priority: 2 }
  - { name: steady, baseUrl: "${urls.steady}", apiKey: sk-demo-steady, models: ${models}, priority: 3 }
${
    fallback
      ? `  - { name: outage, baseUrl: "${urls.outage}", apiKey: sk-demo-outage, models: [${OUTAGE_MODEL}] }
  - { name: claude, kind: anthropic, baseUrl: "${urls.claude}", apiKey: sk-demo-claude, models: [${FALLBACK_MODEL}] }
routing: { strategy: priority, maxAttempts: 3, fallbacks: { ${OUTAGE_MODEL}: [${FALLBACK_MODEL}] } }`
      : `routing: { strategy: priority, maxAttempts: 3 }`
  }
breaker: { failureThreshold: 5, openDuration: 30s }
retry: { maxRetryAfter: 10s }
cache: { enabled: true, ttl: 5m, mode: all }
healthCheck: { interval: 10s }
`
}

/** Starts the three fake upstreams (closed with the scope) and builds the config. */
export const make = (options: { readonly port: number; readonly host: string }): Effect.Effect<Demo, Config.ConfigInvalid | Config.ConfigUnreadable, Scope.Scope> =>
  Effect.gen(function*() {
    // Each lists these from GET /models, which is what the gateway's /v1/models shows (every upstream is "*").
    const models = DEMO_MODELS
    const flaky = yield* FakeUpstream.make({ name: "flaky", models, faults: { rate429: 0.3, retryAfter: "2" } })
    const slow = yield* FakeUpstream.make({ name: "slow", models, faults: { latencyMs: 250, jitterMs: 250 } })
    const steady = yield* FakeUpstream.make({ name: "steady", models, faults: { latencyMs: 20 } })
    // A provider outage: gpt-5's only upstream answers 503; claude-sonnet-4.5 (Anthropic's protocol) answers instead.
    const outage = yield* FakeUpstream.make({ name: "outage", models: [OUTAGE_MODEL], faults: { status: 503 } })
    const claude = yield* FakeUpstream.make({ name: "claude", protocol: "anthropic", models: [FALLBACK_MODEL], faults: { latencyMs: 30 } })
    const text = yaml(
      { flaky: flaky.url, slow: slow.url, steady: steady.url, outage: outage.url, claude: claude.url },
      options.port,
      options.host
    )
    const config = yield* Either.match(Config.parse(text, { file: "<demo>", env: {} }), {
      onLeft: Effect.fail,
      onRight: Effect.succeed
    })
    return { config, upstreams: [flaky, slow, steady, outage, claude] }
  })
