/**
 * The console's live feed (`GET /admin/events`, server-sent events): what the
 * resilience layer is doing, for the operator console (Console.ts).
 *
 * Fed by the core's own signals: each upstream's breaker transitions (its
 * `changes` stream), the cooldown store (observed as cooldowns start and
 * end), the health checks' status, the bulkheads, the gateway's keys, and
 * the request log record (Http.ts) for the tail and the charts.
 *
 * Cost when no console is open: the request log adds a few counters to the
 * current 5-second point (one map lookup, a few additions; no allocation,
 * no fiber, no effect), and a timer rolls the point into a ring of the last
 * 15 minutes every 5 s (180 points), so that a console opened during an
 * incident sees what led to it. The per-second snapshots, the request tail
 * and the event queues exist only while a console is connected.
 *
 * A slow console never slows the relay: each subscriber has a bounded buffer
 * that the feed appends to without waiting; a subscriber whose buffer is
 * full (it reads slower than events come) is dropped (told so, then its
 * stream ends), and the request tail is sampled at {@link TAIL_PER_SECOND}
 * requests a second (the others are counted as skipped).
 *
 * Nothing in an event comes from a request's or a response's body, nor from
 * a header: key names (never keys), model names (bounded), upstream names,
 * statuses, times, costs and the breaker's and cooldowns' own reasons.
 */
import type { CircuitBreaker, Cooldown, Health, Upstream } from "@breakwater/core"
import type * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import type { KeyView } from "./Gateway.js"

/** Seconds per chart point. */
export const POINT_SECONDS = 5
/** Points kept: 15 minutes. */
export const POINTS = 180
/** Requests a second that make the tail; the rest are counted as skipped. */
export const TAIL_PER_SECOND = 25
/** Requests kept for a console that connects (only while one is connected). */
const TAIL_KEPT = 100
/** Bytes a subscriber may have waiting before it is dropped. */
const MAX_PENDING_BYTES = 1_000_000

/** The fields of the request log record (Http.ts) the feed reads; nothing else of a request is seen. */
export interface Logged {
  readonly key: string
  readonly model: string | undefined
  readonly upstream: string | undefined
  readonly attempts: number | undefined
  readonly cache: string | undefined
  readonly costUsd: number | undefined
}

/** What the feed reads of the config served now (a reload changes it). */
export interface Source {
  readonly upstreams: ReadonlyArray<Upstream.Upstream>
  readonly health: Health.Health | undefined
  readonly keys: Effect.Effect<ReadonlyArray<KeyView>>
  readonly cooldowns: Context_CooldownStore
  /** Runs an effect on the config's runtime. */
  readonly run: <A>(effect: Effect.Effect<A>) => Promise<A>
}

type Context_CooldownStore = Context.Tag.Service<Cooldown.CooldownStore>

/** One chart point: 5 seconds. */
export interface Point {
  /** Epoch millis of the point's start. */
  readonly t: number
  /** Client requests a second, by the upstream that answered ("cache": a cache hit; "none": refused or failed before one answered). */
  readonly rps: Readonly<Record<string, number>>
  /** Client-visible errors (5xx) a second. */
  readonly clientErrors: number
  /** Failed upstream attempts a second (absorbed by retries and failover unless also client-visible). */
  readonly upstreamErrors: number
  readonly p50: number | null
  readonly p99: number | null
  /** Cache hits / lookups; null when nothing was looked up. */
  readonly cacheHitRate: number | null
  /** USD a minute, at this point's rate. */
  readonly costPerMinute: number
  /** Upstream attempts and failed attempts in the point, by upstream (for the last-minute figures). */
  readonly attempts: Readonly<Record<string, readonly [number, number]>>
}

export interface Feed {
  /** Notes one relay request at its log line (Http.ts). Synchronous and cheap. */
  readonly record: (log: Logged, status: number, latencyMs: number) => void
  /** Notes a breaker transition (Server.ts subscribes to each upstream's `changes`). */
  readonly transition: (t: CircuitBreaker.Transition) => void
  /** The cooldown store, observed: its starts and clears become events. */
  readonly observe: (store: Context_CooldownStore) => Context_CooldownStore
  /** A console's stream of server-sent events; ends when the client is dropped or `closing()` turns true (checked each second). */
  readonly subscribe: (closing: () => boolean) => Stream.Stream<string>
  /** Consoles connected now. */
  readonly subscribers: () => number
  /** Stops the timers; subscribers' streams end. */
  readonly close: () => void
}

interface Subscriber {
  /** True when its stream must end (the server drains, or the config it was opened on was replaced). */
  readonly closing: () => boolean
  pending: Array<string>
  bytes: number
  closed: boolean
  wake: (() => void) | undefined
}

interface LastCooldown {
  readonly at: number
  readonly until: number
  readonly reason: Cooldown.Reason
}

/** Latency histogram buckets: bucket i holds latencies up to 1.2^i ms (i < 80: up to ~2 hours). */
const BUCKETS = 80
const LOG_BASE = Math.log(1.2)
const bucketOf = (ms: number): number => ms <= 1 ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log(ms) / LOG_BASE))
const bucketMs = (i: number): number => Math.round(Math.pow(1.2, i) * 10) / 10

const percentile = (h: Uint32Array, total: number, q: number): number | null => {
  if (total === 0) return null
  const rank = Math.ceil(q * total)
  let seen = 0
  for (let i = 0; i < BUCKETS; i++) {
    seen += h[i]!
    if (seen >= rank) return bucketMs(i)
  }
  return bucketMs(BUCKETS - 1)
}

const sse = (event: string, data: unknown): string => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`

const bounded = (s: string | undefined): string | null => s === undefined ? null : s.length > 100 ? `${s.slice(0, 97)}...` : s

export const make = (source: () => Source): Feed => {
  // ----- the current 5-second point (always kept: a few counters) ----------
  let started = Date.now()
  let byUpstream = new Map<string, number>()
  let requests = 0
  let clientErrors = 0
  let cacheLookups = 0
  let cacheHits = 0
  let cost = 0
  const latency = new Uint32Array(BUCKETS)
  /** Upstream attempt counters at the last roll, by name. */
  const lastStats = new Map<string, readonly [number, number]>()
  const ring: Array<Point> = []
  /** 429s answered per key (its own limits or budget): "limits hit". */
  const limited = new Map<string, number>()
  const lastTransition = new Map<string, CircuitBreaker.Transition>()
  const lastCooldown = new Map<string, LastCooldown>()

  // ----- only while a console is connected ----------------------------------
  const subscribers = new Set<Subscriber>()
  const tail: Array<unknown> = []
  let tailSecond = 0
  let tailThisSecond = 0
  let skipped = 0
  let ticker: ReturnType<typeof setInterval> | undefined
  let closed = false

  const broadcast = (chunk: string) => {
    for (const s of subscribers) push(s, chunk)
  }

  const push = (s: Subscriber, chunk: string) => {
    if (s.closed) return
    if (s.bytes + chunk.length > MAX_PENDING_BYTES) {
      // Too slow: dropped, never waited for.
      s.closed = true
      s.pending.push(sse("dropped", { reason: "the console read events too slowly; reconnect" }))
      subscribers.delete(s)
      if (subscribers.size === 0) stopTicker()
    } else {
      s.pending.push(chunk)
      s.bytes += chunk.length
    }
    const wake = s.wake
    s.wake = undefined
    wake?.()
  }

  const record = (log: Logged, status: number, latencyMs: number): void => {
    requests++
    // A cache hit is answered by no upstream (its metadata names the one that answered first).
    const upstream = log.cache === "hit" ? "cache" : log.upstream ?? "none"
    byUpstream.set(upstream, (byUpstream.get(upstream) ?? 0) + 1)
    if (status >= 500) clientErrors++
    else if (status === 429) limited.set(log.key, (limited.get(log.key) ?? 0) + 1)
    const cache = log.cache
    if (cache === "hit") {
      cacheHits++
      cacheLookups++
    } else if (cache === "miss") cacheLookups++
    if (log.costUsd !== undefined) cost += log.costUsd
    latency[bucketOf(latencyMs)]!++
    if (subscribers.size === 0) return
    const now = Date.now()
    const second = Math.floor(now / 1000)
    if (second !== tailSecond) {
      tailSecond = second
      tailThisSecond = 0
    }
    if (++tailThisSecond > TAIL_PER_SECOND) {
      skipped++
      return
    }
    const entry = {
      at: now,
      key: log.key,
      model: bounded(log.model),
      upstream: log.upstream ?? null,
      attempts: log.attempts ?? 0,
      status,
      latencyMs: Math.round(latencyMs * 10) / 10,
      costUsd: log.costUsd ?? 0,
      cache: log.cache ?? null
    }
    tail.push(entry)
    if (tail.length > TAIL_KEPT) tail.shift()
    broadcast(sse("request", entry))
  }

  /** The point being filled, as it stands at `now`; `advance` moves the upstreams' counters on (a roll). */
  const pointNow = (now: number, advance: boolean): Point => {
    const seconds = Math.max(1, (now - started) / 1000)
    const rps: Record<string, number> = {}
    for (const [name, n] of byUpstream) rps[name] = n / seconds
    let upstreamErrors = 0
    const attempts: Record<string, readonly [number, number]> = {}
    for (const u of source().upstreams) {
      const before = lastStats.get(u.name)
      const counts = [u.stats.requests, u.stats.failures] as const
      // A reload may replace an upstream's counters: never a negative count.
      const from = before ?? [0, 0]
      const d = [Math.max(0, counts[0] - from[0]), Math.max(0, counts[1] - from[1])] as const
      if (advance) lastStats.set(u.name, counts)
      attempts[u.name] = d
      upstreamErrors += d[1]
    }
    return {
      t: started,
      rps,
      clientErrors: clientErrors / seconds,
      upstreamErrors: upstreamErrors / seconds,
      p50: percentile(latency, requests, 0.5),
      p99: percentile(latency, requests, 0.99),
      cacheHitRate: cacheLookups === 0 ? null : cacheHits / cacheLookups,
      costPerMinute: (cost / seconds) * 60,
      attempts
    }
  }

  const roll = () => {
    const now = Date.now()
    const point = pointNow(now, true)
    ring.push(point)
    if (ring.length > POINTS) ring.shift()
    started = now
    byUpstream = new Map()
    requests = clientErrors = cacheLookups = cacheHits = 0
    cost = 0
    latency.fill(0)
    if (subscribers.size > 0) broadcast(sse("point", point))
  }
  const roller = setInterval(roll, POINT_SECONDS * 1000)
  roller.unref()

  /** Attempts and failures of the last minute (12 points and the current one), by upstream. */
  const lastMinute = (u: Upstream.Upstream): readonly [number, number] => {
    const before = lastStats.get(u.name)
    let calls = Math.max(0, u.stats.requests - (before?.[0] ?? 0))
    let failed = Math.max(0, u.stats.failures - (before?.[1] ?? 0))
    for (let i = Math.max(0, ring.length - 11); i < ring.length; i++) {
      const a = ring[i]!.attempts[u.name]
      if (a !== undefined) {
        calls += a[0]
        failed += a[1]
      }
    }
    return [calls, failed]
  }

  const snapshot = (src: Source): Effect.Effect<unknown> =>
    Effect.gen(function*() {
      const now = Date.now()
      const statuses = src.health === undefined ? undefined : yield* src.health.status
      const active = yield* src.cooldowns.active(now)
      const minute = src.upstreams.map(lastMinute)
      const total = minute.reduce((n, m) => n + m[0], 0)
      const upstreams = yield* Effect.forEach(src.upstreams, (u, i) =>
        Effect.map(u.breaker.snapshot, (b) => {
          const status = statuses?.find((s) => s.upstream === u.name)
          const cooldown = active.get(u.name)
          const started = lastCooldown.get(u.name)
          const bulk = u.bulkhead.unsafeStats()
          const t = lastTransition.get(u.name)
          return {
            name: u.name,
            state: status?.state ??
              (cooldown !== undefined ? "cooling-down" : b.state === "Closed" ? "healthy" : b.state === "HalfOpen" ? "recovering" : "open"),
            breaker: b.state,
            breakerReason: t === undefined || t.to !== b.state ? null : t.reason,
            breakerSince: t === undefined || t.to !== b.state ? null : t.at,
            openUntil: b.openUntil ?? null,
            consecutiveFailures: b.consecutiveFailures,
            cooldownUntil: cooldown?.until ?? null,
            cooldownReason: cooldown?.reason ?? null,
            // How long the cooldown was asked for, when this replica saw it start.
            cooldownSeconds: cooldown !== undefined && started !== undefined && started.until === cooldown.until
              ? Math.round((started.until - started.at) / 1000)
              : null,
            inFlight: bulk.active,
            maxConcurrent: bulk.maxConcurrent,
            latencyEwmaMs: u.stats.latencyEwmaMs === undefined ? null : Math.round(u.stats.latencyEwmaMs * 10) / 10,
            probeLatencyMs: status?.probeLatencyMs === undefined ? null : Math.round(status.probeLatencyMs * 10) / 10,
            lastProbeOk: status?.lastProbeOk ?? null,
            requestsLastMinute: minute[i]![0],
            failuresLastMinute: minute[i]![1],
            share: total === 0 ? 0 : minute[i]![0] / total
          }
        }))
      const keys = (yield* src.keys).map((k) => ({ ...k, limitsHit: limited.get(k.name) ?? 0 }))
      return { at: now, upstreams, keys, tailSkipped: skipped, current: pointNow(now, false) }
    })

  const tick = () => {
    for (const s of [...subscribers]) {
      if (closed || s.closing()) {
        s.closed = true
        subscribers.delete(s)
        s.wake?.()
      }
    }
    if (subscribers.size === 0) return stopTicker()
    const src = source()
    src.run(snapshot(src)).then(
      (snap) => broadcast(sse("snapshot", snap)),
      () => {}
    )
  }

  const stopTicker = () => {
    if (ticker !== undefined) clearInterval(ticker)
    ticker = undefined
    tail.length = 0
  }

  const transition = (t: CircuitBreaker.Transition): void => {
    const before = lastTransition.get(t.breaker)
    // A breaker kept across a reload is watched by both configs for a while: one event.
    if (before !== undefined && before.at === t.at && before.to === t.to && before.from === t.from) return
    lastTransition.set(t.breaker, t)
    if (subscribers.size > 0) broadcast(sse("breaker", t))
  }

  const observe = (store: Context_CooldownStore): Context_CooldownStore => ({
    start: (upstream, cooldown) =>
      Effect.zipRight(
        store.start(upstream, cooldown),
        Effect.sync(() => {
          const at = Date.now()
          const before = lastCooldown.get(upstream)
          // The store keeps the later end: so does the record of it.
          if (before !== undefined && before.until >= cooldown.until && before.until > at) return
          lastCooldown.set(upstream, { at, until: cooldown.until, reason: cooldown.reason })
          if (subscribers.size > 0) {
            broadcast(sse("cooldown", { upstream, at, until: cooldown.until, reason: cooldown.reason }))
          }
        })
      ),
    clear: (upstream) =>
      Effect.zipRight(
        store.clear(upstream),
        Effect.sync(() => {
          lastCooldown.delete(upstream)
          if (subscribers.size > 0) broadcast(sse("cooldown", { upstream, at: Date.now(), until: null, reason: null }))
        })
      ),
    active: store.active,
    // The relay's hot path reads cooldowns synchronously; without this read it never runs (a read starts nothing).
    ...(store.unsafeActive === undefined ? {} : { unsafeActive: store.unsafeActive }),
    // Who follows clears (the pacers' holds) hears them as the store tells them.
    ...(store.onClear === undefined ? {} : { onClear: store.onClear })
  })

  const subscribe = (closing: () => boolean): Stream.Stream<string> =>
    Stream.unwrapScoped(Effect.gen(function*() {
      const s: Subscriber = { closing, pending: [], bytes: 0, closed: false, wake: undefined }
      const src = source()
      const first = yield* Effect.promise(() => src.run(snapshot(src)))
      s.pending.push(
        // The browser reconnects after 2 s if the stream breaks.
        "retry: 2000\n\n",
        sse("hello", {
          pointSeconds: POINT_SECONDS,
          points: ring,
          transitions: [...lastTransition.values()],
          tail
        }),
        sse("snapshot", first)
      )
      subscribers.add(s)
      if (ticker === undefined) {
        ticker = setInterval(tick, 1000)
        ticker.unref()
      }
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          s.closed = true
          if (subscribers.delete(s) && subscribers.size === 0) stopTicker()
        })
      )
      const next: Effect.Effect<string, Option.Option<never>> = Effect.suspend(() => {
        if (s.pending.length > 0) {
          const out = s.pending.join("")
          s.pending = []
          s.bytes = 0
          return Effect.succeed(out)
        }
        if (s.closed) return Effect.fail(Option.none())
        return Effect.zipRight(
          Effect.async<void>((resume) => {
            s.wake = () => resume(Effect.void)
            return Effect.sync(() => {
              s.wake = undefined
            })
          }),
          next
        )
      })
      return Stream.repeatEffectOption(next)
    }))

  const close = () => {
    clearInterval(roller)
    closed = true
    tick()
  }

  return {
    record,
    transition,
    observe,
    subscribe,
    subscribers: () => subscribers.size,
    close
  }
}
