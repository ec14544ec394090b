/**
 * Config reload without a restart (`POST /admin/reload`, SIGHUP): a valid
 * file swaps keys, limits, upstreams and routing for new requests at once,
 * while requests in flight (streams included) finish on the config they
 * started on; upstreams whose name and URL did not change keep their
 * breaker, cooldown and latency; keys keep their spend and rate-limit
 * counters; an invalid file is refused with `check-config`'s messages and
 * the running config keeps serving; restart-only settings are named.
 */
import type * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import * as Effect from "effect/Effect"
import { unlinkSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import * as Config from "../src/Config.js"
import * as Reload from "../src/Reload.js"
import { captured, configOf, freePort, openAIError, recordingFetch, testBed } from "./helpers/e2e.js"
import { cli, processBed } from "./helpers/process.js"

const UPSTREAM_KEY = "sk-upstream-SECRET-reload-1"
const UPSTREAM_KEY_2 = "sk-upstream-SECRET-reload-2"
const ADMIN_KEY = "admin-key-RELOAD-SECRET"
const KEY_A = "gw-key-RELOAD-A-SECRET"
const KEY_B = "gw-key-RELOAD-B-SECRET"

const { fake, serve } = testBed()
const { dir, fake: processFake } = processBed("reload")

let files = 0
/** A config file in the test folder with `text`; returns its path and a way to rewrite it. */
const configFile = (text: string) => {
  const path = join(dir, `reload-${files++}.yaml`)
  writeFileSync(path, text)
  return { path, write: (next: string) => writeFileSync(path, next) }
}

const up = (f: FakeUpstream.FakeUpstream, extra = "", key = UPSTREAM_KEY) =>
  `  - { name: ${f.name}, baseUrl: "${f.url}", apiKey: "${key}", models: [gpt-4.1]${extra} }`

const yaml = (upstreams: ReadonlyArray<string>, rest = "", keys = `  - { name: team-a, key: "${KEY_A}" }`) => `
server: { adminKey: "${ADMIN_KEY}", logLevel: debug }
keys:
${keys}
upstreams:
${upstreams.join("\n")}
cache: { enabled: false }
${rest}
`

const chat = (url: string, key = KEY_A, content = "hi", stream = false) =>
  fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content }], ...(stream ? { stream: true } : {}) })
  })

const admin = async (url: string, method: "GET" | "POST", path: string, key: string | null = ADMIN_KEY) => {
  const res = await recordingFetch(`${url}${path}`, { method, headers: key === null ? {} : { authorization: `Bearer ${key}` } })
  return { status: res.status, text: await res.text() }
}

const reload = async (url: string) => {
  const r = await admin(url, "POST", "/admin/reload")
  return { status: r.status, body: JSON.parse(r.text) as Record<string, unknown> }
}

interface View {
  name: string
  breaker: string
  cooldownUntil: string | null
  cooldownReason: string | null
  requests: number
  failures: number
  latencyMs: number | null
}

const upstreams = async (url: string): Promise<Array<View>> =>
  (JSON.parse((await admin(url, "GET", "/admin/upstreams")).text) as { data: Array<View> }).data

const logLines = (re: RegExp) => captured.logs.filter((l) => re.test(l))

/** Polls `cond` every 10 ms until it holds or `ms` pass; whether it held. */
const until = async (cond: () => boolean, ms = 5_000): Promise<boolean> => {
  const deadline = performance.now() + ms
  while (!cond()) {
    if (performance.now() > deadline) return false
    await new Promise((r) => setTimeout(r, 10))
  }
  return true
}

describe("POST /admin/reload", { timeout: 30_000 }, () => {
  it("under load: a client sending continuously while reloads swap upstreams gets 200 every time; streams in flight finish on the old config", async () => {
    const a = await fake("load-a")
    const b = await fake("load-b")
    const c = await fake("load-c", { streamDelayMs: 200 })
    const file = configFile(yaml([up(a), up(c, `, priority: 9`)]))
    const server = await serve(yaml([up(a), up(c, `, priority: 9`)]), { reloadFrom: file.path })

    const released = () => logLines(/"msg":"previous config released"/).length
    const releasedBefore = released()
    // A stream on c that outlives the reloads below (about a second of paced events).
    file.write(yaml([up(c)]))
    expect((await reload(server.url)).status).toBe(200)
    const stream = chat(server.url, KEY_A, "long stream", true).then(async (res) => ({ status: res.status, text: await res.text() }))
    expect(await until(() => c.counters().streamsOpen === 1)).toBe(true)
    file.write(yaml([up(a)]))
    expect((await reload(server.url)).status).toBe(200)
    // The first config is released (the reload request was its last); the one the stream runs on is not.
    expect(await until(() => released() - releasedBefore === 1)).toBe(true)
    await new Promise((r) => setTimeout(r, 50))
    expect(released() - releasedBefore).toBe(1)
    expect(c.counters().streamsOpen).toBe(1)

    let stop = false
    const statuses = new Map<number, number>()
    const seen = new Set<string>()
    const worker = async () => {
      let n = 0
      while (!stop && n < 2_000) {
        n++
        const res = await chat(server.url, KEY_A, `load ${n}`)
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
        const body = await res.text()
        if (res.status === 200) seen.add(res.headers.get("x-breakwater-upstream") ?? "?")
        else throw new Error(`status ${res.status}: ${body}`)
      }
    }
    const workers = Array.from({ length: 6 }, worker)
    // Swap the upstreams back and forth under that load: a only, b only, a and b.
    const configs = [yaml([up(a)]), yaml([up(b)]), yaml([up(a), up(b)]), yaml([up(b, `, weight: 2`)])]
    for (let i = 0; i < 20; i++) {
      await new Promise((r) => setTimeout(r, 30))
      file.write(configs[i % configs.length]!)
      const r = await reload(server.url)
      expect(r.status).toBe(200)
    }
    await new Promise((r) => setTimeout(r, 60))
    stop = true
    await Promise.all(workers)
    const total = [...statuses.values()].reduce((x, y) => x + y, 0)
    console.log(`reload under load: ${total} requests over 22 reloads, statuses ${JSON.stringify(Object.fromEntries(statuses))}`)
    expect([...statuses.keys()]).toEqual([200])
    expect(total).toBeGreaterThan(50)
    expect(seen).toEqual(new Set(["load-a", "load-b"]))

    // The last config has b only: a gets nothing new.
    const before = a.counters().chat
    for (let i = 0; i < 5; i++) expect((await chat(server.url)).headers.get("x-breakwater-upstream")).toBe("load-b")
    expect(a.counters().chat).toBe(before)

    // The stream began on a config with c only, long replaced: it finished there, whole.
    const s = await stream
    expect(s.status).toBe(200)
    expect(s.text).toContain("\"content\":\"Hello \"")
    expect(s.text.trimEnd().endsWith("data: [DONE]")).toBe(true)
    // Every replaced config is released once its last request has ended, the stream's too.
    expect(await until(() => released() - releasedBefore === 22)).toBe(true)
  })

  it("an invalid file is refused with check-config's messages (400); the running config keeps serving", async () => {
    const a = await fake("invalid-a")
    const text = yaml([up(a)])
    const file = configFile(text)
    const server = await serve(text, { reloadFrom: file.path })
    const bad = yaml([up(a, `, timeout: 30`, UPSTREAM_KEY_2)], "routing: { maxAttempts: many }")
    file.write(bad)
    const expected = (await Effect.runPromise(Effect.flip(Config.load(file.path, {})))).message
    const r = await admin(server.url, "POST", "/admin/reload")
    expect(r.status).toBe(400)
    const error = openAIError(r.text)
    expect(error).toMatchObject({ type: "invalid_request_error", code: "config_invalid" })
    expect(error.message).toBe(expected)
    expect(error.message).toContain("upstreams[0].timeout")
    expect(error.message).toContain("routing.maxAttempts")
    expect(r.text).not.toContain(UPSTREAM_KEY_2)
    const logged = logLines(/"level":"ERROR".*config not reloaded/)
    expect(logged.some((l) => l.includes("upstreams[0].timeout"))).toBe(true)
    // Still the old config.
    const res = await chat(server.url)
    expect(res.status).toBe(200)
    expect(res.headers.get("x-breakwater-upstream")).toBe("invalid-a")

    // A file that is gone: refused too.
    unlinkSync(file.path)
    const gone = await admin(server.url, "POST", "/admin/reload")
    expect(gone.status).toBe(400)
    expect(openAIError(gone.text).message).toBe(`Cannot read config ${file.path}: no such file`)
    expect((await chat(server.url)).status).toBe(200)
    for (const line of captured.logs) expect(line).not.toContain(UPSTREAM_KEY_2)
  })

  it("keeps the breaker, cooldown and latency of upstreams whose name and URL did not change; an upstream at a new URL starts afresh", async () => {
    const a = await fake("state-a", { rate5xx: 1 })
    const b = await fake("state-b", { rate429: 1, retryAfter: "120" })
    const d = await fake("state-d")
    const f = await fake("state-f", { rate429: 1, retryAfter: "120" })
    const f2 = await fake("state-f2")
    const settings = "breaker: { failureThreshold: 2, openDuration: 5m }\nrouting: { maxAttempts: 5 }"
    const first = yaml([up(f, `, priority: 1`), up(a, `, priority: 2`), up(b, `, priority: 3`), up(d, `, priority: 4`)], settings)
    const file = configFile(first)
    const server = await serve(first, { reloadFrom: file.path })
    // f and b answer 429 with Retry-After 120 (cooldowns), a fails twice (its breaker opens), d answers.
    for (let i = 0; i < 2; i++) expect((await chat(server.url)).headers.get("x-breakwater-upstream")).toBe("state-d")
    const before = await upstreams(server.url)
    expect(before.map((u) => [u.name, u.breaker, u.cooldownReason])).toEqual([
      ["state-f", "Closed", "rate-limited"],
      ["state-a", "Open", null],
      ["state-b", "Closed", "rate-limited"],
      ["state-d", "Closed", null]
    ])
    expect(before[3]!.latencyMs).not.toBeNull()

    // a gets another key, weight and breaker threshold (same URL); b and d are unchanged; f moves to a new
    // URL (another endpoint: fresh state, no cooldown); e is new.
    const e = await fake("state-e")
    file.write(
      yaml(
        [
          `  - { name: state-f, baseUrl: "${f2.url}", apiKey: "${UPSTREAM_KEY}", models: [gpt-4.1], priority: 1 }`,
          up(a, `, priority: 2, weight: 3, breaker: { failureThreshold: 9 }`, UPSTREAM_KEY_2),
          up(b, `, priority: 3`),
          up(d, `, priority: 4`),
          up(e, `, priority: 5`)
        ],
        settings
      )
    )
    const r = await reload(server.url)
    expect(r.status).toBe(200)
    expect(r.body).toMatchObject({
      status: "reloaded",
      upstreams: {
        added: ["state-e"],
        removed: [],
        replaced: ["state-f"],
        changed: { "state-a": ["apiKey", "breaker", "weight"] },
        unchanged: ["state-b", "state-d"]
      },
      restartRequired: []
    })
    expect(JSON.stringify(r.body)).not.toContain(UPSTREAM_KEY_2)
    const after = await upstreams(server.url)
    expect(after.map((u) => [u.name, u.breaker, u.cooldownReason])).toEqual([
      ["state-f", "Closed", null],
      ["state-a", "Open", null],
      ["state-b", "Closed", "rate-limited"],
      ["state-d", "Closed", null],
      ["state-e", "Closed", null]
    ])
    expect(after[0]).toMatchObject({ requests: 0, failures: 0, latencyMs: null })
    expect(after[1]).toMatchObject({ requests: before[1]!.requests, failures: 2 })
    expect(after[2]!.cooldownUntil).toBe(before[2]!.cooldownUntil)
    expect(after[2]!.requests).toBe(before[2]!.requests)
    expect(after[3]).toMatchObject({ requests: before[3]!.requests, latencyMs: before[3]!.latencyMs })
    // Traffic: f2 answers first now; f (the old URL) is never called again, nor a (open) nor b (cooling down).
    const calls = [f, a, b].map((x) => x.counters().chat)
    const res = await chat(server.url)
    expect(res.headers.get("x-breakwater-upstream")).toBe("state-f")
    expect(f2.counters().chat).toBe(1)
    expect([f, a, b].map((x) => x.counters().chat)).toEqual(calls)
    const line = logLines(/"msg":"config reloaded \(POST \/admin\/reload\)/).at(-1)!
    expect(line).toContain("+state-e")
    expect(line).toContain("state-a (apiKey, breaker, weight)")
    expect(line).toContain("state-f (new URL)")
    expect(line).not.toContain(UPSTREAM_KEY_2)
  })

  it("swaps keys: a removed key gets 401, a new one works, a kept key keeps its spend and rate-limit counters", async () => {
    const a = await fake("keys-a")
    const keys = (extra: string) => `  - { name: team-a, key: "${KEY_A}", requestsPerMinute: 3, budgetUsd: 10 }\n${extra}`
    const text = yaml([up(a)], "", keys(`  - { name: team-old, key: "${KEY_B}" }`))
    const file = configFile(text)
    const server = await serve(text, { reloadFrom: file.path })
    for (let i = 0; i < 2; i++) expect((await chat(server.url)).status).toBe(200)
    const spent = async () =>
      (JSON.parse((await admin(server.url, "GET", "/admin/keys")).text) as { data: Array<{ name: string; spentUsd: number | null }> })
        .data.find((k) => k.name === "team-a")!.spentUsd
    const spentBefore = await spent()
    expect(spentBefore).toBeGreaterThan(0)
    const KEY_NEW = "gw-key-RELOAD-NEW-SECRET"
    file.write(yaml([up(a)], "", keys(`  - { name: team-new, key: "${KEY_NEW}" }`)))
    const r = await reload(server.url)
    expect(r.body).toMatchObject({ keys: { count: 2, added: ["team-new"], removed: ["team-old"], changed: [] } })
    expect((await chat(server.url, KEY_B)).status).toBe(401)
    expect((await chat(server.url, KEY_NEW)).status).toBe(200)
    expect(await spent()).toBe(spentBefore)
    // team-a had 2 of its 3 requests a minute before the reload.
    expect((await chat(server.url)).status).toBe(200)
    expect((await chat(server.url)).status).toBe(429)
  })

  it("restart-only settings are named and keep their running values; the rest applies", async () => {
    const a = await fake("restart-a")
    const b = await fake("restart-b")
    const text = yaml([up(a)])
    const file = configFile(text)
    const server = await serve(text, { reloadFrom: file.path })
    file.write(
      yaml([up(b)], "store: { kind: redis, url: \"redis://127.0.0.1:9/0\" }\n").replace(
        "server: {",
        "server: { maxConnections: 7, keepAliveTimeout: 9s,"
      )
    )
    const r = await reload(server.url)
    expect(r.status).toBe(200)
    expect(r.body["restartRequired"]).toEqual(["server.maxConnections", "server.keepAliveTimeout", "store"])
    expect(server.running.config().store).toEqual({ kind: "memory" })
    expect(server.running.server.maxConnections).toBe(10_000)
    expect((await chat(server.url)).headers.get("x-breakwater-upstream")).toBe("restart-b")
    expect(logLines(/"level":"WARN".*need a restart.*server\.maxConnections, server\.keepAliveTimeout, store/).length).toBe(1)
  })

  it("a server not started from a file (the demo) answers 409; admin auth and method are checked", async () => {
    const a = await fake("demo-a")
    const server = await serve(yaml([up(a)]))
    const r = await admin(server.url, "POST", "/admin/reload")
    expect(r.status).toBe(409)
    expect(openAIError(r.text)).toMatchObject({ code: "reload_unavailable", message: Reload.UNAVAILABLE_MESSAGE })
    expect((await admin(server.url, "POST", "/admin/reload", null)).status).toBe(401)
    expect((await admin(server.url, "POST", "/admin/reload", "wrong")).status).toBe(401)
    expect((await admin(server.url, "GET", "/admin/reload")).status).toBe(405)
  })
})

describe("Reload decisions", () => {
  const base = configOf(`
server: { host: 0.0.0.0, adminKey: x }
keys: [{ name: k, key: "${KEY_A}" }]
upstreams: [{ name: u, baseUrl: "http://127.0.0.1:9/v1", apiKey: "${UPSTREAM_KEY}" }]
`)

  it("a config without keys is refused while the server listens beyond loopback", () => {
    const keyless = configOf(`upstreams: [{ name: u, baseUrl: "http://127.0.0.1:9/v1", apiKey: "${UPSTREAM_KEY}" }]`)
    const next = Reload.pinned(base, keyless)
    expect(next.server.host).toBe("0.0.0.0")
    expect(Reload.refusal(next)).toMatch(/no gateway keys.*0\.0\.0\.0/)
    expect(Reload.refusal(Reload.pinned({ ...base, server: { ...base.server, host: "127.0.0.1" } }, keyless))).toBeUndefined()
  })

  it("what changed is said by name, never by value", () => {
    const next = configOf(`
server: { host: 0.0.0.0, adminKey: y, port: 9999 }
keys: [{ name: k, key: "${KEY_B}" }]
upstreams: [{ name: u, baseUrl: "http://127.0.0.1:9/v1", apiKey: "${UPSTREAM_KEY_2}" }]
routing: { maxAttempts: 5 }
`)
    expect(Reload.restartRequired(base, next)).toEqual(["server.port"])
    const changes = Reload.changes(base, Reload.pinned(base, next))
    expect(changes).toEqual({
      upstreams: { added: [], removed: [], replaced: [], changed: { u: ["apiKey"] }, unchanged: [] },
      keys: { count: 1, added: [], removed: [], changed: ["k"] },
      settings: ["server.adminKey", "routing.maxAttempts"]
    })
    const text = JSON.stringify(changes) + Reload.summary(changes)
    for (const secret of [KEY_A, KEY_B, UPSTREAM_KEY, UPSTREAM_KEY_2, "adminKey: y"]) expect(text).not.toContain(secret)
  })
})

describe("SIGHUP", { timeout: 40_000 }, () => {
  it("re-reads the file: a valid one swaps upstream and keys; an invalid one is logged at ERROR and the old config serves on", async () => {
    const a = await processFake("hup-a")
    const b = await processFake("hup-b")
    const port = await freePort()
    const file = configFile(yaml([up(a)]).replace("server: {", `server: { host: 127.0.0.1, port: ${port},`))
    const p = cli(["--config", file.path])
    try {
      const started = await p.waitForStdout(/Breakwater on (http:\/\/127\.0\.0\.1:\d+)/, 15_000)
      const url = started[1]!
      expect((await chat(url)).headers.get("x-breakwater-upstream")).toBe("hup-a")

      file.write(
        yaml([up(b)], "", `  - { name: team-b, key: "${KEY_B}" }`).replace("server: {", `server: { host: 127.0.0.1, port: ${port},`)
      )
      p.child.kill("SIGHUP")
      await p.waitForStdout(/"msg":"config reloaded \(SIGHUP\): upstreams \+hup-b, -hup-a; 1 key\(s\) \(\+team-b, -team-a\)/, 5_000)
      expect((await chat(url, KEY_A)).status).toBe(401)
      const res = await chat(url, KEY_B)
      expect(res.status).toBe(200)
      expect(res.headers.get("x-breakwater-upstream")).toBe("hup-b")

      file.write(yaml([up(a, ", timeout: 30")]))
      p.child.kill("SIGHUP")
      const error = await p.waitForStdout(/^.*"level":"ERROR".*SIGHUP: config not reloaded.*$/m, 5_000)
      expect(error[0]).toContain("upstreams[0].timeout")
      expect(p.child.exitCode).toBeNull()
      expect((await chat(url, KEY_B)).headers.get("x-breakwater-upstream")).toBe("hup-b")
    } finally {
      const exit = await p.stop()
      expect(exit.code).toBe(0)
    }
    expect(p.stderr()).toBe("")
    for (const secret of [UPSTREAM_KEY, KEY_A, KEY_B, ADMIN_KEY]) expect(p.stdout()).not.toContain(secret)
  })

  it("in the demo (no config file) SIGHUP says there is nothing to reload, and the demo serves on", async () => {
    const port = await freePort()
    const p = cli(["--port", String(port), "--log-format", "json"])
    try {
      await p.waitForStdout(/Breakwater demo on/, 15_000)
      p.child.kill("SIGHUP")
      await p.waitForStdout(/"level":"WARN","msg":"SIGHUP: This server was started without a config file/, 5_000)
      const res = await fetch(`http://127.0.0.1:${port}/healthz`)
      expect(res.status).toBe(200)
    } finally {
      expect((await p.stop()).code).toBe(0)
    }
  })
})
