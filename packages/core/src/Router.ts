/**
 * The router orders the upstreams that may serve a request: those that serve
 * its model, whose breaker admits calls, that are not cooling down and whose
 * bulkhead has room. The relay tries them in that order, failing over to the
 * next on a retryable failure.
 *
 * Strategies:
 * - `priority`: ordered failover by `priority` (lower first); equal
 *   priorities share traffic by weight.
 * - `weighted`: a weighted random order (each upstream's chance to go first
 *   is its share of the total weight).
 * - `latency`: fastest first by the EWMA of recent latency; with probability
 *   `exploration` a random upstream goes first, so that a recovered or
 *   unmeasured upstream gets noticed.
 * - `least-busy`: fewest calls in flight relative to its bulkhead size.
 *
 * Randomness comes from Effect's `Random`, so a seeded run is repeatable.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import type * as Cooldown from "./Cooldown.js"
import type { Upstream } from "./Upstream.js"

export type Strategy = "priority" | "weighted" | "latency" | "least-busy"

export interface Options {
  readonly strategy?: Strategy
  /** Share of requests that explore under `latency`. Default 0.05. */
  readonly exploration?: number
  /**
   * Panic threshold (Envoy's): when the share of the model's upstreams whose
   * breaker admits calls falls below this, the router stops trusting the
   * breakers and routes across all of them (those cooling down after a 429
   * or with a full bulkhead still wait), the open ones with their breaker
   * bypassed. Breakers then cannot turn a partial, correlated degradation
   * of every upstream into a total outage: the gateway serves what the
   * upstreams can, as a direct client would. A number in (0, 1]; `true` is
   * the default, 0.5; `false` turns it off (an open breaker always refuses).
   */
  readonly panic?: boolean | number
}

/** The default panic threshold: below half of the upstreams healthy, route across all (Envoy's default). */
export const defaultPanicThreshold = 0.5

/** The threshold `panic` stands for; 0 when off. */
export const panicThresholdOf = (panic: boolean | number | undefined): number =>
  panic === undefined || panic === true ? defaultPanicThreshold : panic === false ? 0 : panic

/**
 * Why an upstream was left out, for error messages and the admin view.
 * `auth-failed`: cooling down because it refused its own API key.
 */
export type Exclusion = "circuit-open" | "cooling-down" | "auth-failed" | "bulkhead-full"

export interface Plan {
  /** Upstreams to try, in order. */
  readonly order: ReadonlyArray<Upstream>
  /**
   * True when the panic threshold was crossed: `order` then holds the
   * open-breaker upstreams too, to be called with their breaker bypassed.
   */
  readonly panic: boolean
  /** Upstreams that serve the model but were left out, and why. */
  readonly excluded: ReadonlyArray<readonly [Upstream, Exclusion]>
}

export interface Router {
  readonly strategy: Strategy
  /**
   * Orders `servers` (the upstreams that serve the model) at `now`, given
   * the active cooldowns.
   */
  readonly plan: (
    servers: ReadonlyArray<Upstream>,
    now: number,
    cooldowns: ReadonlyMap<string, Cooldown.Cooldown>
  ) => Effect.Effect<Plan>
  /**
   * {@link plan} without an effect, drawing its random numbers from `random`
   * (the same draws, in the same order, as `plan` makes from Effect's
   * `Random`): for a hot path that runs no effect per request.
   */
  readonly unsafePlan?:
    | ((
      servers: ReadonlyArray<Upstream>,
      now: number,
      cooldowns: ReadonlyMap<string, Cooldown.Cooldown>,
      random: UnsafeRandom
    ) => Plan)
    | undefined
}

/** Synchronous random draws: `number` in [0, 1), `integer(n)` in [0, n). */
export interface UnsafeRandom {
  readonly number: () => number
  readonly integer: (n: number) => number
}

export const Router = Context.GenericTag<Router>("@breakwater/core/Router")

/** A weighted random permutation: sort by u^(1/w) descending (Efraimidis–Spirakis). */
const weightedOrder = (ups: ReadonlyArray<Upstream>): Effect.Effect<Array<Upstream>> =>
  Effect.map(
    Effect.forEach(ups, (u) => Effect.map(Random.next, (r) => [Math.pow(r, 1 / Math.max(u.weight, 1e-9)), u] as const)),
    (keyed) => keyed.sort((a, b) => b[0] - a[0]).map(([, u]) => u)
  )

const busyness = (u: Upstream): number => {
  const s = u.bulkhead.unsafeStats()
  return (s.active + s.waiting) / s.maxConcurrent
}

export const make = (options: Options = {}): Router => {
  const strategy = options.strategy ?? "priority"
  const exploration = options.exploration ?? 0.05
  const threshold = panicThresholdOf(options.panic)

  const order = (ups: Array<Upstream>): Effect.Effect<ReadonlyArray<Upstream>> => {
    if (ups.length <= 1) return Effect.succeed(ups)
    switch (strategy) {
      case "priority":
        // Weighted shuffle first, then a stable sort by priority: equal
        // priorities keep their weighted order.
        return Effect.map(weightedOrder(ups), (shuffled) => shuffled.sort((a, b) => a.priority - b.priority))
      case "weighted":
        return weightedOrder(ups)
      case "least-busy":
        return Effect.succeed(ups.sort((a, b) => busyness(a) - busyness(b) || a.priority - b.priority))
      case "latency":
        return Effect.flatMap(Random.next, (r) => {
          // Unmeasured upstreams count as fastest: they get measured first.
          const sorted = ups.sort((a, b) => (a.stats.latencyEwmaMs ?? 0) - (b.stats.latencyEwmaMs ?? 0))
          if (r >= exploration) return Effect.succeed(sorted)
          return Effect.map(Random.nextIntBetween(0, sorted.length), (i) => {
            const [chosen] = sorted.splice(i, 1)
            return [chosen!, ...sorted]
          })
        })
    }
  }

  /**
   * `weightedOrder`, then (`byPriority`) a stable sort by priority, drawing
   * from `random` (one draw per upstream, in their order), sorted in place:
   * by priority, then by key descending, ties in their first order — what
   * the two stable sorts give, without their arrays (this runs on every
   * request of the hot path).
   */
  const unsafeWeighted = (ups: Array<Upstream>, random: UnsafeRandom, byPriority: boolean): Array<Upstream> => {
    const n = ups.length
    const keys: Array<number> = []
    for (let i = 0; i < n; i++) keys.push(Math.pow(random.number(), 1 / Math.max(ups[i]!.weight, 1e-9)))
    // Insertion sort (stable): few upstreams.
    for (let i = 1; i < n; i++) {
      const u = ups[i]!
      const key = keys[i]!
      let j = i - 1
      for (; j >= 0; j--) {
        const v = ups[j]!
        const byP = byPriority ? v.priority - u.priority : 0
        if (!(byP > 0 || (byP === 0 && key - keys[j]! > 0))) break
        ups[j + 1] = v
        keys[j + 1] = keys[j]!
      }
      ups[j + 1] = u
      keys[j + 1] = key
    }
    return ups
  }

  /** `order`, drawing from `random` synchronously (the same draws as `order`). */
  const unsafeOrder = (ups: Array<Upstream>, random: UnsafeRandom): ReadonlyArray<Upstream> => {
    if (ups.length <= 1) return ups
    switch (strategy) {
      case "priority":
        return unsafeWeighted(ups, random, true)
      case "weighted":
        return unsafeWeighted(ups, random, false)
      case "least-busy":
        return ups.sort((a, b) => busyness(a) - busyness(b) || a.priority - b.priority)
      case "latency": {
        const r = random.number()
        const sorted = ups.sort((a, b) => (a.stats.latencyEwmaMs ?? 0) - (b.stats.latencyEwmaMs ?? 0))
        if (r >= exploration) return sorted
        const [chosen] = sorted.splice(random.integer(sorted.length), 1)
        return [chosen!, ...sorted]
      }
    }
  }

  /** One synchronous pass over the upstreams: who is ready, who is left out and why. */
  const triage = (
    servers: ReadonlyArray<Upstream>,
    now: number,
    cooldowns: ReadonlyMap<string, Cooldown.Cooldown>
  ): { readonly ready: Array<Upstream>; readonly excluded: Array<readonly [Upstream, Exclusion]>; readonly panic: boolean } => {
    const ready: Array<Upstream> = []
    const excluded: Array<readonly [Upstream, Exclusion]> = []
    let open = 0
    let forced = 0
    for (const u of servers) {
      const cooldown = cooldowns.get(u.name)
      if (!u.breaker.unsafeIsAvailable(now)) {
        excluded.push([u, "circuit-open"])
        // An operator's forceOpen is not a health verdict: out of the count, never panicked into.
        if (u.breaker.unsafeIsForcedOpen?.() === true) forced++
        else open++
      } else if (cooldown !== undefined && cooldown.until > now) {
        excluded.push([u, cooldown.reason === "auth-failed" ? "auth-failed" : "cooling-down"])
      }
      else if (u.bulkhead.unsafeStats().available <= 0) excluded.push([u, "bulkhead-full"])
      else ready.push(u)
    }
    // Panic: too few breakers admit calls; the open ones join the ready ones.
    const counted = servers.length - forced
    if (open === 0 || (counted - open) / counted >= threshold) return { ready, excluded, panic: false }
    const kept: Array<readonly [Upstream, Exclusion]> = []
    for (const e of excluded) {
      if (e[1] === "circuit-open" && e[0].breaker.unsafeIsForcedOpen?.() !== true) ready.push(e[0])
      else kept.push(e)
    }
    return { ready, excluded: kept, panic: true }
  }

  const unsafePlan = (
    servers: ReadonlyArray<Upstream>,
    now: number,
    cooldowns: ReadonlyMap<string, Cooldown.Cooldown>,
    random: UnsafeRandom
  ): Plan => {
    const { excluded, panic, ready } = triage(servers, now, cooldowns)
    return { order: unsafeOrder(ready, random), excluded, panic }
  }

  const plan = (
    servers: ReadonlyArray<Upstream>,
    now: number,
    cooldowns: ReadonlyMap<string, Cooldown.Cooldown>
  ): Effect.Effect<Plan> =>
    Effect.suspend(() => {
      // One synchronous pass over the upstreams: this runs on every request.
      const { excluded, panic, ready } = triage(servers, now, cooldowns)
      return Effect.map(order(ready), (order): Plan => ({ order, excluded, panic }))
    })

  return Router.of({ strategy, plan, unsafePlan })
}

export const layer = (options: Options = {}): Layer.Layer<Router> => Layer.succeed(Router, make(options))
