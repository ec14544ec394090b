/**
 * End-to-end (issue 14): model fallbacks, per-request control headers and a
 * field one kind cannot take, through the real server on 127.0.0.1, fakes
 * speaking each protocol over HTTP, and the official `openai` SDK; and the
 * chaos run: an OpenAI-kind primary that refuses connections, an
 * Anthropic-kind fallback with 10% 529s, 1,000 requests.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import OpenAI from "openai"
import { describe, expect, it } from "vitest"
import * as Demo from "../src/Demo.js"
import * as Server from "../src/Server.js"
import { captured, freePort, openAIError, recordingFetch, sdkFor, testBed, type TestServer, thrown } from "./helpers/e2e.js"

const GATEWAY_KEY = "gw-key-FALLBACKS-SECRET-1"
const key = (name: string) => `sk-${name}-FALLBACKS-SECRET-2`

const { fake, serve } = testBed()

const sdk = (server: TestServer, headers: Record<string, string> = {}) => sdkFor(server, GATEWAY_KEY, headers)

const hi = (model = "gpt-4.1") => ({ model, messages: [{ role: "user" as const, content: "hi" }] })

/** A server: an OpenAI-kind primary for gpt-4.1, an Anthropic-kind claude, gpt-4.1 falling back to claude. */
const bed = async (primaryUrl: string, claudeUrl: string, extra = "") =>
  serve(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: primary, baseUrl: "${primaryUrl}", apiKey: "${key("primary")}", models: [gpt-4.1], priority: 1, timeout: 5s }
  - { name: claude, kind: anthropic, baseUrl: "${claudeUrl}", apiKey: "${key("claude")}", models: [claude-sonnet-4.5], priority: 2 }
routing:
  maxAttempts: 3
  fallbacks: { gpt-4.1: [claude-sonnet-4.5] }
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
${extra}
`)

describe("model fallbacks, end to end", () => {
  it("gpt-4.1's upstream is down: claude-sonnet-4.5 answers, in the body, x-breakwater-model, the log line and the metrics", async () => {
    const primary = await fake("primary", { status: 503 })
    const claude = await fake("claude", {}, { protocol: "anthropic" })
    const server = await bed(primary.url, claude.url)
    const client = sdk(server)

    const { data, response } = await client.chat.completions.create(hi()).withResponse()
    expect(data.choices[0]!.message.content).toBe("Hello from claude")
    expect(data.model).toBe("claude-sonnet-4.5")
    expect(response.headers.get("x-breakwater-model")).toBe("claude-sonnet-4.5")
    expect(response.headers.get("x-breakwater-upstream")).toBe("claude")
    expect(response.headers.get("x-breakwater-attempts")).toBe("2")
    expect(JSON.parse(claude.counters().lastBody!).model).toBe("claude-sonnet-4.5")
    // Priced as claude-sonnet-4.5 ($3 / $15 per million), not as gpt-4.1 ($2 / $8).
    const usage = data.usage!
    expect(Number(response.headers.get("x-breakwater-cost-usd")))
      .toBeCloseTo((usage.prompt_tokens * 3 + usage.completion_tokens * 15) / 1_000_000, 10)

    // A stream falls back until its first event.
    const { data: stream, response: streamed } = await client.chat.completions.create({ ...hi(), stream: true }).withResponse()
    let text = ""
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? ""
    expect(text).toBe("Hello from claude")
    expect(streamed.headers.get("x-breakwater-model")).toBe("claude-sonnet-4.5")

    // The asked model still names itself when it answers.
    const direct = await client.chat.completions.create(hi("claude-sonnet-4.5")).withResponse()
    expect(direct.response.headers.get("x-breakwater-model")).toBe("claude-sonnet-4.5")

    const lines = captured.logs.filter((l) => l.includes("\"servedModel\":\"claude-sonnet-4.5\""))
    expect(lines.length).toBeGreaterThanOrEqual(2)
    expect(JSON.parse(lines[0]!)).toMatchObject({ model: "gpt-4.1", upstream: "claude", servedModel: "claude-sonnet-4.5", status: 200 })
    const metrics = await (await recordingFetch(`${server.url}/metrics`)).text()
    expect(metrics).toMatch(/breakwater_fallbacks_total\{[^}]*model="gpt-4\.1"[^}]*\} 2/)
    expect(metrics).toMatch(/breakwater_fallbacks_total\{[^}]*fallback="claude-sonnet-4\.5"/)
  })

  it("control headers narrow the policy; invalid or widening values are a 400 naming the header", async () => {
    const primary = await fake("primary", { status: 503 })
    const claude = await fake("claude", {}, { protocol: "anthropic" })
    const server = await bed(primary.url, claude.url)

    // `none`: no fallback, so the primary's failure is the answer.
    const none = await thrown(() => sdk(server, { "x-breakwater-fallbacks": "none" }).chat.completions.create(hi()))
    expect(none.status).toBe(502)
    // The fallback named: allowed.
    const named = await sdk(server, { "x-breakwater-fallbacks": "claude-sonnet-4.5" }).chat.completions.create(hi())
    expect(named.model).toBe("claude-sonnet-4.5")
    // One attempt: the primary's, no fallback.
    const one = await thrown(() => sdk(server, { "x-breakwater-max-attempts": "1" }).chat.completions.create(hi()))
    expect(one.status).toBe(502)
    // Pinned to the primary: no fallback to claude.
    const pinned = await thrown(() => sdk(server, { "x-breakwater-upstream": "primary" }).chat.completions.create(hi()))
    expect(pinned.status).toBe(502)
    expect(pinned.headers?.get("x-breakwater-upstream")).toBe("primary")
    const shorter = await sdk(server, { "x-breakwater-timeout": "10s" }).chat.completions.create(hi())
    expect(shorter.model).toBe("claude-sonnet-4.5")

    const cases: Array<readonly [string, string, string]> = [
      ["x-breakwater-fallbacks", "gemini-2.5-flash", "not a configured fallback of 'gpt-4.1'"],
      ["x-breakwater-fallbacks", "claude-sonnet-4.5,,", "comma-separated"],
      ["x-breakwater-timeout", "soon", "positive duration"],
      ["x-breakwater-timeout", "2m", "may only shorten"],
      ["x-breakwater-max-attempts", "0", "at least 1"],
      ["x-breakwater-max-attempts", "4", "may only lower"],
      ["x-breakwater-upstream", "nobody", "no upstream named"],
      ["x-breakwater-upstream", "claude", "does not serve 'gpt-4.1'"]
    ]
    for (const [header, value, says] of cases) {
      const res = await recordingFetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${GATEWAY_KEY}`, "content-type": "application/json", [header]: value },
        body: JSON.stringify(hi())
      })
      expect(res.status, `${header}: ${value}`).toBe(400)
      const error = openAIError(await res.text())
      expect(error.param).toBe(header)
      expect(error.type).toBe("invalid_request_error")
      expect(error.message).toContain(says)
    }
  })

  it("logprobs: the Anthropic upstream cannot take it, so the OpenAI one answers; with none that can, a 400 naming it", async () => {
    const openai = await fake("openai")
    const claude = await fake("claude", {}, { protocol: "anthropic" })
    const server = await serve(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: claude, kind: anthropic, baseUrl: "${claude.url}", apiKey: "${key("claude")}", models: [gpt-4.1, claude-sonnet-4.5], priority: 1 }
  - { name: openai, baseUrl: "${openai.url}", apiKey: "${key("openai")}", models: [gpt-4.1], priority: 2 }
routing: { maxAttempts: 1 }
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
`)
    const client = sdk(server)
    const { data, response } = await client.chat.completions.create({ ...hi(), logprobs: true }).withResponse()
    expect(response.headers.get("x-breakwater-upstream")).toBe("openai")
    expect(data.choices[0]!.message.content).toBeTruthy()
    expect(claude.counters().chat).toBe(0)
    const refused = await thrown(() => client.chat.completions.create({ ...hi("claude-sonnet-4.5"), logprobs: true }))
    expect(refused.status).toBe(400)
    expect(refused.param).toBe("logprobs")
    expect(refused.message).toContain("'logprobs' cannot be sent to Anthropic")
  })
})

describe("the demo", () => {
  it("npm start's demo: gpt-5's OpenAI-protocol upstream is down, claude-sonnet-4.5 on the Anthropic fake answers", async () => {
    const scope = Effect.runSync(Scope.make())
    try {
      const demo = await Effect.runPromise(Demo.make({ port: 0, host: "127.0.0.1" }).pipe(Scope.extend(scope)))
      const running = await Effect.runPromise(Server.serve(demo.config).pipe(Scope.extend(scope)))
      const client = new OpenAI({ baseURL: `${running.url}/v1`, apiKey: "demo", maxRetries: 0, fetch: recordingFetch })
      for (let i = 0; i < 8; i++) {
        const { data, response } = await client.chat.completions.create(hi(Demo.OUTAGE_MODEL)).withResponse()
        expect(response.headers.get("x-breakwater-model")).toBe(Demo.FALLBACK_MODEL)
        expect(response.headers.get("x-breakwater-upstream")).toBe("claude")
        expect(data.model).toBe(Demo.FALLBACK_MODEL)
        expect(data.choices[0]!.message.content).toBe("Hello from claude")
      }
      // The outage's breaker opened after its failures: later requests go straight to the fallback.
      const outage = demo.upstreams.find((u) => u.name === "outage")!
      expect(outage.counters().chat).toBe(5)
      // gpt-4.1 is still answered by the OpenAI fakes.
      const { response } = await client.chat.completions.create(hi("gpt-4.1")).withResponse()
      expect(response.headers.get("x-breakwater-model")).toBe("gpt-4.1")
      expect(["flaky", "slow", "steady"]).toContain(response.headers.get("x-breakwater-upstream"))
      await Server.drain(running, "200 millis")
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  }, 15_000)
})

describe("chaos: an OpenAI-kind primary refusing connections, an Anthropic-kind fallback with 10% 529s", () => {
  it("1,000 requests for gpt-4.1 at concurrency 20: < 0.1% client errors, every answer valid for the SDK and from claude-sonnet-4.5", async () => {
    const deadPort = await freePort() // nothing listens there: connection refused
    const claude = await fake("claude", { rate5xx: 0.1 }, { protocol: "anthropic" })
    // More attempts than the defaults, so that three 529s in a row (1 in 1,000) do not reach the caller.
    const chaos = await serve(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: primary, baseUrl: "http://127.0.0.1:${deadPort}/v1", apiKey: "${key("primary")}", models: [gpt-4.1], timeout: 5s }
  - name: claude
    kind: anthropic
    baseUrl: "${claude.url}"
    apiKey: "${key("claude")}"
    models: [claude-sonnet-4.5]
    retry: { maxRetries: 3, baseDelay: 5ms, maxDelay: 20ms }
    breaker: { failureThreshold: 10 }
routing:
  maxAttempts: 8
  fallbacks: { gpt-4.1: [claude-sonnet-4.5] }
retry: { maxRetries: 3, baseDelay: 5ms, maxDelay: 20ms }
healthCheck: { interval: 1h }
`)
    const client = new OpenAI({ baseURL: `${chaos.url}/v1`, apiKey: GATEWAY_KEY, maxRetries: 0, timeout: 10_000 })
    const total = 1_000
    const started = performance.now()
    let next = 0
    let errors = 0
    const problems: Array<string> = []
    const worker = async () => {
      while (next < total) {
        next++
        try {
          const { data, response } = await client.chat.completions.create(hi()).withResponse()
          const content = data.choices[0]?.message?.content
          if (typeof content !== "string" || content === "") problems.push(`no content: ${JSON.stringify(data)}`)
          if (data.model !== "claude-sonnet-4.5") problems.push(`model ${data.model}`)
          if (response.headers.get("x-breakwater-model") !== "claude-sonnet-4.5") {
            problems.push(`x-breakwater-model ${response.headers.get("x-breakwater-model")}`)
          }
        } catch (e) {
          errors++
          problems.push(e instanceof Error ? e.message : String(e))
        }
      }
    }
    await Promise.all(Array.from({ length: 20 }, worker))
    const seconds = (performance.now() - started) / 1000
    console.log(
      `fallback chaos: ${total} requests in ${seconds.toFixed(1)} s, ${errors} client errors, ` +
        `claude saw ${claude.counters().chat} calls (${((claude.counters().chat / total - 1) * 100).toFixed(1)}% extra)`
    )
    expect(errors / total).toBeLessThan(0.001)
    expect(problems).toEqual([])
    expect(seconds).toBeLessThan(60)
  }, 60_000)
})
