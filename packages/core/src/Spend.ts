/**
 * Running cost totals per caller (a gateway key), for budgets, per budget
 * period (a UTC day, week or month, or the key's whole life). Totals live
 * behind {@link SpendStore} so that replicas can share them.
 *
 * Checking a total and adding a cost after the call lets concurrent requests
 * all pass the check before any of them is charged: 40 concurrent requests
 * on a $0.001 key spent $0.0035. So a request first *reserves* an estimate of
 * its cost ({@link SpendStore.reserve}: granted only if settled spend +
 * reservations in flight + this estimate stay within the budget, atomically),
 * and after the call *settles* ({@link SpendStore.settle}): the reservation
 * is released and the real cost added. The overshoot is then bounded by the
 * estimate error: what requests in flight cost beyond their estimates.
 *
 * A reservation that is never settled (a replica that died mid-request)
 * expires after `holdTimeout` (default 15 minutes), so it cannot lock a
 * budget for longer.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

// ---------------------------------------------------------------------------
// Periods

export type Period = "day" | "week" | "month" | "total"

/** One budget period: its id and its bounds (epoch millis, UTC). */
export interface PeriodWindow {
  /** `day:2026-11-30`, `week:2026-11-30` (its Monday), `month:2026-11`; undefined for `total`. */
  readonly id: string | undefined
  readonly start: number | undefined
  /** When it ends, that is when the spend resets. */
  readonly end: number | undefined
}

const DAY = 86_400_000
const iso = (millis: number) => new Date(millis).toISOString().slice(0, 10)

/** The UTC calendar period that contains `now`; weeks start on Monday (ISO 8601). */
export const periodAt = (period: Period, now: number): PeriodWindow => {
  switch (period) {
    case "total":
      return { id: undefined, start: undefined, end: undefined }
    case "day": {
      const start = Math.floor(now / DAY) * DAY
      return { id: `day:${iso(start)}`, start, end: start + DAY }
    }
    case "week": {
      const today = Math.floor(now / DAY) * DAY
      // 1970-01-01 was a Thursday: days since the last Monday.
      const sinceMonday = (Math.floor(today / DAY) + 3) % 7
      const start = today - sinceMonday * DAY
      return { id: `week:${iso(start)}`, start, end: start + 7 * DAY }
    }
    case "month": {
      const d = new Date(now)
      const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1)
      const end = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1)
      return { id: `month:${iso(start).slice(0, 7)}`, start, end }
    }
  }
}

// ---------------------------------------------------------------------------
// The store

/** Whose spend, in which period. A plain string is a key's lifetime total. */
export interface Account {
  readonly key: string
  /** The period's id ({@link PeriodWindow.id}); undefined for the lifetime total. */
  readonly period?: string | undefined
  /** When the period ends (epoch millis): a store may forget the total some time after. */
  readonly end?: number | undefined
}

export type AccountLike = string | Account

export const account = (a: AccountLike): Account => typeof a === "string" ? { key: a } : a

/** A granted reservation, to be settled (or released) once. */
export interface Hold {
  readonly account: Account
  readonly id: string
  readonly usd: number
  /** Held by the store's memory (Redis was unavailable), not by the shared store. */
  readonly local?: boolean | undefined
}

export type Reservation =
  | { readonly granted: true; readonly hold: Hold; readonly spent: number; readonly held: number }
  | { readonly granted: false; readonly spent: number; readonly held: number }

export interface Usage {
  /** Settled spend. */
  readonly spent: number
  /** Reserved by requests in flight. */
  readonly held: number
}

export class SpendStore extends Context.Tag("@breakwater/core/SpendStore")<
  SpendStore,
  {
    /** Adds `usd` to the account's total and returns the new total. */
    readonly add: (account: AccountLike, usd: number) => Effect.Effect<number>
    readonly total: (account: AccountLike) => Effect.Effect<number>
    /**
     * Holds `usd` if settled spend + holds in flight + `usd` stay within
     * `budget` (and the spend is below it), atomically.
     */
    readonly reserve: (account: AccountLike, usd: number, budget: number) => Effect.Effect<Reservation>
    /** Releases the hold and adds `usd` (the real cost); returns the new total. */
    readonly settle: (hold: Hold, usd: number) => Effect.Effect<number>
    readonly usage: (account: AccountLike) => Effect.Effect<Usage>
    /**
     * Sets the account's settled spend to 0 (holds in flight stay, and settle
     * later). False when the shared store could not be reached (nothing reset there).
     */
    readonly reset: (account: AccountLike) => Effect.Effect<boolean>
  }
>() {}

export interface StoreOptions {
  /** How long an unsettled reservation is held at most. Default 15 minutes. */
  readonly holdTimeout?: Duration.DurationInput | undefined
}

/**
 * The refusal rule, shared by every store (the Redis script spells the
 * same). A picodollar of slack, so that twenty $0.05 holds fit in $1 despite
 * binary fractions.
 */
export const fits = (spent: number, held: number, usd: number, budget: number): boolean =>
  spent < budget && spent + held + usd <= budget + 1e-12

/** `<period>\u0000<key>`: unambiguous whatever the key's name. */
export const accountId = (a: Account): string => a.period === undefined ? a.key : `${a.period}\u0000${a.key}`

/**
 * Holds in memory: per account, a running sum and the holds in the order
 * they were made (hence of expiry), so that expired ones are dropped from the
 * front. Used by the memory store, and by the Redis store while Redis is away.
 */
export const makeHolds = (holdTimeoutMillis: number) => {
  interface Entry {
    sum: number
    readonly holds: Map<string, { readonly usd: number; readonly expires: number }>
  }
  const accounts = new Map<string, Entry>()
  let seq = 0
  const prune = (id: string, now: number): Entry | undefined => {
    const e = accounts.get(id)
    if (e === undefined) return undefined
    for (const [holdId, h] of e.holds) {
      if (h.expires > now) break
      e.holds.delete(holdId)
      e.sum -= h.usd
    }
    if (e.holds.size === 0) {
      accounts.delete(id)
      return undefined
    }
    return e
  }
  return {
    held: (a: Account, now: number): number => prune(accountId(a), now)?.sum ?? 0,
    /** Holds `usd` when it fits `spent`; the same rule as every store. */
    reserve: (a: Account, usd: number, budget: number, spent: number, now: number, local?: boolean): Reservation => {
      const id = accountId(a)
      const e = prune(id, now)
      const held = e?.sum ?? 0
      if (!fits(spent, held, usd, budget)) return { granted: false, spent, held }
      const holdId = `m${++seq}`
      const entry = e ?? { sum: 0, holds: new Map() }
      entry.holds.set(holdId, { usd, expires: now + holdTimeoutMillis })
      entry.sum += usd
      accounts.set(id, entry)
      const hold: Hold = local === true ? { account: a, id: holdId, usd, local } : { account: a, id: holdId, usd }
      return { granted: true, hold, spent, held: entry.sum }
    },
    release: (hold: Hold): void => {
      const id = accountId(hold.account)
      const e = accounts.get(id)
      const h = e?.holds.get(hold.id)
      if (e === undefined || h === undefined) return
      e.holds.delete(hold.id)
      e.sum -= h.usd
      if (e.holds.size === 0) accounts.delete(id)
    }
  }
}

const holdTimeoutOf = (options: StoreOptions | undefined) =>
  Duration.toMillis(Duration.decode(options?.holdTimeout ?? Duration.minutes(15)))

export const makeStoreMemory = (options?: StoreOptions): Effect.Effect<Context.Tag.Service<SpendStore>> =>
  Effect.sync(() => {
    const totals = new Map<string, number>()
    const holds = makeHolds(holdTimeoutOf(options))
    // Periods that have ended are forgotten (at most one per key and period kind stays).
    const ends = new Map<string, number>()
    const forgetEnded = (now: number) => {
      for (const [id, end] of ends) {
        if (end <= now) {
          ends.delete(id)
          totals.delete(id)
        }
      }
    }
    const add = (a: AccountLike, usd: number) =>
      Effect.sync(() => {
        const acc = account(a)
        const id = accountId(acc)
        const next = (totals.get(id) ?? 0) + usd
        totals.set(id, next)
        if (acc.end !== undefined) ends.set(id, acc.end)
        return next
      })
    return {
      add,
      total: (a) => Effect.sync(() => totals.get(accountId(account(a))) ?? 0),
      reserve: (a, usd, budget) =>
        Effect.map(Clock.currentTimeMillis, (now) => {
          if (ends.size > 0) forgetEnded(now)
          const acc = account(a)
          return holds.reserve(acc, usd, budget, totals.get(accountId(acc)) ?? 0, now)
        }),
      settle: (hold, usd) =>
        Effect.suspend(() => {
          holds.release(hold)
          return add(hold.account, usd)
        }),
      usage: (a) =>
        Effect.map(Clock.currentTimeMillis, (now) => {
          const acc = account(a)
          return { spent: totals.get(accountId(acc)) ?? 0, held: holds.held(acc, now) }
        }),
      reset: (a) =>
        Effect.sync(() => {
          totals.delete(accountId(account(a)))
          return true
        })
    }
  })

export const layerStoreMemory: Layer.Layer<SpendStore> = Layer.effect(SpendStore, makeStoreMemory())
