/**
 * The simulator's output: the reference article's table for both columns,
 * as text or JSON, and a small hand-written SVG chart per simulated minute.
 * Nothing here reads the wall clock, so the same report prints the same
 * bytes.
 */
import type { ColumnReport, MinuteReport, Report } from "./Simulate.js"

// ---------------------------------------------------------------------------
// Numbers

const grouped = (n: number, decimals = 0): string => {
  const fixed = Math.abs(n).toFixed(decimals)
  const [int, frac] = fixed.split(".")
  const withCommas = int!.replace(/\B(?=(\d{3})+(?!\d))/g, ",")
  return `${n < 0 ? "-" : ""}${withCommas}${frac === undefined ? "" : `.${frac}`}`
}

const percent = (share: number, decimals = 2): string => `${(share * 100).toFixed(decimals)}%`
const ms = (v: number | null): string => v === null ? "n/a" : `${grouped(v)} ms`
const usd = (v: number): string => `$${grouped(v, 2)}`

export const formatDuration = (millis: number): string => {
  if (millis % 3_600_000 === 0) return `${millis / 3_600_000}h`
  if (millis % 60_000 === 0) return `${millis / 60_000}m`
  if (millis % 1000 === 0) return `${millis / 1000}s`
  return `${millis}ms`
}

const pad = (s: string, width: number) => s + " ".repeat(Math.max(0, width - s.length))
const padLeft = (s: string, width: number) => " ".repeat(Math.max(0, width - s.length)) + s

const table = (rows: ReadonlyArray<ReadonlyArray<string>>, rightAligned: (column: number) => boolean): Array<string> => {
  const widths: Array<number> = []
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)))
  return rows.map((row) =>
    "  " + row.map((cell, i) => rightAligned(i) ? padLeft(cell, widths[i]!) : pad(cell, widths[i]!)).join("   ").trimEnd()
  )
}

const errorList = (c: ColumnReport): string => {
  const entries = Object.entries(c.errors)
  return entries.length === 0 ? "none" : entries.map(([status, n]) => `${status}: ${grouped(n)}`).join(", ")
}

// ---------------------------------------------------------------------------
// Text

export const text = (r: Report): string => {
  const d = r.direct
  const b = r.breakwater
  const lines: Array<string> = []
  lines.push(`Breakwater simulation: ${r.scenario} (seed ${r.seed})`)
  lines.push(
    `  ${formatDuration(r.durationMs)} simulated, ${grouped(r.requests)} requests (${r.offeredRps.toFixed(2)} req/s offered)`
  )
  lines.push("")
  lines.push(...table([
    ["Metric", d.label, b.label],
    ["429 error rate", percent(d.rate429), percent(b.rate429)],
    ["Latency p50", ms(d.p50Ms), ms(b.p50Ms)],
    ["Latency p99", ms(d.p99Ms), ms(b.p99Ms)],
    ["Availability", percent(d.availability), percent(b.availability)],
    ["Cost per day", usd(d.costPerDayUsd), usd(b.costPerDayUsd)],
    ["Cache hit rate", d.cacheHitRate === null ? "n/a" : percent(d.cacheHitRate), b.cacheHitRate === null ? "n/a" : percent(b.cacheHitRate)],
    ["Upstream calls / request", d.callsPerRequest.toFixed(3), b.callsPerRequest.toFixed(3)],
    ...(b.hedged === null ? [] : [[
      "Hedged calls",
      "n/a",
      `${grouped(b.hedged.calls)} (${percent(b.requests === 0 ? 0 : b.hedged.calls / b.requests)})`
    ]])
  ], (i) => i > 0))
  if (b.hedged !== null) {
    const aborted = b.upstreams.reduce((a, u) => a + u.aborted, 0)
    lines.push(
      `  Hedges: ${grouped(b.hedged.won)} won, ${grouped(b.hedged.lost)} lost, ${grouped(b.hedged.failed)} failed; ` +
        `${grouped(aborted)} calls aborted (billed in full: the worst case)`
    )
  }
  lines.push(`  Client-visible errors: direct ${errorList(d)}; Breakwater ${errorList(b)}`)
  lines.push("")
  lines.push("  Upstream traffic")
  const upstreamRow = (column: string, u: ColumnReport["upstreams"][number]) => [
    column,
    u.name,
    grouped(u.calls),
    percent(u.callShare, 1),
    grouped(u.served),
    grouped(u.rateLimited),
    grouped(u.quotaExceeded),
    grouped(u.serverErrors),
    grouped(u.hangs),
    grouped(u.outageAnswers),
    u.breakerTrips === null ? "-" : grouped(u.breakerTrips)
  ]
  lines.push(...table([
    ["", "upstream", "calls", "share", "served", "429", "quota 429", "5xx", "hangs", "in outage", "breaker trips"],
    ...d.upstreams.map((u) => upstreamRow("direct", u)),
    ...b.upstreams.map((u) => upstreamRow("Breakwater", u))
  ], (i) => i > 1).map((l) => `  ${l}`))
  lines.push("")
  lines.push("  Latency: successful requests, arrival to answer (waits, retries, failovers included).")
  lines.push(`  Direct: no retry, no cache, no failover; a hang is a timeout error after the client's timeout.`)
  lines.push(
    `  Cost per day: upstream bills for ${formatDuration(r.durationMs)} x ${(86_400_000 / r.durationMs).toFixed(2)}; ` +
      `health probes (${Object.entries(r.probes).map(([n, c]) => `${n} ${grouped(c)}`).join(", ")}) not counted as calls.`
  )
  for (const note of r.notes) lines.push(`  Note: ${note}`)
  return lines.join("\n") + "\n"
}

export const json = (r: Report): string => JSON.stringify(r, null, 2) + "\n"

// ---------------------------------------------------------------------------
// SVG

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
const num = (n: number) => (Math.round(n * 10) / 10).toString()

/** A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`. */
const niceMax = (max: number): number => {
  if (!(max > 0)) return 1
  const p = Math.pow(10, Math.floor(Math.log10(max)))
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p
  return 10 * p
}

interface Series {
  readonly label: string
  readonly color: string
  readonly dashed: boolean
  readonly values: ReadonlyArray<number | null>
}

const W = 860
const LEFT = 70
const RIGHT = 20
const PLOT_W = W - LEFT - RIGHT

const panel = (
  top: number,
  height: number,
  title: string,
  unit: (v: number) => string,
  series: ReadonlyArray<Series>,
  minutes: number
): Array<string> => {
  const out: Array<string> = []
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.filter((v): v is number => v !== null))))
  const x = (i: number) => LEFT + (minutes <= 1 ? PLOT_W / 2 : (i / (minutes - 1)) * PLOT_W)
  const y = (v: number) => top + height - (v / max) * height
  out.push(`<text x="${LEFT}" y="${top - 8}" class="title">${esc(title)}</text>`)
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4
    out.push(`<line x1="${LEFT}" x2="${W - RIGHT}" y1="${num(y(v))}" y2="${num(y(v))}" class="grid"/>`)
    out.push(`<text x="${LEFT - 6}" y="${num(y(v) + 4)}" class="tick" text-anchor="end">${esc(unit(v))}</text>`)
  }
  const step = Math.max(1, Math.ceil(minutes / 12))
  for (let i = 0; i < minutes; i += step) {
    out.push(`<text x="${num(x(i))}" y="${top + height + 16}" class="tick" text-anchor="middle">${i}</text>`)
  }
  for (const s of series) {
    // A minute without a value (no successful request) breaks the line.
    let path = ""
    let pen = false
    s.values.forEach((v, i) => {
      if (v === null) {
        pen = false
        return
      }
      path += `${pen ? "L" : "M"}${num(x(i))},${num(y(v))}`
      pen = true
    })
    if (path !== "") {
      out.push(
        `<path d="${path}" fill="none" stroke="${s.color}" stroke-width="1.6"${s.dashed ? ` stroke-dasharray="5,3"` : ""}/>`
      )
    }
  }
  return out
}

const values = (m: ReadonlyArray<MinuteReport>, f: (m: MinuteReport) => number | null) => m.map(f)

/** Latency p50/p99 and error rate per simulated minute, both columns. */
export const svg = (r: Report): string => {
  const d = r.direct.perMinute
  const b = r.breakwater.perMinute
  const minutes = Math.max(d.length, b.length)
  const DIRECT = "#c0392b"
  const BW = "#1f6fb2"
  const latency: Array<Series> = [
    { label: "direct p99", color: DIRECT, dashed: false, values: values(d, (m) => m.p99Ms) },
    { label: "direct p50", color: DIRECT, dashed: true, values: values(d, (m) => m.p50Ms) },
    { label: "Breakwater p99", color: BW, dashed: false, values: values(b, (m) => m.p99Ms) },
    { label: "Breakwater p50", color: BW, dashed: true, values: values(b, (m) => m.p50Ms) }
  ]
  const errors: Array<Series> = [
    { label: "direct errors", color: DIRECT, dashed: false, values: values(d, (m) => m.errorRate * 100) },
    { label: "Breakwater errors", color: BW, dashed: false, values: values(b, (m) => m.errorRate * 100) }
  ]
  const H = 560
  const out: Array<string> = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">`,
    `<style>.title{font-size:13px;font-weight:bold}.tick{font-size:10px;fill:#555}.grid{stroke:#e3e3e3}.legend{font-size:11px}</style>`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${LEFT}" y="22" font-size="15" font-weight="bold">${
      esc(`${r.scenario} (seed ${r.seed}, ${formatDuration(r.durationMs)} simulated, ${r.requests} requests)`)
    }</text>`,
    ...panel(60, 220, "Latency of successful requests per minute (ms)", (v) => String(Math.round(v)), latency, minutes),
    ...panel(340, 150, "Error rate per minute (%)", (v) => `${Number(v.toFixed(1))}`, errors, minutes),
    `<text x="${LEFT + PLOT_W / 2}" y="${H - 28}" class="tick" text-anchor="middle">simulated minute</text>`
  ]
  const legend = [...latency, errors[0]!, errors[1]!]
  legend.slice(0, 4).forEach((s, i) => {
    const lx = LEFT + i * 190
    const ly = H - 10
    out.push(
      `<line x1="${lx}" x2="${lx + 24}" y1="${ly - 4}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2"${
        s.dashed ? ` stroke-dasharray="5,3"` : ""
      }/>`,
      `<text x="${lx + 30}" y="${ly}" class="legend">${esc(s.label)}</text>`
    )
  })
  out.push("</svg>")
  return out.join("\n") + "\n"
}

// ---------------------------------------------------------------------------
// HTML (`--html`): the operator console's charts for a simulated run

/** An outage to shade on the charts: from and to in millis from the start. */
export interface Band {
  readonly from: number
  readonly to: number
  readonly label: string
}

/** A value inside a `<script>`: JSON that cannot close the element. */
const scriptJson = (v: unknown): string =>
  JSON.stringify(v).replace(/</g, "\\u003c").replace(/\u2028/g, "\\u2028").replace(/\u2029/g, "\\u2029")

/**
 * One self-contained HTML file: the text report, and per-minute charts
 * (direct vs Breakwater, outage windows shaded, every series labelled),
 * drawn by `chartsScript` (the console's charts.js, given by the caller so
 * that this module reads no file) from the report's data embedded in the
 * page. No request leaves the file when it is opened.
 */
export const html = (r: Report, chartsScript: string, outages: ReadonlyArray<Band>): string => {
  const data = {
    minutes: Math.max(r.direct.perMinute.length, r.breakwater.perMinute.length),
    direct: r.direct.perMinute,
    breakwater: r.breakwater.perMinute,
    outages,
    upstreams: r.breakwater.upstreams.map((u) => ({ name: u.name, direct: r.direct.upstreams.find((d) => d.name === u.name)?.calls ?? 0, breakwater: u.calls }))
  }
  const render = `
;(function () {
  "use strict"
  const C = window.BreakwaterCharts
  const D = ${scriptJson(data)}
  const xs = []
  for (let m = 0; m < D.minutes; m++) xs.push(m + 0.5)
  const at = (rows, f) => xs.map((_, i) => { const row = rows[i]; return row === undefined ? null : f(row) })
  const shade = D.outages.map((o) => [o.from / 60000, o.to / 60000, o.label])
  const minute = (x) => \`\${Math.floor(x)}m\`
  const DIRECT = "#c0392b", BW = "#1f6fb2"
  const specs = [
    { title: "Client-visible error rate per minute", yFormat: (v) => \`\${C.fmt(v * 100)}%\`, series: [
      { name: "direct", color: DIRECT, values: at(D.direct, (m) => m.errorRate) },
      { name: "Breakwater", color: BW, values: at(D.breakwater, (m) => m.errorRate) } ] },
    { title: "Latency of successful requests (ms)", series: [
      { name: "direct p99", color: DIRECT, values: at(D.direct, (m) => m.p99Ms) },
      { name: "direct p50", color: DIRECT, dashed: true, values: at(D.direct, (m) => m.p50Ms) },
      { name: "Breakwater p99", color: BW, values: at(D.breakwater, (m) => m.p99Ms) },
      { name: "Breakwater p50", color: BW, dashed: true, values: at(D.breakwater, (m) => m.p50Ms) } ] },
    { title: "Requests per minute", series: [
      { name: "direct", color: DIRECT, values: at(D.direct, (m) => m.requests) },
      { name: "Breakwater", color: BW, dashed: true, values: at(D.breakwater, (m) => m.requests) } ] }
  ]
  const box = document.getElementById("charts")
  for (const s of specs) {
    const div = document.createElement("div")
    div.className = "chart-box"
    div.innerHTML = C.chart({ ...s, xs, shade, xFormat: minute, width: 620, height: 250 })
    box.append(div)
  }
  const body = document.querySelector("#upstreams tbody")
  for (const u of D.upstreams) {
    const tr = document.createElement("tr")
    for (const v of [u.name, u.direct.toLocaleString(), u.breakwater.toLocaleString()]) {
      const td = document.createElement("td")
      td.textContent = String(v)
      tr.append(td)
    }
    body.append(tr)
  }
})()
`
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Breakwater simulation: ${esc(r.scenario)}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 20px; color: #1d2430; background: #f6f7f9; }
h1 { font-size: 18px; } pre { background: #fff; border: 1px solid #e4e7ec; padding: 10px; overflow-x: auto; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.chart-box { background: #fff; border: 1px solid #e4e7ec; border-radius: 6px; padding: 4px; }
.chart-box svg { display: block; width: 100%; height: auto; }
table { border-collapse: collapse; background: #fff; } td, th { border: 1px solid #e4e7ec; padding: 3px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
</style>
</head>
<body>
<h1>Breakwater simulation: ${esc(r.scenario)}</h1>
${r.description === undefined ? "" : `<p>${esc(r.description)}</p>`}
<p>${esc(`${formatDuration(r.durationMs)} simulated (seed ${r.seed}), ${r.requests} requests. Shaded: upstream outages.`)}</p>
<div id="charts" class="charts"></div>
<h2>Upstream calls</h2>
<table id="upstreams"><thead><tr><th>Upstream</th><th>direct</th><th>Breakwater</th></tr></thead><tbody></tbody></table>
<h2>Report</h2>
<pre>${esc(text(r))}</pre>
<script>
${chartsScript}
</script>
<script>${render}</script>
</body>
</html>
`
}
