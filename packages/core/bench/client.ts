/**
 * CPU per upstream call of the undici client: `post` (undici's `request`,
 * with an AbortController, a promise and a body stream per call) against
 * `unsafePost` (undici's `dispatch` with the client's own handler), both
 * wrapped in one effect per call, 32 calls at a time to the fake upstream,
 * which runs in another process so that only the client's CPU is counted.
 * The two alternate by round; the figure is the median round.
 * Run: `npx tsx --conditions=@breakwater/source packages/core/bench/client.ts`.
 */
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { spawn } from "node:child_process"
import * as RateLimiter from "../src/RateLimiter.js"
import * as Fake from "../src/testing/FakeUpstream.js"
import * as Upstream from "../src/Upstream.js"
import * as UpstreamClient from "../src/UpstreamClient.js"

const CALLS = Number(process.env["BENCH_CALLS"] ?? 5_000)
const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 6)

const fake = async () => {
  const f = await Fake.start({ name: "bench" })
  process.stdout.write(`${f.url}\n`)
}

const main = async () => {
  const child = spawn(process.execPath, [...process.execArgv, new URL(import.meta.url).pathname, "--fake"], {
    stdio: ["ignore", "pipe", "inherit"]
  })
  const url = await new Promise<string>((resolve) => child.stdout.once("data", (d: Buffer) => resolve(String(d).trim())))
  const body = new TextEncoder().encode(JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "hi" }] }))
  const program = Effect.gen(function*() {
    const client = yield* UpstreamClient.makeUndici()
    const u = yield* Effect.provide(
      Upstream.make({ name: "bench", baseUrl: url, apiKey: Redacted.make("sk-bench"), models: "*" }),
      RateLimiter.layerStoreMemory
    )
    const items = Array.from({ length: CALLS })
    const variants = [
      ["request (post)", Effect.forEach(items, () => client.post(u, "/chat/completions", body), { concurrency: 32, discard: true })],
      ["dispatch (unsafePost)", Effect.forEach(items, () =>
        Effect.async<unknown, unknown>((resume) => {
          client.unsafePost!(u, "/chat/completions", body, undefined, (e, r) => resume(e ? Effect.fail(e) : Effect.succeed(r)))
        }), { concurrency: 32, discard: true })]
    ] as const
    for (const [, run] of variants) yield* run
    const rounds = new Map<string, Array<number>>()
    for (let r = 0; r < ROUNDS; r++) {
      for (const [name, run] of variants) {
        const cpu = process.cpuUsage()
        yield* run
        const used = process.cpuUsage(cpu)
        rounds.set(name, [...(rounds.get(name) ?? []), (used.user + used.system) / CALLS])
      }
    }
    return rounds
  })
  const rounds = await Effect.runPromise(Effect.scoped(program))
  child.kill()
  const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
  console.log(`\nbench client — ${CALLS} calls x ${ROUNDS} rounds per variant, 32 at a time, fake upstream in another process; node ${process.version}\n`)
  console.log("| call | client CPU µs/call, median | min | max |")
  console.log("|---|---:|---:|---:|")
  for (const [name, xs] of rounds) {
    console.log(`| ${name} | ${median(xs).toFixed(1)} | ${Math.min(...xs).toFixed(1)} | ${Math.max(...xs).toFixed(1)} |`)
  }
}

if (process.argv.includes("--fake")) void fake()
else main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
