/**
 * The simulator: a scenario's traffic through the REAL relay (the same
 * `Relay.layer`, stores, cache, pricing and health checks as the server,
 * built from the scenario's Breakwater config), against simulated upstreams,
 * in virtual time. Next to it, the same traffic sent straight to the first
 * upstream with no resilience at all: the "direct" column.
 *
 * {@link program} is an ordinary Effect that only needs a Clock: {@link run}
 * runs it in virtual time (`VirtualTime.run`), and a test may run it under
 * TestClock instead. The same seed gives the same numbers.
 */
import {
  Cooldown,
  Health,
  type OpenAI,
  Pricing,
  RateLimiter,
  Relay,
  ResponseCache,
  Router,
  UpstreamClient
} from "@breakwater/core"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import * as Runtime from "effect/Runtime"
import * as Stream from "effect/Stream"
import * as Config from "../Config.js"
import * as FastPath from "./FastPath.js"
import { hash, Prng } from "./Prng.js"
import type { Scenario } from "./Scenario.js"
import { Column, type Outcome } from "./Stats.js"
import { completions, makeClient, type Traffic, World } from "./Upstreams.js"
import * as VirtualTime from "./VirtualTime.js"

export interface RunOptions {
  /** Overrides the scenario's seed. */
  readonly seed?: number | undefined
  /** Overrides the scenario's duration, millis. */
  readonly duration?: number | undefined
  /**
   * In virtual time, the relay's commonest requests take the simulator's
   * fast path (`FastPath.ts`; default true). False: every request through
   * the relay, as under TestClock; the report is the same, only slower.
   */
  readonly fastPath?: boolean | undefined
  /**
   * Overrides the scenario's `breakwater.routing.hedge` (`null`: hedging
   * off). A hedging relay runs every request through the relay (no fast
   * path).
   */
  readonly hedge?: Config.HedgeConfig | null | undefined
}

export interface UpstreamReport {
  readonly name: string
  /** Calls made to it (health probes not counted). */
  readonly calls: number
  /** Its share of all upstream calls of the column. */
  readonly callShare: number
  /** Successful requests it answered (cache hits not counted). */
  readonly served: number
  readonly ok: number
  /** 429s: random ones, and the quota's. */
  readonly rateLimited: number
  readonly quotaExceeded: number
  readonly serverErrors: number
  readonly hangs: number
  /** Calls that met an outage (503 or hang). */
  readonly outageAnswers: number
  /** Calls aborted before their answer (a hedge's loser, a timeout); billed all the same. */
  readonly aborted: number
  /** Transitions of its breaker to Open; null for the direct column (no breaker). */
  readonly breakerTrips: number | null
  readonly costUsd: number
}

export interface MinuteReport {
  readonly minute: number
  readonly requests: number
  readonly errorRate: number
  readonly p50Ms: number | null
  readonly p99Ms: number | null
}

export interface ColumnReport {
  readonly label: string
  readonly requests: number
  readonly successes: number
  /** Client-visible failures by HTTP status (`timeout`: the direct client's own timeout). */
  readonly errors: Readonly<Record<string, number>>
  /** Client-visible 429s / requests. */
  readonly rate429: number
  /** Latency of successful requests, arrival to answer (waits, retries and failovers included). */
  readonly p50Ms: number | null
  readonly p99Ms: number | null
  /** Successful / total. */
  readonly availability: number
  readonly costUsd: number
  /** `costUsd` scaled from the simulated duration to a day. */
  readonly costPerDayUsd: number
  /** Cache hits / requests; null where there is no cache. */
  readonly cacheHitRate: number | null
  readonly upstreamCalls: number
  /** Upstream calls / requests: above 1 means retries multiply the load. */
  readonly callsPerRequest: number
  /**
   * Requests hedged (`routing.hedge`), and how the hedges fared; null where
   * nothing is hedged (the direct column, a relay without hedging).
   */
  readonly hedged: { readonly calls: number; readonly won: number; readonly lost: number; readonly failed: number } | null
  readonly upstreams: ReadonlyArray<UpstreamReport>
  readonly perMinute: ReadonlyArray<MinuteReport>
}

export interface Report {
  readonly scenario: string
  readonly description: string | undefined
  readonly seed: number
  readonly durationMs: number
  readonly requests: number
  readonly offeredRps: number
  readonly direct: ColumnReport
  readonly breakwater: ColumnReport
  /** Health probes per upstream (not client traffic). */
  readonly probes: Readonly<Record<string, number>>
  readonly notes: ReadonlyArray<string>
}

// ---------------------------------------------------------------------------
// Arrivals and prompts

/** Arrival times in whole millis, in [0, duration), at the workload's rate steps. */
const arrivals = function*(scenario: Scenario, duration: number, rng: Prng): Generator<number> {
  const steps = scenario.workload.steps
  let t = 0
  for (let i = 0; i < steps.length && t < duration; i++) {
    const step = steps[i]!
    const end = Math.min(duration, steps[i + 1]?.at ?? Number.POSITIVE_INFINITY)
    t = step.at
    if (step.rps <= 0) continue
    if (scenario.workload.arrivals === "uniform") {
      const gap = 1000 / step.rps
      for (let k = 0; step.at + k * gap < end; k++) yield Math.floor(step.at + k * gap)
    } else {
      // Poisson: exponential gaps; memoryless, so a new step simply starts afresh.
      for (;;) {
        t += rng.exponential(step.rps / 1000)
        if (t >= end) break
        yield Math.floor(t)
      }
    }
  }
}

interface Prompt {
  readonly model: string
  readonly id: number
  /** Its cache key, once computed (the same for every request of the prompt). */
  key: string | undefined
  /** Its messages and the JSON of the body after the request's index, once built (the same for every request). */
  body: { readonly messages: ReadonlyArray<OpenAI.ChatMessage>; readonly head: string; readonly tail: string } | undefined
}

/** The relay's failures as the server answers them (see `Http.ts`). */
const statusOf = (error: Relay.RelayError): string => {
  switch (error._tag) {
    case "UnknownModel":
      return "404"
    case "UpstreamRejected":
      return String(error.status)
    case "NoUpstreamAvailable":
      return "503"
    case "AllUpstreamsFailed":
    case "UpstreamKeysRejected":
      return "502"
    case "DeadlineExceeded":
      return "504"
  }
}

// ---------------------------------------------------------------------------
// The program

interface Raw {
  readonly direct: Column
  readonly breakwater: Column
  readonly directWorld: World
  readonly world: World
  readonly trips: ReadonlyMap<string, number>
  readonly seed: number
  readonly duration: number
  readonly hedged: ColumnReport["hedged"]
}

/**
 * Runs the scenario's traffic through both columns. Needs only a Clock:
 * time passes by the program's own sleeps (arrivals) and the relay's.
 * Under {@link VirtualTime} (see {@link run}) the relay's commonest requests
 * take the fast path (`FastPath.ts`), with the same results.
 */
export const program = (scenario: Scenario, options: RunOptions = {}): Effect.Effect<Report> => {
  const seed = options.seed ?? scenario.seed
  const duration = options.duration ?? scenario.duration
  const config = options.hedge === undefined
    ? scenario.breakwater
    : { ...scenario.breakwater, routing: { ...scenario.breakwater.routing, hedge: options.hedge ?? undefined } }
  const hedging = config.routing.hedge !== undefined
  const wl = scenario.workload
  const tokens = wl.promptTokens + wl.completionTokens
  const random = new FastPath.SimRandom(seed)

  return Effect.scoped(Effect.gen(function*() {
    const clock = yield* Effect.clock
    // The fast path needs the virtual world's own timers and scheduler.
    const virtual = clock instanceof VirtualTime.VirtualClock && options.fastPath !== false ? clock : undefined
    const world = new World(scenario.upstreams, seed)
    const directWorld = new World(scenario.upstreams, seed)
    const direct = new Column(duration)
    const breakwater = new Column(duration)
    const calls = new Map<number, Array<number>>()

    // The real relay, built as the server builds it (stores in memory).
    const client = makeClient({
      world,
      seed,
      promptTokens: wl.promptTokens,
      completionTokens: wl.completionTokens,
      callsOf: (request) => calls.get(request),
      after: virtual === undefined ? undefined : (millis, reply) => virtual.after(millis, reply)
    })
    const relayOptions = Config.toRelayOptions(config)
    // With the fast path, the relay's cache is one the fast path shares (the same semantics).
    const realCache = yield* ResponseCache.make({ ttl: config.cache.ttl }).pipe(
      Effect.provide(ResponseCache.layerStoreMemory({ maxEntries: config.cache.maxEntries }))
    )
    const shared = virtual === undefined
      ? undefined
      : new FastPath.SharedCache(realCache.key, config.cache.ttl, config.cache.maxEntries, () => clock.unsafeCurrentTimeMillis())
    const cooldowns = virtual === undefined ? undefined : new FastPath.SharedCooldowns()
    const deps = Layer.mergeAll(
      RateLimiter.layerStoreMemory,
      cooldowns === undefined ? Cooldown.layerStoreMemory : Layer.succeed(Cooldown.CooldownStore, cooldowns.service),
      shared === undefined
        ? ResponseCache.layerMemory({ ttl: config.cache.ttl, maxEntries: config.cache.maxEntries })
        : Layer.succeed(ResponseCache.ResponseCache, shared.service),
      // Prices as the server's, without the token and cost metrics (the simulator
      // reports none; its costs are the simulated upstreams' bills).
      Layer.succeed(Pricing.Pricing, { ...Pricing.make(config.pricing), record: () => Effect.void }),
      Layer.succeed(UpstreamClient.UpstreamClient, client)
    )
    const ctx = yield* Layer.build(Relay.layer(relayOptions).pipe(Layer.provideMerge(deps)))
    const relay = Context.get(ctx, Relay.Relay)
    yield* Health.make(relay.upstreams, { interval: config.healthCheck.interval, timeout: config.healthCheck.timeout }).pipe(
      Effect.provide(ctx)
    )

    // Breaker trips: transitions to Open, from each breaker's changes.
    const trips = new Map<string, number>()
    for (const u of relay.upstreams) {
      trips.set(u.name, 0)
      const pull = yield* Stream.toPull(yield* u.breaker.changes)
      yield* Effect.forkScoped(Effect.ignore(Effect.forever(Effect.flatMap(pull, (chunk) =>
        Effect.sync(() => {
          for (const t of Chunk.toReadonlyArray(chunk)) if (t.to === "Open") trips.set(u.name, (trips.get(u.name) ?? 0) + 1)
        })))))
    }

    // Prompts: a repeat is drawn from a ring of the most recent new prompts.
    const rng = new Prng(hash(seed, 0x5eed))
    const pool: Array<Prompt> = []
    let poolNext = 0
    let nextPrompt = 0
    const pickModel = (): string => {
      let u = rng.next()
      for (const [model, share] of wl.models) {
        if (u < share) return model
        u -= share
      }
      return wl.models[wl.models.length - 1]![0]
    }
    const prompt = (): Prompt => {
      const repeat = rng.next() < wl.repeatedPrompts
      if (repeat && pool.length > 0) return pool[rng.int(pool.length)]!
      const p: Prompt = { model: pickModel(), id: nextPrompt++, key: undefined, body: undefined }
      if (pool.length < wl.promptPool) pool.push(p)
      else pool[poolNext] = p
      poolNext = (poolNext + 1) % wl.promptPool
      return p
    }
    // About four characters a token, so that the relay's token estimate matches the usage.
    const padding = "lorem ipsum ".repeat(Math.ceil((wl.promptTokens * 4) / 12)).slice(0, wl.promptTokens * 4)
    const bodyOf = (p: Prompt): NonNullable<Prompt["body"]> => {
      if (p.body !== undefined) return p.body
      const messages = [{ role: "user" as const, content: `prompt ${p.id}: ${padding}` }]
      return p.body = {
        messages,
        head: `{"model":${JSON.stringify(p.model)},"metadata":{"sim":"r`,
        tail: `"},"max_tokens":${JSON.stringify(wl.completionTokens)},"messages":${JSON.stringify(messages)}}`
      }
    }
    const requestOf = (i: number, p: Prompt) => ({
      model: p.model,
      // The request's index, for the simulated upstreams; in `metadata`,
      // which the cache key leaves out (a `user` would scope the cache).
      metadata: { sim: `r${i}` },
      max_tokens: wl.completionTokens,
      messages: bodyOf(p).messages
    } satisfies OpenAI.ChatCompletionRequest)

    const first = directWorld.models[0]!
    let inFlight = 0
    let arrived = false
    const allDone = yield* Deferred.make<void>()
    let index = 0
    const finished = () => {
      inFlight--
      if (arrived && inFlight === 0) Deferred.unsafeDone(allDone, Exit.void)
    }
    const recorder: FastPath.Recorder = {
      ok: (at, cacheHit, upstream) => {
        breakwater.record(at, { ok: true, latency: clock.unsafeCurrentTimeMillis() - at, cacheHit, upstream })
        finished()
      },
      failed: (at, error) => {
        breakwater.record(at, { ok: false, status: error === undefined ? "defect" : statusOf(error) })
        finished()
      }
    }

    /** Request `i` through the real relay. */
    const relayed = (i: number, at: number, p: Prompt): Effect.Effect<void> => {
      const request = requestOf(i, p)
      if (shared !== undefined && p.key !== undefined) shared.remember(request, p.key)
      // `JSON.stringify(request)`, but for the index the prompt's JSON, built once.
      const rawBody = `${p.body!.head}${i}${p.body!.tail}`
      calls.set(i, [])
      return Effect.flatMap(Effect.exit(relay.chat(request, { rawBody })), (exit) =>
        Effect.sync(() => {
          calls.delete(i)
          if (Exit.isSuccess(exit)) {
            const m = exit.value.metadata
            recorder.ok(at, m.cache === "hit", m.upstream)
          } else {
            const failure = Cause.failureOption(exit.cause)
            recorder.failed(at, failure._tag === "Some" ? failure.value : undefined)
          }
        }))
    }

    let fast: ((i: number, at: number, p: Prompt) => void) | undefined
    const runtime = yield* Effect.runtime<never>()
    const runFork = virtual === undefined ? undefined : Runtime.runFork(runtime)
    // A hedging relay races calls with timers of its own: no fast path for it.
    if (virtual !== undefined && runFork !== undefined && shared !== undefined && cooldowns !== undefined && !hedging) {
      const runSync = Runtime.runSync(runtime)
      const router = Router.make(relayOptions.router)
      const completion = completions(wl.promptTokens, wl.completionTokens)
      const cacheable = relayOptions.cacheMode === "all"
      const scope = relayOptions.cacheScope === "shared" ? undefined : "anonymous"
      const path = FastPath.make({
        relay,
        relayOptions,
        cache: shared,
        random,
        runSync,
        activeCooldowns: cooldowns.unsafeActive,
        plan: FastPath.planner(router, relayOptions.router),
        now: () => clock.unsafeCurrentTimeMillis(),
        schedule: (at, task) => virtual.schedule(at, task),
        scheduleTask: (task) => virtual.scheduler.scheduleTask(task),
        model: (name) => world.get(name),
        completion,
        promptTokens: wl.promptTokens,
        completionTokens: wl.completionTokens,
        record: recorder
      })
      fast = (i, at, p) => {
        // The requests of one prompt are the same but for `metadata`, which
        // the cache key leaves out: one key per prompt is the real key's partition.
        if (cacheable && p.key === undefined) p.key = `${scope ?? ""}:${p.id}`
        path.start(
          { index: i, arrivedAt: at, model: p.model, key: cacheable ? p.key : undefined },
          () => void runFork(relayed(i, at, p))
        )
      }
    }

    /** Request `at`: the direct column's call, and the same request through Breakwater. */
    const arrive = (at: number): Effect.Effect<void> | undefined => {
      const i = index++
      const p = prompt()

      // Direct: one call to the first upstream, whatever it answers.
      const answer = first.decide(at, i, 0, tokens)
      let outcome: Outcome
      if (answer.kind === "ok" && answer.delay <= scenario.directTimeout) {
        first.bill(p.model, wl.promptTokens, wl.completionTokens)
        outcome = { ok: true, latency: answer.delay, cacheHit: false, upstream: first.spec.name }
      } else if (answer.kind === "429" || answer.kind === "503") outcome = { ok: false, status: answer.kind }
      else outcome = { ok: false, status: "timeout" }
      direct.record(at, outcome)

      // Breakwater: the same request, where a forked fiber would start.
      inFlight++
      // In virtual time without the fast path (a hedging relay), the request
      // is a root fiber of its own (a fiber forked by a root that ends at
      // once would be interrupted with it).
      if (fast === undefined) return virtual === undefined ? Effect.fork(relayed(i, at, p)) : relayed(i, at, p)
      const start = fast
      virtual!.scheduler.scheduleTask(() => start(i, at, p))
      return undefined
    }

    const times = arrivals(scenario, duration, new Prng(hash(seed, 0xa771)))
    if (virtual === undefined) {
      for (const at of times) {
        const wait = at - clock.unsafeCurrentTimeMillis()
        if (wait > 0) yield* Effect.sleep(Duration.millis(wait))
        const fork = arrive(at)
        if (fork !== undefined) yield* fork
      }
      arrived = true
    } else {
      // In virtual time, arrivals are plain timers: the arrivals of one
      // millisecond, then a timer for the next (where the loop above sleeps).
      let next = times.next()
      const batch = (): void => {
        const now = clock.unsafeCurrentTimeMillis()
        while (next.done !== true && next.value <= now) {
          const fork = arrive(next.value)
          if (fork !== undefined) runFork!(fork)
          next = times.next()
        }
        if (next.done !== true) return virtual.schedule(next.value, batch)
        arrived = true
        if (inFlight === 0) Deferred.unsafeDone(allDone, Exit.void)
      }
      batch()
    }
    if (inFlight > 0 || !arrived) yield* Deferred.await(allDone)
    // This run's relay's own count (`breakwater_hedged_total` adds up every simulation running in the process).
    const { failed, lost, won } = relay.hedges()
    const hedged = hedging ? { calls: won + lost + failed, won, lost, failed } : null
    return report(scenario, { direct, breakwater, directWorld, world, trips, seed, duration, hedged })
  })).pipe(Effect.withRandom(options.fastPath === false ? Random.make(seed) : random))
}

/** Runs the scenario in virtual time (synchronously). */
export const run = (scenario: Scenario, options: RunOptions = {}): Report => {
  // The relay's errors are values here, never shown: no stack to capture for each.
  const stackTraceLimit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  let exit: Exit.Exit<Report>
  try {
    exit = VirtualTime.run(program(scenario, options))
  } finally {
    Error.stackTraceLimit = stackTraceLimit
  }
  if (Exit.isSuccess(exit)) return exit.value
  throw new Error(`simulation failed: ${Cause.pretty(exit.cause)}`)
}

// ---------------------------------------------------------------------------
// Results

const upstreamReport = (
  name: string,
  t: Traffic,
  total: number,
  served: number,
  trips: number | null
): UpstreamReport => ({
  name,
  calls: t.calls,
  callShare: total === 0 ? 0 : t.calls / total,
  served,
  ok: t.ok,
  rateLimited: t.rateLimited,
  quotaExceeded: t.quotaExceeded,
  serverErrors: t.serverErrors,
  hangs: t.hangs,
  outageAnswers: t.outageAnswers,
  aborted: t.aborted,
  breakerTrips: trips,
  costUsd: t.costUsd
})

const columnReport = (
  label: string,
  column: Column,
  world: World,
  duration: number,
  cache: boolean,
  trips: ReadonlyMap<string, number> | undefined,
  only: string | undefined,
  hedged: ColumnReport["hedged"]
): ColumnReport => {
  const calls = world.calls
  const errors: Record<string, number> = {}
  for (const [status, n] of [...column.errors].sort((a, b) => a[0].localeCompare(b[0]))) errors[status] = n
  const costUsd = world.costUsd
  return {
    label,
    requests: column.requests,
    successes: column.successes,
    errors,
    rate429: column.requests === 0 ? 0 : (column.errors.get("429") ?? 0) / column.requests,
    p50Ms: column.latency.percentile(0.5) ?? null,
    p99Ms: column.latency.percentile(0.99) ?? null,
    availability: column.requests === 0 ? 1 : column.successes / column.requests,
    costUsd,
    costPerDayUsd: (costUsd * 86_400_000) / duration,
    cacheHitRate: cache ? (column.requests === 0 ? 0 : column.cacheHits / column.requests) : null,
    upstreamCalls: calls,
    callsPerRequest: column.requests === 0 ? 0 : calls / column.requests,
    hedged,
    upstreams: world.models
      .filter((m) => only === undefined || m.spec.name === only)
      .map((m) =>
        upstreamReport(m.spec.name, m.traffic, calls, column.servedBy.get(m.spec.name) ?? 0, trips?.get(m.spec.name) ?? null)
      ),
    perMinute: column.minutes.map((m, minute) => ({
      minute,
      requests: m.requests,
      errorRate: m.requests === 0 ? 0 : m.errors / m.requests,
      p50Ms: m.latency.percentile(0.5) ?? null,
      p99Ms: m.latency.percentile(0.99) ?? null
    }))
  }
}

const report = (scenario: Scenario, raw: Raw): Report => {
  const first = scenario.upstreams[0].name
  const config = scenario.breakwater
  const notes: Array<string> = []
  if (config.store.kind === "redis") notes.push("store: redis is simulated with the in-memory stores (one replica).")
  if (config.keys.length > 0) notes.push("gateway keys (and their limits and budgets) are not simulated: traffic goes to the relay.")
  const used = new Set(config.upstreams.map((u) => u.name))
  const idle = scenario.upstreams.filter((u) => !used.has(u.name)).map((u) => u.name)
  if (idle.length > 0) notes.push(`not in the Breakwater config (no Breakwater traffic): ${idle.join(", ")}.`)
  const probes: Record<string, number> = {}
  for (const m of raw.world.models) probes[m.spec.name] = m.traffic.probes
  return {
    scenario: scenario.name,
    description: scenario.description,
    seed: raw.seed,
    durationMs: raw.duration,
    requests: raw.direct.requests,
    offeredRps: raw.direct.requests / (raw.duration / 1000),
    direct: columnReport(`Direct (${first} only)`, raw.direct, raw.directWorld, raw.duration, false, undefined, first, null),
    breakwater: columnReport(
      "Breakwater",
      raw.breakwater,
      raw.world,
      raw.duration,
      config.cache.enabled,
      raw.trips,
      undefined,
      raw.hedged
    ),
    probes,
    notes
  }
}
