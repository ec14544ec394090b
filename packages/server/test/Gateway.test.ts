/**
 * The gateway's budgets in virtual time: reservations against concurrent
 * requests, settlement, unpriced models, periods rolling over (TestClock),
 * and the refusal's message.
 */
import { Pricing, RateLimiter, Spend } from "@breakwater/core"
import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as TestClock from "effect/TestClock"
import type { KeyConfig } from "../src/Config.js"
import * as Gateway from "../src/Gateway.js"

const key = (name: string, extra: Partial<KeyConfig> = {}): KeyConfig => ({ name, key: Redacted.make(`secret-${name}`), ...extra })

const stores = Layer.mergeAll(RateLimiter.layerStoreMemory, Spend.layerStoreMemory, Pricing.layer({ cheap: { input: 1, output: 1 } }))

const make = (keys: ReadonlyArray<KeyConfig>, options?: Gateway.Options) =>
  Gateway.make(keys, options).pipe(Effect.provide(stores))

const callerOf = (g: Gateway.Gateway, name: string) => g.authenticate(`Bearer secret-${name}`)

/** 1,000 prompt tokens and 1,000 output tokens of `cheap` ($1/$1 per million): $0.002 reserved. */
const ask = (model = "cheap", maxOutputTokens: number | "unset" = 1000): Gateway.Admission => ({
  model,
  promptTokens: 1000,
  maxOutputTokens: maxOutputTokens === "unset" ? undefined : maxOutputTokens
})

const usage = (prompt: number, completion: number) => ({
  prompt_tokens: prompt,
  completion_tokens: completion,
  total_tokens: prompt + completion
})

describe("Gateway budgets", () => {
  it.effect("reserves before the call: concurrent requests cannot all pass a check made before any is charged", () =>
    Effect.gen(function*() {
      const g = yield* make([key("k", { budgetUsd: 0.01 })])
      const caller = yield* callerOf(g, "k")
      // $0.002 each: 5 fit in $0.01, whatever their order.
      const outcomes = yield* Effect.forEach(Array.from({ length: 8 }), () => Effect.either(g.admit(caller, ask(), 0)), {
        concurrency: "unbounded"
      })
      const admitted = outcomes.filter(Either.isRight).map((e) => e.right)
      expect(admitted).toHaveLength(5)
      const refusal = outcomes.find(Either.isLeft)!.left
      expect(refusal).toBeInstanceOf(Gateway.BudgetExceeded)
      expect(refusal.message).toContain("may cost up to $0.002")
      expect(refusal.message).toContain("$0.01 budget")
      // Settling to the real cost ($0.001 each) frees the rest: 2 more fit ($0.005 spent).
      for (const a of admitted) expect(yield* g.settle(a, { usage: usage(500, 500), costUsd: 0.001 })).toEqual({ usd: 0.001, basis: "table" })
      const more = yield* Effect.forEach(Array.from({ length: 3 }), () => Effect.either(g.admit(caller, ask(), 0)))
      expect(more.filter(Either.isRight)).toHaveLength(2)
    }))

  it.effect("settles once and releases once: a failed or interrupted request gives its reservation back", () =>
    Effect.gen(function*() {
      const g = yield* make([key("k", { budgetUsd: 0.004 })])
      const caller = yield* callerOf(g, "k")
      const a = yield* g.admit(caller, ask(), 0)
      const b = yield* g.admit(caller, ask(), 0)
      expect(Either.isLeft(yield* Effect.either(g.admit(caller, ask(), 0)))).toBe(true)
      // Building the release does nothing: only running it does (it is put in `ensuring`).
      g.release(a)
      g.settle(a, { usage: undefined, costUsd: 0 })
      expect(Either.isLeft(yield* Effect.either(g.admit(caller, ask(), 0)))).toBe(true)
      yield* g.release(a)
      yield* g.release(a) // nothing more
      yield* g.settle(a, { usage: undefined, costUsd: 1 }) // nothing: already released
      const c = yield* g.admit(caller, ask(), 0)
      yield* g.settle(b, { usage: undefined, costUsd: 0.0005 })
      yield* g.release(b) // nothing: settled
      yield* g.settle(c, { usage: undefined, costUsd: 0.0005 })
      const [view] = yield* g.keys
      expect(view).toMatchObject({ name: "k", spentUsd: 0.001, heldUsd: 0, remainingUsd: 0.003, budgetPeriod: "total", resetsAt: null })
    }))

  it.effect("no usage came back: the reservation is charged, never nothing", () =>
    Effect.gen(function*() {
      const g = yield* make([key("k", { budgetUsd: 1 })])
      const a = yield* g.admit(yield* callerOf(g, "k"), ask(), 0)
      expect(yield* g.settle(a, { usage: undefined, costUsd: undefined })).toEqual({ usd: 0.002, basis: "estimate" })
    }))

  it.effect("without max_tokens the estimate uses estimatedOutputTokens", () =>
    Effect.gen(function*() {
      const g = yield* make([key("k", { budgetUsd: 0.0015 })], { estimatedOutputTokens: 400 })
      const caller = yield* callerOf(g, "k")
      // 1000 + 400 tokens at $1 per million = $0.0014: one fits, not two.
      yield* g.admit(caller, ask("cheap", "unset"), 0)
      const refused = yield* Effect.flip(g.admit(caller, ask("cheap", "unset"), 0))
      expect(refused).toMatchObject({ _tag: "BudgetExceeded", estimateUsd: 0.0014 })
    }))

  it.effect("an unpriced model is charged at the highest price for keys with a budget, and said so", () =>
    Effect.gen(function*() {
      const g = yield* make([key("k", { budgetUsd: 1000 }), key("free")])
      const pricing = yield* Effect.provide(Pricing.Pricing, stores)
      const a = yield* g.admit(yield* callerOf(g, "k"), ask("mystery-model", 10), 0)
      const charged = yield* g.settle(a, { usage: usage(1_000_000, 0), costUsd: undefined })
      expect(charged).toEqual({ usd: pricing.highest.input, basis: "unpriced" })
      // Keys without a budget: cost unknown, as before.
      const f = yield* g.admit(yield* callerOf(g, "free"), ask("mystery-model"), 0)
      expect(yield* g.settle(f, { usage: usage(10, 10), costUsd: undefined })).toEqual({ usd: undefined, basis: "table" })
    }))

  it.effect("pricing.unknown: reject refuses an unpriced model before any call, for keys with a budget only", () =>
    Effect.gen(function*() {
      const g = yield* make([key("k", { budgetUsd: 1 }), key("free")], {
        unknown: "reject",
        targets: (m) => m === "alias" ? ["cheap", "mystery"] : m === "unserved" ? [] : [m]
      })
      const caller = yield* callerOf(g, "k")
      const refused = yield* Effect.flip(g.admit(caller, ask("mystery"), 0))
      expect(refused).toBeInstanceOf(Gateway.ModelNotPriced)
      expect(refused.message).toContain("'mystery' has no price")
      // An alias one of whose upstreams would send an unpriced name: refused too.
      expect(yield* Effect.flip(g.admit(caller, ask("alias"), 0))).toBeInstanceOf(Gateway.ModelNotPriced)
      // A model no upstream serves costs nothing here: the relay answers 404.
      yield* g.admit(caller, ask("unserved"), 0)
      yield* g.admit(caller, ask("cheap"), 0)
      yield* g.admit(yield* callerOf(g, "free"), ask("mystery"), 0)
    }))

  it.effect("an explicit pricing.unknown price is used for unpriced models", () =>
    Effect.gen(function*() {
      const g = yield* make([key("k", { budgetUsd: 0.05 })], { unknown: { input: 10, output: 20 } })
      const caller = yield* callerOf(g, "k")
      // 1000 * 10 + 1000 * 20 = $0.03 reserved; a second does not fit.
      yield* g.admit(caller, ask("mystery"), 0)
      expect(yield* Effect.flip(g.admit(caller, ask("mystery"), 0))).toMatchObject({ estimateUsd: 0.03 })
    }))

  it.effect("a daily budget resets at 00:00 UTC (TestClock); the refusal says when", () =>
    Effect.gen(function*() {
      // 2026-11-30 23:00 UTC.
      yield* TestClock.setTime(Date.UTC(2026, 10, 30, 23, 0, 0))
      const g = yield* make([key("daily", { budgetUsd: 0.003, budgetPeriod: "day" })])
      const caller = yield* callerOf(g, "daily")
      const a = yield* g.admit(caller, ask(), 0)
      yield* g.settle(a, { usage: undefined, costUsd: 0.0025 })
      const refused = yield* Effect.flip(g.admit(caller, ask(), 0))
      expect(refused.message).toContain("per day")
      expect(refused.message).toContain("2026-12-01T00:00:00.000Z")
      const [before] = yield* g.keys
      expect(before).toMatchObject({
        spentUsd: 0.0025,
        periodStart: "2026-11-30T00:00:00.000Z",
        resetsAt: "2026-12-01T00:00:00.000Z"
      })
      yield* TestClock.adjust(Duration.minutes(59))
      expect(Either.isLeft(yield* Effect.either(g.admit(caller, ask(), 0)))).toBe(true)
      yield* TestClock.adjust(Duration.minutes(1))
      // A new day: a new budget.
      yield* g.admit(caller, ask(), 0)
      const [after] = yield* g.keys
      expect(after).toMatchObject({ spentUsd: 0, heldUsd: 0.002, resetsAt: "2026-12-02T00:00:00.000Z" })
    }))

  it.effect("weekly budgets reset on Monday 00:00 UTC, monthly on the 1st", () =>
    Effect.gen(function*() {
      // Sunday 2026-11-29 12:00 UTC.
      yield* TestClock.setTime(Date.UTC(2026, 10, 29, 12))
      const g = yield* make([
        key("weekly", { budgetUsd: 0.003, budgetPeriod: "week" }),
        key("monthly", { budgetUsd: 0.003, budgetPeriod: "month" })
      ])
      for (const name of ["weekly", "monthly"]) {
        const caller = yield* callerOf(g, name)
        yield* g.settle(yield* g.admit(caller, ask(), 0), { usage: undefined, costUsd: 0.003 })
        expect(Either.isLeft(yield* Effect.either(g.admit(caller, ask(), 0)))).toBe(true)
      }
      const views = yield* g.keys
      expect(views.map((v) => [v.name, v.periodStart, v.resetsAt])).toEqual([
        ["weekly", "2026-11-23T00:00:00.000Z", "2026-11-30T00:00:00.000Z"],
        ["monthly", "2026-11-01T00:00:00.000Z", "2026-12-01T00:00:00.000Z"]
      ])
      // Monday: the week is new, the month is not.
      yield* TestClock.adjust(Duration.hours(12))
      yield* g.admit(yield* callerOf(g, "weekly"), ask(), 0)
      expect(Either.isLeft(yield* Effect.either(g.admit(yield* callerOf(g, "monthly"), ask(), 0)))).toBe(true)
      // December: the month is new.
      yield* TestClock.adjust(Duration.days(1))
      yield* g.admit(yield* callerOf(g, "monthly"), ask(), 0)
    }))

  it.effect("reset-spend zeroes the current period", () =>
    Effect.gen(function*() {
      const g = yield* make([key("k", { budgetUsd: 0.003 })])
      const caller = yield* callerOf(g, "k")
      yield* g.settle(yield* g.admit(caller, ask(), 0), { usage: undefined, costUsd: 0.003 })
      expect(Either.isLeft(yield* Effect.either(g.admit(caller, ask(), 0)))).toBe(true)
      expect(yield* g.resetSpend("nobody")).toBeUndefined()
      const reset = yield* g.resetSpend("k")
      expect(reset).toMatchObject({ reset: true, view: { spentUsd: 0, remainingUsd: 0.003 } })
      yield* g.admit(caller, ask(), 0)
    }))

  it("shows enough digits for small budgets", () => {
    const e = new Gateway.BudgetExceeded({
      key: "k",
      budgetUsd: 0.0001,
      period: "total",
      spentUsd: 0.00012346,
      heldUsd: 0,
      estimateUsd: 0,
      resetsAt: undefined
    })
    expect(e.message).toBe("Budget of $0.0001 for key 'k' is spent ($0.0001235 used).")
    expect(Gateway.formatUsd(50)).toBe("50.00")
    expect(Gateway.formatUsd(0.5)).toBe("0.50")
    expect(Gateway.formatUsd(0.001)).toBe("0.001")
    expect(Gateway.formatUsd(12.345)).toBe("12.35")
  })
})

describe("budget periods", () => {
  it("are UTC calendar periods; weeks start on Monday", () => {
    const at = Date.UTC(2026, 0, 1, 5) // Thursday 2026-01-01
    expect(Spend.periodAt("day", at)).toEqual({ id: "day:2026-01-01", start: Date.UTC(2026, 0, 1), end: Date.UTC(2026, 0, 2) })
    expect(Spend.periodAt("week", at)).toEqual({ id: "week:2025-12-29", start: Date.UTC(2025, 11, 29), end: Date.UTC(2026, 0, 5) })
    expect(Spend.periodAt("month", Date.UTC(2028, 1, 29, 23))).toEqual({
      id: "month:2028-02",
      start: Date.UTC(2028, 1, 1),
      end: Date.UTC(2028, 2, 1)
    })
    expect(Spend.periodAt("total", at)).toEqual({ id: undefined, start: undefined, end: undefined })
  })
})

describe("the request path's plain functions (identify, admitNow, settleNow)", () => {
  it.effect("identify answers as authenticate does; admitNow and settleNow only when there is nothing to check or hold", () =>
    Effect.gen(function*() {
      const g = yield* make([key("plain"), key("limited", { requestsPerMinute: 10 }), key("budget", { budgetUsd: 1 })])
      for (const header of [undefined, "", "Bearer", "Bearer secret-plain", "bearer secret-limited", "Bearer nope", "Basic x"]) {
        const viaEffect = yield* Effect.either(g.authenticate(header))
        const plain = g.identify(header)
        if (Either.isRight(viaEffect)) expect(plain).toBe(viaEffect.right)
        else {
          expect(plain).toBeInstanceOf(Gateway.Unauthorized)
          expect((plain as Gateway.Unauthorized).reason).toBe(viaEffect.left.reason)
        }
      }
      const plain = g.identify("Bearer secret-plain") as Gateway.Caller
      const limited = g.identify("Bearer secret-limited") as Gateway.Caller
      const budget = g.identify("Bearer secret-budget") as Gateway.Caller
      expect(g.admitNow(plain, "cheap")).toEqual({ caller: plain, model: "cheap", hold: undefined, done: false })
      expect(g.admitNow(limited, "cheap")).toBeUndefined()
      expect(g.admitNow(budget, "cheap")).toBeUndefined()
      const free = yield* g.admit(plain, ask(), 2000)
      const usage = { prompt_tokens: 1000, completion_tokens: 10, total_tokens: 1010 }
      expect(g.settleNow(free, { usage, costUsd: 0.5 })).toEqual(yield* g.settle(free, { usage, costUsd: 0.5 }))
      const held = yield* g.admit(budget, ask(), 2000)
      expect(held.hold).toBeDefined()
      expect(g.settleNow(held, { usage, costUsd: 0.5 })).toBeUndefined()
    }))
})

describe("the fast path's admission and key lookup (admitAt, identify's cache)", () => {
  it.effect("admitAt takes the same limits as admit, in the same order, and refuses as admit refuses (TestClock)", () =>
    Effect.gen(function*() {
      const keys = [key("plain"), key("rpm", { requestsPerMinute: 2 }), key("tpm", { tokensPerMinute: 100 }), key("budget", { budgetUsd: 1 })]
      const fast = yield* make(keys)
      const slow = yield* make(keys)
      const now = () => Effect.clockWith((c) => Effect.succeed(c.unsafeCurrentTimeMillis()))
      const plain = fast.identify("Bearer secret-plain") as Gateway.Caller
      expect(fast.admitAt(plain, "cheap", 10, yield* now())).toEqual({ caller: plain, model: "cheap", hold: undefined, done: false })
      // A key with a budget holds a reservation: not here.
      expect(fast.admitAt(fast.identify("Bearer secret-budget") as Gateway.Caller, "cheap", 10, yield* now())).toBeUndefined()
      for (const [name, tokens] of [["rpm", 1], ["tpm", 60]] as const) {
        const a = fast.identify(`Bearer secret-${name}`) as Gateway.Caller
        const b = slow.identify(`Bearer secret-${name}`) as Gateway.Caller
        for (let i = 0; i < 3; i++) {
          const sync = fast.admitAt(a, "cheap", tokens, yield* now())
          const viaEffect = yield* Effect.either(slow.admit(b, { model: "cheap", promptTokens: tokens, maxOutputTokens: 0 }, tokens))
          if (Either.isRight(viaEffect)) {
            expect(sync, `${name} #${i}`).toEqual({ caller: a, model: "cheap", hold: undefined, done: false })
          } else {
            expect(sync, `${name} #${i}`).toBeInstanceOf(Gateway.KeyRateLimited)
            expect((sync as Gateway.KeyRateLimited).message).toBe(viaEffect.left.message)
          }
        }
        // The third was refused by both (2 a minute; 60 + 60 > 100 tokens).
        expect(fast.admitAt(a, "cheap", tokens, yield* now())).toBeInstanceOf(Gateway.KeyRateLimited)
        yield* TestClock.adjust(Duration.minutes(2))
        expect(fast.admitAt(a, "cheap", tokens, yield* now())).not.toBeInstanceOf(Gateway.KeyRateLimited)
      }
    }))

  it.effect("a valid key is recognised again from the cache; a wrong one never enters it", () =>
    Effect.gen(function*() {
      const g = yield* make([key("a"), key("b")])
      const a = g.identify("Bearer secret-a")
      expect(g.identify("Bearer secret-a")).toBe(a)
      expect(g.identify("bearer secret-a")).toBe(a)
      expect(g.identify("Bearer secret-b")).not.toBe(a)
      // Near misses of a cached header are refused, every time.
      for (const header of ["Bearer secret-a ", "Bearer secret-", "Bearer secret-aa", "Bearer secret-c", "Bearer secret-c"]) {
        const who = g.identify(header)
        if (header === "Bearer secret-a ") expect(who).toBe(a) // the token is trimmed, as before
        else expect(who).toBeInstanceOf(Gateway.Unauthorized)
      }
      // Many different wrong keys: still refused, and valid ones still found.
      for (let i = 0; i < 500; i++) expect(g.identify(`Bearer wrong-${i}`)).toBeInstanceOf(Gateway.Unauthorized)
      expect(g.identify("Bearer secret-a")).toBe(a)
    }))
})

describe("the fast path's admission for limits decided elsewhere (admitLater)", () => {
  /**
   * A store that decides elsewhere, as Redis does: no synchronous decision,
   * a fiberless one answered when `flush` says the store has answered (the
   * memory store's arithmetic at the TestClock's time), or, while `down`,
   * the fallback effect the Redis store hands back.
   */
  const remote = Effect.gen(function*() {
    const memory = yield* RateLimiter.makeStoreMemory
    const clock = yield* Effect.clock
    const queue: Array<() => void> = []
    const state = { down: false, asked: 0, requests: 0 }
    // In order, up to the first refusal (the rest untaken), at one instant: as the Redis script decides a call.
    const decideAll = (requests: ReadonlyArray<RateLimiter.AcquireRequest>, now: number) => {
      const decisions: Array<RateLimiter.Decision> = []
      for (const req of requests) {
        const d = memory.unsafeAcquire!(req, now)
        decisions.push(d)
        if (!d.granted) break
      }
      return decisions
    }
    const store: Effect.Effect.Success<typeof RateLimiter.RateLimiterStore> = {
      acquire: memory.acquire,
      unsafeAcquireAsync: (requests, done) => {
        state.asked++
        state.requests += requests.length
        if (state.down) return done(Effect.clockWith((c) => Effect.succeed(decideAll(requests, c.unsafeCurrentTimeMillis()))))
        queue.push(() => done(decideAll(requests, clock.unsafeCurrentTimeMillis())))
      }
    }
    const flush = () => {
      while (queue.length > 0) queue.shift()!()
    }
    return { store, flush, state }
  })

  const others = Layer.mergeAll(Spend.layerStoreMemory, Pricing.layer({ cheap: { input: 1, output: 1 } }))

  it.effect("takes the limits admit takes, in its order, answers once the store has, and refuses as admit refuses (TestClock)", () =>
    Effect.gen(function*() {
      const keys = [key("rpm", { requestsPerMinute: 2 }), key("both", { requestsPerMinute: 3, tokensPerMinute: 100 }), key("budget", { budgetUsd: 1, requestsPerMinute: 5 })]
      const r = yield* remote
      const later = yield* Gateway.make(keys).pipe(Effect.provideService(RateLimiter.RateLimiterStore, r.store), Effect.provide(others))
      const reference = yield* make(keys)
      const now = () => Effect.clockWith((c) => Effect.succeed(c.unsafeCurrentTimeMillis()))
      // A key with a budget holds a reservation: not here; nothing asked of the store.
      expect(later.admitLater(later.identify("Bearer secret-budget") as Gateway.Caller, "cheap", 1)).toBeUndefined()
      expect(r.state.asked).toBe(0)
      const run = (c: Gateway.Caller, tokens: number) =>
        Effect.gen(function*() {
          // Decided elsewhere: admitAt cannot answer.
          expect(later.admitAt(c, "cheap", tokens, yield* now())).toBeUndefined()
          const start = later.admitLater(c, "cheap", tokens)!
          const answers: Array<unknown> = []
          start((a) => answers.push(a))
          // Nothing until the store has answered.
          expect(answers).toEqual([])
          r.flush()
          expect(answers).toHaveLength(1)
          return answers[0]
        })
      for (const [name, tokens] of [["rpm", 1], ["both", 40], ["both", 40], ["both", 40], ["both", 1], ["both", 1]] as const) {
        const a = later.identify(`Bearer secret-${name}`) as Gateway.Caller
        const b = reference.identify(`Bearer secret-${name}`) as Gateway.Caller
        for (let i = 0; i < (name === "rpm" ? 3 : 1); i++) {
          const got = yield* run(a, tokens)
          const expected = yield* Effect.either(reference.admit(b, { model: "cheap", promptTokens: tokens, maxOutputTokens: 0 }, tokens))
          if (Either.isRight(expected)) {
            expect(got, `${name} #${i}`).toEqual({ caller: a, model: "cheap", hold: undefined, done: false })
          } else {
            expect(got, `${name} #${i}`).toBeInstanceOf(Gateway.KeyRateLimited)
            expect((got as Gateway.KeyRateLimited).message).toBe(expected.left.message)
            expect(Duration.toMillis((got as Gateway.KeyRateLimited).retryAfter)).toBe(Duration.toMillis((expected.left as Gateway.KeyRateLimited).retryAfter))
          }
        }
      }
      // "both": 40 + 40 tokens admitted, the third 40 refused by tokens (its request counted, as admit counts it),
      // then a request refused by requests (3 a minute), its tokens left untaken by the store.
      const both = later.identify("Bearer secret-both") as Gateway.Caller
      const asked = r.state.asked
      expect(yield* run(both, 1)).toMatchObject({ limit: "requests" })
      // Both limits in one call of the store (one round trip), the count first.
      expect(r.state.asked).toBe(asked + 1)
      expect(r.state.requests).toBe(2 * (asked + 1) - 3) // every call asked for both, but the three of "rpm"
      yield* TestClock.adjust(Duration.minutes(2))
      expect(yield* run(both, 1)).toEqual({ caller: both, model: "cheap", hold: undefined, done: false })
      expect(r.state.asked).toBe(asked + 2)
    }))

  it.effect("a store answering from its fallback: the effect that admits as admit does", () =>
    Effect.gen(function*() {
      const r = yield* remote
      const g = yield* Gateway.make([key("both", { requestsPerMinute: 1, tokensPerMinute: 100 })]).pipe(
        Effect.provideService(RateLimiter.RateLimiterStore, r.store),
        Effect.provide(others)
      )
      r.state.down = true
      const c = g.identify("Bearer secret-both") as Gateway.Caller
      const answer = (tokens: number) => {
        let got: unknown
        g.admitLater(c, "cheap", tokens)!((a) => {
          got = a
        })
        if (!Effect.isEffect(got)) throw new Error("expected an effect")
        return Effect.either(got as Effect.Effect<Gateway.Admitted, Gateway.KeyRateLimited>)
      }
      expect(yield* answer(200)).toMatchObject(Either.left({ limit: "tokens" }))
      expect(yield* answer(10)).toMatchObject(Either.left({ limit: "requests" }))
      yield* TestClock.adjust(Duration.minutes(2))
      expect(yield* answer(10)).toEqual(Either.right({ caller: c, model: "cheap", hold: undefined, done: false }))
    }))
})
