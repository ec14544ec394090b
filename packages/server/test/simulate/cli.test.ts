/**
 * `breakwater simulate` as a process: the table, `--json` (the same report
 * as in-process), `--seed`, `--chart`, and a bad scenario.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import * as Render from "../../src/simulate/Render.js"
import * as Simulate from "../../src/simulate/Simulate.js"
import { runCli } from "../helpers/process.js"
import { parse, rateLimitedPrimary } from "./support.js"

const dir = mkdtempSync(join(tmpdir(), "breakwater-simulate-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const file = join(dir, "rate-limited.yaml")
writeFileSync(file, rateLimitedPrimary)

describe("breakwater simulate", () => {
  it("prints the table", { timeout: 30_000 }, async () => {
    const out = await runCli(["simulate", file])
    expect(out.code).toBe(0)
    expect(out.stdout).toBe(Render.text(Simulate.run(parse(rateLimitedPrimary, file))))
    expect(out.stdout).toMatch(/429 error rate\s+100\.00%\s+0\.00%/)
    expect(out.stdout).toMatch(/Upstream calls \/ request\s+1\.000\s+1\.100/)
    expect(out.stderr).toMatch(/simulated 1m \(60 requests\) in/)
  })

  it("--json --seed prints the report as JSON; --chart writes an SVG", { timeout: 30_000 }, async () => {
    const chart = join(dir, "chart.svg")
    const out = await runCli(["simulate", file, "--json", "--seed", "9", "--chart", chart])
    expect(out.code).toBe(0)
    const report = JSON.parse(out.stdout) as Simulate.Report
    expect(report.seed).toBe(9)
    expect(out.stdout).toBe(Render.json(Simulate.run(parse(rateLimitedPrimary, file), { seed: 9 })))
    const svg = readFileSync(chart, "utf8")
    expect(svg.startsWith("<svg xmlns=\"http://www.w3.org/2000/svg\"")).toBe(true)
    expect(svg.trimEnd().endsWith("</svg>")).toBe(true)
    expect(svg).toContain("Error rate per minute")
    expect((svg.match(/<path /g) ?? []).length).toBeGreaterThanOrEqual(4)
  })

  it("a bad scenario: its problems on stderr, exit 1", { timeout: 30_000 }, async () => {
    const bad = join(dir, "bad.yaml")
    writeFileSync(bad, rateLimitedPrimary.replace("duration: 60s", "duration: soon"))
    const out = await runCli(["simulate", bad])
    expect(out.code).toBe(1)
    expect(out.stdout).toBe("")
    expect(out.stderr).toContain(`duration: expected a positive duration like "30s", got "soon"`)
  })
})
