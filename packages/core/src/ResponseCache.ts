/**
 * A cache of complete upstream responses, keyed by a stable hash of the
 * canonical request: the same model, messages and output-changing parameters
 * give the same key whatever the order of their fields. Concurrent identical
 * misses are coalesced (single-flight): one upstream call, the others wait for
 * it. Only successful results are stored; failures are shared with the
 * waiters of that flight but never cached.
 *
 * Entries live behind {@link ResponseCacheStore} (in memory with LRU eviction
 * here; Redis for several replicas). A failing store never fails a request:
 * the cache then misses and the request goes upstream.
 *
 * @since 0.1.0
 */
import { createHash } from "node:crypto"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"

/** hit: served without a new upstream call (stored, or shared with a call in flight). */
export type Status = "hit" | "miss" | "bypass"

/** A caller's cache directives, after HTTP `cache-control`. */
export interface Control {
  /** `false` (no-cache): do not answer from the cache. Default true. */
  readonly lookup?: boolean
  /** `false` (no-store): do not store this response. Default true. */
  readonly store?: boolean
}

export interface Lookup {
  readonly value: string
  readonly status: Status
}

export class ResponseCacheStoreError extends Data.TaggedError("ResponseCacheStoreError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** Where entries live. Values are opaque text (a response body, as relayed). */
export class ResponseCacheStore extends Context.Tag("@breakwater/core/ResponseCacheStore")<
  ResponseCacheStore,
  {
    readonly get: (key: string) => Effect.Effect<Option.Option<string>, ResponseCacheStoreError>
    readonly set: (key: string, value: string, ttl: Duration.Duration) => Effect.Effect<void, ResponseCacheStoreError>
    readonly delete: (key: string) => Effect.Effect<void, ResponseCacheStoreError>
  }
>() {}

export interface Options {
  /** How long an entry lives. Default 5 minutes. */
  readonly ttl?: Duration.DurationInput
  /** Whether a computed value may be stored (e.g. a complete, valid body). Default: all. */
  readonly isCacheable?: ((value: string) => boolean) | undefined
  /**
   * Top-level request fields that do not change the output and so stay out
   * of the key. Default: `stream`, `stream_options`, `metadata`, `store`.
   * `user` is kept on purpose: an answer given to one end user is never
   * served to another.
   */
  readonly ignoredFields?: ReadonlyArray<string> | undefined
}

export interface ResponseCache {
  /**
   * The key of a request: SHA-256 of its canonical JSON, less ignored fields.
   * `scope` (e.g. a gateway key's name) separates tenants: the same request
   * in two scopes has two keys. Without a scope, the key is the request's alone.
   */
  readonly key: (request: unknown, scope?: string) => string
  /**
   * The cached value of `key`, or the value of `compute`, stored if
   * cacheable. Concurrent misses of one key share one `compute`.
   */
  readonly getOrCompute: <E, R>(
    key: string,
    compute: Effect.Effect<string, E, R>,
    control?: Control
  ) => Effect.Effect<Lookup, E, R>
  readonly invalidate: (key: string) => Effect.Effect<void>
  /** Keys being computed right now. */
  readonly inFlight: Effect.Effect<number>
}

export const ResponseCache = Context.GenericTag<ResponseCache>("@breakwater/core/ResponseCache")

const lookupsCounter = Metric.counter("breakwater_cache_lookups_total", {
  description: "Cache lookups by result (hit, miss, bypass)",
  incremental: true
})
const storeErrorsCounter = Metric.counter("breakwater_cache_store_errors_total", {
  description: "Cache store calls that failed (the request went on without the cache)",
  incremental: true
})
const counted = {
  hit: Metric.tagged(lookupsCounter, "result", "hit"),
  miss: Metric.tagged(lookupsCounter, "result", "miss"),
  bypass: Metric.tagged(lookupsCounter, "result", "bypass")
} as const

/**
 * JSON with object keys sorted at every depth, so field order never changes a
 * key. Iterative, with its own stack (three parallel arrays: the open
 * containers, their sorted keys, the next index), so that a request nested
 * thousands deep, which `JSON.parse` accepts, cannot overflow the call stack.
 */
export const canonicalJson = (value: unknown): string => {
  let out = ""
  const open: Array<ReadonlyArray<unknown> | Record<string, unknown>> = []
  const keysOf: Array<ReadonlyArray<string> | undefined> = []
  const next: Array<number> = []
  let v = value
  for (;;) {
    // Write `v`: a scalar, or the start of an array or object.
    if (v === null || typeof v !== "object") out += JSON.stringify(v) ?? "null"
    else if (Array.isArray(v)) {
      out += "["
      open.push(v)
      keysOf.push(undefined)
      next.push(0)
    } else {
      const record = v as Record<string, unknown>
      const keys: Array<string> = []
      for (const k of Object.keys(record)) if (record[k] !== undefined) keys.push(k)
      out += "{"
      open.push(record)
      keysOf.push(keys.sort())
      next.push(0)
    }
    // Find the next value to write, closing finished containers.
    for (;;) {
      const d = open.length - 1
      if (d < 0) return out
      const keys = keysOf[d]
      const i = next[d]!
      if (keys === undefined) {
        const array = open[d] as ReadonlyArray<unknown>
        if (i === array.length) {
          out += "]"
        } else {
          if (i > 0) out += ","
          next[d] = i + 1
          v = array[i]
          break
        }
      } else if (i === keys.length) {
        out += "}"
      } else {
        const k = keys[i]!
        out += (i > 0 ? "," : "") + JSON.stringify(k) + ":"
        next[d] = i + 1
        v = (open[d] as Record<string, unknown>)[k]
        break
      }
      open.pop()
      keysOf.pop()
      next.pop()
    }
  }
}

const defaultIgnored = ["stream", "stream_options", "metadata", "store"]

export const make = (options: Options = {}): Effect.Effect<ResponseCache, never, ResponseCacheStore> =>
  Effect.map(ResponseCacheStore, (store) => {
    const ttl = Duration.decode(options.ttl ?? Duration.minutes(5))
    const isCacheable = options.isCacheable ?? (() => true)
    const ignored = new Set(options.ignoredFields ?? defaultIgnored)
    const flights = new Map<string, Deferred.Deferred<string, unknown>>()

    const key = (request: unknown, scope?: string): string => {
      let subject = request
      if (request !== null && typeof request === "object" && !Array.isArray(request)) {
        const kept: Record<string, unknown> = {}
        for (const [k, v] of Object.entries(request)) if (!ignored.has(k)) kept[k] = v
        subject = kept
      }
      const hash = createHash("sha256")
      // Length-prefixed, so no scope can run into the JSON that follows it.
      if (scope !== undefined) hash.update(`${scope.length}:${scope}`)
      return hash.update(canonicalJson(subject)).digest("hex")
    }

    // A store failure costs a cache miss, never a request.
    const safely = <A>(effect: Effect.Effect<A, ResponseCacheStoreError>, fallback: A): Effect.Effect<A> =>
      Effect.catchAll(effect, () => Effect.as(Metric.increment(storeErrorsCounter), fallback))

    const save = (k: string, value: string, control: Control | undefined): Effect.Effect<void> =>
      control?.store === false || !isCacheable(value) ? Effect.void : safely(store.set(k, value, ttl), undefined)

    // The flight is registered synchronously, in the same step as the check
    // that found none, so two callers can never both lead one key.
    // The caller runs uninterruptibly from the check to here, so the flight
    // is always settled and removed.
    const lead = <E, R>(
      restore: <X, Y, Z>(effect: Effect.Effect<X, Y, Z>) => Effect.Effect<X, Y, Z>,
      k: string,
      compute: Effect.Effect<string, E, R>,
      control: Control | undefined
    ): Effect.Effect<Lookup, E, R> => {
      const deferred = Deferred.unsafeMake<string, unknown>(FiberId.none)
      flights.set(k, deferred)
      return restore(compute).pipe(
          // The flight stays registered until the value is stored, so a
          // caller whose lookup missed meanwhile joins it instead of computing.
          Effect.onExit((exit) =>
            Effect.zipRight(
              Exit.isSuccess(exit) ? save(k, exit.value, control) : Effect.void,
              Effect.zipRight(
                Effect.sync(() => flights.delete(k)),
                Deferred.done(deferred, exit)
              )
            )
          ),
          Effect.map((value): Lookup => ({ value, status: "miss" })),
          Effect.tap(() => Metric.increment(counted.miss))
        )
    }

    const getOrCompute = <E, R>(
      k: string,
      compute: Effect.Effect<string, E, R>,
      control?: Control
    ): Effect.Effect<Lookup, E, R> => {
      if (control?.lookup === false) {
        return compute.pipe(
          Effect.tap((value) => save(k, value, control)),
          Effect.map((value): Lookup => ({ value, status: "bypass" })),
          Effect.tap(() => Metric.increment(counted.bypass))
        )
      }
      return Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(restore(safely(store.get(k), Option.none<string>())), (cached): Effect.Effect<Lookup, E, R> => {
        if (Option.isSome(cached)) {
          return Effect.as(Metric.increment(counted.hit), { value: cached.value, status: "hit" })
        }
        const flight = flights.get(k)
        if (flight === undefined) return lead(restore, k, compute, control)
        // Join the call in flight. Its failure is ours too (same request);
        // if its caller was interrupted, start over.
        return Effect.flatMap(restore(Effect.exit(Deferred.await(flight))), (exit): Effect.Effect<Lookup, E, R> => {
          if (Exit.isSuccess(exit)) {
            return Effect.as(Metric.increment(counted.hit), { value: exit.value, status: "hit" })
          }
          if (Cause.isInterruptedOnly(exit.cause)) return restore(getOrCompute(k, compute, control))
          return Effect.failCause(exit.cause as Cause.Cause<E>)
        })
      }))
    }

    return ResponseCache.of({
      key,
      getOrCompute,
      invalidate: (k) => safely(store.delete(k), undefined),
      inFlight: Effect.sync(() => flights.size)
    })
  })

export const layer = (options: Options = {}): Layer.Layer<ResponseCache, never, ResponseCacheStore> =>
  Layer.effect(ResponseCache, make(options))

// ---------------------------------------------------------------------------
// The in-memory store

export interface MemoryOptions {
  /** Entries kept; the least recently used goes first. Default 10 000. */
  readonly maxEntries?: number
}

/**
 * Entries in this process's memory, least recently used evicted first. A
 * `Map` keeps insertion order, so a hit is moved to the end by re-inserting.
 */
export const makeStoreMemory = (
  options: MemoryOptions = {}
): Effect.Effect<Context.Tag.Service<ResponseCacheStore>> =>
  Effect.sync(() => {
    const maxEntries = options.maxEntries ?? 10_000
    const entries = new Map<string, { readonly value: string; readonly expiresAt: number }>()
    return {
      get: (key) =>
        Effect.clockWith((clock) =>
          Effect.sync(() => {
            const entry = entries.get(key)
            if (entry === undefined) return Option.none()
            entries.delete(key)
            if (entry.expiresAt <= clock.unsafeCurrentTimeMillis()) return Option.none()
            entries.set(key, entry)
            return Option.some(entry.value)
          })
        ),
      set: (key, value, ttl) =>
        Effect.clockWith((clock) =>
          Effect.sync(() => {
            entries.delete(key)
            entries.set(key, { value, expiresAt: clock.unsafeCurrentTimeMillis() + Duration.toMillis(ttl) })
            while (entries.size > maxEntries) {
              const oldest = entries.keys().next().value
              if (oldest === undefined) break
              entries.delete(oldest)
            }
          })
        ),
      delete: (key) =>
        Effect.sync(() => {
          entries.delete(key)
        })
    }
  })

export const layerStoreMemory = (options: MemoryOptions = {}): Layer.Layer<ResponseCacheStore> =>
  Layer.effect(ResponseCacheStore, makeStoreMemory(options))

/** A cache over an in-memory store: the embedded default. */
export const layerMemory = (options: Options & MemoryOptions = {}): Layer.Layer<ResponseCache> =>
  layer(options).pipe(Layer.provide(layerStoreMemory(options)))

/** Options from `effect/Config` under `cache`: `ttl`, `maxEntries` (`CACHE_TTL` in constant case). */
export const config: Config.Config<Options & MemoryOptions> = Config.all({
  ttl: Config.duration("ttl").pipe(Config.withDefault(Duration.minutes(5))),
  maxEntries: Config.integer("maxEntries").pipe(Config.withDefault(10_000))
}).pipe(Config.nested("cache"))

export const layerConfig = (config: Config.Config<Options & MemoryOptions>): Layer.Layer<ResponseCache, ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(config, layerMemory))
