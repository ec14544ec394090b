/**
 * Redis implementations of the four shared stores (rate limits, cooldowns,
 * the response cache, spend), on one ioredis connection, so that several
 * replicas of a gateway share their state.
 *
 * Redis is an optimisation of correctness across replicas, never a new way
 * for a request to fail: while it is unavailable (down at start, gone
 * mid-run, or slower than `commandTimeout`) every call is answered by the
 * store's in-memory twin instead. Rate limits then hold per replica, the
 * cache misses or uses memory, spend accrues locally (and is added to Redis
 * once it answers again), cooldowns started here apply here (and are written
 * to Redis once it answers again). One warning is logged when Redis starts
 * failing and one message when it is back; each fallback is counted in
 * `breakwater_store_fallbacks_total{store}`. ioredis reconnects by itself;
 * the first call that succeeds resumes the shared state.
 *
 * Keys, all under `prefix` (default `breakwater:`):
 * - `rl:<key>`: a rate limiter's state. A hash `{ tokens, at }` for a token
 *   bucket; for a sliding window a list: `total:<sum of costs>` first, then
 *   the `time:cost` reservations, one entry per instant (the reservations
 *   made at the same millisecond, their costs added up). Both expire once
 *   they are equivalent to a fresh key.
 * - `cooldowns`: a hash, upstream -> `until|reason`. Each cooldown started
 *   (and each cleared) is also published on the channel `cooldowns` (under
 *   the prefix, `upstream|until|reason`, or `upstream|0|clear`), so that the
 *   other replicas have it within milliseconds rather than at their next
 *   re-read (`cooldownRefresh`), which still runs, for what a replica missed.
 * - `cache:<key>`: a cached response, with `PX` = the entry's TTL.
 * - `spend:<key>`: a running total in USD (`INCRBYFLOAT`); `spend@<period>:<key>`
 *   for a budget period (`day:2026-11-30`), expiring a day after the period.
 * - `held:<key>` (`held@<period>:<key>`): the sum of the reservations in
 *   flight, and `holds:<key>` a sorted set of them (`<id>|<usd>`, scored by
 *   expiry), so that a reservation never settled (its replica died) expires.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { Redis as IORedis } from "ioredis"
import { type Cooldown, CooldownStore, type Reason } from "./Cooldown.js"
import * as RateLimiter from "./RateLimiter.js"
import * as RedisDefaults from "./RedisDefaults.js"
import * as ResponseCache from "./ResponseCache.js"
import * as Spend from "./Spend.js"
import { SpendStore } from "./Spend.js"
import { makeListeners } from "./internal/listeners.js"

export interface Options {
  /** `redis://[user:password@]host:port/db` (or `rediss://`). */
  readonly url: string
  /** Key namespace, default `breakwater:`. Every key starts with it, so several gateways can share one Redis. */
  readonly prefix?: string
  /** How long a command may take before the call falls back to memory. Default 50 ms (`RedisDefaults.commandTimeout`). */
  readonly commandTimeout?: Duration.DurationInput
  /** Cache values larger than this (UTF-8 bytes) are not stored. Default 1 MiB. */
  readonly maxCacheEntryBytes?: number
  /** How often active cooldowns are re-read from Redis. Default 250 ms. */
  readonly cooldownRefresh?: Duration.DurationInput
  /** How long an unsettled budget reservation is held at most. Default 15 minutes. */
  readonly holdTimeout?: Duration.DurationInput
}

/** The four stores, as made by {@link make}. */
export interface Stores {
  readonly rateLimiter: Context.Tag.Service<RateLimiter.RateLimiterStore>
  readonly cooldown: Context.Tag.Service<CooldownStore>
  readonly cache: Context.Tag.Service<ResponseCache.ResponseCacheStore>
  readonly spend: Context.Tag.Service<SpendStore>
}

export type StoreName = "rate-limiter" | "cooldown" | "cache" | "spend"

const fallbacksCounter = Metric.counter("breakwater_store_fallbacks_total", {
  description: "Store calls answered from memory because Redis was unavailable",
  incremental: true
})

const fallbacks: Record<StoreName, Metric.Metric.Counter<number>> = {
  "rate-limiter": Metric.tagged(fallbacksCounter, "store", "rate-limiter"),
  cooldown: Metric.tagged(fallbacksCounter, "store", "cooldown"),
  cache: Metric.tagged(fallbacksCounter, "store", "cache"),
  spend: Metric.tagged(fallbacksCounter, "store", "spend")
}

// ---------------------------------------------------------------------------
// Lua

/**
 * The rate limiter's decisions, atomically: the same as the memory store's
 * `decideTokenBucket` and `decideSlidingWindow` (same arithmetic on the same
 * doubles), with Redis `TIME` as the clock.
 *
 * One call decides several requests, one after the other in the order given,
 * at one instant (one `TIME`): what as many single calls in a row would
 * decide, for one round trip. A limiter key's state is read from Redis once
 * per call (however many of its requests the call holds), decided on in the
 * script's memory, and written back once at the end: a call of twenty
 * requests for one key costs little more than a call of one.
 *
 * KEYS: the limiter keys, one per request (a key may repeat). ARGV[1]: a
 * fixed `now` (epoch millis; for tests only, the store passes ""). ARGV[2]:
 * the number of limiter shapes the requests use, then four per shape:
 * algorithm, limit, windowMillis, maxWaitMillis (negative: unbounded). Then
 * two per request: its shape (1-based; negative when the request is decided
 * only if the one before it was granted: a key's tokens after its request
 * count, so a refusal leaves the rest of such a chain untaken, as `admit`
 * would), and its cost. (Shapes are few, requests many: two arguments a
 * request, not six, for Redis to read and the script to parse.)
 *
 * Returns three values per request: `1, waitMillis, remaining` or
 * `0, retryAfterMillis, remaining`; `2, 0, 0` for a request of a chain left
 * untaken. Whole numbers are replied as integers, others as text (Redis
 * would truncate a Lua number to an integer).
 *
 * Numbers are written with `%.17g` (exact for doubles; Lua's `tostring`
 * keeps only 14 digits) and TTLs with `%d`.
 *
 * The sliding-window log keeps its running total in the list's first element
 * (one key: it expires, and is reset on an algorithm change, as one; no extra
 * key that could spell another limiter's). A call reads the total, the last
 * entry and, from the head, only the entries it prunes, those that will have
 * left the window by a future start, and (when the request does not fit) those
 * that must leave for it to fit: O(1) amortised, not O(entries in the window).
 * A list without the total (written by an older version) is added up once.
 */
export const acquireManyLua = `
local function num(x) return string.format("%.17g", x) end
-- A number for the reply: an integer as it is (Redis replies with Lua numbers
-- as integers, exact below 2^53), any other as text.
local function out(x)
  if x == math.floor(x) and x > -9007199254740992 and x < 9007199254740992 then return x end
  return num(x)
end
-- A TTL in whole millis: at least 1, and a number even for odd limits (0, huge).
local function ttl(x)
  x = math.ceil(x)
  if not (x >= 1) then x = 1 end
  if x > 1e15 then x = 1e15 end
  return string.format("%d", x)
end
local function maxWaitOf(x)
  x = tonumber(x)
  if x < 0 then return math.huge end
  return x
end
local header = "total:"

-- A token bucket's state, read once: { tokens, at } (a fresh bucket is full).
local function loadBucket(key, limit, w, now)
  local kind = redis.call("TYPE", key)["ok"]
  if kind ~= "hash" and kind ~= "none" then redis.call("DEL", key) end
  local state = redis.call("HMGET", key, "tokens", "at")
  local s = { bucket = true, key = key }
  s.tokens = state[1] and tonumber(state[1])
  s.updated = state[2] and tonumber(state[2])
  if not s.tokens or not s.updated then
    s.tokens = limit * w
    s.updated = now
  end
  return s
end
local function saveBucket(s)
  redis.call("HSET", s.key, "tokens", num(s.tokens), "at", num(s.updated))
  -- Once full, the bucket is the same as a fresh one.
  redis.call("PEXPIRE", s.key, ttl((s.limit * s.w - s.tokens) / s.limit))
end
local function decideBucket(s, limit, w, cost, maxWait, now)
  local full = limit * w
  s.tokens = math.min(full, s.tokens + (now - s.updated) * limit)
  s.updated = now
  s.limit = limit
  s.w = w
  local units = cost * w
  if cost > limit then
    return 0, out(w), out(math.max(0, math.floor(s.tokens / w)))
  end
  if s.tokens >= units then
    s.tokens = s.tokens - units
    return 1, 0, out(math.max(0, math.floor(s.tokens / w)))
  end
  local wait = math.ceil((units - s.tokens) / limit)
  if wait <= maxWait then
    s.tokens = s.tokens - units
    return 1, out(wait), 0
  end
  return 0, out(wait), out(math.max(0, math.floor(s.tokens / w)))
end

-- A sliding window's state, read once: a FIFO list. Index 0 holds the
-- running total of the costs ("total:<sum>", as the memory store's
-- Log.total), then the "time:cost" reservations in time order, those at the
-- same time as one (their costs added up: the decisions only ever take the
-- reservations of one instant together). Entry i (1-based) is at list index
-- i; the first \`stored\` are in Redis, read from the head only as far as a
-- decision needs them, and the last of them at once; those after were added
-- by this call, and are written at its end.
local function loadLog(key)
  local kind = redis.call("TYPE", key)["ok"]
  if kind ~= "list" and kind ~= "none" then
    redis.call("DEL", key)
    kind = "none"
  end
  local s = { bucket = false, key = key, fresh = kind == "none", total = 0, n = 0,
    times = {}, costs = {}, loaded = 0, chunk = 4, head = 1, lastChanged = false }
  if not s.fresh then
    local h = redis.call("LINDEX", key, 0)
    if string.sub(h, 1, #header) == header then
      s.total = tonumber(string.sub(h, #header + 1))
      s.n = redis.call("LLEN", key) - 1
    else
      -- A log written before the total was kept: add it up once.
      local all = redis.call("LRANGE", key, 0, -1)
      for i = 1, #all do
        local e = all[i]
        s.total = s.total + tonumber(string.sub(e, string.find(e, ":", 1, true) + 1))
      end
      redis.call("LPUSH", key, header .. num(s.total))
      s.n = #all
    end
    if s.n > 0 then
      local e = redis.call("LINDEX", key, -1)
      local c = string.find(e, ":", 1, true)
      s.times[s.n] = tonumber(string.sub(e, 1, c - 1))
      s.costs[s.n] = tonumber(string.sub(e, c + 1))
    end
  end
  s.stored = s.n
  return s
end
-- Loads stored entries up to i (the last one is loaded already), from the head in growing chunks.
local function load(s, i)
  if i <= s.loaded or i >= s.stored then return end
  local upto = math.min(s.stored - 1, math.max(i, s.loaded + s.chunk))
  local got = redis.call("LRANGE", s.key, s.loaded + 1, upto)
  for j = 1, #got do
    local e = got[j]
    local c = string.find(e, ":", 1, true)
    s.times[s.loaded + j] = tonumber(string.sub(e, 1, c - 1))
    s.costs[s.loaded + j] = tonumber(string.sub(e, c + 1))
  end
  s.loaded = upto
  if s.chunk < 1024 then s.chunk = s.chunk * 2 end
end
local function timeAt(s, i)
  load(s, i)
  return s.times[i]
end
-- Writes what changed: pruned entries, the last stored one (if this call
-- added to it), the new ones, the total, the TTL.
local function saveLog(s)
  local key = s.key
  -- Entries pruned from Redis's list, and those this call added (and did not prune).
  local pruned = math.min(s.head - 1, s.stored)
  local entries = {}
  for i = math.max(s.head, s.stored + 1), s.n do
    entries[#entries + 1] = num(s.times[i]) .. ":" .. num(s.costs[i])
  end
  if s.fresh then
    if #entries > 0 then redis.call("RPUSH", key, header .. num(s.total), unpack(entries)) end
  else
    -- Keeps the last pruned entry at index 0, where the total then goes.
    if pruned > 0 then redis.call("LTRIM", key, pruned, -1) end
    if s.lastChanged and pruned < s.stored then
      redis.call("LSET", key, -1, num(s.times[s.stored]) .. ":" .. num(s.costs[s.stored]))
    end
    if #entries > 0 then redis.call("RPUSH", key, unpack(entries)) end
    if pruned > 0 or #entries > 0 or s.lastChanged then redis.call("LSET", key, 0, header .. num(s.total)) end
  end
  -- Once the last reservation has left the window, the log is the same as an empty one.
  if s.expireAfter then redis.call("PEXPIRE", key, ttl(s.expireAfter)) end
end
local function decideLog(s, limit, w, cost, maxWait, now)
  local times = s.times
  local costs = s.costs
  local n = s.n
  -- Forget what has left every window that can still matter.
  while s.head <= n and timeAt(s, s.head) <= now - w do
    s.total = s.total - costs[s.head]
    s.head = s.head + 1
  end
  local last = now
  if n >= s.head then last = times[n] end
  local start = math.max(now, last)
  -- What counts at start: the total, less entries that will have left the
  -- window by then (only when reservations reach into the future).
  local used = s.total
  local first = s.head
  while first <= n and timeAt(s, first) <= start - w do
    used = used - costs[first]
    first = first + 1
  end
  local remainingNow = math.max(0, limit - used)
  if cost > limit then
    return 0, out(w), out(remainingNow)
  end
  local at = start
  if used + cost > limit then
    -- The first reservation whose leaving makes room; those of the same
    -- instant leave with it (a log written by an older version may hold
    -- them apart).
    local i = first
    while i <= n do
      local t = timeAt(s, i)
      used = used - costs[i]
      while i < n and timeAt(s, i + 1) == t do
        i = i + 1
        used = used - costs[i]
      end
      if used + cost <= limit then
        at = t + w
        break
      end
      i = i + 1
    end
  end
  local wait = at - now
  if wait > maxWait then
    return 0, out(wait), out(remainingNow)
  end
  s.total = s.total + cost
  if n >= s.head and times[n] == at then
    -- The same instant as the last reservation: one entry.
    costs[n] = costs[n] + cost
    if n == s.stored then s.lastChanged = true end
  else
    n = n + 1
    s.n = n
    times[n] = at
    costs[n] = cost
  end
  s.expireAfter = wait + w
  return 1, out(wait), out(math.max(0, limit - used - cost))
end

local now
if ARGV[1] ~= "" then
  now = tonumber(ARGV[1])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The state of each key this call has read, and the order they were read in.
local states = {}
local touched = {}
local reply = {}
local granted = true
local shapes = {}
local shapeCount = tonumber(ARGV[2])
for k = 1, shapeCount do
  local j = 2 + (k - 1) * 4
  shapes[k] = { bucket = ARGV[j + 1] == "token-bucket", limit = tonumber(ARGV[j + 2]), w = tonumber(ARGV[j + 3]),
    maxWait = maxWaitOf(ARGV[j + 4]) }
end
local first = 2 + shapeCount * 4
for i = 1, #KEYS do
  local j = first + (i - 1) * 2
  local key = KEYS[i]
  local ref = tonumber(ARGV[j + 1])
  local o = (i - 1) * 3
  if ref < 0 and not granted then
    reply[o + 1] = 2
    reply[o + 2] = 0
    reply[o + 3] = 0
  else
    local shape = shapes[math.abs(ref)]
    local bucket = shape.bucket
    local limit = shape.limit
    local w = shape.w
    local s = states[key]
    if s and s.bucket ~= bucket then
      -- Another algorithm on the same key: the state so far written, then read anew (and reset).
      if s.bucket then saveBucket(s) else saveLog(s) end
      s = nil
    end
    if not s then
      if bucket then s = loadBucket(key, limit, w, now) else s = loadLog(key) end
      states[key] = s
      touched[#touched + 1] = s
    end
    local g, millis, remaining
    if bucket then
      g, millis, remaining = decideBucket(s, limit, w, tonumber(ARGV[j + 2]), shape.maxWait, now)
    else
      g, millis, remaining = decideLog(s, limit, w, tonumber(ARGV[j + 2]), shape.maxWait, now)
    end
    granted = g == 1
    reply[o + 1] = g
    reply[o + 2] = millis
    reply[o + 3] = remaining
  end
end
for i = 1, #touched do
  local s = touched[i]
  if states[s.key] == s then
    if s.bucket then saveBucket(s) else saveLog(s) end
  end
end
return reply
`

/**
 * Cooldown `start`: keeps the later end (a tie keeps the current one, as the
 * memory store does), and forgets fields that have expired. A cooldown
 * stored is published on the channel, in the same step.
 * KEYS[1]: the cooldowns hash. ARGV: upstream, until, reason, now, channel.
 */
const cooldownStartLua = `
local hash = KEYS[1]
local untilMillis = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
local current = redis.call("HGET", hash, ARGV[1])
local currentUntil = current and tonumber(string.match(current, "^([^|]*)"))
local stored = 0
if not currentUntil or currentUntil < untilMillis then
  redis.call("HSET", hash, ARGV[1], ARGV[2] .. "|" .. ARGV[3])
  redis.call("PUBLISH", ARGV[5], ARGV[1] .. "|" .. ARGV[2] .. "|" .. ARGV[3])
  stored = 1
end
local all = redis.call("HGETALL", hash)
for i = 1, #all, 2 do
  local u = tonumber(string.match(all[i + 1], "^([^|]*)"))
  if not u or u <= now then redis.call("HDEL", hash, all[i]) end
end
return stored
`

/**
 * Spend `reserve`, atomically: drops expired holds, then holds `usd` if the
 * settled spend is below the budget and spend + holds + `usd` stay within it
 * (`Spend.fits`).
 * KEYS: spend, held, holds. ARGV: member (`<id>|<usd>`), usd, budget, now,
 * expires (now + hold timeout), the hold keys' TTL in millis.
 * Returns `{ granted, spent, held }`, numbers as strings.
 */
export const reserveLua = `
local function num(x) return string.format("%.17g", x) end
local now = tonumber(ARGV[4])
local held = tonumber(redis.call("GET", KEYS[2]) or "0")
local expired = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now, "LIMIT", 0, 1000)
for i = 1, #expired do
  local m = expired[i]
  held = held - tonumber(string.sub(m, string.find(m, "|", 1, true) + 1))
end
if #expired > 0 then redis.call("ZREM", KEYS[3], unpack(expired)) end
local spent = tonumber(redis.call("GET", KEYS[1]) or "0")
local usd = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local granted = 0
if spent < budget and spent + held + usd <= budget + 1e-12 then
  granted = 1
  held = held + usd
  redis.call("ZADD", KEYS[3], ARGV[5], ARGV[1])
  redis.call("PEXPIRE", KEYS[3], ARGV[6])
end
if redis.call("ZCARD", KEYS[3]) == 0 then
  held = 0
  redis.call("DEL", KEYS[2])
elseif granted == 1 or #expired > 0 then
  redis.call("SET", KEYS[2], num(held), "PX", ARGV[6])
end
return { granted, num(spent), num(held) }
`

/**
 * Spend `settle`: releases the hold (if Redis still has it) and adds the real
 * cost. KEYS: spend, held, holds. ARGV: member (or ""), usd, the spend key's
 * expiry (epoch millis, or ""). Returns the new total.
 */
const settleLua = `
local function num(x) return string.format("%.17g", x) end
local member = ARGV[1]
if member ~= "" and redis.call("ZREM", KEYS[3], member) == 1 then
  if redis.call("ZCARD", KEYS[3]) == 0 then
    redis.call("DEL", KEYS[2])
  else
    local usd = tonumber(string.sub(member, string.find(member, "|", 1, true) + 1))
    local held = tonumber(redis.call("GET", KEYS[2]) or "0") - usd
    if held < 0 then held = 0 end
    redis.call("SET", KEYS[2], num(held), "KEEPTTL")
  end
end
local total
if tonumber(ARGV[2]) ~= 0 then
  total = redis.call("INCRBYFLOAT", KEYS[1], ARGV[2])
  if ARGV[3] ~= "" then redis.call("PEXPIREAT", KEYS[1], ARGV[3]) end
else
  total = redis.call("GET", KEYS[1]) or "0"
end
return total
`

interface Client extends IORedis {
  breakwaterReserve(
    spent: string,
    held: string,
    holds: string,
    member: string,
    usd: string,
    budget: string,
    now: string,
    expires: string,
    ttl: string
  ): Promise<[number, string, string]>
  breakwaterSettle(spent: string, held: string, holds: string, member: string, usd: string, expireAt: string): Promise<string>
  breakwaterAcquireMany(numberOfKeys: number, ...keysThenArgs: ReadonlyArray<string>): Promise<Array<number | string>>
  breakwaterCooldownStart(hash: string, upstream: string, until: string, reason: string, now: string, channel: string): Promise<number>
}

// ---------------------------------------------------------------------------
// Helpers

/** `host:port/db` of a Redis URL: what logs may show (never the credentials). */
const describeTarget = (url: string): string => {
  try {
    const u = new URL(url)
    const db = u.pathname.replace(/^\//, "")
    return `${u.hostname}:${u.port === "" ? "6379" : u.port}${db === "" ? "" : `/${db}`}`
  } catch {
    return "redis"
  }
}

/** The URL's password, if any, so that it can be masked in error messages. */
const passwordOf = (url: string): string | undefined => {
  try {
    const p = decodeURIComponent(new URL(url).password)
    return p === "" ? undefined : p
  } catch {
    return undefined
  }
}

/** Raised without sending anything: the connection is not ready. */
class NotReady extends Error {
  constructor(status: string) {
    super(`connection ${status}`)
    this.name = "NotReady"
  }
}

/** Whether a failed command certainly never reached Redis. */
const notSent = (cause: unknown): boolean =>
  cause instanceof NotReady || (cause instanceof Error && cause.message.includes("enableOfflineQueue"))

// A record, not a list: a reason added to Cooldown.Reason and not here fails to compile
// (else its cooldowns would be dropped as malformed when read back from Redis).
const reasonsKnown: Record<Reason, true> = {
  "rate-limited": true,
  "quota-exhausted": true,
  "low-headroom": true,
  "auth-failed": true,
  "unreachable": true
}
const reasons: ReadonlySet<string> = new Set(Object.keys(reasonsKnown))

/** `until|reason` as stored in the cooldowns hash, or undefined if malformed. */
const parseCooldown = (value: string): Cooldown | undefined => {
  const bar = value.indexOf("|")
  if (bar < 0) return undefined
  const until = Number(value.slice(0, bar))
  const reason = value.slice(bar + 1)
  if (!Number.isFinite(until) || !reasons.has(reason)) return undefined
  return { until, reason: reason as Reason }
}

/** UTF-8 length of `value` is over `max`, computed only when it can matter. */
const tooLarge = (value: string, max: number): boolean => {
  if (value.length > max) return true
  if (value.length * 3 <= max) return false
  return Buffer.byteLength(value, "utf8") > max
}

const numberArg = (n: number): string => String(n)

/** A request's `maxWait` as the acquire scripts read it (`-1`: no bound). */
const maxWaitArg = (millis: number): string => Number.isFinite(millis) ? numberArg(millis) : "-1"

/** Whether two requests are decided by the same limiter arithmetic (algorithm, limit, window, maxWait). */
const sameShape = (a: RateLimiter.AcquireRequest, b: RateLimiter.AcquireRequest): boolean =>
  a.algorithm === b.algorithm && a.limit === b.limit && a.windowMillis === b.windowMillis && a.maxWaitMillis === b.maxWaitMillis

/** A decision from the three values an acquire script returns for it. */
const decisionOf = (granted: unknown, millis: unknown, remaining: unknown): RateLimiter.Decision =>
  Number(granted) === 1
    ? { granted: true, waitMillis: Number(millis), remaining: Number(remaining) }
    : { granted: false, retryAfterMillis: Number(millis), remaining: Number(remaining) }

// ---------------------------------------------------------------------------
// The stores

/**
 * The four stores on one connection, closed with the scope. Never fails:
 * when Redis cannot be reached the stores answer from memory until it can.
 */
export const make = (options: Options): Effect.Effect<Stores, never, Scope.Scope> =>
  Effect.gen(function*() {
    const prefix = options.prefix ?? RedisDefaults.prefix
    const commandTimeout = Math.max(1, Math.round(Duration.toMillis(options.commandTimeout ?? RedisDefaults.commandTimeout)))
    const maxCacheEntryBytes = options.maxCacheEntryBytes ?? 1024 * 1024
    const cooldownRefresh = Duration.decode(options.cooldownRefresh ?? Duration.millis(250))
    const target = describeTarget(options.url)
    const password = passwordOf(options.url)
    const scrub = (message: string): string =>
      password === undefined ? message : message.split(password).join("***")

    const redis = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const client = new IORedis(options.url, {
          lazyConnect: false,
          enableOfflineQueue: false,
          maxRetriesPerRequest: 0,
          commandTimeout,
          retryStrategy: (times) => Math.min(times * 100, 2000)
        }) as Client
        // Failures are reported by the calls that meet them; without a
        // listener ioredis would print every reconnection error.
        client.on("error", () => {})
        client.defineCommand("breakwaterAcquireMany", { lua: acquireManyLua })
        client.defineCommand("breakwaterCooldownStart", { numberOfKeys: 1, lua: cooldownStartLua })
        client.defineCommand("breakwaterReserve", { numberOfKeys: 3, lua: reserveLua })
        client.defineCommand("breakwaterSettle", { numberOfKeys: 3, lua: settleLua })
        return client
      }),
      (client) =>
        Effect.promise(() => client.status === "ready" ? client.quit().then(() => {}, () => {}) : Promise.resolve()).pipe(
          Effect.timeoutOption(Duration.seconds(1)),
          Effect.zipRight(Effect.sync(() => client.disconnect()))
        )
    )

    // -- health: one warning per incident, one message when it is over

    let failing = false
    const markFailing = (store: StoreName, cause: unknown): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (failing) return Effect.void
        failing = true
        const reason = scrub(cause instanceof Error ? cause.message : String(cause))
        return Effect.logWarning(
          `Redis unavailable (${reason}): the stores answer from memory (limits per replica) until it is back`
        ).pipe(Effect.annotateLogs({ redis: target, store }))
      })
    const markHealthy: Effect.Effect<void> = Effect.suspend(() => {
      if (!failing) return Effect.void
      failing = false
      return Effect.logInfo("Redis is back: the stores share state again").pipe(Effect.annotateLogs({ redis: target }))
    })

    /** One command, failing at once (without sending) when the connection is not ready. */
    const command = <A>(send: (client: Client) => Promise<A>): Effect.Effect<A, unknown> =>
      Effect.suspend(() =>
        redis.status === "ready"
          ? Effect.tryPromise({ try: () => send(redis), catch: (cause) => cause })
          : Effect.fail(new NotReady(redis.status))
      )

    /** `fallback`, counted and warned about (once), for a call Redis failed with `cause`. */
    const fellBack = <A, E>(store: StoreName, cause: unknown, fallback: Effect.Effect<A, E>): Effect.Effect<A, E> =>
      Effect.zipRight(
        Effect.zipRight(Metric.increment(fallbacks[store]), markFailing(store, cause)),
        fallback
      )

    /** `primary`, or `fallback` (counted, and warned about once) when Redis fails. */
    const orFallback = <A, E>(
      store: StoreName,
      primary: Effect.Effect<A, unknown>,
      fallback: (cause: unknown) => Effect.Effect<A, E>
    ): Effect.Effect<A, E> =>
      Effect.matchEffect(primary, {
        onSuccess: (a) => failing ? Effect.as(markHealthy, a) : Effect.succeed(a),
        onFailure: (cause) => fellBack(store, cause, fallback(cause))
      })

    // Wait a little for the first connection, so that the first requests do
    // not all fall back; a Redis that is down reports an error at once.
    let startupError = "no answer"
    const connected = yield* Effect.async<boolean>((resume) => {
      if (redis.status === "ready") return resume(Effect.succeed(true))
      const onReady = () => done(true)
      const onError = (error: unknown) => {
        startupError = error instanceof Error ? error.message : String(error)
        done(false)
      }
      const done = (ok: boolean) => {
        redis.off("ready", onReady)
        redis.off("error", onError)
        resume(Effect.succeed(ok))
      }
      redis.once("ready", onReady)
      redis.once("error", onError)
      return Effect.sync(() => {
        redis.off("ready", onReady)
        redis.off("error", onError)
      })
    }).pipe(Effect.timeoutTo({ duration: Duration.seconds(1), onTimeout: () => false, onSuccess: (ok) => ok }))
    if (!connected) {
      yield* Effect.suspend(() =>
        failing ? Effect.void : Effect.zipRight(
          Effect.sync(() => {
            failing = true
          }),
          Effect.logWarning(
            `Redis unavailable at startup (${scrub(startupError)}): the stores answer from memory (limits per replica) until it is reachable`
          ).pipe(Effect.annotateLogs({ redis: target }))
        )
      )
    }

    // -- rate limits

    const rateLimiterMemory = yield* RateLimiter.makeStoreMemory
    const decideInMemory = rateLimiterMemory.unsafeAcquire!

    /** What the script call decides while Redis fails: the memory twin, counted and warned about (once). */
    const acquireFallback = (
      requests: ReadonlyArray<RateLimiter.AcquireRequest>,
      cause: unknown
    ): Effect.Effect<ReadonlyArray<RateLimiter.Decision>, RateLimiter.RateLimiterStoreError> =>
      fellBack(
        "rate-limiter",
        cause,
        Effect.clockWith((clock) => {
          // One synchronous step, as the script is one atomic step: in order, up to the first refusal.
          const now = clock.unsafeCurrentTimeMillis()
          const decisions: Array<RateLimiter.Decision> = []
          for (const req of requests) {
            const d = decideInMemory(req, now)
            decisions.push(d)
            if (!d.granted) break
          }
          return Effect.succeed(decisions)
        })
      )

    /**
     * Every decision goes to Redis the same way: the requests that arrive
     * in one turn of the event loop (the fiberless takes of a server's fast
     * path, the `acquire`s of fibers) are sent as one script call when its
     * I/O callbacks are done (`setImmediate`: no timer, no wait beyond the
     * turn), each decided in Redis in arrival order, as that many calls in a
     * row would be, for one round trip and one reply. Under load that is
     * several requests per call; alone, one. A group (a key's request count
     * then its tokens) is never split between calls.
     */
    interface Group {
      readonly requests: ReadonlyArray<RateLimiter.AcquireRequest>
      readonly done: (
        decisions: ReadonlyArray<RateLimiter.Decision> | Effect.Effect<ReadonlyArray<RateLimiter.Decision>, RateLimiter.RateLimiterStoreError>
      ) => void
    }
    let groups: Array<Group> = []
    let queued = 0
    let sendScheduled = false
    // Bounds one script's run (Redis serves nothing else meanwhile).
    const MAX_TAKES = 64
    const sendScheduledGroups = (): void => {
      sendScheduled = false
      sendGroups()
    }
    const sendGroups = (): void => {
      const batch = groups
      const count = queued
      groups = []
      queued = 0
      if (batch.length === 0) return
      if (redis.status !== "ready") {
        const cause = new NotReady(redis.status)
        for (const g of batch) g.done(acquireFallback(g.requests, cause))
        return
      }
      // KEYS (one per request), then ARGV: a fixed now ("": Redis' TIME), the
      // shapes (a limiter's algorithm, limit, window and maxWait: few), and
      // per request its shape (negative: decided only if the one before it
      // was granted) and its cost.
      const keys = new Array<string>(count)
      const shapes: Array<RateLimiter.AcquireRequest> = []
      const perRequest = new Array<string>(count * 2)
      let i = 0
      for (const g of batch) {
        for (let k = 0; k < g.requests.length; k++, i++) {
          const req = g.requests[k]!
          keys[i] = `${prefix}rl:${req.key}`
          let shape = 0
          while (shape < shapes.length && !sameShape(shapes[shape]!, req)) shape++
          if (shape === shapes.length) shapes.push(req)
          perRequest[2 * i] = numberArg(k === 0 ? shape + 1 : -(shape + 1))
          perRequest[2 * i + 1] = numberArg(req.cost)
        }
      }
      const args = keys
      args.push("", numberArg(shapes.length))
      for (const req of shapes) {
        args.push(req.algorithm, numberArg(req.limit), numberArg(req.windowMillis), maxWaitArg(req.maxWaitMillis))
      }
      for (const a of perRequest) args.push(a)
      redis.breakwaterAcquireMany(count, ...args).then((reply) => {
        const back = failing ? markHealthy : undefined
        let at = 0
        for (const g of batch) {
          // Up to the first refusal: the script left the rest of the group untaken.
          const decisions: Array<RateLimiter.Decision> = []
          for (let k = 0; k < g.requests.length; k++) {
            const r = (at + k) * 3
            const d = decisionOf(reply[r], reply[r + 1], reply[r + 2])
            decisions.push(d)
            if (!d.granted) break
          }
          at += g.requests.length
          g.done(back === undefined ? decisions : Effect.as(back, decisions))
        }
      }, (cause: unknown) => {
        for (const g of batch) g.done(acquireFallback(g.requests, cause))
      })
    }
    const unsafeAcquireAsync: NonNullable<Stores["rateLimiter"]["unsafeAcquireAsync"]> = (requests, done) => {
      if (redis.status !== "ready") return done(acquireFallback(requests, new NotReady(redis.status)))
      if (queued > 0 && queued + requests.length > MAX_TAKES) sendGroups()
      groups.push({ requests, done })
      queued += requests.length
      if (queued >= MAX_TAKES) sendGroups()
      else if (!sendScheduled) {
        sendScheduled = true
        setImmediate(sendScheduledGroups)
      }
    }
    const rateLimiter: Stores["rateLimiter"] = {
      acquire: (req) =>
        Effect.async((resume) =>
          unsafeAcquireAsync([req], (decisions) =>
            resume(Effect.isEffect(decisions) ? Effect.map(decisions, (ds) => ds[0]!) : Effect.succeed(decisions[0]!)))
        ),
      unsafeAcquireAsync
    }

    // -- cooldowns

    const cooldownsKey = `${prefix}cooldowns`
    /** A cooldown this replica started; `synced` once Redis has it. */
    interface Started {
      readonly cooldown: Cooldown
      /** When its last write was sent (see `sent`); 0 before. */
      sentSeq: number
      synced: boolean
    }
    // Commands on one connection run in the order they are sent; `sent`
    // numbers them, so a snapshot can tell which writes it includes.
    let sent = 0
    const started = new Map<string, Started>()
    let snapshot = new Map<string, Cooldown>()
    /** Clears not yet written (Redis failed), and recent ones a snapshot in flight may still show. */
    const pendingClears = new Set<string>()
    const recentClears = new Map<string, number>()
    let merged: Map<string, Cooldown> | undefined
    let mergedUntil = 0
    /**
     * Cooldowns heard on the channel, with the order they were heard in:
     * kept until a snapshot asked for after them (which has them, or has
     * seen them cleared) replaces them.
     */
    const heard = new Map<string, { readonly cooldown: Cooldown; readonly seq: number }>()
    let heardSeq = 0
    const cooldownsChannel = `${prefix}cooldowns`

    const writeCooldown = (upstream: string, entry: Started) =>
      Effect.clockWith((clock) =>
        command((c) => {
          entry.sentSeq = ++sent
          return c.breakwaterCooldownStart(
            cooldownsKey,
            upstream,
            numberArg(entry.cooldown.until),
            entry.cooldown.reason,
            numberArg(clock.unsafeCurrentTimeMillis()),
            cooldownsChannel
          )
        })
      ).pipe(Effect.zipRight(
        Effect.sync(() => {
          entry.synced = true
        })
      ))

    const writeClear = (upstream: string) =>
      command((c) => {
        recentClears.set(upstream, ++sent)
        return Promise.all([c.hdel(cooldownsKey, upstream), c.publish(cooldownsChannel, `${upstream}|0|clear`)])
      }).pipe(Effect.zipRight(Effect.sync(() => {
        pendingClears.delete(upstream)
      })))

    const refresh: Effect.Effect<void, unknown> = Effect.gen(function*() {
      // First what this replica could not write while Redis was away.
      for (const upstream of Array.from(pendingClears)) yield* writeClear(upstream)
      for (const [upstream, entry] of Array.from(started)) if (!entry.synced) yield* writeCooldown(upstream, entry)
      let seq = 0
      const heardBefore = heardSeq
      const all = yield* command((c) => {
        seq = ++sent
        return c.hgetall(cooldownsKey)
      })
      const now = yield* Effect.clockWith((clock) => clock.currentTimeMillis)
      const next = new Map<string, Cooldown>()
      for (const [upstream, value] of Object.entries(all)) {
        const cooldown = parseCooldown(value)
        if (cooldown !== undefined && cooldown.until > now) next.set(upstream, cooldown)
      }
      // A clear sent after this snapshot was asked for is not in it yet.
      for (const [upstream, clearSeq] of recentClears) {
        if (clearSeq > seq) next.delete(upstream)
        else recentClears.delete(upstream)
      }
      // Writes this snapshot includes are now Redis's to report (or to have
      // been cleared by another replica).
      for (const [upstream, entry] of started) if (entry.synced && entry.sentSeq < seq) started.delete(upstream)
      snapshot = next
      for (const [upstream, entry] of heard) if (entry.seq <= heardBefore) heard.delete(upstream)
      merged = undefined
    })

    // The channel, on a connection of its own (a subscribed connection
    // can do nothing else); ioredis reconnects and subscribes again by itself.
    const clock = yield* Effect.clock
    const cleared = makeListeners<[upstream: string, now: number]>()
    const onMessage = (message: string): void => {
      const last = message.lastIndexOf("|")
      const middle = last < 0 ? -1 : message.lastIndexOf("|", last - 1)
      if (middle < 0) return
      const upstream = message.slice(0, middle)
      if (message.slice(last + 1) === "clear") {
        heard.delete(upstream)
        snapshot.delete(upstream)
        if (started.get(upstream)?.synced === true) started.delete(upstream)
        merged = undefined
        cleared.emit(upstream, clock.unsafeCurrentTimeMillis())
        return
      }
      const cooldown = parseCooldown(message.slice(middle + 1))
      if (cooldown === undefined || cooldown.until <= clock.unsafeCurrentTimeMillis()) return
      const current = heard.get(upstream)
      if (current !== undefined && current.cooldown.until >= cooldown.until) return
      heard.set(upstream, { cooldown, seq: ++heardSeq })
      merged = undefined
    }
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        const subscriber = redis.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null, commandTimeout: undefined })
        subscriber.on("error", () => {})
        subscriber.on("message", (_channel: string, message: string) => onMessage(message))
        subscriber.subscribe(cooldownsChannel).catch(() => {})
        return subscriber
      }),
      (subscriber) => Effect.sync(() => subscriber.disconnect())
    )

    yield* refresh.pipe(
      Effect.matchEffect({
        onSuccess: () => markHealthy,
        onFailure: (cause) => markFailing("cooldown", cause)
      }),
      Effect.repeat(Schedule.spaced(cooldownRefresh)),
      Effect.interruptible,
      Effect.forkScoped
    )

    /**
     * Called on every request: answered from memory (the snapshot, what was
     * heard on the channel, what this replica started), rebuilt only when
     * something changed or an entry expired. Synchronous, so that the
     * relay's hot path can read it as it reads the in-memory store's.
     */
    const unsafeActive = (now: number): ReadonlyMap<string, Cooldown> => {
      if (merged !== undefined && now < mergedUntil) return merged
      const m = new Map<string, Cooldown>()
      for (const [upstream, c] of snapshot) if (c.until > now) m.set(upstream, c)
      // What was heard, then what this replica started: each kept where it ends later, forgotten once over.
      for (const source of [heard, started]) {
        for (const [upstream, { cooldown: c }] of source) {
          if (c.until <= now) {
            source.delete(upstream)
            continue
          }
          const other = m.get(upstream)
          if (other === undefined || other.until < c.until) m.set(upstream, c)
        }
      }
      let until = Infinity
      for (const c of m.values()) if (c.until < until) until = c.until
      merged = m
      mergedUntil = until
      return m
    }

    const cooldown: Stores["cooldown"] = {
      start: (upstream, next) =>
        Effect.suspend(() => {
          const current = started.get(upstream)
          const entry: Started = {
            cooldown: current !== undefined && current.cooldown.until >= next.until ? current.cooldown : next,
            sentSeq: 0,
            synced: false
          }
          started.set(upstream, entry)
          pendingClears.delete(upstream)
          recentClears.delete(upstream)
          merged = undefined
          // Not synced: the refresh writes it when Redis is back.
          return orFallback("cooldown", writeCooldown(upstream, entry), () => Effect.void)
        }),
      clear: (upstream) =>
        Effect.suspend(() => {
          started.delete(upstream)
          snapshot.delete(upstream)
          merged = undefined
          // Here at once; the other replicas when the channel brings it.
          cleared.emit(upstream, clock.unsafeCurrentTimeMillis())
          return orFallback(
            "cooldown",
            writeClear(upstream),
            () =>
              Effect.sync(() => {
                pendingClears.add(upstream)
              })
          )
        }),
      active: (now) => Effect.sync(() => unsafeActive(now)),
      unsafeActive,
      onClear: cleared.add
    }

    // -- response cache

    // Only for outages: small, so that large bodies cannot pile up in memory.
    const cacheMemory = yield* ResponseCache.makeStoreMemory({ maxEntries: 256 })
    const cache: Stores["cache"] = {
      get: (key) =>
        orFallback(
          "cache",
          Effect.map(command((c) => c.get(`${prefix}cache:${key}`)), Option.fromNullable),
          () => cacheMemory.get(key)
        ),
      set: (key, value, ttl) => {
        if (tooLarge(value, maxCacheEntryBytes)) return Effect.void
        const millis = Duration.toMillis(ttl)
        if (!(millis > 0)) return Effect.void
        const k = `${prefix}cache:${key}`
        return orFallback(
          "cache",
          Effect.asVoid(command((c) =>
            Number.isFinite(millis) ? c.set(k, value, "PX", Math.max(1, Math.ceil(millis))) : c.set(k, value)
          )),
          () => cacheMemory.set(key, value, ttl)
        )
      },
      delete: (key) =>
        Effect.zipRight(
          cacheMemory.delete(key),
          orFallback("cache", Effect.asVoid(command((c) => c.del(`${prefix}cache:${key}`))), () => Effect.void)
        )
    }

    // -- spend

    // Spend added while Redis was away (certainly not written), added to
    // Redis by the account's next successful call; and the last total Redis
    // reported per account, so that a fallback answers shared + local.
    // Reservations made while Redis is away are held in memory (`holds`),
    // against that local view.
    const holdTimeout = Duration.toMillis(Duration.decode(options.holdTimeout ?? Duration.minutes(15)))
    const holds = Spend.makeHolds(holdTimeout)
    const owed = new Map<string, number>()
    const lastShared = new Map<string, number>()
    const local = (id: string) => (lastShared.get(id) ?? 0) + (owed.get(id) ?? 0)
    // A day after the period ends, so that replicas whose clocks differ a little agree.
    const GRACE = 86_400_000
    const keysOf = (a: Spend.Account) => {
      const scope = a.period === undefined ? `:${a.key}` : `@${a.period}:${a.key}`
      return [`${prefix}spend${scope}`, `${prefix}held${scope}`, `${prefix}holds${scope}`] as const
    }
    const expiryOf = (a: Spend.Account) => a.end === undefined ? "" : numberArg(a.end + GRACE)
    let holdSeq = 0
    // Hold ids: unique across replicas (a random prefix per process) and short.
    const holdPrefix = Math.random().toString(36).slice(2, 10)

    /** Adds `usd` (plus what is owed) and releases `member`'s hold, in Redis or, while it is away, here. */
    const spendCall = (
      acc: Spend.Account,
      usd: number,
      member: string
    ): Effect.Effect<number> =>
      Effect.suspend(() => {
        const id = Spend.accountId(acc)
        let taken = 0
        return orFallback(
          "spend",
          Effect.map(
            command((c) => {
              taken = owed.get(id) ?? 0
              owed.delete(id)
              const amount = usd + taken
              const [spent, held, holdsKey] = keysOf(acc)
              return amount === 0 && member === ""
                ? c.get(spent)
                : c.breakwaterSettle(spent, held, holdsKey, member, numberArg(amount), expiryOf(acc))
            }),
            (reply) => {
              const total = reply === null ? 0 : Number(reply)
              lastShared.set(id, total)
              return total + (owed.get(id) ?? 0)
            }
          ),
          (cause) =>
            Effect.sync(() => {
              const amount = usd + taken
              if (notSent(cause)) {
                if (amount !== 0) owed.set(id, (owed.get(id) ?? 0) + amount)
              } else {
                // Sent but unanswered (a timeout): Redis most likely applied it.
                lastShared.set(id, (lastShared.get(id) ?? 0) + amount)
              }
              // A hold Redis still has expires there after holdTimeout.
              return local(id)
            })
        )
      })

    const spend: Stores["spend"] = {
      add: (a, usd) => spendCall(Spend.account(a), usd, ""),
      total: (a) => spendCall(Spend.account(a), 0, ""),
      reserve: (a, usd, budget) =>
        Effect.clockWith((clock) => {
          const acc = Spend.account(a)
          const id = Spend.accountId(acc)
          const now = clock.unsafeCurrentTimeMillis()
          const holdId = `${holdPrefix}${(++holdSeq).toString(36)}`
          const member = `${holdId}|${numberArg(usd)}`
          return orFallback(
            "spend",
            Effect.map(
              command((c) => {
                const [spent, held, holdsKey] = keysOf(acc)
                return c.breakwaterReserve(
                  spent,
                  held,
                  holdsKey,
                  member,
                  numberArg(usd),
                  numberArg(budget),
                  numberArg(now),
                  numberArg(now + holdTimeout),
                  numberArg(holdTimeout + 60_000)
                )
              }),
              ([granted, spentText, heldText]): Spend.Reservation => {
                const shared = Number(spentText)
                lastShared.set(id, shared)
                // Spend owed from an outage counts too (it reaches Redis with the next settle).
                const spent = shared + (owed.get(id) ?? 0)
                const held = Number(heldText) + holds.held(acc, now)
                if (granted !== 1) return { granted: false, spent, held }
                return { granted: true, hold: { account: acc, id: member, usd }, spent, held }
              }
            ),
            // Redis is away: hold here, against what this replica knows.
            () => Effect.sync(() => holds.reserve(acc, usd, budget, local(id), now, true))
          )
        }),
      settle: (hold, usd) => {
        if (hold.local === true) {
          holds.release(hold)
          return spendCall(hold.account, usd, "")
        }
        return spendCall(hold.account, usd, hold.id)
      },
      usage: (a) =>
        Effect.clockWith((clock) => {
          const acc = Spend.account(a)
          const id = Spend.accountId(acc)
          const now = clock.unsafeCurrentTimeMillis()
          const [spentKey, heldKey] = keysOf(acc)
          return orFallback(
            "spend",
            Effect.map(command((c) => c.mget(spentKey, heldKey)), ([spent, held]): Spend.Usage => {
              const shared = spent === null || spent === undefined ? 0 : Number(spent)
              lastShared.set(id, shared)
              return {
                spent: shared + (owed.get(id) ?? 0),
                held: (held === null || held === undefined ? 0 : Number(held)) + holds.held(acc, now)
              }
            }),
            () => Effect.succeed({ spent: local(id), held: holds.held(acc, now) })
          )
        }),
      reset: (a) =>
        Effect.suspend(() => {
          const acc = Spend.account(a)
          const id = Spend.accountId(acc)
          owed.delete(id)
          lastShared.delete(id)
          return orFallback(
            "spend",
            Effect.as(command((c) => c.del(keysOf(acc)[0])), true),
            // Not written: Redis keeps the total.
            () => Effect.succeed(false)
          )
        })
    }

    return { rateLimiter, cooldown, cache, spend }
  })

/** All four stores on one ioredis connection, each falling back to its in-memory twin while Redis is unavailable. */
export const layer = (
  options: Options
): Layer.Layer<RateLimiter.RateLimiterStore | CooldownStore | ResponseCache.ResponseCacheStore | SpendStore> =>
  Layer.scopedContext(
    Effect.map(make(options), (stores) =>
      Context.make(RateLimiter.RateLimiterStore, stores.rateLimiter).pipe(
        Context.add(CooldownStore, stores.cooldown),
        Context.add(ResponseCache.ResponseCacheStore, stores.cache),
        Context.add(SpendStore, stores.spend)
      ))
  )

/** Options from `effect/Config`: `url` (secret), `prefix`, `commandTimeout`, `maxCacheEntryBytes`, `cooldownRefresh`. */
export const config: Config.Config<Options> = Config.all({
  url: Config.redacted("url").pipe(Config.map(Redacted.value)),
  prefix: Config.string("prefix").pipe(Config.withDefault(RedisDefaults.prefix)),
  commandTimeout: Config.duration("commandTimeout").pipe(Config.withDefault(RedisDefaults.commandTimeout)),
  maxCacheEntryBytes: Config.integer("maxCacheEntryBytes").pipe(Config.withDefault(1024 * 1024)),
  cooldownRefresh: Config.duration("cooldownRefresh").pipe(Config.withDefault(Duration.millis(250)))
})

export const layerConfig = (
  config: Config.Config<Options>
): Layer.Layer<
  RateLimiter.RateLimiterStore | CooldownStore | ResponseCache.ResponseCacheStore | SpendStore,
  ConfigError.ConfigError
> => Layer.unwrapEffect(Effect.map(config, layer))
