/**
 * The relay's spans (Relay.Options.tracing), under TestClock, against the
 * scripted upstream client, with Effect's own tracer recording every span:
 * what an attempt's span says, when it ends, what the upstream is sent, and
 * that nothing at all happens with tracing off.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as Tracer from "effect/Tracer"
import type * as OpenAI from "../src/OpenAI.js"
import type * as Upstream from "../src/Upstream.js"
import * as Scripted from "./support/ScriptedClient.js"
import { scriptedRelay } from "./support/ScriptedRelay.js"

const MODEL = "gpt-4.1"
/** USD for the scripted usage (10 prompt, 5 completion tokens) of gpt-4.1 ($2 / $8 per million). */
const COST = (10 * 2 + 5 * 8) / 1_000_000

const upstream = (name: string, priority: number, extra: Partial<Upstream.Config> = {}): Upstream.Config => ({
  name,
  baseUrl: `https://${name}.example.test:8443/v1`,
  apiKey: Redacted.make(`sk-secret-${name}`),
  models: [MODEL],
  priority,
  ...extra
})

/** Effect's own tracer, keeping every span it makes. */
const recording = () => {
  const spans: Array<Tracer.Span> = []
  const native = Effect.runSync(Effect.tracer)
  const tracer = Tracer.make({
    span: (...args) => {
      const span = native.span(...args)
      spans.push(span)
      return span
    },
    context: (f, fiber) => native.context(f, fiber)
  })
  return { spans, tracer }
}

const setup = scriptedRelay

const request = (extra: Partial<OpenAI.ChatCompletionRequest> = {}): OpenAI.ChatCompletionRequest => ({
  model: MODEL,
  messages: [{ role: "user", content: "a prompt" }],
  ...extra
})

const named = (spans: ReadonlyArray<Tracer.Span>, name: string) => spans.filter((s) => s.name === name)
const attributes = (span: Tracer.Span) => Object.fromEntries(span.attributes)
/** The span's events as [name, attributes]. */
const events = (span: Tracer.Span) =>
  (span as unknown as { events: Array<[string, bigint, Record<string, unknown>]> }).events.map(([n, , a]) => [n, a])
const ended = (span: Tracer.Span) => span.status._tag === "Ended"
const millis = (nanos: bigint) => Number(nanos / 1_000_000n)

describe("tracing on", () => {
  it.scoped("each upstream call is a client span under the caller's span; the upstream gets a traceparent naming it", () =>
    Effect.gen(function*() {
      const { spans, tracer } = recording()
      const { client, relay } = yield* setup({ upstreams: [upstream("a", 1), upstream("b", 2)], tracing: {} })
      client.script("a", Scripted.status(503))
      const result = yield* relay.chat(request()).pipe(Effect.withSpan("caller"), Effect.withTracer(tracer))
      expect(result.metadata.upstream).toBe("b")

      const [caller] = named(spans, "caller")
      const [a] = named(spans, "upstream a")
      const [b] = named(spans, "upstream b")
      expect(spans).toHaveLength(3)
      for (const s of [a!, b!]) {
        expect(s.kind).toBe("client")
        expect(s.parent._tag === "Some" && s.parent.value.spanId).toBe(caller!.spanId)
        expect(s.traceId).toBe(caller!.traceId)
        expect(ended(s)).toBe(true)
      }
      expect(attributes(a!)).toEqual({
        "breakwater.upstream": "a",
        "breakwater.attempt": 1,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": MODEL,
        "http.request.method": "POST",
        "server.address": "a.example.test",
        "server.port": 8443,
        "breakwater.outcome": "UpstreamServerError",
        "error.type": "UpstreamServerError",
        "breakwater.failure.reason": "server error (503)",
        "http.response.status_code": 503
      })
      expect(a!.status._tag === "Ended" && Exit.isFailure(a!.status.exit)).toBe(true)
      expect(attributes(b!)).toMatchObject({
        "breakwater.attempt": 2,
        "breakwater.outcome": "ok",
        "http.response.status_code": 200,
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5,
        "breakwater.cost_usd": COST
      })
      expect(b!.status._tag === "Ended" && Exit.isSuccess(b!.status.exit)).toBe(true)
      // Each call carried the traceparent of its own span, and nothing else.
      expect(client.callsTo("a")[0]!.headers).toEqual({ traceparent: `00-${a!.traceId}-${a!.spanId}-01` })
      expect(client.callsTo("b")[0]!.headers).toEqual({ traceparent: `00-${b!.traceId}-${b!.spanId}-01` })
    }))

  it.scoped("a hung call's span ends at the upstream's timeout, with the reason; a 429 says the cooldown it starts", () =>
    Effect.gen(function*() {
      const { spans, tracer } = recording()
      const { client, relay } = yield* setup({
        upstreams: [upstream("slow", 1, { timeout: "2 seconds" }), upstream("busy", 2), upstream("c", 3)],
        tracing: {}
      })
      client.script("slow", Scripted.hang)
      client.script("busy", Scripted.status(429, { "retry-after": "7" }))
      const fiber = yield* Effect.fork(relay.chat(request()).pipe(Effect.withSpan("caller"), Effect.withTracer(tracer)))
      yield* TestClock.adjust("2 seconds")
      expect((yield* Fiber.join(fiber)).metadata.upstream).toBe("c")
      const [slow] = named(spans, "upstream slow")
      expect(slow!.status._tag === "Ended" && millis(slow!.status.endTime - slow!.status.startTime)).toBe(2_000)
      expect(attributes(slow!)).toMatchObject({ "error.type": "UpstreamTimeout", "breakwater.failure.reason": "no answer within 2s" })
      expect(attributes(slow!)["http.response.status_code"]).toBeUndefined()
      const [busy] = named(spans, "upstream busy")
      expect(events(busy!)).toContainEqual(["cooldown", { "breakwater.cooldown.reason": "rate-limited", "breakwater.cooldown.ms": 7_000 }])
    }))

  it.scoped("a stream's attempt span stays open until the stream ends, then says how it ended, its tokens and cost", () =>
    Effect.gen(function*() {
      const { spans, tracer } = recording()
      const { relay } = yield* setup({ upstreams: [upstream("a", 1)], tracing: {} })
      const result = yield* relay.chatStream(request({ stream: true })).pipe(Effect.withSpan("caller"), Effect.withTracer(tracer))
      const [a] = named(spans, "upstream a")
      expect(ended(a!)).toBe(false)
      yield* Stream.runDrain(result.events)
      expect(ended(a!)).toBe(true)
      expect(attributes(a!)).toMatchObject({
        "breakwater.stream.outcome": "completed",
        "breakwater.outcome": "ok",
        "http.response.status_code": 200,
        "gen_ai.usage.output_tokens": 5,
        "breakwater.cost_usd": COST
      })
    }))

  it.scoped("an upstream our own limit leaves out gets no span, but an event on the caller's span", () =>
    Effect.gen(function*() {
      const { spans, tracer } = recording()
      const { client, relay } = yield* setup({ upstreams: [upstream("a", 1, { requestsPerMinute: 1 }), upstream("b", 2)], tracing: {} })
      yield* relay.chat(request())
      yield* relay.chat(request()).pipe(Effect.withSpan("caller"), Effect.withTracer(tracer))
      expect(client.calls.map((c) => c.upstream)).toEqual(["a", "b"])
      expect(spans.map((s) => s.name)).toEqual(["caller", "upstream b"])
      expect(events(spans[0]!)).toEqual([
        ["upstream skipped", { "breakwater.upstream": "a", "breakwater.reason": "local rate limit reached" }]
      ])
    }))
})

describe("tracing off (the default)", () => {
  it.scoped("no span is made, even under a caller's span, and no header is sent", () =>
    Effect.gen(function*() {
      const { spans, tracer } = recording()
      const { client, relay } = yield* setup({ upstreams: [upstream("a", 1), upstream("b", 2)] })
      client.script("a", Scripted.status(503))
      yield* relay.chat(request()).pipe(Effect.withSpan("caller"), Effect.withTracer(tracer))
      const stream = yield* relay.chatStream(request({ stream: true })).pipe(Effect.withSpan("caller"), Effect.withTracer(tracer))
      yield* Stream.runDrain(stream.events)
      expect(spans.map((s) => s.name)).toEqual(["caller", "caller"])
      expect(client.calls.map((c) => c.headers)).toEqual([undefined, undefined, undefined])
    }))
})
