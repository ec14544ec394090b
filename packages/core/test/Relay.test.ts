/**
 * The relay's decisions, under TestClock, against a scripted upstream client
 * (no HTTP): failover, caller errors, cooldowns, waiting, attempt caps,
 * rounds with backoff, the deadline, models and aliases, routing, the
 * breaker, the cache, cost and streaming.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as Cooldown from "../src/Cooldown.js"
import * as Health from "../src/Health.js"
import type * as OpenAI from "../src/OpenAI.js"
import * as Pricing from "../src/Pricing.js"
import * as RateLimiter from "../src/RateLimiter.js"
import * as Relay from "../src/Relay.js"
import * as ResponseCache from "../src/ResponseCache.js"
import type * as Upstream from "../src/Upstream.js"
import type { UpstreamRejected } from "../src/UpstreamError.js"
import * as Scripted from "./support/ScriptedClient.js"

// ---------------------------------------------------------------------------
// Harness

const MODEL = "gpt-4.1"
/** USD for the scripted usage (10 prompt, 5 completion tokens) of gpt-4.1 ($2 / $8 per million). */
const COST = (10 * 2 + 5 * 8) / 1_000_000

const upstream = (name: string, extra: Partial<Upstream.Config> = {}): Upstream.Config => ({
  name,
  baseUrl: `https://${name}.example.test/v1`,
  apiKey: Redacted.make(`sk-secret-${name}`),
  models: [MODEL],
  ...extra
})

/** Upstreams a, b, c... with priorities 1, 2, 3... so that `priority` routing is deterministic. */
const ordered = (...names: ReadonlyArray<string>): Array<Upstream.Config> =>
  names.map((name, i) => upstream(name, { priority: i + 1 }))

interface Harness {
  readonly relay: Relay.Relay
  readonly client: Scripted.Scripted
  readonly cooldowns: Context.Tag.Service<Cooldown.CooldownStore>
}

/** Builds a relay over a fresh scripted client, in the test's scope. Caching is off unless asked for. */
const setup = (options: Relay.Options, { keepDefaults = false } = {}): Effect.Effect<Harness, never, Scope.Scope> =>
  Effect.gen(function*() {
    const client = Scripted.make()
    const cooldowns = yield* Cooldown.makeStoreMemory
    const deps = Layer.mergeAll(
      RateLimiter.layerStoreMemory,
      Layer.succeed(Cooldown.CooldownStore, cooldowns),
      client.layer,
      Pricing.layer(),
      ResponseCache.layerMemory()
    )
    const ctx = yield* Layer.build(Relay.layer(keepDefaults ? options : { cacheMode: "none", ...options }).pipe(Layer.provide(deps)))
    return { relay: Context.get(ctx, Relay.Relay), client, cooldowns }
  })

const request = (content = "hi", extra: Partial<OpenAI.ChatCompletionRequest> = {}): OpenAI.ChatCompletionRequest => ({
  model: MODEL,
  messages: [{ role: "user", content }],
  ...extra
})

const isDone = <A, E>(fiber: Fiber.Fiber<A, E>) => Effect.map(Fiber.poll(fiber), Option.isSome)

/** Lets runnable fibers run (no clock time passes); stops early once `fiber` is done. */
const settle = <A, E>(fiber: Fiber.Fiber<A, E>) =>
  Effect.gen(function*() {
    for (let i = 0; i < 200; i++) {
      if (yield* isDone(fiber)) return true
      yield* Effect.yieldNow()
    }
    return false
  })

/** Yields until `cond` holds; dies rather than hanging. */
const waitUntil = (label: string, cond: () => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 2_000; i++) {
      if (cond()) return
      yield* Effect.yieldNow()
    }
    return yield* Effect.dieMessage(`condition never held: ${label}`)
  })

const collect = (s: Relay.StreamResult) => Effect.map(Stream.runCollect(s.events), Chunk.toReadonlyArray)

const names = (calls: ReadonlyArray<Scripted.Call>) => calls.map((c) => c.upstream)

/** No secret key anywhere in what the caller sees. */
const expectNoSecrets = (value: unknown) => {
  const text = [
    value instanceof Error ? value.message : "",
    String(value),
    JSON.stringify(value) ?? ""
  ].join("\n")
  expect(text).not.toMatch(/sk-secret/)
}

// ---------------------------------------------------------------------------
// 1. Failover on each retryable kind

describe("failover", () => {
  const cases: ReadonlyArray<{
    readonly name: string
    readonly first: Scripted.Reply
    readonly reason: string
    readonly upstream?: Partial<Upstream.Config>
    /** Clock time the first attempt takes. */
    readonly wait?: number
  }> = [
    { name: "429", first: Scripted.status(429), reason: "rate limited (429)" },
    { name: "503", first: Scripted.status(503), reason: "server error (503)" },
    { name: "500", first: Scripted.status(500), reason: "server error (500)" },
    { name: "connection error", first: Scripted.unreachable("ECONNRESET"), reason: "connection failed (ECONNRESET)" },
    {
      name: "attempt timeout",
      first: Scripted.hang,
      reason: "no answer within 2s",
      upstream: { timeout: "2 seconds" },
      wait: 2000
    },
    {
      name: "truncated JSON",
      first: Scripted.reply(200, Scripted.completion("hello").slice(0, 60)),
      reason: "invalid response (truncated)"
    },
    {
      name: "choices: []",
      first: Scripted.reply(200, JSON.stringify({ id: "x", object: "chat.completion", created: 0, model: "m", choices: [] })),
      reason: "invalid response (empty-choices)"
    },
    { name: "empty assistant message", first: Scripted.ok(""), reason: "invalid response (empty-message)" },
    {
      name: "quota in a 429 body",
      first: Scripted.status(429, {}, Scripted.quotaBody),
      reason: "quota exhausted (insufficient_quota)"
    },
    {
      name: "quota in a 200 body",
      first: Scripted.reply(200, Scripted.quotaBody),
      reason: "quota exhausted (insufficient_quota)"
    }
  ]

  for (const c of cases) {
    it.scoped(`${c.name} on the first upstream: the answer comes from the second`, () =>
      Effect.gen(function*() {
        const { client, relay } = yield* setup({
          upstreams: [upstream("a", { priority: 1, ...c.upstream }), upstream("b", { priority: 2 })]
        })
        client.script("a", c.first)
        client.fallback("b", Scripted.ok("from b"))
        const fiber = yield* Effect.fork(relay.chat(request()))
        if (c.wait !== undefined) {
          yield* TestClock.adjust(c.wait - 1)
          expect(yield* isDone(fiber)).toBe(false)
          expect(client.callsTo("b")).toHaveLength(0)
          yield* TestClock.adjust(1)
        }
        const result = yield* Fiber.join(fiber)
        expect(JSON.parse(result.body).choices[0].message.content).toBe("from b")
        expect(result.metadata.upstream).toBe("b")
        expect(result.metadata.attempts).toBe(2)
        expect(result.metadata.failures).toEqual([`a: ${c.reason}`])
        expect(names(client.calls)).toEqual(["a", "b"])
        expect(client.calls[1]!.at).toBe(c.wait ?? 0)
        expect(client.calls.every((call) => call.path === "/chat/completions")).toBe(true)
        expectNoSecrets(result.metadata)
      }))
  }
})

// ---------------------------------------------------------------------------
// 2. The caller's own bad request

describe("non-retryable statuses", () => {
  for (const code of [400, 404, 422]) {
    it.scoped(`${code} from the first upstream comes back as UpstreamRejected; the second is not called`, () =>
      Effect.gen(function*() {
        const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
        const body = Scripted.errorJson(`rejected with ${code}`, "invalid_request_error", "bad_thing")
        client.script("a", Scripted.reply(code, body, { "content-type": "application/json; charset=utf-8" }))
        const error = yield* Effect.flip(relay.chat(request()))
        expect(error._tag).toBe("UpstreamRejected")
        const rejected = error as UpstreamRejected
        expect(rejected.status).toBe(code)
        expect(rejected.body).toBe(body)
        expect(rejected.upstream).toBe("a")
        expect(rejected.contentType).toBe("application/json; charset=utf-8")
        expect(names(client.calls)).toEqual(["a"])
        expectNoSecrets(error)
      }))
  }
})

// ---------------------------------------------------------------------------
// 2b. An upstream's own 401/403 (its key) and 404 model_not_found fail over

describe("an upstream rejecting its own key (401/403)", () => {
  const revoked = (code: number) =>
    Scripted.status(code, {}, Scripted.errorJson("Incorrect API key provided: sk-secr**********", "invalid_request_error", "invalid_api_key"))

  for (const code of [401, 403]) {
    it.scoped(`${code}: fails over; the upstream is out for authFailedCooldown (default 5 min), then used again`, () =>
      Effect.gen(function*() {
        const h = yield* setup({ upstreams: ordered("a", "b") })
        h.client.script("a", revoked(code))
        const r1 = yield* h.relay.chat(request())
        expect(r1.metadata.upstream).toBe("b")
        expect(r1.metadata.attempts).toBe(2)
        expect(r1.metadata.failures).toEqual([`a: rejected its API key (${code})`])
        const active = yield* h.cooldowns.active(0)
        expect(active.get("a")).toEqual({ until: 5 * 60_000, reason: "auth-failed" })
        // Not the breaker's business: it stays closed.
        expect(yield* h.relay.upstreams[0]!.breaker.state).toBe("Closed")
        yield* expectCooldown(h, 5 * 60_000)
      }))
  }

  it.scoped("one ERROR log line per incident, naming the upstream and never its key", () =>
    Effect.gen(function*() {
      const lines: Array<{ readonly level: string; readonly message: string; readonly upstream: unknown }> = []
      const logger = Logger.make(({ annotations, logLevel, message }) => {
        lines.push({ level: logLevel.label, message: String(message), upstream: HashMap.get(annotations, "upstream") })
      })
      const h = yield* setup({ upstreams: ordered("a", "b") })
      h.client.fallback("a", Scripted.delayed("10 millis", revoked(401)))
      const fiber = yield* Effect.fork(
        Effect.all(Array.from({ length: 5 }, (_, i) => h.relay.chat(request(`${i}`))), { concurrency: "unbounded" }).pipe(
          Effect.provide(Logger.replace(Logger.defaultLogger, logger))
        )
      )
      yield* TestClock.adjust("10 millis")
      const results = yield* Fiber.join(fiber)
      expect(results.map((r) => r.metadata.upstream)).toEqual(["b", "b", "b", "b", "b"])
      expect(h.client.callsTo("a")).toHaveLength(5)
      const errors = lines.filter((l) => l.level === "ERROR")
      expect(errors).toHaveLength(1)
      expect(errors[0]!.message).toContain("upstream 'a' rejected its API key (401)")
      expect(errors[0]!.upstream).toEqual(Option.some("a"))
      expect(JSON.stringify(lines)).not.toContain("sk-secret")
    }))

  it.scoped("authFailedCooldown sets the length", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b"), authFailedCooldown: "30 seconds" })
      h.client.script("a", revoked(401))
      expect((yield* h.relay.chat(request())).metadata.upstream).toBe("b")
      yield* expectCooldown(h, 30_000)
    }))

  it.scoped("no other upstream: UpstreamKeysRejected naming the upstream, now and while it cools down", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a") })
      h.client.fallback("a", revoked(401))
      const first = yield* Effect.flip(h.relay.chat(request()))
      expect(first._tag).toBe("UpstreamKeysRejected")
      expect(first.message).toBe(
        "Upstream 'a' rejected the API key the gateway holds for it, and no other upstream can serve 'gpt-4.1'; " +
          "the gateway's operator must replace that key."
      )
      expect(Relay.upstreamOf(first)).toBe("a")
      expectNoSecrets(first)
      // One call: no rounds of retries against a rejected key.
      expect(h.client.callsTo("a")).toHaveLength(1)
      const second = yield* Effect.flip(h.relay.chat(request("again")))
      expect(second._tag).toBe("UpstreamKeysRejected")
      expect(h.client.callsTo("a")).toHaveLength(1)
    }))

  it.scoped("two upstreams, both rejecting their keys: both named", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b") })
      h.client.fallback("a", revoked(401))
      h.client.fallback("b", revoked(403))
      const error = yield* Effect.flip(h.relay.chat(request()))
      expect(error._tag).toBe("UpstreamKeysRejected")
      expect(error.message).toMatch(/^Upstreams 'a' and 'b' rejected the API keys the gateway holds for them/)
    }))

  it.scoped("one rejecting its key, the other failing otherwise: AllUpstreamsFailed saying which rejected its key", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b"), retry: { maxRetries: 0 } })
      h.client.fallback("a", revoked(401))
      h.client.fallback("b", Scripted.status(503))
      const error = yield* Effect.flip(h.relay.chat(request()))
      expect(error._tag).toBe("AllUpstreamsFailed")
      expect(error.message).toContain("a: rejected its API key (401)")
    }))

  it.scoped("streams fail over the same way", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b") })
      h.client.scriptStream("a", Scripted.streamStatus(401))
      const s = yield* h.relay.chatStream(request("hi", { stream: true }))
      expect(s.upstream).toBe("b")
      expect((yield* h.cooldowns.active(0)).get("a")?.reason).toBe("auth-failed")
    }))

  it.scoped("a health probe that succeeds with the upstream's key ends the cooldown early", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b") })
      yield* Health.make(h.relay.upstreams, { interval: "10 seconds" }).pipe(
        Effect.provide(Layer.merge(h.client.layer, Layer.succeed(Cooldown.CooldownStore, h.cooldowns)))
      )
      yield* TestClock.adjust(0)
      // The key is revoked: chat and probes get 401.
      h.client.fallback("a", revoked(401))
      expect((yield* h.relay.chat(request("1"))).metadata.upstream).toBe("b")
      expect((yield* h.cooldowns.active(0)).get("a")?.reason).toBe("auth-failed")
      // A probe with the revoked key keeps it out.
      yield* TestClock.adjust("10 seconds")
      expect((yield* h.cooldowns.active(10_000)).get("a")?.reason).toBe("auth-failed")
      expect((yield* h.relay.chat(request("2"))).metadata.upstream).toBe("b")
      // The operator replaces the key: the next probe succeeds and a is back, long before 5 min.
      h.client.fallback("a", Scripted.ok())
      yield* TestClock.adjust("9999 millis")
      expect((yield* h.relay.chat(request("3"))).metadata.upstream).toBe("b")
      yield* TestClock.adjust("1 millis")
      expect((yield* h.cooldowns.active(20_000)).get("a")).toBeUndefined()
      expect((yield* h.relay.chat(request("4"))).metadata.upstream).toBe("a")
    }))

  it.scoped("a probe answering 401 takes the upstream out before any request meets it", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b") })
      h.client.fallback("a", revoked(401))
      yield* Health.make(h.relay.upstreams, { interval: "10 seconds" }).pipe(
        Effect.provide(Layer.merge(h.client.layer, Layer.succeed(Cooldown.CooldownStore, h.cooldowns)))
      )
      yield* TestClock.adjust(0)
      expect((yield* h.cooldowns.active(0)).get("a")).toEqual({ until: 5 * 60_000, reason: "auth-failed" })
      const r = yield* h.relay.chat(request())
      expect(r.metadata.upstream).toBe("b")
      expect(r.metadata.attempts).toBe(1)
      expect(h.client.calls.filter((c) => c.kind === "post").map((c) => c.upstream)).toEqual(["b"])
    }))
})

describe("an upstream without the model (404 model_not_found)", () => {
  const notFound = Scripted.status(
    404,
    {},
    Scripted.errorJson("The model `gpt-4.1` does not exist or you do not have access to it.", "invalid_request_error", "model_not_found")
  )

  it.scoped("fails over to the next upstream serving the model; no cooldown, breaker closed", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b") })
      h.client.script("a", notFound)
      const r = yield* h.relay.chat(request())
      expect(r.metadata.upstream).toBe("b")
      expect(r.metadata.failures).toEqual(["a: model not found (404)"])
      expect((yield* h.cooldowns.active(0)).size).toBe(0)
      expect(yield* h.relay.upstreams[0]!.breaker.state).toBe("Closed")
      expect((yield* h.relay.chat(request("next"))).metadata.upstream).toBe("a")
    }))

  it.scoped("every upstream says not found: the caller gets the last 404 as it came, with no retry rounds", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b"), retry: { maxRetries: 2 } })
      h.client.fallback("a", notFound)
      h.client.fallback("b", notFound)
      const error = yield* Effect.flip(h.relay.chat(request()))
      expect(error._tag).toBe("UpstreamRejected")
      const rejected = error as UpstreamRejected
      expect(rejected.status).toBe(404)
      expect(rejected.upstream).toBe("b")
      expect(JSON.parse(rejected.body).error.code).toBe("model_not_found")
      expect(names(h.client.calls)).toEqual(["a", "b"])
    }))

  it.scoped("not found on one, 503 on the other: the next round skips the one without the model", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b"), maxAttempts: 5, retry: { maxRetries: 1 } })
      h.client.fallback("a", notFound)
      h.client.script("b", Scripted.status(503))
      const fiber = yield* Effect.fork(h.relay.chat(request()))
      yield* TestClock.adjust("10 seconds")
      const r = yield* Fiber.join(fiber)
      expect(r.metadata.upstream).toBe("b")
      expect(names(h.client.calls)).toEqual(["a", "b", "b"])
    }))

  it.scoped("a 404 that is not about a model is the caller's, relayed at once", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b") })
      h.client.script("a", Scripted.status(404, {}, Scripted.errorJson("No such file: file-123", "invalid_request_error")))
      const error = yield* Effect.flip(h.relay.chat(request()))
      expect(error._tag).toBe("UpstreamRejected")
      expect(names(h.client.calls)).toEqual(["a"])
    }))
})

describe("upstreamOf: which upstream a failed request ended on", () => {
  it.scoped("the upstream that answered a relayed error, or the last one tried", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b"), retry: { maxRetries: 0 } })
      h.client.script("a", Scripted.status(400))
      expect(Relay.upstreamOf(yield* Effect.flip(h.relay.chat(request("1"))))).toBe("a")
      h.client.script("a", Scripted.status(500))
      h.client.script("b", Scripted.status(500))
      const failed = yield* Effect.flip(h.relay.chat(request("2")))
      expect(failed._tag).toBe("AllUpstreamsFailed")
      expect(Relay.upstreamOf(failed)).toBe("b")
      expect(Relay.upstreamOf(new Relay.UnknownModel({ model: "x" }))).toBeUndefined()
    }))

  it.scoped("none available: the last upstream considered", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b"), retry: { maxRetries: 0 } })
      h.client.script("a", Scripted.status(429, { "retry-after": "60" }))
      h.client.script("b", Scripted.status(429, { "retry-after": "60" }))
      yield* Effect.flip(h.relay.chat(request("1")))
      const none = yield* Effect.flip(h.relay.chat(request("2")))
      expect(none._tag).toBe("NoUpstreamAvailable")
      expect(Relay.upstreamOf(none)).toBe("b")
    }))

  it.scoped("the deadline: the upstream being called when it passed", () =>
    Effect.gen(function*() {
      const h = yield* setup({
        requestTimeout: "5 seconds",
        upstreams: [upstream("a", { priority: 1, timeout: "2 seconds" }), upstream("b", { priority: 2, timeout: "10 seconds" })]
      })
      h.client.fallback("a", Scripted.hang)
      h.client.fallback("b", Scripted.hang)
      const fiber = yield* Effect.fork(h.relay.chat(request()))
      yield* TestClock.adjust("5 seconds")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error._tag).toBe("DeadlineExceeded")
      expect(Relay.upstreamOf(error)).toBe("b")
    }))
})

// ---------------------------------------------------------------------------
// 3. Short answers are answers

describe("valid answers", () => {
  it.scoped("a short answer (\"4\") is accepted without failover", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      client.script("a", Scripted.ok("4"))
      const result = yield* relay.chat(request("2+2?"))
      expect(JSON.parse(result.body).choices[0].message.content).toBe("4")
      expect(result.metadata.upstream).toBe("a")
      expect(result.metadata.attempts).toBe(1)
      expect(result.metadata.failures).toEqual([])
      expect(names(client.calls)).toEqual(["a"])
    }))

  it.scoped("a tool call with null content is accepted without failover", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      const body = JSON.stringify({
        id: "x",
        object: "chat.completion",
        created: 0,
        model: "m",
        choices: [{
          index: 0,
          message: {
            role: "assistant",
            content: null,
            tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" } }]
          },
          finish_reason: "tool_calls"
        }]
      })
      client.script("a", Scripted.reply(200, body))
      const result = yield* relay.chat(request())
      expect(result.body).toBe(body)
      expect(result.metadata.upstream).toBe("a")
      expect(names(client.calls)).toEqual(["a"])
    }))
})

// ---------------------------------------------------------------------------
// 4-6. Cooldowns

/**
 * After the first request cooled `a` down: requests skip `a` until `ms` have
 * passed, and use it again from then on.
 */
const expectCooldown = (h: Harness, ms: number) =>
  Effect.gen(function*() {
    const { client, relay } = h
    const aCalls = client.callsTo("a").length
    const r2 = yield* relay.chat(request("second"))
    expect(r2.metadata.upstream).toBe("b")
    expect(r2.metadata.attempts).toBe(1)
    expect(client.callsTo("a")).toHaveLength(aCalls)
    yield* TestClock.adjust(ms - 1)
    const r3 = yield* relay.chat(request("third"))
    expect(r3.metadata.upstream).toBe("b")
    expect(client.callsTo("a")).toHaveLength(aCalls)
    yield* TestClock.adjust(1)
    const r4 = yield* relay.chat(request("fourth"))
    expect(r4.metadata.upstream).toBe("a")
    expect(client.callsTo("a")).toHaveLength(aCalls + 1)
  })

describe("cooldown after a 429", () => {
  const cases: ReadonlyArray<{
    readonly name: string
    readonly headers: Scripted.Headers
    readonly ms: number
    readonly options?: Partial<Relay.Options>
  }> = [
    { name: "Retry-After: 5", headers: { "retry-after": "5" }, ms: 5000 },
    { name: "no Retry-After (default rateLimitCooldown 1 s)", headers: {}, ms: 1000 },
    { name: "no Retry-After, rateLimitCooldown 3 s", headers: {}, ms: 3000, options: { rateLimitCooldown: "3 seconds" } },
    { name: "retry-after-ms: 2500", headers: { "retry-after-ms": "2500" }, ms: 2500 },
    { name: "retry-after-ms wins over retry-after", headers: { "retry-after-ms": "1500", "retry-after": "9" }, ms: 1500 },
    { name: "Retry-After as an HTTP date", headers: { "retry-after": "Thu, 01 Jan 1970 00:00:07 GMT" }, ms: 7000 }
  ]
  for (const c of cases) {
    it.scoped(`${c.name}: the upstream is skipped for ${c.ms} ms, then used again`, () =>
      Effect.gen(function*() {
        const h = yield* setup({ upstreams: ordered("a", "b"), ...c.options })
        h.client.script("a", Scripted.status(429, c.headers))
        const r1 = yield* h.relay.chat(request())
        expect(r1.metadata.upstream).toBe("b")
        expect(r1.metadata.failures).toHaveLength(1)
        expect(r1.metadata.failures[0]).toMatch(/^a: rate limited \(429\)/)
        yield* expectCooldown(h, c.ms)
      }))
  }

  it.scoped("a cooldown is shared: concurrent and later requests all skip the upstream", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b") })
      h.client.script("a", Scripted.status(429, { "retry-after": "5" }))
      yield* h.relay.chat(request())
      const results = yield* Effect.all(
        Array.from({ length: 10 }, (_, i) => h.relay.chat(request(`q${i}`))),
        { concurrency: "unbounded" }
      )
      expect(results.every((r) => r.metadata.upstream === "b")).toBe(true)
      expect(h.client.callsTo("a")).toHaveLength(1)
    }))
})

describe("cooldown after quota exhaustion", () => {
  const cases: ReadonlyArray<{ readonly name: string; readonly reply: Scripted.Reply }> = [
    { name: "insufficient_quota in a 429", reply: Scripted.status(429, { "retry-after": "1" }, Scripted.quotaBody) },
    { name: "insufficient_quota in a 200", reply: Scripted.reply(200, Scripted.quotaBody) }
  ]
  for (const c of cases) {
    it.scoped(`${c.name}: not called for quotaCooldown (1 hour), called again after`, () =>
      Effect.gen(function*() {
        const h = yield* setup({ upstreams: ordered("a", "b"), quotaCooldown: "1 hour" })
        h.client.script("a", c.reply)
        const r1 = yield* h.relay.chat(request())
        expect(r1.metadata.upstream).toBe("b")
        expect(r1.metadata.failures).toEqual(["a: quota exhausted (insufficient_quota)"])
        // Not the 1 s Retry-After or the rate-limit cooldown: the quota pause.
        yield* TestClock.adjust("10 minutes")
        yield* expectCooldown(h, Duration.toMillis(Duration.minutes(50)))
      }))
  }

  it.scoped("quotaCooldown is configurable (10 minutes)", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b"), quotaCooldown: "10 minutes" })
      h.client.script("a", Scripted.status(429, {}, Scripted.quotaBody))
      yield* h.relay.chat(request())
      yield* expectCooldown(h, 600_000)
    }))
})

describe("rate-limit headers", () => {
  it.scoped("a 200 with x-ratelimit-remaining-requests: 0 and reset 3s: skipped for 3 s, used after", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b") })
      h.client.script(
        "a",
        Scripted.ok("hi", { "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3s" })
      )
      const r1 = yield* h.relay.chat(request())
      // The answer itself is fine and is relayed.
      expect(r1.metadata.upstream).toBe("a")
      expect(r1.metadata.failures).toEqual([])
      yield* expectCooldown(h, 3000)
    }))

  it.scoped("remaining above the watermark: no cooldown", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b") })
      h.client.script(
        "a",
        Scripted.ok("hi", { "x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "3s" })
      )
      yield* h.relay.chat(request())
      const r2 = yield* h.relay.chat(request("second"))
      expect(r2.metadata.upstream).toBe("a")
    }))

  it.scoped("remaining tokens at or below headroomWatermark: skipped for the tokens' reset (6m0s)", () =>
    Effect.gen(function*() {
      const h = yield* setup({ upstreams: ordered("a", "b"), headroomWatermark: 100 })
      h.client.script(
        "a",
        Scripted.ok("hi", { "x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "6m0s" })
      )
      yield* h.relay.chat(request())
      yield* expectCooldown(h, 360_000)
    }))
})

// ---------------------------------------------------------------------------
// 7. Waiting for the only upstream

describe("when no upstream is available", () => {
  it.scoped("the only upstream cools down for 2 s (maxRetryAfter 10 s): the request waits and succeeds", () =>
    Effect.gen(function*() {
      const { client, cooldowns, relay } = yield* setup({
        upstreams: [upstream("a")],
        retry: { maxRetryAfter: "10 seconds" }
      })
      yield* Effect.provideService(Cooldown.start("a", "2 seconds", "rate-limited"), Cooldown.CooldownStore, cooldowns)
      const fiber = yield* Effect.fork(relay.chat(request()))
      yield* TestClock.adjust("1900 millis")
      expect(yield* isDone(fiber)).toBe(false)
      expect(client.calls).toHaveLength(0)
      yield* TestClock.adjust("100 millis")
      const result = yield* Fiber.join(fiber)
      expect(result.metadata.upstream).toBe("a")
      expect(result.metadata.attempts).toBe(1)
      expect(client.calls.map((c) => c.at)).toEqual([2000])
    }))

  it.scoped("the only upstream cools down for 30 s > maxRetryAfter: NoUpstreamAvailable at once, retryAfter 30 s", () =>
    Effect.gen(function*() {
      const { client, cooldowns, relay } = yield* setup({
        upstreams: [upstream("a")],
        retry: { maxRetryAfter: "10 seconds" }
      })
      yield* Effect.provideService(Cooldown.start("a", "30 seconds", "rate-limited"), Cooldown.CooldownStore, cooldowns)
      const fiber = yield* Effect.fork(relay.chat(request()))
      expect(yield* settle(fiber)).toBe(true)
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error._tag).toBe("NoUpstreamAvailable")
      const none = error as Relay.NoUpstreamAvailable
      expect(none.retryAfter).toBeDefined()
      expect(Duration.toMillis(none.retryAfter!)).toBe(30_000)
      expect(none.failures).toEqual([{ upstream: "a", reason: "cooling-down" }])
      expect(none.message).toBe("No upstream available for 'gpt-4.1': a: cooling-down")
      expect(client.calls).toHaveLength(0)
    }))

  it.scoped("a 429 with Retry-After: 2 on the only upstream: the request backs off, waits it out and succeeds at 2 s", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] })
      client.script("a", Scripted.status(429, { "retry-after": "2" }))
      const fiber = yield* Effect.fork(relay.chat(request()))
      yield* TestClock.adjust("1999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      expect(client.calls).toHaveLength(1)
      yield* TestClock.adjust("1 millis")
      const result = yield* Fiber.join(fiber)
      expect(result.metadata.upstream).toBe("a")
      expect(result.metadata.attempts).toBe(2)
      expect(result.metadata.failures).toEqual(["a: rate limited (429), retry after 2s"])
      expect(client.calls.map((c) => c.at)).toEqual([0, 2000])
    }))
})

// ---------------------------------------------------------------------------
// 8. maxAttempts and secrets

describe("maxAttempts", () => {
  it.scoped("3 upstreams all 503, maxAttempts 2: exactly 2 calls, AllUpstreamsFailed listing both, no key anywhere", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        maxAttempts: 2,
        upstreams: ["1", "2", "3"].map((n, i) =>
          upstream(`up${n}`, { priority: i + 1, apiKey: Redacted.make(`sk-secret-${n}`) })
        )
      })
      for (const n of ["1", "2", "3"]) client.fallback(`up${n}`, Scripted.status(503))
      const fiber = yield* Effect.fork(relay.chat(request()))
      // Fails without any backoff: the attempts are spent.
      expect(yield* settle(fiber)).toBe(true)
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error._tag).toBe("AllUpstreamsFailed")
      const failed = error as Relay.AllUpstreamsFailed
      expect(failed.failures).toEqual([
        { upstream: "up1", reason: "server error (503)" },
        { upstream: "up2", reason: "server error (503)" }
      ])
      expect(failed.message).toBe("All upstreams failed for 'gpt-4.1': up1: server error (503); up2: server error (503)")
      expect(names(client.calls)).toEqual(["up1", "up2"])
      expectNoSecrets(error)
    }))

  it.scoped("keys never appear in errors or metadata, whatever the failure", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b", "c") })
      // A reset, not a refusal: a refused connection would keep a out for 5 s (unreachableCooldown).
      client.script("a", Scripted.unreachable("ECONNRESET"))
      client.script("b", Scripted.status(429, { "retry-after": "1" }))
      const ok = yield* relay.chat(request())
      expect(ok.metadata.upstream).toBe("c")
      expectNoSecrets(ok.metadata)
      // b is cooling down now; a answers the next request with a 401 (its key), c with a 400.
      client.script("a", Scripted.status(401, {}, Scripted.errorJson("Incorrect API key provided", "invalid_request_error")))
      client.script("c", Scripted.status(400, {}, Scripted.errorJson("Bad request", "invalid_request_error")))
      const rejected = yield* Effect.flip(relay.chat(request("again")))
      expect(rejected._tag).toBe("UpstreamRejected")
      expect(names(client.calls).slice(-2)).toEqual(["a", "c"])
      expectNoSecrets(rejected)
    }))
})

// ---------------------------------------------------------------------------
// 9. Rounds with backoff

describe("rounds", () => {
  it.scoped("503 twice then OK on the only upstream: succeeds after two backoff sleeps, attempts 3", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a")],
        maxAttempts: 3,
        retry: { maxRetries: 2, baseDelay: "100 millis" }
      })
      client.script("a", Scripted.status(503), Scripted.status(503))
      const fiber = yield* Effect.fork(relay.chat(request()).pipe(Effect.withRandom(Random.make("backoff-seed"))))
      for (let t = 0; t < 300 && !(yield* isDone(fiber)); t += 5) yield* TestClock.adjust("5 millis")
      const result = yield* Fiber.join(fiber)
      expect(result.metadata.upstream).toBe("a")
      expect(result.metadata.attempts).toBe(3)
      expect(result.metadata.failures).toEqual(["a: server error (503)", "a: server error (503)"])
      const at = client.calls.map((c) => c.at)
      expect(at).toHaveLength(3)
      expect(at[0]).toBe(0)
      // Full jitter under caps of 100 ms, then 200 ms.
      expect(at[1]! - at[0]!).toBeLessThan(100)
      expect(at[2]! - at[1]!).toBeLessThan(200)
      expect(at[2]!).toBeGreaterThan(0)
    }))

  it.scoped("each backoff sleep is a real wait: not done before the sleep has passed", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a")],
        maxAttempts: 3,
        retry: { maxRetries: 2, baseDelay: "100 millis" }
      })
      client.script("a", Scripted.status(503), Scripted.status(503))
      // A Random that always draws the top of the range: sleeps of 99 ms and 199 ms.
      const fiber = yield* Effect.fork(relay.chat(request()).pipe(Effect.withRandom(Random.fixed([0.999]))))
      expect(yield* settle(fiber)).toBe(false)
      expect(client.calls).toHaveLength(1)
      yield* TestClock.adjust("98 millis")
      expect(client.calls).toHaveLength(1)
      yield* TestClock.adjust("1 millis")
      yield* waitUntil("second call", () => client.calls.length === 2)
      yield* TestClock.adjust("198 millis")
      expect(client.calls).toHaveLength(2)
      yield* TestClock.adjust("1 millis")
      const result = yield* Fiber.join(fiber)
      expect(result.metadata.attempts).toBe(3)
      expect(client.calls.map((c) => c.at)).toEqual([0, 99, 298])
    }))

  it.scoped("waiting out cooldowns uses no retry round: two waits, then a 503 still gets its backoff round", () =>
    Effect.gen(function*() {
      const { client, cooldowns, relay } = yield* setup({
        upstreams: [upstream("a")],
        maxAttempts: 3,
        retry: { maxRetries: 1, baseDelay: "100 millis", maxRetryAfter: "10 seconds" }
      })
      // The only upstream is cooling down; when it comes back it cools down again (another
      // request's 429, say), then answers 503 once, then OK.
      yield* Effect.provideService(Cooldown.start("a", "1 second", "rate-limited"), Cooldown.CooldownStore, cooldowns)
      client.script("a", Scripted.status(503))
      const fiber = yield* Effect.fork(relay.chat(request()).pipe(Effect.withRandom(Random.fixed([0.5]))))
      yield* TestClock.adjust("999 millis")
      yield* Effect.provideService(Cooldown.start("a", "1001 millis", "rate-limited"), Cooldown.CooldownStore, cooldowns)
      yield* TestClock.adjust("1 millis")
      expect(client.calls).toHaveLength(0)
      // Second wait ends at 2000; the 503 comes back at once; one backoff of 50 ms; then OK.
      yield* TestClock.adjust("1000 millis")
      yield* waitUntil("first call", () => client.calls.length === 1)
      yield* TestClock.adjust("50 millis")
      const result = yield* Fiber.join(fiber)
      expect(result.metadata.attempts).toBe(2)
      expect(client.calls.map((c) => c.at)).toEqual([2000, 2050])
    }))

  it.scoped("maxRetries 0: one round only, AllUpstreamsFailed after the first failure", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a")],
        maxAttempts: 3,
        retry: { maxRetries: 0 }
      })
      client.script("a", Scripted.status(503))
      const error = yield* Effect.flip(relay.chat(request()))
      expect(error._tag).toBe("AllUpstreamsFailed")
      expect(client.calls).toHaveLength(1)
    }))
})

describe("per-upstream retries", () => {
  it.scoped("retry.maxRetries on an upstream: a 503 is retried there, after a backoff, before moving on", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, retry: { maxRetries: 1, baseDelay: "100 millis" } }), upstream("b", { priority: 2 })]
      })
      client.script("a", Scripted.status(503))
      const fiber = yield* Effect.fork(relay.chat(request()).pipe(Effect.withRandom(Random.fixed([0.5]))))
      expect(yield* settle(fiber)).toBe(false)
      yield* TestClock.adjust("50 millis")
      const result = yield* Fiber.join(fiber)
      expect(result.metadata.upstream).toBe("a")
      expect(result.metadata.attempts).toBe(2)
      expect(result.metadata.failures).toEqual(["a: server error (503)"])
      expect(client.calls.map((c) => [c.upstream, c.at])).toEqual([["a", 0], ["a", 50]])
    }))

  it.scoped("retries on one upstream stop at its maxRetries, then the next upstream is tried", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        maxAttempts: 4,
        upstreams: [upstream("a", { priority: 1, retry: { maxRetries: 2, baseDelay: "100 millis" } }), upstream("b", { priority: 2 })]
      })
      client.fallback("a", Scripted.status(503))
      const fiber = yield* Effect.fork(relay.chat(request()))
      yield* TestClock.adjust("300 millis")
      const result = yield* Fiber.join(fiber)
      expect(result.metadata.upstream).toBe("b")
      expect(result.metadata.attempts).toBe(4)
      expect(names(client.calls)).toEqual(["a", "a", "a", "b"])
    }))

  it.scoped("a 429 is not retried on the same upstream: it moves on at once", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, retry: { maxRetries: 2 } }), upstream("b", { priority: 2 })]
      })
      client.script("a", Scripted.status(429))
      const result = yield* relay.chat(request())
      expect(result.metadata.upstream).toBe("b")
      expect(names(client.calls)).toEqual(["a", "b"])
    }))
})

// ---------------------------------------------------------------------------
// 10. The request's deadline

describe("deadline", () => {
  it.scoped("requestTimeout 5 s with hanging upstreams (timeout 10 s each): DeadlineExceeded at 5 s", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        requestTimeout: "5 seconds",
        upstreams: [upstream("a", { priority: 1, timeout: "10 seconds" }), upstream("b", { priority: 2, timeout: "10 seconds" })]
      })
      client.fallback("a", Scripted.hang)
      client.fallback("b", Scripted.hang)
      const fiber = yield* Effect.fork(relay.chat(request()))
      yield* TestClock.adjust("4999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect(yield* settle(fiber)).toBe(true)
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error._tag).toBe("DeadlineExceeded")
      expect(Duration.toMillis((error as { readonly budget: Duration.Duration }).budget)).toBe(5000)
      expect(names(client.calls)).toEqual(["a"])
    }))

  it.scoped("an attempt that times out at 3 s leaves the next upstream only the 2 s left", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        requestTimeout: "5 seconds",
        upstreams: [upstream("a", { priority: 1, timeout: "3 seconds" }), upstream("b", { priority: 2, timeout: "10 seconds" })]
      })
      client.fallback("a", Scripted.hang)
      client.fallback("b", Scripted.hang)
      const fiber = yield* Effect.fork(relay.chat(request()))
      yield* TestClock.adjust("3 seconds")
      expect(names(client.calls)).toEqual(["a", "b"])
      expect(client.calls[1]!.at).toBe(3000)
      yield* TestClock.adjust("1999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error._tag).toBe("DeadlineExceeded")
    }))
})

// ---------------------------------------------------------------------------
// 11. Models and aliases

describe("models", () => {
  it.scoped("an unknown model: UnknownModel, no upstream called", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      const error = yield* Effect.flip(relay.chat({ ...request(), model: "nope" }))
      expect(error._tag).toBe("UnknownModel")
      expect((error as Relay.UnknownModel).model).toBe("nope")
      expect(error.message).toBe("The model 'nope' does not exist or is not served by any upstream.")
      const streamError = yield* Effect.flip(relay.chatStream({ ...request(), model: "nope", stream: true }))
      expect(streamError._tag).toBe("UnknownModel")
      const embeddingsError = yield* Effect.flip(relay.embeddings({ model: "nope", input: "x" }))
      expect(embeddingsError._tag).toBe("UnknownModel")
      expect(client.calls).toHaveLength(0)
    }))

  it.scoped("models lists served names and aliases; \"*\" serves anything", () =>
    Effect.gen(function*() {
      const { relay } = yield* setup({
        upstreams: [
          upstream("a", { models: ["gpt-4.1"], aliases: { "gpt-4": "gpt-4.1" } }),
          upstream("b", { models: ["gpt-4.1", "claude-sonnet-4.5"] })
        ]
      })
      expect([...relay.models].sort()).toEqual(["claude-sonnet-4.5", "gpt-4", "gpt-4.1"])
      const any = yield* setup({ upstreams: [upstream("c", { models: "*" })] })
      expect(any.relay.models).toEqual(["*"])
      const result = yield* any.relay.chat({ ...request(), model: "anything-at-all" })
      expect(result.metadata.upstream).toBe("c")
    }))

  it.scoped("an alias sends the body with the upstream's model name", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { models: ["gpt-4.1"], aliases: { "gpt-4": "gpt-4.1" } })]
      })
      const req = request("hello", { model: "gpt-4", temperature: 0.5 })
      const raw = JSON.stringify(req)
      const result = yield* relay.chat(req, { rawBody: raw })
      expect(result.metadata.upstream).toBe("a")
      expect(client.calls).toHaveLength(1)
      const sent = JSON.parse(client.calls[0]!.body)
      expect(sent).toEqual({ ...req, model: "gpt-4.1" })
    }))

  it.scoped("an alias only applies to the upstream that has it", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [
          upstream("a", { priority: 1, models: ["gpt-4.1"] }),
          upstream("b", { priority: 2, models: ["gpt-4.1"], aliases: { "gpt-4": "gpt-4.1" } })
        ]
      })
      yield* relay.chat(request("x", { model: "gpt-4" }))
      expect(names(client.calls)).toEqual(["b"])
    }))

  const rawText = "{ \"model\" :  \"gpt-4.1\" ,\n  \"messages\": [ {\"role\":\"user\",  \"content\":\"hi\"} ],\n\t" +
    "\"x_unknown_field\": {\"nested\": [1, 2.50, true, null]}  }"

  it.scoped("without an alias the caller's rawBody bytes are forwarded exactly, on failover too", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      client.script("a", Scripted.status(503))
      const req = JSON.parse(rawText) as OpenAI.ChatCompletionRequest
      const result = yield* relay.chat(req, { rawBody: rawText })
      expect(result.metadata.upstream).toBe("b")
      expect(client.calls.map((c) => c.body)).toEqual([rawText, rawText])
    }))

  it.scoped("rawBody as bytes is forwarded exactly; without rawBody the request is serialised", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] })
      const req = JSON.parse(rawText) as OpenAI.ChatCompletionRequest
      yield* relay.chat(req, { rawBody: new TextEncoder().encode(rawText) })
      expect(client.calls[0]!.body).toBe(rawText)
      yield* relay.chat(req)
      expect(client.calls[1]!.body).toBe(JSON.stringify(req))
    }))
})

// ---------------------------------------------------------------------------
// 12. Routing strategies

describe("routing", () => {
  it.scoped("priority: priority 1 is always tried first, whatever the list order", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        router: { strategy: "priority" },
        upstreams: [upstream("a", { priority: 2, weight: 100 }), upstream("b", { priority: 1 })]
      })
      for (let i = 0; i < 50; i++) yield* relay.chat(request(`q${i}`))
      expect(client.callsTo("b")).toHaveLength(50)
      expect(client.callsTo("a")).toHaveLength(0)
    }))

  it.scoped("weighted 3:1 over 400 requests: about 75% / 25% of first picks", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        router: { strategy: "weighted" },
        upstreams: [upstream("a", { weight: 3 }), upstream("b", { weight: 1 })]
      })
      yield* Effect.gen(function*() {
        for (let i = 0; i < 400; i++) yield* relay.chat(request(`q${i}`))
      }).pipe(Effect.withRandom(Random.make("weighted-seed")))
      const a = client.callsTo("a").length
      expect(client.calls).toHaveLength(400)
      expect(a).toBeGreaterThan(260)
      expect(a).toBeLessThan(340)
    }), 30_000)

  it.scoped("least-busy: prefers the upstream with fewer calls in flight", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        router: { strategy: "least-busy" },
        upstreams: ordered("a", "b")
      })
      // Idle: the tie goes to priority, so a.
      const idle = yield* relay.chat(request("idle"))
      expect(idle.metadata.upstream).toBe("a")
      const gate = yield* Deferred.make<void>()
      client.script("a", Scripted.after(Deferred.await(gate), Scripted.ok("held")))
      const held = yield* Effect.fork(relay.chat(request("held")))
      yield* waitUntil("a holds a call", () => client.callsTo("a").length === 2)
      const busy = yield* relay.chat(request("busy"))
      expect(busy.metadata.upstream).toBe("b")
      yield* Deferred.succeed(gate, undefined)
      const heldResult = yield* Fiber.join(held)
      expect(heldResult.metadata.upstream).toBe("a")
      const after = yield* relay.chat(request("after"))
      expect(after.metadata.upstream).toBe("a")
    }))

  it.scoped("priority routing (control): a held call does not move the next request", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      const gate = yield* Deferred.make<void>()
      client.script("a", Scripted.after(Deferred.await(gate), Scripted.ok("held")))
      const held = yield* Effect.fork(relay.chat(request("held")))
      yield* waitUntil("a holds a call", () => client.callsTo("a").length === 1)
      const next = yield* relay.chat(request("next"))
      expect(next.metadata.upstream).toBe("a")
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(held)
    }))

  /** Sends `n` requests to a slow `a` (500 ms) and a fast `b` (10 ms); returns a's share. */
  const latencyRun = (exploration: number, n: number) =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        router: { strategy: "latency", exploration },
        upstreams: ordered("a", "b")
      })
      client.fallback("a", Scripted.delayed("500 millis", Scripted.ok("slow")))
      client.fallback("b", Scripted.delayed("10 millis", Scripted.ok("fast")))
      yield* Effect.gen(function*() {
        for (let i = 0; i < n; i++) {
          const fiber = yield* Effect.fork(relay.chat(request(`q${i}`)))
          yield* TestClock.adjust("500 millis")
          yield* Fiber.join(fiber)
        }
      }).pipe(Effect.withRandom(Random.make("latency-seed")))
      expect(client.calls).toHaveLength(n)
      return client.callsTo("a").length
    })

  it.scoped("latency: prefers the faster upstream, but explores the slower one now and then", () =>
    Effect.gen(function*() {
      const slow = yield* latencyRun(0.2, 150)
      // Expected about 10% (exploration 0.2, a random one of two goes first).
      expect(slow).toBeGreaterThanOrEqual(4)
      expect(slow).toBeLessThanOrEqual(40)
    }), 30_000)

  it.scoped("latency without exploration: once both are measured the slow one is never first", () =>
    Effect.gen(function*() {
      // The first request measures a (both unmeasured, list order), the second b.
      expect(yield* latencyRun(0, 50)).toBe(1)
    }))
})

// ---------------------------------------------------------------------------
// 13. Breaker

describe("breaker", () => {
  it.scoped("when every breaker is open: NoUpstreamAvailable at once with panic off, tried anyway in panic mode", () =>
    Effect.gen(function*() {
      for (const panic of [false, true]) {
        const { client, relay } = yield* setup({
          upstreams: ordered("a", "b"),
          breaker: { failureThreshold: 1, openDuration: "60 seconds" },
          retry: { maxRetries: 0, maxRetryAfter: "10 seconds" },
          router: { panic }
        })
        client.script("a", Scripted.status(503), Scripted.ok("a recovered"))
        client.script("b", Scripted.status(503))
        const first = yield* Effect.flip(relay.chat(request("1")))
        expect(first._tag).toBe("AllUpstreamsFailed")
        expect(client.calls).toHaveLength(2)
        const second = yield* Effect.either(relay.chat(request("2")))
        if (!panic) {
          expect(second._tag).toBe("Left")
          expect(second._tag === "Left" && second.left._tag).toBe("NoUpstreamAvailable")
          expect(client.calls).toHaveLength(2)
        } else {
          expect(second._tag).toBe("Right")
          expect(second._tag === "Right" && second.right.metadata.upstream).toBe("a")
          expect(client.callsTo("a")).toHaveLength(2)
        }
      }
    }))

  it.scoped("failureThreshold 503s open it: the upstream is not called until openDuration has passed", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b"),
        breaker: { failureThreshold: 2, openDuration: "10 seconds" }
      })
      client.script("a", Scripted.status(503), Scripted.status(503))
      expect((yield* relay.chat(request("1"))).metadata.upstream).toBe("b")
      expect((yield* relay.chat(request("2"))).metadata.upstream).toBe("b")
      expect(client.callsTo("a")).toHaveLength(2)
      const r3 = yield* relay.chat(request("3"))
      expect(r3.metadata.upstream).toBe("b")
      expect(r3.metadata.attempts).toBe(1)
      // Left out by the router, not refused by the breaker on the way: no failure line.
      expect(r3.metadata.failures).toEqual([])
      expect(client.callsTo("a")).toHaveLength(2)
      yield* TestClock.adjust("9999 millis")
      expect((yield* relay.chat(request("4"))).metadata.upstream).toBe("b")
      expect(client.callsTo("a")).toHaveLength(2)
      yield* TestClock.adjust("1 millis")
      expect((yield* relay.chat(request("5"))).metadata.upstream).toBe("a")
      expect(client.callsTo("a")).toHaveLength(3)
    }))

  it.scoped("429s do not trip it", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b"),
        breaker: { failureThreshold: 2 },
        rateLimitCooldown: "0 millis"
      })
      client.script("a", Scripted.status(429), Scripted.status(429), Scripted.status(429))
      for (let i = 0; i < 3; i++) expect((yield* relay.chat(request(`${i}`))).metadata.upstream).toBe("b")
      expect(client.callsTo("a")).toHaveLength(3)
      expect((yield* relay.chat(request("then"))).metadata.upstream).toBe("a")
      expect(yield* relay.upstreams[0]!.breaker.state).toBe("Closed")
    }))

  it.scoped("400s do not trip it", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: ordered("a", "b"),
        breaker: { failureThreshold: 2 }
      })
      client.script("a", Scripted.status(400), Scripted.status(400), Scripted.status(400))
      for (let i = 0; i < 3; i++) {
        const error = yield* Effect.flip(relay.chat(request(`${i}`)))
        expect(error._tag).toBe("UpstreamRejected")
      }
      expect((yield* relay.chat(request("then"))).metadata.upstream).toBe("a")
      expect(names(client.calls)).toEqual(["a", "a", "a", "a"])
      expect(yield* relay.upstreams[0]!.breaker.state).toBe("Closed")
    }))
})

// ---------------------------------------------------------------------------
// 14. Cache

describe("cache", () => {
  it.scoped("two identical requests: one upstream call, the second a hit", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b"), cacheMode: "all" })
      const r1 = yield* relay.chat(request())
      const r2 = yield* relay.chat(request())
      expect(client.calls).toHaveLength(1)
      expect(r1.metadata.cache).toBe("miss")
      expect(r1.metadata.attempts).toBe(1)
      expect(r2.metadata.cache).toBe("hit")
      expect(r2.metadata.attempts).toBe(0)
      expect(r2.metadata.upstream).toBe("a")
      expect(r2.metadata.costUsd).toBe(0)
      expect(r2.body).toBe(r1.body)
    }))

  it.scoped("the default cacheMode is \"deterministic\": temperature 0 or a seed is cached, a sampled answer is not", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] }, { keepDefaults: true })
      const hot = request("x", { temperature: 1.2 })
      expect((yield* relay.chat(hot)).metadata.cache).toBe("bypass")
      expect((yield* relay.chat(hot)).metadata.cache).toBe("bypass")
      const unset = request("x")
      expect((yield* relay.chat(unset)).metadata.cache).toBe("bypass")
      expect(client.calls).toHaveLength(3)
      const t0 = request("x", { temperature: 0 })
      expect((yield* relay.chat(t0)).metadata.cache).toBe("miss")
      expect((yield* relay.chat(t0)).metadata.cache).toBe("hit")
      const seeded = request("x", { temperature: 0.7, seed: 42 })
      expect((yield* relay.chat(seeded)).metadata.cache).toBe("miss")
      expect((yield* relay.chat(seeded)).metadata.cache).toBe("hit")
      expect(client.calls).toHaveLength(5)
    }))

  it.scoped("entries are scoped per gateway key by default: key B never gets key A's answer", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] }, { keepDefaults: true })
      client.script("a", Scripted.ok("for team-a"), Scripted.ok("for team-b"))
      const t0 = request("same prompt", { temperature: 0 })
      const a1 = yield* relay.chat(t0, { key: "team-a" })
      const b1 = yield* relay.chat(t0, { key: "team-b" })
      expect(a1.metadata.cache).toBe("miss")
      expect(b1.metadata.cache).toBe("miss")
      expect(b1.body).toContain("for team-b")
      // Each key hits its own entry.
      expect((yield* relay.chat(t0, { key: "team-a" })).body).toContain("for team-a")
      expect((yield* relay.chat(t0, { key: "team-b" })).body).toContain("for team-b")
      expect(client.calls).toHaveLength(2)
    }))

  it.scoped("and per request user: one user never gets another's answer, even with cacheScope shared", () =>
    Effect.gen(function*() {
      for (const cacheScope of ["key", "shared"] as const) {
        const { client, relay } = yield* setup({ upstreams: [upstream("a")], cacheMode: "all", cacheScope })
        client.script("a", Scripted.ok("for alice"), Scripted.ok("for bob"))
        const alice = request("same prompt", { user: "alice" })
        const bob = request("same prompt", { user: "bob" })
        expect((yield* relay.chat(alice, { key: "team-a" })).metadata.cache).toBe("miss")
        const b = yield* relay.chat(bob, { key: "team-a" })
        expect(b.metadata.cache).toBe("miss")
        expect(b.body).toContain("for bob")
        expect((yield* relay.chat(alice, { key: "team-a" })).body).toContain("for alice")
        expect(client.calls).toHaveLength(2)
      }
    }))

  it.scoped("cacheScope shared shares entries across keys", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], cacheScope: "shared" }, { keepDefaults: true })
      const t0 = request("same prompt", { temperature: 0 })
      expect((yield* relay.chat(t0, { key: "team-a" })).metadata.cache).toBe("miss")
      expect((yield* relay.chat(t0, { key: "team-b" })).metadata.cache).toBe("hit")
      expect(client.calls).toHaveLength(1)
    }))

  it.scoped("cacheMode deterministic caches only temperature: 0", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], cacheMode: "deterministic" })
      const t0 = request("x", { temperature: 0 })
      expect((yield* relay.chat(t0)).metadata.cache).toBe("miss")
      expect((yield* relay.chat(t0)).metadata.cache).toBe("hit")
      expect(client.calls).toHaveLength(1)
      const warm = request("x", { temperature: 0.7 })
      expect((yield* relay.chat(warm)).metadata.cache).toBe("bypass")
      expect((yield* relay.chat(warm)).metadata.cache).toBe("bypass")
      const unset = request("x")
      expect((yield* relay.chat(unset)).metadata.cache).toBe("bypass")
      expect(client.calls).toHaveLength(4)
    }))

  it.scoped("cacheMode none never caches", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], cacheMode: "none" })
      expect((yield* relay.chat(request())).metadata.cache).toBe("bypass")
      expect((yield* relay.chat(request())).metadata.cache).toBe("bypass")
      expect(client.calls).toHaveLength(2)
    }))

  it.scoped("lookup: false (no-cache) always calls upstream (\"bypass\") but still stores the answer", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], cacheMode: "all" })
      const r1 = yield* relay.chat(request(), { cache: { lookup: false } })
      expect(r1.metadata.cache).toBe("bypass")
      expect(r1.metadata.attempts).toBe(1)
      const r2 = yield* relay.chat(request(), { cache: { lookup: false } })
      expect(r2.metadata.cache).toBe("bypass")
      expect(client.calls).toHaveLength(2)
      const r3 = yield* relay.chat(request())
      expect(r3.metadata.cache).toBe("hit")
      expect(client.calls).toHaveLength(2)
    }))

  it.scoped("store: false (no-store) may be answered from the cache but does not store", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], cacheMode: "all" })
      expect((yield* relay.chat(request(), { cache: { store: false } })).metadata.cache).toBe("miss")
      expect((yield* relay.chat(request())).metadata.cache).toBe("miss")
      expect(client.calls).toHaveLength(2)
      expect((yield* relay.chat(request(), { cache: { store: false } })).metadata.cache).toBe("hit")
      expect(client.calls).toHaveLength(2)
    }))

  it.scoped("lookup: false and store: false: bypass, nothing stored", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], cacheMode: "all" })
      const r1 = yield* relay.chat(request(), { cache: { lookup: false, store: false } })
      expect(r1.metadata.cache).toBe("bypass")
      expect((yield* relay.chat(request())).metadata.cache).toBe("miss")
      expect(client.calls).toHaveLength(2)
    }))

  it.scoped("concurrent identical requests: a single upstream call", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], cacheMode: "all" })
      client.fallback("a", Scripted.delayed("100 millis", Scripted.ok("shared")))
      const fiber = yield* Effect.fork(
        Effect.all(Array.from({ length: 5 }, () => relay.chat(request())), { concurrency: "unbounded" })
      )
      yield* TestClock.adjust("100 millis")
      const results = yield* Fiber.join(fiber)
      expect(client.calls).toHaveLength(1)
      expect(results.map((r) => r.metadata.cache).sort()).toEqual(["hit", "hit", "hit", "hit", "miss"])
      expect(new Set(results.map((r) => r.body)).size).toBe(1)
    }))

  it.scoped("failures are not cached", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], cacheMode: "all" })
      client.script("a", Scripted.status(400))
      expect((yield* Effect.flip(relay.chat(request())))._tag).toBe("UpstreamRejected")
      expect((yield* relay.chat(request())).metadata.cache).toBe("miss")
      expect(client.calls).toHaveLength(2)
    }))
})

// ---------------------------------------------------------------------------
// 15. Cost

describe("cost", () => {
  it.scoped("gpt-4.1 with usage 10/5 costs (10*2 + 5*8)/1e6", () =>
    Effect.gen(function*() {
      const { relay } = yield* setup({ upstreams: [upstream("a")] })
      const result = yield* relay.chat(request())
      expect(result.metadata.usage).toEqual(Scripted.usage)
      expect(result.metadata.costUsd).toBeCloseTo(COST, 15)
    }))

  it.scoped("an answer without usage is priced on an estimate (prompt and answer text, 4 characters a token)", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] })
      const body = JSON.stringify({
        id: "x",
        object: "chat.completion",
        created: 0,
        model: MODEL,
        choices: [{ index: 0, message: { role: "assistant", content: "twelve chars" }, finish_reason: "stop" }]
      })
      client.script("a", Scripted.reply(200, body))
      const result = yield* relay.chat(request("abcdefgh"))
      expect(result.metadata.usage).toEqual({ prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 })
      expect(result.metadata.usageEstimated).toBe(true)
      expect(result.metadata.costUsd).toBeCloseTo((2 * 2 + 3 * 8) / 1_000_000, 15)
      const reported = yield* relay.chat(request("again"))
      expect(reported.metadata.usageEstimated).toBe(false)
      expect(reported.metadata.usage).toEqual(Scripted.usage)
    }))

  it.scoped("a model without a price has no cost", () =>
    Effect.gen(function*() {
      const { relay } = yield* setup({ upstreams: [upstream("a", { models: "*" })] })
      const result = yield* relay.chat({ ...request(), model: "unpriced-model" })
      expect(result.metadata.usage).toEqual(Scripted.usage)
      expect(result.metadata.costUsd).toBeUndefined()
    }))
})

// ---------------------------------------------------------------------------
// 16. Streaming

describe("streaming", () => {
  const streamRequest = request("hi", { stream: true })
  const event = (data: string) => `data: ${data}\n\n`

  it.scoped("a 503 from the first upstream: the stream comes from the second", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      client.scriptStream("a", Scripted.streamStatus(503))
      const s = yield* relay.chatStream(streamRequest)
      expect(s.upstream).toBe("b")
      expect(s.attempts).toBe(2)
      const events = yield* collect(s)
      // The usage chunk the caller did not ask for is not passed on.
      expect(events).toEqual([
        event(Scripted.chunk("h")),
        event(Scripted.chunk("i")),
        event("[DONE]")
      ])
      const done = yield* s.done
      expect(done.upstream).toBe("b")
      expect(done.failures).toEqual(["a: server error (503)"])
      expect(names(client.calls)).toEqual(["a", "b"])
      expect(client.calls.every((c) => c.kind === "stream")).toBe(true)
    }))

  it.scoped("a 429 with Retry-After on a stream cools the upstream down as well", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      client.scriptStream("a", Scripted.streamStatus(429, Scripted.errorJson("slow down", "rate_limit_exceeded"), { "retry-after": "5" }))
      const s1 = yield* relay.chatStream(streamRequest)
      expect(s1.upstream).toBe("b")
      yield* collect(s1)
      const s2 = yield* relay.chatStream(streamRequest)
      expect(s2.upstream).toBe("b")
      yield* collect(s2)
      expect(client.callsTo("a")).toHaveLength(1)
    }))

  it.scoped("the first upstream's stream errors before any event: failover", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      client.scriptStream("a", Scripted.sse([], { failWith: "ECONNRESET" }))
      const s = yield* relay.chatStream(streamRequest)
      expect(s.upstream).toBe("b")
      const events = yield* collect(s)
      expect(events.at(-1)).toBe(event("[DONE]"))
      expect((yield* s.done).failures).toEqual(["a: connection failed (ECONNRESET)"])
    }))

  it.scoped("the first upstream's connection fails, or its stream ends empty: failover", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b", "c") })
      client.scriptStream("a", Scripted.unreachable("ECONNREFUSED"))
      client.scriptStream("b", Scripted.sse([]))
      const s = yield* relay.chatStream(streamRequest)
      expect(s.upstream).toBe("c")
      expect(s.attempts).toBe(3)
      yield* collect(s)
      expect((yield* s.done).failures).toEqual([
        "a: connection failed (ECONNREFUSED)",
        "b: invalid response (stream ended before any event)"
      ])
    }))

  it.scoped("an error or quota event first: failover", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b", "c") })
      client.scriptStream("a", Scripted.sse([Scripted.quotaBody]))
      client.scriptStream("b", Scripted.sse([Scripted.errorJson("overloaded", "server_error")]))
      const s = yield* relay.chatStream(streamRequest)
      expect(s.upstream).toBe("c")
      yield* collect(s)
      const done = yield* s.done
      expect(done.failures[0]).toBe("a: quota exhausted (insufficient_quota)")
      expect(done.failures[1]).toMatch(/^b: invalid response \(upstream sent an error in the stream: overloaded\)$/)
    }))

  it.scoped("a stream that ends without [DONE] after the first event ends with an error event; no failover", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      client.scriptStream("a", Scripted.sse([Scripted.chunk("h"), Scripted.chunk("i")]))
      const s = yield* relay.chatStream(streamRequest)
      expect(s.upstream).toBe("a")
      const events = yield* collect(s)
      expect(events).toHaveLength(3)
      expect(events.slice(0, 2)).toEqual([event(Scripted.chunk("h")), event(Scripted.chunk("i"))])
      const last = events[2]!
      expect(last.startsWith("data: {\"error\":")).toBe(true)
      expect(last.endsWith("\n\n")).toBe(true)
      const parsed = JSON.parse(last.slice("data: ".length))
      expect(parsed.error.message).toMatch(/stream ended before \[DONE\]/)
      expect(names(client.calls)).toEqual(["a"])
      const done = yield* s.done
      expect(done.upstream).toBe("a")
      expect(done.streamOutcome).toBe("failed")
      expect(done.streamError).toBe("invalid response (stream ended before [DONE])")
      // No usage came: an estimate (prompt "hi" and the 2 characters streamed).
      expect(done.usage).toEqual({ prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 })
      expect(done.usageEstimated).toBe(true)
    }))

  it.scoped("a stream that fails after the first event ends with an error event; no failover", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      client.scriptStream("a", Scripted.sse([Scripted.chunk("h")], { failWith: "ECONNRESET" }))
      const s = yield* relay.chatStream(streamRequest)
      const events = yield* collect(s)
      expect(events).toHaveLength(2)
      const parsed = JSON.parse(events[1]!.slice("data: ".length))
      expect(parsed.error.message).toBe("upstream stream failed: connection failed (ECONNRESET)")
      expect(names(client.calls)).toEqual(["a"])
    }))

  it.scoped("done reports usage and cost when the stream carried a usage chunk", () =>
    Effect.gen(function*() {
      const { relay } = yield* setup({ upstreams: [upstream("a")] })
      const s = yield* relay.chatStream(request("hi", { stream: true, stream_options: { include_usage: true } }))
      yield* collect(s)
      const done = yield* s.done
      expect(done.usage).toEqual(Scripted.usage)
      expect(done.costUsd).toBeCloseTo(COST, 15)
      expect(done.attempts).toBe(1)
      expect(done.cache).toBe("bypass")
    }))

  it.scoped("a caller error on a stream comes back as UpstreamRejected; the second upstream is not called", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      const body = Scripted.errorJson("bad", "invalid_request_error")
      client.scriptStream("a", Scripted.streamStatus(400, body))
      const error = yield* Effect.flip(relay.chatStream(streamRequest))
      expect(error._tag).toBe("UpstreamRejected")
      expect((error as UpstreamRejected).status).toBe(400)
      expect((error as UpstreamRejected).body).toBe(body)
      expect(names(client.calls)).toEqual(["a"])
    }))
})

describe("streaming: time limits", () => {
  const streamRequest = request("hi", { stream: true })

  it.scoped("an upstream that never answers a stream: failover when its attempt timeout (5 s) passes", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, timeout: "5 seconds" }), upstream("b", { priority: 2 })]
      })
      client.scriptStream("a", Scripted.hang)
      const fiber = yield* Effect.fork(relay.chatStream(streamRequest))
      yield* TestClock.adjust("4999 millis")
      expect(yield* settle(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      const s = yield* Fiber.join(fiber)
      expect(s.upstream).toBe("b")
      expect(s.attempts).toBe(2)
      expect((yield* collect(s)).at(-1)).toBe("data: [DONE]\n\n")
      expect((yield* s.done).failures).toEqual(["a: no answer within 5s"])
      expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(0)
    }))

  it.scoped("headers but no first event within the attempt timeout: failover, the silent body released at once", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, timeout: "5 seconds" }), upstream("b", { priority: 2 })]
      })
      let released = 0
      client.scriptStream("a", Scripted.sseStall([], () => released++))
      const fiber = yield* Effect.fork(relay.chatStream(streamRequest))
      yield* TestClock.adjust("5 seconds")
      const s = yield* Fiber.join(fiber)
      expect(s.upstream).toBe("b")
      expect(released).toBe(1)
      yield* collect(s)
      expect(relay.upstreams[0]!.stats.failures).toBe(1)
    }))

  it.scoped("a stream that stalls after its first event ends with an error event after streamIdleTimeout (default 60 s)", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      let released = 0
      client.scriptStream("a", Scripted.sseStall([Scripted.chunk("h")], () => released++))
      const s = yield* relay.chatStream(streamRequest)
      expect(s.upstream).toBe("a")
      const reading = yield* Effect.fork(collect(s))
      yield* TestClock.adjust("59999 millis")
      expect(yield* settle(reading)).toBe(false)
      expect(released).toBe(0)
      expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(1)
      yield* TestClock.adjust("1 millis")
      const events = yield* Fiber.join(reading)
      expect(events).toHaveLength(2)
      expect(events[0]).toBe(`data: ${Scripted.chunk("h")}\n\n`)
      const error = JSON.parse(events[1]!.slice("data: ".length))
      expect(error.error.message).toBe("upstream stream failed: stream stalled, no data for 1m")
      expect(error.error.type).toBe("upstream_error")
      expect(released).toBe(1)
      const done = yield* s.done
      expect(done.streamOutcome).toBe("failed")
      expect(done.streamError).toBe("stream stalled, no data for 1m")
      // A failure of that upstream, and what it held is given back.
      const a = relay.upstreams[0]!
      expect(a.stats.failures).toBe(1)
      expect(a.stats.lastError).toBe("a: stream stalled, no data for 1m")
      expect((yield* a.breaker.snapshot).consecutiveFailures).toBe(1)
      expect(a.bulkhead.unsafeStats().active).toBe(0)
      expect(names(client.calls)).toEqual(["a"])
    }))

  it.scoped("streamIdleTimeout is a relay option, and an upstream's own overrides it", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, streamIdleTimeout: "2 seconds" }), upstream("b", { priority: 2 })],
        streamIdleTimeout: "10 seconds"
      })
      client.scriptStream("a", Scripted.sseStall([Scripted.chunk("h")]))
      const onA = yield* relay.chatStream(streamRequest)
      const readingA = yield* Effect.fork(collect(onA))
      yield* TestClock.adjust("2 seconds")
      expect((yield* Fiber.join(readingA)).at(-1)).toMatch(/no data for 2s/)

      yield* relay.upstreams[0]!.breaker.forceOpen
      client.scriptStream("b", Scripted.sseStall([Scripted.chunk("h")]))
      const onB = yield* relay.chatStream(streamRequest)
      expect(onB.upstream).toBe("b")
      const readingB = yield* Effect.fork(collect(onB))
      yield* TestClock.adjust("9999 millis")
      expect(yield* settle(readingB)).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect((yield* Fiber.join(readingB)).at(-1)).toMatch(/no data for 10s/)
    }))

  it.scoped("a caller that reads slowly is not an idle upstream", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], streamIdleTimeout: "10 seconds" })
      client.scriptStream("a", Scripted.sse([Scripted.chunk("a"), Scripted.chunk("b"), Scripted.chunk("c"), "[DONE]"]))
      const s = yield* relay.chatStream(streamRequest)
      const reading = yield* Effect.fork(
        s.events.pipe(Stream.tap(() => Effect.sleep("30 seconds")), Stream.runCollect, Effect.map(Chunk.toReadonlyArray))
      )
      yield* TestClock.adjust("5 minutes")
      const events = yield* Fiber.join(reading)
      expect(events.at(-1)).toBe("data: [DONE]\n\n")
      expect((yield* s.done).streamOutcome).toBe("completed")
    }))

  it.scoped("a caller that stops reading releases the stream at once and says nothing about the upstream", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], breaker: { failureThreshold: 1 } })
      let released = 0
      client.scriptStream("a", Scripted.sseStall([Scripted.chunk("h"), Scripted.chunk("i")], () => released++))
      const s = yield* relay.chatStream(streamRequest)
      expect(yield* s.events.pipe(Stream.take(1), Stream.runCollect, Effect.map(Chunk.size))).toBe(1)
      expect(released).toBe(1)
      const a = relay.upstreams[0]!
      expect(a.bulkhead.unsafeStats().active).toBe(0)
      const done = yield* s.done
      expect(done.streamOutcome).toBe("abandoned")
      expect(a.stats.failures).toBe(0)
      expect(yield* a.breaker.state).toBe("Closed")
    }))

  it.scoped("a stream whose events are never read is released by done, as abandoned", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] })
      let released = 0
      client.scriptStream("a", Scripted.sseStall([Scripted.chunk("h")], () => released++))
      const s = yield* relay.chatStream(streamRequest)
      expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(1)
      expect((yield* s.done).streamOutcome).toBe("abandoned")
      expect(released).toBe(1)
      expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(0)
    }))
})

describe("streaming: usage and cost", () => {
  const event = (data: string) => `data: ${data}\n\n`

  it.scoped("a caller who did not ask for usage: the upstream is asked, its usage chunk stays here, the stream is priced", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] })
      const raw = JSON.stringify(request("hi", { stream: true }))
      const s = yield* relay.chatStream(request("hi", { stream: true }), { rawBody: raw })
      expect(yield* collect(s)).toEqual([event(Scripted.chunk("h")), event(Scripted.chunk("i")), event("[DONE]")])
      const sent = JSON.parse(client.calls[0]!.body)
      expect(sent.stream_options).toEqual({ include_usage: true })
      expect(sent.messages).toEqual(request("hi").messages)
      const done = yield* s.done
      expect(done.usage).toEqual(Scripted.usage)
      expect(done.usageEstimated).toBe(false)
      expect(done.costUsd).toBeCloseTo(COST, 15)
      expect(done.streamOutcome).toBe("completed")
    }))

  it.scoped("a caller who asked for usage gets the usage chunk, and its bytes go upstream as they came", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] })
      const asked = request("hi", { stream: true, stream_options: { include_usage: true } })
      const raw = JSON.stringify(asked)
      const s = yield* relay.chatStream(asked, { rawBody: raw })
      expect(yield* collect(s)).toEqual([
        event(Scripted.chunk("h")),
        event(Scripted.chunk("i")),
        event(Scripted.usageChunk),
        event("[DONE]")
      ])
      expect(client.calls[0]!.body).toBe(raw)
      expect((yield* s.done).usage).toEqual(Scripted.usage)
    }))

  it.scoped("other stream_options of the caller are kept when usage is added", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] })
      const withOptions = { ...request("hi", { stream: true }), stream_options: { include_obfuscation: false } } as OpenAI.ChatCompletionRequest
      yield* collect(yield* relay.chatStream(withOptions, { rawBody: JSON.stringify(withOptions) }))
      expect(JSON.parse(client.calls[0]!.body).stream_options).toEqual({ include_obfuscation: false, include_usage: true })
    }))

  it.scoped("an upstream that sends no usage: priced on an estimate (prompt and streamed text, 4 characters a token)", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] })
      client.scriptStream("a", Scripted.sse([Scripted.chunk("Hello, wor"), Scripted.chunk("ld!"), "[DONE]"]))
      // 16 characters of prompt (4 tokens), 13 streamed (4 tokens).
      const s = yield* relay.chatStream(request("abcdefghijklmnop", { stream: true }))
      yield* collect(s)
      const done = yield* s.done
      expect(done.usage).toEqual({ prompt_tokens: 4, completion_tokens: 4, total_tokens: 8 })
      expect(done.usageEstimated).toBe(true)
      expect(done.costUsd).toBeCloseTo((4 * 2 + 4 * 8) / 1_000_000, 15)
      expect(done.streamOutcome).toBe("completed")
    }))

  it.scoped("a stream cut after its first event is still priced, on an estimate", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")] })
      client.scriptStream("a", Scripted.sse([Scripted.chunk("12345678")], { failWith: "ECONNRESET" }))
      const s = yield* relay.chatStream(request("abcd", { stream: true }))
      yield* collect(s)
      const done = yield* s.done
      expect(done.usage).toEqual({ prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 })
      expect(done.usageEstimated).toBe(true)
      expect(done.costUsd).toBeGreaterThan(0)
    }))
})

describe("streaming: failures count against the upstream", () => {
  const streamRequest = request("hi", { stream: true })

  it.scoped("streams cut after their first event trip the breaker (failureThreshold 5); the next stream goes elsewhere", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b"), breaker: { failureThreshold: 5 } })
      client.fallbackStream("a", Scripted.sse([Scripted.chunk("h")], { failWith: "ECONNRESET" }))
      for (let i = 0; i < 5; i++) {
        const s = yield* relay.chatStream(streamRequest)
        expect(s.upstream).toBe("a")
        const events = yield* collect(s)
        expect(events.at(-1)).toMatch(/upstream stream failed: connection failed \(ECONNRESET\)/)
        expect((yield* s.done).streamOutcome).toBe("failed")
      }
      const a = relay.upstreams[0]!
      expect(yield* a.breaker.state).toBe("Open")
      expect(a.stats.failures).toBe(5)
      expect(a.stats.successes).toBe(0)
      const next = yield* relay.chatStream(streamRequest)
      expect(next.upstream).toBe("b")
      yield* collect(next)
      expect(client.callsTo("a")).toHaveLength(5)
    }))

  it.scoped("error events and ends without [DONE] count too; a completed stream resets the count", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a")], breaker: { failureThreshold: 3 } })
      client.scriptStream(
        "a",
        Scripted.sse([Scripted.chunk("h"), Scripted.errorJson("overloaded", "server_error")]),
        Scripted.sse([Scripted.chunk("h")]),
        Scripted.sseOk(),
        Scripted.sse([Scripted.chunk("h")]),
        Scripted.sse([Scripted.chunk("h")])
      )
      const outcomes: Array<string | undefined> = []
      for (let i = 0; i < 5; i++) {
        const s = yield* relay.chatStream(streamRequest)
        yield* collect(s)
        outcomes.push((yield* s.done).streamOutcome)
      }
      expect(outcomes).toEqual(["failed", "failed", "completed", "failed", "failed"])
      const a = relay.upstreams[0]!
      expect((yield* a.breaker.snapshot).consecutiveFailures).toBe(2)
      expect(a.stats).toMatchObject({ requests: 5, successes: 1, failures: 4 })
    }))

  it.scoped("a quota error in the middle of a stream cools the upstream down (and does not trip the breaker)", () =>
    Effect.gen(function*() {
      const { client, cooldowns, relay } = yield* setup({ upstreams: ordered("a", "b") })
      client.scriptStream("a", Scripted.sse([Scripted.chunk("h"), Scripted.quotaBody]))
      const s = yield* relay.chatStream(streamRequest)
      expect(s.upstream).toBe("a")
      yield* collect(s)
      expect((yield* s.done).streamError).toBe("quota exhausted (insufficient_quota)")
      const active = yield* cooldowns.active(0)
      expect(active.get("a")?.reason).toBe("quota-exhausted")
      expect((yield* relay.upstreams[0]!.breaker.snapshot).consecutiveFailures).toBe(0)
    }))
})

// ---------------------------------------------------------------------------
// Our own protections, readiness, embeddings

describe("local protections", () => {
  it.scoped("an upstream over its own requestsPerMinute is skipped without a call and without costing an attempt", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, requestsPerMinute: 1 }), upstream("b", { priority: 2 })]
      })
      expect((yield* relay.chat(request("1"))).metadata.upstream).toBe("a")
      const r2 = yield* relay.chat(request("2"))
      expect(r2.metadata.upstream).toBe("b")
      expect(r2.metadata.attempts).toBe(1)
      expect(r2.metadata.failures).toEqual(["a: local rate limit reached"])
      expect(names(client.calls)).toEqual(["a", "b"])
    }))

  // OPEN QUESTION (fails today, not marked): no upstream call is made, yet the
  // relay backs off through every round and answers AllUpstreamsFailed
  // ("a: local rate limit reached" x3) instead of NoUpstreamAvailable, unlike
  // `noneAvailable`, which picks NoUpstreamAvailable when attempts === 0.
  it.scoped("the only upstream is over its own requestsPerMinute: NoUpstreamAvailable (no call was made)", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a", { requestsPerMinute: 1 })] })
      yield* relay.chat(request("1"))
      const fiber = yield* Effect.fork(relay.chat(request("2")))
      yield* TestClock.adjust("2 seconds")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(client.calls).toHaveLength(1)
      expect(error._tag).toBe("NoUpstreamAvailable")
    }))

  it.scoped("the deadline is sooner than the cooldown: NoUpstreamAvailable at once instead of waiting", () =>
    Effect.gen(function*() {
      const { client, cooldowns, relay } = yield* setup({ upstreams: [upstream("a")], requestTimeout: "1 second" })
      yield* Effect.provideService(Cooldown.start("a", "2 seconds", "rate-limited"), Cooldown.CooldownStore, cooldowns)
      const fiber = yield* Effect.fork(relay.chat(request()))
      expect(yield* settle(fiber)).toBe(true)
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error._tag).toBe("NoUpstreamAvailable")
      expect(client.calls).toHaveLength(0)
    }))

  it.scoped("ready is false while the only upstream cools down, true after", () =>
    Effect.gen(function*() {
      const { cooldowns, relay } = yield* setup({ upstreams: [upstream("a")] })
      expect(yield* relay.ready).toBe(true)
      yield* Effect.provideService(Cooldown.start("a", "2 seconds", "rate-limited"), Cooldown.CooldownStore, cooldowns)
      expect(yield* relay.ready).toBe(false)
      yield* TestClock.adjust("2 seconds")
      expect(yield* relay.ready).toBe(true)
    }))
})

describe("embeddings", () => {
  it.scoped("an empty data list fails over; the answer comes from the second upstream", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: ordered("a", "b") })
      const good = JSON.stringify({
        object: "list",
        data: [{ object: "embedding", index: 0, embedding: [0.1, 0.2] }],
        model: "m",
        usage: { prompt_tokens: 10, total_tokens: 10 }
      })
      client.script("a", Scripted.reply(200, JSON.stringify({ object: "list", data: [], model: "m" })))
      client.script("b", Scripted.reply(200, good))
      const result = yield* relay.embeddings({ model: MODEL, input: "hello" })
      expect(result.body).toBe(good)
      expect(result.metadata.upstream).toBe("b")
      expect(result.metadata.cache).toBe("bypass")
      expect(result.metadata.failures).toEqual(["a: invalid response (no-data)"])
      expect(client.calls.map((c) => c.path)).toEqual(["/embeddings", "/embeddings"])
    }))
})

describe("streaming resources", () => {
  // Regression: every attempt's bulkhead slot and connection used to go into
  // the one request-wide scope, closed only when the caller finished reading
  // the stream, so a failed attempt kept its upstream's slot.
  it.scoped("a failed stream attempt does not keep its upstream's bulkhead slot while the stream from another is read", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, maxConcurrent: 1 }), upstream("b", { priority: 2 })]
      })
      client.scriptStream("a", Scripted.streamStatus(503))
      const s = yield* relay.chatStream(request("hi", { stream: true }))
      expect(s.upstream).toBe("b")
      // While b's stream is still open, a has nothing in flight.
      expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(0)
      const next = yield* relay.chat(request("next"))
      expect(next.metadata.upstream).toBe("a")
      yield* collect(s)
    }))

  it.scoped("a stream holds its upstream's bulkhead slot until it is read to the end", () =>
    Effect.gen(function*() {
      const { relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, maxConcurrent: 1 }), upstream("b", { priority: 2 })]
      })
      const s = yield* relay.chatStream(request("hi", { stream: true }))
      expect(s.upstream).toBe("a")
      expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(1)
      expect((yield* relay.chat(request("meanwhile"))).metadata.upstream).toBe("b")
      yield* collect(s)
      expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(0)
      expect((yield* relay.chat(request("after"))).metadata.upstream).toBe("a")
    }))

  it.scoped("two concurrent streams on a one-slot upstream: one each, the other upstream takes the second at once", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", { priority: 1, maxConcurrent: 1 }), upstream("b", { priority: 2 })]
      })
      const [s1, s2] = yield* Effect.all(
        [relay.chatStream(request("1", { stream: true })), relay.chatStream(request("2", { stream: true }))],
        { concurrency: "unbounded" }
      )
      const streams = [s1, s2]
      expect(streams.map((s) => s.upstream).sort()).toEqual(["a", "b"])
      const onB = streams.find((s) => s.upstream === "b")!
      yield* Effect.forEach(streams, collect)
      const done = yield* onB.done
      expect(done.failures.every((f) => !f.includes("server error"))).toBe(true)
      expect(onB.attempts).toBe(1)
      expect(relay.upstreams[0]!.stats.failures).toBe(0)
      expect(client.callsTo("a")).toHaveLength(1)
    }))

  // Regression, same cause: round 2 found a "bulkhead-full" (its own failed attempt held the slot).
  it.scoped("a stream retried on the only upstream (maxConcurrent 1) after a 503 gets it on the next round", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a", { maxConcurrent: 1 })] })
      client.scriptStream("a", Scripted.streamStatus(503))
      const fiber = yield* Effect.fork(relay.chatStream(request("hi", { stream: true })))
      // The backoff before round 2 is under 200 ms.
      yield* TestClock.adjust("200 millis")
      const s = yield* Fiber.join(fiber)
      expect(s.upstream).toBe("a")
      expect(s.attempts).toBe(2)
      const events = yield* collect(s)
      expect(events.at(-1)).toBe("data: [DONE]\n\n")
      expect(client.callsTo("a")).toHaveLength(2)
    }))

  it.scoped("the same for a non-streaming request (control)", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a", { maxConcurrent: 1 })] })
      client.script("a", Scripted.status(503))
      const fiber = yield* Effect.fork(relay.chat(request()))
      yield* TestClock.adjust("200 millis")
      const result = yield* Fiber.join(fiber)
      expect(result.metadata.attempts).toBe(2)
      expect(client.callsTo("a")).toHaveLength(2)
    }))
})
