/**
 * A bulkhead caps the calls in flight to one dependency, so that a slow
 * dependency cannot take every connection and fiber of the process with it.
 * Callers beyond `maxConcurrent` queue, at most `maxWaiting` of them and for
 * at most `maxWait` each; the rest fail `BulkheadFull` at once, which lets a
 * relay fail over instead of piling up.
 *
 * A free slot is taken atomically; queued callers are served first come,
 * first served: a freed slot is handed straight to the longest-waiting caller,
 * never to a newcomer. Slots are released on success, failure, defect and
 * interruption, including interruption of a caller while it queues.
 *
 * @since 0.1.0
 */
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
import type * as Scope from "effect/Scope"

/** The call was not started: the bulkhead and its queue were full, or the wait ran out. */
export class BulkheadFull extends Data.TaggedError("BulkheadFull")<{
  readonly bulkhead: string
  readonly maxConcurrent: number
  readonly reason: "queue-full" | "wait-timeout"
}> {
  override get message(): string {
    return this.reason === "queue-full"
      ? `bulkhead "${this.bulkhead}" is full (${this.maxConcurrent} in flight, queue full)`
      : `bulkhead "${this.bulkhead}" had no free slot within the wait limit`
  }
}

export interface Options {
  readonly name: string
  /** Calls in flight at once. */
  readonly maxConcurrent: number
  /** Callers allowed to queue for a slot. Default 0: fail at once when full. */
  readonly maxWaiting?: number
  /** How long a queued caller waits. Default: unbounded (only `maxWaiting` limits the queue). */
  readonly maxWait?: Duration.DurationInput | undefined
}

export interface Stats {
  readonly active: number
  readonly waiting: number
  readonly available: number
  readonly maxConcurrent: number
}

export interface Bulkhead {
  readonly name: string
  readonly run: <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E | BulkheadFull, R>
  /** Takes a slot until the scope closes (for a stream read after the call returns). */
  readonly acquire: Effect.Effect<void, BulkheadFull, Scope.Scope>
  /** Live counts; also readable synchronously by a router via {@link unsafeStats}. */
  readonly stats: Effect.Effect<Stats>
  /** The same counts without an effect, for routing decisions on the hot path. */
  readonly unsafeStats: () => Stats
  /**
   * Copies the live counts to the `breakwater_bulkhead_active` and `_waiting`
   * gauges. Called at scrape time rather than on every call: a gauge update
   * costs more than the bulkhead's own bookkeeping.
   */
  readonly updateGauges: Effect.Effect<void>
  /**
   * Takes a free slot now, if there is one and nobody queues: true when
   * taken. The caller must give it back with {@link unsafeRelease}. For a hot
   * path that runs no effect per call; `run` and `acquire` do the same.
   */
  readonly unsafeTryAcquire?: (() => boolean) | undefined
  /**
   * Gives back a slot taken by {@link unsafeTryAcquire} (to the
   * longest-waiting caller, if any). Returns the effect still to run (a
   * gauge update) when the slot was handed over, else undefined.
   */
  readonly unsafeRelease?: (() => Effect.Effect<void> | undefined) | undefined
}

export const Bulkhead = Context.GenericTag<Bulkhead>("@breakwater/core/Bulkhead")

const activeGauge = Metric.gauge("breakwater_bulkhead_active", { description: "Calls in flight" })
const waitingGauge = Metric.gauge("breakwater_bulkhead_waiting", { description: "Callers queued for a slot" })
const rejectedCounter = Metric.counter("breakwater_bulkhead_rejected_total", {
  description: "Calls refused by a full bulkhead",
  incremental: true
})

// A queued caller. `granted` is set, in the same synchronous step that removes
// it from the queue, when a freed slot is handed to it.
interface Waiter {
  readonly deferred: Deferred.Deferred<void>
  granted: boolean
}

export const make = (options: Options): Effect.Effect<Bulkhead> =>
  Effect.gen(function*() {
    const name = options.name
    const maxConcurrent = options.maxConcurrent
    const maxWaiting = options.maxWaiting ?? 0
    const maxWait = options.maxWait === undefined ? undefined : Duration.decode(options.maxWait)
    const active = Metric.tagged(activeGauge, "bulkhead", name)
    const waitingMetric = Metric.tagged(waitingGauge, "bulkhead", name)
    const rejected = Metric.tagged(rejectedCounter, "bulkhead", name)

    // Admission state is plain: it only changes inside synchronous steps,
    // which Effect runs one at a time. A slot is either free or held (by a
    // running call, or by a queued caller it was handed to), so
    // `active = maxConcurrent - free` at all times. While callers queue, `free`
    // stays 0: a freed slot goes straight to the longest-waiting caller, so a
    // newcomer can never overtake the queue. (Effect's Semaphore cannot give
    // that: a released permit is claimed by the woken waiter only when its
    // fiber next runs, and a fresh `take` in between wins it.)
    let free = maxConcurrent
    const waiters = new Set<Waiter>() // insertion-ordered: the head waited longest

    const setActive = Effect.suspend(() => Metric.set(active, maxConcurrent - free))
    const setWaiting = Effect.suspend(() => Metric.set(waitingMetric, waiters.size))

    const reject = (reason: BulkheadFull["reason"]) =>
      Effect.zipRight(Metric.increment(rejected), Effect.fail(new BulkheadFull({ bulkhead: name, maxConcurrent, reason })))

    // Hands the slot to the head of the queue, or frees it.
    const release: Effect.Effect<void> = Effect.suspend(() => {
      for (const waiter of waiters) {
        waiters.delete(waiter)
        waiter.granted = true
        Deferred.unsafeDone(waiter.deferred, Exit.void)
        return setWaiting
      }
      free++
      return Effect.void
    })

    // Runs `self` on a slot already held; the slot is released however it ends.
    const holding = <A, E, R>(
      restore: <X, Y, Z>(e: Effect.Effect<X, Y, Z>) => Effect.Effect<X, Y, Z>,
      self: Effect.Effect<A, E, R>
    ): Effect.Effect<A, E, R> => Effect.ensuring(restore(self), release)

    /** Queues for a slot, then runs `onSlot` holding it. */
    const queued = <A, E, R>(
      restore: <X, Y, Z>(e: Effect.Effect<X, Y, Z>) => Effect.Effect<X, Y, Z>,
      onSlot: () => Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | BulkheadFull, R> => {
      if (waiters.size >= maxWaiting) return reject("queue-full")
      const waiter: Waiter = { deferred: Deferred.unsafeMake<void>(FiberId.none), granted: false }
      waiters.add(waiter)
      const wait = maxWait === undefined
        ? Deferred.await(waiter.deferred)
        : Effect.timeoutOption(Deferred.await(waiter.deferred), maxWait)
      // Leaving the queue without a slot (timeout, interruption).
      const leave = Effect.suspend(() => waiters.delete(waiter) ? setWaiting : Effect.void)
      return Effect.zipRight(setWaiting, restore(wait)).pipe(
        // Interrupted: pass on a slot handed over meanwhile, else leave the queue.
        Effect.onInterrupt(() => Effect.suspend(() => waiter.granted ? release : leave)),
        Effect.flatMap((): Effect.Effect<A, E | BulkheadFull, R> =>
          waiter.granted ? onSlot() : Effect.zipRight(leave, reject("wait-timeout"))
        )
      )
    }

    const run = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E | BulkheadFull, R> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.suspend((): Effect.Effect<A, E | BulkheadFull, R> => {
          // Fast path: a free slot (never while others queue, see above).
          if (free > 0 && waiters.size === 0) {
            free--
            return holding(restore, self)
          }
          return queued(restore, () => holding(restore, self))
        })
      )

    // A slot held until the scope closes, for work that outlives one effect
    // (a response stream read by the caller).
    const releaseOnClose = Effect.addFinalizer(() => release)
    const acquire: Effect.Effect<void, BulkheadFull, Scope.Scope> = Effect.uninterruptibleMask((restore) =>
      Effect.suspend(() => {
        if (free > 0 && waiters.size === 0) {
          free--
          return releaseOnClose
        }
        return queued(restore, () => releaseOnClose)
      })
    )

    const unsafeTryAcquire = (): boolean => {
      if (free > 0 && waiters.size === 0) {
        free--
        return true
      }
      return false
    }

    const unsafeRelease = (): Effect.Effect<void> | undefined => {
      for (const waiter of waiters) {
        waiters.delete(waiter)
        waiter.granted = true
        Deferred.unsafeDone(waiter.deferred, Exit.void)
        return setWaiting
      }
      free++
      return undefined
    }

    const unsafeStats = (): Stats => ({
      active: maxConcurrent - free,
      waiting: waiters.size,
      available: free,
      maxConcurrent
    })

    return Bulkhead.of({
      name,
      run,
      acquire,
      stats: Effect.sync(unsafeStats),
      unsafeStats,
      updateGauges: Effect.zipRight(setActive, setWaiting),
      unsafeTryAcquire,
      unsafeRelease
    })
  })

export const layer = (options: Options): Layer.Layer<Bulkhead> => Layer.effect(Bulkhead, make(options))

/**
 * Options from `effect/Config` under `bulkhead.<name>`: `maxConcurrent`,
 * `maxWaiting`, `maxWait` (`BULKHEAD_PRIMARY_MAX_CONCURRENT` in constant case).
 */
export const config = (name: string): Config.Config<Options> =>
  Config.all({
    maxConcurrent: Config.integer("maxConcurrent").pipe(Config.withDefault(10)),
    maxWaiting: Config.integer("maxWaiting").pipe(Config.withDefault(0)),
    maxWait: Config.option(Config.duration("maxWait"))
  }).pipe(Config.nested(name), Config.nested("bulkhead"), Config.map(({ maxWait, ...o }): Options => ({ name, ...o, maxWait: Option.getOrUndefined(maxWait) })))

export const layerConfig = (config: Config.Config<Options>): Layer.Layer<Bulkhead, ConfigError.ConfigError> =>
  Layer.effect(Bulkhead, Effect.flatMap(config, make))
