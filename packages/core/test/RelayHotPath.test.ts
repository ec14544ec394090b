/**
 * The relay's hot path (issue 13), under TestClock, over a client with the
 * low-level `unsafePost`: a call's time limit (attempt timeout or request
 * deadline) is one timer that aborts the HTTP call itself, with no fiber per
 * attempt; the first attempt of a simple request runs in a handful of
 * effect operations; whatever is not simple takes the general path with the
 * same results.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as RuntimeFlagsPatch from "effect/RuntimeFlagsPatch"
import type * as Scope from "effect/Scope"
import * as Supervisor from "effect/Supervisor"
import * as TestClock from "effect/TestClock"
import * as Cooldown from "../src/Cooldown.js"
import type * as OpenAI from "../src/OpenAI.js"
import * as Pricing from "../src/Pricing.js"
import * as ProviderClient from "../src/providers/ProviderClient.js"
import * as RateLimiter from "../src/RateLimiter.js"
import * as Relay from "../src/Relay.js"
import * as ResponseCache from "../src/ResponseCache.js"
import type * as Upstream from "../src/Upstream.js"
import * as UpstreamClient from "../src/UpstreamClient.js"
import * as Scripted from "./support/ScriptedClient.js"

const MODEL = "gpt-4.1"

const upstream = (name: string, extra: Partial<Upstream.Config> = {}): Upstream.Config => ({
  name,
  baseUrl: `https://${name}.example.test/v1`,
  apiKey: Redacted.make(`sk-secret-${name}`),
  models: [MODEL],
  ...extra
})

const request = (content = "hi"): OpenAI.ChatCompletionRequest => ({ model: MODEL, messages: [{ role: "user", content }] })

/** What each upstream answers: a reply (after a microtask, as a socket would), or nothing (a hang). */
type Script = (upstream: string) => UpstreamClient.Reply | undefined

/** A client with `unsafePost` only (its `post` dies), recording calls and aborts. */
const lowLevel = (script: Script) => {
  const calls: Array<string> = []
  const aborts: Array<string> = []
  const client = UpstreamClient.UpstreamClient.of({
    post: () => Effect.die("post is not used when the client has unsafePost"),
    get: () => Effect.die("not used"),
    postStream: () => Effect.die("not used"),
    unsafePost: (u, _path, _body, _headers, done) => {
      calls.push(u.name)
      const reply = script(u.name)
      let aborted = false
      if (reply !== undefined) {
        queueMicrotask(() => {
          if (!aborted) done(undefined, reply)
        })
      }
      return () => {
        aborted = true
        aborts.push(u.name)
      }
    }
  })
  return { client, calls, aborts }
}

const ok = (content = "hi"): UpstreamClient.Reply => ({
  status: 200,
  headers: { "content-type": "application/json" },
  text: Scripted.completion(content)
})

const status = (code: number): UpstreamClient.Reply => ({
  status: code,
  headers: { "content-type": "application/json" },
  text: Scripted.errorJson(`status ${code}`, "error")
})

/**
 * Counts the fibers started and the effect operations run under it. (Under
 * TestClock a call's timer is the clock's `sleep`, a root fiber outside the
 * request's supervision; under the live clock it is a `setTimeout`.)
 */
class Counting extends Supervisor.AbstractSupervisor<void> {
  fibers = 0
  ops = 0
  get value() {
    return Effect.void
  }
  override onStart() {
    this.fibers++
  }
  override onEffect() {
    this.ops++
  }
}

/** Runs `effect` under `counting`, with every effect operation reported to it. */
const counted = <A, E, R>(effect: Effect.Effect<A, E, R>, counting: Counting): Effect.Effect<A, E, R> =>
  Effect.withRuntimeFlagsPatch(Effect.supervised(effect, counting), RuntimeFlagsPatch.enable(RuntimeFlags.OpSupervision))

const setup = (
  client: UpstreamClient.UpstreamClient,
  options: Omit<Relay.Options, "upstreams"> & { readonly upstreams: ReadonlyArray<Upstream.Config> }
): Effect.Effect<Relay.Relay, never, Scope.Scope> =>
  Effect.gen(function*() {
    const deps = Layer.mergeAll(
      RateLimiter.layerStoreMemory,
      Cooldown.layerStoreMemory,
      Layer.succeed(UpstreamClient.UpstreamClient, client),
      Pricing.layer(),
      ResponseCache.layerMemory()
    )
    const ctx = yield* Layer.build(Relay.layer({ cacheMode: "none", ...options }).pipe(Layer.provide(deps)))
    return Context.get(ctx, Relay.Relay)
  })

const isDone = <A, E>(fiber: Fiber.Fiber<A, E>) => Effect.map(Fiber.poll(fiber), Option.isSome)

describe("a call's time limit is one timer that aborts the HTTP call", () => {
  it.scoped("an attempt timeout (2 s) aborts the call to a at 2 s; the answer comes from b; no fiber was started", () =>
    Effect.gen(function*() {
      const { aborts, calls, client } = lowLevel((u) => u === "a" ? undefined : ok("from b"))
      const relay = yield* setup(client, {
        upstreams: [upstream("a", { priority: 1, timeout: "2 seconds" }), upstream("b", { priority: 2 })]
      })
      const counting = new Counting()
      const fiber = yield* Effect.fork(counted(relay.chat(request()), counting))
      yield* TestClock.adjust("1999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      expect(aborts).toEqual([])
      yield* TestClock.adjust("1 millis")
      const result = yield* Fiber.join(fiber)
      expect(result.metadata.upstream).toBe("b")
      expect(result.metadata.failures).toEqual(["a: no answer within 2s"])
      expect(calls).toEqual(["a", "b"])
      expect(aborts).toEqual(["a"])
      expect(counting.fibers).toBe(0)
    }))

  it.scoped("the request's deadline (5 s) is the nearer limit: the call is aborted at 5 s with DeadlineExceeded", () =>
    Effect.gen(function*() {
      const { aborts, calls, client } = lowLevel(() => undefined)
      const relay = yield* setup(client, {
        requestTimeout: "5 seconds",
        upstreams: [upstream("a", { priority: 1, timeout: "10 seconds" }), upstream("b", { priority: 2, timeout: "10 seconds" })]
      })
      const counting = new Counting()
      const fiber = yield* Effect.fork(counted(relay.chat(request()), counting))
      yield* TestClock.adjust("4999 millis")
      expect(yield* isDone(fiber)).toBe(false)
      yield* TestClock.adjust("1 millis")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(error._tag).toBe("DeadlineExceeded")
      expect(Relay.upstreamOf(error)).toBe("a")
      expect(calls).toEqual(["a"])
      expect(aborts).toEqual(["a"])
      expect(counting.fibers).toBe(0)
    }))

  it.scoped("a caller that leaves aborts the call in flight", () =>
    Effect.gen(function*() {
      const { aborts, client } = lowLevel(() => undefined)
      const relay = yield* setup(client, { upstreams: [upstream("a")] })
      const fiber = yield* Effect.fork(relay.chat(request()))
      yield* TestClock.adjust("1 second")
      yield* Fiber.interrupt(fiber)
      expect(aborts).toEqual(["a"])
      // The slot is free again: the next request gets it.
      expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(0)
    }))
})

describe("the first attempt of a simple request", () => {
  it.scoped("runs in a handful of effect operations, with no fiber, and is recorded as the general path records it", () =>
    Effect.gen(function*() {
      const { calls, client } = lowLevel(() => ok("fast"))
      const relay = yield* setup(client, { upstreams: [upstream("a", { requestsPerMinute: 100, tokensPerMinute: 100_000 })] })
      // Warm up: per-model and per-label caches are filled on the first request.
      yield* relay.chat(request())
      // What counting itself costs, to leave out.
      const empty = new Counting()
      yield* counted(Effect.void, empty)
      const counting = new Counting()
      const result = yield* counted(relay.chat(request()), counting)
      expect(JSON.parse(result.body).choices[0].message.content).toBe("fast")
      expect(result.metadata).toMatchObject({ upstream: "a", attempts: 1, cache: "bypass", failures: [], usageEstimated: false })
      expect(result.metadata.costUsd).toBeCloseTo((10 * 2 + 5 * 8) / 1_000_000, 12)
      expect(calls).toEqual(["a", "a"])
      expect(counting.fibers).toBe(0)
      // 12 on this path (the general one takes 126 for the same request).
      expect(counting.ops - empty.ops).toBeLessThanOrEqual(16)
      const u = relay.upstreams[0]!
      expect(u.bulkhead.unsafeStats().active).toBe(0)
      expect(u.stats.successes).toBe(2)
      const requests = yield* Metric.value(
        Metric.tagged(Metric.tagged(Metric.counter("breakwater_upstream_requests_total", {
          description: "Upstream calls by upstream and outcome",
          incremental: true
        }), "upstream", "a"), "outcome", "ok")
      )
      expect(requests.count).toBeGreaterThanOrEqual(2)
    }))

  it.scoped("a 503 on the first attempt fails over on the general path: same answer, failures and breaker count", () =>
    Effect.gen(function*() {
      const { calls, client } = lowLevel((u) => u === "a" ? status(503) : ok("from b"))
      const relay = yield* setup(client, {
        upstreams: [upstream("a", { priority: 1 }), upstream("b", { priority: 2 })],
        breaker: { failureThreshold: 1, openDuration: "1 minute" }
      })
      const result = yield* relay.chat(request())
      expect(result.metadata.upstream).toBe("b")
      expect(result.metadata.attempts).toBe(2)
      expect(result.metadata.failures).toEqual(["a: server error (503)"])
      expect(calls).toEqual(["a", "b"])
      expect(yield* relay.upstreams[0]!.breaker.state).toBe("Open")
      expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(0)
      // a is left out now: the next request goes to b at once.
      yield* relay.chat(request())
      expect(calls).toEqual(["a", "b", "b"])
    }))

  it.scoped("a local rate limit reached on the first upstream moves on to the next, as before", () =>
    Effect.gen(function*() {
      const { calls, client } = lowLevel((u) => ok(`from ${u}`))
      const relay = yield* setup(client, {
        upstreams: [upstream("a", { priority: 1, requestsPerMinute: 1 }), upstream("b", { priority: 2 })]
      })
      expect((yield* relay.chat(request())).metadata.upstream).toBe("a")
      const second = yield* relay.chat(request())
      expect(second.metadata.upstream).toBe("b")
      expect(second.metadata.attempts).toBe(1)
      expect(second.metadata.failures).toEqual(["a: local rate limit reached"])
      expect(calls).toEqual(["a", "b"])
    }))

  it.scoped("rate-limit headers that call for a cooldown start it, as before", () =>
    Effect.gen(function*() {
      const { calls, client } = lowLevel((u) =>
        u === "a"
          ? { ...ok("a"), headers: { "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s" } }
          : ok("b")
      )
      const relay = yield* setup(client, { upstreams: [upstream("a", { priority: 1 }), upstream("b", { priority: 2 })] })
      expect((yield* relay.chat(request())).metadata.upstream).toBe("a")
      expect((yield* relay.chat(request())).metadata.upstream).toBe("b")
      yield* TestClock.adjust("2 seconds")
      expect((yield* relay.chat(request())).metadata.upstream).toBe("a")
      expect(calls).toEqual(["a", "b", "a"])
    }))
})

describe("ProviderClient keeps the hot path for plain OpenAI upstreams", () => {
  /** The relay over `ProviderClient` over the low-level client: `a` plain OpenAI, `claude` Anthropic. */
  const overProviders = (script: Script) =>
    Effect.gen(function*() {
      const low = lowLevel(script)
      const translated = yield* ProviderClient.make(
        low.client,
        (name) => name === "claude" ? { kind: "anthropic" } : name === "a" ? { kind: "openai" } : undefined
      )
      const relay = yield* setup(translated, {
        upstreams: [upstream("a", { priority: 1 }), upstream("claude", { priority: 2, baseUrl: "http://127.0.0.1:9/v1" })],
        retry: { maxRetries: 0 }
      })
      return { ...low, translated, relay }
    })

  it.scoped("a plain upstream behind ProviderClient is called through unsafePost: no fiber, a handful of operations", () =>
    Effect.gen(function*() {
      const { calls, relay, translated } = yield* overProviders(() => ok("from a"))
      expect(translated.unsafePost).toBeDefined()
      // Warm up: per-model and per-label caches are filled on the first request.
      yield* relay.chat(request())
      const empty = new Counting()
      yield* counted(Effect.void, empty)
      const counting = new Counting()
      const result = yield* counted(relay.chat(request()), counting)
      expect(result.metadata.upstream).toBe("a")
      expect(calls).toEqual(["a", "a"])
      expect(counting.fibers).toBe(0)
      expect(counting.ops - empty.ops).toBeLessThanOrEqual(16)
    }))

  it.scoped("a translated upstream is still served (its post in a fiber of the layer's own): the refusal of a field it cannot take comes back", () =>
    Effect.gen(function*() {
      const { relay } = yield* overProviders(() => status(503))
      // a fails (503); claude cannot take logprobs: refused before any call, named.
      const error = yield* Effect.flip(relay.chat({ ...request(), logprobs: true }))
      expect(error._tag).toBe("UpstreamRejected")
      expect(error._tag === "UpstreamRejected" && JSON.parse(error.body).error.param).toBe("logprobs")
    }))
})
