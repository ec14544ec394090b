/**
 * A timeout that costs one fiber instead of Effect's `timeoutFail` (which
 * races two forked fibers and merges their FiberRefs; several times slower).
 * `self` runs in a child fiber; a timer interrupts it. With the live clock
 * the timer is a plain `setTimeout`; with any other clock (TestClock, a
 * simulator's clock) it is that clock's `sleep`, so tests drive it as usual.
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as Runtime from "effect/Runtime"

const liveClock = Effect.runSync(Effect.clock)

export const timeoutWith = <A, E, R, E2>(
  self: Effect.Effect<A, E, R>,
  millis: number,
  onTimeout: () => E2
): Effect.Effect<A, E | E2, R> =>
  Effect.clockWith((clock) =>
    Effect.flatMap(Effect.runtime<R>(), (runtime) =>
      Effect.async<A, E | E2>((resume) => {
        let settled = false
        // Interruptible whatever the caller's region: a timeout must be able
        // to stop the call it guards.
        const child = Runtime.runFork(runtime)(Effect.interruptible(self))
        let cancelTimer: () => void
        const fire = () => {
          if (settled) return
          settled = true
          // Wait for the call's finalizers (released permits, closed sockets)
          // before reporting the timeout.
          resume(Effect.zipRight(Fiber.interrupt(child), Effect.fail(onTimeout())))
        }
        if (clock === liveClock) {
          const handle = setTimeout(fire, millis)
          cancelTimer = () => clearTimeout(handle)
        } else {
          const timer = Runtime.runFork(runtime)(Clock.sleep(Duration.millis(millis)))
          timer.addObserver((exit) => {
            if (exit._tag === "Success") fire()
          })
          cancelTimer = () => timer.unsafeInterruptAsFork(FiberId.none)
        }
        child.addObserver((exit) => {
          if (settled) return
          settled = true
          cancelTimer()
          resume(exit)
        })
        return Effect.suspend(() => {
          settled = true
          cancelTimer()
          return Effect.asVoid(Fiber.interrupt(child))
        })
      })
    )
  )

/**
 * A clock that sets plain timers of its own (the simulator's virtual
 * clock): `unsafeTimer` runs `fire` as a task of the scheduler its fibers
 * run on, `millis` from now, unless cancelled before the timer is due;
 * `millis <= 0` fires at once. That is what the clock's `sleep` in a root
 * fiber does, step for step, without the fiber.
 */
interface TimerClock {
  readonly unsafeTimer: (millis: number, fire: () => void) => () => void
}

const hasTimers = (clock: Clock.Clock): clock is Clock.Clock & TimerClock =>
  typeof (clock as Partial<TimerClock>).unsafeTimer === "function"

/**
 * One timer, without a fiber: calls `fire` after `millis` of `clock` time,
 * unless the returned function cancels it first. With the live clock it is
 * a plain `setTimeout`; with a clock that sets its own timers (a
 * simulator's, see {@link TimerClock}) it is one of those; with any other
 * clock (TestClock) it is that clock's `sleep`, run as a root fiber on
 * `fiber`'s scheduler, so tests drive it as usual.
 * For the relay's hot path, where a call's time limit aborts the call itself.
 */
export const unsafeTimer = (
  clock: Clock.Clock,
  millis: number,
  fire: () => void,
  fiber: Fiber.RuntimeFiber<unknown, unknown>
): () => void => {
  if (clock === liveClock) {
    const handle = setTimeout(fire, Math.min(Math.max(0, millis), 2_147_483_647))
    return () => clearTimeout(handle)
  }
  if (hasTimers(clock)) return clock.unsafeTimer(millis, fire)
  const timer = Effect.runFork(clock.sleep(Duration.millis(millis)), { scheduler: fiber.currentScheduler })
  timer.addObserver((exit) => {
    if (exit._tag === "Success") fire()
  })
  return () => timer.unsafeInterruptAsFork(FiberId.none)
}
