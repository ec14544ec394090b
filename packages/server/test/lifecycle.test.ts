/**
 * The `breakwater` process's life: a shutdown bounded by
 * `server.shutdownTimeout` whatever is in flight, the drain grace (503 with
 * `Connection: close` for new requests and /readyz), a second signal, and
 * the process-level guard for errors nothing else caught. Each test runs the
 * CLI as a child process against fake upstreams in this process.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { writeFileSync } from "node:fs"
import { request } from "node:http"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { freePort } from "./helpers/e2e.js"
import { cli, type Exit, processBed, tryConnect } from "./helpers/process.js"

const UPSTREAM_KEY = "sk-upstream-SECRET-lifecycle"
const GATEWAY_KEY = "gw-key-LIFECYCLE-SECRET"

const { dir, fake } = processBed("lifecycle")

/** Writes a config for `upstream` on `port` with extra `server:` lines, and returns its path. */
const configFor = (upstream: FakeUpstream.FakeUpstream, port: number, server: string) => {
  const file = join(dir, `${upstream.name}-${port}.yaml`)
  writeFileSync(
    file,
    `
server:
  host: 127.0.0.1
  port: ${port}
${server.split("\n").map((l) => `  ${l.trim()}`).join("\n")}
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: ${upstream.name}, baseUrl: "${upstream.url}", apiKey: "${UPSTREAM_KEY}", models: [gpt-4.1], timeout: 60s }
routing: { requestTimeout: 120s }
`
  )
  return file
}

const start = async (upstream: FakeUpstream.FakeUpstream, server: string) => {
  const port = await freePort()
  const p = cli(["--config", configFor(upstream, port, server)])
  const started = await p.waitForStdout(/Breakwater on (http:\/\/127\.0\.0\.1:\d+)/, 15_000)
  return { p, port, url: started[1]! }
}

interface Answer {
  readonly status: number
  readonly headers: Record<string, string | Array<string> | undefined>
  readonly body: string
}

/** One request on its own connection (node:http, so that `connection` is visible); rejects if the connection fails. */
const send = (url: string, path: string, init: { method?: string; body?: string } = {}) =>
  new Promise<Answer>((resolve, reject) => {
    const req = request(`${url}${path}`, {
      method: init.method ?? "GET",
      agent: false,
      headers: { authorization: `Bearer ${GATEWAY_KEY}`, "content-type": "application/json" }
    }, (res) => {
      let body = ""
      res.setEncoding("utf8")
      res.on("data", (c: string) => {
        body += c
      })
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
      res.on("error", reject)
    })
    req.on("error", reject)
    req.end(init.body)
  })

const chat = (stream: boolean) =>
  JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "hi" }], ...(stream ? { stream: true } : {}) })

/** Resolves with the exit, or "running" if the process has not exited within `ms`. */
const exitWithin = (exited: Promise<Exit>, ms: number): Promise<Exit | "running"> =>
  Promise.race([exited, new Promise<"running">((r) => setTimeout(() => r("running"), ms))])

const until = async (check: () => boolean, ms: number) => {
  const deadline = performance.now() + ms
  while (!check() && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10))
  return check()
}

describe("shutdown", { timeout: 30_000 }, () => {
  it("with 3 streams hung on their upstream, SIGTERM exits within shutdownTimeout + 1 s", async () => {
    const hung = await fake("hung-streams", { hang: 1 })
    const { p, url } = await start(hung, "shutdownTimeout: 2s")
    try {
      const streams = [1, 2, 3].map(() => send(url, "/v1/chat/completions", { method: "POST", body: chat(true) }))
      for (const s of streams) s.catch(() => undefined)
      expect(await until(() => hung.counters().hangs === 3, 5_000)).toBe(true)

      const t0 = performance.now()
      p.child.kill("SIGTERM")
      const exit = await exitWithin(p.exited, 4_000) // shutdownTimeout + 2 s: enough to tell 3 s from 300 s
      const ms = performance.now() - t0
      console.log(`3 hung streams, shutdownTimeout 2s: exit ${JSON.stringify(exit)} ${Math.round(ms)} ms after SIGTERM`)
      expect(exit).not.toBe("running")
      expect(ms).toBeLessThan(3_000)
      expect((exit as Exit).signal).toBeNull()
      // The hung callers were cut off at the deadline (not left waiting).
      for (const s of streams) await expect(s).rejects.toThrow()
      expect(p.stdout()).toMatch(/"level":"WARN","msg":"shutdown deadline reached; closed remaining connections"/)
    } finally {
      await p.stop(100)
    }
  })

  it("during drainGrace: new requests and /readyz get 503 with Connection: close, /healthz 200; then the listener closes", async () => {
    const upstream = await fake("drain-grace")
    const { p, port, url } = await start(upstream, "shutdownTimeout: 10s\ndrainGrace: 1500ms")
    try {
      expect((await send(url, "/v1/chat/completions", { method: "POST", body: chat(false) })).status).toBe(200)
      const t0 = performance.now()
      p.child.kill("SIGTERM")
      await new Promise((r) => setTimeout(r, 200))

      const refused = await send(url, "/v1/chat/completions", { method: "POST", body: chat(false) })
      expect(refused.status).toBe(503)
      expect(refused.headers["connection"]).toBe("close")
      expect(refused.headers["retry-after"]).toBe("1")
      expect(JSON.parse(refused.body)).toMatchObject({ error: { type: "server_error", code: "shutting_down" } })

      const ready = await send(url, "/readyz")
      expect(ready.status).toBe(503)
      expect(ready.headers["connection"]).toBe("close")
      expect(JSON.parse(ready.body)).toEqual({ status: "not ready", reason: "shutting down" })

      const health = await send(url, "/healthz")
      expect(health.status).toBe(200)
      expect(health.headers["connection"]).toBe("close")
      expect(upstream.counters().chat).toBe(1)

      // After the grace, the listener is closed and, nothing being in flight, the process exits 0.
      const exit = await exitWithin(p.exited, 4_000)
      expect(exit).toEqual({ code: 0, signal: null })
      expect(performance.now() - t0).toBeGreaterThanOrEqual(1_400)
      expect(await tryConnect(port)).toBe("ECONNREFUSED")
      expect(p.stdout()).toMatch(/"level":"INFO","msg":"SIGTERM: draining/)
    } finally {
      await p.stop(100)
    }
  })

  it("a second signal (SIGTERM then SIGINT) exits at once, with a non-zero code", async () => {
    const hung = await fake("second-signal", { hang: 1 })
    const { p, url } = await start(hung, "shutdownTimeout: 30s\ndrainGrace: 0s")
    try {
      send(url, "/v1/chat/completions", { method: "POST", body: chat(true) }).catch(() => undefined)
      expect(await until(() => hung.counters().hangs === 1, 5_000)).toBe(true)
      p.child.kill("SIGTERM")
      await new Promise((r) => setTimeout(r, 500))
      expect(p.child.exitCode).toBeNull() // draining: the stream is hung, the deadline is 30 s away
      const t0 = performance.now()
      p.child.kill("SIGINT")
      const exit = await exitWithin(p.exited, 2_000)
      expect(exit).toEqual({ code: 130, signal: null })
      expect(performance.now() - t0).toBeLessThan(1_000)
      expect(p.stdout()).toMatch(/"level":"WARN","msg":"SIGINT during shutdown: exiting now"/)
    } finally {
      await p.stop(100)
    }
  })

  it("two SIGINTs a few ms apart (a terminal's Ctrl-C forwarded by npm too) are one signal", async () => {
    const upstream = await fake("double-sigint", { latencyMs: 1_000 })
    const { p, url } = await start(upstream, "shutdownTimeout: 10s\ndrainGrace: 0s")
    try {
      const slow = send(url, "/v1/chat/completions", { method: "POST", body: chat(false) })
      expect(await until(() => upstream.counters().inFlight === 1, 5_000)).toBe(true)
      p.child.kill("SIGINT")
      await new Promise((r) => setTimeout(r, 20))
      p.child.kill("SIGINT")
      // The request in flight still completes: the second SIGINT did not force the exit.
      expect((await slow).status).toBe(200)
      expect(await exitWithin(p.exited, 3_000)).toEqual({ code: 0, signal: null })
    } finally {
      await p.stop(100)
    }
  })
})

describe("errors nothing else caught", { timeout: 30_000 }, () => {
  it("an uncaught exception and an unhandled rejection are logged at ERROR with name, message and stack, counted, and the server keeps serving", async () => {
    // A preload that, on SIGUSR2, throws from a timer and rejects a promise nobody awaits:
    // the two ways an error escapes everything (as undici's 'error' events without a listener did).
    const preload = join(dir, "escape.mjs")
    writeFileSync(
      preload,
      `process.on("SIGUSR2", () => {
  setImmediate(() => {
    const e = new TypeError("boom from the test preload")
    e.code = "ERR_TEST_BOOM"
    throw e
  })
  setImmediate(() => {
    Promise.reject(new RangeError("rejected in the test preload"))
  })
})
`
    )
    const upstream = await fake("guarded")
    const port = await freePort()
    const p = cli(["--config", configFor(upstream, port, "drainGrace: 0s")], {
      NODE_OPTIONS: `${process.env["NODE_OPTIONS"] ?? ""} --import ${preload}`.trim()
    })
    try {
      const url = (await p.waitForStdout(/Breakwater on (http:\/\/127\.0\.0\.1:\d+)/, 15_000))[1]!
      p.child.kill("SIGUSR2")
      await p.waitForStdout(/"kind":"exception"[\s\S]*"kind":"rejection"|"kind":"rejection"[\s\S]*"kind":"exception"/, 5_000)
      const lines = p.stdout().split("\n").filter((l) => l.includes(`"msg":"unhandled error"`)).map((l) =>
        JSON.parse(l) as { level: string; kind: string; error: { name: string; message: string; stack: string; code?: string } }
      )
      expect(lines).toHaveLength(2)
      const exception = lines.find((l) => l.kind === "exception")!
      expect(exception.level).toBe("ERROR")
      expect(exception.error).toMatchObject({ name: "TypeError", message: "boom from the test preload", code: "ERR_TEST_BOOM" })
      expect(exception.error.stack).toContain("escape.mjs")
      const rejection = lines.find((l) => l.kind === "rejection")!
      expect(rejection.level).toBe("ERROR")
      expect(rejection.error).toMatchObject({ name: "RangeError", message: "rejected in the test preload" })
      expect(rejection.error.stack).toContain("escape.mjs")

      // Still serving, and the errors are in the metrics.
      expect(p.child.exitCode).toBeNull()
      expect((await send(url, "/v1/chat/completions", { method: "POST", body: chat(false) })).status).toBe(200)
      const metrics = (await send(url, "/metrics")).body
      expect(metrics).toMatch(/^breakwater_unhandled_errors_total\{kind="exception"\} 1$/m)
      expect(metrics).toMatch(/^breakwater_unhandled_errors_total\{kind="rejection"\} 1$/m)

      p.child.kill("SIGTERM")
      expect(await exitWithin(p.exited, 5_000)).toEqual({ code: 0, signal: null })
    } finally {
      await p.stop(100)
    }
  })
})
