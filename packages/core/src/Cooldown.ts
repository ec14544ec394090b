/**
 * Cooldowns keep every request away from an upstream that told us to wait: a
 * 429's `Retry-After`, an exhausted quota (a long pause), rate-limit
 * headers saying the account is about to run out, a refused connection
 * (`unreachable`), or a 401/403 refusing the
 * key the gateway holds for it (`auth-failed`, ended early by a health probe
 * that succeeds with that key). They are shared by all
 * requests (and, with a shared store, by all replicas), unlike a per-request
 * retry that would let the next request hit the same wall.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import { makeListeners } from "./internal/listeners.js"
import { taggedBy } from "./internal/taggedMetrics.js"

/**
 * `unreachable`: the upstream refused the connection (or its name did not
 * resolve): taken out at once, for a short while, rather than tried again
 * by the same request or the next ones.
 */
export type Reason = "rate-limited" | "quota-exhausted" | "low-headroom" | "auth-failed" | "unreachable"

export interface Cooldown {
  /** Epoch millis when the upstream may be called again. */
  readonly until: number
  readonly reason: Reason
}

/**
 * Where cooldowns live. `start` keeps the later of the current and the new
 * end, so a short cooldown never cuts a long one (a quota pause) short.
 */
export class CooldownStore extends Context.Tag("@breakwater/core/CooldownStore")<
  CooldownStore,
  {
    readonly start: (upstream: string, cooldown: Cooldown) => Effect.Effect<void>
    readonly clear: (upstream: string) => Effect.Effect<void>
    /** Active cooldowns at `now`; expired ones are left out. */
    readonly active: (now: number) => Effect.Effect<ReadonlyMap<string, Cooldown>>
    /**
     * The same read without an effect, for stores that keep cooldowns in
     * this process (the memory store); absent for remote ones (Redis).
     */
    readonly unsafeActive?: ((now: number) => ReadonlyMap<string, Cooldown>) | undefined
    /**
     * Calls `listener` with an upstream's name whenever its cooldown is
     * cleared: here (`clear`) or, for a shared store, by another replica
     * (heard on the Redis channel), so that what this process holds because
     * of that cooldown (its pacer's hold after a 429) ends with it. Returns
     * the call that stops listening. A store without it tells no one.
     */
    readonly onClear?: ((listener: (upstream: string, now: number) => void) => () => void) | undefined
  }
>() {}

const startedCounter = Metric.counter("breakwater_cooldowns_total", {
  description: "Cooldowns started, by upstream and reason",
  incremental: true
})

const startedBy = taggedBy(startedCounter, ["upstream", "reason"])

/** Starts a cooldown of `duration` from now on `upstream`. */
export const start = (
  upstream: string,
  duration: Duration.DurationInput,
  reason: Reason
): Effect.Effect<void, never, CooldownStore> =>
  Effect.flatMap(CooldownStore, (store) =>
    Effect.clockWith((clock) => {
      const until = clock.unsafeCurrentTimeMillis() + Duration.toMillis(duration)
      return Effect.zipRight(
        store.start(upstream, { until, reason }),
        Metric.increment(startedBy(upstream, reason))
      )
    }))

export const makeStoreMemory: Effect.Effect<Context.Tag.Service<CooldownStore>> = Effect.sync(() => {
  const cooldowns = new Map<string, Cooldown>()
  const cleared = makeListeners<[upstream: string, now: number]>()
  const unsafeActive = (now: number): ReadonlyMap<string, Cooldown> => {
    for (const [name, c] of cooldowns) if (c.until <= now) cooldowns.delete(name)
    return cooldowns
  }
  return {
    start: (upstream, cooldown) =>
      Effect.sync(() => {
        const current = cooldowns.get(upstream)
        if (current === undefined || current.until < cooldown.until) cooldowns.set(upstream, cooldown)
      }),
    clear: (upstream) =>
      Effect.clockWith((clock) =>
        Effect.sync(() => {
          cooldowns.delete(upstream)
          cleared.emit(upstream, clock.unsafeCurrentTimeMillis())
        })
      ),
    active: (now) => Effect.sync(() => unsafeActive(now)),
    unsafeActive,
    onClear: cleared.add
  }
})

export const layerStoreMemory: Layer.Layer<CooldownStore> = Layer.effect(CooldownStore, makeStoreMemory)

/**
 * Parses the reset durations of OpenAI's rate-limit headers
 * (`x-ratelimit-reset-requests: 1s`, `6m0s`, `20ms`, `1h2m3.5s`).
 */
export const parseResetDuration = (value: string): Duration.Duration | undefined => {
  const v = value.trim()
  if (v === "") return undefined
  if (/^\d+(\.\d+)?$/.test(v)) return Duration.millis(Math.round(Number(v) * 1000))
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g
  let total = 0
  let consumed = 0
  for (let m = re.exec(v); m !== null; m = re.exec(v)) {
    const n = Number(m[1])
    total += m[2] === "h" ? n * 3_600_000 : m[2] === "m" ? n * 60_000 : m[2] === "s" ? n * 1000 : n
    consumed += m[0].length
  }
  return consumed === v.length ? Duration.millis(Math.round(total)) : undefined
}

/**
 * From a response's rate-limit headers: how long to stay away because the
 * account is about to run out (remaining requests or tokens at or below
 * `lowWatermark`), or undefined.
 */
export const headroomCooldown = (
  headers: Readonly<Record<string, string | undefined>>,
  lowWatermark = 0
): Duration.Duration | undefined => {
  let longest: Duration.Duration | undefined
  for (const kind of ["requests", "tokens"] as const) {
    const remaining = headers[`x-ratelimit-remaining-${kind}`]
    if (remaining === undefined || Number(remaining) > lowWatermark) continue
    const reset = headers[`x-ratelimit-reset-${kind}`]
    const wait = reset === undefined ? undefined : parseResetDuration(reset)
    if (wait !== undefined && (longest === undefined || Duration.greaterThan(wait, longest))) longest = wait
  }
  return longest
}
