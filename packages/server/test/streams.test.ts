/**
 * Streams over real HTTP, end to end (issue 11, points 2, 4, 8 and 19): the
 * real server in-process, fake upstreams on 127.0.0.1, raw HTTP clients that
 * can hang up. Checks time limits and releases, what streams cost, that their
 * failures count against the upstream, and the log lines and metrics they
 * leave.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Scope from "effect/Scope"
import * as http from "node:http"
import { beforeAll, describe, expect, it } from "vitest"
import * as Http from "../src/Http.js"
import * as Server from "../src/Server.js"
import { captured, configOf, testBed, type TestServer } from "./helpers/e2e.js"

const KEY = "gw-key-STREAMS-SECRET-1"
const BUDGET_KEY = "gw-key-STREAMS-BUDGET-2"
const ADMIN_KEY = "admin-key-STREAMS-SECRET-3"

const { fake, serve } = testBed()

const keysYaml = `
server: { adminKey: "${ADMIN_KEY}" }
keys:
  - { name: streamer, key: "${KEY}" }
  - { name: thrifty, key: "${BUDGET_KEY}", budgetUsd: 0.0001 }
pricing: { gpt-4.1: { input: 2.00, output: 8.00 } }
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
`

const upstreamYaml = (f: FakeUpstream.FakeUpstream, extra = "") =>
  `  - { name: ${f.name}, baseUrl: "${f.url}", apiKey: "sk-upstream-${f.name}", models: [gpt-4.1]${extra} }`

let seq = 0
const nextId = (label: string) => `${label}-${++seq}-${Date.now()}`

const chatBody = (stream: boolean, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "stream me something" }], ...(stream ? { stream: true } : {}), ...extra })

const chat = (server: TestServer, body: string, requestId: string, key = KEY) =>
  fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}`, "x-request-id": requestId },
    body
  })

/** A raw request whose connection is destroyed after `afterMs`, or once `until` holds for what was received. */
const hangUp = (
  server: TestServer,
  body: string,
  requestId: string,
  options: { readonly afterMs?: number; readonly until?: (received: string) => boolean }
): Promise<string> =>
  new Promise((resolve) => {
    let received = ""
    const req = http.request(`${server.url}/v1/chat/completions`, {
      method: "POST",
      agent: false,
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${KEY}`,
        "x-request-id": requestId,
        "content-length": Buffer.byteLength(body)
      }
    }, (res) => {
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => {
        received += chunk
        if (options.until?.(received)) {
          req.destroy()
          resolve(received)
        }
      })
      res.on("error", () => {})
    })
    req.on("error", () => {})
    req.end(body)
    if (options.afterMs !== undefined) {
      setTimeout(() => {
        req.destroy()
        resolve(received)
      }, options.afterMs)
    }
  })

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Polls `cond` every 20 ms up to `ms`; the time it took, or throws. */
const within = async (label: string, ms: number, cond: () => boolean | Promise<boolean>): Promise<number> => {
  const t0 = performance.now()
  for (;;) {
    if (await cond()) return performance.now() - t0
    if (performance.now() - t0 > ms) throw new Error(`not within ${ms} ms: ${label}`)
    await sleep(20)
  }
}

/** The server's log lines (parsed) for one request id. */
const linesFor = (requestId: string): Array<Record<string, unknown>> =>
  captured.logs.filter((l) => l.includes(`"requestId":"${requestId}"`)).map((l) => JSON.parse(l) as Record<string, unknown>)

const logLine = async (requestId: string, ms = 3_000) => {
  await within(`a log line for ${requestId}`, ms, () => linesFor(requestId).length > 0)
  return linesFor(requestId)[0]!
}

const adminUpstream = async (server: TestServer, name: string) => {
  const res = await fetch(`${server.url}/admin/upstreams`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
  const body = (await res.json()) as { data: Array<Record<string, unknown>> }
  return body.data.find((u) => u["name"] === name)!
}

const metric = async (server: TestServer, name: string, labels: Record<string, string>): Promise<number> => {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  let sum = 0
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) sum += Number(line.slice(line.lastIndexOf(" ") + 1))
  }
  return sum
}

/** The `data:` payloads of an SSE body. */
const dataOf = (text: string) => text.split("\n\n").filter((e) => e.startsWith("data: ")).map((e) => e.slice(6))

// ---------------------------------------------------------------------------

describe("stream time limits and releases (point 2)", { timeout: 20_000 }, () => {
  it("a stream to an upstream that never answers fails over within the attempt timeout (1 s)", async () => {
    const silent = await fake("silent-a", { hang: 1 })
    const healthy = await fake("healthy-a")
    const server = await serve(`${keysYaml}
upstreams:
${upstreamYaml(silent, ", priority: 1, timeout: 1s")}
${upstreamYaml(healthy, ", priority: 2")}
`)
    const t0 = performance.now()
    const res = await chat(server, chatBody(true), nextId("failover"))
    const text = await res.text()
    const took = performance.now() - t0
    expect(res.status).toBe(200)
    expect(res.headers.get("x-breakwater-upstream")).toBe("healthy-a")
    expect(res.headers.get("x-breakwater-attempts")).toBe("2")
    expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true)
    expect(took).toBeGreaterThanOrEqual(950)
    expect(took).toBeLessThan(3_000)
    // The silent upstream's connection was closed when its attempt ended.
    await within("the silent upstream's socket closed", 1_000, () => silent.counters().inFlight === 0)
    expect((await adminUpstream(server, "silent-a"))["inFlight"]).toBe(0)
  })

  it("a caller that leaves while the upstream has not answered releases the bulkhead slot and the upstream socket at once", async () => {
    const silent = await fake("silent-b", { hang: 1 })
    const server = await serve(`${keysYaml}
upstreams:
${upstreamYaml(silent, ", timeout: 30s")}
`)
    const id = nextId("leave-early")
    const leaving = hangUp(server, chatBody(true), id, { afterMs: 300 })
    await within("the request reached the upstream", 2_000, () => silent.counters().inFlight === 1)
    expect((await adminUpstream(server, "silent-b"))["inFlight"]).toBe(1)
    await leaving
    const released = await within("the upstream socket closed", 1_000, () => silent.counters().inFlight === 0)
    expect(released).toBeLessThan(1_000)
    expect((await adminUpstream(server, "silent-b"))["inFlight"]).toBe(0)
    const line = await logLine(id)
    expect(line["status"]).toBe(499)
  })

  it("a caller that leaves a stalled stream releases the bulkhead slot and the upstream socket at once", async () => {
    const stalls = await fake("stalls-c", { streamStallAfter: 2 })
    const server = await serve(`${keysYaml}
upstreams:
${upstreamYaml(stalls)}
`)
    const id = nextId("leave-stalled")
    await hangUp(server, chatBody(true), id, { until: (r) => dataOf(r).length >= 2 })
    await within("the upstream socket closed", 1_000, () => stalls.counters().inFlight === 0)
    expect((await adminUpstream(server, "stalls-c"))["inFlight"]).toBe(0)
    const line = await logLine(id)
    expect(line).toMatchObject({ status: 499, outcome: "abandoned", upstream: "stalls-c" })
    // Leaving says nothing about the upstream.
    expect((await adminUpstream(server, "stalls-c"))["failures"]).toBe(0)
  })

  it("a stream silent for routing.streamIdleTimeout after its first event ends with an error event and counts as a failure", async () => {
    const stalls = await fake("stalls-d", { streamStallAfter: 2 })
    const server = await serve(`${keysYaml}
routing: { streamIdleTimeout: 500ms }
upstreams:
${upstreamYaml(stalls)}
`)
    const id = nextId("idle")
    const t0 = performance.now()
    const res = await chat(server, chatBody(true), id)
    const text = await res.text()
    const took = performance.now() - t0
    expect(took).toBeGreaterThanOrEqual(450)
    expect(took).toBeLessThan(2_500)
    const datas = dataOf(text)
    expect(datas).toHaveLength(3)
    const error = JSON.parse(datas[2]!) as { error: { message: string; type: string } }
    expect(error.error.message).toBe("upstream stream failed: stream stalled, no data for 500ms")
    expect(text).not.toContain("[DONE]")
    await within("the upstream socket closed", 1_000, () => stalls.counters().inFlight === 0)
    const view = await adminUpstream(server, "stalls-d")
    expect(view).toMatchObject({ failures: 1, inFlight: 0, lastError: "stalls-d: stream stalled, no data for 500ms" })
    const line = await logLine(id)
    expect(line).toMatchObject({ level: "WARN", status: 200, outcome: "failed", error: "stream stalled, no data for 500ms" })
  })
})

describe("streams pay (point 4)", { timeout: 20_000 }, () => {
  it("10 streams through a $0.0001 budget do not all pass; the caller does not see the usage chunk it did not ask for", async () => {
    const up = await fake("priced-a")
    const server = await serve(`${keysYaml}
upstreams:
${upstreamYaml(up)}
`)
    const statuses: Array<number> = []
    // A small max_tokens, so that a budget that reserves an estimate first admits the first one.
    for (let i = 0; i < 10; i++) {
      const res = await chat(server, chatBody(true, { max_tokens: 10 }), nextId("budget"), BUDGET_KEY)
      const text = await res.text()
      statuses.push(res.status)
      if (res.status === 200) {
        expect(text).not.toMatch(/"usage":\{/)
        expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true)
      } else {
        expect(JSON.parse(text).error.code).toBe("budget_exceeded")
      }
    }
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThan(0)
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThan(0)
    expect(statuses.slice(statuses.indexOf(429)).every((s) => s === 429)).toBe(true)
    // The upstream was asked for usage although the caller was not.
    expect(JSON.parse(up.counters().lastBody!).stream_options).toEqual({ include_usage: true })
  })

  it("a caller who asks for usage gets the usage chunk; the log line has the real cost", async () => {
    const up = await fake("priced-b")
    const server = await serve(`${keysYaml}
upstreams:
${upstreamYaml(up)}
`)
    const id = nextId("asked")
    const res = await chat(server, chatBody(true, { stream_options: { include_usage: true } }), id)
    const datas = dataOf(await res.text())
    const usageChunk = JSON.parse(datas.at(-2)!) as { choices: Array<unknown>; usage: { completion_tokens: number } }
    expect(usageChunk.choices).toEqual([])
    expect(usageChunk.usage.completion_tokens).toBeGreaterThan(0)
    const line = await logLine(id)
    expect(line).toMatchObject({ status: 200, outcome: "completed", usageEstimated: false })
    expect(line["costUsd"]).toBeGreaterThan(0)
  })

  it("an upstream that reports no usage: streams are priced on an estimate and charged, and the log says so", async () => {
    const up = await fake("unpriced-c", { omitUsage: true })
    const server = await serve(`${keysYaml}
upstreams:
${upstreamYaml(up)}
`)
    const statuses: Array<number> = []
    let firstId: string | undefined
    for (let i = 0; i < 10; i++) {
      const id = nextId("estimate")
      firstId ??= id
      const res = await chat(server, chatBody(true, { max_tokens: 10 }), id, BUDGET_KEY)
      await res.text()
      statuses.push(res.status)
    }
    expect(statuses).toContain(429)
    const line = await logLine(firstId!)
    expect(line).toMatchObject({ status: 200, outcome: "completed", usageEstimated: true })
    expect(line["costUsd"]).toBeGreaterThan(0)
    // The same for an answer that is not streamed.
    const plainId = nextId("estimate-plain")
    const plain = await chat(server, chatBody(false), plainId)
    expect(plain.status).toBe(200)
    expect(Number(plain.headers.get("x-breakwater-cost-usd"))).toBeGreaterThan(0)
    await plain.text()
    expect(await logLine(plainId)).toMatchObject({ status: 200, usageEstimated: true })
  })
})

describe("mid-stream failures count (point 8)", { timeout: 30_000 }, () => {
  it("50 streams all cut by an upstream: its breaker opens, admin and metrics show the failures, the rest go elsewhere", async () => {
    const cutter = await fake("cutter", { streamCut: 1 })
    const backup = await fake("backup")
    const server = await serve(`${keysYaml}
upstreams:
${upstreamYaml(cutter, ", priority: 1")}
${upstreamYaml(backup, ", priority: 2")}
`)
    const before = await metric(server, "breakwater_upstream_requests_total", { upstream: "cutter", outcome: "InvalidResponse" })
    const from: Record<string, number> = {}
    let cut = 0
    for (let i = 0; i < 50; i++) {
      const res = await chat(server, chatBody(true), nextId("cut"))
      const text = await res.text()
      const upstream = res.headers.get("x-breakwater-upstream")!
      from[upstream] = (from[upstream] ?? 0) + 1
      if (text.includes("stream ended before [DONE]")) cut++
    }
    // Ten consecutive failures (the default threshold, Upstream.breakerDefaults) open the breaker.
    expect(from).toEqual({ cutter: 10, backup: 40 })
    expect(cut).toBe(10)
    const view = await adminUpstream(server, "cutter")
    expect(view).toMatchObject({ breaker: "Open", failures: 10, successes: 0 })
    expect(String(view["lastError"])).toContain("stream ended before [DONE]")
    const after = await metric(server, "breakwater_upstream_requests_total", { upstream: "cutter", outcome: "InvalidResponse" })
    expect(after - before).toBe(10)
    expect(await metric(server, "breakwater_upstream_requests_total", { upstream: "backup", outcome: "ok" })).toBeGreaterThanOrEqual(40)
  })
})

describe("logs (point 19)", { timeout: 20_000 }, () => {
  let paced: FakeUpstream.FakeUpstream
  let server: TestServer

  beforeAll(async () => {
    paced = await fake("paced", { streamDelayMs: 100 })
    server = await serve(`${keysYaml}
upstreams:
${upstreamYaml(paced)}
`)
  })

  it("a stream's line is written when it ends: its duration, real cost, attempts and outcome", async () => {
    const id = nextId("stream-log")
    const res = await chat(server, chatBody(true), id)
    expect(res.status).toBe(200)
    await sleep(100)
    // Headers are out, the stream is not over: no line yet.
    expect(linesFor(id)).toEqual([])
    await res.text()
    const line = await logLine(id)
    expect(line).toMatchObject({
      level: "INFO",
      msg: "request",
      status: 200,
      upstream: "paced",
      attempts: 1,
      outcome: "completed",
      usageEstimated: false,
      key: "streamer"
    })
    // "Hello from paced": 5 events 100 ms apart after the first.
    expect(line["latencyMs"]).toBeGreaterThanOrEqual(350)
    expect(line["costUsd"]).toBeGreaterThan(0)
    expect(linesFor(id)).toHaveLength(1)
    expect(await metric(server, "breakwater_requests_total", { upstream: "paced", status: "200", key: "streamer" })).toBeGreaterThan(0)
  })

  it("a client that hangs up before the answer is complete: logged once as 499 and counted", async () => {
    const slow = await fake("slow-json", { latencyMs: 2_000 })
    const slowServer = await serve(`${keysYaml}
upstreams:
${upstreamYaml(slow)}
`)
    const before = await metric(slowServer, "breakwater_requests_total", { status: "499" })
    const id = nextId("hangup")
    await hangUp(slowServer, chatBody(false), id, { afterMs: 200 })
    const line = await logLine(id)
    expect(line).toMatchObject({ level: "INFO", status: 499, key: "streamer", model: "gpt-4.1" })
    await sleep(100)
    expect(linesFor(id)).toHaveLength(1)
    expect(await metric(slowServer, "breakwater_requests_total", { status: "499" })).toBe(before + 1)

    // A stream left half-way: 499 as well, with its outcome and what it cost so far.
    const streamId = nextId("hangup-stream")
    await hangUp(server, chatBody(true), streamId, { until: (r) => dataOf(r).length >= 2 })
    const streamLine = await logLine(streamId)
    expect(streamLine).toMatchObject({ status: 499, outcome: "abandoned", upstream: "paced", usageEstimated: true })
    expect(streamLine["costUsd"]).toBeGreaterThan(0)
  })

  it("failed relays are warnings with the real number of upstream attempts", async () => {
    const a = await fake("broken-a", { status: 500 })
    const b = await fake("broken-b", { status: 500 })
    const failing = await serve(`${keysYaml}
upstreams:
${upstreamYaml(a, ", priority: 1")}
${upstreamYaml(b, ", priority: 2")}
`)
    for (const stream of [false, true]) {
      const id = nextId("all-failed")
      const res = await chat(failing, chatBody(stream), id)
      expect(res.status).toBe(502)
      await res.text()
      const line = await logLine(id)
      expect(line).toMatchObject({ level: "WARN", status: 502, attempts: 2 })
      expect(line["failures"]).toEqual(["broken-a: server error (500)", "broken-b: server error (500)"])
    }
  })

  it("an upstream's own 400 relayed after a failover is logged with the calls it took", async () => {
    const keyless = await fake("keyless", { status: 401 })
    const picky = await fake("picky", { status: 400 })
    const server = await serve(`${keysYaml}
upstreams:
${upstreamYaml(keyless, ", priority: 1")}
${upstreamYaml(picky, ", priority: 2")}
`)
    const id = nextId("rejected")
    const res = await chat(server, chatBody(false), id)
    expect(res.status).toBe(400)
    expect(res.headers.get("x-breakwater-upstream")).toBe("picky")
    await res.text()
    expect(await logLine(id)).toMatchObject({ status: 400, upstream: "picky", attempts: 2 })
  })

  it("admin actions are logged with the action and the upstream", async () => {
    for (const action of ["open", "reset"] as const) {
      const res = await fetch(`${server.url}/admin/upstreams/paced/${action}`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN_KEY}`, "x-request-id": nextId(`admin-${action}`) }
      })
      expect(res.status).toBe(200)
      await res.text()
      await within(`the ${action} log line`, 2_000, () =>
        captured.logs.some((l) => l.includes(`"msg":"admin action"`) && l.includes(`"action":"${action}"`) && l.includes(`"upstream":"paced"`)))
    }
    const lines = captured.logs.filter((l) => l.includes(`"msg":"admin action"`)).map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(lines.every((l) => l["level"] === "INFO")).toBe(true)
    expect(captured.logs.join("\n")).not.toContain(ADMIN_KEY)
  })
})

describe("a stream reply whose body is never written (point 2, the hand-off)", { timeout: 20_000 }, () => {
  it("Handler.hungUp releases the upstream stream and logs 499 once", async () => {
    const stalls = await fake("handoff", { streamStallAfter: 1 })
    const config = configOf(`${keysYaml}
upstreams:
${upstreamYaml(stalls)}
`)
    const lines: Array<{ message: unknown; annotations: Record<string, unknown> }> = []
    const logger = Logger.make(({ annotations, message }) => {
      lines.push({ message, annotations: Object.fromEntries(HashMap.toEntries(annotations)) })
    })
    const scope = Effect.runSync(Scope.make())
    try {
      const context = await Effect.runPromise(Layer.buildWithScope(Server.servicesLayer(config), scope))
      const handler = await Effect.runPromise(
        Effect.provide(Http.make({ maxBodyBytes: 1_000_000, adminKey: undefined }), context)
      )
      const incoming: Http.Incoming = {
        method: "POST",
        url: "/v1/chat/completions",
        headers: { authorization: `Bearer ${KEY}`, "x-request-id": "handoff-1" },
        body: Effect.succeed(chatBody(true)),
        state: undefined
      }
      const run = <A>(e: Effect.Effect<A>) => Effect.runPromise(e.pipe(Logger.withMinimumLogLevel(LogLevel.Info), Effect.provide(Logger.replace(Logger.defaultLogger, logger))))
      const reply = await run(handler(incoming))
      expect(reply.status).toBe(200)
      expect(typeof reply.body).not.toBe("string")
      await within("the upstream holds the stream", 2_000, () => stalls.counters().streamsOpen === 1)
      // Nothing reads the body: the caller left between the reply and its body.
      await run(handler.hungUp(incoming))
      await within("the upstream socket closed", 1_000, () => stalls.counters().inFlight === 0)
      await run(handler.hungUp(incoming))
      const logged = lines.filter((l) => l.annotations["requestId"] === "handoff-1")
      expect(logged).toHaveLength(1)
      expect(logged[0]!.annotations).toMatchObject({ status: 499, outcome: "abandoned", upstream: "handoff" })
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })
})
