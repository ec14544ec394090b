// Breakwater's charts: small hand-written SVG, shared by the operator console
// (GET /console) and `breakwater simulate --html`. No library, no canvas: a
// chart is a string of SVG, so the same code draws in the page and in the
// report, and a screenshot or a saved report shows exactly what was seen.
;(function (root) {
  "use strict"

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ESCAPES[c])

  const PALETTE = ["#1f6fb2", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085", "#d35400", "#7f8c8d"]

  /** A round upper bound for the y axis. */
  const niceMax = (max) => {
    if (!(max > 0)) return 1
    const p = Math.pow(10, Math.floor(Math.log10(max)))
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= max) return m * p
    return 10 * p
  }

  const fmt = (v) => {
    if (v === 0) return "0"
    const a = Math.abs(v)
    if (a >= 1000) return `${Math.round(v / 100) / 10}k`
    if (a >= 10) return String(Math.round(v))
    if (a >= 1) return String(Math.round(v * 10) / 10)
    return String(Number(v.toPrecision(2)))
  }

  const p2 = (n) => String(n).padStart(2, "0")
  const clock = (t) => {
    const d = new Date(t)
    return `${p2(d.getHours())}:${p2(d.getMinutes())}`
  }
  const clockSeconds = (t) => `${clock(t)}:${p2(new Date(t).getSeconds())}`

  /**
   * One chart, as an SVG string.
   * o.title; o.xs: x values (epoch millis, or any number with o.xFormat);
   * o.series: [{ name, values: (number|null)[], color?, dashed? }];
   * o.stacked: stack the series as areas; o.yFormat, o.xFormat: tick labels;
   * o.yMax: a fixed top (e.g. 1 for a rate); o.shade: [[x0, x1, label?]] bands (outages);
   * o.width, o.height.
   */
  function chart(o) {
    const W = o.width || 460
    const H = o.height || 210
    const L = 46
    const R = 12
    const T = 26
    const legendRows = Math.ceil(o.series.length / 3)
    const B = 22 + legendRows * 16
    const PW = W - L - R
    const PH = H - T - B
    const xs = o.xs
    const yFormat = o.yFormat || fmt
    const n = xs.length
    // Wall-clock ticks: with seconds when the span is short.
    const xFormat = o.xFormat || (n > 1 && xs[n - 1] - xs[0] < 10 * 60_000 ? clockSeconds : clock)
    const x0 = n === 0 ? 0 : xs[0]
    const x1 = n <= 1 ? x0 + 1 : xs[n - 1]
    const sx = (x) => L + (n <= 1 ? PW / 2 : ((x - x0) / (x1 - x0)) * PW)
    // Stacked: each series sits on the ones before it.
    const tops = []
    let max = 0
    for (let s = 0; s < o.series.length; s++) {
      const vals = o.series[s].values
      const top = []
      for (let i = 0; i < n; i++) {
        const v = vals[i]
        const base = o.stacked && s > 0 ? tops[s - 1][i] || 0 : 0
        const t = v === null || v === undefined || Number.isNaN(v) ? (o.stacked ? base : null) : (o.stacked ? base + v : v)
        top.push(t)
        if (t !== null && t > max) max = t
      }
      tops.push(top)
    }
    const yMax = o.yMax !== undefined ? o.yMax : niceMax(max)
    const sy = (v) => T + PH - (Math.min(v, yMax) / yMax) * PH
    const out = []
    let drawn = 0
    out.push(`<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="system-ui, sans-serif" data-title="${esc(o.title)}">`)
    out.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`)
    out.push(`<text x="${L}" y="16" font-size="13" font-weight="600" fill="#222">${esc(o.title)}</text>`)
    for (const band of o.shade || []) {
      const a = Math.max(L, sx(band[0]))
      const b = Math.min(L + PW, sx(band[1]))
      if (b > a) {
        out.push(`<rect class="shade" x="${a.toFixed(1)}" y="${T}" width="${(b - a).toFixed(1)}" height="${PH}" fill="#f5b7b1" fill-opacity="0.45"/>`)
        if (band[2]) out.push(`<text x="${(a + 3).toFixed(1)}" y="${T + 11}" font-size="9" fill="#922b21">${esc(band[2])}</text>`)
      }
    }
    // Four divisions when their labels are round (150, 0.25), else five (10, 0.3).
    const round = (d) => Number(d.toPrecision(2)) === d
    const divisions = round(yMax / 4) ? 4 : 5
    for (let k = 0; k <= divisions; k++) {
      const v = (yMax * k) / divisions
      const y = sy(v).toFixed(1)
      out.push(`<line x1="${L}" x2="${L + PW}" y1="${y}" y2="${y}" stroke="#e5e5e5"/>`)
      out.push(`<text x="${L - 5}" y="${(+y + 3).toFixed(1)}" font-size="10" fill="#666" text-anchor="end">${esc(yFormat(v))}</text>`)
    }
    const ticks = Math.min(5, Math.max(1, n))
    for (let k = 0; k < ticks; k++) {
      const i = ticks === 1 ? 0 : Math.round((k * (n - 1)) / (ticks - 1))
      if (n === 0) break
      const anchor = ticks > 1 && k === 0 ? "start" : ticks > 1 && k === ticks - 1 ? "end" : "middle"
      out.push(`<text x="${sx(xs[i]).toFixed(1)}" y="${T + PH + 13}" font-size="10" fill="#666" text-anchor="${anchor}">${esc(xFormat(xs[i]))}</text>`)
    }
    out.push(`<line x1="${L}" x2="${L + PW}" y1="${T + PH}" y2="${T + PH}" stroke="#999"/>`)
    o.series.forEach((s, si) => {
      const color = s.color || PALETTE[si % PALETTE.length]
      const top = tops[si]
      if (o.stacked) {
        const below = si > 0 ? tops[si - 1] : null
        const upper = []
        const lower = []
        for (let i = 0; i < n; i++) {
          upper.push(`${sx(xs[i]).toFixed(1)},${sy(top[i] || 0).toFixed(1)}`)
          lower.push(`${sx(xs[i]).toFixed(1)},${sy(below ? below[i] || 0 : 0).toFixed(1)}`)
          if (s.values[i] !== null && s.values[i] !== undefined) drawn++
        }
        if (n > 0) {
          out.push(`<polygon class="series" data-series="${esc(s.name)}" points="${upper.concat(lower.reverse()).join(" ")}" fill="${color}" fill-opacity="0.55" stroke="${color}" stroke-width="1"/>`)
        }
      } else {
        let run = []
        const flush = () => {
          if (run.length === 1) {
            const [x, y] = run[0].split(",")
            out.push(`<circle class="series" data-series="${esc(s.name)}" cx="${x}" cy="${y}" r="2" fill="${color}"/>`)
          } else if (run.length > 1) {
            out.push(`<polyline class="series" data-series="${esc(s.name)}" points="${run.join(" ")}" fill="none" stroke="${color}" stroke-width="1.8"${s.dashed ? ' stroke-dasharray="5,3"' : ""}/>`)
          }
          run = []
        }
        for (let i = 0; i < n; i++) {
          const v = top[i]
          if (v === null) {
            flush()
            continue
          }
          run.push(`${sx(xs[i]).toFixed(1)},${sy(v).toFixed(1)}`)
          drawn++
        }
        flush()
      }
    })
    o.series.forEach((s, si) => {
      const color = s.color || PALETTE[si % PALETTE.length]
      const lx = L + (si % 3) * Math.floor(PW / 3)
      const ly = H - B + 30 + Math.floor(si / 3) * 16
      out.push(`<line x1="${lx}" x2="${lx + 16}" y1="${ly - 4}" y2="${ly - 4}" stroke="${color}" stroke-width="${o.stacked ? 8 : 2}"${s.dashed ? ' stroke-dasharray="5,3"' : ""}/>`)
      out.push(`<text x="${lx + 21}" y="${ly}" font-size="10.5" fill="#333">${esc(s.name)}</text>`)
    })
    if (n === 0) out.push(`<text x="${L + PW / 2}" y="${T + PH / 2}" font-size="11" fill="#999" text-anchor="middle">no data yet</text>`)
    out.push("</svg>")
    return out.join("").replace("<svg ", `<svg data-points="${drawn}" `)
  }

  root.BreakwaterCharts = { chart, esc, fmt, clock, clockSeconds, PALETTE }
})(typeof window !== "undefined" ? window : globalThis)
