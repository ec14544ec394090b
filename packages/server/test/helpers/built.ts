/**
 * The server project's vitest globalSetup. The CLI tests run the `breakwater`
 * bin, which runs the build (`dist/bin`, see scripts/bundle.js), not the
 * sources. `npm test` builds first; a run of vitest alone after an edit would
 * test the old build, so when a source is newer than the bundle this builds
 * it (`npm run build`: `tsc -b`, then the bundle) before any test starts.
 * (The examples' project runs this too: its installed-package test packs
 * `tsc -b`'s output and the bundle.)
 */
import { execFileSync } from "node:child_process"
import { mkdirSync, readdirSync, rmSync, statSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url))
const BUNDLE = join(ROOT, "packages/server/dist/bin/breakwater.cjs")

const newest = (dir: string): number => {
  let max = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    max = Math.max(max, entry.isDirectory() ? newest(path) : statSync(path).mtimeMs)
  }
  return max
}

const mtime = (path: string) => statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? 0
const builtAt = () => mtime(BUNDLE)

/** A build output older than a source it is made from: the bundle, and each package's `tsc -b` output. */
const stale = () => {
  const core = newest(join(ROOT, "packages/core/src"))
  const server = newest(join(ROOT, "packages/server/src"))
  return Math.max(core, server) > builtAt() ||
    core > mtime(join(ROOT, "packages/core/dist/.tsbuildinfo")) ||
    server > mtime(join(ROOT, "packages/server/dist/.tsbuildinfo"))
}

/** One build at a time: the server's and the examples' projects both run this setup. */
const LOCK = join(ROOT, "packages/server/dist/.build-lock")

export default async function setup(): Promise<void> {
  if (!stale()) return
  mkdirSync(dirname(LOCK), { recursive: true })
  const until = Date.now() + 300_000
  for (;;) {
    try {
      mkdirSync(LOCK)
      break
    } catch {
      // Another setup is building (or one was killed: a lock older than 5 minutes is stale).
      const lockedAt = statSync(LOCK, { throwIfNoEntry: false })?.mtimeMs
      if (lockedAt !== undefined && Date.now() - lockedAt > 300_000) rmSync(LOCK, { recursive: true, force: true })
      if (Date.now() > until) throw new Error(`${LOCK} held for 5 minutes`)
      await new Promise((r) => setTimeout(r, 200))
    }
  }
  try {
    if (stale()) {
      console.log(builtAt() === 0 ? "no build of the server yet: npm run build" : "sources newer than the build: npm run build")
      execFileSync("npm", ["run", "build", "--silent"], { cwd: ROOT, stdio: "inherit" })
    }
  } finally {
    rmSync(LOCK, { recursive: true, force: true })
  }
}
