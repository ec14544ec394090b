/**
 * A relay over a scripted upstream client (see `ScriptedClient`) and
 * in-memory stores, for tests under TestClock: the setup the relay's tests
 * share. The relay's cache is off unless `options` turns it on.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Cooldown from "../../src/Cooldown.js"
import * as Pricing from "../../src/Pricing.js"
import * as RateLimiter from "../../src/RateLimiter.js"
import * as Relay from "../../src/Relay.js"
import * as ResponseCache from "../../src/ResponseCache.js"
import type * as Upstream from "../../src/Upstream.js"
import * as Scripted from "./ScriptedClient.js"

export interface ScriptedRelay {
  readonly relay: Relay.Relay
  readonly client: Scripted.Scripted
  /** The relay's in-memory cooldown store, to start or clear cooldowns from a test. */
  readonly cooldowns: Context.Tag.Service<Cooldown.CooldownStore>
}

export const scriptedRelay = (options: Relay.Options): Effect.Effect<ScriptedRelay, never, Scope.Scope> =>
  Effect.gen(function*() {
    const client = Scripted.make()
    const deps = Layer.mergeAll(
      RateLimiter.layerStoreMemory,
      Cooldown.layerStoreMemory,
      client.layer,
      Pricing.layer(),
      ResponseCache.layerMemory()
    )
    const ctx = yield* Layer.build(Relay.layer({ cacheMode: "none", ...options }).pipe(Layer.provideMerge(deps)))
    return { relay: Context.get(ctx, Relay.Relay), client, cooldowns: Context.get(ctx, Cooldown.CooldownStore) }
  })

/** An upstream at `https://{name}.example.test/v1` serving `models`, with a key that must never leak. */
export const upstream = (name: string, models: ReadonlyArray<string>, extra: Partial<Upstream.Config> = {}): Upstream.Config => ({
  name,
  baseUrl: `https://${name}.example.test/v1`,
  apiKey: Redacted.make(`sk-secret-${name}`),
  models,
  ...extra
})

/** Upstreams a, b, c... serving `models`, with priorities 1, 2, 3..., so that the order is deterministic. */
export const ordered = (models: ReadonlyArray<string>, ...names: ReadonlyArray<string>): Array<Upstream.Config> =>
  names.map((name, i) => upstream(name, models, { priority: i + 1 }))
