/**
 * The request log (RequestLog.ts): a plain object per request, the lines of
 * one turn of the event loop in one write, nothing lost at shutdown; and the
 * HTTP handler writing its request lines through it, with the fields it
 * always had, at the level in force.
 */
import { Relay, UpstreamClient } from "@breakwater/core"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Scope from "effect/Scope"
import { describe, expect, it } from "vitest"
import * as Http from "../src/Http.js"
import * as Log from "../src/Log.js"
import * as RequestLog from "../src/RequestLog.js"
import { configOf } from "./helpers/e2e.js"
import { buildGateway, COMPLETION } from "./helpers/handler.js"

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

describe("RequestLog", () => {
  it("writes the lines of one turn of the event loop in one write, at the turn's end", async () => {
    const writes: Array<string> = []
    const log = RequestLog.make({ sink: (chunk) => writes.push(chunk) })
    log.write("INFO", "request", { requestId: "a", status: 200, model: null, skipped: undefined })
    log.write("WARN", "request", { requestId: "b", status: 502 })
    log.write("INFO", "request", { requestId: "c", status: 200, failures: ["x: 429"] })
    expect(writes).toHaveLength(0)
    await nextTurn()
    expect(writes).toHaveLength(1)
    const lines = writes[0]!.split("\n")
    expect(lines.pop()).toBe("")
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(parsed.map((p) => p["requestId"])).toEqual(["a", "b", "c"])
    expect(parsed[0]).toEqual({ time: expect.any(String), level: "INFO", msg: "request", requestId: "a", status: 200, model: null })
    expect(Object.keys(parsed[0]!).slice(0, 3)).toEqual(["time", "level", "msg"])
    expect(Number.isNaN(Date.parse(String(parsed[0]!["time"])))).toBe(false)
    expect(parsed[1]!["level"]).toBe("WARN")
    expect(parsed[2]!["failures"]).toEqual(["x: 429"])
    // A later turn: a write of its own.
    log.write("INFO", "request", { requestId: "d" })
    await nextTurn()
    expect(writes).toHaveLength(2)
  })

  it("pretty lines are Log.ts's pretty format", async () => {
    const writes: Array<string> = []
    const log = RequestLog.make({ format: "pretty", sink: (chunk) => writes.push(chunk) })
    const fields = { requestId: "r1", method: "POST", path: "/v1/chat/completions", status: 200, key: "k", model: null }
    log.write("INFO", "request", fields)
    log.flush()
    expect(writes).toHaveLength(1)
    // The time differs; the rest is what Log.format writes.
    const expected = Log.format("pretty", new Date(), "INFO", "request", Object.entries(fields))
    expect(writes[0]!.slice(13)).toBe(expected.slice(13))
    expect(writes[0]).not.toContain("{")
  })

  it("a full buffer is written at once; the scope's end writes what is pending", async () => {
    const writes: Array<string> = []
    const scope = Effect.runSync(Scope.make())
    const log = Effect.runSync(Scope.extend(RequestLog.scoped({ sink: (c) => writes.push(c), maxBufferBytes: 200 }), scope))
    for (let i = 0; i < 5; i++) log.write("INFO", "request", { requestId: `r${i}`, padding: "x".repeat(40) })
    expect(writes.length).toBeGreaterThanOrEqual(1)
    const before = writes.join("").split("\n").length - 1
    expect(before).toBeLessThan(5)
    await Effect.runPromise(Scope.close(scope, Exit.void))
    // Closed before the turn ended: every line is out.
    const all = writes.join("").split("\n").filter((l) => l !== "")
    expect(all.map((l) => (JSON.parse(l) as { requestId: string }).requestId)).toEqual(["r0", "r1", "r2", "r3", "r4"])
    await nextTurn()
    expect(writes.join("").split("\n").filter((l) => l !== "")).toHaveLength(5)
  })
})

// ---------------------------------------------------------------------------
// the handler's request lines

/** The real handler over an upstream client answering at once from memory (200, or 500 for model "fails"). */
const handlerWith = async (level: LogLevel.LogLevel, requestLog: RequestLog.RequestLog | undefined) => {
  const config = configOf(`
keys:
  - { name: team, key: sk-team-key, requestsPerMinute: 1000000 }
upstreams:
  - { name: memory, baseUrl: "http://127.0.0.1:1/v1", apiKey: sk-up, models: ["gpt-4.1", "fails"], maxConcurrent: 100 }
routing: { maxAttempts: 1 }
cache: { enabled: false }
`)
  const client = UpstreamClient.UpstreamClient.of({
    post: (_upstream, _path, body) =>
      Effect.succeed(
        String(body).includes(`"fails"`)
          ? { status: 500, headers: { "content-type": "application/json" }, text: `{"error":{"message":"boom"}}` }
          : { status: 200, headers: { "content-type": "application/json" }, text: COMPLETION }
      ),
    get: () => Effect.succeed({ status: 200, headers: {}, text: "{}" }),
    postStream: () => Effect.die("not used")
  })
  const { built, close } = await buildGateway(config, client)
  const context = requestLog === undefined ? built : Context.add(built, RequestLog.RequestLog, requestLog)
  const handler = await Effect.runPromise(
    Effect.provide(Http.make({ maxBodyBytes: 1 << 20, adminKey: undefined }), context).pipe(Logger.withMinimumLogLevel(level))
  )
  const runtime = await Effect.runPromise(Effect.provide(Effect.runtime<never>(), context))
  return { handler, caller: Relay.callerOf(runtime), close }
}

const request = (id: string, model = "gpt-4.1"): Http.Incoming => ({
  method: "POST",
  url: "/v1/chat/completions",
  headers: { authorization: "Bearer sk-team-key", "x-request-id": id },
  body: Effect.succeed(JSON.stringify({ model, messages: [{ role: "user", content: "hello" }] })),
  state: undefined
})

describe("the handler's request lines through the RequestLog", () => {
  it("ten requests answered in one turn: one write of ten lines, with every field", async () => {
    const writes: Array<string> = []
    const { handler, close } = await handlerWith(LogLevel.Info, RequestLog.make({ sink: (c) => writes.push(c) }))
    try {
      const ids = Array.from({ length: 10 }, (_, i) => `batch-${i}`)
      // Nothing goes through Effect's logger: a logger that fails the test if it sees a request line.
      const effectLines: Array<unknown> = []
      const spy = Logger.make(({ message }) => effectLines.push(message))
      const replies = await Effect.runPromise(
        Effect.forEach(ids, (id) => handler(request(id)), { concurrency: "unbounded" }).pipe(
          Effect.provide(Logger.replace(Logger.defaultLogger, spy))
        )
      )
      expect(replies.map((r) => r.status)).toEqual(ids.map(() => 200))
      expect(effectLines).toEqual([])
      await nextTurn()
      expect(writes).toHaveLength(1)
      const lines = writes[0]!.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>)
      expect(lines.map((l) => l["requestId"])).toEqual(ids)
      expect(lines[0]).toEqual({
        time: expect.any(String),
        level: "INFO",
        msg: "request",
        requestId: "batch-0",
        method: "POST",
        path: "/v1/chat/completions",
        key: "team",
        model: "gpt-4.1",
        upstream: "memory",
        attempts: 1,
        status: 200,
        latencyMs: expect.any(Number),
        cache: "bypass",
        costUsd: expect.any(Number)
      })
    } finally {
      await close()
    }
  })

  it("latencyMs counts from the request's arrival (Incoming.started) on the general path too, as on the fast path", async () => {
    const writes: Array<string> = []
    const { handler, close } = await handlerWith(LogLevel.Info, RequestLog.make({ sink: (c) => writes.push(c) }))
    try {
      // A request whose body took 400 ms to arrive before the handler ran (the server read it first).
      const arrived = performance.now() - 400
      const answered = await Effect.runPromise(handler({ ...request("slow-body-1"), started: arrived }))
      const plain = await Effect.runPromise(handler(request("no-start-1")))
      expect([answered.status, plain.status]).toEqual([200, 200])
      await nextTurn()
      const lines = writes.join("").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>)
      const latency = (id: string) => Number(lines.find((l) => l["requestId"] === id)!["latencyMs"])
      expect(latency("slow-body-1")).toBeGreaterThanOrEqual(400)
      // Without a start, the handler's own: no 400 ms it did not see.
      expect(latency("no-start-1")).toBeLessThan(400)
    } finally {
      await close()
    }
  })

  it("honours the level in force: at warning, a 5xx is written and a 200 is not", async () => {
    const writes: Array<string> = []
    const { handler, close } = await handlerWith(LogLevel.Warning, RequestLog.make({ sink: (c) => writes.push(c) }))
    try {
      const ok = await Effect.runPromise(handler(request("quiet-200")))
      const failed = await Effect.runPromise(handler(request("loud-502", "fails")))
      expect(ok.status).toBe(200)
      expect(failed.status).toBe(502)
      await nextTurn()
      const lines = writes.join("").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>)
      expect(lines.map((l) => [l["requestId"], l["level"]])).toEqual([["loud-502", "WARN"]])
      expect(lines[0]!["failures"]).toEqual([expect.stringContaining("memory")])
    } finally {
      await close()
    }
  })

  it("the fast path hands its reply over before it writes the request's line (the line never delays the reply)", async () => {
    const order: Array<string> = []
    const inner = RequestLog.make({ sink: () => {} })
    const spy: RequestLog.RequestLog = {
      write: (level, msg, fields) => {
        order.push(`line ${String(fields["status"])}`)
        inner.write(level, msg, fields)
      },
      flush: inner.flush
    }
    const { caller, close, handler } = await handlerWith(LogLevel.Info, spy)
    try {
      const incoming = request("fast-order-1")
      const body = await Effect.runPromise(incoming.body)
      const replied = new Promise<Http.Reply>((resolve) => {
        const taken = handler.fast(incoming, body!, caller, (answer) => {
          order.push(Effect.isEffect(answer) ? "handed over" : `reply ${answer.status}`)
          if (!Effect.isEffect(answer)) resolve(answer)
        })
        expect(typeof taken).toBe("function") // the call started: the fast path took it
      })
      expect((await replied).status).toBe(200)
      expect(order).toEqual(["reply 200", "line 200"])
    } finally {
      await close()
    }
  })

  it("a defect in the handler's plain code is the request's 500 (and its line), not an exception out of the handler", async () => {
    const writes: Array<string> = []
    const { handler, close } = await handlerWith(LogLevel.Info, RequestLog.make({ sink: (c) => writes.push(c) }))
    try {
      const broken: Http.Incoming = {
        ...request("defect-1"),
        headers: new Proxy({ "x-request-id": "defect-1" } as Record<string, string | undefined>, {
          get: (target, name) => {
            if (name === "authorization") throw new Error("boom")
            return target[name as string]
          }
        })
      }
      const quiet = Logger.replace(Logger.defaultLogger, Logger.make(() => {}))
      const reply = await Effect.runPromise(Effect.provide(handler(broken), quiet))
      expect(reply.status).toBe(500)
      await nextTurn()
      expect(writes.join("")).toContain(`"requestId":"defect-1"`)
      expect(writes.join("")).toContain(`"status":500`)
    } finally {
      await close()
    }
  })

  it("a defect in the fast path's plain code is the request's 500 with its line, not an exception out of `fast`", async () => {
    const writes: Array<string> = []
    const { caller, handler, close } = await handlerWith(LogLevel.Info, RequestLog.make({ sink: (c) => writes.push(c) }))
    try {
      const plain = request("fast-defect-1")
      const body = await Effect.runPromise(plain.body)
      const broken: Http.Incoming = {
        ...plain,
        headers: new Proxy({ "x-request-id": "fast-defect-1" } as Record<string, string | undefined>, {
          get: (target, name) => {
            if (name === "authorization") throw new Error("boom")
            return target[name as string]
          }
        })
      }
      const taken = handler.fast(broken, body!, caller, () => {})
      expect(Effect.isEffect(taken)).toBe(true)
      const quiet = Logger.replace(Logger.defaultLogger, Logger.make(() => {}))
      const reply = await Effect.runPromise(Effect.provide(taken as Effect.Effect<Http.Reply>, quiet))
      expect(reply.status).toBe(500)
      await nextTurn()
      const line = writes.join("").split("\n").find((l) => l.includes(`"requestId":"fast-defect-1"`))
      expect(line).toBeDefined()
      expect(JSON.parse(line!)).toMatchObject({ status: 500, path: "/v1/chat/completions" })
    } finally {
      await close()
    }
  })
})
