#!/usr/bin/env node
/**
 * Bundles the server (`src/main.ts` and `@breakwater/core`'s sources) into
 * `dist/bin/`, which the `breakwater` bin runs.
 *
 * Why a bundle: Node 20 loads ES modules one file at a time, at about 1 ms
 * each on a small machine, and serving loads some 850 of them (effect alone
 * is 260, undici 110, yaml 70). As one file the same code starts in a
 * third of the time (`npm run bench:start` measures it).
 *
 * - esbuild compiles the TypeScript itself (the `@breakwater/source` export
 *   condition points it at the core's sources), in about a second: `npm
 *   start` runs this, not `tsc -b`. `npm run build` and `npm test` type-check
 *   with `tsc -b` as well, and `tsc -b` writes the libraries' `dist/src`.
 * - Every dependency is in the bundle: `dist/bin` and `bin/` run without
 *   node_modules (the container image has none).
 * - One CommonJS file, `dist/bin/breakwater.cjs`, so that the bin can load it
 *   with a V8 code cache (bin/breakwater.js; Node 20 has no code cache for ES
 *   modules): compiling the bundle was a fifth of the start time. What
 *   serving does not need stays lazy: the simulator, the OpenTelemetry SDK,
 *   and the Redis stores with ioredis are reached through `import()`, which
 *   esbuild turns into lazily initialised module wrappers in the same file,
 *   evaluated only when a command or `store.kind: redis` asks for them
 *   (test/bundle.test.ts checks it at run time).
 * - The first line carries a hash of the bundle (`/*breakwater-bundle:…*\/`):
 *   the code cache's key.
 * - The core's undici client gets only undici's Agent and request
 *   (undici-lite.cjs): half of undici's load time.
 * - Licenses of the bundled packages go to `dist/bin/THIRD-PARTY-LICENSES.md`.
 */
import { build } from "esbuild"
import { createHash } from "node:crypto"
import { cpSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { join, relative } from "node:path"
import { fileURLToPath } from "node:url"

const pkg = fileURLToPath(new URL("..", import.meta.url))
const entry = join(pkg, "src/main.ts")
const outdir = join(pkg, "dist/bin")

/** `undici` imported by the core's undici client resolves to undici-lite.cjs. */
const undiciLite = {
  name: "undici-lite",
  setup(build) {
    build.onResolve({ filter: /^undici$/ }, (args) =>
      /[\\/]core[\\/]src[\\/]internal[\\/]undici\.ts$/.test(args.importer)
        ? { path: join(pkg, "scripts/undici-lite.cjs") }
        : undefined)
  }
}

const PLACEHOLDER = "0".repeat(16)

rmSync(outdir, { recursive: true, force: true })
const result = await build({
  entryPoints: { breakwater: entry },
  outdir,
  bundle: true,
  format: "cjs",
  outExtension: { ".js": ".cjs" },
  platform: "node",
  target: "node20",
  conditions: ["@breakwater/source"],
  tsconfig: join(pkg, "tsconfig.json"),
  // `import.meta.url` (Console.ts finds its files with it) as the CommonJS file's URL. The
  // placeholder becomes the bundle's hash below (same length: the source map stays right).
  define: { "import.meta.url": "__bwImportMetaUrl" },
  banner: { js: `/*breakwater-bundle:${PLACEHOLDER}*/var __bwImportMetaUrl=require("node:url").pathToFileURL(__filename).href;` },
  sourcemap: "linked",
  sourcesContent: false,
  legalComments: "none",
  // Less to parse at start (about a fifth of the start time is compiling the bundle); names
  // are kept, and the linked source maps still point at the sources.
  minifyWhitespace: true,
  minifySyntax: true,
  metafile: true,
  plugins: [undiciLite],
  logLevel: "warning"
})

// The bundle's hash in its first line: bin/breakwater.js keys the code cache on it.
const bundleFile = join(outdir, "breakwater.cjs")
const text = readFileSync(bundleFile, "utf8")
const hash = createHash("sha256").update(text).digest("hex").slice(0, PLACEHOLDER.length)
writeFileSync(bundleFile, text.replace(`/*breakwater-bundle:${PLACEHOLDER}*/`, `/*breakwater-bundle:${hash}*/`))

// The operator console's static files (Console.ts reads them from dist/bin/console/).
cpSync(join(pkg, "console"), join(outdir, "console"), { recursive: true })

// The packages whose code is in the bundle, with their licenses.
const packages = new Map()
for (const input of Object.keys(result.metafile.inputs)) {
  const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input)
  if (m === null) continue
  const dir = join(process.cwd(), m[1])
  if (packages.has(dir)) continue
  const meta = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"))
  const file = readdirSync(dir).find((f) => /^(licen[cs]e|copying)(\.(md|txt))?$/i.test(f))
  packages.set(dir, {
    name: meta.name,
    version: meta.version,
    license: typeof meta.license === "string" ? meta.license : "see below",
    text: file === undefined ? undefined : readFileSync(join(dir, file), "utf8").trim()
  })
}
const sorted = [...packages.values()].sort((a, b) => a.name.localeCompare(b.name))
writeFileSync(
  join(outdir, "THIRD-PARTY-LICENSES.md"),
  [
    "# Third-party code in this bundle",
    "",
    "`dist/bin/` bundles the following packages (with `@breakwater/core` and `@breakwater/server`).",
    "",
    ...sorted.flatMap((p) => [`## ${p.name}@${p.version} (${p.license})`, "", p.text ?? "(no license file in the package)", ""])
  ].join("\n")
)

const size = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0)
console.log(
  `bundle: ${relative(process.cwd(), bundleFile)}, ${(size / 1e6).toFixed(1)} MB with its map; ${sorted.length} third-party packages`
)

