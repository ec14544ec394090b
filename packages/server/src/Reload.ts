/**
 * Config reload, the decisions: what a new config changes, what of it can
 * apply without a restart, and whether it may apply at all. Server.ts does
 * the swap (see `Running.reload`).
 *
 * Applied at once, for new requests (requests in flight finish on the
 * config they started on): keys and their limits and budgets, upstreams
 * (added, removed, changed), routing, breaker, retry, cooldown, the cache's
 * mode and scope, health checks, pricing, `server.adminKey`,
 * `server.maxBodyBytes`, `server.logLevel`, `server.shutdownTimeout` and
 * `server.drainGrace`.
 *
 * Needs a restart (the listening socket, the connection limits Node was
 * created with, the stores and their data): {@link RESTART_ONLY}. A reload
 * that changes these applies everything else and names them; they keep
 * their running values until the process restarts.
 *
 * Refused (the running config keeps serving): a file that `check-config`
 * would refuse, with the same messages; and a config without gateway keys
 * while the server listens beyond loopback (it would accept any caller from
 * the network).
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Redacted from "effect/Redacted"
import type { ServerConfig } from "./Config.js"

/** Settings a running server cannot change: they keep their running values until a restart. */
export const RESTART_ONLY: ReadonlyArray<string> = [
  "server.host",
  "server.port",
  "server.maxConnections",
  "server.bodyTimeout",
  "server.headersTimeout",
  "server.keepAliveTimeout",
  "store",
  "cache.ttl",
  "cache.maxEntries",
  "telemetry"
]

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1"])

/** What a reload changed, by name only: never a value (keys, URLs with credentials). */
export interface Changes {
  readonly upstreams: {
    /** New names. */
    readonly added: ReadonlyArray<string>
    /** Names no longer configured. */
    readonly removed: ReadonlyArray<string>
    /** Same name, another base URL: another endpoint, whose state starts afresh. */
    readonly replaced: ReadonlyArray<string>
    /** Same name and URL, other settings (their names): the upstream keeps its state. */
    readonly changed: Readonly<Record<string, ReadonlyArray<string>>>
    readonly unchanged: ReadonlyArray<string>
  }
  readonly keys: {
    readonly count: number
    readonly added: ReadonlyArray<string>
    readonly removed: ReadonlyArray<string>
    /** Same name, another key or other limits. */
    readonly changed: ReadonlyArray<string>
  }
  /** Every other setting that changed, by path (`routing.maxAttempts`, `server.adminKey`). */
  readonly settings: ReadonlyArray<string>
}

export type Outcome =
  | {
    readonly _tag: "Reloaded"
    readonly changes: Changes
    /** Settings the file changes that keep their running values until a restart. */
    readonly restartRequired: ReadonlyArray<string>
  }
  | {
    /** The file is invalid, unreadable, or unsafe: the running config keeps serving. */
    readonly _tag: "Refused"
    readonly message: string
  }
  | {
    /** Nothing to reload from: the server was not started from a file (the demo). */
    readonly _tag: "Unavailable"
    readonly message: string
  }

export const UNAVAILABLE_MESSAGE =
  "This server was started without a config file (the demo), so there is nothing to reload. Start it with --config FILE."

// ---------------------------------------------------------------------------
// comparing configs

/**
 * A value in a form that compares by content: durations as milliseconds,
 * secrets as their value. For comparison only: never logged or returned.
 */
const canonical = (v: unknown): unknown => {
  if (Duration.isDuration(v)) return `${Duration.toMillis(v)}ms`
  if (Redacted.isRedacted(v)) return ["redacted", Redacted.value(v)]
  if (Array.isArray(v)) return v.map(canonical)
  if (typeof v === "object" && v !== null) {
    const out: Record<string, unknown> = {}
    for (const k of Object.keys(v).sort()) {
      const x = (v as Record<string, unknown>)[k]
      if (x !== undefined) out[k] = canonical(x)
    }
    return out
  }
  return v
}

const same = (a: unknown, b: unknown): boolean => JSON.stringify(canonical(a)) === JSON.stringify(canonical(b))

/** The fields of two records that differ, by name. */
const differing = (a: object, b: object): Array<string> => {
  const ra = a as Record<string, unknown>
  const rb = b as Record<string, unknown>
  const fields = [...new Set([...Object.keys(ra), ...Object.keys(rb)])].sort()
  return fields.filter((f) => !same(ra[f], rb[f]))
}

const at = (config: ServerConfig, path: string): unknown => {
  let v: unknown = config
  for (const part of path.split(".")) v = (v as Record<string, unknown> | undefined)?.[part]
  return v
}

/** The restart-only settings `next` changes from `running`. */
export const restartRequired = (running: ServerConfig, next: ServerConfig): ReadonlyArray<string> =>
  RESTART_ONLY.filter((path) => !same(at(running, path), at(next, path)))

/** `next` with the restart-only settings of `running`: what a reload serves. */
export const pinned = (running: ServerConfig, { telemetry: _, ...next }: ServerConfig): ServerConfig => ({
  ...next,
  server: {
    ...next.server,
    host: running.server.host,
    port: running.server.port,
    maxConnections: running.server.maxConnections,
    bodyTimeout: running.server.bodyTimeout,
    headersTimeout: running.server.headersTimeout,
    keepAliveTimeout: running.server.keepAliveTimeout
  },
  store: running.store,
  cache: { ...next.cache, ttl: running.cache.ttl, maxEntries: running.cache.maxEntries },
  ...(running.telemetry === undefined ? {} : { telemetry: running.telemetry })
})

/** Why `next` (pinned) may not be served, or undefined when it may. */
export const refusal = (next: ServerConfig): string | undefined =>
  next.keys.length === 0 && !LOOPBACK.has(next.server.host)
    ? `The new config has no gateway keys, and the server listens on ${next.server.host}: it would accept any caller ` +
      `from the network. Add keys, or restart it to bind to loopback.`
    : undefined

/** What `next` changes from `running`, by name. */
export const changes = (running: ServerConfig, next: ServerConfig): Changes => {
  const before = new Map(running.upstreams.map((u) => [u.name, u]))
  const after = new Map(next.upstreams.map((u) => [u.name, u]))
  const added: Array<string> = []
  const replaced: Array<string> = []
  const changed: Record<string, ReadonlyArray<string>> = {}
  const unchanged: Array<string> = []
  for (const [name, u] of after) {
    const old = before.get(name)
    if (old === undefined) added.push(name)
    else if (old.baseUrl.replace(/\/+$/, "") !== u.baseUrl.replace(/\/+$/, "")) replaced.push(name)
    else {
      const fields = differing(old, u)
      if (fields.length === 0) unchanged.push(name)
      else changed[name] = fields
    }
  }
  const keysBefore = new Map(running.keys.map((k) => [k.name, k]))
  const keysAfter = new Map(next.keys.map((k) => [k.name, k]))
  const settings: Array<string> = []
  for (const section of ["server", "routing", "breaker", "retry", "cooldown", "cache", "healthCheck", "pricingPolicy"] as const) {
    for (const f of differing(running[section], next[section])) settings.push(`${section}.${f}`)
  }
  if (!same(running.pricing, next.pricing)) settings.push("pricing.models")
  if (!same(running.store, next.store)) settings.push("store")
  return {
    upstreams: {
      added,
      removed: [...before.keys()].filter((n) => !after.has(n)),
      replaced,
      changed,
      unchanged
    },
    keys: {
      count: next.keys.length,
      added: [...keysAfter.keys()].filter((n) => !keysBefore.has(n)),
      removed: [...keysBefore.keys()].filter((n) => !keysAfter.has(n)),
      changed: [...keysAfter].filter(([n, k]) => keysBefore.has(n) && !same(keysBefore.get(n), k)).map(([n]) => n)
    },
    settings
  }
}

/** One line saying what changed, for the log: `upstreams +c -a ~b(weight); keys 3 (+x -y)`. */
export const summary = (c: Changes): string => {
  const parts: Array<string> = []
  const u = c.upstreams
  const ups = [
    ...u.added.map((n) => `+${n}`),
    ...u.removed.map((n) => `-${n}`),
    ...u.replaced.map((n) => `${n} (new URL)`),
    ...Object.entries(u.changed).map(([n, f]) => `${n} (${f.join(", ")})`)
  ]
  parts.push(ups.length === 0 ? "upstreams unchanged" : `upstreams ${ups.join(", ")}`)
  const keys = [...c.keys.added.map((n) => `+${n}`), ...c.keys.removed.map((n) => `-${n}`), ...c.keys.changed.map((n) => `~${n}`)]
  parts.push(`${c.keys.count} key(s)${keys.length === 0 ? "" : ` (${keys.join(", ")})`}`)
  if (c.settings.length > 0) parts.push(`settings ${c.settings.join(", ")}`)
  return parts.join("; ")
}
