/**
 * `npm run bench:handler`: the gateway's own cost per request, in process:
 * CPU, Effect operations, fibers and bytes allocated, with traces off and on,
 * for a tiny request body and a realistic one.
 *
 * The real HTTP handler (Http.ts: auth, a key's rate limit, decode, the relay,
 * the log line) over an upstream client that answers at once from memory, so
 * that nothing but the gateway's code is measured: no sockets, no upstream.
 * Requests run 32 at a time; log lines are formatted as JSON and dropped.
 * Each variant runs in a fresh process, the variants alternate, and each
 * prints the median of its rounds:
 *
 * - `off`: traces off (the default);
 * - `on`: traces on: request and attempt spans through @effect/opentelemetry
 *   into a BatchSpanProcessor whose exporter drops them (the SDK's work,
 *   not the network's), each request under a caller's `traceparent`;
 * - bodies: `tiny` (one short message) and `realistic` (2.3 KB: a system
 *   prompt, nine messages with tool calls, three tools).
 *
 * Effect operations are counted by a Supervisor with op supervision on (every
 * instruction a fiber's run loop executes, in every fiber the request
 * starts); bytes allocated are the growth of V8's used heap over a batch of
 * requests run with a young generation large enough that no collection runs
 * (`--max-semi-space-size`, checked with a GC observer), in a process of
 * its own, after `gc()`.
 *
 * `BENCH_BASELINE=DIR` adds `before`: the same measurements on the checkout
 * in DIR (with its node_modules), e.g. the commit before a change, in the
 * same run. Without it, `before` is the figures recorded in BEFORE below.
 */
import type { SpanExporter } from "@opentelemetry/sdk-trace-base"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import * as HashSet from "effect/HashSet"
import * as Layer from "effect/Layer"
import * as Runtime from "effect/Runtime"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as Scope from "effect/Scope"
import * as Supervisor from "effect/Supervisor"
import { spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { availableParallelism } from "node:os"
import { join } from "node:path"
import { PerformanceObserver } from "node:perf_hooks"
import v8 from "node:v8"
import { REALISTIC_BODY, TINY_BODY } from "./bodies.js"

const ROOT = new URL("../../../", import.meta.url).pathname
const REQUESTS = Number(process.env["BENCH_REQUESTS"] ?? 10_000)
const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 5)
const PASSES = Number(process.env["BENCH_PASSES"] ?? 3)
const CONCURRENCY = 32
/** Requests per allocation sample: well within the young generation the profiling process gets. */
const ALLOC_BATCH = 200
const ALLOC_SAMPLES = 9
/** MB per semi-space in the profiling process: 200 requests of a few hundred KB each fit. */
const PROFILE_SEMI_SPACE_MB = 256

export type BodyName = "tiny" | "realistic"
const BODIES: Record<BodyName, string> = { tiny: TINY_BODY, realistic: REALISTIC_BODY }

/**
 * Today's figures before issue 13's server changes (commit a595ff2), measured
 * with this script's profile mode; shown as `before` when BENCH_BASELINE is
 * not set. Re-measure with BENCH_BASELINE for a comparison in one run.
 */
export const BEFORE: Record<BodyName, Profile> = {
  tiny: { ops: 207.9, fibers: 1.03, bytes: 134_703 },
  realistic: { ops: 207.9, fibers: 1.03, bytes: 216_168 }
}

const COMPLETION = JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 0,
  model: "gpt-4.1",
  choices: [{ index: 0, message: { role: "assistant", content: "Hello there." }, finish_reason: "stop" }],
  usage: { prompt_tokens: 12, completion_tokens: 4, total_tokens: 16 }
})
const CONFIG = `
keys:
  - { name: bench, key: sk-bench-key, requestsPerMinute: 100000000 }
upstreams:
  - { name: bench, baseUrl: "http://127.0.0.1:1/v1", apiKey: sk-bench, maxConcurrent: 1000 }
cache: { enabled: false }
`

/** Effect operations, fibers and bytes allocated per request. */
export interface Profile {
  readonly ops: number
  readonly fibers: number
  readonly bytes: number
}

/** Counts what the fibers it supervises do: instructions run and fibers started. */
class Counting extends Supervisor.AbstractSupervisor<void> {
  ops = 0
  fibers = 0
  value = Effect.void
  override onStart() {
    this.fibers++
  }
  override onEffect() {
    this.ops++
  }
}

/** The real handler in this process, on the checkout in `root`; `run(n)` sends n requests. */
export const setup = async (root: string, variant: "off" | "on", bodyName: BodyName) => {
  // The modules of the checkout in `root` (this one, or the baseline's), typed as this one's.
  const load = (path: string): Promise<unknown> => import(join(root, path))
  const core = await load("packages/core/src/index.ts") as typeof import("@breakwater/core")
  const Config = await load("packages/server/src/Config.ts") as typeof import("../src/Config.js")
  const Gateway = await load("packages/server/src/Gateway.ts") as typeof import("../src/Gateway.js")
  const Http = await load("packages/server/src/Http.ts") as typeof import("../src/Http.js")
  const Log = await load("packages/server/src/Log.ts") as typeof import("../src/Log.js")
  // The request log, where the checkout has one (not before issue 13).
  const RequestLog = existsSync(join(root, "packages/server/src/RequestLog.ts"))
    ? await load("packages/server/src/RequestLog.ts") as typeof import("../src/RequestLog.js")
    : undefined
  const { Cooldown, Pricing, RateLimiter, Relay, ResponseCache, Spend, UpstreamClient } = core
  const body = BODIES[bodyName]

  const parsed = Config.parse(CONFIG, { file: "bench.yaml", env: {} })
  if (Either.isLeft(parsed)) throw new Error(parsed.left.message)
  const config = parsed.right

  const scope = Effect.runSync(Scope.make())
  let telemetry: import("../src/Telemetry.js").Telemetry | undefined
  if (variant === "on") {
    const Telemetry = await load("packages/server/src/Telemetry.ts") as typeof import("../src/Telemetry.js")
    const { BatchSpanProcessor } = await import("@opentelemetry/sdk-trace-base")
    const dropping: SpanExporter = { export: (_, done) => done({ code: 0 }), shutdown: async () => {} }
    telemetry = await Effect.runPromise(
      Scope.extend(Telemetry.make(undefined, { spanProcessor: new BatchSpanProcessor(dropping) }), scope)
    )
  }

  const reply = { status: 200, headers: { "content-type": "application/json" }, text: COMPLETION }
  const client = UpstreamClient.UpstreamClient.of({
    post: () => Effect.succeed(reply),
    get: () => Effect.succeed({ status: 200, headers: {}, text: "{}" }),
    postStream: () => Effect.die("not benchmarked"),
    // As the undici client's: the answer comes in a later callback (a checkout without it uses `post`).
    unsafePost: (_u, _path, _body, _headers, done) => {
      queueMicrotask(() => done(undefined, reply))
      return () => {}
    }
  })
  const stores = Layer.mergeAll(
    RateLimiter.layerStoreMemory,
    Cooldown.layerStoreMemory,
    Spend.layerStoreMemory,
    ResponseCache.layerMemory({ ttl: config.cache.ttl, maxEntries: config.cache.maxEntries })
  )
  const pricing = Pricing.layer(config.pricing)
  const relayOptions = Config.toRelayOptions(config)
  const relay = Relay.layer(telemetry === undefined ? relayOptions : { ...relayOptions, tracing: telemetry.relay }).pipe(
    Layer.provide(Layer.mergeAll(stores, Layer.succeed(UpstreamClient.UpstreamClient, client), pricing))
  )
  const gateway = Layer.effect(
    Gateway.Gateway,
    Effect.flatMap(Relay.Relay, (r) =>
      Gateway.make(config.keys, {
        targets: (model) => r.upstreams.flatMap((u) => {
          const target = u.modelFor(model)
          return target === undefined ? [] : [target]
        }),
        unknown: config.pricingPolicy.unknown,
        estimatedOutputTokens: config.pricingPolicy.estimatedOutputTokens
      }))
  )
  const layer = gateway.pipe(Layer.provideMerge(relay), Layer.provideMerge(Layer.merge(stores, pricing)))
  const built = await Effect.runPromise(Scope.extend(Layer.build(layer), scope))
  // Lines are formatted as the server formats them (JSON) and dropped, by
  // the request log where there is one, else by the Effect logger.
  const drop = () => {}
  const context = RequestLog === undefined
    ? built
    : Context.add(built, RequestLog.RequestLog, RequestLog.make({ format: "json", sink: drop }))
  // As the server does: one logger, no tracer logger.
  const quiet = <A>(effect: Effect.Effect<A>) => Effect.locally(effect, FiberRef.currentLoggers, HashSet.make(Log.logger("json", drop)))
  const base = await Effect.runPromise(
    quiet(telemetry === undefined ? Effect.runtime<never>() : Effect.withTracer(Effect.runtime<never>(), telemetry.tracer))
  )
  const runtime = Runtime.make({ ...base, context: Context.merge(base.context, context) })
  const handler = await Effect.runPromise(
    quiet(Effect.provide(Http.make({ maxBodyBytes: 1 << 20, adminKey: undefined, ...(telemetry ? { tracing: telemetry.requests } : {}) }), context))
  )
  const incoming = (i: number) => ({
    method: "POST",
    url: "/v1/chat/completions",
    headers: {
      "content-type": "application/json",
      authorization: "Bearer sk-bench-key",
      "cache-control": "no-cache, no-store",
      traceparent: `00-4bf92f3577b34da6a3ce929d0e0e${(i % 65536).toString(16).padStart(4, "0")}-00f067aa0ba902b7-01`
    },
    body: Effect.succeed(body),
    state: undefined
  })
  const requests = (n: number) =>
    Effect.forEach(Array.from({ length: n }, (_, i) => i), (i) =>
      Effect.map(handler(incoming(i)), (reply) => {
        if (reply.status !== 200) throw new Error(`status ${reply.status}: ${String(reply.body)}`)
      }), { concurrency: CONCURRENCY, discard: true })
  const run = (n: number) => Runtime.runPromise(runtime)(requests(n))

  /** Effect operations and fibers per request, over n requests. */
  const count = async (n: number) => {
    const counting = new Counting()
    const supervised = Runtime.make({
      ...runtime,
      runtimeFlags: RuntimeFlags.enable(runtime.runtimeFlags, RuntimeFlags.OpSupervision)
    })
    await Runtime.runPromise(supervised)(Effect.supervised(requests(n), counting))
    return { ops: counting.ops / n, fibers: counting.fibers / n }
  }
  return { run, count, runtime, requests, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}

/** One CPU variant in this process: µs of CPU per request, per round. */
const measure = async (root: string, variant: "off" | "on", body: BodyName): Promise<Array<number>> => {
  const { close, run } = await setup(root, variant, body)
  await run(5_000)
  const rounds: Array<number> = []
  for (let r = 0; r < ROUNDS; r++) {
    const cpu = process.cpuUsage()
    await run(REQUESTS)
    const used = process.cpuUsage(cpu)
    rounds.push((used.user + used.system) / REQUESTS)
  }
  await close()
  return rounds
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

/**
 * Operations, fibers and bytes per request, in this process (started with
 * --expose-gc and a large young generation: see `profileIn`).
 */
const profile = async (root: string, body: BodyName): Promise<Profile> => {
  const { close, count, run } = await setup(root, "off", body)
  await run(3_000)
  const counted = await count(1_000)
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error("profile mode needs --expose-gc")
  let collections = 0
  const observer = new PerformanceObserver((list) => {
    collections += list.getEntries().length
  })
  observer.observe({ entryTypes: ["gc"] })
  const samples: Array<number> = []
  for (let i = 0; i < ALLOC_SAMPLES * 3 && samples.length < ALLOC_SAMPLES; i++) {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
    const seen = collections
    const before = v8.getHeapStatistics().used_heap_size
    await run(ALLOC_BATCH)
    const after = v8.getHeapStatistics().used_heap_size
    await new Promise((resolve) => setImmediate(resolve))
    // A collection during the batch (other than the gc() above, reported late) spoils the sample.
    if (collections - seen <= 1 && after > before) samples.push((after - before) / ALLOC_BATCH)
  }
  observer.disconnect()
  await close()
  return { ...counted, bytes: samples.length === 0 ? Number.NaN : median(samples) }
}

/** Runs one measurement in a fresh process; resolves with what it printed (JSON). */
const child = <A>(root: string, args: Array<string>, nodeFlags: Array<string> = []): Promise<A> =>
  new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...nodeFlags, "--conditions=@breakwater/source", "--import", "tsx", new URL(import.meta.url).pathname, ...args], {
      cwd: root,
      stdio: ["ignore", "pipe", "inherit"]
    })
    let out = ""
    p.stdout.on("data", (d: Buffer) => (out += d.toString()))
    p.once("exit", (code) => (code === 0 ? resolve(JSON.parse(out.trim().split("\n").pop()!)) : reject(new Error(`${args.join(" ")} exited ${code}`))))
  })

/** The profile of the handler of the checkout in `root`, measured in a process of its own. */
export const profileIn = (root: string, body: BodyName): Promise<Profile> =>
  child(root, ["--profile", root, body], ["--expose-gc", `--max-semi-space-size=${PROFILE_SEMI_SPACE_MB}`, `--min-semi-space-size=${PROFILE_SEMI_SPACE_MB}`])

/** The baseline checkout (BENCH_BASELINE), when given; throws when it is not a checkout. */
export const baselineRoot = (): string | undefined => {
  const dir = process.env["BENCH_BASELINE"]
  if (dir === undefined || dir === "") return undefined
  if (!existsSync(join(dir, "packages/server/src/Http.ts"))) throw new Error(`BENCH_BASELINE=${dir}: not a Breakwater checkout`)
  return dir
}

/** "n (−x%)" of `after` against `before`. */
export const versus = (after: number, before: number, digits = 0): string =>
  `${after.toFixed(digits)}${before > 0 && Number.isFinite(before) ? ` (${after >= before ? "+" : "−"}${Math.abs((after / before - 1) * 100).toFixed(0)}%)` : ""}`

/** The profiles of `before` (the baseline checkout, or BEFORE) and now, for both bodies, as table rows. */
export const profileRows = async (): Promise<{ readonly source: string; readonly rows: Array<Array<string>> }> => {
  const baseline = baselineRoot()
  const rows: Array<Array<string>> = []
  for (const body of ["tiny", "realistic"] as const) {
    const before = baseline === undefined ? BEFORE[body] : await profileIn(baseline, body)
    const now = await profileIn(ROOT, body)
    rows.push([
      body,
      `${before.ops.toFixed(0)} → ${versus(now.ops, before.ops)}`,
      `${before.fibers.toFixed(1)} → ${now.fibers.toFixed(1)}`,
      `${(before.bytes / 1024).toFixed(1)} → ${versus(now.bytes / 1024, before.bytes / 1024, 1)}`
    ])
  }
  return { source: baseline === undefined ? "before: recorded figures of commit a595ff2 (BENCH_BASELINE=DIR measures a checkout live)" : `before: ${baseline}, measured in this run`, rows }
}

const main = async () => {
  const at = process.argv.indexOf("--measure")
  if (at >= 0) {
    const rounds = await measure(process.argv[at + 1]!, process.argv[at + 2] as "off" | "on", process.argv[at + 3] as BodyName)
    process.stdout.write(`${JSON.stringify(rounds)}\n`)
    return
  }
  const p = process.argv.indexOf("--profile")
  if (p >= 0) {
    const result = await profile(process.argv[p + 1]!, process.argv[p + 2] as BodyName)
    process.stdout.write(`${JSON.stringify(result)}\n`)
    return
  }
  const baseline = baselineRoot()
  const variants: Array<[string, string, "off" | "on", BodyName]> = [
    ...(baseline === undefined ? [] : [["before", baseline, "off", "tiny"], ["before", baseline, "off", "realistic"]] as Array<[string, string, "off", BodyName]>),
    ["off", ROOT, "off", "tiny"],
    ["off", ROOT, "off", "realistic"],
    ["on", ROOT, "on", "tiny"]
  ]
  const results = new Map<string, Array<number>>()
  const id = (name: string, body: string) => `${name} ${body}`
  for (let pass = 0; pass < PASSES; pass++) {
    for (const [name, root, variant, body] of variants) {
      const rounds = await child<Array<number>>(root, ["--measure", root, variant, body])
      results.set(id(name, body), [...(results.get(id(name, body)) ?? []), ...rounds])
    }
  }
  console.log(
    `\nbench:handler — ${REQUESTS} chat requests x ${ROUNDS} rounds x ${PASSES} passes per variant, ${CONCURRENCY} at a time, ` +
      `in process, upstream answered from memory; node ${process.version}, ${availableParallelism()} cores, ${new Date().toISOString().slice(0, 10)}\n`
  )
  console.log("| variant | body | CPU µs/request, median | min | max |")
  console.log("|---|---|---:|---:|---:|")
  for (const [name, , , body] of variants) {
    const xs = results.get(id(name, body))!
    const off = median(results.get(id("off", body)) ?? results.get(id("off", "tiny"))!)
    const vs = name === "off" ? "" : ` (${((median(xs) / off - 1) * 100).toFixed(1)}% vs off)`
    console.log(`| ${name} | ${body} | ${median(xs).toFixed(1)}${vs} | ${Math.min(...xs).toFixed(1)} | ${Math.max(...xs).toFixed(1)} |`)
  }
  const { rows, source } = await profileRows()
  console.log(`\nper request, traces off (${source}):\n`)
  console.log("| body | Effect operations | fibers | KB allocated |")
  console.log("|---|---:|---:|---:|")
  for (const r of rows) console.log(`| ${r.join(" | ")} |`)
}

// Run as a script (not when peers.ts imports the profile helpers).
if (process.argv[1] !== undefined && new URL(import.meta.url).pathname === process.argv[1]) {
  main().then(() => process.exit(0), (error) => {
    console.error(error)
    process.exit(1)
  })
}
