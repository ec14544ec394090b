/**
 * The simulator's fast path: the relay's commonest requests — a cache hit,
 * a wait on a call in flight for the same prompt, and a first attempt that
 * succeeds — played in virtual time as plain synchronous steps on the
 * relay's own state (its upstreams' breakers, bulkheads and stats, its
 * cooldown store, router and cache), with one timer per upstream call and
 * no fiber. Every other request (a failure, a retry, a failover, a wait for
 * a cooldown, an open breaker, a full bulkhead, a hang) runs through the
 * real relay, started at the very moment it would have started anyway.
 *
 * It gives the same numbers as running every request through the relay
 * (the tests compare the two on every shipped scenario), because:
 * - it decides by looking ({@link Model.peek}) before it commits: a request
 *   it does not take is handed to the relay with nothing changed, and the
 *   random numbers the router drew for it are drawn again ({@link SimRandom});
 * - its steps run where the relay's fiber would run: as scheduler tasks in
 *   the same order, and its upstream calls end on timers set at the moment
 *   the relay's call would set its own;
 * - the relay and the fast path share one cache ({@link SharedCache}), with
 *   the relay's semantics (hits, joining a call in flight, LRU, TTL).
 */
import { type Cooldown, Pacing, type Relay, type ResponseCache, type Router, Upstream } from "@breakwater/core"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import type * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Hash from "effect/Hash"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import { PCGRandom } from "effect/Utils"

// ---------------------------------------------------------------------------
// Random numbers that can be drawn again

/**
 * Effect's `Random.make(seed)`, draw for draw (the same PCG generator, seeded
 * the same way), whose state can be saved and restored: the fast path's
 * router plan draws, and when the request goes to the relay after all, the
 * relay draws the same numbers again.
 */
export class SimRandom implements Random.Random {
  readonly [Random.RandomTypeId]: Random.RandomTypeId = Random.RandomTypeId
  private readonly prng: PCGRandom

  constructor(seed: number) {
    this.prng = new PCGRandom(Hash.hash(seed))
  }

  /** A draw of `next`, synchronously. */
  number(): number {
    return this.prng.number()
  }

  /** A draw of `nextIntBetween(0, n)`, synchronously. */
  integer(n: number): number {
    return this.prng.integer(n)
  }

  /** Its generator, for the relay's synchronous draws (the hot path's router plan), the same sequence. */
  get PRNG(): PCGRandom {
    return this.prng
  }

  save(): ReturnType<PCGRandom["getState"]> {
    return this.prng.getState()
  }

  restore(state: ReturnType<PCGRandom["getState"]>): void {
    this.prng.setState(state)
  }

  get next(): Effect.Effect<number> {
    return Effect.sync(() => this.prng.number())
  }

  get nextBoolean(): Effect.Effect<boolean> {
    return Effect.map(this.next, (n) => n > 0.5)
  }

  get nextInt(): Effect.Effect<number> {
    return Effect.sync(() => this.prng.integer(Number.MAX_SAFE_INTEGER))
  }

  nextRange(min: number, max: number): Effect.Effect<number> {
    return Effect.map(this.next, (n) => (max - min) * n + min)
  }

  nextIntBetween(min: number, max: number): Effect.Effect<number> {
    return Effect.sync(() => this.prng.integer(max - min) + min)
  }

  shuffle<A>(elements: Iterable<A>): Effect.Effect<Chunk.Chunk<A>> {
    return Effect.sync(() => {
      const buffer = Array.from(elements)
      for (let n = buffer.length; n >= 2; n--) {
        const k = this.prng.integer(n)
        const tmp = buffer[n - 1]!
        buffer[n - 1] = buffer[k]!
        buffer[k] = tmp
      }
      return Chunk.fromIterable(buffer)
    })
  }
}

// ---------------------------------------------------------------------------
// The cache, shared by the relay and the fast path

/** A cached answer, linked in the LRU order. */
interface Entry {
  readonly key: string
  readonly value: string
  readonly expiresAt: number
  prev: Entry | undefined
  next: Entry | undefined
}

/** A call in flight for one key: who waits for it, in the order they came. */
interface Flight {
  readonly waiters: Array<(exit: Exit.Exit<string, unknown>) => void>
}

/**
 * `ResponseCache.make` over `ResponseCache.makeStoreMemory`, step for step
 * (a hit refreshes the entry's place in the LRU order; an expired entry is
 * a miss; one caller leads a key's call and the others join it, sharing its
 * failure; the value is stored before the joiners wake, in the order they
 * joined), with a synchronous face for the fast path. Cache metrics are not
 * kept (the simulator reports none). Keys are the real cache's (`key`),
 * remembered per request object so that a repeated prompt is hashed once.
 */
export class SharedCache {
  // The LRU order is a doubly linked list (oldest first) beside the map: a
  // Map used as a queue (delete the oldest, re-insert on a hit) leaves holes
  // at its front that every `keys().next()` walks over again.
  private readonly entries = new Map<string, Entry>()
  private oldest: Entry | undefined = undefined
  private newest: Entry | undefined = undefined
  private readonly flights = new Map<string, Flight>()
  private readonly keys = new WeakMap<object, string>()
  private readonly ttl: number

  constructor(
    private readonly realKey: (request: unknown, scope?: string) => string,
    ttl: Duration.DurationInput,
    private readonly maxEntries: number,
    private readonly now: () => number
  ) {
    this.ttl = Duration.toMillis(ttl)
  }

  /** Says that `request`'s key is `key` (computed once per prompt). */
  remember(request: object, key: string): void {
    this.keys.set(request, key)
  }

  key(request: unknown, scope?: string): string {
    const known = typeof request === "object" && request !== null ? this.keys.get(request) : undefined
    return known ?? this.realKey(request, scope)
  }

  /** The store's `get`: the value, if present and fresh (and then the most recently used). */
  get(key: string): string | undefined {
    const entry = this.entries.get(key)
    if (entry === undefined) return undefined
    if (entry.expiresAt <= this.now()) {
      this.remove(entry)
      return undefined
    }
    this.unlink(entry)
    this.append(entry)
    return entry.value
  }

  private set(key: string, value: string): void {
    const current = this.entries.get(key)
    if (current !== undefined) this.remove(current)
    const entry: Entry = { key, value, expiresAt: this.now() + this.ttl, prev: undefined, next: undefined }
    this.entries.set(key, entry)
    this.append(entry)
    while (this.entries.size > this.maxEntries && this.oldest !== undefined) this.remove(this.oldest)
  }

  private remove(entry: Entry): void {
    this.entries.delete(entry.key)
    this.unlink(entry)
  }

  private unlink(entry: Entry): void {
    if (entry.prev === undefined) this.oldest = entry.next
    else entry.prev.next = entry.next
    if (entry.next === undefined) this.newest = entry.prev
    else entry.next.prev = entry.prev
    entry.prev = undefined
    entry.next = undefined
  }

  private append(entry: Entry): void {
    entry.prev = this.newest
    if (this.newest === undefined) this.oldest = entry
    else this.newest.next = entry
    this.newest = entry
  }

  /** The store's `invalidate`. */
  invalidate(key: string): void {
    const entry = this.entries.get(key)
    if (entry !== undefined) this.remove(entry)
  }

  /** The call in flight for `key`, if any. */
  flight(key: string): Flight | undefined {
    return this.flights.get(key)
  }

  /** Registers the caller as the leader of `key`'s call. */
  lead(key: string): Flight {
    const flight: Flight = { waiters: [] }
    this.flights.set(key, flight)
    return flight
  }

  /** The leader's call ended: store a success, end the flight, wake the waiters. */
  settle(key: string, flight: Flight, exit: Exit.Exit<string, unknown>, store = true): void {
    if (Exit.isSuccess(exit) && store) this.set(key, exit.value)
    this.flights.delete(key)
    for (const waiter of flight.waiters) waiter(exit)
  }

  /** The relay's side: `ResponseCache.getOrCompute`. */
  readonly getOrCompute = <E, R>(
    k: string,
    compute: Effect.Effect<string, E, R>,
    control?: ResponseCache.Control
  ): Effect.Effect<ResponseCache.Lookup, E, R> => {
    if (control?.lookup === false) {
      return Effect.map(compute, (value): ResponseCache.Lookup => {
        if (control.store !== false) this.set(k, value)
        return { value, status: "bypass" }
      })
    }
    return Effect.uninterruptibleMask((restore) =>
      Effect.suspend((): Effect.Effect<ResponseCache.Lookup, E, R> => {
        const cached = this.get(k)
        if (cached !== undefined) return Effect.succeed({ value: cached, status: "hit" })
        const flight = this.flights.get(k)
        if (flight === undefined) {
          const led = this.lead(k)
          return restore(compute).pipe(
            Effect.onExit((exit) => Effect.sync(() => this.settle(k, led, exit, control?.store !== false))),
            Effect.map((value): ResponseCache.Lookup => ({ value, status: "miss" }))
          )
        }
        const join = Effect.async<string, unknown>((resume) => {
          const waiter = (exit: Exit.Exit<string, unknown>) => resume(exit)
          flight.waiters.push(waiter)
          return Effect.sync(() => {
            const at = flight.waiters.indexOf(waiter)
            if (at >= 0) flight.waiters.splice(at, 1)
          })
        })
        return Effect.flatMap(restore(Effect.exit(join)), (exit): Effect.Effect<ResponseCache.Lookup, E, R> => {
          if (Exit.isSuccess(exit)) return Effect.succeed({ value: exit.value, status: "hit" })
          if (Cause.isInterruptedOnly(exit.cause)) return restore(this.getOrCompute(k, compute, control))
          return Effect.failCause(exit.cause as Cause.Cause<E>)
        })
      })
    )
  }

  readonly service: ResponseCache.ResponseCache = {
    key: (request, scope) => this.key(request, scope),
    getOrCompute: this.getOrCompute,
    invalidate: (k) => Effect.sync(() => this.invalidate(k)),
    inFlight: Effect.sync(() => this.flights.size)
  }
}

// ---------------------------------------------------------------------------
// Cooldowns and plans, synchronously

/** `Cooldown.makeStoreMemory`, with a synchronous read for the fast path. */
export class SharedCooldowns {
  private readonly cooldowns = new Map<string, Cooldown.Cooldown>()

  /** Active cooldowns at `now`; expired ones are dropped. */
  readonly unsafeActive = (now: number): ReadonlyMap<string, Cooldown.Cooldown> => {
    for (const [name, c] of this.cooldowns) if (c.until <= now) this.cooldowns.delete(name)
    return this.cooldowns
  }

  readonly service: Context.Tag.Service<Cooldown.CooldownStore> = {
    start: (upstream, cooldown) =>
      Effect.sync(() => {
        const current = this.cooldowns.get(upstream)
        if (current === undefined || current.until < cooldown.until) this.cooldowns.set(upstream, cooldown)
      }),
    clear: (upstream) =>
      Effect.sync(() => {
        this.cooldowns.delete(upstream)
      }),
    active: (now) => Effect.sync(() => this.unsafeActive(now)),
    unsafeActive: this.unsafeActive
  }
}

/**
 * `Router.make(options).plan`, synchronously: the same exclusions, the same
 * order and the same random draws, in the same order. (`Router.unsafePlan`,
 * where the core has it, is used instead.)
 */
export const planner = (router: Router.Router, options: Router.Options = {}) => {
  const unsafePlan = (router as {
    readonly unsafePlan?: (
      servers: ReadonlyArray<Upstream.Upstream>,
      now: number,
      cooldowns: ReadonlyMap<string, Cooldown.Cooldown>,
      random: SimRandom
    ) => Router.Plan
  }).unsafePlan
  if (unsafePlan !== undefined) return unsafePlan
  const strategy = options.strategy ?? "priority"
  const exploration = options.exploration ?? 0.05
  const threshold = options.panic === undefined || options.panic === true ? 0.5 : options.panic === false ? 0 : options.panic
  const busyness = (u: Upstream.Upstream): number => {
    const s = u.bulkhead.unsafeStats()
    return (s.active + s.waiting) / s.maxConcurrent
  }
  const order = (ups: Array<Upstream.Upstream>, random: SimRandom): ReadonlyArray<Upstream.Upstream> => {
    if (ups.length <= 1) return ups
    const weighted = () => {
      const keyed = ups.map((u) => [Math.pow(random.number(), 1 / Math.max(u.weight, 1e-9)), u] as const)
      return keyed.sort((a, b) => b[0] - a[0]).map(([, u]) => u)
    }
    switch (strategy) {
      case "priority":
        return weighted().sort((a, b) => a.priority - b.priority)
      case "weighted":
        return weighted()
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
  return (
    servers: ReadonlyArray<Upstream.Upstream>,
    now: number,
    cooldowns: ReadonlyMap<string, Cooldown.Cooldown>,
    random: SimRandom
  ): Router.Plan => {
    const ready: Array<Upstream.Upstream> = []
    const excluded: Array<readonly [Upstream.Upstream, Router.Exclusion]> = []
    let open = 0
    let forced = 0
    for (const u of servers) {
      const cooldown = cooldowns.get(u.name)
      if (!u.breaker.unsafeIsAvailable(now)) {
        excluded.push([u, "circuit-open"])
        if (u.breaker.unsafeIsForcedOpen?.() === true) forced++
        else open++
      } else if (cooldown !== undefined && cooldown.until > now) {
        excluded.push([u, cooldown.reason === "auth-failed" ? "auth-failed" : "cooling-down"])
      } else if (u.bulkhead.unsafeStats().available <= 0) excluded.push([u, "bulkhead-full"])
      else ready.push(u)
    }
    const counted = servers.length - forced
    if (open === 0 || (counted - open) / counted >= threshold) {
      return { order: order(ready, random), excluded, panic: false }
    }
    const panicked = (u: Upstream.Upstream, why: Router.Exclusion) => why === "circuit-open" && u.breaker.unsafeIsForcedOpen?.() !== true
    for (const [u, why] of excluded) if (panicked(u, why)) ready.push(u)
    return { order: order(ready, random), excluded: excluded.filter(([u, why]) => !panicked(u, why)), panic: true }
  }
}

// ---------------------------------------------------------------------------
// The fast path

const NO_HEADERS: Readonly<Record<string, string | undefined>> = {}

/** How a request ended, as the simulator records it. */
export interface Recorder {
  readonly ok: (arrivedAt: number, cacheHit: boolean, upstream: string | undefined) => void
  readonly failed: (arrivedAt: number, error: Relay.RelayError | undefined) => void
}

/** A simulated upstream as the fast path needs it (see `Upstreams.Model`). */
export interface SimulatedModel {
  readonly index: number
  readonly peek: (now: number, request: number, nth: number, tokens: number) => { readonly kind: string; readonly delay: number }
  readonly decide: (now: number, request: number, nth: number, tokens: number) => { readonly kind: string; readonly delay: number }
  /** `decide` for the answer `peek` just gave as "ok" (nothing changed since), without drawing again. */
  readonly commitOk: (now: number, tokens: number) => void
  readonly bill: (model: string, promptTokens: number, completionTokens: number) => void
}

export interface Options {
  readonly relay: Relay.Relay
  readonly relayOptions: Relay.Options
  readonly cache: SharedCache
  readonly random: SimRandom
  /** Runs a synchronous effect in the simulation's runtime (its clock, random numbers, scheduler). */
  readonly runSync: <A>(effect: Effect.Effect<A>) => A
  /** The relay's cooldowns now ({@link SharedCooldowns}). */
  readonly activeCooldowns: (now: number) => ReadonlyMap<string, Cooldown.Cooldown>
  /** The relay's router's plan, synchronously ({@link planner}). */
  readonly plan: (
    servers: ReadonlyArray<Upstream.Upstream>,
    now: number,
    cooldowns: ReadonlyMap<string, Cooldown.Cooldown>,
    random: SimRandom
  ) => Router.Plan
  readonly now: () => number
  /** A timer: `task` runs at `at` as a scheduler task. */
  readonly schedule: (at: number, task: () => void) => void
  readonly scheduleTask: (task: () => void) => void
  readonly model: (upstream: string) => SimulatedModel | undefined
  readonly completion: (model: string) => string
  readonly promptTokens: number
  readonly completionTokens: number
  readonly record: Recorder
}

/** A request as the fast path sees it: its number, arrival, model and cache key (if cacheable). */
export interface Request {
  readonly index: number
  readonly arrivedAt: number
  readonly model: string
  readonly key: string | undefined
}

/**
 * Makes the fast path. `start(request, relay)` plays a request from its
 * start (it must run where the relay's fiber would start); `relay` runs the
 * request through the real relay, started at once, when the fast path does
 * not take it: an attempt that would not succeed, a breaker that is not
 * closed, a full or queued bulkhead, a plan in panic mode or with no
 * upstream, account limits (`requestsPerMinute`, `tokensPerMinute`), or a
 * core without the synchronous admission hooks.
 */
export const make = (options: Options) => {
  const { cache, random, runSync } = options
  const report = options.record
  const relayOptions = options.relayOptions
  const tokens = options.promptTokens + options.completionTokens
  const maxAttempts = relayOptions.maxAttempts ?? 3
  const budget = Duration.toMillis(Duration.decode(relayOptions.requestTimeout ?? Duration.seconds(60)))
  const upstreams = options.relay.upstreams

  const servingCache = new Map<string, ReadonlyArray<Upstream.Upstream>>()
  const serving = (model: string): ReadonlyArray<Upstream.Upstream> => {
    let found = servingCache.get(model)
    if (found === undefined) {
      found = upstreams.filter((u) => u.modelFor(model) !== undefined)
      servingCache.set(model, found)
    }
    return found
  }

  /** What the relay caches for an answer of `upstream` for `model`: "<upstream>\n<body>" (built once). */
  const values = new Map<string, Map<string, string>>()
  const cached = (upstream: string, model: string): string => {
    let byModel = values.get(upstream)
    if (byModel === undefined) values.set(upstream, byModel = new Map())
    let value = byModel.get(model)
    if (value === undefined) byModel.set(model, value = `${upstream}\n${options.completion(model)}`)
    return value
  }

  /** A joiner's wake-up: the leader's answer is a hit; its failure is the joiner's too. */
  const joined = (request: Request, exit: Exit.Exit<string, unknown>, retry: () => void): void => {
    if (Exit.isSuccess(exit)) return report.ok(request.arrivedAt, true, exit.value.slice(0, exit.value.indexOf("\n")))
    if (Cause.isInterruptedOnly(exit.cause)) return retry()
    const failure = Cause.failureOption(exit.cause)
    report.failed(request.arrivedAt, Option.isSome(failure) ? failure.value as Relay.RelayError : undefined)
  }

  /** The first attempt, when it will succeed; false (nothing changed) when the relay must play the request. */
  const firstAttempt = (request: Request): boolean => {
    const now = options.now()
    const servers = serving(request.model)
    if (servers.length === 0 || maxAttempts < 1) return false
    const saved = random.save()
    const plan = options.plan(servers, now, options.activeCooldowns(now), random)
    const u = plan.order[0]
    const refuse = () => {
      random.restore(saved)
      return false
    }
    if (plan.panic || u === undefined || u.requestLimit !== undefined || u.tokenLimit !== undefined) return refuse()
    const model = options.model(u.name)
    if (model === undefined) return refuse()
    const answer = model.peek(now, request.index, 0, tokens)
    if (answer.kind !== "ok" || !(answer.delay < Math.min(Duration.toMillis(u.timeout), budget))) return refuse()
    // The bulkhead's and the breaker's synchronous admission (as `Bulkhead.run`
    // and `CircuitBreaker.protect` admit in the states where they hold nothing).
    const { breaker, bulkhead } = u
    if (bulkhead.unsafeTryAcquire === undefined || bulkhead.unsafeRelease === undefined || breaker.unsafeRecord === undefined) {
      return refuse()
    }
    const ticket = breaker.unsafeTryAdmit?.()
    if (ticket === undefined) return refuse()
    // The upstream's rate-limit window, as the relay's pacer has learnt it (`Pacing`).
    const pacer = Pacing.pacerOf(u)
    if (!pacer.tryTake(now)) return refuse()
    if (!bulkhead.unsafeTryAcquire()) {
      pacer.giveBack(now)
      return refuse()
    }

    // Committed: the attempt as the relay makes it (a primary call of its retry budget).
    model.commitOk(now, tokens)
    options.relay.retryBudget.recordPrimary()
    const flight = request.key === undefined ? undefined : cache.lead(request.key)
    const target = u.modelFor(request.model) ?? request.model
    const record = breaker.unsafeRecord
    const release = bulkhead.unsafeRelease
    pacer.sent()
    options.schedule(now + answer.delay, () => {
      const end = options.now()
      pacer.answered(end, 200, NO_HEADERS)
      model.bill(target, options.promptTokens, options.completionTokens)
      const transition = record(ticket, Exit.void, end, now)
      if (transition !== undefined) runSync(transition)
      const handedOver = release()
      if (handedOver !== undefined) runSync(handedOver)
      Upstream.record(u, end, end - now, undefined)
      if (flight !== undefined) cache.settle(request.key!, flight, Exit.succeed(cached(u.name, target)))
      report.ok(request.arrivedAt, false, u.name)
    })
    return true
  }

  const start = (request: Request, relay: () => void): void => {
    if (request.key !== undefined) {
      const hit = cache.get(request.key)
      if (hit !== undefined) return report.ok(request.arrivedAt, true, hit.slice(0, hit.indexOf("\n")))
      const flight = cache.flight(request.key)
      if (flight !== undefined) {
        flight.waiters.push((exit) => options.scheduleTask(() => joined(request, exit, () => start(request, relay))))
        return
      }
    }
    if (!firstAttempt(request)) relay()
  }

  return { start }
}
