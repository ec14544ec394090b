/**
 * Failover over real HTTP on 127.0.0.1, against fault-injecting fake upstreams.
 *
 * Each failure kind gets a test showing that (a) the request still succeeds
 * through a healthy upstream, and (b) the failing upstream is left alone for
 * the right time, read from the fakes' own counters: a cooldown (429, quota)
 * keeps every request away from it until it ends, a breaker that opened on
 * 5xx, timeouts, broken bodies or resets keeps it away for `openDuration`, and
 * a one-off failure below the breaker's threshold does not keep it away at all.
 *
 * Real time, kept short: no test waits more than ~1.1 s.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import type * as OpenAI from "../../src/OpenAI.js"
import * as Relay from "../../src/Relay.js"
import type * as Upstream from "../../src/Upstream.js"
import * as Fake from "../../src/testing/FakeUpstream.js"
import { httpRelayDeps as deps } from "../support/HttpDeps.js"

// ---------------------------------------------------------------------------
// helpers

/** Runs `f` with a relay built from `options` (cache off unless asked for), over real HTTP. */
const withRelay = <A, E>(options: Relay.Options, f: (relay: Relay.Relay) => Effect.Effect<A, E>) =>
  Effect.flatMap(Relay.Relay, f).pipe(
    Effect.provide(Relay.layer({ cacheMode: "none", ...options }).pipe(Layer.provide(deps)))
  )

const up = (
  fake: Fake.FakeUpstream,
  priority: number,
  extra: Partial<Upstream.Config> = {}
): Upstream.Config => ({
  name: fake.name,
  baseUrl: fake.url,
  apiKey: Redacted.make(`sk-${fake.name}`),
  models: "*",
  priority,
  ...extra
})

let seq = 0
/** A chat request with a prompt never used before. */
const ask = (extra: Partial<OpenAI.ChatCompletionRequest> = {}): OpenAI.ChatCompletionRequest => ({
  model: "gpt-4.1",
  messages: [{ role: "user", content: `question ${++seq}` }],
  ...extra
})

const fingerprintOf = (body: string): unknown => (JSON.parse(body) as { system_fingerprint?: unknown }).system_fingerprint

/** Asserts that a chat result came from `fake`, by metadata and by body. */
const expectFrom = (result: Relay.Result, fake: Fake.FakeUpstream) => {
  expect(result.metadata.upstream).toBe(fake.name)
  expect(fingerprintOf(result.body)).toBe(`fake-${fake.name}`)
}

const chatCalls = (fake: Fake.FakeUpstream) => fake.counters().chat

const now = Effect.sync(() => performance.now())

/** `n` requests one after the other, each from `expected`. */
const allFrom = (relay: Relay.Relay, n: number, expected: Fake.FakeUpstream) =>
  Effect.forEach(Array.from({ length: n }), () =>
    Effect.map(relay.chat(ask()), (r) => {
      expectFrom(r, expected)
      return r
    }), { discard: true })

const parseEvents = (events: Chunk.Chunk<string>) => {
  const blocks = Chunk.toReadonlyArray(events)
  for (const b of blocks) {
    expect(b.startsWith("data: ")).toBe(true)
    expect(b.endsWith("\n\n")).toBe(true)
  }
  return blocks.map((b) => b.slice("data: ".length, -2))
}

// ---------------------------------------------------------------------------
// rate limits and quota: cooldowns shared by all requests

describe("429 and quota: cooldowns", () => {
  it.scopedLive("429 with Retry-After: 1 keeps the upstream away for ~1 s, then it gets traffic again", () =>
    Effect.gen(function*() {
      const a = yield* Fake.make({ name: "a", faults: { rate429: 1, retryAfter: "1" } })
      const b = yield* Fake.make({ name: "b" })
      yield* withRelay({ upstreams: [up(a, 1), up(b, 2)] }, (relay) =>
        Effect.gen(function*() {
          const first = yield* relay.chat(ask())
          expectFrom(first, b)
          expect(first.metadata.attempts).toBe(2)
          expect(first.metadata.failures).toEqual(["a: rate limited (429), retry after 1s"])
          expect(a.counters().byStatus[429]).toBe(1)

          // a is healthy again, but it asked for a second: right after, nobody calls it.
          a.setFaults({})
          yield* allFrom(relay, 10, b)
          expect(chatCalls(a)).toBe(1)
          expect(chatCalls(b)).toBe(11)

          // After the second, priority 1 is back in front.
          yield* Effect.sleep("1100 millis")
          const after = yield* relay.chat(ask())
          expectFrom(after, a)
          expect(after.metadata.attempts).toBe(1)
          expect(chatCalls(a)).toBe(2)
          expect(chatCalls(b)).toBe(11)
        }))
    }), 10_000)

  it.scopedLive("429 with retry-after-ms (which wins over Retry-After) keeps the upstream away for that long", () =>
    Effect.gen(function*() {
      // OpenAI sends both; the millisecond header is the precise one.
      const a = yield* Fake.make({ name: "a", faults: { rate429: 1, retryAfter: "30", retryAfterMs: 400 } })
      const b = yield* Fake.make({ name: "b" })
      yield* withRelay({ upstreams: [up(a, 1), up(b, 2)] }, (relay) =>
        Effect.gen(function*() {
          const first = yield* relay.chat(ask())
          expectFrom(first, b)
          expect(first.metadata.failures).toEqual(["a: rate limited (429), retry after 400ms"])

          a.setFaults({})
          yield* allFrom(relay, 5, b)
          expect(chatCalls(a)).toBe(1)

          yield* Effect.sleep("500 millis")
          expectFrom(yield* relay.chat(ask()), a)
          expect(chatCalls(a)).toBe(2)
          expect(chatCalls(b)).toBe(6)
        }))
    }), 10_000)

  it.scopedLive("429 without any header: the relay's rateLimitCooldown applies", () =>
    Effect.gen(function*() {
      const a = yield* Fake.make({ name: "a", faults: { rate429: 1 } })
      const b = yield* Fake.make({ name: "b" })
      yield* withRelay({ upstreams: [up(a, 1), up(b, 2)], rateLimitCooldown: "300 millis" }, (relay) =>
        Effect.gen(function*() {
          expectFrom(yield* relay.chat(ask()), b)
          a.setFaults({})
          yield* allFrom(relay, 5, b)
          expect(chatCalls(a)).toBe(1)
          yield* Effect.sleep("400 millis")
          expectFrom(yield* relay.chat(ask()), a)
          expect(chatCalls(a)).toBe(2)
        }))
    }), 10_000)

  for (const as of ["429", "200"] as const) {
    it.scopedLive(`insufficient_quota as a ${as} puts the upstream away for quotaCooldown (1 hour)`, () =>
      Effect.gen(function*() {
        const a = yield* Fake.make({ name: "a", faults: { quota: as } })
        const b = yield* Fake.make({ name: "b" })
        yield* withRelay({ upstreams: [up(a, 1), up(b, 2)], quotaCooldown: "1 hour" }, (relay) =>
          Effect.gen(function*() {
            const first = yield* relay.chat(ask())
            expectFrom(first, b)
            expect(first.metadata.failures).toEqual(["a: quota exhausted (insufficient_quota)"])
            expect(a.counters().byStatus[Number(as)]).toBe(1)

            // Even healthy again and after the default 429 cooldown (1 s), a stays out.
            a.setFaults({})
            yield* allFrom(relay, 5, b)
            yield* Effect.sleep("1100 millis")
            yield* allFrom(relay, 5, b)
            expect(chatCalls(a)).toBe(1)
            expect(chatCalls(b)).toBe(11)
          }))
      }), 10_000)
  }
})

// ---------------------------------------------------------------------------
// server errors and hangs: the breaker

describe("5xx and hangs: the breaker", () => {
  it.scopedLive("503: after failureThreshold (2) failures the upstream is left alone for openDuration, then probed", () =>
    Effect.gen(function*() {
      const a = yield* Fake.make({ name: "a", faults: { rate5xx: 1 } })
      const b = yield* Fake.make({ name: "b" })
      yield* withRelay(
        { upstreams: [up(a, 1), up(b, 2)], breaker: { failureThreshold: 2, openDuration: "1 second" } },
        (relay) =>
          Effect.gen(function*() {
            // A 503 starts no cooldown: the next request tries a again.
            const r1 = yield* relay.chat(ask())
            expectFrom(r1, b)
            expect(r1.metadata.failures).toEqual(["a: server error (503)"])
            expect(chatCalls(a)).toBe(1)
            const r2 = yield* relay.chat(ask())
            expectFrom(r2, b)
            expect(chatCalls(a)).toBe(2)
            expect(a.counters().byStatus[503]).toBe(2)
            const breaker = relay.upstreams.find((u) => u.name === "a")!.breaker
            expect(yield* breaker.state).toBe("Open")

            // Open: a is not called, not even tried (the router leaves it out).
            a.setFaults({})
            const r3 = yield* relay.chat(ask())
            expectFrom(r3, b)
            expect(r3.metadata.attempts).toBe(1)
            yield* allFrom(relay, 5, b)
            expect(chatCalls(a)).toBe(2)

            // After openDuration, a gets a probe, which succeeds.
            yield* Effect.sleep("1100 millis")
            expect(yield* breaker.state).toBe("HalfOpen")
            expectFrom(yield* relay.chat(ask()), a)
            expect(chatCalls(a)).toBe(3)
            expect(chatCalls(b)).toBe(8)
          })
      )
    }), 10_000)

  it.scopedLive("a hang is cut at the upstream's timeout (300 ms); the request succeeds elsewhere in well under the hang", () =>
    Effect.gen(function*() {
      const a = yield* Fake.make({ name: "a", faults: { hang: 1 } })
      const b = yield* Fake.make({ name: "b" })
      yield* withRelay(
        {
          upstreams: [up(a, 1, { timeout: "300 millis" }), up(b, 2)],
          breaker: { failureThreshold: 2, openDuration: "1 hour" }
        },
        (relay) =>
          Effect.gen(function*() {
            const t0 = yield* now
            const r1 = yield* relay.chat(ask())
            const took = (yield* now) - t0
            expectFrom(r1, b)
            expect(r1.metadata.failures).toEqual(["a: no answer within 300ms"])
            expect(took).toBeGreaterThanOrEqual(290)
            expect(took).toBeLessThan(1000)
            expect(a.counters().hangs).toBe(1)
            // The timed-out call was aborted, not left hanging on the upstream.
            yield* Effect.sleep("50 millis")
            expect(a.counters().inFlight).toBe(0)

            // A timeout counts against the breaker, no cooldown: the next request waits on a again...
            const t1 = yield* now
            expectFrom(yield* relay.chat(ask()), b)
            expect((yield* now) - t1).toBeGreaterThanOrEqual(290)
            expect(a.counters().hangs).toBe(2)

            // ...and after two, the breaker keeps it away: no more waiting.
            const t2 = yield* now
            yield* allFrom(relay, 5, b)
            expect((yield* now) - t2).toBeLessThan(250)
            expect(chatCalls(a)).toBe(2)
          })
      )
    }), 10_000)
})

// ---------------------------------------------------------------------------
// latency routing

describe("latency routing", () => {
  it.scopedLive("the faster upstream gets most of the traffic over 40 requests", () =>
    Effect.gen(function*() {
      // Far apart (150 ms against ~3 ms), so that one call of the fast one slowed by a loaded
      // machine (a 50 ms stall on 2 busy cores happens) does not make it look the slower.
      const slow = yield* Fake.make({ name: "slow", seed: 1, faults: { latencyMs: 150, jitterMs: 30 } })
      const fast = yield* Fake.make({ name: "fast", seed: 2, faults: { latencyMs: 1, jitterMs: 4 } })
      yield* withRelay({ upstreams: [up(slow, 1), up(fast, 1)], router: { strategy: "latency" } }, (relay) =>
        Effect.forEach(Array.from({ length: 40 }), () => relay.chat(ask()), { discard: true }).pipe(
          Effect.withRandom(Random.make(7))
        ))
      const s = chatCalls(slow)
      const f = chatCalls(fast)
      expect(s + f).toBe(40)
      // Each is measured at least once; then only exploration (5%) sends traffic to the slow one.
      expect(s).toBeGreaterThanOrEqual(1)
      expect(f).toBeGreaterThanOrEqual(34)
    }), 10_000)
})

// ---------------------------------------------------------------------------
// broken answers and connections: fail over at once; the breaker decides the rest

const brokenCases: ReadonlyArray<{ readonly label: string; readonly faults: Fake.Faults; readonly reason: RegExp }> = [
  { label: "truncated JSON", faults: { truncated: 1 }, reason: /^a: invalid response \(truncated\)$/ },
  { label: "empty content", faults: { emptyContent: 1 }, reason: /^a: invalid response \(empty-message\)$/ },
  { label: "empty choices", faults: { emptyChoices: 1 }, reason: /^a: invalid response \(empty-choices\)$/ },
  { label: "connection reset", faults: { reset: 1 }, reason: /^a: connection failed \(.+\)$/ }
]

describe("broken answers and connections", () => {
  for (const c of brokenCases) {
    it.scopedLive(`${c.label}: fails over to the healthy upstream; the breaker (threshold 3) then keeps it away`, () =>
      Effect.gen(function*() {
        const a = yield* Fake.make({ name: "a", faults: c.faults })
        const b = yield* Fake.make({ name: "b" })
        yield* withRelay(
          { upstreams: [up(a, 1), up(b, 2)], breaker: { failureThreshold: 3, openDuration: "1 hour" } },
          (relay) =>
            Effect.gen(function*() {
              const first = yield* relay.chat(ask())
              expectFrom(first, b)
              expect(first.metadata.attempts).toBe(2)
              expect(first.metadata.failures).toHaveLength(1)
              expect(first.metadata.failures[0]).toMatch(c.reason)

              // No cooldown for a broken answer: the next two requests try a too,
              // then its breaker opens and nobody calls it any more.
              yield* allFrom(relay, 7, b)
              expect(chatCalls(a)).toBe(3)
              expect(chatCalls(b)).toBe(8)
              if (c.faults.reset !== undefined) expect(a.counters().resets).toBe(3)
              else expect(a.counters().byStatus[200]).toBe(3)
            })
        )
      }), 10_000)
  }
})

// ---------------------------------------------------------------------------
// streams

describe("streams", () => {
  it.scopedLive("a stream cut after its first events ends with an error event, not a silent success, and does not fail over", () =>
    Effect.gen(function*() {
      const a = yield* Fake.make({ name: "a", faults: { streamCut: 1 } })
      const b = yield* Fake.make({ name: "b" })
      yield* withRelay({ upstreams: [up(a, 1), up(b, 2)] }, (relay) =>
        Effect.gen(function*() {
          const s = yield* relay.chatStream(ask({ stream: true }))
          expect(s.upstream).toBe("a")
          const data = parseEvents(yield* Stream.runCollect(s.events))
          expect(data).not.toContain("[DONE]")
          // The events a did send came through, from a...
          const chunks = data.slice(0, -1).map((d) => JSON.parse(d) as { system_fingerprint: string })
          expect(chunks.length).toBeGreaterThanOrEqual(1)
          for (const ch of chunks) expect(ch.system_fingerprint).toBe("fake-a")
          // ...then an error event, as the last event.
          const last = JSON.parse(data.at(-1)!) as { error?: { message: string; type: string } }
          expect(last.error?.type).toBe("upstream_error")
          expect(last.error?.message).toMatch(/ended before \[DONE\]/)
          const meta = yield* s.done
          expect(meta.upstream).toBe("a")
          expect(meta.attempts).toBe(1)
          expect(chatCalls(a)).toBe(1)
          expect(chatCalls(b)).toBe(0)
        }))
    }), 10_000)

  it.scopedLive("a stream whose first upstream answers 503 fails over and completes with [DONE]", () =>
    Effect.gen(function*() {
      const a = yield* Fake.make({ name: "a", faults: { status: 503 } })
      const b = yield* Fake.make({ name: "b" })
      yield* withRelay({ upstreams: [up(a, 1), up(b, 2)] }, (relay) =>
        Effect.gen(function*() {
          const s = yield* relay.chatStream(ask({ stream: true }))
          expect(s.upstream).toBe("b")
          expect(s.attempts).toBe(2)
          const data = parseEvents(yield* Stream.runCollect(s.events))
          expect(data.at(-1)).toBe("[DONE]")
          const chunks = data.slice(0, -1).map((d) => JSON.parse(d) as { system_fingerprint: string; error?: unknown })
          for (const ch of chunks) {
            expect(ch.error).toBeUndefined()
            expect(ch.system_fingerprint).toBe("fake-b")
          }
          const text = chunks.map((ch: any) => ch.choices?.[0]?.delta?.content ?? "").join("")
          expect(text).toBe("Hello from b")
          const meta = yield* s.done
          expect(meta.failures).toEqual(["a: server error (503)"])
          expect(a.counters().byStatus[503]).toBe(1)
          expect(chatCalls(b)).toBe(1)
        }))
    }), 10_000)

  it.scopedLive("a stream whose first upstream resets the connection fails over and completes with [DONE]", () =>
    Effect.gen(function*() {
      const a = yield* Fake.make({ name: "a", faults: { reset: 1 } })
      const b = yield* Fake.make({ name: "b" })
      yield* withRelay({ upstreams: [up(a, 1), up(b, 2)] }, (relay) =>
        Effect.gen(function*() {
          const s = yield* relay.chatStream(ask({ stream: true }))
          expect(s.upstream).toBe("b")
          const data = parseEvents(yield* Stream.runCollect(s.events))
          expect(data.at(-1)).toBe("[DONE]")
          expect(a.counters().resets).toBe(1)
        }))
    }), 10_000)
})

// ---------------------------------------------------------------------------
// what reaches the upstream

describe("what reaches the upstream", () => {
  it.scopedLive("each upstream gets its own key as Authorization: Bearer <key>", () =>
    Effect.gen(function*() {
      const a = yield* Fake.make({ name: "a", faults: { status: 503 } })
      const b = yield* Fake.make({ name: "b" })
      yield* withRelay(
        {
          upstreams: [
            up(a, 1, { apiKey: Redacted.make("sk-key-of-a") }),
            up(b, 2, { apiKey: Redacted.make("sk-key-of-b") })
          ]
        },
        (relay) => relay.chat(ask(), { key: "caller-key" })
      )
      expect(a.counters().lastAuthorization).toBe("Bearer sk-key-of-a")
      expect(b.counters().lastAuthorization).toBe("Bearer sk-key-of-b")
    }), 10_000)

  it.scopedLive("rawBody arrives byte for byte, on every upstream tried (string and bytes)", () =>
    Effect.gen(function*() {
      const a = yield* Fake.make({ name: "a", faults: { status: 502 } })
      const b = yield* Fake.make({ name: "b" })
      // Odd spacing, key order, escapes, non-ASCII and an unknown field: re-serialising would change it.
      const raw = `{ "messages":[ {"role":"user","content":"h\\u00e9llo ✓ — 🌊"} ],\n  "model" : "gpt-4.1",  "x_unknown": {"n": 1.50} }`
      const request = JSON.parse(raw) as OpenAI.ChatCompletionRequest
      yield* withRelay({ upstreams: [up(a, 1), up(b, 2)] }, (relay) =>
        Effect.gen(function*() {
          expectFrom(yield* relay.chat(request, { rawBody: raw }), b)
          expect(a.counters().lastBody).toBe(raw)
          expect(b.counters().lastBody).toBe(raw)

          const bytes = new TextEncoder().encode(raw.replace("gpt-4.1", "gpt-4.1-mini"))
          const request2 = { ...request, model: "gpt-4.1-mini" }
          expectFrom(yield* relay.chat(request2, { rawBody: bytes }), b)
          expect(a.counters().lastBody).toBe(new TextDecoder().decode(bytes))
          expect(b.counters().lastBody).toBe(new TextDecoder().decode(bytes))

          // A stream asks for usage: the field is added to the caller's bytes, which are kept.
          const streamRaw = raw.replace("{ ", `{ "stream": true, `)
          const s = yield* relay.chatStream({ ...request, stream: true }, { rawBody: streamRaw })
          yield* Stream.runDrain(s.events)
          expect(b.counters().lastBody).toBe(streamRaw.replace(/}$/, `,"stream_options":{"include_usage":true}}`))
          // When the caller asked for usage itself, its bytes go as they came.
          const askedRaw = raw.replace("{ ", `{ "stream": true, "stream_options": {"include_usage": true}, `)
          const asked = yield* relay.chatStream(
            { ...request, stream: true, stream_options: { include_usage: true } },
            { rawBody: askedRaw }
          )
          yield* Stream.runDrain(asked.events)
          expect(b.counters().lastBody).toBe(askedRaw)
        }))
    }), 10_000)
})
