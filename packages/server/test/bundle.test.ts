/**
 * What serving loads: the bundle's entry and the chunks it imports
 * statically. The Redis stores (and ioredis), the simulator and the
 * OpenTelemetry SDK are chunks of their own, loaded by `import()` only when a
 * config or a command asks for them, so an in-memory gateway never pays for
 * their code or memory.
 */
import { readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"

const BIN = fileURLToPath(new URL("../dist/bin/breakwater.js", import.meta.url))

/** The files loaded at start: the entry and its static imports, transitively (dynamic `import()` left out). */
const staticClosure = (entry: string): Set<string> => {
  const seen = new Set<string>()
  const todo = [entry]
  while (todo.length > 0) {
    const file = todo.pop()!
    if (seen.has(file)) continue
    seen.add(file)
    const text = readFileSync(file, "utf8")
    // Static imports only (`import{a as b}from"./x.js"`, minified or not); `import("./x.js")` is left out.
    for (const m of text.matchAll(/(?:^|[;\n}])\s*import\s*(?:[\w*{$][^;"()]*?from\s*)?"(\.{1,2}\/[^"]+)"/g)) {
      todo.push(join(dirname(file), m[1]!))
    }
  }
  return seen
}

describe("the bundle loads what serving needs, and no more", () => {
  it("the Redis stores (ioredis), the simulator and the OpenTelemetry SDK are loaded on demand only", () => {
    const loaded = [...staticClosure(BIN)]
    const names = loaded.map((f) => f.slice(f.lastIndexOf("/") + 1))
    expect(names[0]).toBe("breakwater.js")
    expect(names.length).toBeGreaterThan(1)
    for (const lazy of [/^Redis-/, /^Cli-/, /^Telemetry-/]) expect(names.filter((n) => lazy.test(n))).toEqual([])
    // ioredis's own code (its option names) is nowhere in what loads at start.
    for (const file of loaded) expect(readFileSync(file, "utf8")).not.toContain("maxRetriesPerRequest")
    // ...and is in the bundle, behind an import().
    const entry = readFileSync(BIN, "utf8")
    expect(entry).toMatch(/import\("\.\/chunks\/Redis-[\w-]+\.js"\)/)
    expect(entry).toMatch(/import\("\.\/chunks\/Cli-[\w-]+\.js"\)/)
  })
})
