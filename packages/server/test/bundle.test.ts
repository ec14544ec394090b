/**
 * What serving runs: the bundle is one CommonJS file (so that the bin can
 * load it with a V8 code cache), and the Redis stores (with ioredis), the
 * simulator and the OpenTelemetry SDK are in it as lazily initialised
 * modules, reached through `import()` only when a config or a command asks
 * for them, so an in-memory gateway never pays for running their code.
 *
 * Checked at run time: V8's coverage (NODE_V8_COVERAGE) of a gateway that
 * started, served /readyz and drained says which module bodies ran.
 */
import { FakeUpstream } from "@breakwater/core/testing"
import { spawn } from "node:child_process"
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"

const BIN = fileURLToPath(new URL("../bin/breakwater.js", import.meta.url))
const BUNDLE = fileURLToPath(new URL("../dist/bin/breakwater.cjs", import.meta.url))

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })

interface FunctionCoverage {
  readonly functionName: string
  readonly ranges: ReadonlyArray<{ readonly count: number }>
}

/** Starts the bin on an in-memory config until /readyz answers 200, drains it: how often each of the bundle's functions ran. */
const coverageOfAStart = async (env: Record<string, string>): Promise<ReadonlyArray<FunctionCoverage>> => {
  const dir = mkdtempSync(join(tmpdir(), "breakwater-bundle-test-"))
  const fake = await FakeUpstream.start({ name: "fake" })
  try {
    const config = join(dir, "breakwater.yaml")
    writeFileSync(
      config,
      `upstreams:\n  - { name: fake, baseUrl: "${fake.url}", apiKey: sk-test, models: "*" }\n` +
        `keys:\n  - { name: app, key: gw-test-0123456789 }\nserver: { logLevel: warning, drainGrace: 0s }\n`
    )
    const port = await freePort()
    const child = spawn(process.execPath, [BIN, "--config", config, "--port", String(port)], {
      env: { ...process.env, ...env, NODE_V8_COVERAGE: join(dir, "coverage") },
      stdio: ["ignore", "ignore", "pipe"]
    })
    let stderr = ""
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d))
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
    const until = performance.now() + 20_000
    for (;;) {
      if (child.exitCode !== null) throw new Error(`the bin exited ${child.exitCode}:\n${stderr}`)
      if (performance.now() > until) throw new Error(`no 200 on /readyz:\n${stderr}`)
      const status = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.status, () => 0)
      if (status === 200) break
      await new Promise((r) => setTimeout(r, 20))
    }
    child.kill("SIGTERM")
    expect(await exited).toBe(0)
    const scripts = readdirSync(join(dir, "coverage")).flatMap((f) =>
      (JSON.parse(readFileSync(join(dir, "coverage", f), "utf8")) as {
        result: Array<{ url: string; functions: Array<FunctionCoverage> }>
      }).result
    )
    const bundle = scripts.filter((s) => s.url === BUNDLE || s.url.endsWith("/dist/bin/breakwater.cjs"))
    expect(bundle).toHaveLength(1)
    return bundle[0]!.functions
  } finally {
    await fake.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * How often the body of the lazily initialised module at `path` ran (esbuild names its function by
 * the module's path, relative to where the bundle was built); undefined when the bundle has no such module.
 */
const runs = (functions: ReadonlyArray<FunctionCoverage>, path: string): number | undefined =>
  functions.find((f) => f.functionName === path || f.functionName.endsWith(`/${path}`))?.ranges[0]?.count

describe("the bundle runs what serving needs, and no more", () => {
  it("is one CommonJS file whose first line carries its hash (the code cache's key)", () => {
    const text = readFileSync(BUNDLE, "utf8")
    expect(text).toMatch(/^\/\*breakwater-bundle:[0-9a-f]{16}\*\//)
    expect(text).toContain("//# sourceMappingURL=breakwater.cjs.map")
    expect(readdirSync(fileURLToPath(new URL("../dist/bin/", import.meta.url))).filter((f) => f.endsWith(".js"))).toEqual([])
  })

  for (const [mode, env] of [["with the code cache", {}], ["without it (BREAKWATER_CODE_CACHE=0)", { BREAKWATER_CODE_CACHE: "0" }]] as const) {
    it(`an in-memory gateway never runs the Redis stores, ioredis, the simulator or the OpenTelemetry SDK, ${mode}`, async () => {
      const functions = await coverageOfAStart(env)
      // What serving needs ran (the check sees module bodies at all)...
      expect(runs(functions, "server/src/Config.ts")).toBe(1)
      expect(runs(functions, "core/src/Router.ts")).toBe(1)
      // ...and what it does not need is in the bundle, and never ran.
      for (const lazy of ["core/src/Redis.ts", "node_modules/ioredis/built/index.js", "server/src/Telemetry.ts", "server/src/simulate/Cli.ts"]) {
        expect({ lazy, runs: runs(functions, lazy) }).toEqual({ lazy, runs: 0 })
      }
    }, 60_000)
  }
})
