/**
 * The operator console's page (`GET /console`): one HTML document with its
 * stylesheet and scripts inline, from the static files in
 * `packages/server/console/` (no build step, nothing from a CDN: it works
 * air-gapped). Its data comes from `GET /admin/events` and its buttons call
 * the admin API, both with the admin key the page holds in memory (and
 * `sessionStorage`); the page itself carries no data.
 *
 * The inline script and stylesheet are pinned by hash in the page's
 * Content-Security-Policy, which allows nothing else: no other script, no
 * connection but to this origin, no framing (the buttons cannot be
 * clickjacked).
 */
import { createHash } from "node:crypto"
import { existsSync, readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"

/**
 * Where the files are: `packages/server/console/` next to `src/` or
 * `dist/src/`, or `dist/bin/console/` in the bundle (scripts/bundle.js
 * copies them there).
 */
const directory = (): string | undefined => {
  for (const relative of ["../console/", "../../console/", "./console/"]) {
    const dir = fileURLToPath(new URL(relative, import.meta.url))
    if (existsSync(`${dir}index.html`)) return dir
  }
  return undefined
}

/** One of the console's static files, as text; undefined when the files are missing. */
export const asset = (name: "index.html" | "console.js" | "console.css" | "charts.js"): string | undefined => {
  const dir = directory()
  return dir === undefined ? undefined : readFileSync(`${dir}${name}`, "utf8")
}

export interface Page {
  readonly html: string
  readonly headers: Record<string, string>
}

const sha256 = (text: string) => `'sha256-${createHash("sha256").update(text, "utf8").digest("base64")}'`

let cached: Page | undefined

/** The page and its headers, built once; undefined when the files are missing (a broken install). */
export const page = (): Page | undefined => {
  if (cached !== undefined) return cached
  const html = asset("index.html")
  const css = asset("console.css")
  const charts = asset("charts.js")
  const js = asset("console.js")
  if (html === undefined || css === undefined || charts === undefined || js === undefined) return undefined
  const script = `\n${charts}\n${js}\n`
  const style = `\n${css}\n`
  cached = {
    html: html
      .replace("<!-- console.css -->", () => `<style>${style}</style>`)
      .replace("<!-- console.js -->", () => `<script>${script}</script>`),
    headers: {
      "content-type": "text/html; charset=utf-8",
      "cache-control": "no-store",
      "content-security-policy": [
        "default-src 'none'",
        `script-src ${sha256(script)}`,
        `style-src ${sha256(style)}`,
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'"
      ].join("; "),
      "x-frame-options": "DENY",
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer"
    }
  }
  return cached
}
