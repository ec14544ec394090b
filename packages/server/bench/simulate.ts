/**
 * `npm run bench:simulate`: how long `breakwater simulate` takes on the
 * reference article's scenario (`scenarios/seed-article.yaml`, 26.6 req/s),
 * for one simulated hour and for the article's day (24 h, about 2.3 M
 * requests), each in a fresh process on the built code:
 *
 * - `fast path`: as `breakwater simulate` runs it;
 * - `relay only`: every request through the relay's effects, as before the
 *   fast path (`RunOptions.fastPath: false`; the report is the same), one
 *   hour only unless `BENCH_SIM_RELAY_DAY=1`.
 *
 * Prints wall time, CPU time, requests per second of wall time and the peak
 * RSS of each run, and whether the runs of one duration printed the same
 * report. `BENCH_SIM_SKIP_RELAY=1` leaves the relay-only rows out.
 */
import { spawn } from "node:child_process"

const ROOT = new URL("../../../", import.meta.url).pathname
const SCENARIO = `${ROOT}packages/server/scenarios/seed-article.yaml`
const HOUR = 3_600_000

interface Result {
  readonly requests: number
  readonly wallMs: number
  readonly cpuMs: number
  readonly maxRssMb: number
  readonly report: string
}

/** One run in a fresh process, on the built code (`npm run build`). */
const runOnce = (durationMs: number, fastPath: boolean): Promise<Result> => {
  const script = `
    import { readFileSync } from "node:fs"
    const Scenario = await import(${JSON.stringify(`${ROOT}packages/server/dist/src/simulate/Scenario.js`)})
    const Simulate = await import(${JSON.stringify(`${ROOT}packages/server/dist/src/simulate/Simulate.js`)})
    const Render = await import(${JSON.stringify(`${ROOT}packages/server/dist/src/simulate/Render.js`)})
    const file = ${JSON.stringify(SCENARIO)}
    const parsed = Scenario.parse(readFileSync(file, "utf8"), { file })
    if (parsed._tag === "Left") throw new Error(parsed.left.message)
    const cpu = process.cpuUsage()
    const started = performance.now()
    const report = Simulate.run(parsed.right, { duration: ${durationMs}, fastPath: ${fastPath} })
    const wallMs = performance.now() - started
    const used = process.cpuUsage(cpu)
    process.stdout.write(JSON.stringify({
      requests: report.requests,
      wallMs,
      cpuMs: (used.user + used.system) / 1000,
      maxRssMb: process.resourceUsage().maxRSS / 1024,
      report: Render.json(report)
    }))
  `
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] })
    let out = ""
    child.stdout.setEncoding("utf8")
    child.stdout.on("data", (chunk: string) => (out += chunk))
    child.on("error", reject)
    child.on("close", (code) => {
      if (code !== 0) return reject(new Error(`simulation exited with ${code}`))
      resolve(JSON.parse(out) as Result)
    })
  })
}

const pad = (s: string, n: number) => s.padStart(n)
const rows: Array<string> = []
const row = (label: string, hours: number, r: Result) =>
  rows.push(
    `${label.padEnd(12)}${pad(`${hours} h`, 7)}${pad(r.requests.toLocaleString("en-US"), 12)}${pad((r.wallMs / 1000).toFixed(1), 9)}${
      pad((r.cpuMs / 1000).toFixed(1), 9)
    }${pad(Math.round(r.requests / (r.wallMs / 1000)).toLocaleString("en-US"), 10)}${pad(`${Math.round(r.maxRssMb)} MB`, 11)}`
  )

const skipRelay = process.env["BENCH_SIM_SKIP_RELAY"] === "1"
const relayDay = process.env["BENCH_SIM_RELAY_DAY"] === "1"
const same: Array<string> = []

for (const hours of [1, 24]) {
  const fast = await runOnce(hours * HOUR, true)
  row("fast path", hours, fast)
  if (!skipRelay && (hours === 1 || relayDay)) {
    const relay = await runOnce(hours * HOUR, false)
    row("relay only", hours, relay)
    same.push(`${hours} h: ${relay.report === fast.report ? "the same report" : "DIFFERENT reports"} (fast path, relay only)`)
  }
}

console.log(`breakwater simulate: ${SCENARIO.slice(ROOT.length)} (seed 42), one fresh process per run\n`)
console.log(`${"run".padEnd(12)}${pad("sim", 7)}${pad("requests", 12)}${pad("wall s", 9)}${pad("CPU s", 9)}${pad("req/s", 10)}${pad("peak RSS", 11)}`)
for (const r of rows) console.log(r)
if (same.length > 0) console.log(`\n${same.join("\n")}`)
