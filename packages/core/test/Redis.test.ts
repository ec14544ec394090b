/**
 * The Redis stores against a real `redis-server` (started on a free port by
 * `support/redisServer.ts`): the same rate-limit decisions as the memory
 * store, state shared by two "replicas" (two layers, two connections), prefix
 * isolation, and fallback to memory while Redis is down or slow.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import { Redis as IORedis } from "ioredis"
import { CooldownStore } from "../src/Cooldown.js"
import * as Pacing from "../src/Pacing.js"
import * as RateLimiter from "../src/RateLimiter.js"
import * as Redis from "../src/Redis.js"
import { ResponseCacheStore } from "../src/ResponseCache.js"
import { SpendStore } from "../src/Spend.js"
import { available, freePort, type RedisServer, start } from "./support/redisServer.js"

if (!available) console.warn("skipping Redis tests: redis-server not on PATH")

// ---------------------------------------------------------------------------
// Helpers

let server: RedisServer

let prefixes = 0
const uniquePrefix = () => `test${++prefixes}-${process.pid}:`

interface Replica {
  readonly rl: Context.Tag.Service<RateLimiter.RateLimiterStore>
  readonly cooldown: Context.Tag.Service<CooldownStore>
  readonly cache: Context.Tag.Service<ResponseCacheStore>
  readonly spend: Context.Tag.Service<SpendStore>
}

/** One "replica": its own layer, hence its own connection and memory. */
const replica = (options: Partial<Redis.Options> = {}): Effect.Effect<Replica, never, Scope.Scope> =>
  Effect.map(
    // A generous commandTimeout: on a loaded machine a command can take more
    // than the 50 ms default, and a fallback to memory would break the tests
    // of shared state (the test of the timeout itself sets its own).
    Layer.build(Redis.layer({ url: server.url, cooldownRefresh: Duration.millis(50), commandTimeout: Duration.seconds(2), ...options })),
    (ctx) => ({
      rl: Context.get(ctx, RateLimiter.RateLimiterStore),
      cooldown: Context.get(ctx, CooldownStore),
      cache: Context.get(ctx, ResponseCacheStore),
      spend: Context.get(ctx, SpendStore)
    })
  )

const limiter = (store: Context.Tag.Service<RateLimiter.RateLimiterStore>, options: RateLimiter.Options) =>
  RateLimiter.make(options).pipe(Effect.provideService(RateLimiter.RateLimiterStore, store))

interface AdminClient extends IORedis {
  /** The store's script for one request, with arguments from {@link one}. */
  acquire(...args: ReadonlyArray<string>): Promise<[number, number | string, number | string]>
}

/** The arguments of one decision, at a fixed `now`, as the store's script takes them (a one-request call). */
const one = (
  key: string,
  algorithm: string,
  limit: string,
  windowMillis: string,
  cost: string,
  maxWaitMillis: string,
  now: string
): ReadonlyArray<string> => [key, now, "1", algorithm, limit, windowMillis, maxWaitMillis, "1", cost]

/** `MULTI` with the script: ioredis types do not know custom commands in a transaction. */
interface AcquireTransaction {
  acquire(...args: ReadonlyArray<string>): AcquireTransaction
  persist(key: string): AcquireTransaction
  exec(): Promise<Array<[error: Error | null, reply: unknown]> | null>
}

/** A plain client for inspecting Redis, with the acquire script defined as `acquire` (one request a call). */
const admin = (url = server.url): Effect.Effect<AdminClient, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const client = new IORedis(url, { maxRetriesPerRequest: 1 }) as AdminClient
      client.on("error", () => {})
      client.defineCommand("acquire", { numberOfKeys: 1, lua: Redis.acquireManyLua })
      return client
    }),
    (client) => Effect.sync(() => client.disconnect())
  )

const call = <A>(f: () => Promise<A>) => Effect.promise(f)

interface Line {
  readonly level: string
  readonly text: string
}

/** A logger that records every line (message and annotations) instead of printing it. */
const captureLogs = () => {
  const lines: Array<Line> = []
  const logger = Logger.make(({ annotations, logLevel, message }) => {
    const msg = Array.isArray(message) ? message.map(String).join(" ") : String(message)
    lines.push({ level: logLevel.label, text: `${msg} ${JSON.stringify(Array.from(annotations))}` })
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}
const quiet = Logger.replace(Logger.defaultLogger, Logger.none)

const warnings = (lines: ReadonlyArray<Line>) => lines.filter((l) => l.level === "WARN")

/** `breakwater_store_fallbacks_total{store}` from the metric registry. */
const fallbackCount = (store: Redis.StoreName) =>
  Effect.map(Metric.snapshot, (pairs) => {
    for (const pair of pairs) {
      if (pair.metricKey.name !== "breakwater_store_fallbacks_total") continue
      const tags = Array.from(pair.metricKey.tags)
      if (!tags.some((t) => t.key === "store" && t.value === store)) continue
      if (MetricState.isCounterState(pair.metricState)) return Number(pair.metricState.count)
    }
    return 0
  })

/** `breakwater_ratelimit_rejected_total` of the limiter named `limiter` (0 before any). */
const rejectedCount = (limiter: string) =>
  Effect.map(Metric.snapshot, (pairs) => {
    for (const pair of pairs) {
      if (pair.metricKey.name !== "breakwater_ratelimit_rejected_total") continue
      if (!Array.from(pair.metricKey.tags).some((t) => t.key === "limiter" && t.value === limiter)) continue
      if (MetricState.isCounterState(pair.metricState)) return Number(pair.metricState.count)
    }
    return 0
  })

const allFallbacks = Effect.all({
  "rate-limiter": fallbackCount("rate-limiter"),
  cooldown: fallbackCount("cooldown"),
  cache: fallbackCount("cache"),
  spend: fallbackCount("spend")
})

/** Runs `effect` every 50 ms until `done` holds of its result, for up to `millis`. */
const eventually = <A, E>(effect: Effect.Effect<A, E>, done: (a: A) => boolean, millis = 3000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + millis
    for (;;) {
      const a = yield* effect
      if (done(a)) return a
      if (Date.now() > deadline) return yield* Effect.dieMessage(`condition not met within ${millis} ms`)
      yield* Effect.sleep(Duration.millis(50))
    }
  })

const granted = (outcomes: ReadonlyArray<Either.Either<RateLimiter.Permit, unknown>>) =>
  outcomes.filter(Either.isRight).length

// ---------------------------------------------------------------------------

describe.skipIf(!available)("Redis stores", () => {
  beforeAll(async () => {
    server = await start()
  }, 10_000)
  afterAll(async () => {
    await server?.stop()
  })

  describe("rate limits", () => {
    for (const algorithm of ["token-bucket", "sliding-window"] as const) {
      it.scopedLive(`${algorithm}: limit 5 / 60 s, 8 calls decide as the memory store does`, () =>
        Effect.gen(function*() {
          const redis = yield* replica({ prefix: uniquePrefix() })
          const memory = yield* RateLimiter.makeStoreMemory
          const options: RateLimiter.Options = { name: "rpm", limit: 5, window: Duration.seconds(60), algorithm }
          const run = (store: Context.Tag.Service<RateLimiter.RateLimiterStore>) =>
            Effect.flatMap(limiter(store, options), (l) => Effect.forEach(Array.from({ length: 8 }), () => Effect.either(l.acquire("k"))))
          const fromRedis = yield* run(redis.rl)
          const fromMemory = yield* run(memory)
          expect(granted(fromRedis)).toBe(5)
          expect(granted(fromMemory)).toBe(5)
          expect(fromRedis.map(Either.isRight)).toEqual(fromMemory.map(Either.isRight))
          expect(fromRedis.map((o) => Either.isRight(o) ? o.right.remaining : -1))
            .toEqual(fromMemory.map((o) => Either.isRight(o) ? o.right.remaining : -1))
          for (let i = 5; i < 8; i++) {
            const r = fromRedis[i]!
            const m = fromMemory[i]!
            if (Either.isRight(r) || Either.isRight(m)) throw new Error("expected refusals")
            if (r.left._tag !== "RateLimited" || m.left._tag !== "RateLimited") throw new Error("expected RateLimited")
            const redisMillis = Duration.toMillis(r.left.retryAfter)
            expect(redisMillis).toBeGreaterThan(0)
            // Both ran on real clocks a few milliseconds apart.
            expect(Math.abs(redisMillis - Duration.toMillis(m.left.retryAfter))).toBeLessThan(1000)
          }
        }))
    }

    it.scoped("the script decides exactly as the memory store on random sequences (fixed clock)", () =>
      Effect.gen(function*() {
        const client = yield* admin()
        const op = FastCheck.record({
          advance: FastCheck.oneof(
            FastCheck.constant(0),
            FastCheck.integer({ min: 0, max: 2_000 }),
            FastCheck.integer({ min: 0, max: 70_000 })
          ),
          cost: FastCheck.integer({ min: 1, max: 7 }),
          maxWait: FastCheck.constantFrom(0, 500, 20_000, Infinity)
        })
        const scenario = FastCheck.record({
          algorithm: FastCheck.constantFrom("token-bucket" as const, "sliding-window" as const),
          limit: FastCheck.integer({ min: 1, max: 6 }),
          windowMillis: FastCheck.constantFrom(1_000, 7_000, 60_000),
          ops: FastCheck.array(op, { minLength: 1, maxLength: 30 })
        })
        // Many reservations at one instant (the script keeps them as one
        // entry), then waits that must take them all as leaving together.
        const crowded = FastCheck.record({
          algorithm: FastCheck.constant("sliding-window" as const),
          limit: FastCheck.integer({ min: 1, max: 6 }),
          windowMillis: FastCheck.constantFrom(1_000, 7_000, 60_000),
          ops: FastCheck.array(
            FastCheck.record({
              advance: FastCheck.oneof(FastCheck.constant(0), FastCheck.constant(0), FastCheck.integer({ min: 0, max: 2_000 })),
              cost: FastCheck.integer({ min: 1, max: 3 }),
              maxWait: FastCheck.constantFrom(0, 500, 20_000, Infinity)
            }),
            { minLength: 1, maxLength: 30 }
          )
        })
        const base = 1_700_000_000_000
        let checked = 0
        const samples = [
          ...FastCheck.sample(scenario, { numRuns: 80, seed: 20240601 }),
          ...FastCheck.sample(crowded, { numRuns: 40, seed: 20261201 })
        ]
        for (const [i, s] of samples.entries()) {
          const memory = yield* RateLimiter.makeStoreMemory
          const key = `prop:${i}`
          const start = yield* TestClock.currentTimeMillis
          let elapsed = 0
          for (const o of s.ops) {
            yield* TestClock.adjust(Duration.millis(o.advance))
            elapsed += o.advance
            const req: RateLimiter.AcquireRequest = {
              key,
              algorithm: s.algorithm,
              limit: s.limit,
              windowMillis: s.windowMillis,
              cost: o.cost,
              maxWaitMillis: o.maxWait
            }
            const expected = yield* memory.acquire(req)
            expect((yield* TestClock.currentTimeMillis) - start).toBe(elapsed)
            // PERSIST in the same transaction: real time passing between
            // calls must not expire a key whose logical time stands still.
            const replies = yield* call(() =>
              (client.multi() as unknown as AcquireTransaction)
                .acquire(...one(
                  key,
                  s.algorithm,
                  String(s.limit),
                  String(s.windowMillis),
                  String(o.cost),
                  Number.isFinite(o.maxWait) ? String(o.maxWait) : "-1",
                  String(base + elapsed)
                ))
                .persist(key)
                .exec()
            )
            const [err, reply] = replies![0]!
            expect(err).toBeNull()
            const [g, millis, remaining] = reply as [number, number | string, number | string]
            const actual: RateLimiter.Decision = g === 1
              ? { granted: true, waitMillis: Number(millis), remaining: Number(remaining) }
              : { granted: false, retryAfterMillis: Number(millis), remaining: Number(remaining) }
            expect(actual, `${JSON.stringify(s)} at ${elapsed}`).toEqual(expected)
            checked++
          }
          yield* call(() => client.del(key))
        }
        expect(checked).toBeGreaterThan(700)
      }))

    it.scopedLive("sliding window: a call costs the same with 10,000 entries in the window as with a few (large limit)", () =>
      Effect.gen(function*() {
        const client = yield* admin()
        const key = `${uniquePrefix()}rl:big`
        const limit = 100_000_000
        const windowMillis = 10_000
        const base = 1_700_000_000_000
        const total = 15_000
        const args = (i: number) =>
          one(key, "sliding-window", String(limit), String(windowMillis), "1", "0", String(base + i))
        // One entry per (fixed-clock) millisecond: after 10,000 calls the
        // list holds a full window, and each call prunes one entry.
        const timed = (from: number, count: number) =>
          call(async () => {
            const millis: Array<number> = []
            let reply: [number, number | string, number | string] = [0, 0, 0]
            for (let i = from; i < from + count; i++) {
              const t0 = performance.now()
              reply = await client.acquire(...args(i))
              millis.push(performance.now() - t0)
            }
            millis.sort((a, b) => a - b)
            return { median: millis[Math.floor(count / 2)]!, reply }
          })
        const measured = 300
        const early = yield* timed(0, measured)
        expect(early.reply).toEqual([1, 0, limit - measured])
        yield* call(async () => {
          for (let from = measured; from < total - measured; from += 1000) {
            const pipeline = client.pipeline() as unknown as AcquireTransaction
            for (let i = from; i < Math.min(from + 1000, total - measured); i++) pipeline.acquire(...args(i))
            const replies = await pipeline.exec()
            for (const [err, reply] of replies!) {
              expect(err).toBeNull()
              expect((reply as [number, string, string])[0]).toBe(1)
            }
          }
        })
        const late = yield* timed(total - measured, measured)
        // The running total is exact: a full window (this call included) is counted.
        expect(late.reply).toEqual([1, 0, limit - windowMillis])
        expect(yield* call(() => client.llen(key))).toBe(windowMillis + 1) // the total, then the window
        // Summing every entry (the old script) made these ~20x slower; leave
        // room for a noisy machine.
        expect(late.median, `early ${early.median.toFixed(3)} ms, late ${late.median.toFixed(3)} ms`)
          .toBeLessThan(5 * early.median)
        yield* call(() => client.del(key))
      }), 30_000)

    it.scoped("sliding window: a log written without the running total is added up once and carries on", () =>
      Effect.gen(function*() {
        const client = yield* admin()
        const key = `${uniquePrefix()}rl:legacy`
        const base = 1_700_000_000_000
        yield* call(() => client.rpush(key, `${base}:2`, `${base + 10}:3`, `${base + 20}:1`))
        const acquire = (now: number, cost: number) =>
          call(() => client.acquire(...one(key, "sliding-window", "10", "1000", String(cost), "0", String(base + now))))
        expect(yield* acquire(30, 1)).toEqual([1, 0, 3])
        expect(yield* call(() => client.lindex(key, 0))).toBe("total:7")
        // The first entry leaves the window: pruned from the head, and from the total.
        expect(yield* acquire(1000, 2)).toEqual([1, 0, 3])
        expect(yield* call(() => client.lrange(key, 0, -1)))
          .toEqual(["total:7", `${base + 10}:3`, `${base + 20}:1`, `${base + 30}:1`, `${base + 1000}:2`])
        expect(yield* acquire(1000, 4)).toEqual([0, 10, 3])
        yield* call(() => client.del(key))
      }))

    it.scopedLive("idle keys expire: a bucket once full, a log once its last entry leaves the window", () =>
      Effect.gen(function*() {
        const prefix = uniquePrefix()
        const r = yield* replica({ prefix })
        const client = yield* admin()
        const req = { limit: 5, windowMillis: 60_000, cost: 1, maxWaitMillis: 0 }
        yield* r.rl.acquire({ ...req, key: "tb", algorithm: "token-bucket" })
        yield* r.rl.acquire({ ...req, key: "sw", algorithm: "sliding-window" })
        const tb = yield* call(() => client.pttl(`${prefix}rl:tb`))
        const sw = yield* call(() => client.pttl(`${prefix}rl:sw`))
        // One token of five refills in 12 s; the reservation leaves the window in 60 s.
        expect(tb).toBeGreaterThan(11_000)
        expect(tb).toBeLessThanOrEqual(12_000)
        expect(sw).toBeGreaterThan(59_000)
        expect(sw).toBeLessThanOrEqual(60_000)
        // A key of another shape (the limiter changed algorithm) starts over instead of failing.
        const before = yield* fallbackCount("rate-limiter")
        const switched = yield* r.rl.acquire({ ...req, key: "tb", algorithm: "sliding-window" })
        expect(switched).toEqual({ granted: true, waitMillis: 0, remaining: 4 })
        expect(yield* fallbackCount("rate-limiter")).toBe(before)
      }))

    for (const algorithm of ["token-bucket", "sliding-window"] as const) {
      it.scopedLive(`${algorithm}: two replicas share one limit (6 in total, not 12)`, () =>
        Effect.gen(function*() {
          const prefix = uniquePrefix()
          const r1 = yield* replica({ prefix })
          const r2 = yield* replica({ prefix })
          const options: RateLimiter.Options = { name: "shared", limit: 6, window: Duration.seconds(60), algorithm }
          const l1 = yield* limiter(r1.rl, options)
          const l2 = yield* limiter(r2.rl, options)
          const before = yield* fallbackCount("rate-limiter")
          const outcomes = yield* Effect.forEach(
            Array.from({ length: 12 }, (_, i) => i),
            (i) => Effect.either((i % 2 === 0 ? l1 : l2).acquire("caller")),
            { concurrency: 4 }
          )
          expect(granted(outcomes)).toBe(6)
          expect(yield* fallbackCount("rate-limiter")).toBe(before) // all decided by Redis
        }))
    }
  })

  it.scopedLive("cooldowns: one replica's start reaches the other within the refresh; the later end wins; clear too", () =>
    Effect.gen(function*() {
      const prefix = uniquePrefix()
      const r1 = yield* replica({ prefix })
      const r2 = yield* replica({ prefix })
      const now = Date.now()
      // The refresh is every 50 ms (and pub/sub faster): 2 s only guards a loaded
      // machine's stalls; the channel alone is tested below, with the re-read an hour away.
      const WITHIN = 2_000
      yield* r1.cooldown.start("openai", { until: now + 10_000, reason: "rate-limited" })
      // Applied locally at once.
      expect((yield* r1.cooldown.active(Date.now())).get("openai")?.until).toBe(now + 10_000)
      // Read synchronously too (the relay's hot path): the same view.
      expect(r1.cooldown.unsafeActive?.(Date.now()).get("openai")?.until).toBe(now + 10_000)
      const seen = yield* eventually(
        Effect.suspend(() => r2.cooldown.active(Date.now())),
        (m) => m.has("openai"),
        WITHIN
      )
      expect(seen.get("openai")).toEqual({ until: now + 10_000, reason: "rate-limited" })

      // An earlier end does not cut the later one short, here or there.
      yield* r2.cooldown.start("openai", { until: now + 5_000, reason: "low-headroom" })
      expect((yield* r2.cooldown.active(Date.now())).get("openai")?.until).toBe(now + 10_000)
      yield* Effect.sleep(Duration.millis(150))
      expect((yield* r1.cooldown.active(Date.now())).get("openai")?.until).toBe(now + 10_000)
      expect((yield* r2.cooldown.active(Date.now())).get("openai")?.until).toBe(now + 10_000)

      // A later end replaces it everywhere.
      yield* r2.cooldown.start("openai", { until: now + 60_000, reason: "quota-exhausted" })
      yield* eventually(
        Effect.suspend(() => r1.cooldown.active(Date.now())),
        (m) => m.get("openai")?.until === now + 60_000,
        WITHIN
      )
      expect((yield* r1.cooldown.active(Date.now())).get("openai")?.reason).toBe("quota-exhausted")

      // An upstream refusing its key is out on every replica too.
      yield* r1.cooldown.start("revoked", { until: now + 60_000, reason: "auth-failed" })
      yield* eventually(
        Effect.suspend(() => r2.cooldown.active(Date.now())),
        (m) => m.get("revoked")?.reason === "auth-failed",
        WITHIN
      )
      expect((yield* r2.cooldown.active(Date.now())).get("revoked")).toEqual({ until: now + 60_000, reason: "auth-failed" })

      // Expired cooldowns are left out.
      yield* r1.cooldown.start("short", { until: Date.now() + 100, reason: "rate-limited" })
      yield* eventually(Effect.suspend(() => r2.cooldown.active(Date.now())), (m) => m.has("short"), 300)
      yield* Effect.sleep(Duration.millis(150))
      expect((yield* r2.cooldown.active(Date.now())).has("short")).toBe(false)

      // A clear on one replica reaches the other (which started it too).
      yield* r1.cooldown.clear("openai")
      expect((yield* r1.cooldown.active(Date.now())).has("openai")).toBe(false)
      yield* eventually(Effect.suspend(() => r2.cooldown.active(Date.now())), (m) => !m.has("openai"), 300)
    }))

  it.scopedLive("cooldowns: a start and a clear reach the other replica on the channel, long before its re-read", () =>
    Effect.gen(function*() {
      const prefix = uniquePrefix()
      // The re-read an hour away: only the channel can bring them within the test.
      const r1 = yield* replica({ prefix, cooldownRefresh: Duration.hours(1) })
      const r2 = yield* replica({ prefix, cooldownRefresh: Duration.hours(1) })
      // Each replica's first read has happened (the subscription is made meanwhile).
      yield* Effect.sleep(Duration.millis(100))
      const until = Date.now() + 60_000
      yield* r1.cooldown.start("openai", { until, reason: "unreachable" })
      // 2 s only guards a loaded machine's stalls: the message takes milliseconds.
      const seen = yield* eventually(Effect.suspend(() => r2.cooldown.active(Date.now())), (m) => m.has("openai"), 2_000)
      expect(seen.get("openai")).toEqual({ until, reason: "unreachable" })
      expect(r2.cooldown.unsafeActive?.(Date.now()).get("openai")).toEqual({ until, reason: "unreachable" })
      yield* r1.cooldown.clear("openai")
      yield* eventually(Effect.suspend(() => r2.cooldown.active(Date.now())), (m) => !m.has("openai"), 2_000)
    }))

  it.scopedLive("cooldowns: a clear heard on the channel ends the other replica's pacer hold after a 429 (Pacing.followClears)", () =>
    Effect.gen(function*() {
      const prefix = uniquePrefix()
      const r1 = yield* replica({ prefix, cooldownRefresh: Duration.hours(1) })
      const r2 = yield* replica({ prefix, cooldownRefresh: Duration.hours(1) })
      yield* Effect.sleep(Duration.millis(100))
      // Replica 2's pacer of "openai" holds after a 429 until its 60 s cooldown ends (a call still hangs).
      const upstream = { name: "openai" }
      const pacer = Pacing.pacerOf(upstream)
      const now = Date.now()
      expect(pacer.tryTake(now)).toBe(true)
      pacer.sent()
      expect(pacer.tryTake(now)).toBe(true)
      pacer.sent()
      pacer.answered(now, 429, {})
      pacer.cooled(now, now + 60_000)
      expect(pacer.tryTake(Date.now())).toBe(false)
      yield* Pacing.followClears(r2.cooldown, [upstream])
      // An operator resets "openai" on replica 1: the clear reaches replica 2 on the channel.
      yield* r1.cooldown.start("openai", { until: now + 60_000, reason: "rate-limited" })
      yield* r1.cooldown.clear("openai")
      // 2 s only guards a loaded machine's stalls: the message takes milliseconds.
      yield* eventually(Effect.sync(() => pacer.tryTake(Date.now())), (free) => free, 2_000)
    }))

  it.scopedLive("cache: a value set by one replica is a hit on the other, and expires with its TTL", () =>
    Effect.gen(function*() {
      const prefix = uniquePrefix()
      const r1 = yield* replica({ prefix })
      const r2 = yield* replica({ prefix })
      const client = yield* admin()
      yield* r1.cache.set("k", "the response", Duration.millis(200))
      expect(yield* r2.cache.get("k")).toEqual(Option.some("the response"))
      const pttl = yield* call(() => client.pttl(`${prefix}cache:k`))
      expect(pttl).toBeGreaterThan(0)
      expect(pttl).toBeLessThanOrEqual(200)
      expect(yield* r2.cache.get("missing")).toEqual(Option.none())
      yield* Effect.sleep(Duration.millis(300))
      expect(yield* r2.cache.get("k")).toEqual(Option.none())

      yield* r1.cache.set("d", "gone soon", Duration.seconds(10))
      yield* r2.cache.delete("d")
      expect(yield* r1.cache.get("d")).toEqual(Option.none())
    }))

  it.scopedLive("cache: values over maxCacheEntryBytes (UTF-8) are not stored", () =>
    Effect.gen(function*() {
      const prefix = uniquePrefix()
      const r = yield* replica({ prefix, maxCacheEntryBytes: 10 })
      const client = yield* admin()
      yield* r.cache.set("ascii", "x".repeat(11), Duration.seconds(10))
      yield* r.cache.set("utf8", "é".repeat(6), Duration.seconds(10)) // 6 characters, 12 bytes
      yield* r.cache.set("fits", "é".repeat(5), Duration.seconds(10)) // 10 bytes
      expect(yield* r.cache.get("ascii")).toEqual(Option.none())
      expect(yield* r.cache.get("utf8")).toEqual(Option.none())
      expect(yield* r.cache.get("fits")).toEqual(Option.some("é".repeat(5)))
      expect(yield* call(() => client.exists(`${prefix}cache:ascii`, `${prefix}cache:utf8`))).toBe(0)
    }))

  it.scopedLive("spend adds up across replicas", () =>
    Effect.gen(function*() {
      const prefix = uniquePrefix()
      const r1 = yield* replica({ prefix })
      const r2 = yield* replica({ prefix })
      expect(yield* r1.spend.total("alice")).toBe(0)
      expect(yield* r1.spend.add("alice", 0.5)).toBe(0.5)
      expect(yield* r2.spend.add("alice", 0.25)).toBe(0.75)
      yield* Effect.forEach(Array.from({ length: 20 }), (_, i) => (i % 2 === 0 ? r1 : r2).spend.add("alice", 0.125), {
        concurrency: "unbounded"
      })
      expect(yield* r1.spend.total("alice")).toBe(3.25)
      expect(yield* r2.spend.total("alice")).toBe(3.25)
      expect(yield* r2.spend.total("bob")).toBe(0)
    }))

  it.scopedLive("budget reservations are atomic across replicas: 100 concurrent holds of $0.05 on a $1 budget, exactly 20 granted", () =>
    Effect.gen(function*() {
      const prefix = uniquePrefix()
      const r1 = yield* replica({ prefix })
      const r2 = yield* replica({ prefix })
      const account = { key: "alice", period: "day:2026-11-30", end: Date.now() + 60_000 }
      const reservations = yield* Effect.forEach(
        Array.from({ length: 100 }),
        (_, i) => (i % 2 === 0 ? r1 : r2).spend.reserve(account, 0.05, 1),
        { concurrency: "unbounded" }
      )
      const granted = reservations.flatMap((r) => r.granted ? [r.hold] : [])
      expect(granted).toHaveLength(20)
      expect(yield* r2.spend.usage(account)).toEqual({ spent: 0, held: expect.closeTo(1, 9) })
      // Settling to the real cost (less than held) frees the difference for others.
      yield* Effect.forEach(granted.slice(0, 10), (h, i) => (i % 2 === 0 ? r2 : r1).spend.settle(h, 0.01), {
        concurrency: "unbounded"
      })
      const usage = yield* r1.spend.usage(account)
      expect(usage.spent).toBeCloseTo(0.1, 9)
      expect(usage.held).toBeCloseTo(0.5, 9)
      // 1 - 0.1 - 0.5 = 0.4 left: 8 more holds of 0.05.
      const more = yield* Effect.forEach(Array.from({ length: 12 }), (_, i) => (i % 2 === 0 ? r1 : r2).spend.reserve(account, 0.05, 1), {
        concurrency: "unbounded"
      })
      expect(more.filter((r) => r.granted)).toHaveLength(8)
      // The lifetime total and other periods are separate accounts.
      expect(yield* r1.spend.total("alice")).toBe(0)
      expect((yield* r1.spend.reserve({ key: "alice", period: "day:2026-12-01" }, 0.5, 1)).granted).toBe(true)
      // A period's total expires a day after the period ends.
      const client = yield* admin()
      expect(yield* call(() => client.ttl(`${prefix}spend@day:2026-11-30:alice`))).toBeGreaterThan(86_000)
    }))

  it.scopedLive("an unsettled reservation expires after holdTimeout, in Redis and while Redis is away", () =>
    Effect.gen(function*() {
      const port = yield* call(freePort)
      const shared = yield* replica({ prefix: uniquePrefix(), holdTimeout: Duration.millis(200) })
      const away = yield* replica({ url: `redis://127.0.0.1:${port}/0`, prefix: uniquePrefix(), holdTimeout: Duration.millis(200) })
        .pipe(Effect.provide(quiet))
      for (const r of [shared, away]) {
        expect((yield* r.spend.reserve("bob", 0.8, 1)).granted).toBe(true)
        expect((yield* r.spend.reserve("bob", 0.8, 1)).granted).toBe(false)
      }
      yield* Effect.sleep(Duration.millis(300))
      // The first holds (never settled: as if their replica had died) have expired.
      for (const r of [shared, away]) {
        const again = yield* r.spend.reserve("bob", 0.8, 1)
        expect(again.granted).toBe(true)
        if (again.granted) expect(yield* r.spend.settle(again.hold, 0.5)).toBeCloseTo(0.5, 12)
        expect(yield* r.spend.usage("bob")).toEqual({ spent: 0.5, held: 0 })
        // 0.5 spent: 0.5 more fits, 0.6 does not.
        expect((yield* r.spend.reserve("bob", 0.6, 1)).granted).toBe(false)
        expect((yield* r.spend.reserve("bob", 0.5, 1)).granted).toBe(true)
      }
    }).pipe(Logger.withMinimumLogLevel(LogLevel.None)))

  it.scopedLive("prefixes isolate gateways, and every key starts with one", () =>
    Effect.gen(function*() {
      const url = `${server.url}/5`
      const client = yield* admin(url)
      yield* call(() => client.flushdb())
      const a = yield* replica({ url, prefix: "gw-a:" })
      const b = yield* replica({ url, prefix: "gw-b:" })
      const options: RateLimiter.Options = { name: "one", limit: 1, window: Duration.seconds(60) }
      const la = yield* limiter(a.rl, options)
      const lb = yield* limiter(b.rl, options)
      expect(Either.isRight(yield* Effect.either(la.acquire("k")))).toBe(true)
      expect(Either.isRight(yield* Effect.either(lb.acquire("k")))).toBe(true)
      expect(Either.isLeft(yield* Effect.either(la.acquire("k")))).toBe(true)
      const sw = { key: "w", algorithm: "sliding-window", limit: 1, windowMillis: 60_000, cost: 1, maxWaitMillis: 0 } as const
      expect((yield* a.rl.acquire(sw)).granted).toBe(true)
      expect((yield* b.rl.acquire(sw)).granted).toBe(true)

      yield* a.cache.set("k", "from a", Duration.seconds(10))
      expect(yield* b.cache.get("k")).toEqual(Option.none())
      yield* a.spend.add("alice", 1)
      expect(yield* b.spend.total("alice")).toBe(0)
      yield* a.cooldown.start("openai", { until: Date.now() + 10_000, reason: "rate-limited" })
      yield* Effect.sleep(Duration.millis(150))
      expect((yield* b.cooldown.active(Date.now())).has("openai")).toBe(false)

      const keys = yield* call(() => client.keys("*"))
      expect(keys.length).toBeGreaterThanOrEqual(7)
      for (const k of keys) expect(k.startsWith("gw-a:") || k.startsWith("gw-b:"), k).toBe(true)
      expect(keys.some((k) => k.startsWith("gw-b:"))).toBe(true)
      expect(keys.filter((k) => k.startsWith("gw-a:")).sort()).toEqual(
        ["gw-a:cache:k", "gw-a:cooldowns", "gw-a:rl:one:k", "gw-a:rl:w", "gw-a:spend:alice"]
      )
    }))

  describe("the limiter's fiberless take (unsafeTakeAsync), for a server's fast path", () => {
    /** The take's answer: undefined (granted), the wait in millis, or the effect it handed back. */
    const takeAsync = (l: RateLimiter.RateLimiter, key: string, cost = 1) =>
      Effect.async<number | undefined | Effect.Effect<number | undefined, RateLimiter.RateLimiterStoreError>>((resume) =>
        l.unsafeTakeAsync!(key, cost, [], (wait) => resume(Effect.succeed(wait)))
      )

    it.scopedLive("one script call per take, the decisions acquire makes, one counter for two replicas", () =>
      Effect.gen(function*() {
        const prefix = uniquePrefix()
        const r1 = yield* replica({ prefix })
        const r2 = yield* replica({ prefix })
        const options: RateLimiter.Options = { name: "rpm", limit: 3, window: Duration.seconds(60), algorithm: "sliding-window" }
        const l1 = yield* limiter(r1.rl, options)
        const l2 = yield* limiter(r2.rl, options)
        // Decided in Redis: no synchronous take, a fiberless one.
        expect(l1.unsafeTake).toBeUndefined()
        expect(l1.unsafeTakeAsync).toBeTypeOf("function")
        const rejectedBefore = yield* rejectedCount("rpm")
        const waits: Array<unknown> = []
        for (let i = 0; i < 5; i++) waits.push(yield* takeAsync(i % 2 === 0 ? l1 : l2, "k"))
        // Each refusal counted, as acquire counts its own.
        expect((yield* rejectedCount("rpm")) - rejectedBefore).toBe(2)
        // Three granted in all (not three per replica), then refusals that say when to retry.
        expect(waits.slice(0, 3)).toEqual([undefined, undefined, undefined])
        for (const w of waits.slice(3)) {
          expect(typeof w).toBe("number")
          expect(w as number).toBeGreaterThan(55_000)
          expect(w as number).toBeLessThanOrEqual(60_000)
        }
        // The same counter as acquire's: refused there too, with the same Retry-After (give or take the time between).
        const viaEffect = yield* Effect.either(l2.acquire("k"))
        if (Either.isRight(viaEffect) || viaEffect.left._tag !== "RateLimited") throw new Error("expected RateLimited")
        expect(Math.abs(Duration.toMillis(viaEffect.left.retryAfter) - (waits[4] as number))).toBeLessThan(1_000)
        const client = yield* admin()
        expect(yield* call(() => client.lindex(`${prefix}rl:rpm:k`, 0))).toBe("total:3") // 3 reservations
        // Another key has its own limit.
        expect(yield* takeAsync(l1, "other")).toBeUndefined()
      }))

    it.scopedLive("the takes of one turn of the event loop go as one script call, decided in arrival order", () =>
      Effect.gen(function*() {
        const prefix = uniquePrefix()
        const r = yield* replica({ prefix })
        const l = yield* limiter(r.rl, { name: "batch", limit: 3, window: Duration.seconds(60), algorithm: "sliding-window" })
        const other = yield* limiter(r.rl, { name: "batch-tb", limit: 1, window: Duration.seconds(60) })
        const client = yield* admin()
        const scriptCalls = Effect.map(call(() => client.info("commandstats")), (info) => {
          const m = /cmdstat_evalsha:calls=(\d+)/.exec(info)
          return m === null ? 0 : Number(m[1])
        })
        // Loads the script once (a first EVALSHA may meet NOSCRIPT).
        expect(yield* takeAsync(l, "warm")).toBeUndefined()
        const before = yield* scriptCalls
        // Seven takes in one synchronous step: two keys of one limiter, and a token bucket.
        const answers = yield* Effect.async<ReadonlyArray<unknown>>((resume) => {
          const got: Array<unknown> = []
          const order: Array<readonly [RateLimiter.RateLimiter, string]> = [
            [l, "a"], [other, "a"], [l, "a"], [l, "b"], [l, "a"], [other, "a"], [l, "a"]
          ]
          order.forEach(([lim, key], i) =>
            lim.unsafeTakeAsync!(key, 1, [], (wait) => {
              got[i] = wait
              if (Object.keys(got).length === order.length) resume(Effect.succeed(got))
            })
          )
        })
        expect(answers.map((w) => w === undefined ? "ok" : typeof w)).toEqual(["ok", "ok", "ok", "ok", "ok", "number", "number"])
        expect((yield* scriptCalls) - before).toBe(1)
      }))

    it.scopedLive("acquire goes the same way: the acquires of several fibers in one turn are one script call", () =>
      Effect.gen(function*() {
        const r = yield* replica({ prefix: uniquePrefix() })
        const l = yield* limiter(r.rl, { name: "fibers", limit: 3, window: Duration.seconds(60), algorithm: "sliding-window" })
        const client = yield* admin()
        const scriptCalls = Effect.map(call(() => client.info("commandstats")), (info) => {
          const m = /cmdstat_evalsha:calls=(\d+)/.exec(info)
          return m === null ? 0 : Number(m[1])
        })
        expect(Either.isRight(yield* Effect.either(l.acquire("warm")))).toBe(true)
        const before = yield* scriptCalls
        const outcomes = yield* Effect.all(Array.from({ length: 5 }, () => Effect.either(l.acquire("k"))), { concurrency: "unbounded" })
        expect(granted(outcomes)).toBe(3)
        expect(outcomes.map((o) => Either.isLeft(o) ? o.left._tag : "ok")).toEqual(["ok", "ok", "ok", "RateLimited", "RateLimited"])
        expect((yield* scriptCalls) - before).toBe(1)
      }))

    it.scopedLive("a key's request count and tokens: one script call for both, the tokens left untaken when the count refuses", () =>
      Effect.gen(function*() {
        const prefix = uniquePrefix()
        const r = yield* replica({ prefix })
        const rpm = yield* limiter(r.rl, { name: "rpm", limit: 2, window: Duration.seconds(60), algorithm: "sliding-window" })
        const tpm = yield* limiter(r.rl, { name: "tpm", limit: 100, window: Duration.seconds(60), algorithm: "sliding-window" })
        const client = yield* admin()
        const scriptCalls = Effect.map(call(() => client.info("commandstats")), (info) => {
          const m = /cmdstat_evalsha:calls=(\d+)/.exec(info)
          return m === null ? 0 : Number(m[1])
        })
        const takeBoth = (key: string, tokens: number) =>
          Effect.async<RateLimiter.Refusal | undefined | Effect.Effect<RateLimiter.Refusal | undefined, RateLimiter.RateLimiterStoreError>>((resume) => {
            const started = RateLimiter.unsafeTakeAllAsync(
              [{ limiter: rpm, key, cost: 1 }, { limiter: tpm, key, cost: tokens }],
              [],
              (refusal) => resume(Effect.succeed(refusal))
            )
            if (!started) resume(Effect.dieMessage("not started"))
          })
        expect(yield* takeBoth("warm", 1)).toBeUndefined()
        const before = yield* scriptCalls
        expect(yield* takeBoth("k", 40)).toBeUndefined()
        expect(yield* takeBoth("k", 40)).toBeUndefined()
        expect((yield* scriptCalls) - before).toBe(2)
        const rejectedBefore = yield* rejectedCount("rpm")
        // The third: refused by the count (take 0), which says when to retry; its tokens are not taken.
        const third = yield* takeBoth("k", 10)
        expect(third).toMatchObject({ index: 0 })
        expect((third as RateLimiter.Refusal).wait).toBeGreaterThan(55_000)
        expect((yield* rejectedCount("rpm")) - rejectedBefore).toBe(1)
        expect(yield* call(() => client.lindex(`${prefix}rl:rpm:k`, 0))).toBe("total:2")
        expect(yield* call(() => client.lindex(`${prefix}rl:tpm:k`, 0))).toBe("total:80")
        // Refused by the tokens (take 1): the count was taken, as admit takes it.
        expect(yield* takeBoth("j", 150)).toMatchObject({ index: 1, wait: 60_000 })
        expect(yield* call(() => client.lindex(`${prefix}rl:rpm:j`, 0))).toBe("total:1")
        expect(yield* call(() => client.exists(`${prefix}rl:tpm:j`))).toBe(0)
        // Limiters of another store: not taken together.
        const other = yield* limiter(yield* RateLimiter.makeStoreMemory, { name: "m", limit: 1, window: Duration.seconds(1) })
        expect(RateLimiter.unsafeTakeAllAsync([{ limiter: rpm, key: "x", cost: 1 }, { limiter: other, key: "x", cost: 1 }], [], () => {})).toBe(false)
      }))

    it.scoped("sliding window: the reservations of one instant are one entry of the log, the decisions unchanged", () =>
      Effect.gen(function*() {
        const client = yield* admin()
        const key = `${uniquePrefix()}rl:instant`
        const base = 1_700_000_000_000
        const acquire = (now: number, cost: number, maxWait = "0") =>
          call(() => client.acquire(...one(key, "sliding-window", "5", "1000", String(cost), maxWait, String(base + now))))
        expect(yield* acquire(0, 1)).toEqual([1, 0, 4])
        expect(yield* acquire(0, 2)).toEqual([1, 0, 2])
        expect(yield* acquire(10, 1)).toEqual([1, 0, 1])
        expect(yield* acquire(10, 1)).toEqual([1, 0, 0])
        expect(yield* call(() => client.lrange(key, 0, -1))).toEqual(["total:5", `${base}:3`, `${base + 10}:2`])
        // Full: a reservation at 1000, when all three of t = 0 have left (the memory store's answer).
        expect(yield* acquire(20, 3, "5000")).toEqual([1, 980, 0])
        expect(yield* call(() => client.lrange(key, 0, -1))).toEqual(["total:8", `${base}:3`, `${base + 10}:2`, `${base + 1000}:3`])
        yield* call(() => client.del(key))
      }))

    it.scopedLive("at most 64 takes in one script call: a 65th in the same turn goes in a second one", () =>
      Effect.gen(function*() {
        const r = yield* replica({ prefix: uniquePrefix() })
        const l = yield* limiter(r.rl, { name: "bound", limit: 1000, window: Duration.seconds(60), algorithm: "sliding-window" })
        const client = yield* admin()
        const scriptCalls = Effect.map(call(() => client.info("commandstats")), (info) => {
          const m = /cmdstat_evalsha:calls=(\d+)/.exec(info)
          return m === null ? 0 : Number(m[1])
        })
        expect(yield* takeAsync(l, "warm")).toBeUndefined()
        const before = yield* scriptCalls
        const answers = yield* Effect.async<ReadonlyArray<unknown>>((resume) => {
          const got: Array<unknown> = []
          let n = 0
          for (let i = 0; i < 65; i++) {
            l.unsafeTakeAsync!("k", 1, [], (wait) => {
              got[i] = wait
              if (++n === 65) resume(Effect.succeed(got))
            })
          }
        })
        expect(answers.filter((w) => w === undefined)).toHaveLength(65)
        // Redis serves nothing else while a script runs: the batch is bounded.
        expect((yield* scriptCalls) - before).toBe(2)
      }))

    it.scopedLive("only where it applies: not in wait mode, not for the memory store", () =>
      Effect.gen(function*() {
        const r = yield* replica({ prefix: uniquePrefix() })
        const waiting = yield* limiter(r.rl, { name: "w", limit: 1, window: Duration.seconds(1), onExceeded: "wait" })
        expect(waiting.unsafeTakeAsync).toBeUndefined()
        const memory = yield* limiter(yield* RateLimiter.makeStoreMemory, { name: "m", limit: 1, window: Duration.seconds(1) })
        expect(memory.unsafeTakeAsync).toBeUndefined()
        expect(memory.unsafeTake).toBeTypeOf("function")
      }))

    it.scopedLive("Redis away: the take hands back the store's fallback (memory, counted, one warning) as an effect", () => {
      const logs = captureLogs()
      return Effect.gen(function*() {
        const port = yield* call(freePort)
        const r = yield* replica({ url: `redis://127.0.0.1:${port}`, prefix: uniquePrefix() })
        const l = yield* limiter(r.rl, { name: "rpm", limit: 2, window: Duration.seconds(60), algorithm: "sliding-window" })
        const before = yield* fallbackCount("rate-limiter")
        const waits: Array<number | undefined> = []
        for (let i = 0; i < 3; i++) {
          const answer = yield* takeAsync(l, "k")
          if (!Effect.isEffect(answer)) throw new Error("expected the fallback's effect")
          waits.push(yield* Effect.orDie(answer))
        }
        // The memory twin limits per replica, as acquire's fallback does.
        expect(waits.slice(0, 2)).toEqual([undefined, undefined])
        expect(waits[2]).toBeGreaterThan(0)
        expect((yield* fallbackCount("rate-limiter")) - before).toBe(3)
        expect(warnings(logs.lines)).toHaveLength(1)
      }).pipe(Effect.provide(logs.layer))
    })
  })

  describe("when Redis misbehaves", () => {
    it.scopedLive("down at start: every store answers from memory, one warning, no password in logs", () => {
      const logs = captureLogs()
      return Effect.gen(function*() {
        const port = yield* call(freePort)
        const before = yield* allFallbacks
        const r = yield* replica({ url: `redis://:hunter2@127.0.0.1:${port}/0`, prefix: uniquePrefix() })

        const l = yield* limiter(r.rl, { name: "rpm", limit: 2, window: Duration.seconds(60) })
        const outcomes = yield* Effect.forEach([1, 2, 3], () => Effect.either(l.acquire("k")))
        expect(granted(outcomes)).toBe(2) // the memory twin still limits, per replica
        yield* r.cooldown.start("openai", { until: Date.now() + 10_000, reason: "rate-limited" })
        expect((yield* r.cooldown.active(Date.now())).has("openai")).toBe(true)
        yield* r.cache.set("k", "v", Duration.seconds(10))
        expect(yield* r.cache.get("k")).toEqual(Option.some("v"))
        expect(yield* r.spend.add("alice", 1)).toBe(1)
        expect(yield* r.spend.add("alice", 0.5)).toBe(1.5)
        expect(yield* r.spend.total("alice")).toBe(1.5)

        const after = yield* allFallbacks
        expect(after["rate-limiter"] - before["rate-limiter"]).toBe(3)
        expect(after.cooldown - before.cooldown).toBe(1)
        expect(after.cache - before.cache).toBe(2)
        expect(after.spend - before.spend).toBe(3)
        expect(warnings(logs.lines)).toHaveLength(1)
        for (const line of logs.lines) expect(line.text).not.toContain("hunter2")
      }).pipe(Effect.provide(logs.layer))
    })

    it.scopedLive("a slow Redis: calls fall back after the command timeout instead of stalling", () => {
      const logs = captureLogs()
      return Effect.gen(function*() {
        const prefix = uniquePrefix()
        const r = yield* replica({ prefix, commandTimeout: Duration.millis(50) })
        const client = yield* admin()
        expect(yield* r.spend.add("alice", 1)).toBe(1)
        const before = yield* allFallbacks
        // Keep Redis busy for 400 ms.
        const busy = client.eval(
          `local t = redis.call("TIME")
           local start = t[1] * 1000000 + t[2]
           while true do
             local n = redis.call("TIME")
             if n[1] * 1000000 + n[2] - start > 400000 then break end
           end
           return 1`,
          0
        )
        yield* Effect.sleep(Duration.millis(30))
        const t0 = Date.now()
        expect(yield* r.spend.add("alice", 2)).toBe(3)
        const l = yield* limiter(r.rl, { name: "rpm", limit: 10, window: Duration.seconds(60) })
        expect(Either.isRight(yield* Effect.either(l.acquire("k")))).toBe(true)
        expect(yield* r.cache.get("k")).toEqual(Option.none())
        expect(Date.now() - t0).toBeLessThan(300)
        const after = yield* allFallbacks
        expect(after.spend - before.spend).toBe(1)
        expect(after["rate-limiter"] - before["rate-limiter"]).toBe(1)
        expect(after.cache - before.cache).toBe(1)
        yield* call(() => busy)
        // The timed-out INCRBYFLOAT ran once Redis was free: counted once, not lost, not twice.
        yield* eventually(Effect.suspend(() => Effect.succeed(logs.lines.some((l) => l.text.includes("back")))), (b) => b)
        expect(yield* r.spend.total("alice")).toBe(3)
        expect(yield* call(() => client.get(`${prefix}spend:alice`))).toBe("3")
        expect(warnings(logs.lines)).toHaveLength(1)
      }).pipe(Effect.provide(logs.layer))
    })

    it.scopedLive("killed mid-run: every call still succeeds, one warning, fallbacks counted; after a restart state is shared again", () => {
      const logs = captureLogs()
      return Effect.gen(function*() {
        const prefix = uniquePrefix()
        const r1 = yield* replica({ prefix })
        // The second replica has its own connection and health, hence its
        // own warning: keep it out of the logs counted here (r1's). Its
        // background refresh logs through the test's logger whatever logger
        // its construction was given, so its lines are marked and left out.
        const r2 = yield* replica({ prefix }).pipe(Effect.annotateLogs({ replica: "r2" }))
        const ofR1 = () => logs.lines.filter((l) => !l.text.includes(`["replica","r2"]`))
        const onR2 = <A, E>(effect: Effect.Effect<A, E>) => Logger.withMinimumLogLevel(effect, LogLevel.None)
        expect(yield* r1.spend.add("alice", 1)).toBe(1)
        expect(yield* onR2(r2.spend.total("alice"))).toBe(1)
        const l1 = yield* limiter(r1.rl, { name: "rpm", limit: 100, window: Duration.seconds(60) })
        expect(Either.isRight(yield* Effect.either(l1.acquire("k")))).toBe(true)
        const before = yield* allFallbacks

        yield* call(() => server.stop())
        const t0 = Date.now()
        // Every store call succeeds, answered from memory.
        for (let i = 0; i < 3; i++) expect(Either.isRight(yield* Effect.either(l1.acquire("k")))).toBe(true)
        yield* r1.cooldown.start("openai", { until: Date.now() + 30_000, reason: "quota-exhausted" })
        expect((yield* r1.cooldown.active(Date.now())).has("openai")).toBe(true)
        yield* r1.cooldown.clear("nobody")
        yield* r1.cache.set("k", "v", Duration.seconds(10))
        expect(yield* r1.cache.get("k")).toEqual(Option.some("v"))
        yield* r1.cache.delete("other")
        expect(yield* r1.spend.add("alice", 2)).toBe(3) // last shared total (1) + what accrued here
        expect(yield* r1.spend.total("alice")).toBe(3)
        expect(Date.now() - t0).toBeLessThan(1000)

        const during = yield* allFallbacks
        expect(during["rate-limiter"] - before["rate-limiter"]).toBe(3)
        expect(during.cooldown - before.cooldown).toBe(2)
        expect(during.cache - before.cache).toBe(3)
        expect(during.spend - before.spend).toBe(2)
        expect(warnings(ofR1())).toHaveLength(1)
        expect(warnings(ofR1())[0]!.text).toContain("Redis unavailable")

        // Back (empty: no persistence). The stores resume by themselves.
        yield* call(() => server.restart())
        yield* eventually(
          Effect.zipRight(r1.cache.set("resumed", "yes", Duration.seconds(10)), onR2(r2.cache.get("resumed"))),
          Option.isSome
        )
        // The spend that accrued during the outage reaches Redis with the key's next call.
        expect(yield* r1.spend.total("alice")).toBe(2)
        expect(yield* eventually(onR2(r2.spend.total("alice")), (t) => t === 2)).toBe(2)
        // So does the cooldown started during the outage (written by the refresh).
        yield* eventually(Effect.suspend(() => onR2(r2.cooldown.active(Date.now()))), (m) => m.has("openai"))
        // Limits are shared again.
        const l2 = yield* limiter(r2.rl, { name: "after", limit: 2, window: Duration.seconds(60) })
        const l1b = yield* limiter(r1.rl, { name: "after", limit: 2, window: Duration.seconds(60) })
        const outcomes = yield* Effect.forEach([l1b, l2, l1b, l2], (l) => Effect.either(l === l2 ? onR2(l.acquire("k")) : l.acquire("k")))
        expect(granted(outcomes)).toBe(2)

        expect(warnings(ofR1())).toHaveLength(1)
        expect(ofR1().filter((l) => l.text.includes("Redis is back"))).toHaveLength(1)
      }).pipe(
        Effect.provide(logs.layer),
        // Whatever happened, leave a server for the tests that follow.
        Effect.ensuring(Effect.promise(async () => {
          if (!server.running()) await server.restart()
        }))
      )
    }, 15_000)
  })
})
