/**
 * Traces, end to end: the real server on 127.0.0.1 over fake upstreams,
 * its spans collected by an in-memory exporter (a SimpleSpanProcessor, so a
 * span is there as soon as it ends). A request is a `server` span under the
 * caller's `traceparent`; each upstream call a `client` span under it, named
 * to the upstream in a `traceparent` of its own. A stream's request span
 * ends with the stream. No span carries a prompt, a completion or a key.
 * Off (the default), a request makes no span at all. Exported for real, the
 * spans reach an OTLP/HTTP collector with the configured headers.
 */
import type * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { SpanKind, SpanStatusCode } from "@opentelemetry/api"
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import * as Effect from "effect/Effect"
import * as Tracer from "effect/Tracer"
import { createServer, type IncomingHttpHeaders } from "node:http"
import { describe, expect, it } from "vitest"
import { captured, freePort, recordingFetch, testBed, type TestServer } from "./helpers/e2e.js"

const GATEWAY_KEY = "gw-key-TRACES-SECRET-1"
const ADMIN_KEY = "admin-key-TRACES-SECRET-2"
const OTLP_KEY = "otlp-key-TRACES-SECRET-3"
const upstreamKey = (name: string) => `sk-upstream-${name}-TRACES-SECRET-4`
const PROMPT = "PROMPT-TEXT-do-not-trace-7f3a"
const COMPLETION = "COMPLETION-TEXT-do-not-trace-9c1e"

/** The caller's trace context. */
const CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
const CALLER_SPAN = "00f067aa0ba902b7"
const TRACEPARENT = `00-${CALLER_TRACE}-${CALLER_SPAN}-01`
const TRACESTATE = "vendor=opaque-value"

const { fake, serve } = testBed()

interface Setup {
  /** Added to the config. */
  readonly extra?: string
  /** The `retry` section. */
  readonly retry?: string
  /** Added to the first upstream's entry. */
  readonly first?: string
}

/** A server over `upstreams` (priorities in order), its spans in the returned exporter. */
const tracedServer = async (upstreams: ReadonlyArray<FakeUpstream.FakeUpstream>, setup: Setup = {}) => {
  const exporter = new InMemorySpanExporter()
  const server = await serve(config(upstreams, setup), { spanProcessor: new SimpleSpanProcessor(exporter) })
  return { server, exporter }
}

const config = (upstreams: ReadonlyArray<FakeUpstream.FakeUpstream>, setup: Setup = {}) => `
server: { adminKey: "${ADMIN_KEY}" }
keys:
  - { name: team-a, key: "${GATEWAY_KEY}" }
upstreams:
${
  upstreams.map((u, i) =>
    `  - { name: ${u.name}, baseUrl: "${u.url}", apiKey: "${upstreamKey(u.name)}", models: [gpt-4.1], priority: ${i + 1}, timeout: 5s${
      i === 0 && setup.first !== undefined ? `, ${setup.first}` : ""
    } }`
  ).join("\n")
}
retry: ${setup.retry ?? "{ maxRetries: 0 }"}
healthCheck: { interval: 1h }
${setup.extra ?? ""}
`

const post = (server: TestServer, path: string, body: unknown, headers: Record<string, string> = {}) =>
  recordingFetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${GATEWAY_KEY}`, ...headers },
    body: JSON.stringify(body)
  })

const chat = (extra: Record<string, unknown> = {}) => ({
  model: "gpt-4.1",
  messages: [{ role: "user", content: PROMPT }],
  ...extra
})

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Waits (at most 5 s) until the exporter holds spans that `ready` accepts. */
const spansWhen = async (exporter: InMemorySpanExporter, ready: (spans: ReadonlyArray<ReadableSpan>) => boolean) => {
  const until = Date.now() + 5_000
  for (;;) {
    const spans = exporter.getFinishedSpans()
    if (ready(spans)) return spans
    if (Date.now() > until) throw new Error(`spans not there in time: ${spans.map((s) => s.name).join(", ")}`)
    await sleep(10)
  }
}

const servers = (spans: ReadonlyArray<ReadableSpan>) => spans.filter((s) => s.kind === SpanKind.SERVER)
const clients = (spans: ReadonlyArray<ReadableSpan>) => spans.filter((s) => s.kind === SpanKind.CLIENT)
const nanos = (t: readonly [number, number]) => t[0] * 1e9 + t[1]
const traceparentOf = (s: ReadableSpan) => `00-${s.spanContext().traceId}-${s.spanContext().spanId}-01`

/** Everything a span holds that an exporter would send, as text. */
const spanText = (s: ReadableSpan) =>
  JSON.stringify({
    name: s.name,
    attributes: s.attributes,
    events: s.events.map((e) => ({ name: e.name, attributes: e.attributes })),
    status: s.status,
    links: s.links,
    resource: s.resource.attributes,
    scope: s.instrumentationScope
  })

describe("a request that failed over once", () => {
  it("is a server span under the caller's traceparent with two client spans: the failure (status, reason, breaker) and the answer; each upstream got its own span's traceparent", async () => {
    const first = await fake("first", { status: 500 })
    const second = await fake("second")
    const { exporter, server } = await tracedServer([first, second], { extra: "breaker: { failureThreshold: 1 }" })
    const res = await post(server, "/v1/chat/completions", chat(), { traceparent: TRACEPARENT, tracestate: TRACESTATE })
    expect(res.status).toBe(200)
    expect(res.headers.get("x-breakwater-attempts")).toBe("2")
    await res.text()

    const spans = await spansWhen(exporter, (s) => servers(s).length === 1)
    expect(spans).toHaveLength(3)
    const [request] = servers(spans)
    // The caller's span is the request span's parent, in the caller's trace.
    expect(request!.name).toBe("POST /v1/chat/completions")
    expect(request!.spanContext().traceId).toBe(CALLER_TRACE)
    expect(request!.parentSpanContext?.spanId).toBe(CALLER_SPAN)
    expect(request!.parentSpanContext?.isRemote).toBe(true)
    expect(request!.attributes).toMatchObject({
      "http.request.method": "POST",
      "http.route": "/v1/chat/completions",
      "http.response.status_code": 200,
      "breakwater.key": "team-a",
      "gen_ai.request.model": "gpt-4.1",
      "breakwater.upstream": "second",
      "breakwater.attempts": 2,
      "breakwater.cache": "bypass"
    })
    expect(request!.attributes["gen_ai.usage.input_tokens"]).toBeGreaterThan(0)
    expect(request!.attributes["gen_ai.usage.output_tokens"]).toBeGreaterThan(0)
    expect(typeof request!.attributes["breakwater.cost_usd"]).toBe("number")
    expect(request!.status.code).toBe(SpanStatusCode.OK)

    // Two attempts, children of the request span, in order.
    const attempts = clients(spans).sort((a, b) => nanos(a.startTime) - nanos(b.startTime))
    expect(attempts.map((s) => s.name)).toEqual(["upstream first", "upstream second"])
    for (const a of attempts) {
      expect(a.spanContext().traceId).toBe(CALLER_TRACE)
      expect(a.parentSpanContext?.spanId).toBe(request!.spanContext().spanId)
      expect(a.spanContext().traceState?.serialize()).toBe(TRACESTATE)
    }
    const [failed, ok] = attempts
    expect(failed!.attributes).toMatchObject({
      "breakwater.upstream": "first",
      "breakwater.attempt": 1,
      "gen_ai.request.model": "gpt-4.1",
      "http.response.status_code": 500,
      "error.type": "UpstreamServerError",
      "breakwater.failure.reason": "server error (500)",
      "server.address": "127.0.0.1"
    })
    expect(failed!.status).toEqual({ code: SpanStatusCode.ERROR, message: "server error (500)" })
    // The failure opened first's breaker (failureThreshold 1): an event on its span.
    const breaker = failed!.events.find((e) => e.name === "breaker")
    expect(breaker?.attributes).toEqual({ "breakwater.breaker.from": "Closed", "breakwater.breaker.to": "Open" })
    expect(ok!.attributes).toMatchObject({
      "breakwater.upstream": "second",
      "breakwater.attempt": 2,
      "http.response.status_code": 200,
      "breakwater.outcome": "ok"
    })
    expect(ok!.attributes["gen_ai.usage.output_tokens"]).toBeGreaterThan(0)
    expect(ok!.status.code).toBe(SpanStatusCode.OK)
    expect(nanos(failed!.endTime)).toBeLessThanOrEqual(nanos(ok!.startTime))

    // Each upstream was called with a traceparent naming its own attempt span, and the caller's tracestate.
    expect(first.counters().lastTraceparent).toBe(traceparentOf(failed!))
    expect(second.counters().lastTraceparent).toBe(traceparentOf(ok!))
    expect(second.counters().lastTracestate).toBe(TRACESTATE)
  })

  it("a 429 puts a cooldown event on its attempt's span; the upstream cooling down is not called next time", async () => {
    const busy = await fake("busy", { rate429: 1, retryAfter: "30" })
    const spare = await fake("spare")
    const { exporter, server } = await tracedServer([busy, spare])
    const res = await post(server, "/v1/chat/completions", chat())
    expect(res.status).toBe(200)
    await res.text()
    const spans = await spansWhen(exporter, (s) => servers(s).length === 1)
    const limited = clients(spans).find((s) => s.name === "upstream busy")!
    expect(limited.attributes).toMatchObject({ "http.response.status_code": 429, "error.type": "UpstreamRateLimited" })
    expect(limited.events.find((e) => e.name === "cooldown")?.attributes).toEqual({
      "breakwater.cooldown.reason": "rate-limited",
      "breakwater.cooldown.ms": 30_000
    })
    // Without a caller's traceparent the request starts a trace of its own.
    expect(servers(spans)[0]!.parentSpanContext).toBeUndefined()

    // busy is cooling down now: the router leaves it out, the next request calls spare alone.
    exporter.reset()
    const again = await post(server, "/v1/chat/completions", chat())
    expect(again.status).toBe(200)
    await again.text()
    const next = await spansWhen(exporter, (s) => servers(s).length === 1)
    expect(clients(next).map((s) => s.name)).toEqual(["upstream spare"])
    expect(busy.counters().chat).toBe(1)
  })

  it("an upstream our own limit left out gets no attempt span but an event on the request span", async () => {
    const limited = await fake("limited")
    const spare = await fake("spare2")
    const { exporter, server } = await tracedServer([limited, spare], { first: "requestsPerMinute: 1" })
    await (await post(server, "/v1/chat/completions", chat())).text()
    exporter.reset()
    const res = await post(server, "/v1/chat/completions", chat())
    expect(res.status).toBe(200)
    await res.text()
    const spans = await spansWhen(exporter, (s) => servers(s).length === 1)
    expect(clients(spans).map((s) => s.name)).toEqual(["upstream spare2"])
    expect(servers(spans)[0]!.events.map((e) => [e.name, e.attributes])).toEqual([
      ["upstream skipped", { "breakwater.upstream": "limited", "breakwater.reason": "local rate limit reached" }]
    ])
    expect(limited.counters().chat).toBe(1)
  })

  it("a backoff between rounds is a waiting event on the request span, between the two attempts", async () => {
    const down = await fake("flaky", { status: 503 })
    const { exporter, server } = await tracedServer([down], { retry: "{ maxRetries: 1, baseDelay: 20ms, maxDelay: 20ms }" })
    const res = await post(server, "/v1/chat/completions", chat())
    expect(res.status).toBe(502)
    await res.text()
    const spans = await spansWhen(exporter, (s) => servers(s).length === 1)
    const attempts = clients(spans).sort((a, b) => nanos(a.startTime) - nanos(b.startTime))
    expect(attempts).toHaveLength(2)
    const waiting = servers(spans)[0]!.events.filter((e) => e.name === "waiting")
    expect(waiting).toHaveLength(1)
    expect(waiting[0]!.attributes?.["breakwater.wait.reason"]).toBe("backoff before the next round")
    expect(waiting[0]!.attributes?.["breakwater.wait.ms"]).toBeLessThanOrEqual(20)
    const at = nanos(waiting[0]!.time)
    expect(at).toBeGreaterThanOrEqual(nanos(attempts[0]!.endTime))
    expect(at).toBeLessThanOrEqual(nanos(attempts[1]!.startTime))
  })

  it("a request refused before any upstream (a 401) is one server span with its status, not an error; an invalid traceparent starts a new trace", async () => {
    const only = await fake("only")
    const { exporter, server } = await tracedServer([only])
    const res = await post(server, "/v1/chat/completions", chat(), {
      authorization: "Bearer wrong-key",
      // An all-zero trace id is invalid (W3C): ignored.
      traceparent: `00-${"0".repeat(32)}-${CALLER_SPAN}-01`
    })
    expect(res.status).toBe(401)
    const spans = await spansWhen(exporter, (s) => servers(s).length === 1)
    expect(spans).toHaveLength(1)
    expect(spans[0]!.attributes).toMatchObject({ "http.response.status_code": 401, "breakwater.key": "anonymous" })
    expect(spans[0]!.status.code).toBe(SpanStatusCode.OK)
    expect(spans[0]!.parentSpanContext).toBeUndefined()
    expect(spans[0]!.spanContext().traceId).not.toBe("0".repeat(32))
  })

  it("a request every upstream failed is an error span with the failures", async () => {
    const down = await fake("down", { status: 503 })
    const { exporter, server } = await tracedServer([down])
    const res = await post(server, "/v1/chat/completions", chat())
    expect(res.status).toBe(502)
    const spans = await spansWhen(exporter, (s) => servers(s).length === 1)
    const [request] = servers(spans)
    expect(request!.status.code).toBe(SpanStatusCode.ERROR)
    expect(request!.attributes["http.response.status_code"]).toBe(502)
    expect(request!.attributes["breakwater.failures"]).toBe("down: server error (503)")
  })
})

describe("a stream", () => {
  it("its request span ends when the stream ends, with its outcome, tokens and cost; its attempt span too", async () => {
    const slow = await fake("slow", { streamDelayMs: 40 })
    const { exporter, server } = await tracedServer([slow])
    const res = await post(server, "/v1/chat/completions", chat({ stream: true }), { traceparent: TRACEPARENT })
    expect(res.status).toBe(200)
    // The headers are out, the events are still coming: no span has ended.
    await sleep(60)
    expect(exporter.getFinishedSpans()).toEqual([])
    const readAt = process.hrtime.bigint()
    const body = await res.text()
    const readEnd = process.hrtime.bigint()
    expect(body).toContain("data: [DONE]")
    const spans = await spansWhen(exporter, (s) => servers(s).length === 1)
    const [request] = servers(spans)
    const [attempt] = clients(spans)
    expect(request!.attributes).toMatchObject({
      "http.response.status_code": 200,
      "breakwater.stream.outcome": "completed",
      "breakwater.upstream": "slow"
    })
    expect(request!.attributes["gen_ai.usage.output_tokens"]).toBeGreaterThan(0)
    expect(typeof request!.attributes["breakwater.cost_usd"]).toBe("number")
    expect(attempt!.attributes).toMatchObject({ "breakwater.stream.outcome": "completed", "http.response.status_code": 200 })
    expect(attempt!.attributes["gen_ai.usage.output_tokens"]).toBeGreaterThan(0)
    expect(attempt!.parentSpanContext?.spanId).toBe(request!.spanContext().spanId)
    // The request span lasted as long as the stream: past the time its body took to read.
    const lasted = nanos(request!.duration)
    expect(lasted).toBeGreaterThanOrEqual(Number(readEnd - readAt) * 0.9)
    expect(nanos(attempt!.endTime)).toBeLessThanOrEqual(nanos(request!.endTime))
    expect(slow.counters().lastTraceparent).toBe(traceparentOf(attempt!))
  })

  it("a caller that leaves mid-stream: the spans end as abandoned and 499, not as errors", async () => {
    const slow = await fake("slow2", { streamDelayMs: 200 })
    const { exporter, server } = await tracedServer([slow])
    const controller = new AbortController()
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${GATEWAY_KEY}` },
      body: JSON.stringify(chat({ stream: true })),
      signal: controller.signal
    })
    const reader = res.body!.getReader()
    await reader.read()
    controller.abort()
    const spans = await spansWhen(exporter, (s) => servers(s).length === 1 && clients(s).length === 1)
    const [request] = servers(spans)
    const [attempt] = clients(spans)
    expect(request!.attributes).toMatchObject({ "http.response.status_code": 499, "breakwater.stream.outcome": "abandoned" })
    expect(request!.status.code).toBe(SpanStatusCode.OK)
    expect(attempt!.attributes["breakwater.stream.outcome"]).toBe("abandoned")
    expect(attempt!.status.code).toBe(SpanStatusCode.OK)
  })
})

describe("what spans never hold", () => {
  it("no prompt, completion, key or header in any span, across answers, streams, embeddings and failures", async () => {
    const revoked = await fake("revoked", { status: 401 }, { reply: () => COMPLETION })
    const good = await fake("good", {}, { reply: () => COMPLETION })
    const { exporter, server } = await tracedServer([revoked, good], {
      extra: `telemetry: { otlp: { endpoint: "http://127.0.0.1:9", headers: { x-otlp-key: "${OTLP_KEY}" } } }`
    })
    const headers = { traceparent: TRACEPARENT, tracestate: TRACESTATE }
    const answer = await post(server, "/v1/chat/completions", chat(), headers)
    expect(await answer.text()).toContain(COMPLETION)
    const stream = await post(server, "/v1/chat/completions", chat({ stream: true }), headers)
    expect(await stream.text()).toContain(COMPLETION.slice(0, 10))
    const embed = await post(server, "/v1/embeddings", { model: "gpt-4.1", input: PROMPT }, headers)
    expect(embed.status).toBe(200)
    await embed.text()
    // The caller's mistakes: a bad key (the body is not read), an invalid body quoting the prompt.
    expect((await post(server, "/v1/chat/completions", chat(), { authorization: `Bearer ${GATEWAY_KEY}x` })).status).toBe(401)
    expect((await post(server, "/v1/chat/completions", { model: 7, messages: PROMPT })).status).toBe(400)
    const spans = await spansWhen(exporter, (s) => servers(s).length === 5)
    const text = spans.map(spanText).join("\n")
    // The spans are about these requests...
    expect(text).toContain("revoked")
    expect(text).toContain("UpstreamAuthFailed")
    // ...and hold none of their content or secrets.
    for (const secret of [PROMPT, COMPLETION, COMPLETION.slice(0, 10), GATEWAY_KEY, ADMIN_KEY, OTLP_KEY, upstreamKey("revoked"), upstreamKey("good"), "Bearer"]) {
      expect(text).not.toContain(secret)
    }
    // Nor do the log lines mention the OTLP key.
    expect(captured.logs.join("\n")).not.toContain(OTLP_KEY)
  })
})

describe("traces off (the default)", () => {
  it("a request makes no span, reads no caller trace context and sends none upstream", async () => {
    const only = await fake("untraced")
    let spans = 0
    const native = Effect.runSync(Effect.tracer)
    const counting = Tracer.make({
      span: (...args) => {
        spans++
        return native.span(...args)
      },
      context: (f) => f()
    })
    // The runtime the server starts in has a tracer: requests would use it if the gateway made spans.
    const server = await serve(config([only]), { tracer: counting })
    const headers = { traceparent: TRACEPARENT, tracestate: TRACESTATE }
    const answer = await post(server, "/v1/chat/completions", chat(), headers)
    expect(answer.status).toBe(200)
    await answer.text()
    const stream = await post(server, "/v1/chat/completions", chat({ stream: true }), headers)
    expect(await stream.text()).toContain("[DONE]")
    expect((await post(server, "/v1/chat/completions", chat(), { authorization: "Bearer nope" })).status).toBe(401)
    expect(spans).toBe(0)
    expect(only.counters().lastTraceparent).toBeUndefined()
    expect(only.counters().lastTracestate).toBeUndefined()
  })
})

describe("export over OTLP/HTTP", () => {
  it("a collector that cannot be reached is a WARN line (without its headers), and requests are served", async () => {
    const port = await freePort()
    const only = await fake("unexported")
    // Each export may take this long, retries included (the exporter reads the standard
    // variable; 10 s by default): the failure is then known within the shutdown's flush.
    process.env["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"] = "300"
    const server = await serve(
      config([only], { extra: `telemetry: { otlp: { endpoint: "http://127.0.0.1:${port}", headers: { x-otlp-key: "${OTLP_KEY}" } } }` })
    ).finally(() => delete process.env["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"])
    const res = await post(server, "/v1/chat/completions", chat())
    expect(res.status).toBe(200)
    await res.text()
    await server.close()
    const warning = captured.logs.find((l) => l.includes(`exporting spans to http://127.0.0.1:${port}/v1/traces failed`))
    expect(warning).toBeDefined()
    expect(JSON.parse(warning!).level).toBe("WARN")
    expect(captured.logs.join("\n")).not.toContain(OTLP_KEY)
  })

  it("spans reach the collector at <endpoint>/v1/traces as protobuf, with the configured headers, by shutdown at the latest", async () => {
    const received: Array<{ url: string; headers: IncomingHttpHeaders; body: Buffer }> = []
    const collector = createServer((req, res) => {
      const chunks: Array<Buffer> = []
      req.on("data", (c: Buffer) => chunks.push(c))
      req.on("end", () => {
        received.push({ url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks) })
        res.writeHead(200, { "content-type": "application/x-protobuf" })
        res.end()
      })
    })
    await new Promise<void>((resolve) => collector.listen(0, "127.0.0.1", resolve))
    const port = (collector.address() as { port: number }).port
    try {
      const only = await fake("exported")
      const server = await serve(
        config([only], {
          extra: `telemetry: { otlp: { endpoint: "http://127.0.0.1:${port}", headers: { x-otlp-key: "${OTLP_KEY}" } }, serviceName: gateway-test }`
        })
      )
      const res = await post(server, "/v1/chat/completions", chat())
      expect(res.status).toBe(200)
      await res.text()
      // Closing the server flushes the batch.
      await server.close()
      expect(received.length).toBeGreaterThanOrEqual(1)
      const [batch] = received
      expect(batch!.url).toBe("/v1/traces")
      expect(batch!.headers["content-type"]).toBe("application/x-protobuf")
      expect(batch!.headers["x-otlp-key"]).toBe(OTLP_KEY)
      const body = Buffer.concat(received.map((r) => r.body)).toString("latin1")
      // Protobuf keeps strings as they are: the service, the span names, the upstream.
      expect(body).toContain("gateway-test")
      expect(body).toContain("POST /v1/chat/completions")
      expect(body).toContain("upstream exported")
      expect(body).not.toContain(PROMPT)
      expect(body).not.toContain(upstreamKey("exported"))
    } finally {
      await new Promise((resolve) => collector.close(resolve))
    }
  })
})
