import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as TestClock from "effect/TestClock"
import * as RetryBudget from "../src/RetryBudget.js"

/** Spends until refused (at most `cap` tries); returns how many were granted. */
const drain = (budget: RetryBudget.RetryBudget, cap = 10_000): number => {
  let n = 0
  while (n < cap && budget.trySpend()) n++
  return n
}

const primaries = (budget: RetryBudget.RetryBudget, n: number) => {
  for (let i = 0; i < n; i++) budget.recordPrimary()
}

describe("RetryBudget", () => {
  it.effect("ratio: 20% of the window's primary calls, once that is above the floor", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make({ ratio: 0.2, window: "10 seconds", minPerSecond: 1 })
      primaries(budget, 500)
      // max(0.2 * 500, 1 * 10) = 100
      expect(drain(budget)).toBe(100)
      expect(budget.trySpend()).toBe(false)
      const stats = budget.unsafeStats()
      expect(stats).toMatchObject({ primary: 500, spent: 100, allowed: 100 })
      expect(stats.exhausted).toBeGreaterThanOrEqual(2)
      // More primary calls earn more retries: 5 more primaries, 1 more retry.
      primaries(budget, 5)
      expect(drain(budget)).toBe(1)
    }))

  it.effect("floor: a quiet gateway may still retry minPerSecond * window seconds", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make({ ratio: 0.2, window: "10 seconds", minPerSecond: 3 })
      primaries(budget, 4)
      // max(0.2 * 4, 3 * 10) = 30
      expect(drain(budget)).toBe(30)
      const none = yield* RetryBudget.make({ ratio: 0.5, window: "10 seconds", minPerSecond: 0 })
      expect(none.trySpend()).toBe(false)
      primaries(none, 4)
      expect(drain(none)).toBe(2)
    }))

  it.effect("the window slides: primaries and spent calls leave it a tenth at a time", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make({ ratio: 0.5, window: "10 seconds", minPerSecond: 0 })
      primaries(budget, 100) // t = 0
      yield* TestClock.adjust("5 seconds")
      expect(drain(budget)).toBe(50) // spent at t = 5 s
      yield* TestClock.adjust("4 seconds") // t = 9 s: all still in the window
      expect(budget.trySpend()).toBe(false)
      yield* TestClock.adjust("1 second") // t = 10 s: the primaries of t = 0 left
      expect(budget.unsafeStats()).toMatchObject({ primary: 0, spent: 50 })
      primaries(budget, 100)
      // 0.5 * 100 = 50 allowed, 50 still spent (from t = 5 s): nothing left.
      expect(budget.trySpend()).toBe(false)
      yield* TestClock.adjust("4999 millis") // t = 14.999 s: the spent calls of t = 5 s are still in
      expect(budget.trySpend()).toBe(false)
      yield* TestClock.adjust("1 millis") // t = 15 s: they left
      expect(budget.unsafeStats()).toMatchObject({ primary: 100, spent: 0 })
      expect(drain(budget)).toBe(50)
    }))

  it.effect("a long quiet spell empties the window", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make({ ratio: 0.2, window: "1 second", minPerSecond: 2 })
      primaries(budget, 50)
      expect(drain(budget)).toBe(10)
      yield* TestClock.adjust(Duration.hours(1))
      expect(budget.unsafeStats()).toMatchObject({ primary: 0, spent: 0, allowed: 2 })
      expect(drain(budget)).toBe(2)
    }))

  it.effect("a spend limited to a share of the allowance (a hedge's) leaves the rest to full spends, uncounted when refused", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.make({ ratio: 0.2, window: "10 seconds", minPerSecond: 0 })
      primaries(budget, 100)
      // Allowance 20: spends limited to half take 10, then are refused without counting as exhausted.
      let hedges = 0
      while (hedges < 100 && budget.trySpend(RetryBudget.hedgeShare)) hedges++
      expect(hedges).toBe(10)
      expect(budget.unsafeStats()).toMatchObject({ spent: 10, exhausted: 0 })
      // Full spends (failovers) still have the other 10.
      expect(drain(budget)).toBe(10)
      expect(budget.trySpend(RetryBudget.hedgeShare)).toBe(false)
      expect(budget.unsafeStats()).toMatchObject({ spent: 20, allowed: 20 })
      // Once the whole allowance is spent, a refusal is counted whoever asked.
      expect(budget.unsafeStats().exhausted).toBe(2)
    }))

  it.effect("refusals are counted in breakwater_retry_budget_exhausted_total", () =>
    Effect.gen(function*() {
      const counter = Metric.counter("breakwater_retry_budget_exhausted_total", {
        description: "Retries and failovers not made because the retry budget was spent",
        incremental: true
      })
      const before = (yield* Metric.value(counter)).count
      const budget = yield* RetryBudget.make({ ratio: 0, minPerSecond: 0 })
      expect(budget.trySpend()).toBe(false)
      expect(budget.trySpend()).toBe(false)
      expect((yield* Metric.value(counter)).count - before).toBe(2)
    }))

  it.effect("layer and defaults: 20% over 10 s, at least 3 a second", () =>
    Effect.gen(function*() {
      const budget = yield* RetryBudget.RetryBudget
      expect(budget.unsafeStats().allowed).toBe(30)
      primaries(budget, 1000)
      expect(drain(budget)).toBe(200)
    }).pipe(Effect.provide(RetryBudget.layer())))

  it("rejects nonsense options", () => {
    expect(() => RetryBudget.makeWith({ ratio: -1 }, () => 0)).toThrow(RangeError)
    expect(() => RetryBudget.makeWith({ window: 0 }, () => 0)).toThrow(RangeError)
  })

  it("unlimited never refuses", () => {
    expect(drain(RetryBudget.unlimited, 100)).toBe(100)
  })
})
