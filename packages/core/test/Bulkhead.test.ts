import { describe, expect, it } from "@effect/vitest"
import { FastCheck } from "effect"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import * as Bulkhead from "../src/Bulkhead.js"

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/**
 * Yields until `cond` holds. Forked fibers only start (and queued callers only
 * wake) once the current fiber yields, so tests wait for the state they expect
 * instead of guessing a number of yields. Fails loudly rather than hanging.
 */
const waitUntil = (label: string, cond: () => boolean | Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    for (let i = 0; i < 2_000; i++) {
      const r = cond()
      const ok = typeof r === "boolean" ? r : yield* r
      if (ok) return
      yield* Effect.yieldNow()
    }
    return yield* Effect.dieMessage(`condition never held: ${label}`)
  })

/** Lets every runnable fiber make progress, for "nothing happened" checks. */
const settle = Effect.repeatN(Effect.yieldNow(), 50)

/** Counts calls inside the protected effect: current, max observed, total started. */
const makeProbe = () => {
  const state = { current: 0, max: 0, started: 0, finished: 0 }
  const track = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.suspend(() => {
      state.current++
      state.started++
      state.max = Math.max(state.max, state.current)
      return Effect.ensuring(
        self,
        Effect.sync(() => {
          state.current--
          state.finished++
        })
      )
    })
  return { state, track }
}

const expectStats = (
  bulkhead: Bulkhead.Bulkhead,
  expected: { active: number; waiting: number }
) =>
  Effect.gen(function*() {
    const stats = yield* bulkhead.stats
    expect(stats).toEqual({
      active: expected.active,
      waiting: expected.waiting,
      available: stats.maxConcurrent - expected.active,
      maxConcurrent: stats.maxConcurrent
    })
    // The synchronous view agrees with the effectful one.
    expect(bulkhead.unsafeStats()).toEqual(stats)
  })

const bulkheadFull = <A, E>(exit: Exit.Exit<A, E>): Bulkhead.BulkheadFull => {
  expect(Exit.isFailure(exit)).toBe(true)
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  const failure = Cause.failureOption(exit.cause)
  expect(Option.isSome(failure)).toBe(true)
  const error = Option.getOrThrow(failure)
  expect(error).toBeInstanceOf(Bulkhead.BulkheadFull)
  return error as Bulkhead.BulkheadFull
}

/**
 * Proves `maxConcurrent` real semaphore permits are free: that many new calls
 * all start without queueing (stats are plain counters, so they alone cannot
 * show a leaked semaphore permit). Leaves no fibers behind.
 */
const expectAllSlotsFree = (bulkhead: Bulkhead.Bulkhead) =>
  Effect.gen(function*() {
    const n = bulkhead.unsafeStats().maxConcurrent
    const gate = yield* Deferred.make<void>()
    const probe = makeProbe()
    const fibers = yield* Effect.forEach(
      Array.from({ length: n }, (_, i) => i),
      (i) => Effect.fork(bulkhead.run(probe.track(Effect.as(Deferred.await(gate), i))))
    )
    yield* waitUntil("all probe calls started or queued", () =>
      probe.state.started + bulkhead.unsafeStats().waiting === n)
    yield* settle
    expect(probe.state.started).toBe(n)
    yield* expectStats(bulkhead, { active: n, waiting: 0 })
    yield* Deferred.succeed(gate, undefined)
    const results = yield* Fiber.join(Fiber.all(fibers))
    expect(results).toEqual(Array.from({ length: n }, (_, i) => i))
    yield* expectStats(bulkhead, { active: 0, waiting: 0 })
  })

// ---------------------------------------------------------------------------
// Admission
// ---------------------------------------------------------------------------

describe("Bulkhead", () => {
  describe("admission", () => {
    it.effect("at most maxConcurrent calls are in flight; stats reflect held calls", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "llm", maxConcurrent: 3, maxWaiting: 10 })
        expect(bulkhead.name).toBe("llm")
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })

        const probe = makeProbe()
        const gates = yield* Effect.forEach(Array.from({ length: 5 }), () => Deferred.make<void>())
        const fibers = yield* Effect.forEach(gates, (gate, i) =>
          Effect.fork(bulkhead.run(probe.track(Effect.as(Deferred.await(gate), i)))))

        yield* waitUntil("3 running, 2 queued", () => probe.state.started === 3 && bulkhead.unsafeStats().waiting === 2)
        yield* settle
        expect(probe.state.started).toBe(3)
        expect(probe.state.current).toBe(3)
        yield* expectStats(bulkhead, { active: 3, waiting: 2 })
        expect((yield* bulkhead.stats).available).toBe(0)

        // Free one slot: exactly one queued caller takes it.
        yield* Deferred.succeed(gates[0]!, undefined)
        yield* waitUntil("4th call started", () => probe.state.started === 4)
        yield* settle
        expect(probe.state.current).toBe(3)
        yield* expectStats(bulkhead, { active: 3, waiting: 1 })

        yield* Effect.forEach(gates, (gate) => Deferred.succeed(gate, undefined))
        const results = yield* Fiber.join(Fiber.all(fibers))
        expect(results).toEqual([0, 1, 2, 3, 4])
        expect(probe.state.max).toBe(3)
        expect(probe.state.started).toBe(5)
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
      }))

    it.effect("with maxWaiting 0 the call beyond maxConcurrent fails queue-full at once and is not run", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "upstream", maxConcurrent: 2, maxWaiting: 0 })
        const gate = yield* Deferred.make<void>()
        const probe = makeProbe()
        const held = yield* Effect.forEach([0, 1], () => Effect.fork(bulkhead.run(probe.track(Deferred.await(gate)))))
        yield* waitUntil("2 running", () => probe.state.started === 2)

        let ran = false
        // Run inline (not forked) and without touching the clock: it must fail immediately.
        const exit = yield* Effect.exit(bulkhead.run(Effect.sync(() => {
          ran = true
        })))
        const error = bulkheadFull(exit)
        expect(error.reason).toBe("queue-full")
        expect(error.bulkhead).toBe("upstream")
        expect(error.maxConcurrent).toBe(2)
        expect(error.message).toContain("upstream")
        yield* settle
        expect(ran).toBe(false)
        expect(probe.state.started).toBe(2)
        yield* expectStats(bulkhead, { active: 2, waiting: 0 })

        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(Fiber.all(held))
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
      }))

    it.effect("maxWaiting defaults to 0: no queue", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "default", maxConcurrent: 1 })
        const gate = yield* Deferred.make<void>()
        const held = yield* Effect.fork(bulkhead.run(Deferred.await(gate)))
        yield* waitUntil("1 running", () => bulkhead.unsafeStats().active === 1)
        const exit = yield* Effect.exit(bulkhead.run(Effect.void))
        expect(bulkheadFull(exit).reason).toBe("queue-full")
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(held)
        // With the slot free again, the same call succeeds.
        expect(yield* bulkhead.run(Effect.succeed("ok"))).toBe("ok")
      }))

    it.effect("up to maxWaiting callers queue, the next fails queue-full, and queued callers run as slots free", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "q", maxConcurrent: 1, maxWaiting: 2 })
        const probe = makeProbe()
        const gateA = yield* Deferred.make<void>()
        const gateB = yield* Deferred.make<void>()
        const gateC = yield* Deferred.make<void>()
        const ran: Array<string> = []
        const call = (id: string, gate: Deferred.Deferred<void>) =>
          bulkhead.run(probe.track(Effect.zipRight(Effect.sync(() => ran.push(id)), Effect.as(Deferred.await(gate), id))))

        const a = yield* Effect.fork(call("a", gateA))
        yield* waitUntil("a running", () => ran.length === 1)
        const b = yield* Effect.fork(call("b", gateB))
        yield* waitUntil("b queued", () => bulkhead.unsafeStats().waiting === 1)
        const c = yield* Effect.fork(call("c", gateC))
        yield* waitUntil("c queued", () => bulkhead.unsafeStats().waiting === 2)
        yield* settle
        expect(ran).toEqual(["a"])
        yield* expectStats(bulkhead, { active: 1, waiting: 2 })

        // The queue is full: the next caller is refused at once and not run.
        const exitD = yield* Effect.exit(call("d", gateA))
        expect(bulkheadFull(exitD).reason).toBe("queue-full")
        yield* expectStats(bulkhead, { active: 1, waiting: 2 })

        // Freeing the slot hands it to the first queued caller.
        yield* Deferred.succeed(gateA, undefined)
        expect(yield* Fiber.join(a)).toBe("a")
        yield* waitUntil("b running", () => ran.length === 2)
        yield* settle
        expect(ran).toEqual(["a", "b"])
        yield* expectStats(bulkhead, { active: 1, waiting: 1 })

        // A queue slot is free again, so a new caller may queue (not refused).
        const e = yield* Effect.fork(call("e", gateC))
        yield* waitUntil("e queued", () => bulkhead.unsafeStats().waiting === 2)
        yield* expectStats(bulkhead, { active: 1, waiting: 2 })

        yield* Deferred.succeed(gateB, undefined)
        expect(yield* Fiber.join(b)).toBe("b")
        yield* waitUntil("c running", () => ran.length === 3)
        yield* settle
        expect(ran).toEqual(["a", "b", "c"])
        yield* expectStats(bulkhead, { active: 1, waiting: 1 })

        yield* Deferred.succeed(gateC, undefined)
        expect(yield* Fiber.join(c)).toBe("c")
        expect(yield* Fiber.join(e)).toBe("e")
        expect(ran).toEqual(["a", "b", "c", "e"])
        expect(probe.state.max).toBe(1)
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
      }))

    it.effect("a freed slot goes to the longest-waiting caller, not to a newcomer arriving as it frees", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "fifo", maxConcurrent: 1, maxWaiting: 3 })
        const order: Array<string> = []
        const gates = new Map<string, Deferred.Deferred<void>>()
        const call = (id: string) =>
          Effect.flatMap(Deferred.make<void>(), (gate) => {
            gates.set(id, gate)
            return Effect.fork(bulkhead.run(Effect.zipRight(Effect.sync(() => order.push(id)), Deferred.await(gate))))
          })
        const finish = (id: string) => Deferred.succeed(gates.get(id)!, undefined)

        const a = yield* call("a")
        yield* waitUntil("a running", () => order.length === 1)
        const b = yield* call("b")
        yield* waitUntil("b queued", () => bulkhead.unsafeStats().waiting === 1)
        const c = yield* call("c")
        yield* waitUntil("c queued", () => bulkhead.unsafeStats().waiting === 2)

        // `a` ends; a newcomer `d` arrives the moment the test fiber observes it.
        yield* finish("a")
        yield* Fiber.join(a)
        const d = yield* call("d")
        yield* waitUntil("b running", () => order.length === 2)
        yield* settle
        expect(order).toEqual(["a", "b"])
        yield* expectStats(bulkhead, { active: 1, waiting: 2 })

        // Same again with `c` at the head of the queue and `e` arriving.
        yield* finish("b")
        yield* Fiber.join(b)
        const e = yield* call("e")
        yield* waitUntil("c running", () => order.length === 3)
        yield* settle
        expect(order).toEqual(["a", "b", "c"])

        yield* finish("c")
        yield* waitUntil("d running", () => order.length === 4)
        yield* finish("d")
        yield* waitUntil("e running", () => order.length === 5)
        yield* finish("e")
        yield* Fiber.join(Fiber.all([c, d, e]))
        expect(order).toEqual(["a", "b", "c", "d", "e"])
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
      }))
  })

  // -------------------------------------------------------------------------
  // maxWait
  // -------------------------------------------------------------------------

  describe("maxWait", () => {
    it.effect("a queued caller fails wait-timeout after maxWait, not before, and is not run", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "slow", maxConcurrent: 1, maxWaiting: 1, maxWait: "100 millis" })
        const gate = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(bulkhead.run(Deferred.await(gate)))
        yield* waitUntil("holder running", () => bulkhead.unsafeStats().active === 1)

        let ran = false
        const waiter = yield* Effect.fork(bulkhead.run(Effect.sync(() => {
          ran = true
        })))
        yield* waitUntil("waiter queued", () => bulkhead.unsafeStats().waiting === 1)

        yield* TestClock.adjust("99 millis")
        expect(Option.isNone(yield* Fiber.poll(waiter))).toBe(true)
        yield* expectStats(bulkhead, { active: 1, waiting: 1 })

        yield* TestClock.adjust("1 millis")
        const exit = yield* Fiber.await(waiter)
        const error = bulkheadFull(exit)
        expect(error.reason).toBe("wait-timeout")
        expect(error.bulkhead).toBe("slow")
        expect(error.maxConcurrent).toBe(1)
        expect(ran).toBe(false)
        yield* expectStats(bulkhead, { active: 1, waiting: 0 })

        // The holder is unaffected and the timed-out waiter took no permit.
        expect(Option.isNone(yield* Fiber.poll(holder))).toBe(true)
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(holder)
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        yield* expectAllSlotsFree(bulkhead)
      }))

    it.effect("maxWait bounds only the wait: a caller admitted in time may run longer than maxWait", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "w", maxConcurrent: 1, maxWaiting: 1, maxWait: "100 millis" })
        const holder = yield* Effect.fork(bulkhead.run(Effect.sleep("50 millis")))
        yield* waitUntil("holder running", () => bulkhead.unsafeStats().active === 1)
        const waiter = yield* Effect.fork(bulkhead.run(Effect.as(Effect.sleep("500 millis"), "done")))
        yield* waitUntil("waiter queued", () => bulkhead.unsafeStats().waiting === 1)

        yield* TestClock.adjust("50 millis")
        yield* Fiber.join(holder)
        yield* waitUntil("waiter admitted", () => bulkhead.unsafeStats().waiting === 0)
        yield* expectStats(bulkhead, { active: 1, waiting: 0 })

        yield* TestClock.adjust("200 millis")
        expect(Option.isNone(yield* Fiber.poll(waiter))).toBe(true)
        yield* TestClock.adjust("300 millis")
        expect(yield* Fiber.join(waiter)).toBe("done")
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
      }))

    it.effect("a slot freed at the instant maxWait expires does not leak a permit", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "edge", maxConcurrent: 1, maxWaiting: 1, maxWait: "100 millis" })
        const started = yield* Deferred.make<void>()
        const go = yield* Deferred.make<void>()
        // The holder starts its 100ms hold only after the waiter's timer is armed.
        const holder = yield* Effect.fork(
          bulkhead.run(Effect.zipRight(Deferred.succeed(started, undefined), Effect.zipRight(Deferred.await(go), Effect.sleep("100 millis"))))
        )
        yield* Deferred.await(started)
        const waiter = yield* Effect.fork(bulkhead.run(Effect.succeed("waited")))
        yield* waitUntil("waiter queued", () => bulkhead.unsafeStats().waiting === 1)
        yield* Deferred.succeed(go, undefined)
        yield* settle
        yield* TestClock.adjust("100 millis")
        yield* Fiber.join(holder)
        const exit = yield* Fiber.await(waiter)
        // Either outcome is acceptable; a leaked permit is not.
        if (Exit.isFailure(exit)) expect(bulkheadFull(exit).reason).toBe("wait-timeout")
        else expect(exit.value).toBe("waited")
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        yield* expectAllSlotsFree(bulkhead)
      }))
  })

  // -------------------------------------------------------------------------
  // Permit release
  // -------------------------------------------------------------------------

  describe("permits are released", () => {
    it.effect("on success", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "ok", maxConcurrent: 1 })
        expect(yield* bulkhead.run(Effect.succeed(1))).toBe(1)
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        expect(yield* bulkhead.run(Effect.succeed(2))).toBe(2)
        yield* expectAllSlotsFree(bulkhead)
      }))

    it.effect("on failure, which is passed through unchanged", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "fail", maxConcurrent: 1 })
        const exit = yield* Effect.exit(bulkhead.run(Effect.fail("boom" as const)))
        expect(exit).toStrictEqual(Exit.fail("boom"))
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        expect(yield* bulkhead.run(Effect.succeed("next"))).toBe("next")
        yield* expectAllSlotsFree(bulkhead)
      }))

    it.effect("on defect", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "die", maxConcurrent: 1 })
        const defect = new Error("kaput")
        const exit = yield* Effect.exit(bulkhead.run(Effect.die(defect)))
        expect(Exit.isFailure(exit)).toBe(true)
        if (Exit.isFailure(exit)) expect(Cause.dieOption(exit.cause)).toEqual(Option.some(defect))
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        expect(yield* bulkhead.run(Effect.succeed("next"))).toBe("next")
        yield* expectAllSlotsFree(bulkhead)
      }))

    /** Runs `self` through the queue: a holder takes the only slot, `self` queues, the holder ends. */
    const viaQueue = <A, E>(bulkhead: Bulkhead.Bulkhead, self: Effect.Effect<A, E>) =>
      Effect.gen(function*() {
        const gate = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(bulkhead.run(Deferred.await(gate)))
        yield* waitUntil("holder running", () => bulkhead.unsafeStats().active === 1)
        const queued = yield* Effect.fork(bulkhead.run(self))
        yield* waitUntil("queued", () => bulkhead.unsafeStats().waiting === 1)
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(holder)
        return yield* Fiber.await(queued)
      })

    it.effect("on failure of a call admitted from the queue", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "fail-q", maxConcurrent: 1, maxWaiting: 1 })
        const exit = yield* viaQueue(bulkhead, Effect.fail("boom" as const))
        expect(exit).toStrictEqual(Exit.fail("boom"))
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        yield* expectAllSlotsFree(bulkhead)
      }))

    it.effect("on defect of a call admitted from the queue", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "die-q", maxConcurrent: 1, maxWaiting: 1, maxWait: "1 second" })
        const defect = new Error("kaput")
        const exit = yield* viaQueue(bulkhead, Effect.die(defect))
        expect(Exit.isFailure(exit)).toBe(true)
        if (Exit.isFailure(exit)) expect(Cause.dieOption(exit.cause)).toEqual(Option.some(defect))
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        yield* expectAllSlotsFree(bulkhead)
      }))

    it.effect("on interruption of the running call", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "int", maxConcurrent: 1 })
        let finalized = false
        const running = yield* Effect.fork(
          bulkhead.run(Effect.ensuring(Effect.never, Effect.sync(() => {
            finalized = true
          })))
        )
        yield* waitUntil("running", () => bulkhead.unsafeStats().active === 1)
        // While it runs, the slot is taken.
        expect(bulkheadFull(yield* Effect.exit(bulkhead.run(Effect.void))).reason).toBe("queue-full")

        const exit = yield* Fiber.interrupt(running)
        expect(Exit.isInterrupted(exit)).toBe(true)
        expect(finalized).toBe(true)
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        expect(yield* bulkhead.run(Effect.succeed("next"))).toBe("next")
        yield* expectAllSlotsFree(bulkhead)
      }))

    it.effect("on interruption of a running call that was admitted from the queue", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "int-q", maxConcurrent: 1, maxWaiting: 1, maxWait: "1 second" })
        const gate = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(bulkhead.run(Deferred.await(gate)))
        yield* waitUntil("holder running", () => bulkhead.unsafeStats().active === 1)
        let started = false
        const queued = yield* Effect.fork(bulkhead.run(Effect.zipRight(Effect.sync(() => {
          started = true
        }), Effect.never)))
        yield* waitUntil("queued", () => bulkhead.unsafeStats().waiting === 1)
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(holder)
        yield* waitUntil("queued call running", () => started)
        yield* expectStats(bulkhead, { active: 1, waiting: 0 })

        yield* Fiber.interrupt(queued)
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        yield* expectAllSlotsFree(bulkhead)
      }))

    for (const maxWait of [undefined, "1 second"] as const) {
      it.effect(`on interruption of a queued waiter (maxWait ${maxWait ?? "unbounded"})`, () =>
        Effect.gen(function*() {
          const bulkhead = yield* Bulkhead.make({ name: "int-wait", maxConcurrent: 1, maxWaiting: 1, maxWait })
          const gate = yield* Deferred.make<void>()
          const holder = yield* Effect.fork(bulkhead.run(Deferred.await(gate)))
          yield* waitUntil("holder running", () => bulkhead.unsafeStats().active === 1)

          let ran = false
          const waiter = yield* Effect.fork(bulkhead.run(Effect.sync(() => {
            ran = true
          })))
          yield* waitUntil("waiter queued", () => bulkhead.unsafeStats().waiting === 1)
          // The queue is full while the waiter is in it.
          expect(bulkheadFull(yield* Effect.exit(bulkhead.run(Effect.void))).reason).toBe("queue-full")

          const exit = yield* Fiber.interrupt(waiter)
          expect(Exit.isInterrupted(exit)).toBe(true)
          yield* expectStats(bulkhead, { active: 1, waiting: 0 })

          // The freed queue place is usable again...
          const next = yield* Effect.fork(bulkhead.run(Effect.succeed("next")))
          yield* waitUntil("next queued", () => bulkhead.unsafeStats().waiting === 1)

          // ...and when the holder ends, the slot goes to the new caller, not the interrupted one.
          yield* Deferred.succeed(gate, undefined)
          yield* Fiber.join(holder)
          expect(yield* Fiber.join(next)).toBe("next")
          expect(ran).toBe(false)
          yield* expectStats(bulkhead, { active: 0, waiting: 0 })
          yield* expectAllSlotsFree(bulkhead)
        }))
    }

    it.effect("on interruption of a queued waiter once its slot is freed concurrently", () =>
      Effect.gen(function*() {
        const bulkhead = yield* Bulkhead.make({ name: "int-race", maxConcurrent: 1, maxWaiting: 1 })
        const gate = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(bulkhead.run(Deferred.await(gate)))
        yield* waitUntil("holder running", () => bulkhead.unsafeStats().active === 1)
        const waiter = yield* Effect.fork(bulkhead.run(Effect.never))
        yield* waitUntil("waiter queued", () => bulkhead.unsafeStats().waiting === 1)
        // Free the slot and interrupt the waiter in the same step.
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.interrupt(waiter)
        yield* Fiber.join(holder)
        yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        yield* expectAllSlotsFree(bulkhead)
      }))
  })

  // -------------------------------------------------------------------------
  // Properties
  // -------------------------------------------------------------------------

  // Hundreds of generated runs each: the timeout only guards against a hang.
  describe("properties", { timeout: 30_000 }, () => {
    const maxWaitArb = FastCheck.option(FastCheck.integer({ min: 1, max: 10 }).map((n) => n * 10), { nil: undefined })
    // Multiples of 10ms so that holds, timeouts and interruptions often coincide.
    const holdArb = FastCheck.integer({ min: 1, max: 10 }).map((n) => n * 10)

    it.effect.prop(
      "concurrency inside the protected effect never exceeds maxConcurrent",
      {
        maxConcurrent: FastCheck.integer({ min: 1, max: 8 }),
        maxWaiting: FastCheck.integer({ min: 0, max: 10 }),
        maxWait: maxWaitArb,
        holds: FastCheck.array(holdArb, { minLength: 1, maxLength: 40 })
      },
      ({ holds, maxConcurrent, maxWait, maxWaiting }) =>
        Effect.gen(function*() {
          const bulkhead = yield* Bulkhead.make({ name: "prop", maxConcurrent, maxWaiting, maxWait })
          const probe = makeProbe()
          let overStats = false
          const fibers = yield* Effect.forEach(holds, (hold) =>
            Effect.fork(bulkhead.run(probe.track(Effect.zipRight(
              Effect.sync(() => {
                const s = bulkhead.unsafeStats()
                if (s.active > maxConcurrent || s.available < 0) overStats = true
              }),
              Effect.sleep(Duration.millis(hold))
            )))))
          const n = holds.length

          // At t=0 nothing has finished: the first maxConcurrent run, the next maxWaiting queue, the rest are refused.
          const running = Math.min(n, maxConcurrent)
          const queued = Math.min(n - running, maxWaiting)
          yield* waitUntil("all callers admitted, queued or refused", () =>
            Effect.map(
              Effect.forEach(fibers, Fiber.poll),
              (polls) =>
                probe.state.started + bulkhead.unsafeStats().waiting + polls.filter(Option.isSome).length === n
            ))
          yield* settle
          expect(probe.state.current).toBe(running)
          yield* expectStats(bulkhead, { active: running, waiting: queued })

          yield* TestClock.adjust(Duration.millis(100 * (n + 1)))
          const exits = yield* Effect.forEach(fibers, Fiber.await)

          const refused = exits.filter((e) => Exit.isFailure(e)).map(bulkheadFull)
          const queueFull = refused.filter((e) => e.reason === "queue-full").length
          const timedOut = refused.filter((e) => e.reason === "wait-timeout").length
          expect(queueFull).toBe(n - running - queued)
          expect(exits.filter(Exit.isSuccess).length).toBe(probe.state.started)
          expect(probe.state.started + queueFull + timedOut).toBe(n)
          if (maxWait === undefined) expect(timedOut).toBe(0)
          expect(probe.state.max).toBeLessThanOrEqual(maxConcurrent)
          expect(probe.state.max).toBe(running)
          expect(overStats).toBe(false)
          yield* expectStats(bulkhead, { active: 0, waiting: 0 })
        }),
      { fastCheck: { numRuns: 75 } }
    )

    it.effect.prop(
      "interruption never leaks a permit",
      {
        maxConcurrent: FastCheck.integer({ min: 1, max: 8 }),
        maxWaiting: FastCheck.integer({ min: 0, max: 10 }),
        maxWait: maxWaitArb,
        callers: FastCheck.array(
          FastCheck.record({
            hold: holdArb,
            // undefined: never interrupted; 0: interrupted before the clock moves.
            interruptAt: FastCheck.option(FastCheck.integer({ min: 0, max: 12 }).map((n) => n * 10), { nil: undefined })
          }),
          { minLength: 1, maxLength: 40 }
        )
      },
      ({ callers, maxConcurrent, maxWait, maxWaiting }) =>
        Effect.gen(function*() {
          const bulkhead = yield* Bulkhead.make({ name: "prop-int", maxConcurrent, maxWaiting, maxWait })
          const probe = makeProbe()
          const fibers = yield* Effect.forEach(callers, ({ hold }) =>
            Effect.fork(bulkhead.run(probe.track(Effect.sleep(Duration.millis(hold))))))
          yield* settle
          const interrupters = yield* Effect.forEach(
            callers.flatMap(({ interruptAt }, i) => interruptAt === undefined ? [] : [[interruptAt, fibers[i]!] as const]),
            ([at, fiber]) => Effect.fork(Effect.zipRight(Effect.sleep(Duration.millis(at)), Fiber.interrupt(fiber)))
          )
          yield* TestClock.adjust(Duration.millis(100 * (callers.length + 2)))
          yield* Effect.forEach(interrupters, Fiber.join)
          const exits = yield* Effect.forEach(fibers, Fiber.await)

          expect(exits.length).toBe(callers.length)
          expect(probe.state.current).toBe(0)
          expect(probe.state.max).toBeLessThanOrEqual(maxConcurrent)
          const stats = yield* bulkhead.stats
          expect(stats).toEqual({ active: 0, waiting: 0, available: maxConcurrent, maxConcurrent })
          yield* expectAllSlotsFree(bulkhead)
        }),
      { fastCheck: { numRuns: 75 } }
    )
  })
})
