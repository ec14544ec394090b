/**
 * No client action may end the process (issue 11, point 1). The real server
 * runs as a process (the CLI) in front of a fake whose streams stay open for
 * about a second; rounds of 100 concurrent `stream: true` chats have their
 * connections destroyed at random within 0-1.5 s. The process must survive,
 * still answer, and print no unhandled error.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import * as http from "node:http"
import { connect } from "node:net"
import { describe, expect, it } from "vitest"
import { freePort, startServer } from "./helpers/e2e.js"
import { cli, processBed } from "./helpers/process.js"

const GATEWAY_KEY = "gw-key-ABORTS-SECRET-1"
const { fake, file } = processBed("aborts")

const CHAT = JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "stream to me" }], stream: true })

/**
 * One `stream: true` chat on its own connection, destroyed after `afterMs`
 * (or read to the end if it finishes first). Resolves how it ended.
 */
const abortedStream = (port: number, afterMs: number): Promise<"destroyed" | "completed" | "failed"> =>
  new Promise((resolve) => {
    let settled = false
    const done = (how: "destroyed" | "completed" | "failed") => {
      if (!settled) {
        settled = true
        clearTimeout(timer)
        resolve(how)
      }
    }
    const req = http.request({
      host: "127.0.0.1",
      port,
      method: "POST",
      path: "/v1/chat/completions",
      agent: false,
      headers: {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(CHAT),
        authorization: `Bearer ${GATEWAY_KEY}`
      }
    }, (res) => {
      res.on("data", () => {})
      res.on("end", () => done("completed"))
      res.on("error", () => done("destroyed"))
    })
    // After our own destroy these say nothing new; before it, the server failed us.
    req.on("error", () => done("failed"))
    req.on("close", () => done("failed"))
    req.end(CHAT)
    const timer = setTimeout(() => {
      done("destroyed")
      req.destroy()
    }, afterMs)
  })

describe("clients that hang up mid-stream", { timeout: 90_000 }, () => {
  it("10 rounds of 100 concurrent streams destroyed at random in 0-1.5 s: the process lives, answers, logs no unhandled error", async () => {
    // Headers after 0-1 s; in odd rounds the twelve events follow 60 ms apart (a stream lasts
    // about 0.7-1.7 s), in even rounds at once. Callers leave before the headers, mid-stream,
    // after the upstream has sent everything but before it was relayed, or not at all.
    const paced: FakeUpstream.Faults = { streamDelayMs: 60, jitterMs: 1_000 }
    const oneShot: FakeUpstream.Faults = { jitterMs: 1_000 }
    const upstream = await fake("slow-streams", {}, { reply: () => "one two three four five six seven eight nine ten" })
    const port = await freePort()
    const config = file(
      "aborts.yaml",
      `
server: { host: 127.0.0.1, port: ${port}, shutdownTimeout: 2s }
keys:
  - { name: aborter, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: slow-streams, baseUrl: "${upstream.url}", apiKey: "sk-upstream-aborts", models: [gpt-4.1], maxConcurrent: 500 }
`
    )
    const p = cli(["--config", config])
    try {
      await p.waitForStdout(/Breakwater on http:\/\/127\.0\.0\.1:\d+/, 20_000)
      const outcomes = { destroyed: 0, completed: 0, failed: 0 }
      const started = performance.now()
      for (let round = 0; round < 10; round++) {
        upstream.setFaults(round % 2 === 0 ? oneShot : paced)
        const ends = await Promise.all(Array.from({ length: 100 }, () => abortedStream(port, Math.random() * 1_500)))
        for (const e of ends) outcomes[e]++
        // Stop early (and fail below) if the process died.
        if (p.child.exitCode !== null || p.child.signalCode !== null) break
        if (performance.now() - started > 60_000) break
      }
      // Let the server finish its own clean-up of the last round.
      await new Promise((r) => setTimeout(r, 300))
      if (p.child.exitCode !== null || p.child.signalCode !== null) {
        throw new Error(`the server died (${p.child.exitCode ?? p.child.signalCode}) after ${JSON.stringify(outcomes)}:\n${p.stderr()}`)
      }
      expect(outcomes.destroyed).toBeGreaterThan(500)
      // Nothing is left open upstream: every abandoned stream was released.
      for (let i = 0; i < 100 && upstream.counters().inFlight > 0; i++) await new Promise((r) => setTimeout(r, 20))
      expect(upstream.counters().inFlight).toBe(0)
      // Each caller that left is in the log as a 499.
      expect((p.stdout().match(/"status":499/g) ?? []).length).toBeGreaterThan(0)

      const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${GATEWAY_KEY}` },
        body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "still there?" }] })
      })
      expect(res.status).toBe(200)
      const body = (await res.json()) as { choices: Array<{ message: { content: string } }> }
      expect(body.choices[0]?.message.content).toContain("one two three")

      const output = p.stdout() + p.stderr()
      expect(output).not.toMatch(/unhandled|uncaught|UND_ERR|AbortError|ERR_STREAM/i)
      expect(p.stderr()).toBe("")
    } finally {
      await p.stop()
    }
  })
})

/** Sends raw bytes on a fresh connection; resolves with what came back before the server closed it. */
const raw = (port: number, bytes: string, destroyAfterWrite = false): Promise<string> =>
  new Promise((resolve) => {
    let received = ""
    const socket = connect({ port, host: "127.0.0.1" }, () => {
      socket.write(bytes)
      if (destroyAfterWrite) {
        socket.destroy()
        resolve("")
      }
    })
    socket.setEncoding("utf8")
    socket.on("data", (d: string) => {
      received += d
    })
    socket.on("error", () => {})
    socket.on("close", () => resolve(received))
    socket.setTimeout(3_000, () => socket.destroy())
  })

describe("malformed connections", { timeout: 20_000 }, () => {
  it("a malformed request gets a 400 and is closed; a connection reset mid-headers is dropped quietly; the server answers on", async () => {
    const server = await startServer(`
upstreams:
  - { name: nowhere, baseUrl: "http://127.0.0.1:9/v1", apiKey: "sk-nowhere" }
healthCheck: { interval: 1h }
`)
    const clientErrors = async (status: number) => {
      const text = await (await fetch(`${server.url}/metrics`)).text()
      const line = text.split("\n").find((l) => l.startsWith(`breakwater_client_errors_total{status="${status}"}`))
      return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(" ") + 1))
    }
    try {
      const port = server.port
      const before = [await clientErrors(400), await clientErrors(431)]
      expect(await raw(port, "THIS IS NOT HTTP\r\n\r\n")).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/)
      const huge = `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`
      expect(await raw(port, huge)).toMatch(/^HTTP\/1\.1 431 /)
      for (let i = 0; i < 20; i++) await raw(port, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le", true)
      // A body cut off by a reset.
      for (let i = 0; i < 20; i++) {
        await raw(port, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\":", true)
      }
      const res = await fetch(`${server.url}/healthz`)
      expect(res.status).toBe(200)
      expect(await res.json()).toEqual({ status: "ok" })
      // Clients that hung up mid-request are not bad requests: only the two real ones count.
      expect([(await clientErrors(400)) - before[0]!, (await clientErrors(431)) - before[1]!]).toEqual([1, 1])
    } finally {
      await server.close()
    }
  })
})
