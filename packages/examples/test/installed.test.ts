/**
 * The packages as a user gets them. `npm pack` both workspaces, install the
 * two tarballs into a new project outside the repository (everything else
 * from the registry; nothing from the workspace), and there:
 *
 * - type-check (strict, NodeNext) and run `src/app.ts`, the README's "Use the
 *   library in your app" (the test checks the README shows this very file);
 * - run the core on the platform HttpClient, recording every module import:
 *   neither undici nor ioredis may be loaded;
 * - `npx breakwater --config FILE` and get a 200 through it from a fake
 *   upstream, without loading ioredis (the config has no Redis store).
 *
 * It needs the registry (or npm's cache) and takes a minute or two: the
 * install is bounded by INSTALL_TIMEOUT_MS. It uses the build `npm test`
 * makes first (the server project's globalSetup rebuilds a stale one).
 */
import { FakeUpstream } from "@breakwater/core/testing"
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { delimiter, join } from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const ROOT = fileURLToPath(new URL("../../../", import.meta.url))
const INSTALL_TIMEOUT_MS = 240_000

interface Ran {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/**
 * The environment of a user's shell: no npm_* variables from the `npm test`
 * that runs this, and no workspace `node_modules/.bin` on the PATH (npx must
 * find the installed bin, not the workspace's).
 */
const userEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^npm_/i.test(k) && k !== "INIT_CWD" && k !== "NODE_OPTIONS" && k !== "VITEST" && !k.startsWith("VITEST_")) env[k] = v
  }
  env["PATH"] = (process.env["PATH"] ?? "").split(delimiter).filter((p) => !p.includes("node_modules")).join(delimiter)
  return { ...env, ...extra }
}

const run = (cmd: string, args: ReadonlyArray<string>, cwd: string, timeout: number, env = userEnv()) =>
  new Promise<Ran>((resolve) => {
    execFile(cmd, args, { cwd, timeout, env, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
      resolve({ code, stdout, stderr: error !== null && code === null ? `${stderr}\n${error.message}` : stderr })
    })
  })

const ok = (r: Ran, what: string): Ran => {
  if (r.code !== 0) throw new Error(`${what} exited ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`)
  return r
}

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })

const versionOf = (pkg: string): string =>
  (JSON.parse(readFileSync(join(ROOT, "node_modules", pkg, "package.json"), "utf8")) as { version: string }).version

interface Packed {
  readonly name: string
  readonly filename: string
  readonly files: ReadonlyArray<{ readonly path: string }>
}

/** Records every specifier an ES module import resolves, one a line, to the file in `data.log`. */
const RECORD_HOOKS = `import { appendFileSync } from "node:fs"
let log
export function initialize(data) { log = data.log }
export async function resolve(specifier, context, next) {
  if (log) appendFileSync(log, specifier + "\\n")
  return next(specifier, context)
}
`
const RECORD = `import { register } from "node:module"
register("./record-hooks.mjs", import.meta.url, { data: { log: process.env.RESOLVE_LOG } })
`

/** The core on \`@effect/platform\`'s fetch client: no undici, no ioredis. */
const PLATFORM_CLIENT = `import { Cooldown, Pricing, RateLimiter, Relay, ResponseCache, UpstreamClient } from "@breakwater/core"
import { FakeUpstream } from "@breakwater/core/testing"
import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import { Effect, Layer, Redacted } from "effect"

const program = Effect.gen(function*() {
  const fake = yield* FakeUpstream.make({ name: "only" })
  const RelayLive = Relay.layer({
    upstreams: [{ name: "only", baseUrl: fake.url, apiKey: Redacted.make("sk-only"), models: "*" }]
  }).pipe(Layer.provide(Layer.mergeAll(
    RateLimiter.layerStoreMemory,
    Cooldown.layerStoreMemory,
    UpstreamClient.layer.pipe(Layer.provide(FetchHttpClient.layer)),
    Pricing.layer(),
    ResponseCache.layerMemory()
  )))
  const answer = yield* Effect.flatMap(Relay.Relay, (relay) =>
    relay.chat({ model: "gpt-4.1", messages: [{ role: "user", content: "Hi" }] })).pipe(Effect.provide(RelayLive))
  console.log("platform client: " + answer.metadata.upstream + " said " + JSON.parse(answer.body).choices[0].message.content)
})
Effect.runPromise(Effect.scoped(program)).catch((e) => { console.error(e); process.exit(1) })
`

const TSCONFIG = {
  compilerOptions: {
    target: "ES2022",
    module: "NodeNext",
    moduleResolution: "NodeNext",
    lib: ["ES2022"],
    types: ["node"],
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    skipLibCheck: true,
    rootDir: "src",
    outDir: "dist"
  },
  include: ["src"]
}

const UPSTREAM_KEY = "sk-upstream-installed-0123456789"
const GATEWAY_KEY = "gw-installed-0123456789abcdef"

describe("the packed packages, installed in a new project", { timeout: 60_000 }, () => {
  let dir = ""
  let packed: ReadonlyArray<Packed> = []

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "breakwater-installed-"))
    // --ignore-scripts: no prepack rebuild here (other suites are running the
    // bin being packed); the build is current (see the header).
    const pack = ok(
      await run(
        "npm",
        ["pack", "--json", "--ignore-scripts", "--pack-destination", dir, "-w", "@breakwater/core", "-w", "@breakwater/server"],
        ROOT,
        60_000
      ),
      "npm pack"
    )
    packed = JSON.parse(pack.stdout) as Array<Packed>
    const tarball = (name: string) => `file:./${packed.find((p) => p.name === name)!.filename}`
    const core = JSON.parse(readFileSync(join(ROOT, "packages/core/package.json"), "utf8")) as {
      peerDependencies: Record<string, string>
    }
    writeFileSync(
      join(dir, "package.json"),
      JSON.stringify(
        {
          name: "breakwater-installed-check",
          private: true,
          type: "module",
          dependencies: {
            "@breakwater/core": tarball("@breakwater/core"),
            "@breakwater/server": tarball("@breakwater/server"),
            "@effect/platform": core.peerDependencies["@effect/platform"],
            effect: core.peerDependencies["effect"]
          },
          devDependencies: { "@types/node": versionOf("@types/node"), typescript: versionOf("typescript") },
          // The server's dependency on the core is this tarball too, never a registry package.
          overrides: { "@breakwater/core": "$@breakwater/core" }
        },
        null,
        2
      )
    )
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify(TSCONFIG, null, 2))
    mkdirSync(join(dir, "src"))
    copyFileSync(join(ROOT, "packages/examples/src/app.ts"), join(dir, "src/main.ts"))
    writeFileSync(join(dir, "platform-client.mjs"), PLATFORM_CLIENT)
    writeFileSync(join(dir, "record.mjs"), RECORD)
    writeFileSync(join(dir, "record-hooks.mjs"), RECORD_HOOKS)
    ok(
      await run(
        "npm",
        ["install", "--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        dir,
        INSTALL_TIMEOUT_MS
      ),
      "npm install"
    )
  }, INSTALL_TIMEOUT_MS + 60_000)

  // Removing the installed project takes more than the default 10 s on a busy machine.
  afterAll(() => {
    if (dir !== "") rmSync(dir, { recursive: true, force: true })
  }, 60_000)

  it("the tarballs hold the built JS with declarations and maps, the sources they map to, and no tests", () => {
    const files = (name: string) => new Set(packed.find((p) => p.name === name)!.files.map((f) => f.path))
    const core = files("@breakwater/core")
    for (const f of ["dist/src/index.js", "dist/src/index.d.ts", "dist/src/index.d.ts.map", "src/index.ts", "dist/src/testing/index.js", "dist/src/prices.json"]) {
      expect(core, f).toContain(f)
    }
    const server = files("@breakwater/server")
    for (const f of ["bin/breakwater.js", "dist/bin/breakwater.cjs", "dist/bin/breakwater.cjs.map", "dist/bin/THIRD-PARTY-LICENSES.md", "dist/src/Config.d.ts"]) {
      expect(server, f).toContain(f)
    }
    // The bin's code cache (dist/bin/.cache/, written by starts of the workspace's bin) is not shipped.
    for (const f of [...core, ...server]) expect(f).not.toMatch(/(^|\/)(test|bench|\.cache)\/|tsbuildinfo/)
  })

  it("the installed core is the packed one, once", () => {
    const installed = JSON.parse(readFileSync(join(dir, "node_modules/@breakwater/core/package.json"), "utf8")) as { version: string }
    expect(installed.version).toBe(JSON.parse(readFileSync(join(ROOT, "packages/core/package.json"), "utf8")).version)
    expect(() => readFileSync(join(dir, "node_modules/@breakwater/server/node_modules/@breakwater/core/package.json"))).toThrow()
  })

  it("the README's program type-checks (strict, NodeNext) and runs: breaker, bulkhead, retry and timeout, then the relay", async () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8")
    expect(readme, "README shows packages/examples/src/app.ts as it is").toContain(
      "```ts\n" + readFileSync(join(ROOT, "packages/examples/src/app.ts"), "utf8") + "```"
    )
    ok(await run(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "."], dir, 120_000), "tsc")
    const r = ok(await run(process.execPath, ["dist/main.js"], dir, 60_000), "node dist/main.js")
    expect(r.stdout).toBe(
      [
        "guarded call: HttpError 503 after 3 attempts; breaker Open",
        "next call: CircuitOpen at once (the upstream saw 3 requests)",
        "relay: fallback answered after 2 attempts (primary: server error (503))",
        ""
      ].join("\n")
    )
  })

  it("the core on the platform HttpClient loads neither undici nor ioredis", async () => {
    const log = join(dir, "resolved-platform.log")
    writeFileSync(log, "")
    const r = ok(
      await run(process.execPath, ["--import", "./record.mjs", "platform-client.mjs"], dir, 60_000, userEnv({ RESOLVE_LOG: log })),
      "platform-client.mjs"
    )
    expect(r.stdout).toBe("platform client: only said Hello from only\n")
    const resolved = readFileSync(log, "utf8").split("\n")
    expect(resolved).toContain("@breakwater/core") // the recorder works
    expect(resolved.filter((s) => /^(undici|ioredis|@effect\/platform-node)(\/|$)/.test(s))).toEqual([])
  })

  it("npx breakwater --config serves a chat completion from a fake upstream, without loading ioredis", async () => {
    const fake = await FakeUpstream.start({ name: "fake" })
    const port = await freePort()
    const config = join(dir, "breakwater.yaml")
    writeFileSync(
      config,
      [
        "upstreams:",
        `  - { name: fake, baseUrl: "${fake.url}", apiKey: "\${UPSTREAM_KEY}", models: "*" }`,
        "keys:",
        `  - { name: app, key: "\${GATEWAY_KEY}" }`,
        ""
      ].join("\n")
    )
    const log = join(dir, "resolved-server.log")
    writeFileSync(log, "")
    let child: ChildProcess | undefined
    /** Whether every process of the group has exited within `ms`. */
    const groupGone = async (pgid: number, ms: number) => {
      const until = performance.now() + ms
      while (performance.now() < until) {
        try {
          process.kill(-pgid, 0)
        } catch {
          return true
        }
        await new Promise((r) => setTimeout(r, 50))
      }
      return false
    }
    try {
      child = spawn("npx", ["breakwater", "--config", config, "--port", String(port)], {
        cwd: dir,
        env: userEnv({
          // The installed bin or nothing: never a registry package of that name.
          npm_config_offline: "true",
          UPSTREAM_KEY,
          GATEWAY_KEY,
          RESOLVE_LOG: log,
          NODE_OPTIONS: `--import ${join(dir, "record.mjs")}`
        }),
        stdio: ["ignore", "pipe", "pipe"],
        detached: true
      })
      let out = ""
      child.stdout!.setEncoding("utf8").on("data", (c: string) => (out += c))
      child.stderr!.setEncoding("utf8").on("data", (c: string) => (out += c))
      const exited = new Promise<void>((resolve) => child!.once("exit", () => resolve()))
      const deadline = performance.now() + 30_000
      while (!/Breakwater on http:\/\/127\.0\.0\.1:\d+/.test(out)) {
        if (child.exitCode !== null || performance.now() > deadline) throw new Error(`no start:\n${out}`)
        await new Promise((r) => setTimeout(r, 50))
      }
      const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${GATEWAY_KEY}` },
        body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "Hello" }] })
      })
      expect(res.status).toBe(200)
      expect(res.headers.get("x-breakwater-upstream")).toBe("fake")
      const body = (await res.json()) as { choices: Array<{ message: { content: string } }> }
      expect(body.choices[0]?.message.content).toBe("Hello from fake")
      expect(fake.counters().lastAuthorization).toBe(`Bearer ${UPSTREAM_KEY}`)

      // SIGTERM to npx and the server (one process group): the server drains and exits.
      process.kill(-child.pid!, "SIGTERM")
      await exited
      expect(await groupGone(child.pid!, 15_000)).toBe(true)
      expect(out).toMatch(/SIGTERM: draining/)
      expect(out).not.toContain(UPSTREAM_KEY)
      const resolved = readFileSync(log, "utf8").split("\n")
      expect(resolved).toContain("node:vm") // the recorder saw the bin, which runs the bundle as a vm.Script
      // No ioredis from node_modules: the bundle's own copy runs only for `store.kind: redis`
      // (packages/server/test/bundle.test.ts checks that it does not run otherwise).
      expect(resolved.filter((s) => /^ioredis(\/|$)/.test(s))).toEqual([])
    } finally {
      if (child?.pid !== undefined) {
        try {
          process.kill(-child.pid, "SIGKILL")
        } catch {
          // already gone
        }
      }
      await fake.close()
    }
  })
})
