/**
 * Several replicas, one truth: two server processes on one real Redis, in
 * front of the same fake upstreams. Skipped, with the reason printed, when
 * redis-server is not on the PATH (.ci/run installs it).
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as RedisServer from "../../core/test/support/redisServer.js"
import { freePort } from "./helpers/e2e.js"
import { type Cli, cli, waitFor200 } from "./helpers/process.js"

if (!RedisServer.available) console.warn("skipping replica tests: redis-server not on PATH")

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe.skipIf(!RedisServer.available)("two replicas on one Redis", () => {
  let redis: RedisServer.RedisServer
  let a: FakeUpstream.FakeUpstream
  let b: FakeUpstream.FakeUpstream
  let dir: string
  const replicas: Array<{ readonly cli: Cli; readonly url: string }> = []

  beforeAll(async () => {
    redis = await RedisServer.start()
    a = await FakeUpstream.start({ name: "a" })
    b = await FakeUpstream.start({ name: "b" })
    dir = mkdtempSync(join(tmpdir(), "breakwater-replicas-"))
    const file = join(dir, "config.yaml")
    writeFileSync(
      file,
      `server:
  host: 127.0.0.1
  adminKey: admin-secret
  logLevel: warning
keys:
  - { name: team, key: sk-team-key, requestsPerMinute: 5 }
  - { name: free, key: sk-free-key }
upstreams:
  - { name: a, baseUrl: "${a.url}", apiKey: sk-upstream-a, priority: 1 }
  - { name: b, baseUrl: "${b.url}", apiKey: sk-upstream-b, priority: 2 }
cache: { enabled: true, ttl: 5m, mode: all }
store: { kind: redis, url: "${redis.url}", prefix: "replica-test:" }
`
    )
    for (let i = 0; i < 2; i++) {
      const port = await freePort()
      const c = cli(["--config", file, "--port", String(port)])
      // logLevel: warning filters the INFO start line too: ready is when /readyz says so.
      await waitFor200(`http://127.0.0.1:${port}/readyz`, c.spawnedAt, 15_000)
      replicas.push({ cli: c, url: `http://127.0.0.1:${port}` })
    }
  }, 40_000)

  afterAll(async () => {
    await Promise.all(replicas.map((r) => r.cli.stop(3_000)))
    await a?.close()
    await b?.close()
    await redis?.stop()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  }, 20_000)

  let n = 0
  const chat = (replica: number, key: string, prompt = `prompt ${n++}`) =>
    fetch(`${replicas[replica]!.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
      body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: prompt }] })
    })

  it("a key limited to 5 requests per minute gets 5 successes in all, not 10", async () => {
    const statuses: Array<number> = []
    for (let i = 0; i < 10; i++) {
      const res = await chat(i % 2, "sk-team-key")
      await res.text()
      statuses.push(res.status)
    }
    expect(statuses.filter((s) => s === 200)).toHaveLength(5)
    expect(statuses.filter((s) => s === 429)).toHaveLength(5)
  })

  it("a 429 cooldown learned by replica 1 keeps replica 2 away from that upstream", async () => {
    a.setFaults({ rate429: 1, retryAfter: "30" })
    const first = await chat(0, "sk-free-key")
    await first.text()
    expect(first.headers.get("x-breakwater-upstream")).toBe("b")
    expect(first.headers.get("x-breakwater-attempts")).toBe("2")
    // a is healthy again, but the cooldown it asked for holds on every replica.
    a.setFaults({})
    a.resetCounters()
    await sleep(600) // > the replicas' cooldown refresh (250 ms)
    for (let i = 0; i < 5; i++) {
      const res = await chat(1, "sk-free-key")
      await res.text()
      expect(res.status).toBe(200)
      expect(res.headers.get("x-breakwater-upstream")).toBe("b")
    }
    expect(a.counters().chat).toBe(0)
    // An operator's reset on one replica clears it for both.
    const reset = await fetch(`${replicas[0]!.url}/admin/upstreams/a/reset`, {
      method: "POST",
      headers: { authorization: "Bearer admin-secret" }
    })
    expect(reset.status).toBe(200)
    await sleep(600)
    const after = await chat(1, "sk-free-key")
    await after.text()
    expect(after.headers.get("x-breakwater-upstream")).toBe("a")
  })

  it("a response cached by replica 1 is a hit on replica 2", async () => {
    const prompt = `cached across replicas ${Date.now()}`
    const miss = await chat(0, "sk-free-key", prompt)
    const body = await miss.text()
    expect(miss.headers.get("x-breakwater-cache")).toBe("miss")
    const hit = await chat(1, "sk-free-key", prompt)
    expect(hit.headers.get("x-breakwater-cache")).toBe("hit")
    expect(await hit.text()).toBe(body)
  })

  it("killing Redis mid-run loses no request, and both replicas recover when it returns", async () => {
    const statuses: Array<number> = []
    for (let i = 0; i < 40; i++) {
      if (i === 10) await redis.stop()
      const res = await chat(i % 2, "sk-free-key")
      await res.text()
      statuses.push(res.status)
    }
    expect(statuses.every((s) => s === 200)).toBe(true)

    await redis.restart()
    // Shared state resumes by itself: a value cached by one replica is a hit
    // on the other again.
    let recovered = false
    for (let attempt = 0; attempt < 30 && !recovered; attempt++) {
      const prompt = `after restart ${attempt} ${Date.now()}`
      const first = await chat(0, "sk-free-key", prompt)
      await first.text()
      const second = await chat(1, "sk-free-key", prompt)
      await second.text()
      recovered = second.headers.get("x-breakwater-cache") === "hit"
      if (!recovered) await sleep(200)
    }
    expect(recovered).toBe(true)
  }, 30_000)
})
