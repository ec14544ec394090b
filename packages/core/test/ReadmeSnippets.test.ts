/**
 * Every ```ts snippet of the README type-checks against the library, as a
 * user would import it (`@breakwater/core`, resolved through the workspace's
 * node_modules and the package's `exports`).
 *
 * How a snippet is compiled (the convention the README states under "The
 * services"):
 * - it is its own module; its `import` lines are kept;
 * - the namespaces of `effect` (`Effect`, `Layer`, …) and of
 *   `@breakwater/core` (`CircuitBreaker`, `Relay`, …) that it does not import
 *   itself are imported for it, and the placeholders of {@link PRELUDE}
 *   (`callUpstream`, `request`, …) stand for the user's own code;
 * - a snippet with `yield*` at its top level is read as the body of an
 *   `Effect.gen(function*() { … })`.
 * - `<!-- snippet: skip (reason) -->` on the line before the fence skips
 *   one; the skip and its reason are printed. Use it rarely.
 *
 * All snippets are checked by one `tsc --noEmit` run (from the workspace's
 * `typescript`), with the workspace's compiler options; an error is reported
 * as `README.md:<line>`.
 */
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..")
const readmePath = path.join(root, "README.md")

/** The names snippets use for the user's own code. */
const PRELUDE = `import type { Effect } from "effect"
import type { OpenAI, UpstreamError } from "@breakwater/core"
/** Your call to a dependency (here: an upstream, failing with the relay's upstream errors). */
export declare const callUpstream: Effect.Effect<string, UpstreamError.UpstreamError>
/** A chat completion request, as the relay and the cache take it. */
export declare const request: OpenAI.ChatCompletionRequest
/** An estimate of a request's tokens. */
export declare const estimatedTokens: number
/** The request's body as received (bytes or text), forwarded as is when possible. */
export declare const rawBody: string
/** Upstream API keys (from your secrets). */
export declare const key1: string
export declare const key2: string
`
const placeholders = ["callUpstream", "request", "rawBody", "estimatedTokens", "key1", "key2"]

/** Namespaces of `effect` a snippet may use without importing them. */
const effectNames = [
  "Chunk", "Config", "ConfigProvider", "Context", "Data", "Duration", "Effect", "Either", "Exit", "Fiber",
  "Layer", "Metric", "Option", "Redacted", "Ref", "Schedule", "Schema", "Scope", "Stream"
]

/** The namespaces `@breakwater/core` exports (read from its index). */
const coreNames = (): ReadonlyArray<string> => {
  const index = fs.readFileSync(path.join(root, "packages/core/src/index.ts"), "utf8")
  return [...index.matchAll(/^export \* as (\w+) from/gm)].map((m) => m[1]!)
}

export interface Snippet {
  /** README line of the snippet's first code line (1-based). */
  readonly line: number
  readonly code: string
  readonly skip: string | undefined
}

/** The ```ts blocks of a Markdown text, with their line numbers and skip markers. */
export const extractSnippets = (markdown: string): ReadonlyArray<Snippet> => {
  const lines = markdown.split("\n")
  const snippets: Array<Snippet> = []
  // A closing fence: only fence characters (no info string), at least as many as the opening.
  const closes = (line: string) => {
    const t = line.trim()
    return t.length >= fence.length && t === fence[0]!.repeat(t.length)
  }
  let open: { start: number; skip: string | undefined } | undefined
  let body: Array<string> = []
  let fence = ""
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    if (open === undefined) {
      const m = /^(\s*)(```+|~~~+)\s*(\w*)/.exec(line)
      if (m === null) continue
      fence = m[2]!
      const lang = m[3]!.toLowerCase()
      if (lang !== "ts" && lang !== "typescript") {
        // Skip over other blocks, so that a ```ts inside one is not taken.
        const end = lines.findIndex((l, j) => j > i && closes(l))
        i = end < 0 ? lines.length : end
        continue
      }
      let k = i - 1
      while (k >= 0 && lines[k]!.trim() === "") k--
      const marker = k >= 0 ? /^<!--\s*snippet:\s*skip\b\s*(.*?)\s*-->$/.exec(lines[k]!.trim()) : null
      open = { start: i + 2, skip: marker === null ? undefined : (marker[1] || "(no reason given)") }
      body = []
    } else if (closes(line)) {
      snippets.push({ line: open.start, code: body.join("\n"), skip: open.skip })
      open = undefined
    } else {
      body.push(line)
    }
  }
  return snippets
}

interface Generated {
  readonly text: string
  /** README line of each generated line (undefined: added by the wrapper). */
  readonly origin: ReadonlyArray<number | undefined>
}

const importLine = /^import\s/

/** The local names a snippet's imports bind. */
const importedNames = (code: string): Set<string> => {
  const names = new Set<string>()
  for (const m of code.matchAll(/^import\s+(?:type\s+)?([^;]*?)\s+from\s+["'][^"']+["']/gm)) {
    const clause = m[1]!
    const ns = /\*\s+as\s+(\w+)/.exec(clause)
    if (ns !== null) names.add(ns[1]!)
    const braces = /\{([^}]*)\}/.exec(clause)
    if (braces !== null) {
      for (const part of braces[1]!.split(",")) {
        const name = part.trim().replace(/^type\s+/, "").split(/\s+as\s+/).pop()!.trim()
        if (name !== "") names.add(name)
      }
    }
    const def = /^(\w+)\s*(,|$)/.exec(clause.trim())
    if (def !== null) names.add(def[1]!)
  }
  return names
}

/** The snippet as a module: hoisted imports, names it did not import, and the body (wrapped if needed). */
export const generate = (snippet: Snippet, core: ReadonlyArray<string>): Generated => {
  const lines = snippet.code.split("\n")
  const imported = importedNames(snippet.code)
  const declared = (name: string) => new RegExp(`\\b(const|let|var|class|function)\\s+${name}\\b`).test(snippet.code)
  const out: Array<string> = []
  const origin: Array<number | undefined> = []
  const add = (text: string, from?: number) => {
    out.push(text)
    origin.push(from)
  }
  // Its own imports first, on lines mapped to the README (an import may span lines).
  let inImport = false
  const importLines = new Set<number>()
  lines.forEach((l, i) => {
    if (importLine.test(l) || inImport) {
      importLines.add(i)
      add(l, snippet.line + i)
      inImport = !/["'];?\s*$/.test(l)
    }
  })
  const missing = (names: ReadonlyArray<string>) => names.filter((n) => !imported.has(n) && !declared(n))
  const fromEffect = missing(effectNames)
  const fromCore = missing(core)
  const fromPrelude = missing(placeholders)
  if (fromEffect.length > 0) add(`import { ${fromEffect.join(", ")} } from "effect"`)
  if (fromCore.length > 0) add(`import { ${fromCore.join(", ")} } from "@breakwater/core"`)
  if (fromPrelude.length > 0) add(`import { ${fromPrelude.join(", ")} } from "./prelude.js"`)
  add("export {}")
  const wrap = lines.some((l, i) => !importLines.has(i) && /^[^\s].*\byield\*/.test(l))
  if (wrap) add("export const snippet = Effect.gen(function*() {")
  lines.forEach((l, i) => {
    if (!importLines.has(i)) add(l, snippet.line + i)
  })
  if (wrap) add("})")
  return { text: out.join("\n") + "\n", origin }
}

interface Diagnostic {
  readonly file: string
  readonly line: number
  readonly message: string
}

/** `tsc --noEmit -p dir`: its diagnostics (file relative to dir, line 1-based). */
const typeCheck = (dir: string): Promise<ReadonlyArray<Diagnostic>> =>
  new Promise((resolve, reject) => {
    const tsc = path.join(root, "node_modules/typescript/bin/tsc")
    execFile(process.execPath, [tsc, "--noEmit", "--pretty", "false", "-p", dir], {
      cwd: dir,
      maxBuffer: 16 * 1024 * 1024,
      timeout: 170_000
    }, (error, stdout) => {
      const diagnostics: Array<Diagnostic> = []
      for (const line of stdout.split("\n")) {
        const m = /^(.+?)\((\d+),(\d+)\): error (.*)$/.exec(line)
        if (m !== null) {
          diagnostics.push({ file: path.resolve(dir, m[1]!), line: Number(m[2]), message: m[4]! })
        } else if (line.startsWith(" ") && diagnostics.length > 0) {
          const last = diagnostics.pop()!
          diagnostics.push({ ...last, message: `${last.message}\n${line}` })
        } else if (line.trim() !== "") {
          diagnostics.push({ file: "", line: 0, message: line })
        }
      }
      if (error !== null && diagnostics.length === 0) reject(error)
      else resolve(diagnostics)
    })
  })

/** Compiles snippets in one tsc run; returns each one's errors as `label:line: message`. */
const checkSnippets = async (
  dir: string,
  snippets: ReadonlyArray<{ readonly label: string; readonly snippet: Snippet }>
): Promise<{ readonly perSnippet: ReadonlyArray<ReadonlyArray<string>>; readonly other: ReadonlyArray<string> }> => {
  fs.rmSync(dir, { recursive: true, force: true })
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(dir, "prelude.ts"), PRELUDE)
  const core = coreNames()
  const files = snippets.map(({ snippet }, i) => {
    const generated = generate(snippet, core)
    const file = path.join(dir, `snippet-${i}-line-${snippet.line}.ts`)
    fs.writeFileSync(file, generated.text)
    return { file, generated }
  })
  fs.writeFileSync(
    path.join(dir, "tsconfig.json"),
    JSON.stringify(
      {
        extends: path.join(root, "tsconfig.base.json"),
        compilerOptions: {
          composite: false,
          incremental: false,
          declaration: false,
          declarationMap: false,
          sourceMap: false,
          noEmit: true,
          noUnusedLocals: false,
          noUnusedParameters: false,
          resolveJsonModule: true
        },
        files: ["prelude.ts", ...files.map((f) => path.basename(f.file))]
      },
      null,
      2
    )
  )
  const diagnostics = await typeCheck(dir)
  const perSnippet: Array<Array<string>> = files.map(() => [])
  const other: Array<string> = []
  for (const d of diagnostics) {
    const i = files.findIndex((f) => f.file === d.file)
    if (i < 0) {
      other.push(d.file === "" ? d.message : `${path.relative(root, d.file)}:${d.line}: ${d.message}`)
      continue
    }
    const from = files[i]!.generated.origin[d.line - 1]
    const at = from === undefined
      ? `${snippets[i]!.label}:${snippets[i]!.snippet.line} (in the generated wrapper, line ${d.line})`
      : `${snippets[i]!.label}:${from}`
    perSnippet[i]!.push(`${at}: ${d.message}`)
  }
  return { perSnippet, other }
}

// ---------------------------------------------------------------------------

describe("extractSnippets", () => {
  it("finds ts blocks with the README line of their first line, and skip markers", () => {
    const md = [
      "# Title", //                        1
      "```sh", //                          2
      "```ts", //                          3  (inside a sh block: not a snippet)
      "```", //                            4
      "", //                               5
      "```ts", //                          6
      "const a = 1", //                    7
      "```", //                            8
      "<!-- snippet: skip needs a live Redis -->", // 9
      "", //                               10
      "```typescript", //                  11
      "const b = 2", //                    12
      "```" //                             13
    ].join("\n")
    expect(extractSnippets(md)).toEqual([
      { line: 7, code: "const a = 1", skip: undefined },
      { line: 12, code: "const b = 2", skip: "needs a live Redis" }
    ])
  })

  it("wraps a snippet with top-level yield* in Effect.gen and maps its lines back", () => {
    const g = generate({ line: 40, code: "import { Effect } from \"effect\"\nconst x = yield* Effect.succeed(1)", skip: undefined }, [
      "Retry"
    ])
    const lines = g.text.split("\n")
    expect(lines[0]).toBe("import { Effect } from \"effect\"")
    expect(g.origin[0]).toBe(40)
    expect(lines).toContain("export const snippet = Effect.gen(function*() {")
    const body = lines.indexOf("const x = yield* Effect.succeed(1)")
    expect(g.origin[body]).toBe(41)
    // Effect was imported by the snippet: not imported twice.
    expect(lines.filter((l) => /\bEffect\b.*from "effect"/.test(l))).toHaveLength(1)
    expect(lines).toContain("import { Retry } from \"@breakwater/core\"")
  })
})

describe("README snippets type-check", () => {
  const snippets = extractSnippets(fs.readFileSync(readmePath, "utf8"))
  const checked = snippets.filter((s) => s.skip === undefined)
  const skipped = snippets.filter((s) => s.skip !== undefined)
  // A canary with a known error, compiled in the same run: the check must see it, at its line.
  const canary: Snippet = { line: 1001, code: "const ok = 1\nconst n: number = \"not a number\"", skip: undefined }
  const dir = path.join(root, ".scratch", `readme-snippets-${process.pid}`)
  let result: Awaited<ReturnType<typeof checkSnippets>> | undefined

  beforeAll(async () => {
    result = await checkSnippets(dir, [
      ...checked.map((snippet) => ({ label: "README.md", snippet })),
      { label: "canary.md", snippet: canary }
    ])
  }, 180_000)
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it("the README has ts snippets, and few are skipped", () => {
    expect(checked.length).toBeGreaterThanOrEqual(7)
    for (const s of skipped) console.warn(`README.md:${s.line}: snippet skipped: ${s.skip}`)
    expect(skipped.length).toBeLessThanOrEqual(2)
  })

  it("the check catches an error and names its line", () => {
    const errors = result!.perSnippet[checked.length]!
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatch(/^canary\.md:1002: TS2322: Type 'string' is not assignable to type 'number'/)
  })

  it("nothing outside the snippets fails to compile", () => {
    expect(result!.other).toEqual([])
  })

  for (const [i, s] of checked.entries()) {
    it(`README.md:${s.line}`, () => {
      expect(result!.perSnippet[i]!.join("\n")).toBe("")
    })
  }
})
