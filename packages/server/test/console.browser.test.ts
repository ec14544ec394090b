/**
 * The operator console in a real headless Chromium (Debian's `chromium`
 * package, driven by `playwright-core`; nothing is downloaded at run time).
 * The gateway runs over fake upstreams on 127.0.0.1; the tests sign in and
 * assert what a person sees. Skipped, with the reason printed, when no
 * Chromium is installed (`.ci/run` installs it).
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { runCli } from "./helpers/process.js"
import { OUTAGE_SCENARIO } from "./helpers/scenarios.js"
import { fileURLToPath } from "node:url"
import { type Browser, chromium, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Demo from "../src/Demo.js"
import { testBed, type TestServer } from "./helpers/e2e.js"

const EXECUTABLE = process.env["BREAKWATER_CHROMIUM"] ?? "/usr/bin/chromium"
const available = existsSync(EXECUTABLE)
if (!available) {
  console.warn(`console.browser.test: skipped: no Chromium at ${EXECUTABLE} (apt-get install chromium, or set BREAKWATER_CHROMIUM)`)
}

const ADMIN_KEY = "admin-key-BROWSER-SECRET"
const GATEWAY_KEY = "gw-key-BROWSER-SECRET"

const { fake, serve } = testBed()
let browser: Browser | undefined

beforeAll(async () => {
  if (available) browser = await chromium.launch({ executablePath: EXECUTABLE, args: ["--no-sandbox", "--disable-gpu"] })
}, 30_000)
afterAll(async () => {
  await browser?.close()
})

const chat = (server: TestServer, key = GATEWAY_KEY, content = "hello") =>
  fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content }] })
  }).then((r) => r.status)

/** Errors the pages reported (script errors, and console errors such as a CSP violation). */
const pageErrors: Array<string> = []

/** A page on the console, confirmations accepted. */
const open = async (server: TestServer, width = 1280, height = 900): Promise<Page> => {
  const page = await browser!.newPage({ viewport: { width, height } })
  page.on("dialog", (d) => void d.accept())
  page.on("pageerror", (e) => pageErrors.push(String(e)))
  page.on("console", (m) => {
    // The refused sign-ins' own 401s are expected; anything else is not.
    if (m.type() === "error" && !/status of 401/.test(m.text())) pageErrors.push(m.text())
  })
  await page.goto(`${server.url}/console`)
  return page
}

const signIn = async (page: Page, key: string) => {
  await page.fill("#admin-key", key)
  await page.click("#signin-form button[type=submit]")
}

describe.skipIf(!available)("the operator console in Chromium", () => {
  it("a wrong admin key shows an error and no data", async () => {
    const a = await fake("alpha")
    const server = await serve(`
server: { adminKey: "${ADMIN_KEY}" }
upstreams:
  - { name: alpha, baseUrl: "${a.url}", apiKey: sk-alpha, models: [gpt-4.1] }
`)
    const page = await open(server)
    await signIn(page, "not-the-admin-key")
    await page.waitForSelector("#signin-error:not([hidden])", { timeout: 5_000 })
    expect(await page.textContent("#signin-error")).toContain("refused (401)")
    expect(await page.isHidden("#app")).toBe(true)
    expect(await page.locator(".card").count()).toBe(0)
    expect(await page.evaluate("sessionStorage.length")).toBe(0)
    // A gateway key is no admin key either.
    await signIn(page, GATEWAY_KEY)
    await page.waitForSelector("#signin-error:not([hidden])")
    expect(await page.locator(".card").count()).toBe(0)
    await page.close()
  }, 30_000)

  it("shows a failing upstream open within 2 s with its reason, Reset closes it, the tail shows the test's request, the charts draw", async () => {
    const a = await fake("alpha")
    const b = await fake("beta")
    const server = await serve(`
server: { adminKey: "${ADMIN_KEY}" }
keys:
  - { name: browser-test, key: "${GATEWAY_KEY}", budgetUsd: 5 }
upstreams:
  - { name: alpha, baseUrl: "${a.url}", apiKey: sk-alpha, models: [gpt-4.1], priority: 1 }
  - { name: beta, baseUrl: "${b.url}", apiKey: sk-beta, models: [gpt-4.1], priority: 2 }
breaker: { failureThreshold: 3, openDuration: 60s }
retry: { maxRetries: 0 }
healthCheck: { interval: 10m }
`)
    const page = await open(server)
    await signIn(page, ADMIN_KEY)
    await page.waitForSelector('.card[data-upstream="alpha"][data-state="healthy"]', { timeout: 5_000 })
    expect(await page.locator(".card").count()).toBe(2)

    // The tail shows a request this test sent.
    expect(await chat(server)).toBe(200)
    const row = page.locator("#tail tbody tr", { hasText: "browser-test" }).first()
    await row.waitFor({ timeout: 3_000 })
    expect(await row.textContent()).toMatch(/browser-test.*gpt-4\.1.*alpha.*200/)

    // alpha fails: its card turns "open", with the reason, within 2 s.
    a.setFaults({ status: 500 })
    for (let i = 0; i < 3; i++) expect(await chat(server)).toBe(200)
    const failedAt = Date.now()
    const alpha = page.locator('.card[data-upstream="alpha"]')
    await page.waitForSelector('.card[data-upstream="alpha"][data-state="open"]', { timeout: 2_000 })
    expect(Date.now() - failedAt).toBeLessThan(2_000)
    expect(await alpha.locator(".reason").textContent()).toMatch(/^open — 3 consecutive failures, probe in \d+s$/)

    // Reset (confirmed) closes it.
    a.setFaults({})
    await alpha.locator("button.reset").click()
    await page.waitForSelector('.card[data-upstream="alpha"][data-state="healthy"]', { timeout: 3_000 })
    expect(await alpha.locator(".reason").textContent()).toBe("healthy")

    // The charts have drawn points (the point being filled is drawn too).
    // (A string: the test is type-checked without the DOM's types.)
    await page.waitForFunction(`(() => {
      const svg = document.querySelector('svg[data-title="Requests/s by upstream"]')
      return svg !== null && Number(svg.getAttribute("data-points")) > 0 && svg.querySelector(".series") !== null
    })()`, undefined, { timeout: 3_000 })
    const latency = page.locator('svg[data-title="Latency (ms)"]')
    expect(Number(await latency.getAttribute("data-points"))).toBeGreaterThan(0)

    // Spend per key.
    const key = page.locator('#keys tr[data-key="browser-test"]')
    expect(await key.textContent()).toContain("$5.00")
    // No script error, no Content-Security-Policy violation.
    expect(pageErrors).toEqual([])
    await page.close()
  }, 30_000)

  it("under the chaos demo: the screenshot in docs/", async () => {
    // The demo's three upstreams (flaky with 429s, slow, steady), two keys, and an outage of 'slow'.
    const models = Demo.DEMO_MODELS
    const flaky = await fake("flaky", { rate429: 0.3, retryAfter: "2" }, { models })
    const slow = await fake("slow", { latencyMs: 250, jitterMs: 250 }, { models })
    const steady = await fake("steady", { latencyMs: 20 }, { models })
    const yaml = Demo.yaml({ flaky: flaky.url, slow: slow.url, steady: steady.url }, 0, "127.0.0.1")
      .replace("adminKey: demo-admin-key", `adminKey: "${ADMIN_KEY}"`) + `
keys:
  - { name: web-app, key: "${GATEWAY_KEY}", budgetUsd: 5, budgetPeriod: day }
  - { name: batch-jobs, key: "gw-batch-BROWSER-SECRET", requestsPerMinute: 40 }
`
    const server = await serve(yaml)
    let running = true
    const traffic = (async () => {
      let i = 0
      while (running) {
        const batch = []
        for (let j = 0; j < 6; j++) {
          i++
          batch.push(chat(server, i % 3 === 0 ? "gw-batch-BROWSER-SECRET" : GATEWAY_KEY, `question ${i % 300}`))
        }
        await Promise.all(batch)
        await new Promise((r) => setTimeout(r, 60))
      }
    })()
    const page = await open(server, 1360, 1560)
    await signIn(page, ADMIN_KEY)
    await page.waitForSelector(".card")
    await new Promise((r) => setTimeout(r, 6_000))
    // An outage of 'flaky' (which takes traffic first): its breaker opens.
    flaky.setFaults({ status: 503 })
    await new Promise((r) => setTimeout(r, 6_000))
    // Then 'slow' says to wait 30 s: it cools down, and 'steady' takes the traffic.
    slow.setFaults({ rate429: 1, retryAfter: "30" })
    await new Promise((r) => setTimeout(r, 5_000))
    await page.waitForSelector('.card[data-upstream="flaky"][data-state="open"]', { timeout: 5_000 })
    await page.waitForSelector('.card[data-upstream="slow"][data-state="cooling-down"]', { timeout: 5_000 })
    expect(await page.locator('.card[data-upstream="slow"] .reason').textContent()).toMatch(
      /^cooling down until \d\d:\d\d:\d\d — 429 Retry-After 30s$/
    )
    running = false
    await traffic
    // docs/console.png (the README's) is replaced only when asked, so that a test run leaves the tree clean.
    const update = process.env["BREAKWATER_UPDATE_SCREENSHOT"] === "1"
    const dir = update ? fileURLToPath(new URL("../../../docs/", import.meta.url)) : mkdtempSync(join(tmpdir(), "breakwater-shot-"))
    mkdirSync(dir, { recursive: true })
    await page.screenshot({ path: join(dir, "console.png") })
    expect(readFileSync(join(dir, "console.png")).subarray(1, 4).toString()).toBe("PNG")
    if (!update) rmSync(dir, { recursive: true, force: true })
    expect(await page.locator(".card").count()).toBe(3)
    expect(await page.locator("#tail tbody tr").count()).toBeGreaterThan(10)
    await page.close()
  }, 60_000)

  it("breakwater simulate --html: the report draws its charts offline, the outage shaded", async () => {
    const dir = mkdtempSync(join(tmpdir(), "breakwater-console-"))
    try {
      const scenario = join(dir, "outage.yaml")
      writeFileSync(scenario, OUTAGE_SCENARIO)
      const file = join(dir, "report.html")
      const out = await runCli(["simulate", scenario, "--html", file])
      expect(out.code, out.stderr).toBe(0)
      const page = await browser!.newPage()
      const requests: Array<string> = []
      page.on("request", (r) => requests.push(r.url()))
      const errors: Array<string> = []
      page.on("pageerror", (e) => errors.push(String(e)))
      await page.goto(`file://${file}`)
      await page.waitForSelector("svg.chart")
      expect(errors).toEqual([])
      expect(await page.locator("svg.chart").count()).toBe(3)
      const errorsChart = page.locator('svg[data-title="Client-visible error rate per minute"]')
      expect(Number(await errorsChart.getAttribute("data-points"))).toBe(10)
      expect(await errorsChart.locator("rect.shade").count()).toBe(1)
      expect(await errorsChart.textContent()).toContain("primary down")
      expect(await errorsChart.textContent()).toContain("Breakwater")
      expect(await page.locator("#upstreams tbody tr").count()).toBe(2)
      // Nothing but the file itself was loaded.
      expect(requests).toEqual([`file://${file}`])
      expect(readFileSync(file, "utf8").length).toBeGreaterThan(1000)
      await page.close()
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 40_000)
})
