/**
 * Virtual time for the simulator: an Effect `Clock` whose time only moves
 * when nothing else can run, and a `Scheduler` whose queue the driver drains
 * itself. Together they do what `TestClock.adjust` does (wake sleepers in
 * time order, let every fiber run until all are suspended, then move time
 * on), but without TestClock's per-wake-up cost (it polls the fibers with
 * three real `setTimeout(0)` yields and re-sorts every pending sleep each
 * time a sleeper wakes, a few milliseconds per wake-up: hours of traffic
 * would take hours). Here "all fibers are suspended" is exact and free: the
 * scheduler's queue is empty.
 *
 * The code under simulation sees an ordinary Clock: the relay, its breakers,
 * cooldowns, rate limiters, cache TTLs and timeouts all read time through
 * Effect's Clock service, so the same program also runs under TestClock
 * (the tests check that both give the same numbers).
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import type * as Scheduler from "effect/Scheduler"

interface Timer {
  readonly at: number
  readonly seq: number
  /** Dropped when cancelled: a cancelled timer stays in the heap until its time, and should not keep its caller alive. */
  fire: () => void
  cancelled: boolean
}

const NOTHING = () => {}

/** Cancels `timer`, letting go of what its `fire` holds. */
const cancel = (timer: Timer): void => {
  timer.cancelled = true
  timer.fire = NOTHING
}

/** A min-heap of timers by (time, order of scheduling). */
class TimerHeap {
  private readonly items: Array<Timer> = []

  get size(): number {
    return this.items.length
  }

  private less(a: Timer, b: Timer): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq)
  }

  push(t: Timer): void {
    const items = this.items
    items.push(t)
    let i = items.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.less(items[i]!, items[parent]!)) break
      const tmp = items[i]!
      items[i] = items[parent]!
      items[parent] = tmp
      i = parent
    }
  }

  pop(): Timer | undefined {
    const items = this.items
    const top = items[0]
    const last = items.pop()
    if (top === undefined || last === undefined || items.length === 0) return top
    items[0] = last
    let i = 0
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let m = i
      if (l < items.length && this.less(items[l]!, items[m]!)) m = l
      if (r < items.length && this.less(items[r]!, items[m]!)) m = r
      if (m === i) break
      const tmp = items[i]!
      items[i] = items[m]!
      items[m] = tmp
      i = m
    }
    return top
  }
}

/**
 * A Clock in milliseconds from 0, moved only by {@link VirtualClock.fireNext}.
 * `scheduler`: the one that runs the fibers of this virtual world (set by
 * {@link run}), for code that joins them with plain tasks ({@link schedule}).
 */
export class VirtualClock implements Clock.Clock {
  readonly [Clock.ClockTypeId]: Clock.ClockTypeId = Clock.ClockTypeId
  private now = 0
  private seq = 0
  private readonly timers = new TimerHeap()

  constructor(readonly scheduler: DrainedScheduler = new DrainedScheduler()) {}

  unsafeCurrentTimeMillis(): number {
    return this.now
  }

  unsafeCurrentTimeNanos(): bigint {
    return BigInt(Math.round(this.now * 1_000_000))
  }

  readonly currentTimeMillis: Effect.Effect<number> = Effect.sync(() => this.now)
  readonly currentTimeNanos: Effect.Effect<bigint> = Effect.sync(() => this.unsafeCurrentTimeNanos())

  sleep(duration: Duration.Duration): Effect.Effect<void> {
    const millis = Duration.toMillis(duration)
    if (!(millis > 0)) return Effect.void
    return Effect.async<void>((resume) => {
      const timer: Timer = { at: this.now + millis, seq: this.seq++, fire: () => resume(Effect.void), cancelled: false }
      this.timers.push(timer)
      return Effect.sync(() => cancel(timer))
    })
  }

  /**
   * `Effect.sleep(millis)` then `reply()`, with one timer and no Clock
   * lookup: the same wake-up as {@link sleep} (the fiber resumes when the
   * timer fires; an interrupted wait cancels it), a few operations fewer.
   */
  after<A>(millis: number, reply: () => A): Effect.Effect<A> {
    if (!(millis > 0)) return Effect.sync(reply)
    return Effect.async<A>((resume) => {
      const timer: Timer = { at: this.now + millis, seq: this.seq++, fire: () => resume(Effect.sync(reply)), cancelled: false }
      this.timers.push(timer)
      return Effect.sync(() => cancel(timer))
    })
  }

  /**
   * A plain timer: at `at`, `task` runs as a scheduler task, in the order a
   * fiber sleeping until then would resume (timers at the same time fire in
   * the order they were set). No fiber, no Effect: the simulator's fast path.
   */
  schedule(at: number, task: () => void): void {
    const scheduler = this.scheduler
    this.timers.push({ at, seq: this.seq++, fire: () => scheduler.scheduleTask(task), cancelled: false })
  }

  /**
   * The core's timers without a fiber (`unsafeTimer` in the core's
   * `internal/race.ts` asks a clock that has this method): the same as
   * `Effect.runFork(this.sleep(millis))` with an observer that calls `fire`
   * on success, step for step — the timer is set now, `fire` runs as a
   * scheduler task once it is due (where the sleeping fiber would resume and
   * end), a cancel before then stops it, and `millis <= 0` fires at once —
   * without the fiber, its wake-up and its interruption.
   */
  unsafeTimer(millis: number, fire: () => void): () => void {
    const duration = Duration.toMillis(Duration.millis(millis))
    if (!(duration > 0)) {
      fire()
      return () => {}
    }
    const scheduler = this.scheduler
    const timer: Timer = { at: this.now + duration, seq: this.seq++, fire: () => scheduler.scheduleTask(fire), cancelled: false }
    this.timers.push(timer)
    return () => cancel(timer)
  }

  /** Moves time to the next pending timer and fires it; false when none is pending. */
  fireNext(): boolean {
    for (;;) {
      const t = this.timers.pop()
      if (t === undefined || !Number.isFinite(t.at)) return false
      if (t.cancelled) continue
      this.now = t.at
      t.fire()
      return true
    }
  }
}

/**
 * Runs fibers' tasks only when the driver drains it. Fibers never yield for
 * fairness (a simulated program has no busy loops), so a task runs until
 * its fiber suspends.
 */
export class DrainedScheduler implements Scheduler.Scheduler {
  private queue: Array<() => void> = []

  scheduleTask(task: () => void): void {
    this.queue.push(task)
  }

  shouldYield(): false {
    return false
  }

  /** Runs tasks, and the tasks they schedule, until none is left. */
  drain(): void {
    while (this.queue.length > 0) {
      const tasks = this.queue
      this.queue = []
      for (let i = 0; i < tasks.length; i++) tasks[i]!()
    }
  }
}

export class SimulationStalled extends Error {
  constructor() {
    super("simulation stalled: no fiber can run and no timer is pending")
  }
}

/**
 * Runs `effect` to completion in virtual time: drain the runnable fibers,
 * then move the clock to the next timer, until the effect's fiber is done.
 * Synchronous: the whole simulation runs inside this call.
 */
export const run = <A, E>(effect: Effect.Effect<A, E>): Exit.Exit<A, E> => {
  const scheduler = new DrainedScheduler()
  const clock = new VirtualClock(scheduler)
  const fiber: Fiber.RuntimeFiber<A, E> = Effect.runFork(Effect.withClock(effect, clock), { scheduler })
  for (;;) {
    scheduler.drain()
    const exit = fiber.unsafePoll()
    if (exit !== null) return exit
    if (!clock.fireNext()) throw new SimulationStalled()
  }
}
