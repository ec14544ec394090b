/**
 * The server's fast path with Redis stores (issue 13): a key whose limits
 * are a shared counter in Redis is admitted by one script call, answered
 * without a fiber (Http.Handler.fast, Gateway.admitLater), and refused with
 * the general path's 429 and Retry-After; replicas share the counter, so no
 * more than the limit is admitted across them; while Redis is away the
 * requests are admitted from memory, as the general path admits them.
 *
 * Three servers in this process on one real redis-server, in front of the
 * same fake upstream: two replicas as shipped, one with `fastPath: false`.
 * Skipped, with the reason printed, when redis-server is not on the PATH.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { beforeAll, describe, expect, it } from "vitest"
import * as RedisServer from "../../core/test/support/redisServer.js"
import { lineOf, openAIError, testBed, type TestServer } from "./helpers/e2e.js"

if (!RedisServer.available) console.warn("skipping the fast path's Redis tests: redis-server not on PATH")

const TEAM_KEY = "gw-key-REDIS-TEAM-1"
const SHARED_KEY = "gw-key-REDIS-SHARED-2"

const { fake, serve } = testBed()

let redis: RedisServer.RedisServer
let upstream: FakeUpstream.FakeUpstream
let replicaA: TestServer
let replicaB: TestServer
let general: TestServer

const yamlOf = (url: string, upstreamUrl: string) => `
keys:
  - { name: team, key: "${TEAM_KEY}", requestsPerMinute: 1000 }
  - { name: shared, key: "${SHARED_KEY}", requestsPerMinute: 4 }
upstreams:
  - { name: primary, baseUrl: "${upstreamUrl}", apiKey: sk-up-1, models: [gpt-4.1], timeout: 5s }
cache: { enabled: false }
# A loaded machine can take more than the default 50 ms: a fallback to memory would take the general path.
store: { kind: redis, url: "${url}", prefix: "fastpath-redis-${process.pid}:", commandTimeout: 5s }
`

interface Answer {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: string
}

const CHAT = { model: "gpt-4.1", messages: [{ role: "user", content: "hello fast path on Redis" }], max_tokens: 20 }

const post = async (server: TestServer, key: string, requestId: string): Promise<Answer> => {
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}`, "x-request-id": requestId },
    body: JSON.stringify(CHAT)
  })
  return { status: res.status, headers: Object.fromEntries(res.headers.entries()), body: await res.text() }
}

/** What may differ between two answers to the same request: the time, ids, latency. */
const comparable = (a: Answer) => {
  const { date: _d, "x-request-id": _r, "x-breakwater-latency-ms": _l, ...headers } = a.headers
  const parsed = JSON.parse(a.body) as Record<string, unknown>
  delete parsed["id"]
  delete parsed["created"]
  return { status: a.status, headers, body: parsed }
}

const comparableLine = (line: Record<string, unknown>) => {
  const { time: _t, requestId: _r, latencyMs: _l, ...rest } = line
  return rest
}

/** A Prometheus sample of `name` with these labels (0 when absent); the servers share this process's metrics. */
const sample = async (server: TestServer, name: string, labels: ReadonlyArray<string>): Promise<number> => {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && labels.every((x) => l.includes(x)))
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(" ") + 1))
}

const answered = () => replicaA.running.fastPath().answered + replicaB.running.fastPath().answered

describe.skipIf(!RedisServer.available)("the fast path with Redis stores", { timeout: 30_000 }, () => {
  beforeAll(async () => {
    redis = await RedisServer.start()
    upstream = await fake("primary")
    const yaml = yamlOf(redis.url, upstream.url)
    replicaA = await serve(yaml)
    replicaB = await serve(yaml)
    general = await serve(yaml, { fastPath: false })
    return () => redis.stop()
  }, 20_000)

  it("a key whose limit is a counter in Redis is answered without a fiber, as the general path answers it", async () => {
    const before = replicaA.running.fastPath().answered
    const a = await post(replicaA, TEAM_KEY, "team-fast")
    const b = await post(general, TEAM_KEY, "team-general")
    expect(a.status).toBe(200)
    expect(replicaA.running.fastPath().answered).toBe(before + 1)
    expect(general.running.fastPath().answered).toBe(0)
    expect(comparable(a)).toEqual(comparable(b))
    const lineA = await lineOf("team-fast")
    expect(lineA["key"]).toBe("team")
    expect(lineA["status"]).toBe(200)
    expect(comparableLine(lineA)).toEqual(comparableLine(await lineOf("team-general")))
  })

  it("two replicas share one counter: 4 a minute admitted in all, then the general path's 429 with Retry-After", async () => {
    const before = answered()
    const statuses: Array<number> = []
    const refusals: Array<Answer> = []
    for (let i = 0; i < 6; i++) {
      const a = await post(i % 2 === 0 ? replicaA : replicaB, SHARED_KEY, `shared-${i}`)
      statuses.push(a.status)
      if (a.status === 429) refusals.push(a)
    }
    expect(statuses).toEqual([200, 200, 200, 200, 429, 429])
    // The four admitted were answered by the fast path of either replica.
    expect(answered()).toBe(before + 4)
    // The server without the fast path sees the same counter, and refuses as they do.
    const viaGeneral = await post(general, SHARED_KEY, "shared-general")
    expect(viaGeneral.status).toBe(429)
    for (const r of refusals) {
      const e = openAIError(r.body)
      const g = openAIError(viaGeneral.body)
      expect(e.code).toBe("rate_limit_exceeded")
      expect(e.type).toBe(g.type)
      expect(e.message).toMatch(/^Rate limit reached for key 'shared' \(requests per minute\)\. Retry after \d+s\.$/)
      const retryAfter = Number(r.headers["retry-after"])
      expect(retryAfter).toBeGreaterThan(50)
      expect(retryAfter).toBeLessThanOrEqual(60)
      expect(Math.abs(retryAfter - Number(viaGeneral.headers["retry-after"]))).toBeLessThanOrEqual(1)
    }
    const line = await lineOf("shared-4")
    expect(line["status"]).toBe(429)
    expect(line["key"]).toBe("shared")
    expect(line["upstream"]).toBeNull()
  })

  it("Redis away: requests are admitted from memory (counted as fallbacks), then shared again once it is back", async () => {
    const fallbacks = () => sample(replicaA, "breakwater_store_fallbacks_total", [`store="rate-limiter"`])
    const before = await fallbacks()
    const served = upstream.counters().requests
    await redis.stop()
    for (let i = 0; i < 3; i++) {
      const a = await post(replicaA, TEAM_KEY, `away-${i}`)
      expect(a.status).toBe(200)
    }
    expect(upstream.counters().requests).toBe(served + 3)
    expect(await fallbacks()).toBeGreaterThanOrEqual(before + 3)
    await redis.restart()
    // ioredis reconnects by itself; then the fast path takes the key again.
    const fastBefore = replicaA.running.fastPath().answered
    const deadline = Date.now() + 10_000
    let resumed = false
    for (let i = 0; !resumed && Date.now() < deadline; i++) {
      const a = await post(replicaA, TEAM_KEY, `back-${i}`)
      expect(a.status).toBe(200)
      const f = await fallbacks()
      const next = await post(replicaA, TEAM_KEY, `back-check-${i}`)
      expect(next.status).toBe(200)
      resumed = (await fallbacks()) === f && replicaA.running.fastPath().answered > fastBefore
      if (!resumed) await new Promise((r) => setTimeout(r, 100))
    }
    expect(resumed).toBe(true)
  })
})
