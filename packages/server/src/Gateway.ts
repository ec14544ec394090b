/**
 * Who may call the gateway, and how much: gateway keys with optional
 * requests-per-minute, tokens-per-minute and a USD budget each. Keys are
 * compared in constant time (SHA-256 digests through `timingSafeEqual`,
 * against every configured key), so response timing says nothing about how
 * much of a guess was right.
 *
 * With no keys configured the gateway is open: any caller is accepted as
 * "anonymous" (the server then binds to loopback only, and says so).
 */
import { RateLimiter, Spend } from "@breakwater/core"
import { createHash, timingSafeEqual } from "node:crypto"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type { KeyConfig } from "./Config.js"

export type { KeyConfig }

export interface Caller {
  readonly name: string
  readonly requestLimit: RateLimiter.RateLimiter | undefined
  readonly tokenLimit: RateLimiter.RateLimiter | undefined
  readonly budgetUsd: number | undefined
}

export class Unauthorized extends Data.TaggedError("Unauthorized")<{ readonly reason: "missing" | "invalid" }> {
  override get message(): string {
    return this.reason === "missing"
      ? "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
      : "Incorrect API key provided."
  }
}

export class KeyRateLimited extends Data.TaggedError("KeyRateLimited")<{
  readonly key: string
  readonly limit: "requests" | "tokens"
  readonly retryAfter: Duration.Duration
}> {
  override get message(): string {
    return `Rate limit reached for key '${this.key}' (${this.limit} per minute). Retry after ${
      Math.ceil(Duration.toMillis(this.retryAfter) / 1000)
    }s.`
  }
}

export class BudgetExceeded extends Data.TaggedError("BudgetExceeded")<{
  readonly key: string
  readonly budgetUsd: number
  readonly spentUsd: number
}> {
  override get message(): string {
    return `Budget of $${this.budgetUsd.toFixed(2)} for key '${this.key}' is spent ($${this.spentUsd.toFixed(4)}).`
  }
}

export interface Gateway {
  /** True when no keys are configured: every caller is "anonymous". */
  readonly open: boolean
  readonly authenticate: (authorization: string | undefined) => Effect.Effect<Caller, Unauthorized>
  /** Checks the caller's budget and takes from its limits before a request. */
  readonly admit: (caller: Caller, estimatedTokens: number) => Effect.Effect<void, KeyRateLimited | BudgetExceeded>
  /** Adds a request's cost to the caller's spend. */
  readonly charge: (caller: Caller, usd: number | undefined) => Effect.Effect<void>
}

export const Gateway = Context.GenericTag<Gateway>("@breakwater/server/Gateway")

const digest = (value: string): Buffer => createHash("sha256").update(value).digest()

/**
 * The token of an `Authorization: Bearer <token>` header, or undefined. The
 * scheme is case-insensitive (RFC 9110, 11.1): `bearer` and `BEARER` work too.
 */
export const bearerToken = (authorization: string | undefined): string | undefined => {
  if (authorization === undefined || authorization.length < 8) return undefined
  const scheme = authorization.slice(0, 7)
  if (scheme !== "Bearer " && scheme.toLowerCase() !== "bearer ") return undefined
  const token = authorization.slice(7).trim()
  return token === "" ? undefined : token
}

const anonymous: Caller = { name: "anonymous", requestLimit: undefined, tokenLimit: undefined, budgetUsd: undefined }

export const make = (
  keys: ReadonlyArray<KeyConfig>
): Effect.Effect<Gateway, never, RateLimiter.RateLimiterStore | Spend.SpendStore> =>
  Effect.gen(function*() {
    const spend = yield* Spend.SpendStore
    const callers = yield* Effect.forEach(keys, (k) =>
      Effect.gen(function*() {
        const requestLimit = k.requestsPerMinute === undefined ? undefined : yield* RateLimiter.make({
          name: `key:${k.name}:rpm`,
          limit: k.requestsPerMinute,
          window: Duration.minutes(1),
          algorithm: "sliding-window"
        })
        const tokenLimit = k.tokensPerMinute === undefined ? undefined : yield* RateLimiter.make({
          name: `key:${k.name}:tpm`,
          limit: k.tokensPerMinute,
          window: Duration.minutes(1),
          algorithm: "sliding-window"
        })
        const caller: Caller = { name: k.name, requestLimit, tokenLimit, budgetUsd: k.budgetUsd }
        return [digest(Redacted.value(k.key)), caller] as const
      }))

    const authenticate = (authorization: string | undefined): Effect.Effect<Caller, Unauthorized> => {
      if (callers.length === 0) return Effect.succeed(anonymous)
      const token = bearerToken(authorization)
      if (token === undefined) return Effect.fail(new Unauthorized({ reason: "missing" }))
      const presented = digest(token)
      // Compare against every key, without stopping early.
      let found: Caller | undefined
      for (const [d, caller] of callers) {
        if (timingSafeEqual(d, presented) && found === undefined) found = caller
      }
      return found === undefined ? Effect.fail(new Unauthorized({ reason: "invalid" })) : Effect.succeed(found)
    }

    const limited = (caller: Caller, limit: "requests" | "tokens") => (e: RateLimiter.RateLimited | RateLimiter.RateLimiterStoreError) =>
      e._tag === "RateLimited"
        ? Effect.fail(new KeyRateLimited({ key: caller.name, limit, retryAfter: e.retryAfter }))
        : Effect.void // a failing store must not refuse traffic

    const admit = (caller: Caller, estimatedTokens: number): Effect.Effect<void, KeyRateLimited | BudgetExceeded> => {
      let check: Effect.Effect<void, KeyRateLimited | BudgetExceeded> = Effect.void
      if (caller.budgetUsd !== undefined) {
        const budget = caller.budgetUsd
        check = Effect.flatMap(spend.total(caller.name), (spent) =>
          spent >= budget ? Effect.fail(new BudgetExceeded({ key: caller.name, budgetUsd: budget, spentUsd: spent })) : Effect.void)
      }
      if (caller.requestLimit !== undefined) {
        check = Effect.zipRight(check, Effect.catchAll(Effect.asVoid(caller.requestLimit.acquire(caller.name)), limited(caller, "requests")))
      }
      if (caller.tokenLimit !== undefined) {
        check = Effect.zipRight(
          check,
          Effect.catchAll(Effect.asVoid(caller.tokenLimit.acquire(caller.name, Math.max(1, estimatedTokens))), limited(caller, "tokens"))
        )
      }
      return check
    }

    const charge = (caller: Caller, usd: number | undefined): Effect.Effect<void> =>
      usd === undefined || usd <= 0 || caller.budgetUsd === undefined ? Effect.void : Effect.asVoid(spend.add(caller.name, usd))

    return Gateway.of({ open: callers.length === 0, authenticate, admit, charge })
  })

export const layer = (
  keys: ReadonlyArray<KeyConfig>
): Layer.Layer<Gateway, never, RateLimiter.RateLimiterStore | Spend.SpendStore> => Layer.effect(Gateway, make(keys))
