/**
 * `npm run bench:server`: throughput and added latency of the gateway.
 *
 * Starts, each in its own process on 127.0.0.1, a fake upstream (0 ms) and
 * the Breakwater server in front of it (in-memory stores, and, when
 * redis-server is on the PATH, a second one on Redis stores), then drives
 * each with the same load (autocannon, fixed connections and duration), one
 * after the other, in one run. Both servers check a gateway key with a
 * (never reached) requests-per-minute limit, so every request consults the
 * rate-limit store. Prints requests per second, p50 / p99 latency, the
 * latency Breakwater adds, and each server's CPU per request and RSS.
 */
import autocannon from "autocannon"
import { Agent, request } from "undici"
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync, writeFileSync } from "node:fs"
import { availableParallelism, tmpdir } from "node:os"
import { join } from "node:path"

const CONNECTIONS = Number(process.env["BENCH_CONNECTIONS"] ?? 32)
const DURATION = Number(process.env["BENCH_DURATION"] ?? 10)
const root = new URL("../../../", import.meta.url).pathname

const children: Array<ChildProcess> = []
const cleanup = () => {
  for (const c of children) c.kill("SIGKILL")
}
process.on("exit", cleanup)

/** Spawns a process and resolves with the first stdout line matching `ready`. */
const launch = (cmd: string, args: Array<string>, ready: RegExp): Promise<{ child: ChildProcess; match: RegExpMatchArray }> =>
  new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    children.push(child)
    let buffer = ""
    const timer = setTimeout(() => reject(new Error(`${args.join(" ")} did not start`)), 20_000)
    child.stdout!.on("data", (d: Buffer) => {
      buffer += d.toString()
      const m = buffer.match(ready)
      if (m) {
        clearTimeout(timer)
        child.stdout!.removeAllListeners("data")
        child.stdout!.resume() // keep draining (request logs)
        resolve({ child, match: m })
      }
    })
    child.stderr!.on("data", () => {})
    child.once("exit", (code) => reject(new Error(`${args.join(" ")} exited with ${code}`)))
  })

const rssOf = (pid: number) => {
  const status = readFileSync(`/proc/${pid}/status`, "utf8")
  const kb = (key: string) => Number(/(\d+) kB/.exec(status.split("\n").find((l) => l.startsWith(key)) ?? "")?.[1] ?? 0)
  return { rssMb: kb("VmRSS:") / 1024, peakMb: kb("VmHWM:") / 1024 }
}

/** CPU seconds (user + system) a process has used so far. */
const cpuOf = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return (Number(fields[11]) + Number(fields[12])) / 100
}

const body = JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "Benchmark me." }] })

/** An operator console connected to `base` (GET /admin/events), its events read as they come. */
const openConsole = async (base: string) => {
  const controller = new AbortController()
  const res = await request(`${base}/admin/events`, { headers: { authorization: "Bearer sk-bench-admin" }, signal: controller.signal })
  if (res.statusCode !== 200) throw new Error(`/admin/events answered ${res.statusCode}`)
  let events = 0
  res.body.on("data", (chunk: Buffer) => {
    events += chunk.toString().split("\n\n").length - 1
  })
  res.body.on("error", () => {})
  return { events: () => events, close: () => controller.abort() }
}

const load = async (url: string) => {
  const result = await autocannon({
    url: `${url}/chat/completions`,
    method: "POST",
    connections: CONNECTIONS,
    duration: DURATION,
    headers: { "content-type": "application/json", authorization: "Bearer sk-bench-key", "cache-control": "no-cache, no-store" },
    body
  })
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    max: result.latency.max,
    errors: result.errors + result.timeouts + result.non2xx,
    total: result.requests.total
  }
}

/** One connection, one request at a time: the latency the gateway adds when it is not queueing. */
const sequential = async (url: string, count = 2000) => {
  const agent = new Agent({ connections: 1 })
  const samples: Array<number> = []
  const headers = { "content-type": "application/json", authorization: "Bearer sk-bench-key", "cache-control": "no-cache, no-store" }
  for (let i = 0; i < count + 200; i++) {
    const t0 = process.hrtime.bigint()
    const res = await request(`${url}/chat/completions`, { method: "POST", body, headers, dispatcher: agent })
    await res.body.text()
    if (i >= 200) samples.push(Number(process.hrtime.bigint() - t0) / 1e6)
  }
  await agent.close()
  samples.sort((a, b) => a - b)
  return { p50: samples[Math.floor(count * 0.5)]!, p99: samples[Math.floor(count * 0.99)]! }
}

const main = async () => {
  // `node --import tsx` rather than the tsx wrapper: the pid is the fake's
  // own, so the cleanup really stops it.
  const fake = await launch("node", ["--import", "tsx", "packages/core/src/testing/fake-upstream-main.ts", "--name", "bench"], /listening (\S+)/)
  const upstreamUrl = fake.match[1]!
  const configFor = (store: string) => {
    const file = join(tmpdir(), `breakwater-bench-${process.pid}-${store.length}.yaml`)
    writeFileSync(
      file,
      `server:\n  host: 127.0.0.1\n  port: 0\n  adminKey: sk-bench-admin\n  logLevel: ${process.env["BENCH_LOG_LEVEL"] ?? "info"}\n` +
        `keys:\n  - { name: bench, key: sk-bench-key, requestsPerMinute: 100000000 }\n` +
        `upstreams:\n  - name: bench\n    baseUrl: "${upstreamUrl}"\n    apiKey: sk-bench\n    maxConcurrent: 1000\n` +
        `cache:\n  enabled: false\n` + store
    )
    return file
  }
  const server = await launch("node", ["packages/server/bin/breakwater.js", "--config", configFor("")], /on (http:\/\/\S+)/)
  const gatewayUrl = `${server.match[1]!}/v1`

  // Redis stores, when redis-server is here.
  let redisGateway: { url: string; pid: number } | undefined
  try {
    const redisPort = 20000 + (process.pid % 20000)
    await launch("redis-server", ["--port", String(redisPort), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"], /Ready to accept connections/)
    const second = await launch(
      "node",
      ["packages/server/bin/breakwater.js", "--config", configFor(`store: { kind: redis, url: "redis://127.0.0.1:${redisPort}" }\n`)],
      /on (http:\/\/\S+)/
    )
    redisGateway = { url: `${second.match[1]!}/v1`, pid: second.child.pid! }
  } catch {
    console.error("redis-server not available: the Redis row is left out")
  }

  // Warm every path (JIT, keep-alive pools), then measure one after the other.
  for (const url of [upstreamUrl, gatewayUrl, ...(redisGateway ? [redisGateway.url] : [])]) {
    await autocannon({ url: `${url}/chat/completions`, method: "POST", body, connections: 8, duration: 2, headers: { "content-type": "application/json", authorization: "Bearer sk-bench-key" } })
  }
  const directSeq = await sequential(upstreamUrl)
  const throughSeq = await sequential(gatewayUrl)
  const direct = await load(upstreamUrl)
  const cpu0 = cpuOf(server.child.pid!)
  const through = await load(gatewayUrl)
  const cpuPerRequestUs = ((cpuOf(server.child.pid!) - cpu0) * 1e6) / Math.max(1, through.total)
  const mem = rssOf(server.child.pid!)
  // The same load with one operator console connected (its snapshots, the sampled tail), against
  // none: in alternating runs (none, console, console, none, none, console) so that drift
  // (other work on the machine) falls on both; requests and server CPU summed per side.
  const sides = { none: { total: 0, seconds: 0, cpu: 0 }, console: { total: 0, seconds: 0, cpu: 0 } }
  let consoleEvents = 0
  let withConsole = through
  for (const side of ["none", "console", "console", "none", "none", "console"] as const) {
    const client = side === "console" ? await openConsole(server.match[1]!) : undefined
    const c0 = cpuOf(server.child.pid!)
    const r = await load(gatewayUrl)
    sides[side].cpu += cpuOf(server.child.pid!) - c0
    sides[side].total += r.total
    sides[side].seconds += r.total / Math.max(1, r.rps)
    if (client !== undefined) {
      consoleEvents += client.events()
      client.close()
      withConsole = r
    }
  }
  const rate = (s: { total: number; seconds: number }) => s.total / Math.max(1e-9, s.seconds)
  const consoleShare = rate(sides.console) / rate(sides.none)
  const cpuUs = (s: { total: number; cpu: number }) => (s.cpu * 1e6) / Math.max(1, s.total)
  let redisRow: { r: typeof through; cpu: number; mem: ReturnType<typeof rssOf> } | undefined
  if (redisGateway) {
    const c0 = cpuOf(redisGateway.pid)
    const r = await load(redisGateway.url)
    redisRow = { r, cpu: ((cpuOf(redisGateway.pid) - c0) * 1e6) / Math.max(1, r.total), mem: rssOf(redisGateway.pid) }
  }

  const row = (name: string, r: typeof direct, extra: string) =>
    `| ${name.padEnd(22)} | ${r.rps.toFixed(0).padStart(8)} | ${r.p50.toFixed(2).padStart(7)} | ${r.p99.toFixed(2).padStart(7)} | ${
      r.max.toFixed(1).padStart(7)
    } | ${String(r.errors).padStart(6)} | ${extra} |`
  console.log(
    `\nbench:server — ${CONNECTIONS} connections x ${DURATION}s per row, POST /v1/chat/completions, fake upstream at 0 ms; ` +
      `node ${process.version}, ${availableParallelism()} cores, ${new Date().toISOString().slice(0, 10)}\n`
  )
  console.log(`| ${"target".padEnd(22)} | ${"req/s".padStart(8)} | ${"p50 ms".padStart(7)} | ${"p99 ms".padStart(7)} | ${"max ms".padStart(7)} | ${"errors".padStart(6)} | notes |`)
  console.log(`|${"-".repeat(24)}|${"-".repeat(10)}|${"-".repeat(9)}|${"-".repeat(9)}|${"-".repeat(9)}|${"-".repeat(8)}|-------|`)
  console.log(row("direct (fake upstream)", direct, "baseline"))
  console.log(
    row(
      "through Breakwater",
      through,
      `${((through.rps / direct.rps) * 100).toFixed(0)}% of direct; adds p50 ${(through.p50 - direct.p50).toFixed(2)} ms, ` +
        `p99 ${(through.p99 - direct.p99).toFixed(2)} ms; server CPU ${cpuPerRequestUs.toFixed(0)} µs/req; RSS ${mem.rssMb.toFixed(0)} MB (peak ${mem.peakMb.toFixed(0)} MB)`
    )
  )
  console.log(
    row(
      "  with a console open",
      withConsole,
      `3 alternating runs each: ${rate(sides.console).toFixed(0)} vs ${rate(sides.none).toFixed(0)} req/s without = ` +
        `${(consoleShare * 100).toFixed(1)}%; server CPU ${cpuUs(sides.console).toFixed(0)} vs ${cpuUs(sides.none).toFixed(0)} µs/req; ` +
        `the console read ${consoleEvents} events (last run shown)`
    )
  )
  if (redisRow) {
    console.log(
      row(
        "Breakwater, Redis stores",
        redisRow.r,
        `${((redisRow.r.rps / through.rps) * 100).toFixed(0)}% of in-memory; adds p50 ${(redisRow.r.p50 - direct.p50).toFixed(2)} ms, ` +
          `p99 ${(redisRow.r.p99 - direct.p99).toFixed(2)} ms; server CPU ${redisRow.cpu.toFixed(0)} µs/req; RSS ${redisRow.mem.rssMb.toFixed(0)} MB`
      )
    )
  }
  console.log(
    `\nsequential, 1 connection, 2000 requests: direct p50 ${directSeq.p50.toFixed(3)} ms / p99 ${directSeq.p99.toFixed(3)} ms; ` +
      `through Breakwater p50 ${throughSeq.p50.toFixed(3)} ms / p99 ${throughSeq.p99.toFixed(3)} ms; ` +
      `added p50 ${(throughSeq.p50 - directSeq.p50).toFixed(3)} ms, p99 ${(throughSeq.p99 - directSeq.p99).toFixed(3)} ms`
  )
  cleanup()
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  cleanup()
  process.exit(1)
})
