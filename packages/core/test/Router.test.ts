import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Random from "effect/Random"
import { PCGRandom } from "effect/Utils"
import * as Hash from "effect/Hash"
import { FastCheck as fc } from "effect"
import * as Router from "../src/Router.js"
import type { Upstream } from "../src/Upstream.js"

/** What the router reads of an upstream: its name, weight, priority, an available breaker, a free slot. */
const upstream = (name: string, weight: number, priority: number): Upstream =>
  ({
    name,
    weight,
    priority,
    breaker: { unsafeIsAvailable: () => true, unsafeIsForcedOpen: () => false },
    bulkhead: { unsafeStats: () => ({ active: 0, waiting: 0, available: 1, maxConcurrent: 1 }) }
  }) as unknown as Upstream

const NO_COOLDOWNS = new Map()

describe("Router", () => {
  // The hot path's plan (unsafePlan) must be the effect's plan, draw for draw:
  // the simulator's reports and a server's routing depend on it.
  it.effect("unsafePlan orders as plan does, with the same draws (weights and priorities, ties included)", () =>
    Effect.sync(() => {
      fc.assert(
        fc.property(
          fc.array(fc.tuple(fc.constantFrom(0, 0.5, 1, 1, 3), fc.constantFrom(1, 1, 2, 3)), { minLength: 1, maxLength: 6 }),
          fc.constantFrom<Router.Strategy>("priority", "weighted"),
          fc.integer({ min: 0, max: 1_000_000 }),
          (specs, strategy, seed) => {
            const ups = specs.map(([w, p], i) => upstream(`u${i}`, w, p))
            const router = Router.make({ strategy })
            const planned = Effect.runSync(
              Effect.map(router.plan(ups, 0, NO_COOLDOWNS), (p) => p.order.map((u) => u.name)).pipe(Effect.withRandom(Random.make(seed)))
            )
            // Random.make(seed)'s generator, drawn synchronously.
            const prng = new PCGRandom(Hash.hash(seed))
            const unsafe = router.unsafePlan!(ups, 0, NO_COOLDOWNS, prng).order.map((u) => u.name)
            expect(unsafe).toEqual(planned)
            // The same number of draws: the next draw is the same.
            const next = Effect.runSync(
              Effect.zipRight(router.plan(ups, 0, NO_COOLDOWNS), Random.next).pipe(Effect.withRandom(Random.make(seed)))
            )
            expect(prng.number()).toBe(next)
          }
        ),
        { numRuns: 500 }
      )
    }))
})
