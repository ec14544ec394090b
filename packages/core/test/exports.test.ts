/**
 * The package's entry points follow its modules: one per public module, with
 * the same three conditions each, and nothing under `internal/`. (That the
 * built files behind them work from an installed tarball is checked by
 * packages/examples/test/installed.test.ts.)
 */
import { readdirSync, readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"

type Entry = Record<string, string>

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
  exports: Record<string, Entry | string>
  files: Array<string>
}
const modules = readdirSync(new URL("../src/", import.meta.url))
  .filter((f) => f.endsWith(".ts") && f !== "index.ts")
  .map((f) => f.slice(0, -3))

describe("package.json exports", () => {
  it("has an entry per public module, the index and the testing module", () => {
    const expected = [".", ...modules.map((m) => `./${m}`), "./testing", "./testing/FakeUpstream", "./package.json"]
    expect(Object.keys(pkg.exports).sort()).toEqual(expected.sort())
  })

  it("each entry: the sources for the workspace, then the built declarations and JavaScript", () => {
    for (const [subpath, entry] of Object.entries(pkg.exports)) {
      if (subpath === "./package.json") continue
      const src = subpath === "." ? "index" : subpath === "./testing" ? "testing/index" : subpath.slice(2)
      expect(entry, subpath).toEqual({
        "@breakwater/source": `./src/${src}.ts`,
        types: `./dist/src/${src}.d.ts`,
        import: `./dist/src/${src}.js`
      })
      // The source condition comes first: conditions match in the order they are written.
      expect(Object.keys(entry as Entry)[0], subpath).toBe("@breakwater/source")
    }
  })

  it("keeps internal/ out, and publishes dist/src with the sources its maps point to", () => {
    expect(Object.keys(pkg.exports).filter((k) => k.includes("internal"))).toEqual([])
    expect(pkg.files).toEqual(expect.arrayContaining(["dist/src", "src"]))
  })
})
