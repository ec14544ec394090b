/**
 * `npm run bench`: Breakwater next to Portkey's open-source gateway
 * (`@portkey-ai/gateway`, a root devDependency), same load, same run.
 *
 * Every process runs on 127.0.0.1 and is started by this script:
 *
 * - Round 1, throughput: one fake upstream (0 ms); Breakwater in front of it
 *   (one upstream, cache off, log level info, maxConcurrent 1000); Portkey in
 *   front of it (`x-portkey-provider: openai`, `x-portkey-custom-host`). Each
 *   of direct, Breakwater and Portkey gets a short warm-up, then the same
 *   autocannon load (BENCH_CONNECTIONS, default 50; BENCH_DURATION seconds,
 *   default 10), one after the other: first with a tiny request body, then
 *   with a realistic one (2.3 KB: nine messages with tool calls, three
 *   tools; bench/bodies.ts). Prints req/s, p50 / p99 / max latency, errors,
 *   and the gateway process's peak RSS (VmHWM, over the run so far).
 *   `BENCH_BASELINE=DIR` adds the Breakwater of another checkout (its
 *   built bin, e.g. the commit before a change) to each, in the same run.
 * - The handler's cost per request, traces off: Effect operations, fibers and
 *   bytes allocated (bench/handler.ts's profile), now and before (the
 *   baseline checkout, or the recorded figures of the commit before issue 13).
 * - Round 2, chaos: a primary fake answering 12.3% 429s and 5% 503s and a
 *   healthy secondary. Breakwater has both (priority 1 and 2, maxAttempts 3);
 *   Portkey gets a fallback config over both (on 429/503), and once more with
 *   its retry (1 retry on 429/503) on top. Prints req/s, the error rate the
 *   client sees, p50 / p99, and how many upstream calls each request cost.
 *
 * Latencies are autocannon's, in whole milliseconds, over every response
 * (2xx or not). Upstream calls per request are the fakes' counters divided by
 * the responses autocannon counted, so requests still in flight when a run
 * ends inflate them slightly.
 */
import autocannon from "autocannon"
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { type AddressInfo, createServer } from "node:net"
import { availableParallelism, tmpdir } from "node:os"
import { join } from "node:path"
import { REALISTIC_BODY, TINY_BODY } from "./bodies.js"
import { baselineRoot, profileRows } from "./handler.js"

const intEnv = (name: string, fallback: number, min: number, max: number): number => {
  const raw = process.env[name]
  const n = raw === undefined || raw === "" ? fallback : Number(raw)
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got ${JSON.stringify(raw)}`)
  const clamped = Math.min(max, Math.max(min, Math.round(n)))
  if (clamped !== n) console.error(`${name}=${raw}: using ${clamped} (allowed ${min}..${max})`)
  return clamped
}

const CONNECTIONS = intEnv("BENCH_CONNECTIONS", 50, 1, 1000)
const DURATION = intEnv("BENCH_DURATION", 10, 1, 30)
const WARMUP = intEnv("BENCH_WARMUP", 2, 0, 10)
const BASELINE = baselineRoot()
const LOAD_RUNS = (BASELINE === undefined ? 6 : 8) + 4 // 3 or 4 per body in round 1, 4 in round 2
/** Hard stop for the whole run: every load plus start-up and profiling slack. */
const TIME_LIMIT_MS = (LOAD_RUNS * (DURATION + WARMUP) + 240) * 1000

const root = new URL("../../../", import.meta.url).pathname
const portkeyMain = join(root, "node_modules/@portkey-ai/gateway/build/start-server.js")
const API_KEY = "sk-fake"
const body = TINY_BODY
const baseHeaders: Record<string, string> = { "content-type": "application/json", authorization: `Bearer ${API_KEY}` }

// ---------------------------------------------------------------------------
// child processes

const children = new Set<ChildProcess>()
const tempFiles: Array<string> = []
const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null

/** SIGTERM, then SIGKILL after `graceMs`. */
const stop = (c: ChildProcess, graceMs = 2000): Promise<void> =>
  new Promise((resolve) => {
    if (!alive(c)) {
      children.delete(c)
      return resolve()
    }
    const timer = setTimeout(() => {
      if (alive(c)) c.kill("SIGKILL")
    }, graceMs)
    c.once("exit", () => {
      clearTimeout(timer)
      children.delete(c)
      resolve()
    })
    c.kill("SIGTERM")
  })

const stopAll = () => Promise.all([...children].map((c) => stop(c)))

/** Synchronous last resort (process "exit" handler). */
const killAll = () => {
  for (const c of children) if (alive(c)) c.kill("SIGKILL")
  for (const f of tempFiles) rmSync(f, { force: true })
}
process.on("exit", killAll)
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: stopping children`)
    void stopAll().finally(() => process.exit(130))
  })
}

const stripAnsi = (s: string) => s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "")

/**
 * Spawns one process (no shell, no wrapper process, so its pid is the
 * server's) and resolves with the first stdout match of `ready`.
 */
const launch = (label: string, args: Array<string>, ready: RegExp, env?: Record<string, string>) =>
  new Promise<{ child: ChildProcess; match: RegExpMatchArray }>((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...env }
    })
    children.add(child)
    let out = ""
    let err = ""
    let settled = false
    const fail = (why: string) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      const tail = stripAnsi(err || out).trim().slice(-600)
      void stop(child, 500).then(() => reject(new Error(`${label}: ${why}${tail ? `\n  output: ${tail}` : ""}`)))
    }
    const timer = setTimeout(() => fail("not ready after 20 s"), 20_000)
    child.stdout!.on("data", (d: Buffer) => {
      if (settled) return // keep draining (request logs)
      out += d.toString()
      const m = stripAnsi(out).match(ready)
      if (m) {
        settled = true
        clearTimeout(timer)
        resolve({ child, match: m })
      }
    })
    child.stderr!.on("data", (d: Buffer) => {
      if (err.length < 20_000) err += d.toString()
    })
    child.once("error", (e) => fail(`could not spawn: ${e.message}`))
    child.once("exit", (code, signal) => fail(`exited (${signal ?? code}) before it was ready`))
  })

const startFake = async (name: string, faults?: object, seed?: number) => {
  const args = ["--import", "tsx", "packages/core/src/testing/fake-upstream-main.ts", "--name", name]
  if (faults) args.push("--faults", JSON.stringify(faults))
  if (seed !== undefined) args.push("--seed", String(seed))
  const { child, match } = await launch(`fake upstream ${name}`, args, /listening (\S+)/)
  const url = match[1]! // ends in /v1
  return { child, name, url, admin: url.replace(/\/v1$/, "") }
}
type Fake = Awaited<ReturnType<typeof startFake>>

const startBreakwater = async (label: string, yaml: string, bin = "packages/server/bin/breakwater.js") => {
  const file = join(tmpdir(), `breakwater-peers-${process.pid}-${tempFiles.length}.yaml`)
  writeFileSync(file, yaml)
  tempFiles.push(file)
  const { child, match } = await launch(label, [bin, "--config", file], /Breakwater on (http:\/\/\S+)/)
  return { child, url: `${match[1]!}/v1` }
}

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as AddressInfo
      s.close(() => resolve(port))
    })
  })

/**
 * Portkey's Node entry point takes `--port=N` (default 8787; the PORT
 * variable is not used for the listener) and `--headless` (no web UI / log
 * stream), listens on all interfaces, and prints "Ready for connections!".
 */
const startPortkey = async () => {
  if (!existsSync(portkeyMain)) throw new Error(`${portkeyMain} not found (is @portkey-ai/gateway installed?)`)
  const port = await freePort()
  const { child } = await launch("portkey gateway", [portkeyMain, `--port=${port}`, "--headless"], /Ready for connections/)
  return { child, url: `http://127.0.0.1:${port}/v1` }
}

const portkeyVersion = () => {
  try {
    return (JSON.parse(readFileSync(join(root, "node_modules/@portkey-ai/gateway/package.json"), "utf8")) as { version: string }).version
  } catch {
    return "?"
  }
}

// ---------------------------------------------------------------------------
// measurements

const peakRssMb = (pid: number) => {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmHWM:"))
  return Number(/(\d+) kB/.exec(line ?? "")?.[1] ?? 0) / 1024
}

/** One chat completion; checks status 200 and the fake's `system_fingerprint`. */
const verify = async (label: string, url: string, headers: Record<string, string>, fingerprints: Array<string>) => {
  const res = await fetch(`${url}/chat/completions`, { method: "POST", headers, body, signal: AbortSignal.timeout(10_000) })
  const text = await res.text()
  let fingerprint: unknown
  try {
    fingerprint = (JSON.parse(text) as { system_fingerprint?: unknown }).system_fingerprint
  } catch {
    // reported below
  }
  if (res.status !== 200 || typeof fingerprint !== "string" || !fingerprints.includes(fingerprint)) {
    throw new Error(`${label}: expected 200 with system_fingerprint ${fingerprints.join(" or ")}, got ${res.status}: ${text.slice(0, 300)}`)
  }
}

interface Load {
  rps: number
  p50: number
  p99: number
  max: number
  total: number
  non2xx: number
  /** Connection errors, timeouts included (autocannon counts them in `errors`). */
  errors: number
  timeouts: number
  byStatus: Record<string, number>
}

const load = async (url: string, headers: Record<string, string>, warmup = true, payload = body): Promise<Load> => {
  const opts = { url: `${url}/chat/completions`, method: "POST" as const, headers, body: payload, connections: CONNECTIONS }
  if (warmup && WARMUP > 0) await autocannon({ ...opts, duration: WARMUP })
  const r = await autocannon({ ...opts, duration: DURATION })
  const byStatus: Record<string, number> = {}
  for (const [code, s] of Object.entries(r.statusCodeStats ?? {})) byStatus[code] = s.count ?? 0
  return {
    rps: r.requests.average,
    p50: r.latency.p50,
    p99: r.latency.p99,
    max: r.latency.max,
    total: r.requests.total,
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    byStatus
  }
}

const fakeCounters = async (fake: Fake) =>
  (await (await fetch(`${fake.admin}/_fake/counters`, { signal: AbortSignal.timeout(5000) })).json()) as {
    requests: number
    byStatus: Record<string, number>
  }
const resetFake = async (fake: Fake) => {
  await (await fetch(`${fake.admin}/_fake/reset`, { method: "POST", signal: AbortSignal.timeout(5000) })).text()
}

// ---------------------------------------------------------------------------
// formatting

/** autocannon records latencies in whole milliseconds. */
const ms = (n: number) => (Number.isInteger(n) ? String(n) : n.toFixed(1))
const table = (head: Array<string>, rows: Array<Array<string>>) => {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: Array<string>) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`
  console.log(line(head))
  console.log(`|${widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`)
  for (const r of rows) console.log(line(r))
}
const firstLine = (e: unknown) => (e instanceof Error ? e.message : String(e))

// ---------------------------------------------------------------------------

const main = async () => {
  const started = Date.now()
  console.log(
    `bench — Breakwater vs Portkey gateway ${portkeyVersion()}: ${CONNECTIONS} connections x ${DURATION}s per row ` +
      `(after ${WARMUP}s warm-up), POST /v1/chat/completions, fake upstreams at 0 ms; ` +
      `node ${process.version}, ${availableParallelism()} cores, ${new Date().toISOString().slice(0, 10)}`
  )

  // ----- round 1: throughput ---------------------------------------------------
  const fake = await startFake("bench")
  const bwYaml = `server:\n  host: 127.0.0.1\n  port: 0\n  logLevel: info\n` +
    `upstreams:\n  - name: fake\n    baseUrl: "${fake.url}"\n    apiKey: ${API_KEY}\n    maxConcurrent: 1000\n` +
    `cache:\n  enabled: false\n`
  const bw = await startBreakwater("breakwater", bwYaml)
  const bwBefore = BASELINE === undefined
    ? undefined
    : await startBreakwater("breakwater (before)", bwYaml, join(BASELINE, "packages/server/bin/breakwater.js"))
  const fp = [`fake-${fake.name}`]
  await verify("direct", fake.url, baseHeaders, fp)
  await verify("breakwater", bw.url, baseHeaders, fp)
  if (bwBefore !== undefined) await verify("breakwater (before)", bwBefore.url, baseHeaders, fp)

  let portkey: { child: ChildProcess; url: string } | undefined
  let portkeyProblem: string | undefined
  const portkeyHeaders = { ...baseHeaders, "x-portkey-provider": "openai", "x-portkey-custom-host": fake.url }
  try {
    portkey = await startPortkey()
    await verify("portkey", portkey.url, portkeyHeaders, fp)
  } catch (e) {
    portkeyProblem = firstLine(e)
    if (portkey) await stop(portkey.child)
    portkey = undefined
    console.log(`\nPortkey is unavailable: ${portkeyProblem}`)
  }

  const bodies = [["tiny", body], ["realistic", REALISTIC_BODY]] as const
  const results: Array<{ name: string; direct: Load; bw: Load; bwPeak: number; before?: Load; beforePeak: number; pk?: Load; pkPeak: number }> = []
  for (const [name, payload] of bodies) {
    const direct = await load(fake.url, baseHeaders, true, payload)
    const throughBw = await load(bw.url, baseHeaders, true, payload)
    const bwPeak = peakRssMb(bw.child.pid!)
    let before: Load | undefined
    let beforePeak = 0
    if (bwBefore !== undefined) {
      before = await load(bwBefore.url, baseHeaders, true, payload)
      beforePeak = peakRssMb(bwBefore.child.pid!)
    }
    let pk: Load | undefined
    let pkPeak = 0
    if (portkey) {
      pk = await load(portkey.url, portkeyHeaders, true, payload)
      pkPeak = peakRssMb(portkey.child.pid!)
    }
    results.push({ name, direct, bw: throughBw, bwPeak, ...(before ? { before } : {}), beforePeak, ...(pk ? { pk } : {}), pkPeak })
  }
  await Promise.all([
    stop(bw.child),
    stop(fake.child),
    ...(bwBefore ? [stop(bwBefore.child)] : []),
    ...(portkey ? [stop(portkey.child)] : [])
  ])

  for (const r of results) {
    const row1 = (name: string, x: Load | undefined, peak: string) =>
      x === undefined
        ? [name, "unavailable", "", "", "", "", "", "", ""]
        : [
          name,
          x.rps.toFixed(0),
          ms(x.p50),
          ms(x.p99),
          ms(x.max),
          String(x.non2xx + x.errors),
          peak,
          `${((x.rps / r.direct.rps) * 100).toFixed(0)}%`,
          r.pk === undefined || r.pk.rps === 0 ? "—" : `${(x.rps / r.pk.rps).toFixed(1)}×`
        ]
    const size = r.name === "tiny" ? `${Buffer.byteLength(body)} B` : `${(Buffer.byteLength(REALISTIC_BODY) / 1024).toFixed(1)} KB, 9 messages, 3 tools`
    console.log(
      `\nRound 1 — throughput, ${r.name} body (${size}); latencies in ms, 1 ms resolution; errors = non-2xx + connection errors incl. timeouts; peak RSS over the run so far\n`
    )
    table(["target", "req/s", "p50", "p99", "max", "errors", "peak RSS", "vs direct", "vs Portkey"], [
      row1("direct (fake upstream)", r.direct, "—"),
      row1("Breakwater", r.bw, `${r.bwPeak.toFixed(0)} MB`),
      ...(bwBefore === undefined ? [] : [row1("Breakwater (before)", r.before, `${r.beforePeak.toFixed(0)} MB`)]),
      row1("Portkey", r.pk, `${r.pkPeak.toFixed(0)} MB`)
    ])
  }

  // ----- round 2: chaos ----------------------------------------------------------
  const faults = { rate429: 0.123, rate5xx: 0.05 }
  const [primary, secondary] = await Promise.all([startFake("primary", faults, 1), startFake("secondary")])
  const bw2 = await startBreakwater(
    "breakwater (chaos)",
    `server:\n  host: 127.0.0.1\n  port: 0\n  logLevel: info\n` +
      `upstreams:\n` +
      `  - name: primary\n    baseUrl: "${primary.url}"\n    apiKey: ${API_KEY}\n    priority: 1\n    maxConcurrent: 1000\n` +
      `  - name: secondary\n    baseUrl: "${secondary.url}"\n    apiKey: ${API_KEY}\n    priority: 2\n    maxConcurrent: 1000\n` +
      `routing: { maxAttempts: 3 }\n` +
      `cache:\n  enabled: false\n`
  )
  const fp2 = [`fake-${primary.name}`, `fake-${secondary.name}`]
  await verify("breakwater (chaos)", bw2.url, baseHeaders, fp2)

  // Portkey's config (its keys are snake_case; `on_status_codes` on the
  // strategy decides which answers move on to the next target).
  const target = (fake: Fake) => ({ provider: "openai", custom_host: fake.url, api_key: API_KEY })
  const fallback = { strategy: { mode: "fallback", on_status_codes: [429, 503] }, targets: [target(primary), target(secondary)] }
  const withRetry = { ...fallback, retry: { attempts: 1, on_status_codes: [429, 503] } }
  const pkHeaders = (config: object) => ({ ...baseHeaders, "x-portkey-config": JSON.stringify(config) })

  let portkey2: { child: ChildProcess; url: string } | undefined
  if (portkeyProblem === undefined) {
    try {
      portkey2 = await startPortkey()
      await verify("portkey (fallback)", portkey2.url, pkHeaders(fallback), fp2)
      await verify("portkey (fallback + retry)", portkey2.url, pkHeaders(withRetry), fp2)
    } catch (e) {
      portkeyProblem = firstLine(e)
      if (portkey2) await stop(portkey2.child)
      portkey2 = undefined
      console.log(`\nPortkey is unavailable for round 2: ${portkeyProblem}`)
    }
  }

  /** Warm up, reset the fakes' counters, then measure: the counters give upstream calls per request. */
  const chaos = async (url: string, headers: Record<string, string>) => {
    if (WARMUP > 0) {
      await autocannon({ url: `${url}/chat/completions`, method: "POST", headers, body, connections: CONNECTIONS, duration: WARMUP })
    }
    await Promise.all([resetFake(primary), resetFake(secondary)])
    const r = await load(url, headers, false)
    const [p, s] = await Promise.all([fakeCounters(primary), fakeCounters(secondary)])
    return { r, primaryCalls: p.requests, secondaryCalls: s.requests }
  }
  const rows2: Array<[string, Awaited<ReturnType<typeof chaos>> | undefined]> = []
  rows2.push(["direct → primary (no gateway)", await chaos(primary.url, baseHeaders)])
  rows2.push(["Breakwater (priority failover, maxAttempts 3)", await chaos(bw2.url, baseHeaders)])
  rows2.push(["Portkey (fallback on 429/503)", portkey2 ? await chaos(portkey2.url, pkHeaders(fallback)) : undefined])
  rows2.push(["Portkey (fallback + retry 1 on 429/503)", portkey2 ? await chaos(portkey2.url, pkHeaders(withRetry)) : undefined])
  await Promise.all([stop(bw2.child), stop(primary.child), stop(secondary.child), ...(portkey2 ? [stop(portkey2.child)] : [])])

  console.log(
    `\nRound 2 — chaos: primary fake ${JSON.stringify(faults)}, healthy secondary ` +
      `(latencies in ms over all responses; error rate = non-2xx / responses)\n`
  )
  table(
    ["target", "req/s", "error rate", "non-2xx by status", "conn. errors", "p50", "p99", "upstream calls/req (primary + secondary)"],
    rows2.map(([name, x]) => {
      if (x === undefined) return [name, "unavailable", "", "", "", "", "", ""]
      const { r } = x
      const statuses = Object.entries(r.byStatus).filter(([code]) => !code.startsWith("2")).map(([code, n]) => `${code}: ${n}`)
      const perReq = (n: number) => (n / Math.max(1, r.total)).toFixed(2)
      return [
        name,
        r.rps.toFixed(0),
        `${((r.non2xx / Math.max(1, r.total)) * 100).toFixed(2)}%`,
        statuses.length ? statuses.join(", ") : "—",
        String(r.errors),
        ms(r.p50),
        ms(r.p99),
        `${perReq(x.primaryCalls + x.secondaryCalls)} (${perReq(x.primaryCalls)} + ${perReq(x.secondaryCalls)})`
      ]
    })
  )
  if (portkeyProblem !== undefined) console.log(`\nPortkey unavailable: ${portkeyProblem}`)

  // ----- the handler's cost per request ---------------------------------------------
  const profiled = await profileRows()
  console.log(`\nPer request in the handler, traces off (bench:handler's profile; ${profiled.source})\n`)
  table(["body", "Effect operations", "fibers", "KB allocated"], profiled.rows)
  console.log(`\nfinished in ${((Date.now() - started) / 1000).toFixed(0)} s`)
}

const watchdog = setTimeout(() => {
  console.error(`bench: over the ${TIME_LIMIT_MS / 1000} s limit, stopping`)
  killAll()
  process.exit(2)
}, TIME_LIMIT_MS)
watchdog.unref()

main().then(
  async () => {
    await stopAll()
    process.exit(0)
  },
  async (error) => {
    console.error(error)
    await stopAll()
    process.exit(1)
  }
)
