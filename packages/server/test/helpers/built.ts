/**
 * The server project's vitest globalSetup. The CLI tests run the `breakwater`
 * bin, which runs the build (`dist/bin`, see scripts/bundle.js), not the
 * sources. `npm test` builds first; a run of vitest alone after an edit would
 * test the old build, so when a source is newer than the bundle this builds
 * it (`npm run build`: `tsc -b`, then the bundle) before any test starts.
 */
import { execFileSync } from "node:child_process"
import { readdirSync, statSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url))
const BUNDLE = join(ROOT, "packages/server/dist/bin/breakwater.js")

const newest = (dir: string): number => {
  let max = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    max = Math.max(max, entry.isDirectory() ? newest(path) : statSync(path).mtimeMs)
  }
  return max
}

export default function setup(): void {
  const built = (() => {
    try {
      return statSync(BUNDLE).mtimeMs
    } catch {
      return 0
    }
  })()
  const sources = Math.max(newest(join(ROOT, "packages/core/src")), newest(join(ROOT, "packages/server/src")))
  if (sources > built) {
    console.log(built === 0 ? "no build of the server yet: npm run build" : "sources newer than the build: npm run build")
    execFileSync("npm", ["run", "build", "--silent"], { cwd: ROOT, stdio: "inherit" })
  }
}
