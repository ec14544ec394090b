/**
 * Pacing over real HTTP on 127.0.0.1 (issue 15): one upstream with a quota
 * of 2 requests a second (the fake's `requestQuota`: x-ratelimit headers,
 * 429 with `Retry-After: 1` beyond it) and one refusing connections (a port
 * with nothing listening). Eight requests at concurrency 4, each with a
 * 60 s deadline, all get an answer: those that find the quota spent wait
 * in the upstream's queue until its window allows, instead of failing;
 * the dead upstream is taken out at its first refusal; and the quota
 * upstream sees no request beyond its limit once it has announced it.
 *
 * Real time: about 3-4 s.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as net from "node:net"
import * as Cooldown from "../../src/Cooldown.js"
import * as Pricing from "../../src/Pricing.js"
import * as RateLimiter from "../../src/RateLimiter.js"
import * as Relay from "../../src/Relay.js"
import * as ResponseCache from "../../src/ResponseCache.js"
import type * as Upstream from "../../src/Upstream.js"
import * as UpstreamClient from "../../src/UpstreamClient.js"
import * as Fake from "../../src/testing/FakeUpstream.js"

const deps = (calls: Array<Call>) =>
  Layer.mergeAll(
    RateLimiter.layerStoreMemory,
    Cooldown.layerStoreMemory,
    recording(calls),
    Pricing.layer(),
    ResponseCache.layerMemory()
  )

interface Call {
  readonly upstream: string
  /** performance.now() when the relay sent it, and when its answer (or failure) came back. */
  readonly sentAt: number
  readonly endedAt: number
  readonly status: number | undefined
  /** Whether the answer carried the upstream's limit (`x-ratelimit-limit-requests`). */
  readonly announced: boolean
}

/** The HTTP client over undici, recording every call the relay makes (the relay's own view of the upstreams). */
const recording = (calls: Array<Call>) =>
  Layer.effect(
    UpstreamClient.UpstreamClient,
    Effect.map(UpstreamClient.UpstreamClient, (inner): UpstreamClient.UpstreamClient => ({
      ...inner,
      unsafePost: (u, path, body, headers, done) => {
        const sentAt = performance.now()
        return inner.unsafePost!(u, path, body, headers, (error, reply) => {
          calls.push({
            upstream: u.name,
            sentAt,
            endedAt: performance.now(),
            status: reply?.status,
            announced: reply?.headers["x-ratelimit-limit-requests"] !== undefined
          })
          done(error, reply)
        })
      }
    }))
  ).pipe(Layer.provide(UpstreamClient.layerUndici))

/** A port on 127.0.0.1 with nothing listening (bound, then closed). */
const deadPort = Effect.promise(() =>
  new Promise<number>((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as net.AddressInfo).port
      server.close(() => resolve(port))
    })
  })
)

const upstream = (name: string, baseUrl: string, priority: number): Upstream.Config => ({
  name,
  baseUrl,
  apiKey: Redacted.make(`sk-${name}`),
  models: "*",
  priority
})

/** The HTTP status the server gives each outcome. */
const statusOf = (error: Relay.RelayError): number => {
  switch (error._tag) {
    case "NoUpstreamAvailable":
      return 503
    case "DeadlineExceeded":
      return 504
    case "UnknownModel":
      return 404
    case "UpstreamRejected":
      return error.status
    default:
      return 502
  }
}

describe("pacing: the last upstream is rate limited", () => {
  it.scopedLive("8 requests at concurrency 4 against a 2 req/s quota and a dead upstream: 8 x 200, no 429 once the limit is known", () =>
    Effect.gen(function*() {
      // A little latency, so that the four first requests are all in flight
      // before the upstream has said anything about its quota.
      const quota = yield* Fake.make({ name: "quota", faults: { requestQuota: { requests: 2 }, latencyMs: 20 } })
      const port = yield* deadPort
      const options: Relay.Options = {
        upstreams: [upstream("quota", quota.url, 1), upstream("dead", `http://127.0.0.1:${port}/v1`, 2)],
        requestTimeout: "60 seconds",
        cacheMode: "none"
      }
      const calls: Array<Call> = []
      const relay = yield* Relay.make(options).pipe(Effect.provide(yield* Layer.build(deps(calls))))
      const started = performance.now()
      const outcomes = yield* Effect.forEach(
        Array.from({ length: 8 }, (_, i) => i),
        (i) =>
          Effect.either(relay.chat({ model: "gpt-4.1", messages: [{ role: "user", content: `question ${i}` }] })),
        { concurrency: 4 }
      )
      const elapsed = performance.now() - started
      const statuses = outcomes.map((o) => o._tag === "Right" ? 200 : statusOf(o.left))
      const deadTries = outcomes.map((o) =>
        (o._tag === "Right" ? o.right.metadata.failures : o.left._tag === "AllUpstreamsFailed" || o.left._tag === "NoUpstreamAvailable" ? o.left.failures.map((f) => `${f.upstream}: ${f.reason}`) : [])
          .filter((f) => f.startsWith("dead:") && f.includes("connection failed")).length
      )
      const counters = quota.counters()
      // When the relay first heard the limit, and the 429s for calls it sent after that.
      const known = Math.min(...calls.filter((c) => c.upstream === "quota" && c.announced).map((c) => c.endedAt))
      const late429 = calls.filter((c) => c.upstream === "quota" && c.status === 429 && c.sentAt >= known).length
      const deadCalls = calls.filter((c) => c.upstream === "dead").length
      console.log(
        `pacing case: statuses ${JSON.stringify(statuses)} in ${Math.round(elapsed)} ms; ` +
          `dead upstream tried ${deadCalls} times (per request ${JSON.stringify(deadTries)}); ` +
          `quota upstream: ${counters.chat} calls, ${counters.quotaRefusedAt.length} x 429, ${late429} sent after the relay knew its limit`
      )
      expect(statuses).toEqual([200, 200, 200, 200, 200, 200, 200, 200])
      // Never twice within one request, and never again once it has refused
      // (the calls made before, concurrently, could not know).
      for (const n of deadTries) expect(n).toBeLessThanOrEqual(1)
      const refusedAt = Math.min(...calls.filter((c) => c.upstream === "dead").map((c) => c.endedAt))
      expect(calls.filter((c) => c.upstream === "dead" && c.sentAt > refusedAt)).toEqual([])
      expect(late429).toBe(0)
      // 8 calls at 2 a second: the last window opens after ~3 s.
      expect(elapsed).toBeGreaterThan(2_500)
      expect(elapsed).toBeLessThan(6_000)
    }), 20_000)
})
