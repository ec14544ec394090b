/**
 * Pacing: sending an upstream no more than its rate limit allows, and making
 * requests wait their turn for it instead of failing. A {@link Pacer} per
 * upstream learns the limit from the upstream's own answers (OpenAI's
 * `x-ratelimit-limit-requests`, `-remaining-requests`, `-reset-requests`;
 * Anthropic's `anthropic-ratelimit-requests-*` arrive translated into those)
 * and from its 429s (`Retry-After`, or a cooldown another request or replica
 * started), and keeps, for the current window, how many calls it may still
 * send. Once that is 0 no call goes out until the window resets: requests
 * queue (FIFO, bounded) and are let through, as many as the limit allows,
 * when it does. Before anything is known nothing is held back.
 *
 * Counting is conservative: calls sent whose answers have not come back
 * are subtracted from what an answer says remains, since the upstream may
 * not have counted them yet; a window's end is the latest one heard.
 *
 * In-process (per replica): the pacer's queue lives where its requests
 * wait. What replicas share is the cooldown (see `Cooldown`), which every
 * pacer honours.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import type * as Scope from "effect/Scope"
import { type CooldownStore, parseResetDuration } from "./Cooldown.js"
import { unsafeTimer } from "./internal/race.js"
import { taggedBy } from "./internal/taggedMetrics.js"

/** How many requests may wait for one upstream's window unless told: {@link Options.queue}'s default. */
export const defaultQueue = 100

export interface Options {
  /**
   * How many requests may wait for one upstream's window, first come first
   * served. Default 100 ({@link defaultQueue}); 0 turns queueing off (a request that finds every
   * upstream rate limited fails at once, or waits out the cooldown as
   * before, see `Relay.Options.retry.maxRetryAfter`).
   */
  readonly queue?: number | undefined
}

/** How a wait in a pacer's queue ended. */
export type WaitOutcome = "granted" | "queue-full" | "too-long" | "timeout"

/** A call taken and not sent after this long was abandoned (its request left). */
const ABANDONED_MILLIS = 1000

/**
 * A 429 whose cooldown the relay has not told ({@link Pacer.cooled}) after
 * this long will not be told (its request left before starting it).
 */
const UNTOLD_HOLD_MILLIS = 1000

interface Waiter {
  state: "waiting" | "granted" | "gone"
  resume: (outcome: WaitOutcome) => void
  cancelTimeout: (() => void) | undefined
}

/** A timer the pacer may start: a clock and the fiber whose scheduler runs it under a test clock. */
interface TimerSource {
  readonly clock: Clock.Clock
  readonly fiber: Parameters<typeof unsafeTimer>[3]
}

/** `breakwater_paced_total{upstream,outcome}`: waits in a pacing queue and how they ended. */
export const pacedTotal = Metric.counter("breakwater_paced_total", {
  description: "Requests that met a rate-limited upstream and waited for its window, by upstream and outcome " +
    "(granted: sent when the window allowed; queue-full, too-long, timeout: failed as before)",
  incremental: true
})
/** `breakwater_pacing_queue{upstream}`: requests waiting now. */
export const queueLength = Metric.gauge("breakwater_pacing_queue", { description: "Requests waiting for an upstream's rate-limit window" })
/** `breakwater_pacing_wait_ms{upstream}`: how long requests let through had waited. */
export const waitMillis = Metric.histogram(
  "breakwater_pacing_wait_ms",
  MetricBoundaries.exponential({ start: 10, factor: 2, count: 12 }),
  "Time requests waited for an upstream's rate-limit window, ms"
)
const pacedBy = taggedBy(pacedTotal, ["upstream", "outcome"])
const queueBy = taggedBy(queueLength, ["upstream"])
const waitBy = taggedBy(waitMillis, ["upstream"])

/** What one upstream's answers said about its request limit, and the requests waiting for it. */
export class Pacer {
  /** Requests per window, once an answer said (`x-ratelimit-limit-requests`). */
  limit: number | undefined = undefined
  /** Calls that may still be sent before `resetAt`; undefined: nothing known, nothing held back. */
  left: number | undefined = undefined
  /** When (epoch ms) the current window ends; 0 when not known. */
  resetAt = 0
  /** Calls sent whose answer has not come back. */
  inFlight = 0
  /**
   * No limit known, after a 429: calls in flight hold the pacer until their
   * answers or until then (epoch ms; the end of the cooldown the relay
   * started, see {@link cooled}), whichever comes first; 0 when no such hold.
   */
  private holdUntil = 0
  /** Calls taken (or granted to a waiter) and not yet sent; and when the last was. */
  private reserved = 0
  private reservedAt = 0
  private readonly queue: Array<Waiter> = []
  private timer: (() => void) | undefined = undefined
  private timerAt = 0
  private source: TimerSource | undefined = undefined

  constructor(readonly upstream: string) {}

  /** Requests waiting. */
  get queued(): number {
    return this.queue.length
  }

  /**
   * A new window when the last one has ended: as many calls as the limit.
   * An upstream that never announced a limit is not paced past a
   * cooldown's end: holding every request behind one call that "finds out"
   * cost more than it saved (seed-article's p99 2,585 ms against 2,158 ms
   * without it: the queue waited a whole call's latency after each
   * cooldown, even with another upstream back).
   */
  private roll(now: number): void {
    if (this.resetAt !== 0 && now >= this.resetAt) {
      this.resetAt = 0
      this.holdUntil = 0
      this.left = this.limit
    } else if (
      this.resetAt === 0 && this.left === 0 && (this.inFlight === 0 || this.holdOver(now)) &&
      (this.reserved === 0 || now - this.reservedAt > ABANDONED_MILLIS)
    ) {
      // Nothing sent or about to be will tell us more: one call finds out
      // (a known limit), or nothing is held back (none ever announced).
      // Without a known limit, calls still in flight at the 429's cooldown's
      // end tell nothing the upstream has not said: a hung call (30 s) held
      // every waiter until its timeout (seed-article's 42 x 503).
      this.reserved = 0
      this.holdUntil = 0
      this.left = this.limit === undefined ? undefined : 1
    }
  }

  /** No limit known, and the hold after a 429 is over, whatever is still in flight. */
  private holdOver(now: number): boolean {
    return this.limit === undefined && this.holdUntil !== 0 && now >= this.holdUntil
  }

  /** Takes one call of the window, if there is one. */
  private take(now: number): boolean {
    this.roll(now)
    if (this.left === undefined) return true
    if (this.left <= 0) return false
    this.left--
    this.reserved++
    this.reservedAt = now
    return true
  }

  /**
   * Whether a request that is not in the queue may call now (nobody waits
   * ahead of it and the window has room). Takes the call; the caller then
   * reports it with {@link sent} (or gives it back with {@link giveBack}).
   */
  tryTake(now: number): boolean {
    return this.queue.length === 0 && this.take(now)
  }

  /** A call taken (or granted) is being sent. */
  sent(): void {
    this.inFlight++
    if (this.reserved > 0) this.reserved--
  }

  /** A call sent has ended (answered or not). */
  done(now: number): void {
    if (this.inFlight > 0) this.inFlight--
    if (this.queue.length > 0) this.pump(now)
  }

  /** A call granted will not be sent, and its room is not given back (a cooldown started meanwhile). */
  forfeit(): void {
    if (this.reserved > 0) this.reserved--
  }

  /** A call taken or granted was not sent after all (our own limits refused it). */
  giveBack(now: number): void {
    if (this.reserved > 0) this.reserved--
    if (this.left !== undefined) this.left++
    if (this.queue.length > 0) this.pump(now)
  }

  /**
   * Learns from an answer's headers (already in OpenAI's names). Call it
   * before {@link done} for the same call.
   */
  learn(now: number, headers: Readonly<Record<string, string | undefined>>): void {
    const limit = headers["x-ratelimit-limit-requests"]
    if (limit !== undefined && /^\s*\d+\s*$/.test(limit)) this.limit = Number(limit)
    const remaining = headers["x-ratelimit-remaining-requests"]
    const reset = headers["x-ratelimit-reset-requests"]
    if (remaining === undefined || reset === undefined || !/^\s*\d+\s*$/.test(remaining)) return
    const wait = parseResetDuration(reset)
    if (wait === undefined) return
    this.roll(now)
    // Other calls in flight may not be counted in `remaining` yet.
    const others = Math.max(0, this.inFlight - 1)
    const estimate = Math.max(0, Number(remaining) - others)
    this.left = this.left === undefined ? estimate : Math.min(this.left, estimate)
    const resetAt = now + Duration.toMillis(wait)
    if (resetAt > this.resetAt) this.resetAt = resetAt
    if (this.queue.length > 0) this.pump(now)
  }

  /**
   * A call sent has been answered: what its headers say about the window
   * ({@link learn}), a 429 spends it (the cooldown it starts keeps requests
   * away until it ends; then one call finds out), and a success without any
   * limit heard of leaves nothing held back. Then the call has ended
   * ({@link done}). Without a known limit, calls still in flight hold the
   * pacer after a 429 at most until the end of the cooldown the relay
   * starts for it, which the relay tells with {@link cooled} (the pacer
   * does not work it out: `Retry-After`, a quota's pause, a longer cooldown
   * from another replica are the relay's and the store's to settle). Until
   * told, the hold lasts at most 1 s: a request gone before starting its
   * cooldown tells nothing.
   */
  answered(now: number, status: number, headers: Readonly<Record<string, string | undefined>>): void {
    const told = headers["x-ratelimit-remaining-requests"] !== undefined
    if (told) this.learn(now, headers)
    if (status === 429) {
      this.left = 0
      // A hold still running stays (the relay tells the new end); one over, or none, waits to be told.
      if (!told && this.limit === undefined && this.holdUntil <= now) this.holdUntil = now + UNTOLD_HOLD_MILLIS
    } else if (!told && status < 400 && this.limit === undefined && (this.resetAt === 0 || now >= this.resetAt)) {
      this.left = undefined
      this.resetAt = 0
      this.holdUntil = 0
    }
    this.done(now)
  }

  /**
   * The relay started a cooldown on this upstream, in effect until `until`
   * (epoch ms; the store's end, which may be a longer one already there).
   * After a 429 without a known limit, calls in flight hold the pacer until
   * then at most, not longer and not shorter.
   */
  cooled(now: number, until: number): void {
    if (this.limit !== undefined || this.left !== 0 || this.holdUntil === 0) return
    this.holdUntil = until
    if (this.queue.length > 0) this.pump(now)
  }

  /** The upstream's cooldown was cleared (an operator's reset): a hold after a 429 ends now. */
  cleared(now: number): void {
    if (this.holdUntil === 0) return
    this.holdUntil = Math.min(this.holdUntil, now)
    if (this.queue.length > 0) this.pump(now)
  }

  /** Nothing may be sent before `until` (a cooldown's end). */
  block(now: number, until: number): void {
    if (until <= now) return
    this.left = 0
    if (until > this.resetAt) this.resetAt = until
    if (this.queue.length > 0) this.schedule(now)
  }

  /**
   * Waits in the queue for a call of the window, at most `maxWaitMillis`.
   * "granted": the call is taken for the waiter (report it with
   * {@link sent}, or {@link giveBack}); otherwise why not: the queue holds
   * `maxQueue` already, the window opens later than `maxWaitMillis`, or it
   * did not open in time for this waiter. `front`: a waiter that was let
   * through and must wait again keeps its place at the head.
   */
  wait(maxWaitMillis: number, maxQueue: number, front = false): Effect.Effect<WaitOutcome> {
    return Effect.withFiberRuntime<WaitOutcome>((fiber) => {
      const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
      const now = clock.unsafeCurrentTimeMillis()
      this.source = { clock, fiber }
      if (this.queue.length === 0 && this.take(now)) return Effect.succeed("granted")
      if (this.queue.length >= maxQueue) return Effect.succeed("queue-full")
      if (this.resetAt > now && this.resetAt - now > maxWaitMillis) return Effect.succeed("too-long")
      return Effect.async<WaitOutcome>((resume) => {
        const waiter: Waiter = {
          state: "waiting",
          resume: (outcome) => resume(Effect.succeed(outcome)),
          cancelTimeout: undefined
        }
        waiter.cancelTimeout = unsafeTimer(clock, maxWaitMillis, () => {
          if (waiter.state !== "waiting") return
          waiter.state = "gone"
          this.remove(waiter)
          resume(Effect.succeed("timeout"))
        }, fiber)
        if (front) this.queue.unshift(waiter)
        else this.queue.push(waiter)
        this.pump(now)
        this.gauge()
        return Effect.sync(() => {
          waiter.cancelTimeout?.()
          if (waiter.state === "waiting") {
            waiter.state = "gone"
            this.remove(waiter)
          }
        })
      })
    })
  }

  private remove(waiter: Waiter): void {
    const i = this.queue.indexOf(waiter)
    if (i >= 0) this.queue.splice(i, 1)
    this.gauge()
  }

  private gauge(): void {
    queueBy(this.upstream).unsafeUpdate(this.queue.length, [])
  }

  /** Lets through as many waiters as the window allows; then a timer for when it opens. */
  private pump(now: number): void {
    while (this.queue.length > 0 && this.take(now)) {
      const waiter = this.queue.shift()!
      waiter.state = "granted"
      waiter.cancelTimeout?.()
      waiter.resume("granted")
      this.gauge()
    }
    if (this.queue.length > 0) this.schedule(now)
  }

  /** A timer for the window's end (or the hold's, after a 429 without a known limit), unless one is set for then already. */
  private schedule(now: number): void {
    const source = this.source
    const at = this.resetAt > now
      ? this.resetAt
      : this.resetAt === 0 && this.limit === undefined && this.holdUntil > now
      ? this.holdUntil
      : 0
    if (at === 0 || source === undefined) return
    if (this.timer !== undefined && this.timerAt === at) return
    this.timer?.()
    this.timerAt = at
    this.timer = unsafeTimer(source.clock, at - now, () => {
      this.timer = undefined
      this.timerAt = 0
      this.pump(source.clock.unsafeCurrentTimeMillis())
    }, source.fiber)
  }
}

/** The pacers, one per upstream object: a relay rebuilt over the same upstreams (a reload) keeps them. */
const pacers = new WeakMap<object, Pacer>()

/** The pacer of `upstream` (made on first use). */
export const pacerOf = (upstream: { readonly name: string }): Pacer => {
  let pacer = pacers.get(upstream)
  if (pacer === undefined) {
    pacer = new Pacer(upstream.name)
    pacers.set(upstream, pacer)
  }
  return pacer
}

/**
 * Ends the pacers' holds of `upstreams` whenever the store clears their
 * cooldown (an operator's reset, here or on another replica), for as long
 * as the scope lasts: a hold after a 429 lasts as long as the cooldown.
 * Nothing for a store without `onClear`.
 */
export const followClears = (
  store: Context.Tag.Service<CooldownStore>,
  upstreams: ReadonlyArray<{ readonly name: string }>
): Effect.Effect<void, never, Scope.Scope> => {
  const onClear = store.onClear
  if (onClear === undefined) return Effect.void
  return Effect.asVoid(Effect.acquireRelease(
    Effect.sync(() =>
      onClear((name, now) => {
        for (const u of upstreams) if (u.name === name) pacerOf(u).cleared(now)
      })
    ),
    (stop) => Effect.sync(stop)
  ))
}

/** Records a wait's outcome: the counter, and the time waited when the call was granted. */
export const recordWait = (pacer: Pacer, outcome: WaitOutcome, waitedMillis: number): Effect.Effect<void> =>
  outcome === "granted"
    ? Effect.zipRight(Metric.increment(pacedBy(pacer.upstream, outcome)), Metric.update(waitBy(pacer.upstream), waitedMillis))
    : Metric.increment(pacedBy(pacer.upstream, outcome))
