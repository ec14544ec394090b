/**
 * End-to-end: what an upstream's own failures look like to callers and to the
 * operator, through the real server on 127.0.0.1, fake upstreams over HTTP
 * and the official SDK. An upstream refusing its own key (401/403) or lacking
 * the model (404 model_not_found) fails over; every relayed error says which
 * upstream it came from.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import OpenAI, { BadRequestError, InternalServerError, NotFoundError } from "openai"
import { describe, expect, it } from "vitest"
import * as Demo from "../src/Demo.js"
import * as Server from "../src/Server.js"
import { captured, openAIError, recordingFetch, testBed, thrown, type TestServer } from "./helpers/e2e.js"

const GATEWAY_KEY = "gw-key-UPSTREAMS-SECRET-1"
const ADMIN_KEY = "admin-key-UPSTREAMS-SECRET-2"
const upstreamKey = (name: string) => `sk-upstream-${name}-SECRET-3`

const { fake, serve: startTracked } = testBed()
/** A server over `upstreams` (priorities in order), with a gateway key and an admin key. */
const serve = async (upstreams: ReadonlyArray<FakeUpstream.FakeUpstream>, extra = "", models = "[gpt-4.1]") => {
  const server = await startTracked(`
server: { adminKey: "${ADMIN_KEY}" }
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
${
    upstreams.map((u, i) =>
      `  - { name: ${u.name}, baseUrl: "${u.url}", apiKey: "${upstreamKey(u.name)}", models: ${models}, priority: ${i + 1}, timeout: 5s }`
    ).join("\n")
  }
retry: { maxRetries: 0 }
${extra}
`)
  return server
}

const sdk = (server: TestServer) =>
  new OpenAI({ baseURL: `${server.url}/v1`, apiKey: GATEWAY_KEY, maxRetries: 0, timeout: 10_000, fetch: recordingFetch })

const chat = (content: string, model = "gpt-4.1") => ({ model, messages: [{ role: "user" as const, content }] })

const admin = async (server: TestServer) => {
  const res = await recordingFetch(`${server.url}/admin/upstreams`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
  return (await res.json() as { data: Array<Record<string, unknown>> }).data
}

const metrics = async (server: TestServer) => (await recordingFetch(`${server.url}/metrics`)).text()

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `f` every 50 ms until it returns true, for at most `ms`. */
const eventually = async (ms: number, f: () => Promise<boolean>): Promise<boolean> => {
  const until = Date.now() + ms
  while (Date.now() < until) {
    if (await f()) return true
    await sleep(50)
  }
  return false
}

describe("an upstream rejecting its own key (401/403)", () => {
  for (const status of [401, 403]) {
    it(`${status}: the caller is served by the next upstream; the first is out (auth-failed), in admin, metrics and an ERROR log`, async () => {
      const a = await fake(`revoked${status}`)
      const b = await fake(`spare${status}`)
      const server = await serve([a, b], "healthCheck: { interval: 1h }")
      // The key is revoked after start-up: the first client request meets it.
      a.setFaults({ status })
      const { data, response } = await sdk(server).chat.completions.create(chat("hello")).withResponse()
      expect(data.choices[0]?.message.content).toBe(`Hello from ${b.name}`)
      expect(response.headers.get("x-breakwater-upstream")).toBe(b.name)
      expect(response.headers.get("x-breakwater-attempts")).toBe("2")

      // Out of rotation: the next request does not call it.
      const before = a.counters().chat
      const again = await sdk(server).chat.completions.create(chat("again")).withResponse()
      expect(again.response.headers.get("x-breakwater-upstream")).toBe(b.name)
      expect(again.response.headers.get("x-breakwater-attempts")).toBe("1")
      expect(a.counters().chat).toBe(before)

      const view = (await admin(server)).find((u) => u["name"] === a.name)
      expect(view).toMatchObject({ health: "auth-failed", cooldownReason: "auth-failed", breaker: "Closed" })
      const until = Date.parse(String(view?.["cooldownUntil"]))
      expect(until - Date.now()).toBeGreaterThan(4 * 60_000)
      expect(until - Date.now()).toBeLessThanOrEqual(5 * 60_000)

      const text = await metrics(server)
      expect(text).toMatch(new RegExp(`breakwater_cooldowns_total\\{[^}]*upstream="${a.name}"[^}]*\\} 1|breakwater_cooldowns_total\\{[^}]*reason="auth-failed"[^}]*upstream="${a.name}"[^}]*\\} 1`))
      expect(text).toMatch(new RegExp(`breakwater_upstream_requests_total\\{[^}]*outcome="UpstreamAuthFailed"[^}]*\\} 1`))

      const errors = captured.logs.filter((l) => l.includes(`"level":"ERROR"`) && l.includes(`"upstream":"${a.name}"`))
      expect(errors.length).toBeGreaterThanOrEqual(1)
      expect(errors[0]).toContain("rejected its API key")
      expect(captured.logs.join("\n")).not.toContain(upstreamKey(a.name))
    })
  }

  it("nothing else can serve -> 502 upstream_auth_failed naming the upstream (not a 401 the caller would take for its own)", async () => {
    const only = await fake("lonely", { status: 401, modelsStatus: 401 })
    const server = await serve([only], "healthCheck: { interval: 1h }")
    for (const content of ["first", "second"]) {
      const e = await thrown(() => sdk(server).chat.completions.create(chat(content)))
      expect(e).toBeInstanceOf(InternalServerError)
      expect(e.status).toBe(502)
      const body = openAIError(JSON.stringify({ error: e.error }))
      expect(body).toMatchObject({ type: "upstream_error", code: "upstream_auth_failed", param: null })
      expect(body.message).toContain("Upstream 'lonely' rejected the API key the gateway holds for it")
      expect(body.message).not.toContain(upstreamKey("lonely"))
      expect(e.headers?.get("x-breakwater-upstream")).toBe("lonely")
    }
  })

  it("the key is replaced: the next health probe with it succeeds and the upstream serves again at once", async () => {
    const only = await fake("rotated", { status: 401, modelsStatus: 401 })
    const server = await serve([only], "healthCheck: { interval: 200ms }")
    const e = await thrown(() => sdk(server).chat.completions.create(chat("before")))
    expect(e.status).toBe(502)
    const fixedAt = Date.now()
    only.setFaults({})
    const back = await eventually(5_000, async () => {
      const res = await recordingFetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${GATEWAY_KEY}` },
        body: JSON.stringify(chat("after"))
      })
      await res.text()
      return res.status === 200
    })
    expect(back).toBe(true)
    // Within a few probe intervals, not the 5 min of the cooldown.
    expect(Date.now() - fixedAt).toBeLessThan(5_000)
    expect((await admin(server))[0]).toMatchObject({ health: "healthy", cooldownReason: null })
  })
})

describe("an upstream without the model (404 model_not_found)", () => {
  it("fails over to the next upstream serving the model", async () => {
    const a = await fake("nomodel-a", { status: 404 })
    const b = await fake("nomodel-b")
    const server = await serve([a, b])
    const { data, response } = await sdk(server).chat.completions.create(chat("which model?")).withResponse()
    expect(data.choices[0]?.message.content).toBe("Hello from nomodel-b")
    expect(response.headers.get("x-breakwater-attempts")).toBe("2")
    expect(a.counters().byStatus[404]).toBe(1)
  })

  it("every upstream says not found -> 404 NotFoundError model_not_found, with x-breakwater-upstream", async () => {
    const a = await fake("gone-a", { status: 404 })
    const b = await fake("gone-b", { status: 404 })
    const server = await serve([a, b])
    const e = await thrown(() => sdk(server).chat.completions.create(chat("anyone?")))
    expect(e).toBeInstanceOf(NotFoundError)
    expect(e.code).toBe("model_not_found")
    expect(e.headers?.get("x-breakwater-upstream")).toBe("gone-b")
    expect(a.counters().chat + b.counters().chat).toBe(2)
  })
})

describe("x-breakwater-upstream on every relayed upstream error", () => {
  it("400 relayed from an upstream", async () => {
    const a = await fake("hdr-400-a", { status: 400 })
    const b = await fake("hdr-400-b")
    const server = await serve([a, b])
    const e = await thrown(() => sdk(server).chat.completions.create(chat("bad")))
    expect(e).toBeInstanceOf(BadRequestError)
    expect(e.headers?.get("x-breakwater-upstream")).toBe("hdr-400-a")
  })

  it("502 all failed: the last upstream tried", async () => {
    const a = await fake("hdr-502-a", { status: 500 })
    const b = await fake("hdr-502-b", { status: 500 })
    const server = await serve([a, b])
    const e = await thrown(() => sdk(server).chat.completions.create(chat("doomed")))
    expect(e.status).toBe(502)
    expect(e.headers?.get("x-breakwater-upstream")).toBe("hdr-502-b")
  })

  it("503 none available: the last upstream considered", async () => {
    const a = await fake("hdr-503-a", { status: 429, retryAfter: "60" })
    const b = await fake("hdr-503-b", { status: 429, retryAfter: "60" })
    const server = await serve([a, b])
    await thrown(() => sdk(server).chat.completions.create(chat("first")))
    const e = await thrown(() => sdk(server).chat.completions.create(chat("second")))
    expect(e.status).toBe(503)
    expect(e.headers?.get("x-breakwater-upstream")).toBe("hdr-503-b")
  })

  it("504 deadline: the upstream being called", async () => {
    const a = await fake("hdr-504-a", { hang: 1 })
    const server = await serve([a], "routing: { requestTimeout: 300ms }")
    const e = await thrown(() => sdk(server).chat.completions.create(chat("hello?")))
    expect(e.status).toBe(504)
    expect(e.headers?.get("x-breakwater-upstream")).toBe("hdr-504-a")
  })

  it("an unknown model involves no upstream: no header", async () => {
    const a = await fake("hdr-404-a")
    const server = await serve([a])
    const e = await thrown(() => sdk(server).chat.completions.create(chat("x", "no-such-model")))
    expect(e.status).toBe(404)
    expect(e.headers?.get("x-breakwater-upstream")).toBeNull()
  })
})

describe("GET /v1/models and /v1/models/{id}", () => {
  it("demo mode: lists the demo's models (the OpenAI fakes', the outage's gpt-5, the fallback claude-sonnet-4.5), not nothing", async () => {
    const scope = Effect.runSync(Scope.make())
    try {
      const demo = await Effect.runPromise(Demo.make({ port: 0, host: "127.0.0.1" }).pipe(Scope.extend(scope)))
      const running = await Effect.runPromise(Server.serve(demo.config).pipe(Scope.extend(scope)))
      const client = new OpenAI({ baseURL: `${running.url}/v1`, apiKey: "demo", maxRetries: 0, fetch: recordingFetch })
      const ids = async () => (await client.models.list()).data.map((m) => m.id)
      expect(await eventually(4_000, async () => (await ids()).length > 0)).toBe(true)
      expect(await ids()).toEqual([...Demo.DEMO_MODELS, Demo.OUTAGE_MODEL, Demo.FALLBACK_MODEL])
      expect((await client.models.retrieve("gpt-4.1-mini")).id).toBe("gpt-4.1-mini")
      await Server.drain(running, "200 millis")
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  }, 15_000)

  it("demo-style \"*\" upstreams: the models their /models probes report, plus configured models and aliases", async () => {
    const a = await fake("models-a", {}, { models: ["gpt-4.1", "gpt-4.1-mini", "o3"] })
    const b = await fake("models-b", {}, { models: ["gpt-4.1", "deepseek/deepseek-v3.2"] })
    const server = await startTracked(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: models-a, baseUrl: "${a.url}", apiKey: "${upstreamKey("models-a")}", models: "*", aliases: { smart: o3 } }
  - { name: models-b, baseUrl: "${b.url}", apiKey: "${upstreamKey("models-b")}", models: "*" }
healthCheck: { interval: 200ms }
`)
      const client = sdk(server)
    const ids = async () => (await client.models.list()).data.map((m) => m.id)
    // The first probes run at start; poll briefly rather than guess.
    expect(await eventually(4_000, async () => (await ids()).includes("deepseek/deepseek-v3.2"))).toBe(true)
    expect(await ids()).toEqual(["smart", "deepseek/deepseek-v3.2", "gpt-4.1", "gpt-4.1-mini", "o3"])
    const page = await client.models.list()
    for (const m of page.data) expect(Object.keys(m).sort()).toEqual(["created", "id", "object", "owned_by"])
    expect(page.data.find((m) => m.id === "o3")).toMatchObject({ object: "model", owned_by: "fake" })

    const one = await client.models.retrieve("gpt-4.1-mini")
    expect(one).toMatchObject({ id: "gpt-4.1-mini", object: "model" })
    // An id with a slash, as the SDK encodes it.
    expect((await client.models.retrieve("deepseek/deepseek-v3.2")).id).toBe("deepseek/deepseek-v3.2")
    expect((await client.models.retrieve("smart")).id).toBe("smart")

    const missing = await thrown(() => client.models.retrieve("no-such-model"))
    expect(missing).toBeInstanceOf(NotFoundError)
    expect(openAIError(JSON.stringify({ error: missing.error }))).toEqual({
      message: "The model 'no-such-model' does not exist or is not served by this gateway.",
      type: "invalid_request_error",
      param: "model",
      code: "model_not_found"
    })
  }, 15_000)

  it("configured models are listed before any probe, and a model retrieves without a key only with 401", async () => {
    const a = await fake("models-c", {}, { models: ["not-configured"] })
    const server = await serve([a], "", "[gpt-4.1, text-embedding-3-small]")
    expect((await sdk(server).models.list()).data.map((m) => m.id)).toEqual(["gpt-4.1", "text-embedding-3-small"])
    expect((await sdk(server).models.retrieve("gpt-4.1")).id).toBe("gpt-4.1")
    // What a listed upstream reports beyond its configured models is not served, so not listed.
    expect((await thrown(() => sdk(server).models.retrieve("not-configured"))).status).toBe(404)
    const anonymous = await recordingFetch(`${server.url}/v1/models/gpt-4.1`)
    expect(anonymous.status).toBe(401)
    const post = await recordingFetch(`${server.url}/v1/models/gpt-4.1`, {
      method: "POST",
      headers: { authorization: `Bearer ${GATEWAY_KEY}` }
    })
    expect(post.status).toBe(405)
    const bad = await recordingFetch(`${server.url}/v1/models/%E0%A4%A`, { headers: { authorization: `Bearer ${GATEWAY_KEY}` } })
    expect(bad.status).toBe(400)
  })
})
