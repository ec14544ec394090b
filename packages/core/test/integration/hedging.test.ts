/**
 * Hedging over real HTTP on 127.0.0.1: a primary fake that takes 2 s, a
 * secondary that takes 100 ms, `after: 300ms`. The answer comes from the
 * secondary in about after + its latency, and the primary sees its
 * connection closed (its `aborted` counter), for JSON and for streams.
 *
 * Real time, kept short: each test takes well under a second.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import type * as OpenAI from "../../src/OpenAI.js"
import * as Relay from "../../src/Relay.js"
import * as Fake from "../../src/testing/FakeUpstream.js"
import { httpRelayDeps as deps } from "../support/HttpDeps.js"

const AFTER = 300
const SLOW = 2_000
const FAST = 100

let seq = 0
const ask = (extra: Partial<OpenAI.ChatCompletionRequest> = {}): OpenAI.ChatCompletionRequest => ({
  model: "gpt-4.1",
  messages: [{ role: "user", content: `hedged question ${++seq}` }],
  ...extra
})

/** A slow primary and a fast secondary, and a relay hedging after 300 ms over them. */
const withHedgedRelay = <A, E>(f: (relay: Relay.Relay, primary: Fake.FakeUpstream, secondary: Fake.FakeUpstream) => Effect.Effect<A, E>) =>
  Effect.scoped(Effect.gen(function*() {
    const primary = yield* Fake.make({ name: "primary", faults: { latencyMs: SLOW } })
    const secondary = yield* Fake.make({ name: "secondary", faults: { latencyMs: FAST } })
    const options: Relay.Options = {
      cacheMode: "none",
      hedge: { after: Duration.millis(AFTER), maxExtra: 1 },
      upstreams: [primary, secondary].map((fake, i) => ({
        name: fake.name,
        baseUrl: fake.url,
        apiKey: Redacted.make(`sk-${fake.name}`),
        models: "*" as const,
        priority: i + 1
      }))
    }
    const relay = Context.get(yield* Layer.build(Relay.layer(options).pipe(Layer.provide(deps))), Relay.Relay)
    return yield* f(relay, primary, secondary)
  }))

/** Waits (real time, at most 2 s) until `cond` holds. */
const eventually = (cond: () => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 200 && !cond(); i++) yield* Effect.sleep(Duration.millis(10))
    return cond()
  })

const now = Effect.sync(() => performance.now())

describe("hedging over HTTP", () => {
  it.live("JSON: the fast secondary answers in about after + its latency; the slow primary's request is aborted", () =>
    withHedgedRelay((relay, primary, secondary) =>
      Effect.gen(function*() {
        const started = yield* now
        const result = yield* relay.chat(ask())
        const elapsed = (yield* now) - started
        expect(result.metadata.upstream).toBe("secondary")
        expect(result.metadata.hedge).toEqual({ upstream: "secondary", outcome: "won" })
        expect((JSON.parse(result.body) as { system_fingerprint: string }).system_fingerprint).toBe("fake-secondary")
        expect(elapsed).toBeGreaterThanOrEqual(AFTER + FAST - 5)
        expect(elapsed).toBeLessThan(AFTER + FAST + 400)
        expect(primary.counters().chat).toBe(1)
        expect(secondary.counters().chat).toBe(1)
        // The primary saw its connection closed before it answered.
        expect(yield* eventually(() => primary.counters().aborted === 1)).toBe(true)
        expect(primary.counters().byStatus[200]).toBeUndefined()
        expect(primary.counters().inFlight).toBe(0)
        expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(0)
      })))

  it.live("streams: the fast secondary's stream is relayed; the primary's request is aborted before its first event", () =>
    withHedgedRelay((relay, primary) =>
      Effect.gen(function*() {
        const started = yield* now
        const result = yield* relay.chatStream(ask({ stream: true }))
        const firstEvent = (yield* now) - started
        expect(result.upstream).toBe("secondary")
        expect(firstEvent).toBeGreaterThanOrEqual(AFTER + FAST - 5)
        expect(firstEvent).toBeLessThan(AFTER + FAST + 400)
        const events = Chunk.toReadonlyArray(yield* Stream.runCollect(result.events))
        expect(events[events.length - 1]).toBe("data: [DONE]\n\n")
        const done = yield* result.done
        expect(done.streamOutcome).toBe("completed")
        expect(done.hedge).toEqual({ upstream: "secondary", outcome: "won" })
        expect(yield* eventually(() => primary.counters().aborted === 1)).toBe(true)
        expect(primary.counters().byStatus[200]).toBeUndefined()
        expect(relay.upstreams[0]!.bulkhead.unsafeStats().active).toBe(0)
      })))

  it.live("without hedging the same request waits for the slow primary (the baseline)", () =>
    withHedgedRelay((relay, primary, secondary) =>
      Effect.gen(function*() {
        const started = yield* now
        const result = yield* relay.chat(ask(), { hedge: false })
        const elapsed = (yield* now) - started
        expect(result.metadata.upstream).toBe("primary")
        expect(elapsed).toBeGreaterThanOrEqual(SLOW - 5)
        expect(secondary.counters().chat).toBe(0)
        expect(primary.counters().aborted).toBe(0)
      })), 10_000)
})
