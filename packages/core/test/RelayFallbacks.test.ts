/**
 * Model fallbacks and per-request narrowing (issue 14), under TestClock,
 * against a scripted upstream client: when every upstream of the asked model
 * has failed or is unavailable the request goes on to the fallback models in
 * order, within the same attempts and deadline; the answer names its model
 * and is priced by it; per-request options only narrow; a field one kind
 * cannot take sends the request elsewhere before it is a 400.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import type * as OpenAI from "../src/OpenAI.js"
import * as Relay from "../src/Relay.js"
import { UNTRANSLATABLE_HEADER } from "../src/UpstreamError.js"
import * as Scripted from "./support/ScriptedClient.js"
import { scriptedRelay, upstream } from "./support/ScriptedRelay.js"

const GPT = "gpt-4.1"
const CLAUDE = "claude-sonnet-4.5"
const GEMINI = "gemini-2.5-flash"

/** gpt (a, b), claude (c), gemini (g); gpt-4.1 falls back to claude, then gemini. */
const UPSTREAMS = [
  upstream("a", [GPT], { priority: 1 }),
  upstream("b", [GPT], { priority: 2 }),
  upstream("c", [CLAUDE], { priority: 3 }),
  upstream("g", [GEMINI], { priority: 4 })
]
const FALLBACKS = { [GPT]: [CLAUDE, GEMINI] }

const setup = (options: Partial<Relay.Options> = {}, cache = false) =>
  scriptedRelay({
    upstreams: UPSTREAMS,
    fallbacks: FALLBACKS,
    retry: { maxRetries: 0 },
    cacheMode: cache ? "deterministic" : "none",
    ...options
  })

const request = (extra: Partial<OpenAI.ChatCompletionRequest> = {}): OpenAI.ChatCompletionRequest => ({
  model: GPT,
  messages: [{ role: "user", content: "hi" }],
  ...extra
})

const names = (calls: ReadonlyArray<Scripted.Call>) => calls.map((c) => c.upstream)
const sentModel = (call: Scripted.Call) => (JSON.parse(call.body) as { model: string }).model
/** The scripted usage (10 prompt, 5 completion tokens) priced as claude-sonnet-4.5 ($3 / $15 per million). */
const CLAUDE_COST = (10 * 3 + 5 * 15) / 1_000_000

describe("model fallbacks", () => {
  it.scoped("every gpt-4.1 upstream fails: claude-sonnet-4.5 answers, named and priced as such", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup()
      client.fallback("a", Scripted.status(503))
      client.fallback("b", Scripted.status(500))
      const result = yield* relay.chat(request())
      expect(names(client.calls)).toEqual(["a", "b", "c"])
      expect(sentModel(client.calls[2]!)).toBe(CLAUDE)
      expect(result.metadata.upstream).toBe("c")
      expect(result.metadata.model).toBe(CLAUDE)
      expect(result.metadata.attempts).toBe(3)
      expect(result.metadata.costUsd).toBeCloseTo(CLAUDE_COST, 12)
      expect(result.metadata.failures).toEqual(["a: server error (503)", "b: server error (500)"])
    }))

  it.scoped("an answer of the asked model names it (hot path)", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup()
      const result = yield* relay.chat(request())
      expect(names(client.calls)).toEqual(["a"])
      expect(result.metadata.model).toBe(GPT)
    }))

  it.scoped("without fallbacks configured the request fails as before", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ fallbacks: undefined })
      client.fallback("a", Scripted.status(503))
      client.fallback("b", Scripted.status(503))
      const error = yield* Effect.flip(relay.chat(request()))
      expect(error._tag).toBe("AllUpstreamsFailed")
      expect(names(client.calls)).toEqual(["a", "b"])
    }))

  it.scoped("unavailable upstreams (cooling down after a 429 with Retry-After: 60) fall back at once, without waiting", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup()
      client.script("a", Scripted.status(429, { "retry-after": "60" }))
      client.script("b", Scripted.status(429, { "retry-after": "60" }))
      yield* relay.chat(request())
      client.clear()
      // Both gpt-4.1 upstreams are cooling down: no call to them, no wait.
      const fiber = yield* Effect.fork(relay.chat(request()))
      const result = yield* Fiber.join(fiber)
      expect(names(client.calls)).toEqual(["c"])
      expect(result.metadata.model).toBe(CLAUDE)
      expect(result.metadata.attempts).toBe(1)
      expect(result.metadata.failures).toEqual([])
    }))

  it.scoped("fallbacks are walked in order, followed on (a fallback's own fallbacks come after the list)", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [...UPSTREAMS, upstream("o", ["o3"], { priority: 5 })],
        fallbacks: { [GPT]: [CLAUDE, GEMINI], [CLAUDE]: ["o3"] },
        maxAttempts: 10
      })
      for (const u of ["a", "b", "c", "g"]) client.fallback(u, Scripted.status(503))
      const result = yield* relay.chat(request())
      expect(names(client.calls)).toEqual(["a", "b", "c", "g", "o"])
      expect(client.calls.map(sentModel)).toEqual([GPT, GPT, CLAUDE, GEMINI, "o3"])
      expect(result.metadata.model).toBe("o3")
      expect(relay.fallbacksOf(GPT)).toEqual([CLAUDE, GEMINI, "o3"])
      expect(relay.fallbacksOf(CLAUDE)).toEqual(["o3"])
    }))

  it.scoped("an open breaker on the asked model's only upstream: the fallback answers, the dead upstream is not panicked into", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", [GPT], { breaker: { failureThreshold: 2 } }), upstream("c", [CLAUDE])]
      })
      client.fallback("a", Scripted.status(503))
      yield* relay.chat(request())
      yield* relay.chat(request())
      expect(names(client.calls)).toEqual(["a", "c", "a", "c"])
      client.clear()
      // a's breaker is open and a has no healthy sibling: panic would call it
      // anyway; with a fallback left, the fallback is the request's first call.
      const result = yield* relay.chat(request())
      expect(names(client.calls)).toEqual(["c"])
      expect(result.metadata.attempts).toBe(1)
      expect(result.metadata.model).toBe(CLAUDE)
    }))

  it.scoped("the chain's last model still panics: with no fallback left, its open upstream is called", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", [GPT], { breaker: { failureThreshold: 2 } })],
        fallbacks: undefined
      })
      client.fallback("a", Scripted.status(503))
      yield* Effect.flip(relay.chat(request()))
      yield* Effect.flip(relay.chat(request()))
      client.clear()
      client.fallback("a", Scripted.status(200, {}, Scripted.completion("back", GPT)))
      const result = yield* relay.chat(request())
      expect(names(client.calls)).toEqual(["a"])
      expect(result.metadata.upstream).toBe("a")
    }))

  it.scoped("within the same maxAttempts: 2 attempts spent on gpt-4.1 leave none for the fallback", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ maxAttempts: 2 })
      client.fallback("a", Scripted.status(503))
      client.fallback("b", Scripted.status(503))
      const error = yield* Effect.flip(relay.chat(request()))
      expect(error._tag).toBe("AllUpstreamsFailed")
      expect(names(client.calls)).toEqual(["a", "b"])
    }))

  it.scoped("within the same deadline: a hang on a until the deadline leaves no time for the fallback", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", [GPT], { timeout: "10 seconds" }), upstream("c", [CLAUDE])],
        requestTimeout: "5 seconds"
      })
      client.fallback("a", Scripted.hang)
      const fiber = yield* Effect.fork(Effect.flip(relay.chat(request())))
      yield* TestClock.adjust("5 seconds")
      const error = yield* Fiber.join(fiber)
      expect(error._tag).toBe("DeadlineExceeded")
      expect(names(client.calls)).toEqual(["a"])
    }))

  it.scoped("a later round starts again from the asked model", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({
        upstreams: [upstream("a", [GPT]), upstream("c", [CLAUDE])],
        retry: { maxRetries: 1, baseDelay: "10 millis", maxDelay: "10 millis" },
        maxAttempts: 5
      })
      client.script("a", Scripted.status(503))
      client.script("c", Scripted.status(503))
      const fiber = yield* Effect.fork(relay.chat(request()))
      yield* TestClock.adjust("1 second")
      const result = yield* Fiber.join(fiber)
      expect(names(client.calls)).toEqual(["a", "c", "a"])
      expect(result.metadata.model).toBe(GPT)
    }))

  it.scoped("a stream falls back until its first event; the stream names its model", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup()
      client.fallbackStream("a", Scripted.streamStatus(503))
      client.fallbackStream("b", Scripted.streamStatus(503))
      const result = yield* relay.chatStream(request({ stream: true }))
      expect(result.upstream).toBe("c")
      expect(result.model).toBe(CLAUDE)
      const events = Chunk.toReadonlyArray(yield* Stream.runCollect(result.events))
      expect(events[events.length - 1]).toBe("data: [DONE]\n\n")
      const done = yield* result.done
      expect(done.model).toBe(CLAUDE)
      expect(done.costUsd).toBeCloseTo(CLAUDE_COST, 12)
      expect(sentModel(client.calls[2]!)).toBe(CLAUDE)
    }))

  it.scoped("a fallback's answer is not cached under the asked model", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({}, true)
      client.script("a", Scripted.status(503))
      client.script("b", Scripted.status(503))
      const first = yield* relay.chat(request({ temperature: 0 }))
      expect(first.metadata.model).toBe(CLAUDE)
      const second = yield* relay.chat(request({ temperature: 0 }))
      expect(second.metadata.cache).toBe("miss")
      expect(second.metadata.model).toBe(GPT)
      const third = yield* relay.chat(request({ temperature: 0 }))
      expect(third.metadata.cache).toBe("hit")
      expect(third.metadata.model).toBe(GPT)
    }))
})

describe("per-request narrowing", () => {
  it.scoped("fallbacks: [] (header `none`) turns fallbacks off", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup()
      client.fallback("a", Scripted.status(503))
      client.fallback("b", Scripted.status(503))
      const error = yield* Effect.flip(relay.chat(request(), { fallbacks: [] }))
      expect(error._tag).toBe("AllUpstreamsFailed")
      expect(names(client.calls)).toEqual(["a", "b"])
    }))

  it.scoped("fallbacks: [gemini] skips claude; a model outside the configured chain is ignored", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [...UPSTREAMS, upstream("o", ["o3"], { priority: 5 })] })
      client.fallback("a", Scripted.status(503))
      client.fallback("b", Scripted.status(503))
      const result = yield* relay.chat(request(), { fallbacks: ["o3", GEMINI] })
      expect(names(client.calls)).toEqual(["a", "b", "g"])
      expect(result.metadata.model).toBe(GEMINI)
    }))

  it.scoped("maxAttempts: 1 narrows; 9 is capped by the relay's 3", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ fallbacks: undefined })
      client.fallback("a", Scripted.status(503))
      client.fallback("b", Scripted.status(503))
      const one = yield* Effect.flip(relay.chat(request(), { maxAttempts: 1 }))
      expect(one._tag).toBe("AllUpstreamsFailed")
      expect(names(client.calls)).toEqual(["a"])
      client.clear()
      const relay3 = (yield* setup({ fallbacks: undefined, upstreams: [upstream("a", [GPT])], retry: { maxRetries: 5, baseDelay: "1 millis", maxDelay: "1 millis" } }))
      relay3.client.fallback("a", Scripted.status(503))
      const fiber = yield* Effect.fork(Effect.flip(relay3.relay.chat(request(), { maxAttempts: 9 })))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      expect(relay3.client.calls.length).toBe(3)
    }))

  it.scoped("timeout narrows the deadline (2 s of 60 s); a longer one is capped at 60 s", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ upstreams: [upstream("a", [GPT], { timeout: "120 seconds" })], fallbacks: undefined })
      client.fallback("a", Scripted.hang)
      const fiber = yield* Effect.fork(Effect.flip(relay.chat(request(), { timeout: Duration.seconds(2) })))
      yield* TestClock.adjust("2 seconds")
      const error = yield* Fiber.join(fiber)
      expect(error._tag).toBe("DeadlineExceeded")
      expect((error as Relay.DeadlineExceededOn).budget).toEqual(Duration.seconds(2))
      const long = yield* Effect.fork(Effect.flip(relay.chat(request(), { timeout: Duration.hours(1) })))
      yield* TestClock.adjust("60 seconds")
      const capped = yield* Fiber.join(long)
      expect(capped._tag).toBe("DeadlineExceeded")
      expect((capped as Relay.DeadlineExceededOn).budget).toEqual(Duration.seconds(60))
    }))

  it.scoped("upstream pins the request: only b is called, for the asked model and any fallback it serves", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup()
      client.fallback("b", Scripted.status(503))
      const error = yield* Effect.flip(relay.chat(request(), { upstream: "b" }))
      expect(error._tag).toBe("AllUpstreamsFailed")
      expect(names(client.calls)).toEqual(["b"])
      client.clear()
      client.fallback("b", Scripted.ok())
      const ok = yield* relay.chat(request(), { upstream: "b" })
      expect(ok.metadata.upstream).toBe("b")
      expect(names(client.calls)).toEqual(["b"])
      const stream = yield* relay.chatStream(request({ stream: true }), { upstream: "b" })
      expect(stream.upstream).toBe("b")
      yield* Stream.runDrain(stream.events)
    }))
})

describe("a field one kind cannot take", () => {
  const refused = (field: string) =>
    Scripted.reply(
      400,
      JSON.stringify({
        error: { message: `'${field}' cannot be sent to Anthropic: no equivalent`, type: "invalid_request_error", param: field, code: "unsupported_parameter" }
      }),
      { [UNTRANSLATABLE_HEADER]: field }
    )

  it.scoped("the first upstream cannot take logprobs: the second answers, and the refusal cost no attempt", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ fallbacks: undefined, maxAttempts: 1 })
      client.fallback("a", refused("logprobs"))
      const result = yield* relay.chat(request({ logprobs: true }))
      expect(names(client.calls)).toEqual(["a", "b"])
      expect(result.metadata.upstream).toBe("b")
      expect(result.metadata.attempts).toBe(1)
    }))

  it.scoped("no upstream can take it: a 400 naming the field", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ fallbacks: undefined })
      client.fallback("a", refused("logprobs"))
      client.fallback("b", refused("logprobs"))
      const error = yield* Effect.flip(relay.chat(request({ logprobs: true })))
      expect(error._tag).toBe("UpstreamRejected")
      const rejected = error as Extract<Relay.RelayError, { _tag: "UpstreamRejected" }>
      expect(rejected.status).toBe(400)
      expect(JSON.parse(rejected.body).error).toMatchObject({ param: "logprobs", code: "unsupported_parameter" })
    }))

  it.scoped("the upstreams that could take it failed: still the 400 naming the field, saying what became of them", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ fallbacks: undefined })
      client.fallback("a", Scripted.status(503))
      client.fallback("b", refused("logprobs"))
      const error = yield* Effect.flip(relay.chat(request({ logprobs: true })))
      expect(error._tag).toBe("UpstreamRejected")
      const body = JSON.parse((error as Extract<Relay.RelayError, { _tag: "UpstreamRejected" }>).body).error
      expect(body.param).toBe("logprobs")
      expect(body.message).toContain("'logprobs' cannot be sent to Anthropic")
      expect(body.message).toContain("a: server error (503)")
    }))

  it.scoped("a stream goes elsewhere too", () =>
    Effect.gen(function*() {
      const { client, relay } = yield* setup({ fallbacks: undefined })
      client.fallbackStream("a", Scripted.streamStatus(400, "{\"error\":{\"message\":\"x\",\"type\":\"invalid_request_error\",\"param\":\"logprobs\",\"code\":\"unsupported_parameter\"}}", { [UNTRANSLATABLE_HEADER]: "logprobs" }))
      const result = yield* relay.chatStream(request({ stream: true, logprobs: true }))
      expect(result.upstream).toBe("b")
      yield* Stream.runDrain(result.events)
    }))
})
