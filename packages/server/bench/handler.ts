/**
 * `npm run bench:handler`: the gateway's own CPU per request, in process, with
 * traces off and on.
 *
 * The real HTTP handler (Http.ts: auth, a key's rate limit, decode, the relay,
 * the log line) over an upstream client that answers at once from memory, so
 * that nothing but the gateway's code is measured: no sockets, no upstream.
 * Requests run 32 at a time; log lines are built and dropped. Each variant
 * runs in a fresh process, the variants alternate, and each prints the
 * median of its rounds:
 *
 * - `off`: traces off (the default);
 * - `on`: traces on: request and attempt spans through @effect/opentelemetry
 *   into a BatchSpanProcessor whose exporter drops them (the SDK's work,
 *   not the network's), each request under a caller's `traceparent`.
 *
 * `BENCH_BASELINE=DIR` adds `before`: the same measurement on the checkout in
 * DIR (with its node_modules), e.g. the commit before traces, in the same run.
 */
import type { SpanExporter } from "@opentelemetry/sdk-trace-base"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import * as HashSet from "effect/HashSet"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Runtime from "effect/Runtime"
import * as Scope from "effect/Scope"
import { spawn } from "node:child_process"
import { availableParallelism } from "node:os"
import { join } from "node:path"

const ROOT = new URL("../../../", import.meta.url).pathname
const REQUESTS = Number(process.env["BENCH_REQUESTS"] ?? 20_000)
const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 5)
const PASSES = Number(process.env["BENCH_PASSES"] ?? 3)
const CONCURRENCY = 32

const COMPLETION = JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 0,
  model: "gpt-4.1",
  choices: [{ index: 0, message: { role: "assistant", content: "Hello there." }, finish_reason: "stop" }],
  usage: { prompt_tokens: 12, completion_tokens: 4, total_tokens: 16 }
})
const BODY = JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "Benchmark me." }] })
const CONFIG = `
keys:
  - { name: bench, key: sk-bench-key, requestsPerMinute: 100000000 }
upstreams:
  - { name: bench, baseUrl: "http://127.0.0.1:1/v1", apiKey: sk-bench, maxConcurrent: 1000 }
cache: { enabled: false }
`

/** One variant in this process: µs of CPU per request, per round. */
const measure = async (root: string, variant: "off" | "on"): Promise<Array<number>> => {
  // The modules of the checkout in `root` (this one, or the baseline's), typed as this one's.
  const load = (path: string): Promise<unknown> => import(join(root, path))
  const core = await load("packages/core/src/index.ts") as typeof import("@breakwater/core")
  const Config = await load("packages/server/src/Config.ts") as typeof import("../src/Config.js")
  const Gateway = await load("packages/server/src/Gateway.ts") as typeof import("../src/Gateway.js")
  const Http = await load("packages/server/src/Http.ts") as typeof import("../src/Http.js")
  const { Cooldown, Pricing, RateLimiter, Relay, ResponseCache, Spend, UpstreamClient } = core

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
  const context = await Effect.runPromise(Scope.extend(Layer.build(layer), scope))
  // As the server does: one logger (here: builds nothing, writes nothing), no tracer logger.
  const quiet = <A>(effect: Effect.Effect<A>) => Effect.locally(effect, FiberRef.currentLoggers, HashSet.make(Logger.make(() => {})))
  const base = await Effect.runPromise(
    quiet(telemetry === undefined ? Effect.runtime<never>() : Effect.withTracer(Effect.runtime<never>(), telemetry.tracer))
  )
  const runtime = Runtime.make({ ...base, context: Context.merge(base.context, context) })
  const handler = await Effect.runPromise(
    Effect.provide(Http.make({ maxBodyBytes: 1 << 20, adminKey: undefined, ...(telemetry ? { tracing: telemetry.requests } : {}) }), context)
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
    body: Effect.succeed(BODY),
    state: undefined
  })
  const run = (n: number) =>
    Runtime.runPromise(runtime)(
      Effect.forEach(Array.from({ length: n }, (_, i) => i), (i) =>
        Effect.map(handler(incoming(i)), (reply) => {
          if (reply.status !== 200) throw new Error(`status ${reply.status}: ${reply.body}`)
        }), { concurrency: CONCURRENCY, discard: true })
    )
  await run(5_000)
  const rounds: Array<number> = []
  for (let r = 0; r < ROUNDS; r++) {
    const cpu = process.cpuUsage()
    await run(REQUESTS)
    const used = process.cpuUsage(cpu)
    rounds.push((used.user + used.system) / REQUESTS)
  }
  await Effect.runPromise(Scope.close(scope, Exit.void))
  return rounds
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

/** Runs one variant in a fresh process; resolves with its rounds. */
const child = (root: string, variant: string): Promise<Array<number>> =>
  new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ["--import", "tsx", new URL(import.meta.url).pathname, "--measure", root, variant], {
      cwd: root,
      stdio: ["ignore", "pipe", "inherit"]
    })
    let out = ""
    p.stdout.on("data", (d: Buffer) => (out += d.toString()))
    p.once("exit", (code) => (code === 0 ? resolve(JSON.parse(out.trim().split("\n").pop()!)) : reject(new Error(`${variant} exited ${code}`))))
  })

const main = async () => {
  const at = process.argv.indexOf("--measure")
  if (at >= 0) {
    const rounds = await measure(process.argv[at + 1]!, process.argv[at + 2] as "off" | "on")
    process.stdout.write(`${JSON.stringify(rounds)}\n`)
    return
  }
  const baseline = process.env["BENCH_BASELINE"]
  const variants: Array<[string, string, "off" | "on"]> = [
    ...(baseline === undefined ? [] : [["before", baseline, "off"] as [string, string, "off"]]),
    ["off", ROOT, "off"],
    ["on", ROOT, "on"]
  ]
  const results = new Map<string, Array<number>>()
  for (let pass = 0; pass < PASSES; pass++) {
    for (const [name, root, variant] of variants) {
      const rounds = await child(root, variant)
      results.set(name, [...(results.get(name) ?? []), ...rounds])
    }
  }
  console.log(
    `\nbench:handler — ${REQUESTS} chat requests x ${ROUNDS} rounds x ${PASSES} passes per variant, ${CONCURRENCY} at a time, ` +
      `in process, upstream answered from memory; node ${process.version}, ${availableParallelism()} cores, ${new Date().toISOString().slice(0, 10)}\n`
  )
  console.log("| variant | CPU µs/request, median | min | max |")
  console.log("|---|---:|---:|---:|")
  const off = median(results.get("off")!)
  for (const [name] of variants) {
    const xs = results.get(name)!
    const vs = name === "off" ? "" : ` (${((median(xs) / off - 1) * 100).toFixed(1)}% vs off)`
    console.log(`| ${name} | ${median(xs).toFixed(1)}${vs} | ${Math.min(...xs).toFixed(1)} | ${Math.max(...xs).toFixed(1)} |`)
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
