/**
 * The operator console's server side: `GET /console` and `GET /admin/events`
 * over real HTTP with fake upstreams. Who may open them, what the event
 * stream says (snapshots, breaker transitions, the request tail), and that
 * it never carries a prompt, a completion or a secret. The feed's own
 * promises (a slow console is dropped, never waited for; no console, no
 * tail) are tested on Events.make directly.
 */
import * as Effect from "effect/Effect"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import { afterAll, describe, expect, it } from "vitest"
import * as Events from "../src/Events.js"
import { testBed, type TestServer } from "./helpers/e2e.js"
import { OUTAGE_SCENARIO } from "./helpers/scenarios.js"
import { runCli } from "./helpers/process.js"

const GATEWAY_KEY = "gw-key-CONSOLE-SECRET-1"
const ADMIN_KEY = "admin-key-CONSOLE-SECRET-2"
const UPSTREAM_KEY = "sk-upstream-CONSOLE-SECRET-3"
const PROMPT = "PROMPT-CONSOLE-SECRET-4 tell me everything"
const COMPLETION = "COMPLETION-CONSOLE-SECRET-5 here it is"

const { fake, serve } = testBed()

const start = async (extra = "") => {
  const a = await fake("alpha", {}, { reply: () => COMPLETION })
  const b = await fake("beta", {}, { reply: () => COMPLETION })
  const server = await serve(`
server: { adminKey: "${ADMIN_KEY}" ${extra} }
keys:
  - { name: team, key: "${GATEWAY_KEY}", budgetUsd: 10 }
upstreams:
  - { name: alpha, baseUrl: "${a.url}", apiKey: "${UPSTREAM_KEY}", models: [gpt-4.1], priority: 1 }
  - { name: beta, baseUrl: "${b.url}", apiKey: "${UPSTREAM_KEY}", models: [gpt-4.1], priority: 2 }
breaker: { failureThreshold: 3, openDuration: 30s }
retry: { maxRetries: 0 }
`)
  return { server, a, b }
}

const chat = (server: TestServer, content = PROMPT) =>
  fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${GATEWAY_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content }] })
  }).then(async (r) => ({ status: r.status, text: await r.text() }))

/** Reads `/admin/events` for `ms` (while `during` runs), and returns what came. */
const readEvents = async (server: TestServer, ms: number, during: () => Promise<unknown> = async () => {}) => {
  const controller = new AbortController()
  const res = await fetch(`${server.url}/admin/events`, {
    headers: { authorization: `Bearer ${ADMIN_KEY}` },
    signal: controller.signal
  })
  expect(res.status).toBe(200)
  expect(res.headers.get("content-type")).toBe("text/event-stream")
  const reader = res.body!.getReader()
  const decoder = new TextDecoder()
  let text = ""
  const reading = (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read()
        if (done) return
        text += decoder.decode(value, { stream: true })
      }
    } catch {
      // aborted
    }
  })()
  await during()
  await new Promise((resolve) => setTimeout(resolve, ms))
  controller.abort()
  await reading
  return text
}

/** The events of an SSE text, parsed. */
const parse = (text: string) =>
  text.split("\n\n").flatMap((block) => {
    const event = /^event: (.*)$/m.exec(block)?.[1]
    const data = /^data: (.*)$/m.exec(block)?.[1]
    return event === undefined || data === undefined ? [] : [{ event, data: JSON.parse(data) as any }]
  })

describe("GET /console and GET /admin/events: who may open them", () => {
  it("refuses missing keys and gateway keys with 401; the admin key gets the page and the stream", async () => {
    const { server } = await start()
    for (const path of ["/console", "/admin/events"]) {
      const none = await fetch(`${server.url}${path}`)
      expect(none.status, `${path} without a key`).toBe(401)
      const gateway = await fetch(`${server.url}${path}`, { headers: { authorization: `Bearer ${GATEWAY_KEY}` } })
      expect(gateway.status, `${path} with a gateway key`).toBe(401)
      const body = await gateway.text()
      expect(body).not.toContain("alpha")
    }
    const page = await fetch(`${server.url}/console`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
    expect(page.status).toBe(200)
    expect(page.headers.get("content-type")).toContain("text/html")
    const csp = page.headers.get("content-security-policy") ?? ""
    expect(csp).toContain("default-src 'none'")
    expect(csp).toContain("frame-ancestors 'none'")
    const html = await page.text()
    expect(html).toContain("<script>")
    // No CDN, no other file: everything is inline.
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href="(?!data:)|https?:\/\/(?!www\.w3\.org\/2000\/svg)/)
    const events = parse(await readEvents(server, 300))
    expect(events.map((e) => e.event).slice(0, 2)).toEqual(["hello", "snapshot"])
    expect(events[1]!.data.upstreams.map((u: { name: string }) => u.name)).toEqual(["alpha", "beta"])
  })

  it("server.console: false turns both off (404)", async () => {
    const { server } = await start(", console: false")
    const page = await fetch(`${server.url}/console`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
    expect(page.status).toBe(404)
    const events = await fetch(`${server.url}/admin/events`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
    expect(events.status).toBe(404)
  })
})

describe("GET /admin/events: what it says", () => {
  it("streams snapshots each second, the request tail and breaker transitions with their reason", async () => {
    const { server, a } = await start()
    const text = await readEvents(server, 2_300, async () => {
      expect((await chat(server)).status).toBe(200)
      a.setFaults({ status: 500 })
      for (let i = 0; i < 3; i++) expect((await chat(server)).status).toBe(200)
    })
    const events = parse(text)
    const snapshots = events.filter((e) => e.event === "snapshot")
    expect(snapshots.length).toBeGreaterThanOrEqual(3)
    const requests = events.filter((e) => e.event === "request").map((e) => e.data)
    expect(requests.length).toBe(4)
    expect(requests[0]).toMatchObject({ key: "team", model: "gpt-4.1", upstream: "alpha", status: 200, attempts: 1 })
    expect(requests[3]).toMatchObject({ upstream: "beta", attempts: 2 })
    const breaker = events.find((e) => e.event === "breaker")?.data
    expect(breaker).toMatchObject({ breaker: "alpha", from: "Closed", to: "Open", reason: "3 consecutive failures" })
    const last = snapshots.at(-1)!.data
    const alpha = last.upstreams.find((u: { name: string }) => u.name === "alpha")
    expect(alpha).toMatchObject({ state: "open", breaker: "Open", breakerReason: "3 consecutive failures" })
    expect(alpha.openUntil).toBeGreaterThan(Date.now())
    expect(alpha.requestsLastMinute).toBe(4)
    expect(alpha.failuresLastMinute).toBe(3)
    expect(last.keys[0]).toMatchObject({ name: "team", budgetUsd: 10 })
  })

  it("never carries a prompt, a completion, an upstream key, a gateway key or the admin key", async () => {
    const { server, b } = await start()
    const text = await readEvents(server, 1_500, async () => {
      for (let i = 0; i < 5; i++) await chat(server)
      b.setFaults({ rate429: 1, retryAfter: "30" })
      await fetch(`${server.url}/admin/upstreams/alpha/open`, { method: "POST", headers: { authorization: `Bearer ${ADMIN_KEY}` } })
      await chat(server)
      // A request refused for its key, and one with a bad body.
      await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${PROMPT}` }, body: "{}" })
      await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${GATEWAY_KEY}` },
        body: JSON.stringify({ model: "gpt-4.1", messages: PROMPT })
      })
    })
    const events = parse(text)
    // The scan saw real traffic: the tail, a cooldown, a forced-open breaker.
    expect(events.filter((e) => e.event === "request").length).toBeGreaterThanOrEqual(7)
    expect(events.some((e) => e.event === "cooldown" && e.data.upstream === "beta" && e.data.reason === "rate-limited")).toBe(true)
    expect(events.some((e) => e.event === "breaker" && e.data.to === "ForcedOpen")).toBe(true)
    for (const secret of [PROMPT, "PROMPT-CONSOLE", COMPLETION, "COMPLETION-CONSOLE", UPSTREAM_KEY, GATEWAY_KEY, ADMIN_KEY]) {
      expect(text.includes(secret), secret).toBe(false)
    }
  })
})

describe("GET /admin/events across a config reload", () => {
  const dir = mkdtempSync(join(tmpdir(), "breakwater-console-reload-"))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it("a reload ends the open streams; a rotated admin key then gets 401", async () => {
    const a = await fake("alpha")
    const file = join(dir, "gateway.yaml")
    const yaml = (admin: string) => `
server: { adminKey: "${admin}" }
upstreams:
  - { name: alpha, baseUrl: "${a.url}", apiKey: "${UPSTREAM_KEY}", models: [gpt-4.1] }
`
    writeFileSync(file, yaml(ADMIN_KEY))
    const server = await serve(yaml(ADMIN_KEY), { reloadFrom: file })
    const res = await fetch(`${server.url}/admin/events`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
    expect(res.status).toBe(200)
    const reader = res.body!.getReader()
    await reader.read()
    writeFileSync(file, yaml("admin-key-ROTATED"))
    const reload = await fetch(`${server.url}/admin/reload`, { method: "POST", headers: { authorization: `Bearer ${ADMIN_KEY}` } })
    expect(reload.status).toBe(200)
    // The stream ends within about a second (the feed checks each second).
    const started = Date.now()
    for (;;) {
      const { done } = await reader.read()
      if (done) break
      expect(Date.now() - started).toBeLessThan(3_000)
    }
    const again = await fetch(`${server.url}/admin/events`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
    expect(again.status).toBe(401)
    await again.text()
  })
})

describe("Events.make: the feed", () => {
  const upstreams: Events.Source["upstreams"] = []
  const source: Events.Source = {
    upstreams,
    health: undefined,
    keys: Effect.succeed([]),
    cooldowns: { start: () => Effect.void, clear: () => Effect.void, active: () => Effect.succeed(new Map()) },
    run: Effect.runPromise
  }
  const logged = { key: "team", model: "m", upstream: "alpha", attempts: 1, cache: "miss", costUsd: 0.001 }

  it("keeps no request tail while no console is connected", async () => {
    const feed = Events.make(() => source)
    for (let i = 0; i < 10; i++) feed.record(logged, 200, 12)
    const first = await Effect.runPromise(Stream.runHead(feed.subscribe(() => false)).pipe(Effect.map((o) => o._tag === "Some" ? o.value : "")))
    const hello = parse(first).find((e) => e.event === "hello")!.data
    expect(hello.tail).toEqual([])
    expect(feed.subscribers()).toBe(0)
    feed.close()
  })

  it("drops a console that does not read, without ever making the relay wait", async () => {
    const feed = Events.make(() => source)
    // A subscriber whose stream is started (it subscribes) but whose chunks are never taken past the first.
    const fiber = Effect.runFork(Stream.runForEach(feed.subscribe(() => false), () => Effect.never))
    for (let i = 0; i < 100 && feed.subscribers() === 0; i++) await new Promise((r) => setTimeout(r, 10))
    expect(feed.subscribers()).toBe(1)
    const started = performance.now()
    // Far more than the buffer holds (the tail is sampled, so snapshots and cooldowns fill it too).
    const store = feed.observe(source.cooldowns)
    for (let i = 0; i < 20_000; i++) {
      feed.record(logged, 200, 12)
      Effect.runSync(store.start("alpha", { until: Date.now() + 1_000 + i, reason: "rate-limited" }))
    }
    const elapsed = performance.now() - started
    expect(feed.subscribers()).toBe(0)
    expect(elapsed).toBeLessThan(2_000)
    await Effect.runPromise(Fiber.interrupt(fiber))
    feed.close()
  })
})

describe("breakwater simulate --html", () => {
  const dir = mkdtempSync(join(tmpdir(), "breakwater-console-"))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it("writes one self-contained file: the console's charts, the run's data, the outage to shade", { timeout: 30_000 }, async () => {
    const scenario = join(dir, "outage.yaml")
    writeFileSync(scenario, OUTAGE_SCENARIO)
    const file = join(dir, "report.html")
    const out = await runCli(["simulate", scenario, "--html", file])
    expect(out.code, out.stderr).toBe(0)
    expect(out.stderr).toContain(`report written to ${file}`)
    const html = readFileSync(file, "utf8")
    expect(html.startsWith("<!doctype html>")).toBe(true)
    // Self-contained: no file or address is loaded.
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=|https?:\/\/(?!www\.w3\.org\/2000\/svg)/)
    expect(html).toContain("window.BreakwaterCharts") // the console's chart code
    expect(html).toContain('"outages":[{"from":60000,"to":180000,"label":"primary down"}]')
    expect(html).toContain("Client-visible error rate per minute")
    expect(html).toContain("Breakwater simulation: console-outage")
  })
})
