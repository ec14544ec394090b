/**
 * `npm run bench:start`: how long the gateway takes to start, as a process
 * supervisor or a readiness probe sees it: from spawn to the first 200 on
 * `GET /readyz`, polled every 5 ms. One upstream (a fake on 127.0.0.1, in
 * this process), one key, in-memory stores.
 *
 * Three ways to run the same server, interleaved round by round so that a
 * change in the machine's load hits them alike; median of `BENCH_RUNS`
 * (default 5) after one unmeasured warm-up each (`BENCH_EXTRA_BIN=<path>`
 * adds another bin, say an older build's, to compare):
 *
 * - `bin`: `node packages/server/bin/breakwater.js`, what `breakwater` and
 *   `npm start` run (the bundle in dist/bin), with its code cache (written
 *   by its first start: the warm-up runs a second, as any server does);
 * - `bin, no code cache`: the same with `BREAKWATER_CODE_CACHE=0`, compiling
 *   the bundle at every start (what the code cache saves);
 * - `dist`: `node packages/server/dist/src/main.js`, the same built JS
 *   unbundled, one file per module (why the bin runs a bundle);
 * - `tsx`: `node --import tsx src/main.ts`, compiling the TypeScript sources
 *   at start, as the bin did before the packages were built.
 *
 * Beside the wall time, the CPU time the server process used until then
 * (user + system, all its threads, from /proc; 10 ms resolution): on a
 * shared machine the wall time also counts waiting for a core, the CPU time
 * does not.
 *
 * `npm run bench:start` builds first.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { cpus, loadavg, tmpdir } from "node:os"
import { join } from "node:path"

const RUNS = Number(process.env["BENCH_RUNS"] ?? 5)
const TIMEOUT_MS = 20_000
const root = new URL("../../../", import.meta.url).pathname

const variants: ReadonlyArray<{ readonly name: string; readonly args: ReadonlyArray<string>; readonly env?: Record<string, string> }> = [
  { name: "bin (bundled build)", args: ["packages/server/bin/breakwater.js"] },
  { name: "bin, no code cache", args: ["packages/server/bin/breakwater.js"], env: { BREAKWATER_CODE_CACHE: "0" } },
  ...(process.env["BENCH_EXTRA_BIN"] ? [{ name: "extra bin", args: [process.env["BENCH_EXTRA_BIN"]] }] : []),
  { name: "dist (unbundled build)", args: ["packages/server/dist/src/main.js"] },
  { name: "tsx (sources)", args: ["--import", "tsx", "--conditions=@breakwater/source", "packages/server/src/main.ts"] }
]

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })

const children = new Set<ChildProcess>()
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL")
})

/** CPU ms (user + system) a process has used so far; undefined where /proc is not. */
const cpuMs = (pid: number): number | undefined => {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return (Number(fields[11]) + Number(fields[12])) * 10
  } catch {
    return undefined
  }
}

/**
 * Spawns one server: the ms from spawn to its first 200 on /readyz, and the CPU ms it used until then;
 * kills it `keepMs` after that.
 */
const startOnce = async (
  v: (typeof variants)[number],
  config: string,
  keepMs = 0
): Promise<{ wall: number; cpu: number | undefined }> => {
  const args = v.args
  const port = await freePort()
  const t0 = performance.now()
  const child = spawn(process.execPath, [...args, "--config", config, "--port", String(port)], {
    cwd: root,
    env: { ...process.env, ...v.env },
    stdio: ["ignore", "ignore", "pipe"]
  })
  children.add(child)
  let stderr = ""
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d))
  try {
    for (;;) {
      if (child.exitCode !== null) throw new Error(`${args.join(" ")} exited ${child.exitCode}:\n${stderr}`)
      if (performance.now() - t0 > TIMEOUT_MS) throw new Error(`${args.join(" ")}: no 200 on /readyz within ${TIMEOUT_MS} ms`)
      const status = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.status, () => 0)
      if (status === 200) return { wall: performance.now() - t0, cpu: cpuMs(child.pid!) }
      await new Promise((r) => setTimeout(r, 5))
    }
  } finally {
    if (keepMs > 0) await new Promise((r) => setTimeout(r, keepMs))
    const exited = new Promise((r) => child.once("exit", r))
    child.kill("SIGKILL")
    await exited
    children.delete(child)
  }
}

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

const main = async () => {
  const fake = await FakeUpstream.start({ name: "fake" })
  const dir = mkdtempSync(join(tmpdir(), "breakwater-bench-start-"))
  const config = join(dir, "breakwater.yaml")
  writeFileSync(
    config,
    `upstreams:\n  - { name: fake, baseUrl: "${fake.url}", apiKey: sk-bench, models: "*" }\n` +
      `keys:\n  - { name: bench, key: gw-bench-0123456789 }\nserver: { logLevel: warning }\n`
  )
  try {
    console.log(`start time: spawn -> first 200 on /readyz; ${RUNS} runs each after a warm-up, interleaved`)
    console.log(`node ${process.version}, ${cpus().length} CPUs, load average ${loadavg()[0]!.toFixed(2)} at start\n`)
    // Warm-up: the disk cache, tsx's compile cache, the bin's code cache (written a second after its start).
    for (const v of variants) await startOnce(v, config, 1_500)
    const times = new Map(variants.map((v) => [v.name, [] as Array<{ wall: number; cpu: number | undefined }>]))
    for (let i = 0; i < RUNS; i++) {
      for (const v of variants) times.get(v.name)!.push(await startOnce(v, config))
    }
    const rows = variants.map((v) => {
      const t = times.get(v.name)!
      const cpus = t.flatMap((x) => x.cpu === undefined ? [] : [x.cpu])
      return {
        name: v.name,
        median: median(t.map((x) => x.wall)),
        cpu: cpus.length === 0 ? "-" : String(Math.round(median(cpus))),
        runs: t.map((x) => Math.round(x.wall)).join(", ")
      }
    })
    const w = Math.max(...rows.map((r) => r.name.length))
    console.log(`${"".padEnd(w)}  median ms  median CPU ms  runs (ms)`)
    for (const r of rows) {
      console.log(`${r.name.padEnd(w)}  ${String(Math.round(r.median)).padStart(9)}  ${r.cpu.padStart(13)}  ${r.runs}`)
    }
    console.log(`\nload average ${loadavg()[0]!.toFixed(2)} at the end`)
  } finally {
    await fake.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
