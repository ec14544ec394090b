/**
 * The relay over upstreams of every kind, through `ProviderClient`, over real
 * HTTP on 127.0.0.1 against fakes speaking each protocol: answers come back
 * in OpenAI's format, each provider's errors fail over as OpenAI's do, and a
 * field a provider cannot take is a 400 naming it.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import * as Cooldown from "../../src/Cooldown.js"
import type * as OpenAI from "../../src/OpenAI.js"
import * as Pricing from "../../src/Pricing.js"
import * as ProviderClient from "../../src/providers/ProviderClient.js"
import * as RateLimiter from "../../src/RateLimiter.js"
import * as Relay from "../../src/Relay.js"
import * as ResponseCache from "../../src/ResponseCache.js"
import type * as Upstream from "../../src/Upstream.js"
import * as UpstreamClient from "../../src/UpstreamClient.js"
import * as Fake from "../../src/testing/FakeUpstream.js"

const withRelay = <A, E>(
  options: Relay.Options,
  providers: Record<string, ProviderClient.Provider>,
  f: (relay: Relay.Relay) => Effect.Effect<A, E>
) => {
  const client = ProviderClient.layer((name) => providers[name]).pipe(Layer.provide(UpstreamClient.layerUndici))
  const deps = Layer.mergeAll(
    RateLimiter.layerStoreMemory,
    Cooldown.layerStoreMemory,
    client,
    Pricing.layer(),
    ResponseCache.layerMemory()
  )
  return Effect.flatMap(Relay.Relay, f).pipe(
    Effect.provide(Relay.layer({ cacheMode: "none", ...options }).pipe(Layer.provide(deps)))
  )
}

const up = (fake: Fake.FakeUpstream, priority: number, extra: Partial<Upstream.Config> = {}): Upstream.Config => ({
  name: fake.name,
  baseUrl: fake.url,
  apiKey: Redacted.make(`key-${fake.name}`),
  models: "*",
  priority,
  ...extra
})

let seq = 0
const ask = (extra: Record<string, unknown> = {}): OpenAI.ChatCompletionRequest => ({
  model: "gpt-4.1",
  messages: [{ role: "user", content: `question ${++seq}` }],
  ...extra
}) as OpenAI.ChatCompletionRequest

const fakes = (...options: Array<Fake.Options>) =>
  Effect.all(options.map((o) => Fake.make(o)))

const events = (chunk: Chunk.Chunk<string>) =>
  Chunk.toReadonlyArray(chunk).join("").split("\n\n").filter((e) => e !== "").map((e) => e.slice(6))

describe("ProviderClient under the relay", () => {
  it.scoped("an OpenAI primary down fails over to an Anthropic upstream; the answer is OpenAI's shape", () =>
    Effect.gen(function*() {
      const [primary, claude] = yield* fakes({ name: "primary", faults: { status: 503 } }, { name: "claude", protocol: "anthropic" })
      const result = yield* withRelay(
        { upstreams: [up(primary!, 1), up(claude!, 2)], maxAttempts: 3, retry: { maxRetries: 0 } },
        { claude: { kind: "anthropic" } },
        (relay) => relay.chat(ask())
      )
      expect(result.metadata.upstream).toBe("claude")
      const body = JSON.parse(result.body)
      expect(body.object).toBe("chat.completion")
      expect(body.choices[0].message).toEqual({ role: "assistant", content: "Hello from claude" })
      expect(body.usage).toMatchObject({ prompt_tokens: 3, completion_tokens: 5 })
      const c = claude!.counters()
      expect(c.lastPath).toBe("/v1/messages")
      expect(c.lastHeaders?.["x-api-key"]).toBe("key-claude")
      expect(c.lastHeaders?.["authorization"]).toBeUndefined()
      expect(JSON.parse(c.lastBody!)).toEqual({
        model: "gpt-4.1",
        max_tokens: 4096,
        messages: [{ role: "user", content: `question ${seq}` }]
      })
    }))

  it.scoped("streams from Anthropic and Gemini as OpenAI chunks ending in [DONE]", () =>
    Effect.gen(function*() {
      const [claude, gemini] = yield* fakes(
        { name: "claude", protocol: "anthropic", reply: () => "one two three" },
        { name: "gemini", protocol: "gemini", reply: () => "four five" }
      )
      for (const [fake, kind, text] of [[claude!, "anthropic", "one two three"], [gemini!, "gemini", "four five"]] as const) {
        const out = yield* withRelay({ upstreams: [up(fake, 1)] }, { [fake.name]: { kind } }, (relay) =>
          Effect.flatMap(relay.chatStream(ask({ stream: true })), (s) => Stream.runCollect(s.events)))
        const list = events(out)
        expect(list.at(-1)).toBe("[DONE]")
        const chunks = list.slice(0, -1).map((e) => JSON.parse(e))
        expect(chunks.map((ch) => ch.choices[0]?.delta?.content ?? "").join("")).toBe(text)
        expect(chunks.every((ch) => ch.object === "chat.completion.chunk")).toBe(true)
      }
      expect(gemini!.counters().lastPath).toBe("/v1beta/models/gpt-4.1:streamGenerateContent?alt=sse")
      expect(gemini!.counters().lastHeaders?.["x-goog-api-key"]).toBe("key-gemini")
      expect(gemini!.counters().lastHeaders?.["authorization"]).toBeUndefined()
    }))

  it.scoped("Anthropic 529s fail over to Gemini; a Gemini rate limit cools it down and moves on", () =>
    Effect.gen(function*() {
      const [claude, gemini, last] = yield* fakes(
        { name: "claude", protocol: "anthropic", faults: { rate5xx: 1 } },
        { name: "gemini", protocol: "gemini" },
        { name: "last" }
      )
      const providers = { claude: { kind: "anthropic" }, gemini: { kind: "gemini" } } as const
      const options = { upstreams: [up(claude!, 1), up(gemini!, 2), up(last!, 3)], maxAttempts: 3, retry: { maxRetries: 0 } }
      const first = yield* withRelay(options, providers, (relay) => relay.chat(ask()))
      expect(first.metadata.upstream).toBe("gemini")
      expect(claude!.counters().byStatus[529]).toBe(1)
      gemini!.setFaults({ rate429: 1, retryAfter: "30" })
      const second = yield* withRelay(options, providers, (relay) => relay.chat(ask()))
      expect(second.metadata.upstream).toBe("last")
      expect(gemini!.counters().byStatus[429]).toBe(1)
    }))

  it.scoped("a field the provider cannot take is a 400 naming it", () =>
    Effect.gen(function*() {
      const [claude] = yield* fakes({ name: "claude", protocol: "anthropic" })
      const error = yield* Effect.flip(
        withRelay({ upstreams: [up(claude!, 1)] }, { claude: { kind: "anthropic" } }, (relay) => relay.chat(ask({ logprobs: true })))
      )
      expect(error._tag).toBe("UpstreamRejected")
      if (error._tag !== "UpstreamRejected") return
      expect(error.status).toBe(400)
      expect(JSON.parse(error.body).error).toMatchObject({ param: "logprobs", type: "invalid_request_error" })
      expect(claude!.counters().chat).toBe(0)
    }))

  it.scoped("Azure: the deployment URL and api-key; Gemini embeddings", () =>
    Effect.gen(function*() {
      const [azure, gemini] = yield* fakes({ name: "azure", protocol: "azure-openai" }, { name: "gemini", protocol: "gemini" })
      const chat = yield* withRelay(
        { upstreams: [up(azure!, 1)] },
        { azure: { kind: "azure-openai", deployments: { "gpt-4.1": "gpt41" }, apiVersion: "2024-10-21" } },
        (relay) => relay.chat(ask())
      )
      expect(JSON.parse(chat.body).choices[0].message.content).toBe("Hello from azure")
      expect(azure!.counters().lastPath).toBe("/openai/deployments/gpt41/chat/completions?api-version=2024-10-21")
      expect(azure!.counters().lastHeaders?.["api-key"]).toBe("key-azure")
      expect(azure!.counters().lastHeaders?.["authorization"]).toBeUndefined()
      const emb = yield* withRelay({ upstreams: [up(gemini!, 1)] }, { gemini: { kind: "gemini" } }, (relay) =>
        relay.embeddings({ model: "gemini-embedding-001", input: ["a", "b"] }))
      const body = JSON.parse(emb.body)
      expect(body.object).toBe("list")
      expect(body.data).toHaveLength(2)
      expect(gemini!.counters().lastPath).toBe("/v1beta/models/gemini-embedding-001:batchEmbedContents")
    }))
})
