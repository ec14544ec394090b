/**
 * Per-call overhead of each resilience service around a no-op, and of the
 * composed policy, beside the same composition in cockatiel and opossum, all
 * in one run. Each row runs batches of sequential calls; the figure is the
 * median over batches of (batch time / calls). Run: `npm run bench:core`.
 */
import { availableParallelism } from "node:os"
import {
  bulkhead as cockatielBulkhead,
  circuitBreaker as cockatielBreaker,
  ConsecutiveBreaker,
  ExponentialBackoff,
  handleAll,
  retry as cockatielRetry,
  timeout as cockatielTimeout,
  TimeoutStrategy,
  wrap
} from "cockatiel"
import { Effect, Layer, ManagedRuntime } from "effect"
import OpossumBreaker from "opossum"
import * as Bulkhead from "../src/Bulkhead.js"
import * as CircuitBreaker from "../src/CircuitBreaker.js"
import * as RateLimiter from "../src/RateLimiter.js"
import * as Retry from "../src/Retry.js"
import * as Timeout from "../src/Timeout.js"

const CALLS = Number(process.env.BENCH_CALLS ?? 2_000)
const BATCHES = Number(process.env.BENCH_BATCHES ?? 40)
const WARMUP = 5

const median = (xs: Array<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/** Median ns per call of `batch`, which makes CALLS sequential calls. */
const measure = async (batch: () => Promise<unknown>): Promise<number> => {
  for (let i = 0; i < WARMUP; i++) await batch()
  const samples: Array<number> = []
  for (let i = 0; i < BATCHES; i++) {
    const t0 = process.hrtime.bigint()
    await batch()
    samples.push(Number(process.hrtime.bigint() - t0) / CALLS)
  }
  return median(samples)
}

// --- Breakwater (Effect) --------------------------------------------------

const runtime = ManagedRuntime.make(
  Layer.mergeAll(
    RateLimiter.layerStoreMemory,
    CircuitBreaker.layer({ name: "bench", failureThreshold: 5 }),
    Bulkhead.layer({ name: "bench", maxConcurrent: 1_000 })
  )
)

const noop = Effect.void
const effectLoop = (wrapOne: (e: Effect.Effect<void, unknown>) => Effect.Effect<unknown, unknown>) => {
  const program = Effect.gen(function*() {
    for (let i = 0; i < CALLS; i++) yield* wrapOne(noop)
  })
  return () => runtime.runPromise(program)
}

const breakwater = await runtime.runPromise(Effect.gen(function*() {
  const limiter = yield* RateLimiter.make({ name: "bench", limit: 1e12, window: "1 minute" })
  const breaker = yield* CircuitBreaker.CircuitBreaker
  const bulkhead = yield* Bulkhead.Bulkhead
  const retry = Retry.retry({ maxRetries: 2 })
  const composed = <A, E>(e: Effect.Effect<A, E>) =>
    limiter.withPermit("key")(bulkhead.run(breaker.protect(retry(Timeout.attempt(e, "30 seconds")))))
  return { limiter, breaker, bulkhead, retry, composed }
}))

// --- cockatiel -------------------------------------------------------------

const asyncNoop = async () => undefined
const asyncLoop = (call: () => Promise<unknown>) => async () => {
  for (let i = 0; i < CALLS; i++) await call()
}
const cRetry = cockatielRetry(handleAll, { maxAttempts: 2, backoff: new ExponentialBackoff() })
const cBreaker = cockatielBreaker(handleAll, { halfOpenAfter: 30_000, breaker: new ConsecutiveBreaker(5) })
const cBulkhead = cockatielBulkhead(1_000, 0)
const cTimeout = cockatielTimeout(30_000, TimeoutStrategy.Cooperative)
const cComposed = wrap(cBulkhead, cBreaker, cRetry, cTimeout)

// --- opossum ----------------------------------------------------------------

const oBreaker = new OpossumBreaker(asyncNoop, { timeout: false, volumeThreshold: 5 })
const oComposed = new OpossumBreaker(asyncNoop, { timeout: 30_000, capacity: 1_000, volumeThreshold: 5 })

interface Row {
  readonly family: string
  readonly name: string
  readonly includes: string
  readonly run: () => Promise<unknown>
}

const rows: Array<Row> = [
  { family: "effect", name: "bare Effect (baseline)", includes: "-", run: effectLoop((e) => e) },
  { family: "effect", name: "Breakwater RateLimiter", includes: "limit", run: effectLoop(breakwater.limiter.withPermit("key")) },
  { family: "effect", name: "Breakwater Bulkhead", includes: "bulkhead", run: effectLoop(breakwater.bulkhead.run) },
  { family: "effect", name: "Breakwater CircuitBreaker", includes: "breaker", run: effectLoop(breakwater.breaker.protect) },
  { family: "effect", name: "Breakwater Retry", includes: "retry", run: effectLoop(breakwater.retry) },
  { family: "effect", name: "Breakwater Timeout", includes: "timeout", run: effectLoop((e) => Timeout.attempt(e, "30 seconds")) },
  {
    family: "effect",
    name: "Breakwater composed",
    includes: "limit+bulkhead+breaker+retry+timeout",
    run: effectLoop(breakwater.composed)
  },
  { family: "promise", name: "bare async fn (baseline)", includes: "-", run: asyncLoop(asyncNoop) },
  { family: "promise", name: "cockatiel bulkhead", includes: "bulkhead", run: asyncLoop(() => cBulkhead.execute(asyncNoop)) },
  { family: "promise", name: "cockatiel breaker", includes: "breaker", run: asyncLoop(() => cBreaker.execute(asyncNoop)) },
  { family: "promise", name: "cockatiel retry", includes: "retry", run: asyncLoop(() => cRetry.execute(asyncNoop)) },
  { family: "promise", name: "cockatiel timeout", includes: "timeout", run: asyncLoop(() => cTimeout.execute(asyncNoop)) },
  {
    family: "promise",
    name: "cockatiel composed",
    includes: "bulkhead+breaker+retry+timeout (no limiter)",
    run: asyncLoop(() => cComposed.execute(asyncNoop))
  },
  { family: "promise", name: "opossum breaker", includes: "breaker", run: asyncLoop(() => oBreaker.fire()) },
  {
    family: "promise",
    name: "opossum composed",
    includes: "breaker+timeout+capacity (no limiter, no retry)",
    run: asyncLoop(() => oComposed.fire())
  }
]

const results: Array<{ row: Row; ns: number }> = []
for (const row of rows) results.push({ row, ns: await measure(row.run) })
const baseline = (family: string) => results.find((r) => r.row.family === family)!.ns

const pad = (s: string, n: number) => s.padEnd(n)
const lpad = (s: string, n: number) => s.padStart(n)
console.log(
  `\nbench:core — ${CALLS} sequential calls x ${BATCHES} batches per row, median ns/call; ` +
    `node ${process.version}, ${availableParallelism()} cores, ${new Date().toISOString().slice(0, 10)}\n`
)
console.log(`| ${pad("policy", 28)} | ${lpad("median ns/call", 14)} | ${lpad("x bare", 7)} | ${lpad("added ns", 9)} | includes |`)
console.log(`|${"-".repeat(30)}|${"-".repeat(16)}|${"-".repeat(9)}|${"-".repeat(11)}|----------|`)
for (const { row, ns } of results) {
  const base = baseline(row.family)
  console.log(
    `| ${pad(row.name, 28)} | ${lpad(ns.toFixed(0), 14)} | ${lpad((ns / base).toFixed(2), 7)} | ${
      lpad((ns - base).toFixed(0), 9)
    } | ${row.includes} |`
  )
}
const composed = results.find((r) => r.row.name === "Breakwater composed")!.ns - baseline("effect")
const cock = results.find((r) => r.row.name === "cockatiel composed")!.ns - baseline("promise")
const opo = results.find((r) => r.row.name === "opossum composed")!.ns - baseline("promise")
console.log(
  `\nadded per call by the composed policy: Breakwater ${composed.toFixed(0)} ns, ` +
    `cockatiel ${cock.toFixed(0)} ns, opossum ${opo.toFixed(0)} ns`
)
oBreaker.shutdown()
oComposed.shutdown()
await runtime.dispose()
