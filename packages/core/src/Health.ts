/**
 * Active health checks: each upstream is probed in the background with a
 * cheap `GET /models`, so that its health is known even when no traffic
 * reaches it (an upstream avoided by the router would otherwise never be
 * seen to recover), and an open breaker learns early that its upstream is
 * back.
 *
 * Probes are not client traffic: they never go through the upstream's
 * breaker, bulkhead or limiters, and never count in its `stats`. Their own
 * results are kept here. The state shown for an upstream combines them with
 * what the relay already knows (cooldowns, the breaker), the strongest
 * signal first.
 *
 * A probe is made with the upstream's own key, so it also watches that key: a
 * 401/403 starts (or keeps up) an `auth-failed` cooldown, and a probe that
 * succeeds ends one at once: a rotated key takes the upstream out before
 * clients meet it, and a replaced key brings it back within an interval.
 *
 * A successful probe's answer is the upstream's model list: it is kept (at
 * most {@link MAX_REPORTED_MODELS} per upstream) so that a gateway whose
 * upstreams serve any model (`"*"`) can still tell a model picker what exists.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type * as CircuitBreaker from "./CircuitBreaker.js"
import * as Cooldown from "./Cooldown.js"
import * as Timeout from "./Timeout.js"
import type * as Upstream from "./Upstream.js"
import { UpstreamClient } from "./UpstreamClient.js"
import { isAuthError } from "./UpstreamError.js"

/**
 * - `auth-failed`: it refused the API key the gateway holds for it (401/403);
 *   out of rotation until a probe succeeds with that key or the cooldown ends.
 * - `exhausted`: its quota is spent (a quota cooldown is active).
 * - `cooling-down`: it asked us to wait (a 429 or low headroom).
 * - `open`: its breaker refuses calls (tripped, or forced open by an operator).
 * - `recovering`: its breaker is half-open, admitting trial calls.
 * - `degraded`: its breaker admits calls, but the last health probes failed.
 * - `healthy`: none of the above.
 */
export type State = "healthy" | "degraded" | "open" | "recovering" | "cooling-down" | "exhausted" | "auth-failed"

export interface Status {
  readonly upstream: string
  readonly state: State
  readonly breaker: CircuitBreaker.State
  /** Epoch millis when the active cooldown ends. */
  readonly cooldownUntil: number | undefined
  readonly cooldownReason: Cooldown.Reason | undefined
  /** Exponentially weighted moving average of successful probes' latency, ms. */
  readonly probeLatencyMs: number | undefined
  /** Epoch millis when the last probe ended. */
  readonly lastProbeAt: number | undefined
  readonly lastProbeOk: boolean | undefined
  readonly consecutiveProbeFailures: number
  /** Client calls in flight (the upstream's bulkhead). */
  readonly inFlight: number
  /** Client traffic, from `upstream.stats`. */
  readonly requests: number
  readonly failures: number
  readonly latencyEwmaMs: number | undefined
}

export interface Options {
  /** Time between the end of one probe and the start of the next. Default 10 s. */
  readonly interval?: Duration.DurationInput | undefined
  /** Limit of one probe; a probe that takes longer failed. Default 5 s. */
  readonly timeout?: Duration.DurationInput | undefined
  /** Consecutive failed probes that make an upstream `degraded`. Default 1. */
  readonly degradedAfter?: number | undefined
  /** The `auth-failed` cooldown a probe answered 401/403 starts. Default 5 minutes (as the relay's). */
  readonly authFailedCooldown?: Duration.DurationInput | undefined
  /**
   * The health checks this one replaces (a config reload): what their probes
   * found of an upstream of the same name and base URL (latency, failures in
   * a row, its model list) is kept. Stop the previous one's probes by
   * closing its scope.
   */
  readonly previous?: Health | undefined
}

/** A model an upstream's `GET /models` listed, as OpenAI describes one. */
export interface ReportedModel {
  readonly id: string
  readonly created: number
  readonly owned_by: string
}

/** Models kept per upstream (the first ones listed); ids longer than 256 characters are dropped. */
export const MAX_REPORTED_MODELS = 1000

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

/**
 * The models of a `GET /models` answer (`{"data":[{"id",...}]}`), bounded and
 * checked: at most {@link MAX_REPORTED_MODELS}, each id a non-empty string of
 * at most 256 characters, duplicates dropped. Undefined when the body is not
 * such a list (it is then ignored, and the last good list kept).
 */
export const parseModelList = (text: string): ReadonlyArray<ReportedModel> | undefined => {
  if (text.length > 4_000_000) return undefined
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    return undefined
  }
  const data = isRecord(json) ? json["data"] : undefined
  if (!Array.isArray(data)) return undefined
  const models: Array<ReportedModel> = []
  const seen = new Set<string>()
  for (const item of data) {
    if (models.length >= MAX_REPORTED_MODELS) break
    if (!isRecord(item)) continue
    const id = item["id"]
    if (typeof id !== "string" || id === "" || id.length > 256 || seen.has(id)) continue
    seen.add(id)
    const created = item["created"]
    const owner = item["owned_by"]
    models.push({
      id,
      created: typeof created === "number" && Number.isFinite(created) ? created : 0,
      owned_by: typeof owner === "string" && owner !== "" && owner.length <= 256 ? owner : "breakwater"
    })
  }
  return models
}

export interface Health {
  /** Every upstream's status, in the order the upstreams were given. */
  readonly status: Effect.Effect<ReadonlyArray<Status>>
  /** The status of the upstream of that name, or undefined when there is none. */
  readonly statusOf: (upstream: string) => Effect.Effect<Status | undefined>
  /** Probe every upstream now (also what the background fibers do each interval). */
  readonly probeAll: Effect.Effect<void>
  /**
   * The models each upstream listed at its last successful probe, by
   * upstream name. An upstream not yet probed successfully, or whose answer
   * was not a model list, is absent.
   */
  readonly models: Effect.Effect<ReadonlyMap<string, ReadonlyArray<ReportedModel>>>
}

export const Health = Context.GenericTag<Health>("@breakwater/core/Health")

/** What each Health's probes found, by upstream name and base URL, for `Options.previous`. */
const probesOf = new WeakMap<Health, ReadonlyMap<string, ProbeState>>()

const identity = (u: Upstream.Upstream) => `${u.name}\u0000${u.baseUrl}`

/** 1 when the upstream is `healthy`, 0 otherwise; updated after each probe. */
export const healthyGauge = Metric.gauge("breakwater_upstream_healthy", {
  description: "Whether the upstream is healthy (1) or not (0), updated after each health probe"
})

/** The path probed: listing models is cheap, authenticated, and costs no quota. */
export const PROBE_PATH = "/models"

const EWMA_ALPHA = 0.2

/** What the probes have seen of one upstream. */
interface ProbeState {
  latencyMs: number | undefined
  lastAt: number | undefined
  lastOk: boolean | undefined
  consecutiveFailures: number
  /** From the last successful probe that listed models. */
  models: ReadonlyArray<ReportedModel> | undefined
}

interface Entry {
  readonly upstream: Upstream.Upstream
  readonly probe: ProbeState
  readonly gauge: Metric.Metric.Gauge<number>
}

/** The state shown for an upstream, strongest signal first. */
export const deriveState = (
  cooldown: Cooldown.Cooldown | undefined,
  breaker: CircuitBreaker.State,
  consecutiveProbeFailures: number,
  degradedAfter: number
): State => {
  if (cooldown !== undefined) {
    return cooldown.reason === "quota-exhausted"
      ? "exhausted"
      : cooldown.reason === "auth-failed"
      ? "auth-failed"
      : "cooling-down"
  }
  if (breaker === "Open" || breaker === "ForcedOpen") return "open"
  if (breaker === "HalfOpen") return "recovering"
  return consecutiveProbeFailures >= degradedAfter ? "degraded" : "healthy"
}

/**
 * Starts probing `upstreams` in the background; the scope owns the probe
 * fibers, which stop when it closes.
 */
export const make = (
  upstreams: ReadonlyArray<Upstream.Upstream>,
  options: Options = {}
): Effect.Effect<Health, never, Scope.Scope | UpstreamClient | Cooldown.CooldownStore> =>
  Effect.gen(function*() {
    const client = yield* UpstreamClient
    const cooldowns = yield* Cooldown.CooldownStore
    const interval = Duration.decode(options.interval ?? Duration.seconds(10))
    const timeout = Duration.decode(options.timeout ?? Duration.seconds(5))
    const degradedAfter = options.degradedAfter ?? 1
    const authFailedCooldown = Duration.decode(options.authFailedCooldown ?? Duration.minutes(5))

    const found = options.previous === undefined ? undefined : probesOf.get(options.previous)
    const entries: ReadonlyArray<Entry> = upstreams.map((upstream) => {
      const before = found?.get(identity(upstream))
      return {
        upstream,
        probe: before === undefined
          ? { latencyMs: undefined, lastAt: undefined, lastOk: undefined, consecutiveFailures: 0, models: undefined }
          : { ...before },
        gauge: Metric.tagged(healthyGauge, "upstream", upstream.name)
      }
    })
    const byName = new Map<string, Entry>()
    for (const e of entries) if (!byName.has(e.upstream.name)) byName.set(e.upstream.name, e)

    const statusWith = (e: Entry, active: ReadonlyMap<string, Cooldown.Cooldown>) =>
      Effect.map(e.upstream.breaker.state, (breaker): Status => {
        const cooldown = active.get(e.upstream.name)
        const p = e.probe
        const s = e.upstream.stats
        return {
          upstream: e.upstream.name,
          state: deriveState(cooldown, breaker, p.consecutiveFailures, degradedAfter),
          breaker,
          cooldownUntil: cooldown?.until,
          cooldownReason: cooldown?.reason,
          probeLatencyMs: p.latencyMs,
          lastProbeAt: p.lastAt,
          lastProbeOk: p.lastOk,
          consecutiveProbeFailures: p.consecutiveFailures,
          inFlight: e.upstream.bulkhead.unsafeStats().active,
          requests: s.requests,
          failures: s.failures,
          latencyEwmaMs: s.latencyEwmaMs
        }
      })

    const statusOfEntry = (e: Entry) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Effect.flatMap(cooldowns.active(now), (active) => statusWith(e, active)))

    const status = Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.flatMap(cooldowns.active(now), (active) => Effect.forEach(entries, (e) => statusWith(e, active))))

    const statusOf = (name: string): Effect.Effect<Status | undefined> => {
      const e = byName.get(name)
      return e === undefined ? Effect.succeed(undefined) : statusOfEntry(e)
    }

    /** The upstream's key works again: end an `auth-failed` cooldown (and only that kind). */
    const keyAccepted = (e: Entry, now: number): Effect.Effect<void> =>
      Effect.flatMap(cooldowns.active(now), (active) => {
        if (active.get(e.upstream.name)?.reason !== "auth-failed") return Effect.void
        return Effect.zipRight(
          cooldowns.clear(e.upstream.name),
          Effect.logInfo(`upstream '${e.upstream.name}' accepts its API key again (health probe): back in rotation`)
            .pipe(Effect.annotateLogs({ upstream: e.upstream.name }))
        )
      })

    /** The upstream refused its key to a probe: keep it out, and say so once per incident. */
    const keyRefused = (e: Entry, status: number, now: number): Effect.Effect<void> =>
      Effect.flatMap(cooldowns.active(now), (active) => {
        const start = Effect.provideService(
          Cooldown.start(e.upstream.name, authFailedCooldown, "auth-failed"),
          Cooldown.CooldownStore,
          cooldowns
        )
        if (active.get(e.upstream.name)?.reason === "auth-failed") return start
        return Effect.zipRight(
          start,
          Effect.logError(
            `upstream '${e.upstream.name}' rejected its API key (${status}) to a health probe: out of rotation ` +
              `until a probe succeeds with its key; replace its key`
          ).pipe(Effect.annotateLogs({ upstream: e.upstream.name, status, cooldown: "auth-failed" }))
        )
      })

    // A probe's outcome is read from its Exit, so a failure, a timeout or
    // even a defect of the client counts as a failed probe and never ends
    // the probing fiber.
    const probe = (e: Entry): Effect.Effect<void> =>
      Effect.gen(function*() {
        const start = yield* Clock.currentTimeMillis
        const exit = yield* Effect.exit(Timeout.attempt(client.get(e.upstream, PROBE_PATH), timeout))
        const now = yield* Clock.currentTimeMillis
        const status = Exit.isSuccess(exit) ? exit.value.status : undefined
        const ok = status === 200
        const p = e.probe
        p.lastAt = now
        p.lastOk = ok
        if (ok) {
          const latency = now - start
          p.latencyMs = p.latencyMs === undefined ? latency : p.latencyMs + EWMA_ALPHA * (latency - p.latencyMs)
          p.consecutiveFailures = 0
          // The upstream answers again: let an open breaker admit its
          // half-open trials now rather than at the end of its open period.
          // Closing it is left to real traffic passing those trials.
          if ((yield* e.upstream.breaker.state) === "Open") yield* e.upstream.breaker.tryHalfOpen
          yield* keyAccepted(e, now)
          if (Exit.isSuccess(exit)) p.models = parseModelList(exit.value.text) ?? p.models
        } else {
          p.consecutiveFailures++
          if (status !== undefined && isAuthError(status)) yield* keyRefused(e, status, now)
        }
        const s = yield* statusOfEntry(e)
        yield* Metric.set(e.gauge, s.state === "healthy" ? 1 : 0)
      })

    const probeAll = Effect.forEach(entries, probe, { concurrency: "unbounded", discard: true })

    // One fiber per upstream, so that a slow probe delays no other upstream's.
    yield* Effect.forEach(
      entries,
      (e) => Effect.forkScoped(Effect.repeat(probe(e), Schedule.spaced(interval))),
      { discard: true }
    )

    const models = Effect.sync(() => {
      const out = new Map<string, ReadonlyArray<ReportedModel>>()
      for (const e of entries) if (e.probe.models !== undefined && !out.has(e.upstream.name)) out.set(e.upstream.name, e.probe.models)
      return out
    })

    const health = Health.of({ status, statusOf, probeAll, models })
    probesOf.set(health, new Map(entries.map((e) => [identity(e.upstream), e.probe])))
    return health
  })

/** Health checks of `upstreams` in the context, probing while the layer lives. */
export const layer = (
  upstreams: ReadonlyArray<Upstream.Upstream>,
  options: Options = {}
): Layer.Layer<Health, never, UpstreamClient | Cooldown.CooldownStore> => Layer.scoped(Health, make(upstreams, options))
