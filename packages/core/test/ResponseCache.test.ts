import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import type * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberStatus from "effect/FiberStatus"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as TestClock from "effect/TestClock"
import * as ResponseCache from "../src/ResponseCache.js"

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

type Store = Context.Tag.Service<ResponseCache.ResponseCacheStore>

class Upstream extends Data.TaggedError("Upstream")<{ readonly status: number }> {}

/**
 * Yields until `cond` holds. Forked fibers only run once the current fiber
 * yields, so tests wait for the state they expect instead of guessing a number
 * of yields. Fails loudly rather than hanging.
 */
const waitUntil = (label: string, cond: () => boolean | Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    for (let i = 0; i < 2_000; i++) {
      const r = cond()
      const ok = typeof r === "boolean" ? r : yield* r
      if (ok) return
      yield* Effect.yieldNow()
    }
    return yield* Effect.dieMessage(`condition never held: ${label}`)
  })

/** Lets every runnable fiber make progress. */
const settle = Effect.repeatN(Effect.yieldNow(), 50)

const allSuspended = (fibers: ReadonlyArray<Fiber.RuntimeFiber<unknown, unknown>>) =>
  Effect.map(
    Effect.forEach(fibers, (fiber) => Fiber.status(fiber)),
    (statuses) => statuses.every(FiberStatus.isSuspended)
  )

/** A compute that counts its runs and returns `value(run)`. */
const counting = (value: (run: number) => string = () => "v") =>
  Effect.map(Ref.make(0), (runs) => ({
    runs,
    compute: Effect.map(Ref.updateAndGet(runs, (n) => n + 1), value)
  }))

/**
 * A cache over the in-memory store, wrapped to count store calls; `set` can be
 * held on `setGate` (a slow remote store).
 */
const instrumented = (
  options: ResponseCache.Options & { readonly setGate?: Deferred.Deferred<void> } = {}
) =>
  Effect.gen(function*() {
    const inner = yield* ResponseCache.makeStoreMemory()
    const calls = { get: 0, set: 0 }
    const gate = options.setGate
    const store: Store = {
      get: (key) =>
        Effect.suspend(() => {
          calls.get++
          return inner.get(key)
        }),
      set: (key, value, ttl) =>
        Effect.suspend(() => {
          calls.set++
          return gate === undefined
            ? inner.set(key, value, ttl)
            : Effect.zipRight(Deferred.await(gate), inner.set(key, value, ttl))
        }),
      delete: inner.delete
    }
    const cache = yield* ResponseCache.make(options).pipe(
      Effect.provideService(ResponseCache.ResponseCacheStore, store)
    )
    return { cache, calls }
  })

const request = { model: "m", messages: [{ role: "user", content: "hi" }], temperature: 0 }

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

describe("ResponseCache", () => {
  describe("canonicalJson", () => {
    it("sorts object keys at every depth, keeping array order", () => {
      expect(ResponseCache.canonicalJson({ b: 1, a: { d: [{ z: 1, y: 2 }, 3], c: "x" } })).toBe(
        "{\"a\":{\"c\":\"x\",\"d\":[{\"y\":2,\"z\":1},3]},\"b\":1}"
      )
      expect(ResponseCache.canonicalJson({ b: 1, a: 2 })).toBe(ResponseCache.canonicalJson({ a: 2, b: 1 }))
      expect(ResponseCache.canonicalJson([2, 1])).not.toBe(ResponseCache.canonicalJson([1, 2]))
    })

    it("drops undefined values at every depth", () => {
      expect(ResponseCache.canonicalJson({ a: 1, b: undefined })).toBe("{\"a\":1}")
      expect(ResponseCache.canonicalJson({ x: { a: 1, b: undefined } })).toBe("{\"x\":{\"a\":1}}")
      expect(ResponseCache.canonicalJson({ a: 1, b: undefined })).toBe(ResponseCache.canonicalJson({ a: 1 }))
    })

    it("renders scalars as JSON", () => {
      expect(ResponseCache.canonicalJson("hi")).toBe("\"hi\"")
      expect(ResponseCache.canonicalJson(0)).toBe("0")
      expect(ResponseCache.canonicalJson(null)).toBe("null")
      expect(ResponseCache.canonicalJson(true)).toBe("true")
    })

    it("renders what JSON.stringify renders for arrays, holes and non-JSON values", () => {
      const value = { a: [1, undefined, () => 1, "x", null, { c: undefined }], b: { e: 2, d: [[], {}] } }
      expect(ResponseCache.canonicalJson(value)).toBe("{\"a\":[1,null,null,\"x\",null,{}],\"b\":{\"d\":[[],{}],\"e\":2}}")
      expect(ResponseCache.canonicalJson(value)).toBe(JSON.stringify(JSON.parse(ResponseCache.canonicalJson(value))))
    })

    it("does not recurse: a value nested 100,000 deep renders (no stack overflow)", () => {
      const depth = 100_000
      let arrays: unknown = []
      for (let i = 1; i < depth; i++) arrays = [arrays]
      expect(ResponseCache.canonicalJson(arrays)).toBe("[".repeat(depth) + "]".repeat(depth))
      let objects: unknown = 1
      for (let i = 0; i < depth; i++) objects = { b: objects, a: i === depth - 1 ? 0 : undefined }
      const text = ResponseCache.canonicalJson(objects)
      expect(text.startsWith(`{"a":0,"b":{"b":{"b":`)).toBe(true)
      expect(text.length).toBe(`{"a":0,"b":`.length + (depth - 1) * `{"b":`.length + 1 + depth)
    })
  })

  describe("key", () => {
    it.effect("is a SHA-256 hex digest, the same for the same request", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const k = cache.key(request)
        expect(k).toMatch(/^[0-9a-f]{64}$/)
        expect(cache.key(structuredClone(request))).toBe(k)
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("does not depend on field order, at the top level or inside messages", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const k = cache.key(request)
        expect(cache.key({ temperature: 0, messages: [{ role: "user", content: "hi" }], model: "m" })).toBe(k)
        expect(cache.key({ model: "m", messages: [{ content: "hi", role: "user" }], temperature: 0 })).toBe(k)
        expect(cache.key({ temperature: 0, messages: [{ content: "hi", role: "user" }], model: "m" })).toBe(k)
        // Deeper still: tool schemas.
        const tools = (order: "ab" | "ba") => [{
          type: "function",
          function: order === "ab"
            ? { name: "f", parameters: { type: "object", properties: { a: { type: "string" }, b: { type: "number" } } } }
            : { parameters: { properties: { b: { type: "number" }, a: { type: "string" } }, type: "object" }, name: "f" }
        }]
        expect(cache.key({ ...request, tools: tools("ab") })).toBe(cache.key({ ...request, tools: tools("ba") }))
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("a request nested 100,000 deep gets a key (no stack overflow)", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        let deep: unknown = []
        for (let i = 0; i < 100_000; i++) deep = [deep]
        expect(cache.key({ ...request, extra: deep })).toMatch(/^[0-9a-f]{64}$/)
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("treats an undefined field as absent", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        expect(cache.key({ ...request, top_p: undefined })).toBe(cache.key(request))
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("differs when messages, model, temperature, tools or response_format differ", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const k = cache.key(request)
        const variants = [
          { ...request, messages: [{ role: "user", content: "hello" }] },
          { ...request, messages: [{ role: "system", content: "hi" }] },
          { ...request, messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "yo" }] },
          { ...request, model: "m2" },
          { ...request, temperature: 0.7 },
          { ...request, tools: [{ type: "function", function: { name: "f", parameters: { type: "object" } } }] },
          { ...request, response_format: { type: "json_object" } }
        ]
        const keys = variants.map((v) => cache.key(v))
        for (const vk of keys) expect(vk).not.toBe(k)
        expect(new Set(keys).size).toBe(keys.length)
        // Message order matters.
        const two = [{ role: "user", content: "a" }, { role: "user", content: "b" }]
        expect(cache.key({ ...request, messages: two })).not.toBe(
          cache.key({ ...request, messages: [...two].reverse() })
        )
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("ignores stream and stream_options by default, but not user: one end user's answer is not another's", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const k = cache.key(request)
        expect(cache.key({ ...request, stream: true })).toBe(k)
        expect(cache.key({ ...request, stream: false })).toBe(k)
        expect(cache.key({ ...request, stream: true, stream_options: { include_usage: true } })).toBe(k)
        expect(cache.key({ ...request, user: "alice" })).not.toBe(k)
        expect(cache.key({ ...request, user: "alice" })).not.toBe(cache.key({ ...request, user: "bob" }))
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("a scope separates tenants: the same request in two scopes has two keys", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const k = cache.key(request)
        const a = cache.key(request, "team-a")
        expect(a).not.toBe(k)
        expect(cache.key(request, "team-b")).not.toBe(a)
        expect(cache.key(structuredClone(request), "team-a")).toBe(a)
        expect(cache.key(request, "")).not.toBe(k)
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("ignoredFields replaces the default set", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const k = cache.key(request)
        // Now ignored.
        expect(cache.key({ ...request, temperature: 1 })).toBe(k)
        // No longer ignored.
        expect(cache.key({ ...request, stream: true })).not.toBe(k)
        expect(cache.key({ ...request, user: "alice" })).not.toBe(k)
        expect(cache.key({ ...request, stream_options: { include_usage: true } })).not.toBe(k)
      }).pipe(Effect.provide(ResponseCache.layerMemory({ ignoredFields: ["temperature"] }))))

    it.effect("an empty ignoredFields keys on every field", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        expect(cache.key({ ...request, user: "alice" })).not.toBe(cache.key(request))
        expect(cache.key({ ...request, user: "alice" })).not.toBe(cache.key({ ...request, user: "bob" }))
      }).pipe(Effect.provide(ResponseCache.layerMemory({ ignoredFields: [] }))))
  })

  // -------------------------------------------------------------------------
  // getOrCompute
  // -------------------------------------------------------------------------

  describe("getOrCompute", () => {
    it.effect("misses and computes first, then hits with the same value without computing", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const { compute, runs } = yield* counting((n) => `value-${n}`)
        const k = cache.key(request)

        const first = yield* cache.getOrCompute(k, compute)
        expect(first).toEqual({ value: "value-1", status: "miss" })
        expect(yield* Ref.get(runs)).toBe(1)

        const second = yield* cache.getOrCompute(k, compute)
        expect(second).toEqual({ value: "value-1", status: "hit" })
        expect(yield* Ref.get(runs)).toBe(1)

        // Another key is its own entry.
        const other = yield* cache.getOrCompute(cache.key({ ...request, model: "m2" }), compute)
        expect(other).toEqual({ value: "value-2", status: "miss" })
        expect(yield* Ref.get(runs)).toBe(2)
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("works over layer + layerStoreMemory", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const { compute, runs } = yield* counting()
        expect((yield* cache.getOrCompute("k", compute)).status).toBe("miss")
        expect((yield* cache.getOrCompute("k", compute)).status).toBe("hit")
        expect(yield* Ref.get(runs)).toBe(1)
      }).pipe(Effect.provide(ResponseCache.layer().pipe(Layer.provide(ResponseCache.layerStoreMemory())))))

    it.effect("invalidate removes an entry", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const { compute, runs } = yield* counting((n) => `value-${n}`)
        yield* cache.getOrCompute("k", compute)
        yield* cache.getOrCompute("other", compute)
        expect((yield* cache.getOrCompute("k", compute)).status).toBe("hit")

        yield* cache.invalidate("k")
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-3", status: "miss" })
        expect(yield* Ref.get(runs)).toBe(3)
        // Only that entry.
        expect(yield* cache.getOrCompute("other", compute)).toEqual({ value: "value-2", status: "hit" })
        // Invalidating an absent key is fine.
        yield* cache.invalidate("absent")
      }).pipe(Effect.provide(ResponseCache.layerMemory())))
  })

  // -------------------------------------------------------------------------
  // TTL and LRU
  // -------------------------------------------------------------------------

  describe("expiry", () => {
    it.effect("entries live 5 minutes by default", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const { compute, runs } = yield* counting((n) => `value-${n}`)
        expect((yield* cache.getOrCompute("k", compute)).status).toBe("miss")

        yield* TestClock.adjust(Duration.seconds(4 * 60 + 59))
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-1", status: "hit" })
        expect(yield* Ref.get(runs)).toBe(1)

        // A hit does not extend the entry's life.
        yield* TestClock.adjust(Duration.seconds(2))
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-2", status: "miss" })
        expect(yield* Ref.get(runs)).toBe(2)

        // The new value lives its own 5 minutes.
        yield* TestClock.adjust(Duration.seconds(4 * 60 + 59))
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-2", status: "hit" })
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("a custom ttl applies", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const { compute, runs } = yield* counting((n) => `value-${n}`)
        yield* cache.getOrCompute("k", compute)

        yield* TestClock.adjust(Duration.seconds(29))
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-1", status: "hit" })

        yield* TestClock.adjust(Duration.seconds(2))
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-2", status: "miss" })
        expect(yield* Ref.get(runs)).toBe(2)
      }).pipe(Effect.provide(ResponseCache.layerMemory({ ttl: "30 seconds" }))))
  })

  describe("LRU eviction", () => {
    it.effect("with maxEntries 2, the least recently used entry goes first", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const a = yield* counting(() => "A")
        const b = yield* counting(() => "B")
        const c = yield* counting(() => "C")

        expect((yield* cache.getOrCompute("a", a.compute)).status).toBe("miss")
        expect((yield* cache.getOrCompute("b", b.compute)).status).toBe("miss")
        // Reading a makes b the least recently used.
        expect((yield* cache.getOrCompute("a", a.compute)).status).toBe("hit")
        expect((yield* cache.getOrCompute("c", c.compute)).status).toBe("miss")

        expect(yield* cache.getOrCompute("a", a.compute)).toEqual({ value: "A", status: "hit" })
        expect(yield* cache.getOrCompute("c", c.compute)).toEqual({ value: "C", status: "hit" })
        expect(yield* cache.getOrCompute("b", b.compute)).toEqual({ value: "B", status: "miss" })

        expect(yield* Ref.get(a.runs)).toBe(1)
        expect(yield* Ref.get(b.runs)).toBe(2)
        expect(yield* Ref.get(c.runs)).toBe(1)
      }).pipe(Effect.provide(ResponseCache.layerMemory({ maxEntries: 2 }))))
  })

  // -------------------------------------------------------------------------
  // Single-flight
  // -------------------------------------------------------------------------

  describe("single-flight", () => {
    it.effect("10 concurrent identical misses run compute once and all get the value", () =>
      Effect.gen(function*() {
        const { cache, calls } = yield* instrumented()
        const runs = yield* Ref.make(0)
        const gate = yield* Deferred.make<void>()
        const compute = Ref.update(runs, (n) => n + 1).pipe(
          Effect.zipRight(Deferred.await(gate)),
          Effect.as("v")
        )

        const fibers: Array<Fiber.RuntimeFiber<ResponseCache.Lookup>> = []
        for (let i = 0; i < 10; i++) fibers.push(yield* Effect.fork(cache.getOrCompute("k", compute)))
        yield* waitUntil("all 10 callers waiting", () =>
          Effect.map(allSuspended(fibers), (suspended) => suspended && calls.get === 10))
        yield* settle

        expect(yield* Ref.get(runs)).toBe(1)
        expect(yield* cache.inFlight).toBe(1)

        yield* Deferred.succeed(gate, void 0)
        const results = yield* Fiber.join(Fiber.all(fibers))

        expect(yield* Ref.get(runs)).toBe(1)
        expect(results.map((r) => r.value)).toEqual(Array(10).fill("v"))
        expect(results.filter((r) => r.status === "miss")).toHaveLength(1)
        expect(results.filter((r) => r.status === "hit")).toHaveLength(9)
        expect(yield* cache.inFlight).toBe(0)

        // And it was stored once.
        expect(calls.set).toBe(1)
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "v", status: "hit" })
        expect(yield* Ref.get(runs)).toBe(1)
      }))

    it.effect("different keys do not share a flight", () =>
      Effect.gen(function*() {
        const { cache } = yield* instrumented()
        const runs = yield* Ref.make(0)
        const gate = yield* Deferred.make<void>()
        const compute = (v: string) =>
          Ref.update(runs, (n) => n + 1).pipe(Effect.zipRight(Deferred.await(gate)), Effect.as(v))

        const f1 = yield* Effect.fork(cache.getOrCompute("k1", compute("one")))
        const f2 = yield* Effect.fork(cache.getOrCompute("k2", compute("two")))
        yield* waitUntil("both computing", () => Effect.map(Ref.get(runs), (n) => n === 2))
        expect(yield* cache.inFlight).toBe(2)

        yield* Deferred.succeed(gate, void 0)
        expect(yield* Fiber.join(f1)).toEqual({ value: "one", status: "miss" })
        expect(yield* Fiber.join(f2)).toEqual({ value: "two", status: "miss" })
        expect(yield* cache.inFlight).toBe(0)
      }))

    it.effect("a request arriving while the leader is still storing its value joins that flight", () =>
      Effect.gen(function*() {
        const setGate = yield* Deferred.make<void>()
        const { cache, calls } = yield* instrumented({ setGate })
        const { compute, runs } = yield* counting((n) => `value-${n}`)

        // The leader has its value and is writing it to a slow store.
        const leader = yield* Effect.fork(cache.getOrCompute("k", compute))
        yield* waitUntil("leader storing", () => calls.set === 1)
        expect(yield* Ref.get(runs)).toBe(1)

        // Another identical request: the store has nothing yet.
        const late = yield* Effect.fork(cache.getOrCompute("k", compute))
        yield* waitUntil("late caller waiting", () =>
          Effect.map(allSuspended([late]), (suspended) => suspended && calls.get === 2))
        yield* settle

        yield* Deferred.succeed(setGate, void 0)
        expect(yield* Fiber.join(leader)).toEqual({ value: "value-1", status: "miss" })
        expect(yield* Fiber.join(late)).toEqual({ value: "value-1", status: "hit" })
        expect(yield* Ref.get(runs)).toBe(1)
        expect(calls.set).toBe(1)
        expect(yield* cache.inFlight).toBe(0)
      }))
  })

  // -------------------------------------------------------------------------
  // Failures and interruption
  // -------------------------------------------------------------------------

  describe("failures", () => {
    it.effect("a failing compute is not stored: the next call computes again", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const runs = yield* Ref.make(0)
        const compute = Effect.flatMap(
          Ref.updateAndGet(runs, (n) => n + 1),
          (n) => n === 1 ? Effect.fail(new Upstream({ status: 503 })) : Effect.succeed(`value-${n}`)
        )

        const first = yield* Effect.flip(cache.getOrCompute("k", compute))
        expect(first).toEqual(new Upstream({ status: 503 }))
        expect(yield* cache.inFlight).toBe(0)

        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-2", status: "miss" })
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-2", status: "hit" })
        expect(yield* Ref.get(runs)).toBe(2)
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("concurrent waiters of a failing flight all get the same typed failure", () =>
      Effect.gen(function*() {
        const { cache, calls } = yield* instrumented()
        const runs = yield* Ref.make(0)
        const gate = yield* Deferred.make<void>()
        const error = new Upstream({ status: 502 })
        const compute: Effect.Effect<string, Upstream> = Ref.update(runs, (n) => n + 1).pipe(
          Effect.zipRight(Deferred.await(gate)),
          Effect.zipRight(Effect.fail(error))
        )

        const fibers: Array<Fiber.RuntimeFiber<ResponseCache.Lookup, Upstream>> = []
        for (let i = 0; i < 3; i++) fibers.push(yield* Effect.fork(cache.getOrCompute("k", compute)))
        yield* waitUntil("all 3 callers waiting", () =>
          Effect.map(allSuspended(fibers), (suspended) => suspended && calls.get === 3))
        yield* settle
        expect(yield* Ref.get(runs)).toBe(1)

        yield* Deferred.succeed(gate, void 0)
        for (const fiber of fibers) {
          const exit = yield* Fiber.await(fiber)
          expect(Exit.isFailure(exit)).toBe(true)
          if (Exit.isFailure(exit)) {
            expect(Cause.isInterruptedOnly(exit.cause)).toBe(false)
            const failure = Cause.failureOption(exit.cause)
            expect(Option.isSome(failure) && failure.value).toBe(error)
          }
        }
        // Shared, not retried by each waiter; and nothing stored.
        expect(yield* Ref.get(runs)).toBe(1)
        expect(calls.set).toBe(0)
        expect(yield* cache.inFlight).toBe(0)
      }))

    it.effect("if the leader is interrupted, a waiter takes over, computes and gets the value", () =>
      Effect.gen(function*() {
        const { cache, calls } = yield* instrumented()
        const runs = yield* Ref.make(0)
        // The first run hangs (and is interrupted); the next succeeds.
        const compute = Effect.flatMap(
          Ref.updateAndGet(runs, (n) => n + 1),
          (n) => n === 1 ? Effect.never : Effect.succeed(`value-${n}`)
        )

        const leader = yield* Effect.fork(cache.getOrCompute("k", compute))
        yield* waitUntil("leader computing", () => Effect.map(Ref.get(runs), (n) => n === 1))
        const waiter = yield* Effect.fork(cache.getOrCompute("k", compute))
        yield* waitUntil("waiter joined the flight", () =>
          Effect.map(allSuspended([waiter]), (suspended) => suspended && calls.get === 2))
        yield* settle
        expect(yield* Ref.get(runs)).toBe(1)
        expect(yield* cache.inFlight).toBe(1)

        yield* Fiber.interrupt(leader)
        const exit = yield* Fiber.await(waiter)
        expect(exit).toEqual(Exit.succeed({ value: "value-2", status: "miss" }))
        expect(yield* Ref.get(runs)).toBe(2)
        expect(yield* cache.inFlight).toBe(0)

        // The waiter's value was stored.
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-2", status: "hit" })
        expect(yield* Ref.get(runs)).toBe(2)
      }))

    it.effect("an interrupted leader alone leaves no flight behind", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const runs = yield* Ref.make(0)
        const compute = Effect.flatMap(
          Ref.updateAndGet(runs, (n) => n + 1),
          (n) => n === 1 ? Effect.never : Effect.succeed(`value-${n}`)
        )
        const leader = yield* Effect.fork(cache.getOrCompute("k", compute))
        yield* waitUntil("leader computing", () => Effect.map(Ref.get(runs), (n) => n === 1))
        expect(yield* cache.inFlight).toBe(1)
        yield* Fiber.interrupt(leader)
        expect(yield* cache.inFlight).toBe(0)
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-2", status: "miss" })
      }).pipe(Effect.provide(ResponseCache.layerMemory())))
  })

  // -------------------------------------------------------------------------
  // What gets stored
  // -------------------------------------------------------------------------

  describe("storing", () => {
    it.effect("a value that isCacheable rejects is returned but not stored", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const bad = yield* counting(() => "partial")
        const good = yield* counting(() => "complete")

        expect(yield* cache.getOrCompute("bad", bad.compute)).toEqual({ value: "partial", status: "miss" })
        expect(yield* cache.getOrCompute("bad", bad.compute)).toEqual({ value: "partial", status: "miss" })
        expect(yield* Ref.get(bad.runs)).toBe(2)

        // A cacheable value is stored as usual.
        yield* cache.getOrCompute("good", good.compute)
        expect(yield* cache.getOrCompute("good", good.compute)).toEqual({ value: "complete", status: "hit" })
        expect(yield* Ref.get(good.runs)).toBe(1)
      }).pipe(Effect.provide(ResponseCache.layerMemory({ isCacheable: (value) => value !== "partial" }))))

    it.effect("lookup: false (no-cache) skips the lookup but stores the new value", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const { compute, runs } = yield* counting((n) => `value-${n}`)

        yield* cache.getOrCompute("k", compute)
        expect(yield* cache.getOrCompute("k", compute, { lookup: false })).toEqual({
          value: "value-2",
          status: "bypass"
        })
        expect(yield* Ref.get(runs)).toBe(2)

        // The fresh value replaced the stored one.
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-2", status: "hit" })
        expect(yield* Ref.get(runs)).toBe(2)
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("lookup: false also stores on an empty cache, and stores nothing with store: false", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const { compute, runs } = yield* counting((n) => `value-${n}`)

        expect((yield* cache.getOrCompute("k", compute, { lookup: false })).status).toBe("bypass")
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-1", status: "hit" })

        expect(yield* cache.getOrCompute("k", compute, { lookup: false, store: false })).toEqual({
          value: "value-2",
          status: "bypass"
        })
        // Still the earlier value.
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-1", status: "hit" })

        expect((yield* cache.getOrCompute("fresh", compute, { lookup: false, store: false })).status).toBe("bypass")
        expect((yield* cache.getOrCompute("fresh", compute)).status).toBe("miss")
        expect(yield* Ref.get(runs)).toBe(4)
      }).pipe(Effect.provide(ResponseCache.layerMemory())))

    it.effect("store: false (no-store) does not store, but still answers from the cache", () =>
      Effect.gen(function*() {
        const cache = yield* ResponseCache.ResponseCache
        const { compute, runs } = yield* counting((n) => `value-${n}`)

        expect(yield* cache.getOrCompute("k", compute, { store: false })).toEqual({ value: "value-1", status: "miss" })
        expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-2", status: "miss" })
        expect(yield* Ref.get(runs)).toBe(2)

        // Lookup still happens with no-store.
        expect(yield* cache.getOrCompute("k", compute, { store: false })).toEqual({ value: "value-2", status: "hit" })
        expect(yield* Ref.get(runs)).toBe(2)
      }).pipe(Effect.provide(ResponseCache.layerMemory())))
  })

  // -------------------------------------------------------------------------
  // A failing store
  // -------------------------------------------------------------------------

  describe("a failing store", () => {
    it.effect("never fails a request: the cache misses and the value is computed", () =>
      Effect.gen(function*() {
        const calls = { get: 0, set: 0, delete: 0 }
        const down = (op: string) => new ResponseCache.ResponseCacheStoreError({ message: `${op}: connection refused` })
        const failing = Layer.succeed(ResponseCache.ResponseCacheStore, {
          get: () => Effect.suspend(() => (calls.get++, Effect.fail(down("get")))),
          set: () => Effect.suspend(() => (calls.set++, Effect.fail(down("set")))),
          delete: () => Effect.suspend(() => (calls.delete++, Effect.fail(down("delete"))))
        })

        yield* Effect.gen(function*() {
          const cache = yield* ResponseCache.ResponseCache
          const { compute, runs } = yield* counting((n) => `value-${n}`)

          expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-1", status: "miss" })
          expect(calls).toEqual({ get: 1, set: 1, delete: 0 })

          expect(yield* cache.getOrCompute("k", compute)).toEqual({ value: "value-2", status: "miss" })
          expect(yield* Ref.get(runs)).toBe(2)

          expect(yield* cache.getOrCompute("k", compute, { lookup: false })).toEqual({
            value: "value-3",
            status: "bypass"
          })
          expect(calls.set).toBe(3)

          const invalidated = yield* Effect.exit(cache.invalidate("k"))
          expect(Exit.isSuccess(invalidated)).toBe(true)
          expect(calls.delete).toBe(1)
          expect(yield* cache.inFlight).toBe(0)
        }).pipe(Effect.provide(ResponseCache.layer().pipe(Layer.provide(failing))))
      }))
  })
})
