/**
 * `npm run bench:soak`: the gateway under a long, hostile, mixed load.
 *
 * Starts three fake upstreams (each its own process) with every fault the
 * fake can inject, switched in phases over the run, and the Breakwater
 * server in front of them (its own process). Then, for `--minutes` (default
 * 10), `--concurrency` workers (default 32) send a mix of streaming and
 * non-streaming chats and embeddings, some cacheable, some from a key with a
 * budget, and abort a share of them at a random moment (0–1.5 s), as real
 * clients do.
 *
 * Prints, once a minute, the requests of that minute, the client-visible
 * errors and the gateway's RSS; at the end the totals, the client-visible
 * errors by cause, the RSS trend after warm-up, what the gateway logged at
 * ERROR level, and how it exited on SIGTERM. A client-visible error is an
 * answer that is not a usable completion: an error status, an error event
 * in a stream, a stream without `[DONE]`, a broken connection, or no answer
 * within 30 s. Requests the client aborted on purpose are counted apart.
 *
 * Traffic stays on 127.0.0.1; the run is bounded in time (and in count).
 *
 *   npm run bench:soak [-- --minutes 10 --concurrency 32 --seed 1]
 */
import { type ChildProcess, spawn } from "node:child_process"
import { appendFileSync, readFileSync, writeFileSync } from "node:fs"
import { availableParallelism, tmpdir } from "node:os"
import { join } from "node:path"
import { Agent, request } from "undici"

const arg = (name: string, fallback: number): number => {
  const i = process.argv.indexOf(`--${name}`)
  const v = i === -1 ? process.env[`SOAK_${name.toUpperCase()}`] : process.argv[i + 1]
  return v === undefined ? fallback : Number(v)
}

const MINUTES = arg("minutes", 10)
const CONCURRENCY = arg("concurrency", 32)
const SEED = arg("seed", 1)
const ABORT_SHARE = 0.1
const CLIENT_TIMEOUT_MS = 30_000
/** A hard cap on requests, whatever the duration. */
const MAX_REQUESTS = 5_000_000
/** `SOAK_DUMP=FILE`: the gateway's log lines of failed relays (5xx) go there too, for a closer look. */
const dump = process.env["SOAK_DUMP"]
const root = new URL("../../../", import.meta.url).pathname

// ---------------------------------------------------------------------------
// processes

const children: Array<ChildProcess> = []
const cleanup = () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL")
}
process.on("exit", cleanup)

interface Launched {
  readonly child: ChildProcess
  readonly match: RegExpMatchArray
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>
}

/** Spawns a process and resolves with the first stdout line matching `ready`; `onLine` sees every later line. */
const launch = (
  args: Array<string>,
  ready: RegExp,
  onLine?: (line: string) => void,
  onErr?: (text: string) => void
): Promise<Launched> =>
  new Promise((resolve, reject) => {
    const child = spawn("node", args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    children.push(child)
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((res) =>
      child.once("exit", (code, signal) => res({ code, signal, at: performance.now() }))
    )
    let buffer = ""
    let started = false
    const timer = setTimeout(() => reject(new Error(`${args.join(" ")} did not start`)), 30_000)
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      buffer += d
      if (!started) {
        const m = buffer.match(ready)
        if (m === null) return
        started = true
        clearTimeout(timer)
        resolve({ child, match: m, exited })
      }
      for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
        onLine?.(buffer.slice(0, nl))
        buffer = buffer.slice(nl + 1)
      }
    })
    child.stderr!.setEncoding("utf8").on("data", (d: string) => onErr?.(d))
    void exited.then((e) => {
      if (!started) reject(new Error(`${args.join(" ")} exited with ${e.code ?? e.signal}`))
    })
  })

const rssMbOf = (pid: number): number => {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8")
    return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024
  } catch {
    return Number.NaN
  }
}

// ---------------------------------------------------------------------------
// a seeded PRNG, so that two runs send the same mix

const mulberry32 = (seed: number): () => number => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
const rand = mulberry32(SEED)

// ---------------------------------------------------------------------------
// faults: every fault of the fake, in phases

type Faults = Record<string, unknown>

/** Always on, per fake: a steady background of every per-request fault. */
const background: Record<string, Faults> = {
  alpha: {
    rate429: 0.08,
    retryAfter: "1",
    rate5xx: 0.04,
    reset: 0.01,
    hang: 0.005,
    truncated: 0.01,
    emptyContent: 0.01,
    emptyChoices: 0.01,
    streamCut: 0.03,
    latencyMs: 5,
    jitterMs: 30
  },
  beta: {
    rate429: 0.05,
    retryAfterMs: 300,
    rate5xx: 0.03,
    reset: 0.01,
    hang: 0.005,
    truncated: 0.01,
    emptyContent: 0.005,
    emptyChoices: 0.005,
    streamCut: 0.02,
    latencyMs: 20,
    jitterMs: 80,
    rateLimitHeaders: { remainingRequests: 100, remainingTokens: 100000, resetRequests: "1s", resetTokens: "1s" }
  },
  gamma: { latencyMs: 40, jitterMs: 60, rate5xx: 0.01, streamCut: 0.01 }
}

/** Whole-upstream faults switched on for a while, one phase per 30 s, in turn. */
const phases: ReadonlyArray<{ readonly fake: string; readonly faults: Faults; readonly label: string }> = [
  { fake: "alpha", faults: { status: 503 }, label: "alpha answers 503 to everything" },
  { fake: "beta", faults: { quota: "429" }, label: "beta's quota is spent (429 insufficient_quota)" },
  { fake: "alpha", faults: { hang: 1 }, label: "alpha hangs every request" },
  { fake: "beta", faults: { quota: "200" }, label: "beta's quota is spent (200 with an error body)" },
  { fake: "alpha", faults: { status: 401 }, label: "alpha rejects its key (401)" },
  { fake: "beta", faults: { reset: 1 }, label: "beta resets every connection" },
  { fake: "alpha", faults: { rate429: 1, retryAfter: "5" }, label: "alpha rate limits everything (Retry-After 5)" },
  { fake: "gamma", faults: { streamCut: 1 }, label: "gamma cuts every stream" },
  { fake: "beta", faults: { modelsStatus: 500, rate5xx: 0.5 }, label: "beta half 503s, probes fail" },
  { fake: "alpha", faults: {}, label: "quiet" }
]

const setFaults = async (url: string, faults: Faults) => {
  const res = await request(`${url.replace(/\/v1$/, "")}/_fake/faults`, {
    method: "POST",
    body: JSON.stringify(faults),
    headers: { "content-type": "application/json" }
  })
  await res.body.text()
}

// ---------------------------------------------------------------------------
// the load

interface Tally {
  requests: number
  ok: number
  aborted: number
  errors: number
}

const fresh = (): Tally => ({ requests: 0, ok: 0, aborted: 0, errors: 0 })
const total = fresh()
let minute = fresh()
const causes = new Map<string, number>()
const kinds = new Map<string, Tally>()

const countError = (cause: string) => {
  causes.set(cause, (causes.get(cause) ?? 0) + 1)
}

/** An error body's `status code`, or the status alone. */
const errorCause = (status: number, text: string): string => {
  try {
    const e = (JSON.parse(text) as { error?: { code?: unknown; type?: unknown } }).error
    return `${status} ${String(e?.code ?? e?.type ?? "")}`.trim()
  } catch {
    return `${status} (not JSON)`
  }
}

/** The kind of failure an error event in a stream names, without numbers or names. */
const streamCause = (event: string): string => {
  try {
    const e = (JSON.parse(event) as { error?: { message?: unknown } }).error
    const message = String(e?.message ?? "error event")
      .replace(/\b(alpha|beta|gamma)\b/g, "<upstream>")
      .replace(/\d+(\.\d+)?\s*(ms|s)?/g, "N")
    return `stream error event: ${message.slice(0, 90)}`
  } catch {
    return "stream error event (not JSON)"
  }
}

const prompts = ["Hello!", "Summarise the plot of Hamlet in one line.", "What is 2 + 2?", "Name three rivers.", "Write a haiku."]

const nextRequest = () => {
  const r = rand()
  const kind = r < 0.45 ? "chat" : r < 0.9 ? "stream" : "embeddings"
  const key = rand() < 0.2 ? "sk-soak-budget" : "sk-soak-main"
  const content = prompts[Math.floor(rand() * prompts.length)]!
  const deterministic = rand() < 0.3
  const body = kind === "embeddings"
    ? { model: "text-embedding-3-small", input: content }
    : {
      model: rand() < 0.8 ? "gpt-4.1" : "gpt-4.1-mini",
      messages: [{ role: "user", content }],
      ...(deterministic ? { temperature: 0 } : {}),
      ...(kind === "stream" ? { stream: true } : {}),
      max_tokens: 64
    }
  const abortAfter = rand() < ABORT_SHARE ? rand() * 1500 : undefined
  return { kind, key, body: JSON.stringify(body), abortAfter }
}

const once = async (gateway: string, agent: Agent): Promise<void> => {
  const r = nextRequest()
  const controller = new AbortController()
  let abortTimer: NodeJS.Timeout | undefined
  if (r.abortAfter !== undefined) abortTimer = setTimeout(() => controller.abort(), r.abortAfter)
  const deadline = setTimeout(() => controller.abort(new Error("client timeout")), CLIENT_TIMEOUT_MS)
  const k = kinds.get(r.kind) ?? fresh()
  kinds.set(r.kind, k)
  total.requests++
  minute.requests++
  k.requests++
  let outcome: "ok" | "aborted" | string
  try {
    const res = await request(`${gateway}/${r.kind === "embeddings" ? "embeddings" : "chat/completions"}`, {
      method: "POST",
      body: r.body,
      headers: { "content-type": "application/json", authorization: `Bearer ${r.key}` },
      dispatcher: agent,
      signal: controller.signal
    })
    // Error listeners first: an abort must never become an unhandled error here either.
    res.body.on("error", () => {})
    const text = await res.body.text()
    if (res.statusCode !== 200) outcome = errorCause(res.statusCode, text)
    else if (r.kind === "stream") {
      const error = /^data: (\{"error".*)$/m.exec(text)
      outcome = error !== null ? streamCause(error[1]!) : text.includes("data: [DONE]") ? "ok" : "stream ended without [DONE]"
    } else {
      outcome = text.startsWith("{") && (text.includes("\"choices\"") || text.includes("\"data\"")) ? "ok" : "200 with an unusable body"
    }
  } catch (e) {
    const err = e as { name?: string; code?: string; message?: string }
    if (r.abortAfter !== undefined && controller.signal.aborted && controller.signal.reason?.message !== "client timeout") {
      outcome = "aborted"
    } else if (controller.signal.reason?.message === "client timeout") {
      outcome = `no answer within ${CLIENT_TIMEOUT_MS / 1000} s`
    } else {
      outcome = `connection error: ${err.code ?? err.name ?? "unknown"}`
    }
  } finally {
    clearTimeout(deadline)
    if (abortTimer !== undefined) clearTimeout(abortTimer)
  }
  if (outcome === "ok") {
    total.ok++
    minute.ok++
    k.ok++
  } else if (outcome === "aborted") {
    total.aborted++
    minute.aborted++
    k.aborted++
  } else {
    total.errors++
    minute.errors++
    k.errors++
    countError(outcome)
  }
}

// ---------------------------------------------------------------------------

const main = async () => {
  const fakes: Record<string, string> = {}
  for (const [name, i] of [["alpha", 0], ["beta", 1], ["gamma", 2]] as const) {
    const f = await launch(
      ["--import", "tsx", "packages/core/src/testing/fake-upstream-main.ts", "--name", name, "--seed", String(SEED + i), "--faults", JSON.stringify(background[name])],
      /listening (\S+)/
    )
    fakes[name] = f.match[1]!
  }

  const config = join(tmpdir(), `breakwater-soak-${process.pid}.yaml`)
  writeFileSync(
    config,
    `server: { host: 127.0.0.1, port: 0, logLevel: info, adminKey: soak-admin, shutdownTimeout: 5s }
keys:
  - { name: main, key: sk-soak-main }
  - { name: budgeted, key: sk-soak-budget, budgetUsd: 1000 }
upstreams:
  - { name: alpha, baseUrl: "${fakes["alpha"]}", apiKey: sk-soak-alpha, priority: 1, timeout: 2s, maxConcurrent: 64 }
  - { name: beta, baseUrl: "${fakes["beta"]}", apiKey: sk-soak-beta, priority: 1, timeout: 2s, maxConcurrent: 64 }
  - { name: gamma, baseUrl: "${fakes["gamma"]}", apiKey: sk-soak-gamma, priority: 2, timeout: 3s, maxConcurrent: 64 }
routing: { strategy: priority, maxAttempts: 3, requestTimeout: 15s }
cooldown: { quota: 20s }
breaker: { openDuration: 5s }
healthCheck: { interval: 2s, timeout: 1s }
`
  )
  const logLevels = new Map<string, number>()
  /** Why the gateway's 5xx answers failed: the upstreams' failures, names and numbers folded. */
  const failedRelays = new Map<string, number>()
  const errorMessages = new Map<string, number>()
  let stderr = ""
  const gateway = await launch(
    ["packages/server/bin/breakwater.js", "--config", config],
    /on (http:\/\/\S+)/,
    (line) => {
      const level = /"level":"(\w+)"/.exec(line)?.[1] ?? "other"
      logLevels.set(level, (logLevels.get(level) ?? 0) + 1)
      if (level === "WARN" && /"status":5\d\d/.test(line)) {
        if (dump !== undefined) appendFileSync(dump, line + "\n")
        const status = /"status":(\d+)/.exec(line)![1]
        const failures = /"failures":\[(.*?)\]/.exec(line)?.[1] ?? ""
        const why = failures.replace(/\b(alpha|beta|gamma): /g, "").replace(/\d+(\.\d+)?\s*(ms|s|m)?/g, "N").slice(0, 160)
        const k = `${status} ${why}`
        failedRelays.set(k, (failedRelays.get(k) ?? 0) + 1)
      }
      if (level === "ERROR" || level === "FATAL") {
        const msg = (/"msg":"([^"]{0,120})/.exec(line)?.[1] ?? line.slice(0, 120)).replace(/\d+/g, "N")
        errorMessages.set(msg, (errorMessages.get(msg) ?? 0) + 1)
      }
    },
    (text) => {
      if (stderr.length < 100_000) stderr += text
    }
  )
  const pid = gateway.child.pid!
  const url = `${gateway.match[1]!}/v1`
  let crashed: string | undefined
  void gateway.exited.then((e) => {
    if (!stopping) crashed = `exited by itself (${e.code ?? e.signal})`
  })
  let stopping = false

  console.log(
    `bench:soak — ${MINUTES} min, ${CONCURRENCY} clients, ${ABORT_SHARE * 100}% aborted at 0–1.5 s; ` +
      `45% chat, 45% stream, 10% embeddings; 3 fakes with every fault; seed ${SEED}; ` +
      `node ${process.version}, ${availableParallelism()} cores, ${new Date().toISOString().slice(0, 10)}\n`
  )
  console.log("| minute | requests |     ok | aborted | errors | error % | RSS MB | phase at the minute's end |")
  console.log("|-------:|---------:|-------:|--------:|-------:|--------:|-------:|-------|")

  const started = performance.now()
  const endAt = started + MINUTES * 60_000
  const agent = new Agent({ connections: CONCURRENCY, keepAliveTimeout: 10_000 })
  const rss: Array<number> = []
  let phase = -1
  let phaseLabel = "quiet"
  let previous: { fake: string } | undefined

  const ticker = setInterval(() => {
    const elapsed = performance.now() - started
    const p = Math.floor(elapsed / 30_000) % phases.length
    if (p !== phase) {
      phase = p
      const next = phases[p]!
      const undo = previous
      previous = next
      phaseLabel = next.label
      void (async () => {
        if (undo !== undefined) await setFaults(fakes[undo.fake]!, background[undo.fake]!)
        await setFaults(fakes[next.fake]!, { ...background[next.fake], ...next.faults })
      })().catch(() => {})
    }
  }, 250)

  const reporter = setInterval(() => {
    const m = minute
    minute = fresh()
    const mb = rssMbOf(pid)
    rss.push(mb)
    console.log(
      `| ${String(rss.length).padStart(6)} | ${String(m.requests).padStart(8)} | ${String(m.ok).padStart(6)} | ${
        String(m.aborted).padStart(7)
      } | ${String(m.errors).padStart(6)} | ${(m.requests === 0 ? 0 : (m.errors / (m.requests - m.aborted)) * 100).toFixed(3).padStart(7)} | ${
        mb.toFixed(0).padStart(6)
      } | ${phaseLabel} |`
    )
  }, 60_000)

  const worker = async () => {
    while (performance.now() < endAt && total.requests < MAX_REQUESTS && crashed === undefined) {
      await once(url, agent)
    }
  }
  // Phase 0 starts at once.
  await new Promise((r) => setTimeout(r, 300))
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  clearInterval(ticker)
  clearInterval(reporter)

  // Still answering?
  let alive = "no"
  try {
    const res = await request(`${gateway.match[1]!}/healthz`, { dispatcher: agent })
    alive = `${res.statusCode}`
    await res.body.text()
  } catch (e) {
    alive = `no (${(e as Error).message})`
  }
  const finalRss = rssMbOf(pid)
  await agent.close()

  const wasCrashed = crashed !== undefined
  stopping = true
  const t0 = performance.now()
  gateway.child.kill("SIGTERM")
  const exit = await Promise.race([
    gateway.exited,
    new Promise<undefined>((r) => setTimeout(() => r(undefined), 20_000))
  ])

  const warm = rss.slice(Math.min(2, rss.length - 1))
  const answered = total.requests - total.aborted
  console.log(
    `\ntotal: ${total.requests} requests in ${((performance.now() - started) / 60_000).toFixed(1)} min; ` +
      `${total.ok} ok, ${total.aborted} aborted by the client on purpose, ${total.errors} client-visible errors ` +
      `(${((total.errors / Math.max(1, answered)) * 100).toFixed(3)}% of requests not aborted)`
  )
  for (const [kind, t] of kinds) {
    console.log(`  ${kind.padEnd(10)} ${t.requests} requests, ${t.ok} ok, ${t.aborted} aborted, ${t.errors} errors`)
  }
  console.log("\nclient-visible errors by cause:")
  if (causes.size === 0) console.log("  none")
  for (const [cause, n] of [...causes].sort((a, b) => b[1] - a[1])) console.log(`  ${String(n).padStart(7)}  ${cause}`)
  console.log(
    `\nRSS (MB) each minute: ${rss.map((m) => m.toFixed(0)).join(", ")}; at the end ${finalRss.toFixed(0)}` +
      (warm.length > 1
        ? `; after warm-up (minute ${Math.min(3, rss.length)} on) min ${Math.min(...warm).toFixed(0)}, max ${Math.max(...warm).toFixed(0)}, ` +
          `last − first ${(warm[warm.length - 1]! - warm[0]!).toFixed(0)}`
        : "")
  )
  if (failedRelays.size > 0) {
    console.log("\nthe gateway's 5xx answers, by the upstream failures it logged (top 10):")
    for (const [why, n] of [...failedRelays].sort((a, b) => b[1] - a[1]).slice(0, 10)) console.log(`  ${String(n).padStart(7)}  ${why}`)
  }
  console.log(`gateway log lines by level: ${[...logLevels].map(([l, n]) => `${l} ${n}`).join(", ")}`)
  if (errorMessages.size > 0) {
    console.log("ERROR lines by message:")
    for (const [m, n] of [...errorMessages].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`  ${String(n).padStart(7)}  ${m}`)
  }
  const unhandled = /unhandled|uncaught|UND_ERR|Maximum call stack/i.exec(stderr)
  console.log(`stderr: ${stderr.length} bytes; unhandled errors on stderr: ${unhandled === null ? "none" : `yes (${unhandled[0]})`}`)
  if (unhandled !== null || wasCrashed) console.log(`stderr (first 1,500 bytes):\n${stderr.slice(0, 1500)}`)
  console.log(
    `process: ${crashed ?? "alive throughout"}; /healthz after the load: ${alive}; SIGTERM → ` +
      (wasCrashed
        ? "n/a (already gone)"
        : exit === undefined
        ? "still running after 20 s (killed)"
        : `exit ${exit.code ?? exit.signal} in ${(exit.at - t0).toFixed(0)} ms`)
  )
  cleanup()
  const failed = crashed !== undefined || exit === undefined || exit.code !== 0 || unhandled !== null
  process.exitCode = failed ? 1 : 0
}

main().then(() => process.exit(process.exitCode ?? 0), (error) => {
  console.error(error)
  cleanup()
  process.exit(1)
})
