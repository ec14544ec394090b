/**
 * The server's output as a process: one format on stdout — JSON lines for
 * everything (request logs, Effect log messages, warnings, the CLI's own
 * start and drain messages), or `--log-format pretty` for people; nothing on
 * stderr; `--log-level` filters all of it and overrides `server.logLevel`;
 * options in any order.
 */
import type * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { describe, expect, it } from "vitest"
import { freePort } from "./helpers/e2e.js"
import { cli, processBed, runCli, waitFor200 } from "./helpers/process.js"

const UPSTREAM_KEY = "sk-upstream-SECRET-logs-321"
const ADMIN_KEY = "admin-key-LOGS-SECRET-654"

const { fake, file } = processBed("logs")

/** A keyless config (so the server warns at start) serving `gpt-4.1` and any model through `upstream`. */
const yaml = (upstream: FakeUpstream.FakeUpstream, port: number, server = "") => `
server:
  host: 127.0.0.1
  port: ${port}
  adminKey: "${ADMIN_KEY}"
  drainGrace: 0s${server}
upstreams:
  - { name: ${upstream.name}, baseUrl: "${upstream.url}", apiKey: "${UPSTREAM_KEY}", models: "*" }
`

const chat = (url: string) =>
  fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "log me" }] })
  })

/** Starts the CLI with `args` (serving on `port`), sends one chat request, stops it with SIGTERM; its whole output. */
const session = async (port: number, args: ReadonlyArray<string>) => {
  const p = cli(args)
  try {
    const url = `http://127.0.0.1:${port}`
    await waitFor200(`${url}/healthz`, p.spawnedAt, 15_000)
    const res = await chat(url)
    expect(res.status).toBe(200)
    const requestId = res.headers.get("x-request-id")!
    // The request's line is written after the answer.
    await new Promise((r) => setTimeout(r, 100))
    const exit = await p.stop()
    expect(exit.code).toBe(0)
    return { stdout: p.stdout(), stderr: p.stderr(), requestId }
  } finally {
    await p.stop()
  }
}

const lines = (text: string) => text.split("\n").filter((l) => l !== "")

const parsed = (text: string): Array<Record<string, unknown>> =>
  lines(text).map((l) => {
    try {
      return JSON.parse(l) as Record<string, unknown>
    } catch {
      throw new Error(`not a JSON line: ${l}\n--- stdout:\n${text}`)
    }
  })

describe("log output of the server process", { timeout: 40_000 }, () => {
  it("JSON lines for everything on stdout (start warnings, start line, request, drain), nothing on stderr", async () => {
    const upstream = await fake("logs-json")
    const port = await freePort()
    const out = await session(port, ["--config", file("json.yaml", yaml(upstream, port))])
    expect(out.stderr).toBe("")
    const entries = parsed(out.stdout)
    for (const e of entries) {
      expect(typeof e["time"]).toBe("string")
      expect(["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]).toContain(e["level"])
      expect(typeof e["msg"]).toBe("string")
    }
    const msgs = entries.map((e) => `${e["level"]} ${e["msg"]}`)
    // The keyless warning, the unpriced-model warning, the start line, the request, the drain.
    expect(msgs.some((m) => /^WARN no gateway keys are configured/.test(m))).toBe(true)
    expect(msgs.some((m) => /^WARN upstream\(s\) 'logs-json' serve any model/.test(m))).toBe(true)
    const start = entries.find((e) => String(e["msg"]).startsWith("Breakwater on "))!
    expect(start).toMatchObject({ level: "INFO", url: `http://127.0.0.1:${port}`, upstreams: 1, keys: 0 })
    expect(typeof start["readyMs"]).toBe("number")
    expect(entries.find((e) => e["requestId"] === out.requestId)).toMatchObject({ level: "INFO", msg: "request", status: 200 })
    expect(msgs.some((m) => /^INFO SIGTERM: draining/.test(m))).toBe(true)
    expect(msgs[msgs.length - 1]).toMatch(/^INFO drained; bye/)
    for (const secret of [UPSTREAM_KEY, ADMIN_KEY]) expect(out.stdout).not.toContain(secret)
  })

  it("--log-format pretty: one human line per entry (time, level, message, fields), no JSON", async () => {
    const upstream = await fake("logs-pretty")
    const port = await freePort()
    const out = await session(port, ["--config", file("pretty.yaml", yaml(upstream, port)), "--log-format", "pretty"])
    expect(out.stderr).toBe("")
    for (const l of lines(out.stdout)) {
      expect(l.startsWith("{")).toBe(false)
      expect(l).toMatch(/^\d\d:\d\d:\d\d\.\d\d\d (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) +\S/)
    }
    expect(out.stdout).toMatch(/^\S+ WARN +no gateway keys are configured/m)
    expect(out.stdout).toMatch(new RegExp(`^\\S+ INFO +request requestId=${out.requestId} .*status=200`, "m"))
    expect(out.stdout).toMatch(/^\S+ INFO +drained; bye/m)
  })

  it("--log-level filters everything and overrides server.logLevel (either way)", async () => {
    const upstream = await fake("logs-level")
    // The file says error; the CLI says info: the request and start lines appear.
    const loud = await freePort()
    const louder = await session(loud, [
      "--log-level",
      "info",
      "--config",
      file("level-error.yaml", yaml(upstream, loud, "\n  logLevel: error"))
    ])
    expect(parsed(louder.stdout).some((e) => e["requestId"] === louder.requestId)).toBe(true)
    // The file says info (the default); the CLI says warning: only WARN and above, start and drain lines included.
    const quiet = await freePort()
    const quieter = await session(quiet, [
      "--config",
      file("level-info.yaml", yaml(upstream, quiet)),
      "--log-level",
      "warning"
    ])
    const entries = parsed(quieter.stdout)
    expect(entries.length).toBeGreaterThan(0)
    for (const e of entries) expect(["WARN", "ERROR", "FATAL"]).toContain(e["level"])
    expect(entries.some((e) => String(e["msg"]).startsWith("no gateway keys"))).toBe(true)
  })

  it("options in any order: --port before or after --config, =values, log options anywhere", async () => {
    const upstream = await fake("logs-order")
    const config = file("order.yaml", yaml(upstream, 9))
    for (
      const args of [
        (port: number) => ["--config", config, "--port", String(port), "--log-format", "json"],
        (port: number) => ["--log-level", "debug", "--port", String(port), "--config", config],
        (port: number) => [`--port=${port}`, "--log-format=pretty", `--config=${config}`]
      ]
    ) {
      const port = await freePort()
      const p = cli(args(port))
      try {
        const started = await p.waitForStdout(/Breakwater on (http:\/\/127\.0\.0\.1:(\d+))/, 15_000)
        expect(Number(started[2])).toBe(port)
        expect((await chat(started[1]!)).status).toBe(200)
      } finally {
        expect((await p.stop()).code).toBe(0)
      }
      expect(p.stderr()).toBe("")
    }
  })

  it("a bad --log-format or --log-level value is refused with the choices", async () => {
    const upstream = await fake("logs-check")
    const config = file("check.yaml", yaml(upstream, 9))
    const bad = await runCli(["--config", config, "--log-format", "xml"])
    expect(bad.code).toBe(1)
    expect(bad.stdout + bad.stderr).toMatch(/json/)
    expect(bad.stdout + bad.stderr).toMatch(/pretty/)
    for (const args of [["--log-level", "loud", "--config", config], ["--config", config, "--log-level=loud"]]) {
      const level = await runCli(args)
      expect(level.code).toBe(1)
      expect(level.stderr).toContain(`--log-level: expected one of all, trace, debug, info, warning, error, fatal, none, got "loud"`)
    }
  })

  it("an invalid config at start is an ERROR line naming the field, and exit 1", async () => {
    const bad = file(
      "invalid.yaml",
      `upstreams:\n  - { name: a, baseUrl: "http://127.0.0.1:9/v1", apiKey: "${UPSTREAM_KEY}", timeout: 30 }\n`
    )
    const r = await runCli(["--config", bad])
    expect(r.code).toBe(1)
    expect(r.stderr).toBe("")
    const [entry] = parsed(r.stdout)
    expect(entry).toMatchObject({ level: "ERROR" })
    expect(String(entry!["msg"])).toContain("upstreams[0].timeout")
    expect(r.stdout).not.toContain(UPSTREAM_KEY)
  })
})
