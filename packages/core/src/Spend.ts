/**
 * Running cost totals per caller (a gateway key), for budgets: a key whose
 * spend has reached its budget is refused before its next request costs
 * anything. Totals live behind {@link SpendStore} so that replicas can share
 * them.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

export class SpendStore extends Context.Tag("@breakwater/core/SpendStore")<
  SpendStore,
  {
    /** Adds `usd` to `key`'s total and returns the new total. */
    readonly add: (key: string, usd: number) => Effect.Effect<number>
    readonly total: (key: string) => Effect.Effect<number>
  }
>() {}

export const makeStoreMemory: Effect.Effect<Context.Tag.Service<SpendStore>> = Effect.sync(() => {
  const totals = new Map<string, number>()
  return {
    add: (key, usd) =>
      Effect.sync(() => {
        const next = (totals.get(key) ?? 0) + usd
        totals.set(key, next)
        return next
      }),
    total: (key) => Effect.sync(() => totals.get(key) ?? 0)
  }
})

export const layerStoreMemory: Layer.Layer<SpendStore> = Layer.effect(SpendStore, makeStoreMemory)
