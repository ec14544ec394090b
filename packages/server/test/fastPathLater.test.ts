/**
 * The fast path's admission by a store that decides elsewhere (Redis), at
 * the handler: `Http.Handler.fast` hands back the request's cancel while the
 * store has not answered, starts the call from the answer, and a caller who
 * hangs up before the answer is logged as 499 with no upstream call. The
 * store here holds each decision until the test releases it (the memory
 * store's arithmetic), so the moments are the test's, not a race.
 */
import { RateLimiter, Relay, UpstreamClient } from "@breakwater/core"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Runtime from "effect/Runtime"
import { describe, expect, it } from "vitest"
import * as Http from "../src/Http.js"
import * as RequestLog from "../src/RequestLog.js"
import { configOf } from "./helpers/e2e.js"
import { buildGateway, COMPLETION } from "./helpers/handler.js"

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

/** The real handler, its rate limits in a store that answers when `release` is called, and an upstream that answers at once. */
const setup = async () => {
  const config = configOf(`
keys:
  - { name: team, key: sk-team-key, requestsPerMinute: 2 }
upstreams:
  - { name: memory, baseUrl: "http://127.0.0.1:1/v1", apiKey: sk-up, models: ["gpt-4.1"], maxConcurrent: 100 }
cache: { enabled: false }
`)
  let calls = 0
  const client = UpstreamClient.UpstreamClient.of({
    post: () => {
      calls++
      return Effect.succeed({ status: 200, headers: { "content-type": "application/json" }, text: COMPLETION })
    },
    get: () => Effect.succeed({ status: 200, headers: {}, text: "{}" }),
    postStream: () => Effect.die("not used")
  })
  const memory = Effect.runSync(RateLimiter.makeStoreMemory)
  const held: Array<() => void> = []
  let asked = 0
  const remote = RateLimiter.RateLimiterStore.of({
    acquire: memory.acquire,
    unsafeAcquireAsync: (requests, done) => {
      asked++
      // One limit (requests per minute) here: one request a call.
      held.push(() => done(requests.map((req) => memory.unsafeAcquire!(req, Date.now()))))
    }
  })
  const { built, close } = await buildGateway(config, client, Layer.succeed(RateLimiter.RateLimiterStore, remote))
  const lines: Array<Record<string, unknown>> = []
  const requestLog = RequestLog.make({
    sink: (chunk) => {
      for (const l of chunk.split("\n")) if (l !== "") lines.push(JSON.parse(l) as Record<string, unknown>)
    }
  })
  const context = Context.add(built, RequestLog.RequestLog, requestLog)
  const handler = await Effect.runPromise(Effect.provide(Http.make({ maxBodyBytes: 1 << 20, adminKey: undefined }), context))
  const runtime = await Effect.runPromise(Effect.provide(Effect.runtime<never>(), context))
  const caller = Relay.callerOf(runtime)
  const body = JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "hello" }] })
  /**
   * One request through the fast path: what `fast` returned, what `reply` got
   * (as a Reply, effects run), and how it got it (a Reply, or an effect for a fiber to run).
   */
  const send = (id: string) => {
    const incoming: Http.Incoming = {
      method: "POST",
      url: "/v1/chat/completions",
      headers: { authorization: "Bearer sk-team-key", "x-request-id": id },
      body: Effect.succeed(body),
      state: undefined
    }
    const replies: Array<Http.Reply> = []
    const kinds: Array<"reply" | "effect"> = []
    const taken = handler.fast(incoming, body, caller, (answer) => {
      kinds.push(Effect.isEffect(answer) ? "effect" : "reply")
      if (Effect.isEffect(answer)) Runtime.runPromise(runtime)(answer).then((r) => replies.push(r))
      else replies.push(answer)
    })
    return { taken, replies, kinds }
  }
  const release = () => {
    while (held.length > 0) held.shift()!()
  }
  return {
    send,
    release,
    lines,
    calls: () => calls,
    asked: () => asked,
    close
  }
}

describe("the fast path, admitted by a store that decides elsewhere", () => {
  it("waits for the store's answer without a fiber, then calls; over the limit, the 429 with Retry-After", async () => {
    const t = await setup()
    try {
      const first = t.send("later-1")
      // The store has been asked; nothing is answered or called before it answers.
      expect(typeof first.taken).toBe("function")
      expect(t.asked()).toBe(1)
      await nextTurn()
      expect(first.replies).toHaveLength(0)
      expect(t.calls()).toBe(0)
      t.release()
      for (let i = 0; i < 50 && first.replies.length === 0; i++) await nextTurn()
      expect(first.replies.map((r) => r.status)).toEqual([200])
      // Answered as a Reply, not as an effect handed to a fiber.
      expect(first.kinds).toEqual(["reply"])
      expect(t.calls()).toBe(1)
      t.send("later-2")
      const third = t.send("later-3")
      t.release()
      for (let i = 0; i < 50 && third.replies.length === 0; i++) await nextTurn()
      expect(third.replies[0]?.status).toBe(429)
      expect(third.replies[0]?.headers["retry-after"]).toMatch(/^\d+$/)
      expect(t.calls()).toBe(2)
      for (let i = 0; i < 50 && !t.lines.some((l) => l["requestId"] === "later-3"); i++) await nextTurn()
      expect(t.lines.find((l) => l["requestId"] === "later-3")).toMatchObject({ status: 429, key: "team" })
    } finally {
      await t.close()
    }
  })

  it("a caller who hangs up before the store answers: a 499 line, no upstream call, no reply", async () => {
    const t = await setup()
    try {
      const { replies, taken } = t.send("gone-1")
      expect(typeof taken).toBe("function")
      let left: unknown
      ;(taken as Relay.Cancel)((handoff) => {
        left = handoff
      })
      expect(left).toBe(Effect.void)
      // The store answers after all (admitted): nothing more happens.
      t.release()
      for (let i = 0; i < 5; i++) await nextTurn()
      expect(replies).toHaveLength(0)
      expect(t.calls()).toBe(0)
      const lines = t.lines.filter((l) => l["requestId"] === "gone-1")
      expect(lines).toHaveLength(1)
      expect(lines[0]).toMatchObject({ status: 499, key: "team", model: "gpt-4.1", upstream: null })
    } finally {
      await t.close()
    }
  })
})
