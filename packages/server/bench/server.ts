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
 *
 * Sequential pass: one connection per target, one request at a time, 5,000
 * requests (after 200 to warm up) to each target, the targets taking turns
 * (one request each, in a new random order every round) so that other work on
 * the machine falls on every row alike: the latency the gateway adds when
 * nothing queues, p50 and p99, minus direct and minus a plain node:http +
 * undici proxy (bench/plain-proxy.ts, its own process: what a second
 * loopback hop costs by itself), and each server's CPU per request
 * (/proc/PID/schedstat, over the whole pass). `BENCH_SEQ_COUNT` sets the
 * count; `BENCH_ONLY=sequential` runs this pass alone. The gateways' stdout
 * (a line per request) goes to a temporary file, as a server's log would,
 * not to this process, which measures (`BENCH_GATEWAY_STDOUT=pipe`: here,
 * as before). Redis (redis-server, when it is on the PATH)
 * is started by this script on 127.0.0.1 on a free port, without
 * persistence, and stopped at the end; the Redis row also gives redis-server's
 * CPU per request (it runs on the same cores). `BENCH_BASELINE=DIR` adds the
 * Breakwater of another checkout (its built bin) to each pass: in-memory, and
 * on the same redis-server (under the prefix `before:`) when there is one.
 *
 * `BENCH_ONLY=load` runs the load rows alone (no sequential pass, no console
 * A/B: about a minute), to iterate on throughput. `BENCH_LOAD_ROUNDS=N`
 * (default 1) runs the gateways' load rows N times, the order reversed every
 * other round (in-memory, Redis, Redis, in-memory, ...), so that drift on the
 * machine falls on both; each row is then pooled over its rounds (req/s =
 * requests / seconds, p50 and p99 the median of the rounds', max the max),
 * and each round's Redis / in-memory ratio is printed with their median.
 */
import autocannon from "autocannon"
import { Agent, request } from "undici"
import { type ChildProcess, spawn } from "node:child_process"
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { type AddressInfo, createServer } from "node:net"
import { availableParallelism, loadavg, tmpdir } from "node:os"
import { join } from "node:path"

const CONNECTIONS = Number(process.env["BENCH_CONNECTIONS"] ?? 50)
const BASELINE = process.env["BENCH_BASELINE"] || undefined
const DURATION = Number(process.env["BENCH_DURATION"] ?? 10)
/** Pairs of ABBA runs (none, console, console, none) for the console's cost; 10 s each by default. */
const CONSOLE_PAIRS = Math.max(1, Number(process.env["BENCH_CONSOLE_PAIRS"] ?? 3))
/** `BENCH_ONLY=console`: only the console's A/B (the other rows left out), for a longer run of it alone. */
const ONLY_CONSOLE = process.env["BENCH_ONLY"] === "console"
/** `BENCH_ONLY=sequential`: only the sequential pass (no load rows, no console A/B). */
const ONLY_SEQUENTIAL = process.env["BENCH_ONLY"] === "sequential"
/** `BENCH_ONLY=load`: only the load rows (no sequential pass, no console A/B). */
const ONLY_LOAD = process.env["BENCH_ONLY"] === "load"
/** Rounds of the gateways' load rows, the order reversed every other round. */
const LOAD_ROUNDS = Math.max(1, Number(process.env["BENCH_LOAD_ROUNDS"] ?? 1))
const root = new URL("../../../", import.meta.url).pathname

const children: Array<ChildProcess> = []
const cleanup = () => {
  for (const c of children) c.kill("SIGKILL")
  for (const f of tempFiles) rmSync(f, { force: true })
}
process.on("exit", cleanup)

/**
 * Where the gateways' stdout (their request lines) goes: `file` (the default), a temporary file,
 * as a server's log would go to a file or a collector; `pipe`, this process, which then reads
 * every line on the same event loop that measures the requests.
 */
const GATEWAY_STDOUT = process.env["BENCH_GATEWAY_STDOUT"] === "pipe" ? "pipe" : "file"
const tempFiles: Array<string> = []

/** Spawns a process and resolves with the first stdout line matching `ready` (stdout to a file when `toFile`). */
const launch = (cmd: string, args: Array<string>, ready: RegExp, toFile = false): Promise<{ child: ChildProcess; match: RegExpMatchArray }> =>
  new Promise((resolve, reject) => {
    const file = toFile ? join(tmpdir(), `breakwater-bench-${process.pid}-stdout-${tempFiles.length}.log`) : undefined
    const fd = file === undefined ? undefined : openSync(file, "w")
    if (file !== undefined) tempFiles.push(file)
    const child = spawn(cmd, args, { cwd: root, stdio: ["ignore", fd ?? "pipe", "pipe"] })
    if (fd !== undefined) closeSync(fd)
    children.push(child)
    let buffer = ""
    const timer = setTimeout(() => reject(new Error(`${args.join(" ")} did not start`)), 20_000)
    if (file !== undefined) {
      const poll = setInterval(() => {
        const m = readFileSync(file, "utf8").match(ready)
        if (m) {
          clearInterval(poll)
          clearTimeout(timer)
          resolve({ child, match: m })
        }
      }, 25)
      child.once("exit", () => clearInterval(poll))
    } else child.stdout!.on("data", (d: Buffer) => {
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
    // A command that is not there (redis-server off the PATH): a rejection, not an unheard 'error' that ends this process.
    child.once("error", (error) => {
      clearTimeout(timer)
      reject(error)
    })
  })

const rssOf = (pid: number) => {
  const status = readFileSync(`/proc/${pid}/status`, "utf8")
  const kb = (key: string) => Number(/(\d+) kB/.exec(status.split("\n").find((l) => l.startsWith(key)) ?? "")?.[1] ?? 0)
  return { rssMb: kb("VmRSS:") / 1024, peakMb: kb("VmHWM:") / 1024 }
}

/** Nanoseconds a process (its main thread) has spent on a CPU so far (schedstat: finer than /proc's stat ticks). */
const onCpuNs = (pid: number) => Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[0])

/** CPU seconds (user + system) a process has used so far. */
const cpuOf = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return (Number(fields[11]) + Number(fields[12])) / 100
}

const body = JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "Benchmark me." }] })

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

/** Sequential pass: requests per target (after SEQ_WARMUP each). */
const SEQ_COUNT = Math.max(100, Number(process.env["BENCH_SEQ_COUNT"] ?? 5000))
const SEQ_WARMUP = 200

/**
 * One connection per target, one request at a time: the latency the gateway
 * adds when it is not queueing. The targets take turns one request at a
 * time, in a new random order every round (A C B, B A C, ...), so that
 * whatever else the machine is doing meanwhile falls on every row alike.
 * Turns of 100 requests (as before) lasted about 50 ms, as long as a burst of
 * the host's other work: a burst fell on one row's turn and moved that row's
 * p99 alone; one request per turn spreads it over all of them.
 */
const sequential = async (urls: ReadonlyArray<string>, pids: ReadonlyArray<number | undefined>) => {
  const headers = { "content-type": "application/json", authorization: "Bearer sk-bench-key", "cache-control": "no-cache, no-store" }
  const agents = urls.map(() => new Agent({ connections: 1 }))
  const samples = urls.map((): Array<number> => [])
  const once = async (k: number, keep: boolean) => {
    const t0 = process.hrtime.bigint()
    const res = await request(`${urls[k]}/chat/completions`, { method: "POST", body, headers, dispatcher: agents[k]! })
    await res.body.text()
    if (keep) samples[k]!.push(Number(process.hrtime.bigint() - t0) / 1e6)
  }
  for (let k = 0; k < urls.length; k++) for (let i = 0; i < SEQ_WARMUP; i++) await once(k, false)
  // A fixed-seed shuffle: the same order of turns in every run.
  let seed = 0x9e3779b9
  const rand = () => {
    seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0
    return seed / 2 ** 32
  }
  const order = urls.map((_, k) => k)
  // Server CPU over the whole pass (each server's own turns and its idle work meanwhile).
  const cpu0 = pids.map((pid) => (pid === undefined ? 0 : onCpuNs(pid)))
  for (let round = 0; round < SEQ_COUNT; round++) {
    for (let j = order.length - 1; j > 0; j--) {
      const r = Math.floor(rand() * (j + 1))
      ;[order[j], order[r]] = [order[r]!, order[j]!]
    }
    for (const k of order) await once(k, true)
  }
  const cpuNs = pids.map((pid, k) => (pid === undefined ? 0 : onCpuNs(pid) - cpu0[k]!))
  await Promise.all(agents.map((a) => a.close()))
  return samples.map((xs, k) => {
    const n = xs.length
    xs.sort((a, b) => a - b)
    return { p50: xs[Math.floor(n * 0.5)]!, p99: xs[Math.floor(n * 0.99)]!, cpuUs: pids[k] === undefined ? undefined : cpuNs[k]! / 1e3 / n }
  })
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

interface Target {
  readonly name: string
  readonly url: string
  readonly pid: number | undefined
}

const main = async () => {
  // The gateways are found by their start line ("Breakwater on http://..."), an info line:
  // a level above info would leave the bench waiting for it.
  const logLevel = process.env["BENCH_LOG_LEVEL"] ?? "info"
  if (!["all", "trace", "debug", "info"].includes(logLevel)) {
    throw new Error(`BENCH_LOG_LEVEL=${logLevel}: the bench reads the gateway's address from its info-level start line; use info, debug or trace`)
  }
  // `node --import tsx` rather than the tsx wrapper: the pid is the fake's
  // own, so the cleanup really stops it.
  const fake = await launch("node", ["--import", "tsx", "packages/core/src/testing/fake-upstream-main.ts", "--name", "bench"], /listening (\S+)/)
  const upstreamUrl = fake.match[1]!
  let configs = 0
  const configFor = (store: string) => {
    const file = join(tmpdir(), `breakwater-bench-${process.pid}-${configs++}.yaml`)
    tempFiles.push(file)
    writeFileSync(
      file,
      `server:\n  host: 127.0.0.1\n  port: 0\n  adminKey: sk-bench-admin\n  logLevel: ${logLevel}\n` +
        `keys:\n  - { name: bench, key: sk-bench-key, requestsPerMinute: 100000000 }\n` +
        `upstreams:\n  - name: bench\n    baseUrl: "${upstreamUrl}"\n    apiKey: sk-bench\n    maxConcurrent: 1000\n` +
        `cache:\n  enabled: false\n` + store
    )
    return file
  }
  const startGateway = async (name: string, bin: string, store = ""): Promise<Target> => {
    const started = await launch("node", [bin, "--config", configFor(store)], /on (http:\/\/\S+)/, GATEWAY_STDOUT === "file")
    return { name, url: `${started.match[1]!}/v1`, pid: started.child.pid }
  }
  const direct: Target = { name: "direct (fake upstream)", url: upstreamUrl, pid: undefined }
  // The reference for a second hop by itself: node:http + undici, nothing else (bench/plain-proxy.ts).
  const plainProxy = ONLY_CONSOLE || ONLY_LOAD ? undefined : await (async (): Promise<Target> => {
    const started = await launch("node", ["--import", "tsx", "packages/server/bench/plain-proxy.ts", "--upstream", upstreamUrl], /listening (\S+)/)
    return { name: "plain proxy (node:http+undici)", url: started.match[1]!, pid: started.child.pid }
  })()
  const memory = await startGateway("Breakwater, in-memory stores", "packages/server/bin/breakwater.js")
  const before = BASELINE === undefined || !existsSync(join(BASELINE, "packages/server/bin/breakwater.js"))
    ? undefined
    : await startGateway("Breakwater (before), in-memory", join(BASELINE, "packages/server/bin/breakwater.js"))

  // Redis stores, when redis-server is here: its own, on a free port.
  let redis: Target | undefined
  let redisServerPid: number | undefined
  let beforeRedis: Target | undefined
  if (!ONLY_CONSOLE) try {
    const redisPort = await freePort()
    const redisServer = await launch("redis-server", ["--port", String(redisPort), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"], /Ready to accept connections/)
    redisServerPid = redisServer.child.pid
    redis = await startGateway(
      "Breakwater, Redis stores",
      "packages/server/bin/breakwater.js",
      `store: { kind: redis, url: "redis://127.0.0.1:${redisPort}" }\n`
    )
    // The other checkout on the same redis-server, under a prefix of its own.
    if (before !== undefined) {
      beforeRedis = await startGateway(
        "Breakwater (before), Redis",
        join(BASELINE!, "packages/server/bin/breakwater.js"),
        `store: { kind: redis, url: "redis://127.0.0.1:${redisPort}", prefix: "before:" }\n`
      )
    }
  } catch {
    console.error("redis-server not available: the Redis row is left out")
  }
  const gateways = [memory, ...(before ? [before] : []), ...(redis ? [redis] : []), ...(beforeRedis ? [beforeRedis] : [])]

  // Warm every path (JIT, keep-alive pools), then measure one after the other.
  for (const t of ONLY_CONSOLE ? [memory] : [direct, ...(plainProxy ? [plainProxy] : []), ...gateways]) {
    await autocannon({ url: `${t.url}/chat/completions`, method: "POST", body, connections: 8, duration: 2, headers: { "content-type": "application/json", authorization: "Bearer sk-bench-key" } })
  }
  const seq = new Map<Target, { readonly p50: number; readonly p99: number; readonly cpuUs: number | undefined }>()
  const loads = new Map<Target, { r: Awaited<ReturnType<typeof load>>; cpuUs: number; mem: ReturnType<typeof rssOf> | undefined }>()
  /** redis-server's CPU per request of each Redis row, and each round's Redis / in-memory req/s (this checkout's, the other's). */
  const redisServerCpuUs = new Map<Target, number>()
  const roundRatios: Array<number> = []
  const beforeRoundRatios: Array<number> = []
  const seqTargets = [direct, ...(plainProxy ? [plainProxy] : []), ...gateways]
  if (!ONLY_CONSOLE && !ONLY_LOAD) {
    const results = await sequential(seqTargets.map((t) => t.url), seqTargets.map((t) => t.pid))
    seqTargets.forEach((t, i) => seq.set(t, results[i]!))
  }
  if (!ONLY_CONSOLE && !ONLY_SEQUENTIAL) {
    type Run = Awaited<ReturnType<typeof load>> & { seconds: number; cpu: number; redisCpu: number }
    const runs = new Map<Target, Array<Run>>()
    const measure = async (t: Target) => {
      const c0 = t.pid === undefined ? 0 : cpuOf(t.pid)
      const onRedis = (t === redis || t === beforeRedis) && redisServerPid !== undefined
      const rc0 = onRedis ? cpuOf(redisServerPid!) : 0
      const r = await load(t.url)
      const cpu = t.pid === undefined ? 0 : cpuOf(t.pid) - c0
      const redisCpu = onRedis ? cpuOf(redisServerPid!) - rc0 : 0
      const run: Run = { ...r, seconds: r.total / Math.max(1e-9, r.rps), cpu, redisCpu }
      runs.set(t, [...(runs.get(t) ?? []), run])
      return run
    }
    await measure(direct)
    for (let round = 0; round < LOAD_ROUNDS; round++) {
      const order = round % 2 === 0 ? gateways : [...gateways].reverse()
      const got = new Map<Target, Run>()
      for (const t of order) got.set(t, await measure(t))
      if (redis !== undefined) roundRatios.push(got.get(redis)!.rps / got.get(memory)!.rps)
      if (beforeRedis !== undefined) beforeRoundRatios.push(got.get(beforeRedis)!.rps / got.get(before!)!.rps)
    }
    const median = (xs: ReadonlyArray<number>) => {
      const s = [...xs].sort((a, b) => a - b)
      return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
    }
    for (const [t, rs] of runs) {
      const total = rs.reduce((a, r) => a + r.total, 0)
      const r = {
        rps: total / rs.reduce((a, r) => a + r.seconds, 0),
        p50: median(rs.map((r) => r.p50)),
        p99: median(rs.map((r) => r.p99)),
        max: Math.max(...rs.map((r) => r.max)),
        errors: rs.reduce((a, r) => a + r.errors, 0),
        total
      }
      const cpuUs = (rs.reduce((a, r) => a + r.cpu, 0) * 1e6) / Math.max(1, total)
      if ((t === redis || t === beforeRedis) && redisServerPid !== undefined) {
        redisServerCpuUs.set(t, (rs.reduce((a, r) => a + r.redisCpu, 0) * 1e6) / Math.max(1, total))
      }
      loads.set(t, { r, cpuUs, mem: t.pid === undefined ? undefined : rssOf(t.pid) })
    }
  }

  // The in-memory gateway with one operator console connected (its snapshots, the sampled tail),
  // against none: CONSOLE_PAIRS pairs in ABBA order (none, console, console, none) so that drift
  // (other work on the machine) falls on both sides; requests and server CPU summed per side, and
  // each pair's own ratio kept so the median says whether one noisy run decided the figure.
  const sides = { none: { total: 0, seconds: 0, cpu: 0 }, console: { total: 0, seconds: 0, cpu: 0 } }
  const pairRatios: Array<number> = []
  let consoleEvents = 0
  for (let pair = 0; pair < (ONLY_SEQUENTIAL || ONLY_LOAD ? 0 : CONSOLE_PAIRS); pair++) {
    const pairSides = { none: { total: 0, seconds: 0 }, console: { total: 0, seconds: 0 } }
    for (const side of ["none", "console", "console", "none"] as const) {
      const client = side === "console" ? await openConsole(memory.url.replace(/\/v1$/, "")) : undefined
      const c0 = cpuOf(memory.pid!)
      const r = await load(memory.url)
      sides[side].cpu += cpuOf(memory.pid!) - c0
      sides[side].total += r.total
      sides[side].seconds += r.total / Math.max(1, r.rps)
      pairSides[side].total += r.total
      pairSides[side].seconds += r.total / Math.max(1, r.rps)
      if (client !== undefined) {
        consoleEvents += client.events()
        client.close()
      }
    }
    pairRatios.push(
      (pairSides.console.total / Math.max(1e-9, pairSides.console.seconds)) /
        (pairSides.none.total / Math.max(1e-9, pairSides.none.seconds))
    )
  }
  const rate = (x: { total: number; seconds: number }) => x.total / Math.max(1e-9, x.seconds)
  const perReq = (x: { total: number; cpu: number }) => (x.cpu * 1e6) / Math.max(1, x.total)

  if (!ONLY_CONSOLE && !ONLY_SEQUENTIAL) {
    const d = loads.get(direct)!.r
    const m = loads.get(memory)!
    console.log(
      `\nbench:server — ${CONNECTIONS} connections x ${DURATION}s per row${LOAD_ROUNDS > 1 ? ` (gateways: ${LOAD_ROUNDS} rounds, pooled)` : ""}, POST /v1/chat/completions, fake upstream at 0 ms; ` +
        `node ${process.version}, ${availableParallelism()} cores, ${new Date().toISOString().slice(0, 10)}\n`
    )
    console.log(`| ${"target".padEnd(30)} | ${"req/s".padStart(8)} | ${"p50 ms".padStart(7)} | ${"p99 ms".padStart(7)} | ${"max ms".padStart(7)} | ${"errors".padStart(6)} | ${"CPU µs/req".padStart(10)} | notes |`)
    console.log(`|${"-".repeat(32)}|${"-".repeat(9)}:|${"-".repeat(8)}:|${"-".repeat(8)}:|${"-".repeat(8)}:|${"-".repeat(7)}:|${"-".repeat(11)}:|-------|`)
    for (const t of [direct, ...gateways]) {
      const { cpuUs, mem, r } = loads.get(t)!
      const notes = t === direct
        ? "baseline"
        : `${((r.rps / d.rps) * 100).toFixed(0)}% of direct` +
          (t === memory ? "" : `, ${((r.rps / m.r.rps) * 100).toFixed(0)}% of in-memory`) +
          (t === beforeRedis ? `, ${((r.rps / loads.get(before!)!.r.rps) * 100).toFixed(0)}% of (before) in-memory` : "") +
          (redisServerCpuUs.has(t) ? `; redis-server ${redisServerCpuUs.get(t)!.toFixed(0)} µs/req` : "") +
          `; RSS ${mem!.rssMb.toFixed(0)} MB (peak ${mem!.peakMb.toFixed(0)} MB)`
      console.log(
        `| ${t.name.padEnd(30)} | ${r.rps.toFixed(0).padStart(8)} | ${r.p50.toFixed(2).padStart(7)} | ${r.p99.toFixed(2).padStart(7)} | ${
          r.max.toFixed(1).padStart(7)
        } | ${String(r.errors).padStart(6)} | ${(t === direct ? "—" : cpuUs.toFixed(0)).padStart(10)} | ${notes} |`
      )
    }
    for (const [label, ratios] of [["", roundRatios], [" (before)", beforeRoundRatios]] as const) {
      if (ratios.length < 2) continue
      const sorted = [...ratios].sort((a, b) => a - b)
      const mid = sorted.length % 2 === 1
        ? sorted[(sorted.length - 1) / 2]!
        : (sorted[sorted.length / 2 - 1]! + sorted[sorted.length / 2]!) / 2
      console.log(
        `\nRedis / in-memory req/s${label}, each of ${ratios.length} rounds (order reversed every other round): ` +
          `${ratios.map((x) => (x * 100).toFixed(1)).join(", ")}%; median ${(mid * 100).toFixed(1)}%`
      )
    }
    console.log(`load average at the end of the load rows: ${loadavg().map((x) => x.toFixed(2)).join(" ")}`)
  }
  if (!ONLY_CONSOLE && !ONLY_LOAD) {
    const ds = seq.get(direct)!
    const ps = plainProxy === undefined ? undefined : seq.get(plainProxy)
    const f = (x: number) => x.toFixed(3)
    console.log(
      `\nsequential, 1 connection per target, ${SEQ_COUNT} requests each (after ${SEQ_WARMUP}), the targets taking turns one request at a time; ` +
        `ms; added = minus direct; over proxy = minus the plain proxy's; load average ${loadavg().map((x) => x.toFixed(2)).join(" ")}\n`
    )
    console.log(`| ${"target".padEnd(30)} | p50 | p99 | added p50 | added p99 | over proxy p50 | over proxy p99 | server CPU µs/req |`)
    console.log(`|${"-".repeat(32)}|----:|----:|----------:|----------:|---------------:|---------------:|------------------:|`)
    for (const t of seqTargets) {
      const x = seq.get(t)!
      const added = t === direct ? ["—", "—"] : [f(x.p50 - ds.p50), f(x.p99 - ds.p99)]
      const over = t === direct || t === plainProxy || ps === undefined ? ["—", "—"] : [f(x.p50 - ps.p50), f(x.p99 - ps.p99)]
      const cpu = x.cpuUs === undefined ? "—" : x.cpuUs.toFixed(0)
      console.log(`| ${t.name.padEnd(30)} | ${f(x.p50)} | ${f(x.p99)} | ${added[0]} | ${added[1]} | ${over[0]} | ${over[1]} | ${cpu} |`)
    }
  }
  if (!ONLY_SEQUENTIAL && !ONLY_LOAD) {
    const sortedRatios = [...pairRatios].sort((a, b) => a - b)
    const medianRatio = sortedRatios.length % 2 === 1
      ? sortedRatios[(sortedRatios.length - 1) / 2]!
      : (sortedRatios[sortedRatios.length / 2 - 1]! + sortedRatios[sortedRatios.length / 2]!) / 2
    console.log(
      `\nwith one operator console open (GET /admin/events), in-memory, ${CONSOLE_PAIRS} ABBA pairs (${2 * CONSOLE_PAIRS} runs each side): ` +
        `${rate(sides.console).toFixed(0)} vs ${rate(sides.none).toFixed(0)} req/s without = ${((rate(sides.console) / rate(sides.none)) * 100).toFixed(1)}% pooled, ` +
        `median pair ${(medianRatio * 100).toFixed(1)}% (pairs: ${pairRatios.map((x) => (x * 100).toFixed(1)).join(", ")}); ` +
        `server CPU ${perReq(sides.console).toFixed(0)} vs ${perReq(sides.none).toFixed(0)} µs/req; the console read ${consoleEvents} events`
    )
  }
  cleanup()
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  cleanup()
  process.exit(1)
})
