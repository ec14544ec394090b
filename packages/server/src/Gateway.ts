/**
 * Who may call the gateway, and how much: gateway keys with optional
 * requests-per-minute, tokens-per-minute and a USD budget per period each.
 * Keys are compared in constant time (SHA-256 digests through
 * `timingSafeEqual`, against every configured key), so response timing says
 * nothing about how much of a guess was right.
 *
 * Budgets hold under concurrency: before the call a request reserves an
 * estimate of its cost (prompt tokens estimated from the text, output tokens
 * from `max_completion_tokens` / `max_tokens` or `estimatedOutputTokens`, at
 * the model's price) and is refused when spend + reservations in flight + its
 * estimate would pass the budget; after the call it settles to the real cost
 * (or, when the upstream reported no usage, to the estimate). So the
 * overshoot is bounded by the estimate error of the requests in flight.
 *
 * With no keys configured the gateway is open: any caller is accepted as
 * "anonymous" (the server then binds to loopback only, and says so).
 */
import { Pricing, RateLimiter, Spend } from "@breakwater/core"
import type { Usage } from "@breakwater/core/OpenAI"
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
  readonly budgetPeriod: Spend.Period
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

/** USD with enough digits for small budgets: `$0.0001`, `$0.00015`, `$12.50`. */
export const formatUsd = (usd: number): string => {
  if (!Number.isFinite(usd)) return String(usd)
  if (usd === 0) return "0.00"
  const decimals = Math.min(10, Math.max(2, Math.ceil(-Math.log10(Math.abs(usd))) + 3))
  const fixed = usd.toFixed(decimals)
  // Trailing zeros beyond the cents say nothing.
  return fixed.replace(/(\.\d\d\d*?)0+$/, "$1")
}

export class BudgetExceeded extends Data.TaggedError("BudgetExceeded")<{
  readonly key: string
  readonly budgetUsd: number
  readonly period: Spend.Period
  /** Settled spend in the period. */
  readonly spentUsd: number
  /** Reserved by this key's requests in flight. */
  readonly heldUsd: number
  /** What this request might cost (its reservation). */
  readonly estimateUsd: number
  /** When the period's spend resets (epoch millis); undefined for `total`. */
  readonly resetsAt: number | undefined
}> {
  override get message(): string {
    const per = this.period === "total" ? "" : ` per ${this.period}`
    const reset = this.resetsAt === undefined ? "" : ` It resets at ${new Date(this.resetsAt).toISOString()}.`
    if (this.spentUsd >= this.budgetUsd) {
      return `Budget of $${formatUsd(this.budgetUsd)}${per} for key '${this.key}' is spent ($${
        formatUsd(this.spentUsd)
      } used).${reset}`
    }
    const left = Math.max(0, this.budgetUsd - this.spentUsd - this.heldUsd)
    return `This request may cost up to $${formatUsd(this.estimateUsd)} (estimated), more than the $${
      formatUsd(left)
    } left of the $${formatUsd(this.budgetUsd)}${per} budget of key '${this.key}' ($${formatUsd(this.spentUsd)} spent, $${
      formatUsd(this.heldUsd)
    } held by requests in flight). Lower max_tokens, or retry when requests in flight have finished.${reset}`
  }
}

/** `pricing.unknown: reject`: a key with a budget asked for a model without a price. */
export class ModelNotPriced extends Data.TaggedError("ModelNotPriced")<{
  readonly key: string
  readonly model: string
}> {
  override get message(): string {
    return `The model '${this.model}' has no price on this gateway, so key '${this.key}', which has a budget, may not use it. Ask the gateway's operator to add its price.`
  }
}

/** What the caller asks for, for the budget's estimate. */
export interface Admission {
  readonly model: string
  /** Estimated prompt tokens. */
  readonly promptTokens: number
  /** `max_completion_tokens` or `max_tokens`, when the request set one. */
  readonly maxOutputTokens: number | undefined
}

/** An admitted request: settle it, or release it, once. */
export interface Admitted {
  readonly caller: Caller
  readonly model: string
  /** The reservation; undefined for keys without a budget. */
  readonly hold: Spend.Hold | undefined
  /** Settled or released already. */
  done: boolean
}

/**
 * How a charge was priced: `table` (the model's price), `unpriced` (a model
 * without a price, at the `pricing.unknown` price), `estimate` (no usage came
 * back: the reservation is charged).
 */
export type CostBasis = "table" | "unpriced" | "estimate"

export interface Charged {
  readonly usd: number | undefined
  readonly basis: CostBasis
}

/** A key as `GET /admin/keys` shows it (never the key itself). */
export interface KeyView {
  readonly name: string
  readonly budgetUsd: number | null
  readonly budgetPeriod: Spend.Period
  /** Spend in the current period; null for a key without a budget (not tracked). */
  readonly spentUsd: number | null
  readonly heldUsd: number | null
  readonly remainingUsd: number | null
  readonly periodStart: string | null
  readonly resetsAt: string | null
  readonly requestsPerMinute: number | null
  readonly tokensPerMinute: number | null
}

export interface Options {
  /**
   * The names a request for `model` may be sent as (one per upstream that
   * serves it, aliases resolved); empty when no upstream serves it. Default:
   * the model itself.
   */
  readonly targets?: ((model: string) => ReadonlyArray<string>) | undefined
  /** How keys with a budget pay for models without a price: the highest price (default), refusal, or this price. */
  readonly unknown?: "highest" | "reject" | Pricing.Price | undefined
  /** Output tokens assumed for a request without `max_tokens`. Default 1024. */
  readonly estimatedOutputTokens?: number | undefined
}

export interface Gateway {
  /** True when no keys are configured: every caller is "anonymous". */
  readonly open: boolean
  readonly authenticate: (authorization: string | undefined) => Effect.Effect<Caller, Unauthorized>
  /** {@link authenticate}, as a plain function: the caller, or why not (for the request path). */
  readonly identify: (authorization: string | undefined) => Caller | Unauthorized
  /** Reserves the request's estimated cost against the caller's budget, then takes from its limits. */
  readonly admit: (
    caller: Caller,
    admission: Admission,
    estimatedTokens: number
  ) => Effect.Effect<Admitted, KeyRateLimited | BudgetExceeded | ModelNotPriced>
  /**
   * {@link admit} without an Effect, when there is nothing to check: a key
   * without a budget or limits is admitted as it is. Undefined: call `admit`.
   */
  readonly admitNow: (caller: Caller, model: string) => Admitted | undefined
  /**
   * {@link admit} without an Effect for a key without a budget whose limits
   * decide in this process (memory store), at `now` (the Clock's millis):
   * admitted, or refused by a limit as `admit` refuses (the same limits
   * taken, in the same order). Undefined: call `admit` (nothing was taken).
   */
  readonly admitAt: (caller: Caller, model: string, estimatedTokens: number, now: number) => Admitted | KeyRateLimited | undefined
  /**
   * {@link admitAt} for a key without a budget whose limits decide
   * elsewhere (Redis store): the admission to start, which gives `done`,
   * once the store has answered (without a fiber), what `admitAt` would
   * return, or, while the store answers from its fallback, the effect that
   * admits as `admit` does. Undefined: call `admit` (nothing was taken).
   * `done` must not throw.
   */
  readonly admitLater: (
    caller: Caller,
    model: string,
    estimatedTokens: number
  ) => ((done: (admitted: Admitted | KeyRateLimited | Effect.Effect<Admitted, KeyRateLimited>) => void) => void) | undefined
  /**
   * {@link settle} without an Effect, for a request that holds no
   * reservation (a key without a budget): its charge. Undefined: call `settle`.
   */
  readonly settleNow: (
    admitted: Admitted,
    result: { readonly usage: Usage | undefined; readonly costUsd: number | undefined }
  ) => Charged | undefined
  /** Settles a request to its real cost (the reservation is released). Once; later calls do nothing. */
  readonly settle: (
    admitted: Admitted,
    result: { readonly usage: Usage | undefined; readonly costUsd: number | undefined }
  ) => Effect.Effect<Charged>
  /** Releases the reservation of a request that failed or was interrupted. Once; nothing after a settle. */
  readonly release: (admitted: Admitted) => Effect.Effect<void>
  readonly keys: Effect.Effect<ReadonlyArray<KeyView>>
  /** Resets the current period's spend of key `name`: undefined when there is no such key, false when the store could not be reached. */
  readonly resetSpend: (name: string) => Effect.Effect<{ readonly view: KeyView; readonly reset: boolean } | undefined>
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

const anonymous: Caller = {
  name: "anonymous",
  requestLimit: undefined,
  tokenLimit: undefined,
  budgetUsd: undefined,
  budgetPeriod: "total"
}

export const make = (
  keys: ReadonlyArray<KeyConfig>,
  options: Options = {}
): Effect.Effect<Gateway, never, RateLimiter.RateLimiterStore | Spend.SpendStore | Pricing.Pricing> =>
  Effect.gen(function*() {
    const spend = yield* Spend.SpendStore
    const pricing = yield* Pricing.Pricing
    const targets = options.targets ?? ((model: string) => [model])
    const unknown = options.unknown ?? "highest"
    const fallback: Pricing.Price = typeof unknown === "object" ? unknown : pricing.highest
    const outputTokens = options.estimatedOutputTokens ?? 1024
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
        const caller: Caller = {
          name: k.name,
          requestLimit,
          tokenLimit,
          budgetUsd: k.budgetUsd,
          budgetPeriod: k.budgetPeriod ?? "total"
        }
        return [digest(Redacted.value(k.key)), caller] as const
      }))

    const MISSING = new Unauthorized({ reason: "missing" })
    const INVALID = new Unauthorized({ reason: "invalid" })

    // `Authorization` headers already found to carry a configured key, in
    // memory only (never logged): a repeat caller costs one Map lookup, not
    // a SHA-256 and a comparison per key. Only valid keys enter it (a wrong
    // key is hashed and compared every time), so it holds a few spellings of
    // each configured key; bounded all the same.
    const known = new Map<string, Caller>()
    const KNOWN_MAX = Math.max(64, keys.length * 4)

    const identify = (authorization: string | undefined): Caller | Unauthorized => {
      if (callers.length === 0) return anonymous
      if (authorization !== undefined) {
        const hit = known.get(authorization)
        if (hit !== undefined) return hit
      }
      const token = bearerToken(authorization)
      if (token === undefined) return MISSING
      const presented = digest(token)
      // Compare against every key, without stopping early.
      let found: Caller | undefined
      for (const [d, caller] of callers) {
        if (timingSafeEqual(d, presented) && found === undefined) found = caller
      }
      if (found === undefined) return INVALID
      if (known.size < KNOWN_MAX) known.set(authorization!, found)
      return found
    }

    const authenticate = (authorization: string | undefined): Effect.Effect<Caller, Unauthorized> => {
      const who = identify(authorization)
      // A new error each time: Effect may annotate what fails (the shared ones are for `identify` alone).
      return who instanceof Unauthorized ? Effect.fail(new Unauthorized({ reason: who.reason })) : Effect.succeed(who)
    }

    const limited = (caller: Caller, limit: "requests" | "tokens") => (e: RateLimiter.RateLimited | RateLimiter.RateLimiterStoreError) =>
      e._tag === "RateLimited"
        ? Effect.fail(new KeyRateLimited({ key: caller.name, limit, retryAfter: e.retryAfter }))
        : Effect.void // a failing store must not refuse traffic

    /** The account a budget is charged to now: the key's current period. */
    const accountAt = (caller: Caller, now: number): { account: Spend.Account; window: Spend.PeriodWindow } => {
      const window = Spend.periodAt(caller.budgetPeriod, now)
      return {
        account: window.id === undefined ? { key: caller.name } : { key: caller.name, period: window.id, end: window.end },
        window
      }
    }

    /**
     * The price to reserve at: the highest of the names the request may be
     * sent as; undefined when some has no price (then the fallback applies).
     */
    const priceOf = (model: string): { readonly price: Pricing.Price; readonly unpriced: boolean } | undefined => {
      const names = targets(model)
      if (names.length === 0) return undefined // no upstream serves it: the relay says so, at no cost
      let input = 0
      let output = 0
      let unpriced = false
      for (const name of names) {
        const p = pricing.price(name)
        if (p === undefined) unpriced = true
        else {
          if (p.input > input) input = p.input
          if (p.output > output) output = p.output
        }
      }
      if (unpriced) {
        input = Math.max(input, fallback.input)
        output = Math.max(output, fallback.output)
      }
      return { price: { input, output }, unpriced }
    }

    const limits = (caller: Caller, estimatedTokens: number): Effect.Effect<void, KeyRateLimited> => {
      let check: Effect.Effect<void, KeyRateLimited> = Effect.void
      if (caller.requestLimit !== undefined) {
        check = Effect.catchAll(Effect.asVoid(caller.requestLimit.acquire(caller.name)), limited(caller, "requests"))
      }
      if (caller.tokenLimit !== undefined) {
        check = Effect.zipRight(
          check,
          Effect.catchAll(Effect.asVoid(caller.tokenLimit.acquire(caller.name, Math.max(1, estimatedTokens))), limited(caller, "tokens"))
        )
      }
      return check
    }

    const free = (caller: Caller, model: string): Admitted => ({ caller, model, hold: undefined, done: false })

    const admitNow = (caller: Caller, model: string): Admitted | undefined =>
      caller.budgetUsd === undefined && caller.requestLimit === undefined && caller.tokenLimit === undefined
        ? free(caller, model)
        : undefined

    const NO_TAGS: ReadonlyArray<never> = []

    const admitAt = (caller: Caller, model: string, estimatedTokens: number, now: number): Admitted | KeyRateLimited | undefined => {
      if (caller.budgetUsd !== undefined) return undefined
      const requests = caller.requestLimit
      const tokens = caller.tokenLimit
      if ((requests !== undefined && requests.unsafeTake === undefined) || (tokens !== undefined && tokens.unsafeTake === undefined)) {
        return undefined
      }
      if (requests !== undefined) {
        const wait = requests.unsafeTake!(caller.name, 1, now, NO_TAGS)
        if (wait !== undefined) return new KeyRateLimited({ key: caller.name, limit: "requests", retryAfter: Duration.millis(wait) })
      }
      if (tokens !== undefined) {
        const wait = tokens.unsafeTake!(caller.name, Math.max(1, estimatedTokens), now, NO_TAGS)
        if (wait !== undefined) return new KeyRateLimited({ key: caller.name, limit: "tokens", retryAfter: Duration.millis(wait) })
      }
      return free(caller, model)
    }

    const fiberless = (limiter: RateLimiter.RateLimiter | undefined): boolean =>
      limiter === undefined || limiter.unsafeTakeAsync !== undefined

    const admitLater = (
      caller: Caller,
      model: string,
      estimatedTokens: number
    ): ((done: (admitted: Admitted | KeyRateLimited | Effect.Effect<Admitted, KeyRateLimited>) => void) => void) | undefined => {
      if (caller.budgetUsd !== undefined) return undefined
      const requests = caller.requestLimit
      const tokens = caller.tokenLimit
      if (!fiberless(requests) || !fiberless(tokens) || (requests === undefined && tokens === undefined)) return undefined
      // Requests first, then tokens only if the request count admitted it, as `admit` takes them:
      // both in one call of the store (one round trip, not two in a row).
      const takes: Array<RateLimiter.Take> = []
      if (requests !== undefined) takes.push({ limiter: requests, key: caller.name, cost: 1 })
      if (tokens !== undefined) takes.push({ limiter: tokens, key: caller.name, cost: Math.max(1, estimatedTokens) })
      const refused = (refusal: RateLimiter.Refusal) =>
        new KeyRateLimited({
          key: caller.name,
          limit: takes[refusal.index]!.limiter === requests ? "requests" : "tokens",
          retryAfter: Duration.millis(refusal.wait)
        })
      return (done) => {
        const started = RateLimiter.unsafeTakeAllAsync(takes, NO_TAGS, (refusal) => {
          if (Effect.isEffect(refusal)) {
            // The store answered from its fallback: a failing store admits, as `admit`'s limits do.
            return done(Effect.flatMap(
              Effect.orElseSucceed(refusal, () => undefined),
              (r) => r === undefined ? Effect.succeed(free(caller, model)) : Effect.fail(refused(r))
            ))
          }
          done(refusal === undefined ? free(caller, model) : refused(refusal))
        })
        // Limiters of different stores (not made by this gateway): the general path.
        if (!started) done(Effect.as(limits(caller, estimatedTokens), free(caller, model)))
      }
    }

    const admit = (
      caller: Caller,
      admission: Admission,
      estimatedTokens: number
    ): Effect.Effect<Admitted, KeyRateLimited | BudgetExceeded | ModelNotPriced> => {
      if (caller.budgetUsd === undefined) {
        return Effect.as(limits(caller, estimatedTokens), free(caller, admission.model))
      }
      const budget = caller.budgetUsd
      const priced = priceOf(admission.model)
      if (priced?.unpriced === true && unknown === "reject") {
        return Effect.fail(new ModelNotPriced({ key: caller.name, model: admission.model }))
      }
      const estimate = priced === undefined
        ? 0
        : (admission.promptTokens * priced.price.input + (admission.maxOutputTokens ?? outputTokens) * priced.price.output) /
          1_000_000
      return Effect.clockWith((clock) => {
        const { account, window } = accountAt(caller, clock.unsafeCurrentTimeMillis())
        return Effect.flatMap(spend.reserve(account, estimate, budget), (r): Effect.Effect<Admitted, KeyRateLimited | BudgetExceeded> => {
          if (!r.granted) {
            return Effect.fail(
              new BudgetExceeded({
                key: caller.name,
                budgetUsd: budget,
                period: caller.budgetPeriod,
                spentUsd: r.spent,
                heldUsd: r.held,
                estimateUsd: estimate,
                resetsAt: window.end
              })
            )
          }
          const admitted: Admitted = { caller, model: admission.model, hold: r.hold, done: false }
          // Refused by a rate limit after all: give the reservation back.
          return Effect.as(Effect.tapError(limits(caller, estimatedTokens), () => release(admitted)), admitted)
        })
      })
    }

    // One warning per unpriced model (at most 100 names), not one per request.
    const warned = new Set<string>()
    const warnUnpriced = (admitted: Admitted): Effect.Effect<void> => {
      if (warned.has(admitted.model) || warned.size >= 100) return Effect.void
      warned.add(admitted.model)
      return Effect.logWarning(
        `model '${admitted.model}' has no price: keys with a budget are charged at $${fallback.input}/$${fallback.output} per million tokens (pricing.unknown)`
      ).pipe(Effect.annotateLogs({ key: admitted.caller.name, model: admitted.model }))
    }

    // Both are lazy: `Effect.ensuring(x, release(a))` must not release before x has run.
    const settle = (
      admitted: Admitted,
      result: { readonly usage: Usage | undefined; readonly costUsd: number | undefined }
    ): Effect.Effect<Charged> =>
      admitted.hold === undefined
        ? Effect.succeed({ usd: result.costUsd, basis: "table" })
        : Effect.suspend(() => settleHeld(admitted, result))

    const settleFree = (
      admitted: Admitted,
      result: { readonly usage: Usage | undefined; readonly costUsd: number | undefined }
    ): Charged | undefined => admitted.hold === undefined ? { usd: result.costUsd, basis: "table" } : undefined

    const settleHeld = (
      admitted: Admitted,
      result: { readonly usage: Usage | undefined; readonly costUsd: number | undefined }
    ): Effect.Effect<Charged> => {
      const hold = admitted.hold
      if (hold === undefined) return Effect.succeed({ usd: result.costUsd, basis: "table" })
      if (admitted.done) return Effect.succeed({ usd: undefined, basis: "table" })
      admitted.done = true
      let usd = result.costUsd
      let basis: CostBasis = "table"
      if (usd === undefined) {
        if (result.usage !== undefined) {
          // Usage but no cost: the model has no price.
          usd = Pricing.costAt(fallback, result.usage)
          basis = "unpriced"
        } else {
          // No usage came back: charge what was reserved, never nothing.
          usd = hold.usd
          basis = "estimate"
        }
      }
      const charged: Charged = { usd, basis }
      const settled = Effect.as(spend.settle(hold, Math.max(0, usd)), charged)
      return basis === "unpriced" ? Effect.zipLeft(settled, warnUnpriced(admitted)) : settled
    }

    const release = (admitted: Admitted): Effect.Effect<void> =>
      admitted.hold === undefined ? Effect.void : Effect.suspend(() => {
        if (admitted.hold === undefined || admitted.done) return Effect.void
        admitted.done = true
        return Effect.asVoid(spend.settle(admitted.hold, 0))
      })

    const configured = keys.map((k, i) => [k, callers[i]![1]] as const)

    const viewOf = (k: KeyConfig, caller: Caller, now: number): Effect.Effect<KeyView> => {
      const base = {
        name: k.name,
        budgetUsd: caller.budgetUsd ?? null,
        budgetPeriod: caller.budgetPeriod,
        requestsPerMinute: k.requestsPerMinute ?? null,
        tokensPerMinute: k.tokensPerMinute ?? null
      }
      if (caller.budgetUsd === undefined) {
        return Effect.succeed({ ...base, spentUsd: null, heldUsd: null, remainingUsd: null, periodStart: null, resetsAt: null })
      }
      const budget = caller.budgetUsd
      const { account, window } = accountAt(caller, now)
      return Effect.map(spend.usage(account), (u): KeyView => ({
        ...base,
        spentUsd: u.spent,
        heldUsd: u.held,
        remainingUsd: Math.max(0, budget - u.spent - u.held),
        periodStart: window.start === undefined ? null : new Date(window.start).toISOString(),
        resetsAt: window.end === undefined ? null : new Date(window.end).toISOString()
      }))
    }

    const now = Effect.clockWith((clock) => Effect.succeed(clock.unsafeCurrentTimeMillis()))

    const keysView = Effect.flatMap(now, (t) => Effect.forEach(configured, ([k, caller]) => viewOf(k, caller, t)))

    const resetSpend = (name: string) =>
      Effect.gen(function*() {
        const found = configured.find(([k]) => k.name === name)
        if (found === undefined) return undefined
        const [k, caller] = found
        const t = yield* now
        const reset = caller.budgetUsd === undefined ? true : yield* spend.reset(accountAt(caller, t).account)
        return { view: yield* viewOf(k, caller, t), reset }
      })

    return Gateway.of({
      open: callers.length === 0,
      authenticate,
      identify,
      admit,
      admitNow,
      admitAt,
      admitLater,
      settle,
      settleNow: settleFree,
      release,
      keys: keysView,
      resetSpend
    })
  })

export const layer = (
  keys: ReadonlyArray<KeyConfig>,
  options?: Options
): Layer.Layer<Gateway, never, RateLimiter.RateLimiterStore | Spend.SpendStore | Pricing.Pricing> =>
  Layer.effect(Gateway, make(keys, options))
