import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as Cooldown from "../src/Cooldown.js"
import * as Health from "../src/Health.js"
import * as RateLimiter from "../src/RateLimiter.js"
import * as Upstream from "../src/Upstream.js"
import { type Reply, UpstreamClient } from "../src/UpstreamClient.js"
import { UpstreamServerError, UpstreamUnreachable } from "../src/UpstreamError.js"

// ---------------------------------------------------------------------------
// helpers

/** How the scripted client answers a probe of one upstream. */
type Answer = "ok" | "503" | "unreachable" | "hang"

/** A scripted UpstreamClient: answers per upstream, counts calls, may take TestClock time. */
const makeScript = () => {
  const answers = new Map<string, Answer>()
  const calls = new Map<string, number>()
  const paths: Array<string> = []
  let delay: Duration.Duration = Duration.zero
  const reply = (status: number): Reply => ({ status, headers: {}, text: status === 200 ? `{"data":[]}` : "" })
  const client = UpstreamClient.of({
    get: (upstream, path) =>
      Effect.suspend(() => {
        calls.set(upstream.name, (calls.get(upstream.name) ?? 0) + 1)
        paths.push(`${upstream.baseUrl}${path}`)
        const answer = answers.get(upstream.name) ?? "ok"
        const result: Effect.Effect<Reply, UpstreamUnreachable> = answer === "ok"
          ? Effect.succeed(reply(200))
          : answer === "503"
          ? Effect.succeed(reply(503))
          : answer === "unreachable"
          ? Effect.fail(new UpstreamUnreachable({ upstream: upstream.name, reason: "ECONNREFUSED" }))
          : Effect.never
        return Duration.isZero(delay) ? result : Effect.zipRight(Effect.sleep(delay), result)
      }),
    post: () => Effect.die("post is not scripted"),
    postStream: () => Effect.die("postStream is not scripted")
  })
  return {
    layer: Layer.succeed(UpstreamClient, client),
    set: (upstream: string, answer: Answer) => answers.set(upstream, answer),
    setDelay: (d: Duration.DurationInput) => {
      delay = Duration.decode(d)
    },
    calls: (upstream: string) => calls.get(upstream) ?? 0,
    paths
  }
}

type Script = ReturnType<typeof makeScript>

const upstreamConfig = (name: string, breaker?: Upstream.Config["breaker"]): Upstream.Config => ({
  name,
  baseUrl: `https://${name}.example/v1/`,
  apiKey: Redacted.make("k"),
  models: "*",
  breaker
})

/** The environment of a test: the script's client and in-memory stores. */
const env = (script: Script) =>
  Layer.mergeAll(script.layer, RateLimiter.layerStoreMemory, Cooldown.layerStoreMemory)

/** Runs a test body with the script's client and fresh in-memory stores. */
const withEnv = <A, E, R>(
  body: (script: Script) => Effect.Effect<A, E, R>
) =>
  Effect.suspend(() => {
    const script = makeScript()
    return Effect.provide(body(script), env(script))
  })

/**
 * Lets the probe fibers run until they suspend (TestClock.adjust waits for
 * that before moving time); advancing by zero moves no time.
 */
const settle = TestClock.adjust(0)

/** Builds upstreams and a Health over them, and lets the first probes finish. */
const setup = (
  configs: ReadonlyArray<Upstream.Config>,
  options?: Health.Options
) =>
  Effect.gen(function*() {
    const upstreams = yield* Effect.forEach(configs, (c) => Upstream.make(c))
    const health = yield* Health.make(upstreams, options)
    yield* settle
    return { upstreams, health }
  })

const stateOf = (health: Health.Health, name: string) => Effect.map(health.statusOf(name), (s) => s?.state)

const tripBreaker = (upstream: Upstream.Upstream, times: number) =>
  Effect.forEach(
    Array.from({ length: times }),
    () => Effect.exit(upstream.breaker.protect(Effect.fail(new UpstreamServerError({ upstream: upstream.name, status: 500 })))),
    { discard: true }
  )

/** A long interval: only the probe at start-up and explicit `probeAll`s run. */
const manual: Health.Options = { interval: "1 hour" }

// ---------------------------------------------------------------------------

describe("Health", () => {
  describe("probing", () => {
    it.scoped("probes GET {baseUrl}/models at start and then every interval", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          yield* setup([upstreamConfig("a"), upstreamConfig("b")])
          expect(script.calls("a")).toBe(1)
          expect(script.calls("b")).toBe(1)
          expect([...script.paths].sort()).toStrictEqual([
            "https://a.example/v1/models",
            "https://b.example/v1/models"
          ])

          yield* TestClock.adjust("9999 millis")
          expect(script.calls("a")).toBe(1)
          yield* TestClock.adjust("1 millis")
          expect(script.calls("a")).toBe(2)
          expect(script.calls("b")).toBe(2)
          yield* TestClock.adjust("10 seconds")
          expect(script.calls("a")).toBe(3)
          expect(script.calls("b")).toBe(3)
        })
      ))

    it.scoped("honours a custom interval", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          yield* setup([upstreamConfig("a")], { interval: "3 seconds" })
          expect(script.calls("a")).toBe(1)
          yield* TestClock.adjust("9 seconds")
          expect(script.calls("a")).toBe(4)
        })
      ))

    it.scoped("probeAll probes every upstream at once", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          const { health } = yield* setup([upstreamConfig("a"), upstreamConfig("b")], manual)
          yield* health.probeAll
          yield* health.probeAll
          expect(script.calls("a")).toBe(3)
          expect(script.calls("b")).toBe(3)
        })
      ))

    it.scoped("closing the scope stops probing", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          const upstream = yield* Upstream.make(upstreamConfig("a"))
          const scope = yield* Scope.make()
          yield* Scope.extend(Health.make([upstream]), scope)
          yield* settle
          yield* TestClock.adjust("10 seconds")
          expect(script.calls("a")).toBe(2)
          yield* Scope.close(scope, Exit.void)
          yield* TestClock.adjust("1 minute")
          expect(script.calls("a")).toBe(2)
        })
      ))

    it.scoped("closing the scope interrupts a probe in flight", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          script.set("a", "hang")
          const upstream = yield* Upstream.make(upstreamConfig("a"))
          const scope = yield* Scope.make()
          yield* Scope.extend(Health.make([upstream], { timeout: "1 hour" }), scope)
          yield* settle
          expect(script.calls("a")).toBe(1)
          // Does not wait for the hour-long probe timeout.
          yield* Scope.close(scope, Exit.void)
          yield* TestClock.adjust("2 hours")
          expect(script.calls("a")).toBe(1)
        })
      ))

    it.scoped("the layer probes while it lives", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          const upstream = yield* Upstream.make(upstreamConfig("a"))
          const statuses = yield* Effect.scoped(
            Layer.build(Health.layer([upstream])).pipe(
              Effect.flatMap((ctx) =>
                Effect.gen(function*() {
                  yield* settle
                  return yield* Effect.provide(Effect.flatMap(Health.Health, (h) => h.status), ctx)
                })
              )
            )
          )
          expect(statuses.map((s) => [s.upstream, s.state])).toStrictEqual([["a", "healthy"]])
          expect(script.calls("a")).toBe(1)
          yield* TestClock.adjust("1 minute")
          expect(script.calls("a")).toBe(1)
        })
      ))
  })

  describe("states", () => {
    it.scoped("a healthy upstream's status", () =>
      withEnv(() =>
        Effect.gen(function*() {
          yield* TestClock.adjust("1 second")
          const { health } = yield* setup([upstreamConfig("a")])
          expect(yield* health.statusOf("a")).toStrictEqual({
            upstream: "a",
            state: "healthy",
            breaker: "Closed",
            cooldownUntil: undefined,
            cooldownReason: undefined,
            probeLatencyMs: 0,
            lastProbeAt: 1_000,
            lastProbeOk: true,
            consecutiveProbeFailures: 0,
            inFlight: 0,
            requests: 0,
            failures: 0,
            latencyEwmaMs: undefined
          })
          expect(yield* health.statusOf("nope")).toBeUndefined()
        })
      ))

    it.scoped("status lists every upstream in order", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          script.set("b", "503")
          const { health } = yield* setup([upstreamConfig("c"), upstreamConfig("b"), upstreamConfig("a")])
          const all = yield* health.status
          expect(all.map((s) => [s.upstream, s.state])).toStrictEqual([
            ["c", "healthy"],
            ["b", "degraded"],
            ["a", "healthy"]
          ])
        })
      ))

    it.scoped("healthy -> degraded on failed probes -> healthy again", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          const { health } = yield* setup([upstreamConfig("a")])
          expect(yield* stateOf(health, "a")).toBe("healthy")

          script.set("a", "503")
          yield* TestClock.adjust("10 seconds")
          let s = yield* health.statusOf("a")
          expect(s?.state).toBe("degraded")
          expect(s?.lastProbeOk).toBe(false)
          expect(s?.consecutiveProbeFailures).toBe(1)

          script.set("a", "unreachable")
          yield* TestClock.adjust("10 seconds")
          s = yield* health.statusOf("a")
          expect(s?.state).toBe("degraded")
          expect(s?.consecutiveProbeFailures).toBe(2)
          expect(s?.lastProbeAt).toBe(20_000)
          // Probes say nothing to the breaker while it is closed.
          expect(s?.breaker).toBe("Closed")

          script.set("a", "ok")
          yield* TestClock.adjust("10 seconds")
          s = yield* health.statusOf("a")
          expect(s?.state).toBe("healthy")
          expect(s?.lastProbeOk).toBe(true)
          expect(s?.consecutiveProbeFailures).toBe(0)
        })
      ))

    it.scoped("degradedAfter: it takes that many consecutive failed probes", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          script.set("a", "503")
          const { health } = yield* setup([upstreamConfig("a")], { ...manual, degradedAfter: 3 })
          expect(yield* stateOf(health, "a")).toBe("healthy")
          yield* health.probeAll
          expect(yield* stateOf(health, "a")).toBe("healthy")
          yield* health.probeAll
          expect(yield* stateOf(health, "a")).toBe("degraded")
          script.set("a", "ok")
          yield* health.probeAll
          expect(yield* stateOf(health, "a")).toBe("healthy")
        })
      ))

    it.scoped("only a 200 is a passed probe", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          script.set("a", "503")
          script.set("b", "unreachable")
          const { health } = yield* setup([upstreamConfig("a"), upstreamConfig("b"), upstreamConfig("c")])
          expect((yield* health.status).map((s) => s.lastProbeOk)).toStrictEqual([false, false, true])
        })
      ))

    it.scoped("a hanging probe times out and counts as failed", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          script.set("a", "hang")
          const { health } = yield* setup([upstreamConfig("a")])
          // In flight: nothing known yet.
          let s = yield* health.statusOf("a")
          expect(s?.lastProbeOk).toBeUndefined()
          expect(s?.state).toBe("healthy")

          yield* TestClock.adjust("4999 millis")
          expect((yield* health.statusOf("a"))?.lastProbeOk).toBeUndefined()
          yield* TestClock.adjust("1 millis")
          s = yield* health.statusOf("a")
          expect(s?.lastProbeOk).toBe(false)
          expect(s?.lastProbeAt).toBe(5_000)
          expect(s?.consecutiveProbeFailures).toBe(1)
          expect(s?.state).toBe("degraded")
          expect(s?.probeLatencyMs).toBeUndefined()

          // The next probe starts an interval after the timed-out one ended.
          yield* TestClock.adjust("10 seconds")
          expect(script.calls("a")).toBe(2)
        })
      ))

    it.scoped("honours a custom probe timeout", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          script.set("a", "hang")
          const { health } = yield* setup([upstreamConfig("a")], { timeout: "1 second" })
          yield* TestClock.adjust("1 second")
          expect((yield* health.statusOf("a"))?.lastProbeOk).toBe(false)
        })
      ))

    it.scoped("exhausted and cooling-down from cooldowns, healthy again when they pass", () =>
      withEnv(() =>
        Effect.gen(function*() {
          const { health } = yield* setup([upstreamConfig("a"), upstreamConfig("b"), upstreamConfig("c")])
          yield* Cooldown.start("a", "1 minute", "quota-exhausted")
          yield* Cooldown.start("b", "5 seconds", "rate-limited")
          yield* Cooldown.start("c", "5 seconds", "low-headroom")

          const a = yield* health.statusOf("a")
          expect(a?.state).toBe("exhausted")
          expect(a?.cooldownReason).toBe("quota-exhausted")
          expect(a?.cooldownUntil).toBe(60_000)
          const b = yield* health.statusOf("b")
          expect(b?.state).toBe("cooling-down")
          expect(b?.cooldownReason).toBe("rate-limited")
          expect(b?.cooldownUntil).toBe(5_000)
          expect(yield* stateOf(health, "c")).toBe("cooling-down")

          yield* TestClock.adjust("5 seconds")
          expect(yield* stateOf(health, "a")).toBe("exhausted")
          const bAfter = yield* health.statusOf("b")
          expect(bAfter?.state).toBe("healthy")
          expect(bAfter?.cooldownUntil).toBeUndefined()
          expect(bAfter?.cooldownReason).toBeUndefined()
          expect(yield* stateOf(health, "c")).toBe("healthy")

          yield* TestClock.adjust("55 seconds")
          expect(yield* stateOf(health, "a")).toBe("healthy")
        })
      ))

    it.scoped("a cooldown outranks the breaker and failed probes", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          script.set("a", "503")
          const { health, upstreams } = yield* setup([upstreamConfig("a", { failureThreshold: 1 })], manual)
          yield* tripBreaker(upstreams[0]!, 1)
          expect(yield* stateOf(health, "a")).toBe("open")
          yield* Cooldown.start("a", "10 seconds", "rate-limited")
          expect(yield* stateOf(health, "a")).toBe("cooling-down")
          yield* Cooldown.start("a", "1 hour", "quota-exhausted")
          expect(yield* stateOf(health, "a")).toBe("exhausted")
        })
      ))

    it.scoped("open after tripping the breaker, recovering after openDuration", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          script.set("a", "503")
          const { health, upstreams } = yield* setup([
            upstreamConfig("a", { failureThreshold: 3, openDuration: "30 seconds" })
          ])
          const upstream = upstreams[0]!
          yield* tripBreaker(upstream, 2)
          expect((yield* health.statusOf("a"))?.breaker).toBe("Closed")
          expect(yield* stateOf(health, "a")).toBe("degraded")
          yield* tripBreaker(upstream, 1)
          let s = yield* health.statusOf("a")
          expect(s?.state).toBe("open")
          expect(s?.breaker).toBe("Open")

          yield* TestClock.adjust("29 seconds")
          expect(yield* stateOf(health, "a")).toBe("open")
          yield* TestClock.adjust("1 second")
          s = yield* health.statusOf("a")
          expect(s?.state).toBe("recovering")
          expect(s?.breaker).toBe("HalfOpen")
        })
      ))

    it.scoped("open when an operator forces the breaker open", () =>
      withEnv(() =>
        Effect.gen(function*() {
          const { health, upstreams } = yield* setup([upstreamConfig("a")], manual)
          yield* upstreams[0]!.breaker.forceOpen
          yield* health.probeAll
          const s = yield* health.statusOf("a")
          expect(s?.state).toBe("open")
          expect(s?.breaker).toBe("ForcedOpen")
        })
      ))

    it.scoped("reports client traffic from the upstream's stats and bulkhead", () =>
      withEnv(() =>
        Effect.gen(function*() {
          const { health, upstreams } = yield* setup([upstreamConfig("a")], manual)
          const upstream = upstreams[0]!
          Upstream.record(upstream, 0, 40, undefined)
          Upstream.record(upstream, 0, 10, new UpstreamServerError({ upstream: "a", status: 502 }))
          const held = yield* Effect.forkScoped(upstream.bulkhead.run(Effect.never))
          yield* settle
          const s = yield* health.statusOf("a")
          expect(s?.requests).toBe(2)
          expect(s?.failures).toBe(1)
          expect(s?.latencyEwmaMs).toBe(40)
          expect(s?.inFlight).toBe(1)
          yield* Fiber.interrupt(held)
          expect((yield* health.statusOf("a"))?.inFlight).toBe(0)
        })
      ))
  })

  describe("breaker", () => {
    it.scoped("a passed probe moves an open breaker to half-open before openDuration", () =>
      withEnv(() =>
        Effect.gen(function*() {
          const { health, upstreams } = yield* setup(
            [upstreamConfig("a", { failureThreshold: 2, openDuration: "30 seconds" })],
            manual
          )
          const upstream = upstreams[0]!
          yield* tripBreaker(upstream, 2)
          expect(yield* upstream.breaker.state).toBe("Open")
          yield* TestClock.adjust("1 second")
          yield* health.probeAll
          expect(yield* upstream.breaker.state).toBe("HalfOpen")
          expect(yield* stateOf(health, "a")).toBe("recovering")
        })
      ))

    it.scoped("a background probe does it too, at its interval", () =>
      withEnv(() =>
        Effect.gen(function*() {
          const { health, upstreams } = yield* setup(
            [upstreamConfig("a", { failureThreshold: 1, openDuration: "1 minute" })],
            { interval: "5 seconds" }
          )
          const upstream = upstreams[0]!
          yield* tripBreaker(upstream, 1)
          yield* TestClock.adjust("4 seconds")
          expect(yield* upstream.breaker.state).toBe("Open")
          yield* TestClock.adjust("1 second")
          expect(yield* upstream.breaker.state).toBe("HalfOpen")
          expect(yield* stateOf(health, "a")).toBe("recovering")
        })
      ))

    it.scoped("a passed probe does not close a half-open breaker: traffic must pass the trials", () =>
      withEnv(() =>
        Effect.gen(function*() {
          const { health, upstreams } = yield* setup(
            [upstreamConfig("a", { failureThreshold: 1, successThreshold: 2 })],
            manual
          )
          const upstream = upstreams[0]!
          yield* tripBreaker(upstream, 1)
          yield* health.probeAll
          yield* health.probeAll
          yield* health.probeAll
          expect(yield* upstream.breaker.state).toBe("HalfOpen")
          yield* upstream.breaker.protect(Effect.void)
          yield* upstream.breaker.protect(Effect.void)
          expect(yield* upstream.breaker.state).toBe("Closed")
          expect(yield* stateOf(health, "a")).toBe("healthy")
        })
      ))

    it.scoped("a failed probe leaves an open breaker open", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          const { health, upstreams } = yield* setup(
            [upstreamConfig("a", { failureThreshold: 2, openDuration: "30 seconds" })],
            manual
          )
          const upstream = upstreams[0]!
          yield* tripBreaker(upstream, 2)
          for (const answer of ["503", "unreachable"] as const) {
            script.set("a", answer)
            yield* health.probeAll
            expect(yield* upstream.breaker.state).toBe("Open")
          }
          script.set("a", "hang")
          const fiber = yield* Effect.fork(health.probeAll)
          yield* TestClock.adjust("5 seconds")
          yield* fiber.await
          expect(yield* upstream.breaker.state).toBe("Open")
          expect((yield* upstream.breaker.snapshot).openUntil).toBe(30_000)
          expect(yield* stateOf(health, "a")).toBe("open")
        })
      ))

    it.scoped("probes never touch stats, the breaker's counts in Closed, or the bulkhead", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          const { health, upstreams } = yield* setup(
            [upstreamConfig("a", { failureThreshold: 3 })],
            { interval: "1 second" }
          )
          const upstream = upstreams[0]!
          // One failure through the breaker: a success would reset it, a failure raise it.
          yield* tripBreaker(upstream, 1)
          expect((yield* upstream.breaker.snapshot).consecutiveFailures).toBe(1)
          const statsBefore = { ...upstream.stats }

          const breakerCounts = Effect.map(upstream.breaker.snapshot, (s) => [s.state, s.consecutiveFailures])

          script.set("a", "unreachable")
          yield* TestClock.adjust("5 seconds") // failing probes (would trip it at 3)
          expect(yield* breakerCounts).toStrictEqual(["Closed", 1])
          script.set("a", "ok")
          yield* TestClock.adjust("5 seconds") // passing probes (would reset it)
          expect(yield* breakerCounts).toStrictEqual(["Closed", 1])
          script.set("a", "503")
          yield* health.probeAll

          expect(script.calls("a")).toBe(12)
          expect(upstream.stats).toStrictEqual(statsBefore)
          expect(upstream.stats.requests).toBe(0)
          const snap = yield* upstream.breaker.snapshot
          expect(snap.state).toBe("Closed")
          expect(snap.consecutiveFailures).toBe(1)
          expect((yield* upstream.bulkhead.stats).active).toBe(0)
        })
      ))
  })

  describe("probe latency", () => {
    it.scoped("records an EWMA of successful probes' latency, on TestClock time", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          script.setDelay("100 millis")
          const { health } = yield* setup([upstreamConfig("a")])
          expect((yield* health.statusOf("a"))?.probeLatencyMs).toBeUndefined()
          yield* TestClock.adjust("100 millis")
          let s = yield* health.statusOf("a")
          expect(s?.probeLatencyMs).toBe(100)
          expect(s?.lastProbeAt).toBe(100)

          // Spaced: the next probe starts 10 s after this one ended.
          script.setDelay("200 millis")
          yield* TestClock.adjust("10 seconds")
          expect(script.calls("a")).toBe(2)
          yield* TestClock.adjust("200 millis")
          s = yield* health.statusOf("a")
          expect(s?.probeLatencyMs).toBeCloseTo(120) // 100 + 0.2 * (200 - 100)
          expect(s?.lastProbeAt).toBe(10_300)

          // A failed probe leaves the average alone.
          script.set("a", "503")
          yield* TestClock.adjust("10200 millis")
          s = yield* health.statusOf("a")
          expect(s?.lastProbeOk).toBe(false)
          expect(s?.probeLatencyMs).toBeCloseTo(120)
        })
      ))
  })

  describe("metrics", () => {
    it.scoped("breakwater_upstream_healthy is 1 when healthy, 0 otherwise, after each probe", () =>
      withEnv((script) =>
        Effect.gen(function*() {
          const gauge = (name: string) =>
            Effect.map(Metric.value(Metric.tagged(Health.healthyGauge, "upstream", name)), (s) => s.value)
          script.set("metric-down", "503")
          const { health } = yield* setup([upstreamConfig("metric-up"), upstreamConfig("metric-down")], manual)
          expect(yield* gauge("metric-up")).toBe(1)
          expect(yield* gauge("metric-down")).toBe(0)

          script.set("metric-up", "unreachable")
          script.set("metric-down", "ok")
          yield* health.probeAll
          expect(yield* gauge("metric-up")).toBe(0)
          expect(yield* gauge("metric-down")).toBe(1)

          yield* Cooldown.start("metric-down", "1 minute", "rate-limited")
          yield* health.probeAll
          expect(yield* gauge("metric-down")).toBe(0)
        })
      ))
  })

  describe("the upstream's key", () => {
    const keyScript = () => {
      let status = 401
      const client = UpstreamClient.of({
        get: () => Effect.sync((): Reply => ({ status, headers: {}, text: status === 200 ? `{"data":[]}` : "" })),
        post: () => Effect.die("post is not scripted"),
        postStream: () => Effect.die("postStream is not scripted")
      })
      return { layer: Layer.succeed(UpstreamClient, client), set: (s: number) => (status = s) }
    }

    it.scoped("a 401/403 probe starts an auth-failed cooldown (state auth-failed); a 200 probe ends it", () => {
      const key = keyScript()
      return Effect.gen(function*() {
        const { health } = yield* setup([upstreamConfig("a")], { interval: "10 seconds", authFailedCooldown: "1 hour" })
        const store = yield* Cooldown.CooldownStore
        expect((yield* store.active(0)).get("a")).toEqual({ until: 3_600_000, reason: "auth-failed" })
        expect(yield* stateOf(health, "a")).toBe("auth-failed")
        key.set(403)
        yield* TestClock.adjust("10 seconds")
        // Kept up while the key is refused.
        expect((yield* store.active(10_000)).get("a")).toEqual({ until: 3_610_000, reason: "auth-failed" })
        key.set(200)
        yield* TestClock.adjust("10 seconds")
        expect((yield* store.active(20_000)).get("a")).toBeUndefined()
        expect(yield* stateOf(health, "a")).toBe("healthy")
      }).pipe(Effect.provide(Layer.mergeAll(key.layer, RateLimiter.layerStoreMemory, Cooldown.layerStoreMemory)))
    })

    it.scoped("a successful probe leaves other cooldowns alone", () => {
      const key = keyScript()
      key.set(200)
      return Effect.gen(function*() {
        const { health } = yield* setup([upstreamConfig("a")], { interval: "10 seconds" })
        yield* Cooldown.start("a", "1 minute", "quota-exhausted")
        yield* TestClock.adjust("10 seconds")
        expect(yield* stateOf(health, "a")).toBe("exhausted")
      }).pipe(Effect.provide(Layer.mergeAll(key.layer, RateLimiter.layerStoreMemory, Cooldown.layerStoreMemory)))
    })
  })

  describe("reported models", () => {
    it("parseModelList keeps valid ids (bounded, deduplicated) and refuses what is not a list", () => {
      const list = (data: unknown) => JSON.stringify({ object: "list", data })
      expect(Health.parseModelList(list([
        { id: "gpt-4.1", object: "model", created: 1700000000, owned_by: "openai" },
        { id: "gpt-4.1" },
        { id: "" },
        { id: 5 },
        "junk",
        { id: "x".repeat(257) },
        { id: "o3", created: "yesterday", owned_by: 7 }
      ]))).toEqual([
        { id: "gpt-4.1", created: 1700000000, owned_by: "openai" },
        { id: "o3", created: 0, owned_by: "breakwater" }
      ])
      expect(Health.parseModelList(list(Array.from({ length: 5000 }, (_, i) => ({ id: `m${i}` })))))
        .toHaveLength(Health.MAX_REPORTED_MODELS)
      expect(Health.parseModelList("not json")).toBeUndefined()
      expect(Health.parseModelList(`{"data":"nope"}`)).toBeUndefined()
      expect(Health.parseModelList(`[]`)).toBeUndefined()
    })

    it.scoped("each upstream's last good list; a failed or unreadable probe keeps it", () => {
      let text = JSON.stringify({ data: [{ id: "m1" }] })
      let status = 200
      const client = UpstreamClient.of({
        get: () => Effect.sync((): Reply => ({ status, headers: {}, text })),
        post: () => Effect.die("post is not scripted"),
        postStream: () => Effect.die("postStream is not scripted")
      })
      return Effect.gen(function*() {
        const { health } = yield* setup([upstreamConfig("a")], manual)
        const ids = Effect.map(health.models, (m) => m.get("a")?.map((x) => x.id))
        expect(yield* ids).toEqual(["m1"])
        text = JSON.stringify({ data: [{ id: "m1" }, { id: "m2" }] })
        yield* health.probeAll
        expect(yield* ids).toEqual(["m1", "m2"])
        status = 503
        yield* health.probeAll
        expect(yield* ids).toEqual(["m1", "m2"])
        status = 200
        text = "<html>maintenance</html>"
        yield* health.probeAll
        expect(yield* ids).toEqual(["m1", "m2"])
      }).pipe(Effect.provide(Layer.mergeAll(Layer.succeed(UpstreamClient, client), RateLimiter.layerStoreMemory, Cooldown.layerStoreMemory)))
    })
  })

  describe("deriveState", () => {
    it("first match wins", () => {
      const quota: Cooldown.Cooldown = { until: 1, reason: "quota-exhausted" }
      const limited: Cooldown.Cooldown = { until: 1, reason: "rate-limited" }
      expect(Health.deriveState(quota, "Open", 9, 1)).toBe("exhausted")
      expect(Health.deriveState(limited, "Open", 9, 1)).toBe("cooling-down")
      expect(Health.deriveState({ until: 1, reason: "auth-failed" }, "Closed", 0, 1)).toBe("auth-failed")
      expect(Health.deriveState(undefined, "Open", 9, 1)).toBe("open")
      expect(Health.deriveState(undefined, "ForcedOpen", 0, 1)).toBe("open")
      expect(Health.deriveState(undefined, "HalfOpen", 9, 1)).toBe("recovering")
      expect(Health.deriveState(undefined, "Closed", 1, 1)).toBe("degraded")
      expect(Health.deriveState(undefined, "Disabled", 1, 2)).toBe("healthy")
      expect(Health.deriveState(undefined, "Closed", 0, 1)).toBe("healthy")
    })
  })
})
