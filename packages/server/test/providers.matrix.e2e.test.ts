/**
 * End-to-end (issue 14's acceptance), kind by kind: an upstream of each kind
 * (`openai`, `azure-openai`, `anthropic`, `gemini`) behind the real server on
 * 127.0.0.1, a fake speaking that kind's protocol over HTTP, and the official
 * `openai` SDK as the client. For each kind: chat, streams, tools (a call,
 * its follow-up with the result, a streamed call), a multi-part image
 * message, usage and cost, every error class and its failover to a second
 * healthy upstream; and what the fake received, field by field, against the
 * providers' published request shapes.
 */
import OpenAI from "openai"
import type { ChatCompletionChunk, ChatCompletionCreateParamsNonStreaming, ChatCompletionTool } from "openai/resources/chat/completions"
import { afterEach, describe, expect, it, vi } from "vitest"
import { captured, everything, freePort, recordingFetch, sdkFor, testBed, type TestServer, thrown } from "./helpers/e2e.js"

const GATEWAY_KEY = "gw-key-MATRIX-SECRET-1"
const ADMIN_KEY = "admin-key-MATRIX-SECRET-3"
const key = (name: string) => `sk-${name}-MATRIX-SECRET-2`

const { fake, serve } = testBed()

type Kind = "openai" | "azure-openai" | "anthropic" | "gemini"

interface KindCase {
  readonly kind: Kind
  /** The model its upstream serves. */
  readonly model: string
}

const KINDS: ReadonlyArray<KindCase> = [
  { kind: "openai", model: "gpt-4.1" },
  { kind: "azure-openai", model: "gpt-4o" },
  { kind: "anthropic", model: "claude-sonnet-4.5" },
  { kind: "gemini", model: "gemini-2.5-flash" }
]

const DEPLOYMENT = "gpt4o-prod"
const AZURE_API_VERSION = "2024-10-21"
/** Tokens the fakes report as read from the prompt cache (each kind in its own fields). */
const CACHED = 40
/** USD per million tokens, for the models the upstreams serve (a model that did not answer costs far more). */
const PRICE = { input: 2, output: 6, cachedInput: 0.5 }

/** The base URL of an upstream of `kind` at `root` (`http://127.0.0.1:port`). */
const baseUrl = (kind: Kind, root: string): string =>
  kind === "gemini" ? `${root}/v1beta` : kind === "azure-openai" ? root : `${root}/v1`

/** One upstream of the kind, as a YAML flow mapping. */
const upstreamYaml = (k: KindCase, name: string, url: string, extra = "") =>
  `  - { name: ${name}, kind: ${k.kind}, baseUrl: "${url}", apiKey: "${key(name)}", ${
    k.kind === "azure-openai"
      ? `deployments: { ${k.model}: ${DEPLOYMENT} }, apiVersion: "${AZURE_API_VERSION}"`
      : `models: [${k.model}]`
  }${extra} }`

const sdk = (server: TestServer, headers: Record<string, string> = {}) => sdkFor(server, GATEWAY_KEY, headers)

const admin = async (server: TestServer, path: string): Promise<any> => {
  const res = await recordingFetch(`${server.url}${path}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
  expect(res.status).toBe(200)
  return res.json()
}

const upstreamView = async (server: TestServer, name: string): Promise<Record<string, any>> => {
  const list = await admin(server, "/admin/upstreams") as { data: Array<Record<string, any>> }
  const view = list.data.find((u) => u["name"] === name)
  expect(view, name).toBeDefined()
  return view!
}

const PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
const IMAGE_URL = "https://images.example/cat.png"

const WEATHER: ChatCompletionTool = {
  type: "function",
  function: {
    name: "weather",
    description: "The weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
  }
}

/**
 * A server with the kind's upstream first (priority 1, its fake calling
 * tools when offered and reporting cache reads), an OpenAI-kind backup
 * serving the same model (priority 2), and an OpenAI-kind upstream that
 * refuses connections serving `legacy-<kind>`, which falls back to the
 * kind's model.
 */
const mainBed = async (k: KindCase) => {
  const primaryName = `${k.kind}-main`
  const primary = await fake(primaryName, {}, { protocol: k.kind, callTools: true, cachedTokens: CACHED })
  const backup = await fake(`${k.kind}-main-backup`)
  const dead = await freePort()
  const server = await serve(`
server: { adminKey: "${ADMIN_KEY}" }
keys:
  - { name: team, key: "${GATEWAY_KEY}", budgetUsd: 100 }
upstreams:
${upstreamYaml(k, primaryName, primary.url, ", priority: 1")}
  - { name: ${k.kind}-main-backup, baseUrl: "${backup.url}", apiKey: "${key("backup")}", models: [${k.model}], priority: 2 }
  - { name: ${k.kind}-main-dead, baseUrl: "http://127.0.0.1:${dead}/v1", apiKey: "${key("dead")}", models: [legacy-${k.kind}] }
routing:
  fallbacks: { legacy-${k.kind}: [${k.model}] }
pricing:
  models:
    ${k.model}: { input: ${PRICE.input}, output: ${PRICE.output}, cachedInput: ${PRICE.cachedInput} }
    legacy-${k.kind}: { input: 1000, output: 1000 }
cache: { enabled: false }
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
`)
  return { server, primary, backup, primaryName, client: sdk(server) }
}

/** The sum of `breakwater_cost_usd_total` over the series of `upstream`. */
const costMetric = async (server: TestServer, upstream: string): Promise<number> => {
  const text = await (await recordingFetch(`${server.url}/metrics`)).text()
  let sum = 0
  for (const line of text.split("\n")) {
    if (line.startsWith("breakwater_cost_usd_total{") && line.includes(`upstream="${upstream}"`)) sum += Number(line.split(" ").at(-1))
  }
  return sum
}

/** The chunks of a stream, as the SDK parses them. */
const collect = async (stream: AsyncIterable<ChatCompletionChunk>): Promise<Array<ChatCompletionChunk>> => {
  const chunks: Array<ChatCompletionChunk> = []
  for await (const chunk of stream) chunks.push(chunk)
  return chunks
}

/** A stream's raw SSE text through the gateway (to see how it ends). */
const rawStream = async (server: TestServer, body: unknown): Promise<{ status: number; text: string }> => {
  const res = await recordingFetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${GATEWAY_KEY}`, "content-type": "application/json" },
    body: JSON.stringify(body)
  })
  return { status: res.status, text: await res.text() }
}

describe.each(KINDS)("kind $kind ($model), through the gateway with the openai SDK", (k) => {
  // One bed for the tests of this kind that inject no faults, started by the first of them.
  let started: ReturnType<typeof mainBed> | undefined
  const main = () => (started ??= mainBed(k))

  it("chat: an answer in OpenAI's shape, the asked model in the body", async () => {
    const { backup, client, primaryName } = await main()
    const { data, response } = await client.chat.completions.create({
      model: k.model,
      messages: [{ role: "user", content: "hi" }]
    }).withResponse()
    expect(response.status).toBe(200)
    expect(response.headers.get("x-breakwater-upstream")).toBe(primaryName)
    expect(response.headers.get("x-breakwater-model")).toBe(k.model)
    expect(typeof data.id).toBe("string")
    expect(data.id).not.toBe("")
    expect(data.object).toBe("chat.completion")
    expect(Number.isInteger(data.created)).toBe(true)
    expect(data.model).toBe(k.model)
    expect(data.choices).toHaveLength(1)
    expect(data.choices[0]!.index).toBe(0)
    expect(data.choices[0]!.message).toMatchObject({ role: "assistant", content: `Hello from ${primaryName}` })
    expect(data.choices[0]!.finish_reason).toBe("stop")
    expect(backup.counters().chat).toBe(0)
  })

  it("stream: chunks the SDK parses, content concatenating, ending in [DONE]; a usage chunk when asked", async () => {
    const { client, primaryName, server } = await main()
    const plain = await collect(
      await client.chat.completions.create({ model: k.model, messages: [{ role: "user", content: "hi" }], stream: true })
    )
    expect(plain.length).toBeGreaterThanOrEqual(2)
    for (const c of plain) {
      expect(c.object).toBe("chat.completion.chunk")
      expect(c.model).toBe(k.model)
      expect(c.usage ?? undefined).toBeUndefined()
    }
    expect(plain.map((c) => c.choices[0]?.delta?.content ?? "").join("")).toBe(`Hello from ${primaryName}`)
    expect(plain[0]!.choices[0]!.delta.role).toBe("assistant")
    expect(plain.at(-1)!.choices[0]!.finish_reason).toBe("stop")
    expect(plain.slice(0, -1).every((c) => c.choices[0]!.finish_reason === null)).toBe(true)

    const withUsage = await collect(
      await client.chat.completions.create({
        model: k.model,
        messages: [{ role: "user", content: "hi" }],
        stream: true,
        stream_options: { include_usage: true }
      })
    )
    const last = withUsage.at(-1)!
    expect(last.choices).toEqual([])
    const prompt = Math.ceil("hi".length / 4) + CACHED
    const completion = Math.ceil(`Hello from ${primaryName}`.length / 4)
    expect(last.usage).toEqual({
      prompt_tokens: prompt,
      completion_tokens: completion,
      total_tokens: prompt + completion,
      prompt_tokens_details: { cached_tokens: CACHED }
    })
    expect(withUsage.slice(0, -1).every((c) => c.usage === null || c.usage === undefined)).toBe(true)

    const raw = await rawStream(server, { model: k.model, messages: [{ role: "user", content: "hi" }], stream: true })
    expect(raw.status).toBe(200)
    expect(raw.text.endsWith("data: [DONE]\n\n")).toBe(true)
    expect(raw.text.split("data: [DONE]").length).toBe(2)
  })

  it("tools: a tool call with id, name and JSON arguments; the follow-up with its result; a streamed tool call", async () => {
    const { client, primaryName } = await main()
    const ask: ChatCompletionCreateParamsNonStreaming = {
      model: k.model,
      messages: [{ role: "user", content: "Weather in Paris?" }],
      tools: [WEATHER]
    }
    const call = await client.chat.completions.create(ask)
    expect(call.choices[0]!.finish_reason).toBe("tool_calls")
    const message = call.choices[0]!.message
    expect(message.role).toBe("assistant")
    expect(message.tool_calls).toHaveLength(1)
    const toolCall = message.tool_calls![0]!
    expect(typeof toolCall.id).toBe("string")
    expect(toolCall.id).not.toBe("")
    expect(toolCall.type).toBe("function")
    if (toolCall.type !== "function") throw new Error("not a function call")
    expect(toolCall.function.name).toBe("weather")
    expect(JSON.parse(toolCall.function.arguments)).toEqual({})

    const followUp = await client.chat.completions.create({
      ...ask,
      messages: [...ask.messages, message, { role: "tool", tool_call_id: toolCall.id, content: "18C, sunny" }]
    })
    expect(followUp.choices[0]!.finish_reason).toBe("stop")
    expect(followUp.choices[0]!.message.content).toBe(`Hello from ${primaryName}`)

    // Streamed: the call's id and name first, then its arguments in deltas.
    const chunks = await collect(await client.chat.completions.create({ ...ask, stream: true }))
    const calls = new Map<number, { id: string; name: string; arguments: string }>()
    for (const c of chunks) {
      for (const d of c.choices[0]?.delta?.tool_calls ?? []) {
        const seen = calls.get(d.index) ?? { id: "", name: "", arguments: "" }
        calls.set(d.index, {
          id: seen.id + (d.id ?? ""),
          name: seen.name + (d.function?.name ?? ""),
          arguments: seen.arguments + (d.function?.arguments ?? "")
        })
      }
    }
    expect([...calls.keys()]).toEqual([0])
    const streamed = calls.get(0)!
    expect(streamed.id).not.toBe("")
    expect(streamed.name).toBe("weather")
    expect(JSON.parse(streamed.arguments)).toEqual({})
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe("tool_calls")
  })

  it("a multi-part user message: text, a base64 image and an https image URL", async () => {
    const { backup, client, primary, primaryName, server } = await main()
    const parts = [
      { type: "text" as const, text: "What is in these?" },
      { type: "image_url" as const, image_url: { url: `data:image/png;base64,${PNG}` } }
    ]
    const inline = await client.chat.completions.create({ model: k.model, messages: [{ role: "user", content: parts }] })
      .withResponse()
    expect(inline.response.headers.get("x-breakwater-upstream")).toBe(primaryName)
    expect(inline.data.choices[0]!.message.content).toBe(`Hello from ${primaryName}`)
    const sent = JSON.parse(primary.counters().lastBody!)
    switch (k.kind) {
      case "openai":
      case "azure-openai":
        expect(sent.messages).toEqual([{ role: "user", content: parts }])
        break
      case "anthropic":
        expect(sent.messages).toEqual([{
          role: "user",
          content: [
            { type: "text", text: "What is in these?" },
            { type: "image", source: { type: "base64", media_type: "image/png", data: PNG } }
          ]
        }])
        break
      case "gemini":
        expect(sent.contents).toEqual([{
          role: "user",
          parts: [{ text: "What is in these?" }, { inlineData: { mimeType: "image/png", data: PNG } }]
        }])
        break
    }

    const withUrl = [...parts, { type: "image_url" as const, image_url: { url: IMAGE_URL } }]
    const backupBefore = backup.counters().chat
    const url = await client.chat.completions.create({ model: k.model, messages: [{ role: "user", content: withUrl }] })
      .withResponse()
    expect(url.response.headers.get("x-breakwater-upstream")).toBe(primaryName)
    expect(backup.counters().chat).toBe(backupBefore)
    const received = JSON.parse(primary.counters().lastBody!)
    switch (k.kind) {
      case "openai":
      case "azure-openai":
        expect(received.messages[0].content[2]).toEqual({ type: "image_url", image_url: { url: IMAGE_URL } })
        break
      case "anthropic":
        expect(received.messages[0].content[2]).toEqual({ type: "image", source: { type: "url", url: IMAGE_URL } })
        break
      case "gemini": {
        expect(received.contents[0].parts[2]).toEqual({ fileData: { mimeType: "image/png", fileUri: IMAGE_URL } })
        // A URL whose type Gemini cannot be told: the backup, which takes any URL, answers instead...
        const typeless = [...parts, { type: "image_url" as const, image_url: { url: "https://images.example/render?id=7" } }]
        const moved = await client.chat.completions.create({ model: k.model, messages: [{ role: "user", content: typeless }] })
          .withResponse()
        expect(moved.response.headers.get("x-breakwater-upstream")).toBe(`${k.kind}-main-backup`)
        expect(backup.counters().chat).toBe(backupBefore + 1)
        // ...and pinned to the Gemini upstream, it is a 400 naming the part.
        const refused = await thrown(() =>
          sdk(server, { "x-breakwater-upstream": primaryName }).chat.completions.create({
            model: k.model,
            messages: [{ role: "user", content: typeless }]
          })
        )
        expect(refused.status).toBe(400)
        expect(refused.param).toBe("messages[0].content[2].image_url.url")
        expect(refused.message).toContain("cannot be sent to Gemini")
        break
      }
    }
  })

  it("usage and cost: the fake's token counts (cache reads included), priced by the model that answered", async () => {
    const { client, primaryName, server } = await main()
    const content = "Count these tokens, please: twelve words or so in all."
    const prompt = Math.ceil(content.length / 4) + CACHED
    const completion = Math.ceil(`Hello from ${primaryName}`.length / 4)
    const expectedUsage = {
      prompt_tokens: prompt,
      completion_tokens: completion,
      total_tokens: prompt + completion,
      prompt_tokens_details: { cached_tokens: CACHED }
    }
    const cost = ((prompt - CACHED) * PRICE.input + CACHED * PRICE.cachedInput + completion * PRICE.output) / 1_000_000
    const spentBefore = (await admin(server, "/admin/keys")).data[0].spentUsd as number
    const metricBefore = await costMetric(server, primaryName)

    // Asked for legacy-<kind>, whose only upstream refuses connections: the kind's model answers, and is what is charged.
    const { data, response } = await client.chat.completions.create({
      model: `legacy-${k.kind}`,
      messages: [{ role: "user", content }]
    }).withResponse()
    expect(response.headers.get("x-breakwater-model")).toBe(k.model)
    expect(response.headers.get("x-breakwater-upstream")).toBe(primaryName)
    expect(data.model).toBe(k.model)
    expect(data.usage).toEqual(expectedUsage)
    expect(Number(response.headers.get("x-breakwater-cost-usd"))).toBeCloseTo(cost, 8)

    // A stream that did not ask for usage is priced as well (the gateway asks the provider for it).
    const chunks = await collect(
      await client.chat.completions.create({ model: `legacy-${k.kind}`, messages: [{ role: "user", content }], stream: true })
    )
    expect(chunks.every((c) => c.usage === undefined || c.usage === null)).toBe(true)
    expect(chunks.at(-1)!.model).toBe(k.model)

    // The request log lines, the stream's written when it ended.
    const lines = () =>
      captured.logs.map((l) => {
        try {
          return JSON.parse(l) as Record<string, unknown>
        } catch {
          return undefined
        }
      }).filter((l) => l?.["model"] === `legacy-${k.kind}` && l?.["status"] === 200)
    await vi.waitFor(() => expect(lines().some((l) => l!["outcome"] === "completed")).toBe(true))
    const json = lines().filter((l) => l!["outcome"] === undefined).at(-1)
    const streamed = lines().filter((l) => l!["outcome"] === "completed").at(-1)
    for (const line of [json, streamed]) {
      expect(line).toMatchObject({ upstream: primaryName, servedModel: k.model })
      expect(line!["costUsd"]).toBeCloseTo(cost, 10)
    }
    expect(streamed!["usageEstimated"]).toBe(false)

    // The key's spend.
    const spentAfter = (await admin(server, "/admin/keys")).data[0].spentUsd as number
    expect(spentAfter - spentBefore).toBeCloseTo(2 * cost, 10)

    // The metrics: this upstream's cost counter went up by the same.
    expect(await costMetric(server, primaryName) - metricBefore).toBeCloseTo(2 * cost, 10)
  })
})

// ---------------------------------------------------------------------------
// Errors and failover

/**
 * A fresh server per case (cooldowns and breakers start clean): the kind's
 * upstream `p-<kind>-<case>` first, with 300 ms to answer, and an
 * OpenAI-kind backup for the same model.
 */
const faultBed = async (k: KindCase, name: string, primaryUrl: string) => {
  const backup = await fake(`${name}-backup`)
  opened.push(backup)
  const server = await serve(`
server: { adminKey: "${ADMIN_KEY}" }
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
${upstreamYaml(k, name, primaryUrl, ", priority: 1, timeout: 300ms")}
  - { name: ${name}-backup, baseUrl: "${backup.url}", apiKey: "${key("backup")}", models: [${k.model}], priority: 2 }
cache: { enabled: false }
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
`)
  opened.push(server)
  return { server, backup, client: sdk(server) }
}

/** What a fault test started, closed after it (the file's bed closes them again, harmlessly, at the end). */
const opened: Array<{ close: () => Promise<void> }> = []
afterEach(async () => {
  await Promise.all(opened.splice(0).map((x) => x.close()))
})

/** A fake closed after the test. */
const faultFake = async (...args: Parameters<typeof fake>) => {
  const f = await fake(...args)
  opened.push(f)
  return f
}

type Mode = "json" | "stream"

/** One request for the kind's model, as JSON or as a stream (read to its end). */
const ask = async (client: OpenAI, k: KindCase, mode: Mode) => {
  const messages = [{ role: "user" as const, content: "hi" }]
  if (mode === "json") {
    const { data, response } = await client.chat.completions.create({ model: k.model, messages }).withResponse()
    return { response, model: data.model, content: data.choices[0]!.message.content }
  }
  const { data, response } = await client.chat.completions.create({ model: k.model, messages, stream: true }).withResponse()
  const chunks = await collect(data)
  expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe("stop")
  return { response, model: chunks[0]!.model, content: chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("") }
}

/** The request fails over: the backup answers, on the second attempt. */
const failsOver = async (client: OpenAI, k: KindCase, name: string, mode: Mode) => {
  const started = performance.now()
  const { content, model, response } = await ask(client, k, mode)
  const ms = performance.now() - started
  expect(response.status).toBe(200)
  expect(response.headers.get("x-breakwater-upstream")).toBe(`${name}-backup`)
  expect(response.headers.get("x-breakwater-attempts")).toBe("2")
  expect(content).toBe(`Hello from ${name}-backup`)
  expect(model).toBe(k.model)
  return ms
}

/** What the kind's path for `mode` is, as the fake sees it. */
const pathOf = (k: KindCase, mode: Mode): string =>
  k.kind === "gemini"
    ? `/v1beta/models/${k.model}:${mode === "json" ? "generateContent" : "streamGenerateContent?alt=sse"}`
    : k.kind === "anthropic"
    ? "/v1/messages"
    : k.kind === "azure-openai"
    ? `/openai/deployments/${DEPLOYMENT}/chat/completions?api-version=${AZURE_API_VERSION}`
    : "/v1/chat/completions"

const SHORT: Record<Kind, string> = { "openai": "oai", "azure-openai": "az", "anthropic": "ant", "gemini": "gem" }

describe.each(KINDS)("kind $kind: each error class and its failover", (k) => {
  describe.each(["json", "stream"] as const)("%s", (mode) => {
    const id = (what: string | number) => `p-${SHORT[k.kind]}-${mode}-${what}`

    it("rate limit (429; Anthropic with retry-after and anthropic-ratelimit-*, Gemini RESOURCE_EXHAUSTED with RetryInfo): fails over, the upstream cools down for the wait it was given", async () => {
      const name = id(429)
      // Anthropic's 429s also carry anthropic-ratelimit-* headers (here: none left for 50 s); retry-after is the wait.
      const headers = k.kind === "anthropic"
        ? { rateLimitHeaders: { remainingRequests: 0, remainingTokens: 0, resetRequests: "50s", resetTokens: "50s" } }
        : {}
      const primary = await faultFake(name, { status: 429, retryAfter: "30", ...headers }, { protocol: k.kind })
      const { backup, client, server } = await faultBed(k, name, primary.url)
      const before = Date.now()
      await failsOver(client, k, name, mode)
      expect(primary.counters().chat).toBe(1)
      expect(primary.counters().byStatus[429]).toBe(1)
      expect(primary.counters().lastPath).toBe(pathOf(k, mode))
      const view = await upstreamView(server, name)
      expect(view["cooldownReason"]).toBe("rate-limited")
      const until = Date.parse(view["cooldownUntil"])
      expect(until - before).toBeGreaterThan(25_000)
      expect(until - before).toBeLessThanOrEqual(35_000)
      // Cooling down: the next request goes straight to the backup.
      const { response } = await ask(client, k, mode)
      expect(response.headers.get("x-breakwater-attempts")).toBe("1")
      expect(primary.counters().chat).toBe(1)
      expect(backup.counters().chat).toBe(2)
    })

    it("overloaded (Anthropic 529 overloaded_error, Gemini 503 UNAVAILABLE, OpenAI and Azure 503): fails over", async () => {
      const name = id("overloaded")
      const primary = await faultFake(name, { rate5xx: 1 }, { protocol: k.kind })
      const { backup, client, server } = await faultBed(k, name, primary.url)
      await failsOver(client, k, name, mode)
      expect(primary.counters().chat).toBe(1)
      expect(primary.counters().byStatus[k.kind === "anthropic" ? 529 : 503]).toBe(1)
      expect(backup.counters().chat).toBe(1)
      const view = await upstreamView(server, name)
      expect(view["cooldownReason"]).toBeNull()
      expect(view["failures"]).toBe(1)
    })

    it.each([401, 403])("auth (%i): fails over, and the upstream is out of rotation with an auth-failed cooldown", async (status) => {
      const name = id(status)
      const primary = await faultFake(name, { status }, { protocol: k.kind })
      const { backup, client, server } = await faultBed(k, name, primary.url)
      await failsOver(client, k, name, mode)
      expect(primary.counters().chat).toBe(1)
      expect(primary.counters().byStatus[status]).toBe(1)
      const view = await upstreamView(server, name)
      expect(view["cooldownReason"]).toBe("auth-failed")
      expect(Date.parse(view["cooldownUntil"]) - Date.now()).toBeGreaterThan(60_000)
      const { response } = await ask(client, k, mode)
      expect(response.headers.get("x-breakwater-attempts")).toBe("1")
      expect(primary.counters().chat).toBe(1)
      expect(backup.counters().chat).toBe(2)
    })

    it("the caller's 400: relayed as an OpenAI error body with status 400, no failover", async () => {
      const name = id(400)
      const primary = await faultFake(name, { status: 400 }, { protocol: k.kind })
      const { backup, client, server } = await faultBed(k, name, primary.url)
      const error = await thrown(() => ask(client, k, mode))
      expect(error.status).toBe(400)
      expect(error.headers?.get("x-breakwater-upstream")).toBe(name)
      expect(error.type).toBe("invalid_request_error")
      expect(Object.keys(error.error as object).sort()).toEqual(["code", "message", "param", "type"])
      expect(error.message).toContain("injected by the fake upstream")
      expect(primary.counters().chat).toBe(1)
      expect(backup.counters().chat).toBe(0)
      const view = await upstreamView(server, name)
      expect(view["cooldownReason"]).toBeNull()
    })

    it("timeout (the upstream would answer after 5 s, its timeout is 300 ms): fails over", async () => {
      const name = id("timeout")
      const primary = await faultFake(name, { latencyMs: 5_000 }, { protocol: k.kind })
      const { backup, client } = await faultBed(k, name, primary.url)
      const ms = await failsOver(client, k, name, mode)
      expect(ms).toBeGreaterThanOrEqual(250)
      expect(ms).toBeLessThan(4_000)
      expect(primary.counters().chat).toBe(1)
      expect(backup.counters().chat).toBe(1)
    })

    it("connection refused: fails over", async () => {
      const name = id("refused")
      const port = await freePort()
      const { backup, client, server } = await faultBed(k, name, baseUrl(k.kind, `http://127.0.0.1:${port}`))
      await failsOver(client, k, name, mode)
      expect(backup.counters().chat).toBe(1)
      expect((await upstreamView(server, name))["failures"]).toBe(1)
    })
  })
})

describe.each(KINDS)("kind $kind: overloaded inside a 200 stream", (k) => {
  it("the stream opens with the provider's error event (Anthropic: overloaded_error after message_start): fails over", async () => {
    const name = `p-${SHORT[k.kind]}-stream-error`
    const primary = await faultFake(name, { streamError: 1 }, { protocol: k.kind })
    const { backup, client, server } = await faultBed(k, name, primary.url)
    await failsOver(client, k, name, "stream")
    expect(primary.counters().chat).toBe(1)
    expect(backup.counters().chat).toBe(1)
    const view = await upstreamView(server, name)
    expect(view["failures"]).toBe(1)
    expect(view["lastError"]).toMatch(/overloaded|server_error|UNAVAILABLE/i)
  })
})

// Gemini sends no rate-limit headers on its answers: nothing to steer by.
describe.each(KINDS.filter((k) => k.kind !== "gemini"))("kind $kind: rate-limit headroom on a 200", (k) => {
  it("x-ratelimit-* (Anthropic: anthropic-ratelimit-*) with none left: the upstream is steered away from until the reset", async () => {
    const name = `p-${SHORT[k.kind]}-headroom`
    const primary = await faultFake(name, {
      rateLimitHeaders: { remainingRequests: 0, remainingTokens: 90_000, resetRequests: "20s", resetTokens: "1s" }
    }, { protocol: k.kind })
    const { backup, client, server } = await faultBed(k, name, primary.url)
    const before = Date.now()
    const first = await ask(client, k, "json")
    expect(first.response.headers.get("x-breakwater-upstream")).toBe(name)
    const view = await upstreamView(server, name)
    expect(view["cooldownReason"]).toBe("low-headroom")
    const until = Date.parse(view["cooldownUntil"])
    expect(until - before).toBeGreaterThan(15_000)
    expect(until - before).toBeLessThanOrEqual(25_000)
    const next = await ask(client, k, "stream")
    expect(next.response.headers.get("x-breakwater-upstream")).toBe(`${name}-backup`)
    expect(primary.counters().chat).toBe(1)
    expect(backup.counters().chat).toBe(1)
  })
})

// ---------------------------------------------------------------------------
// What each kind's upstream receives

/** One conversation with every translatable feature: system, images, an earlier tool call and its result, sampling. */
const CONVERSATION = (model: string) => ({
  model,
  messages: [
    { role: "system" as const, content: "You are terse." },
    {
      role: "user" as const,
      content: [
        { type: "text" as const, text: "Weather where this is?" },
        { type: "image_url" as const, image_url: { url: `data:image/png;base64,${PNG}` } },
        { type: "image_url" as const, image_url: { url: IMAGE_URL } }
      ]
    },
    {
      role: "assistant" as const,
      content: null,
      tool_calls: [{ id: "call_1", type: "function" as const, function: { name: "weather", arguments: "{\"city\":\"Paris\"}" } }]
    },
    { role: "tool" as const, tool_call_id: "call_1", content: "18C, sunny" }
  ],
  tools: [WEATHER],
  tool_choice: "required" as const,
  temperature: 0.5,
  top_p: 0.9,
  max_tokens: 300,
  stop: ["END"]
})

describe("request bodies, field by field, against the published shapes", () => {
  it("anthropic: POST /v1/messages, x-api-key and anthropic-version, the Messages API body", async () => {
    const k = KINDS[2]!
    const claude = await fake("shape-claude", {}, { protocol: "anthropic" })
    const server = await serve(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
${upstreamYaml(k, "shape-claude", claude.url)}
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
`)
    const client = sdk(server)
    await client.chat.completions.create(CONVERSATION(k.model))
    const seen = claude.counters()
    expect(seen.lastPath).toBe("/v1/messages")
    expect(seen.lastHeaders?.["x-api-key"]).toBe(key("shape-claude"))
    expect(seen.lastHeaders?.["anthropic-version"]).toBe("2023-06-01")
    expect(seen.lastHeaders?.["authorization"]).toBeUndefined()
    expect(seen.lastHeaders?.["content-type"]).toMatch(/^application\/json/)
    const expected = {
      model: "claude-sonnet-4.5",
      max_tokens: 300,
      system: "You are terse.",
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "Weather where this is?" },
            { type: "image", source: { type: "base64", media_type: "image/png", data: PNG } },
            { type: "image", source: { type: "url", url: IMAGE_URL } }
          ]
        },
        {
          role: "assistant",
          content: [{ type: "tool_use", id: "call_1", name: "weather", input: { city: "Paris" } }]
        },
        {
          role: "user",
          content: [{ type: "tool_result", tool_use_id: "call_1", content: "18C, sunny" }]
        }
      ],
      tools: [{
        name: "weather",
        description: "The weather in a city",
        input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
      }],
      tool_choice: { type: "any" },
      temperature: 0.5,
      top_p: 0.9,
      stop_sequences: ["END"]
    }
    expect(JSON.parse(seen.lastBody!)).toEqual(expected)

    // Streamed, the same body with `stream: true`.
    await collect(await client.chat.completions.create({ ...CONVERSATION(k.model), stream: true }))
    expect(JSON.parse(claude.counters().lastBody!)).toEqual({ ...expected, stream: true })
    // No max_tokens: the default; `max_completion_tokens` over it; a `tool_choice` naming a function, one call at a time; `user`; `stop` as a string.
    const { max_tokens: _, ...noMax } = CONVERSATION(k.model)
    await client.chat.completions.create({ ...noMax, tool_choice: { type: "function", function: { name: "weather" } } })
    expect(JSON.parse(claude.counters().lastBody!)).toEqual({
      ...expected,
      max_tokens: 4096,
      tool_choice: { type: "tool", name: "weather" }
    })
    await client.chat.completions.create({
      ...noMax,
      max_completion_tokens: 77,
      tool_choice: { type: "function", function: { name: "weather" } },
      parallel_tool_calls: false,
      user: "end-user-7",
      stop: "END"
    })
    expect(JSON.parse(claude.counters().lastBody!)).toEqual({
      ...expected,
      max_tokens: 77,
      tool_choice: { type: "tool", name: "weather", disable_parallel_tool_use: true },
      metadata: { user_id: "end-user-7" }
    })
  })

  it("gemini: generateContent and streamGenerateContent?alt=sse under /v1beta/models/{model}, x-goog-api-key, the generateContent body", async () => {
    const k = KINDS[3]!
    const gemini = await fake("shape-gemini", {}, { protocol: "gemini" })
    const server = await serve(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
${upstreamYaml(k, "shape-gemini", gemini.url)}
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
`)
    const client = sdk(server)
    await client.chat.completions.create({ ...CONVERSATION(k.model), response_format: { type: "json_object" } })
    const seen = gemini.counters()
    expect(seen.lastPath).toBe("/v1beta/models/gemini-2.5-flash:generateContent")
    expect(seen.lastHeaders?.["x-goog-api-key"]).toBe(key("shape-gemini"))
    expect(seen.lastHeaders?.["authorization"]).toBeUndefined()
    expect(seen.lastHeaders?.["content-type"]).toMatch(/^application\/json/)
    const expected = {
      contents: [
        {
          role: "user",
          parts: [
            { text: "Weather where this is?" },
            { inlineData: { mimeType: "image/png", data: PNG } },
            { fileData: { mimeType: "image/png", fileUri: IMAGE_URL } }
          ]
        },
        { role: "model", parts: [{ functionCall: { name: "weather", args: { city: "Paris" } } }] },
        { role: "user", parts: [{ functionResponse: { name: "weather", response: { content: "18C, sunny" } } }] }
      ],
      systemInstruction: { parts: [{ text: "You are terse." }] },
      tools: [{
        functionDeclarations: [{
          name: "weather",
          description: "The weather in a city",
          parametersJsonSchema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }
        }]
      }],
      toolConfig: { functionCallingConfig: { mode: "ANY" } },
      generationConfig: {
        temperature: 0.5,
        topP: 0.9,
        maxOutputTokens: 300,
        stopSequences: ["END"],
        responseMimeType: "application/json"
      }
    }
    expect(JSON.parse(seen.lastBody!)).toEqual(expected)

    // Streamed: the other method, alt=sse; the body is the same (no `stream` field in it).
    await collect(await client.chat.completions.create({ ...CONVERSATION(k.model), response_format: { type: "json_object" }, stream: true }))
    expect(gemini.counters().lastPath).toBe("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    expect(JSON.parse(gemini.counters().lastBody!)).toEqual(expected)
    // A function named in tool_choice: ANY, restricted to it.
    await client.chat.completions.create({ ...CONVERSATION(k.model), tool_choice: { type: "function", function: { name: "weather" } } })
    expect(JSON.parse(gemini.counters().lastBody!).toolConfig).toEqual({
      functionCallingConfig: { mode: "ANY", allowedFunctionNames: ["weather"] }
    })
    // The rest of generationConfig: candidates, seed, penalties, a JSON schema; a developer message is a system instruction too.
    const schema = { type: "object", properties: { answer: { type: "string" } }, required: ["answer"] }
    const conversation = CONVERSATION(k.model)
    await client.chat.completions.create({
      ...conversation,
      messages: [...conversation.messages.slice(0, 1), { role: "developer", content: "Use metric units." }, ...conversation.messages.slice(1)],
      tool_choice: "auto",
      n: 2,
      seed: 42,
      presence_penalty: 0.5,
      frequency_penalty: 0.25,
      stop: "END",
      response_format: { type: "json_schema", json_schema: { name: "reply", schema } }
    })
    expect(JSON.parse(gemini.counters().lastBody!)).toEqual({
      ...expected,
      systemInstruction: { parts: [{ text: "You are terse." }, { text: "Use metric units." }] },
      toolConfig: { functionCallingConfig: { mode: "AUTO" } },
      generationConfig: {
        temperature: 0.5,
        topP: 0.9,
        maxOutputTokens: 300,
        candidateCount: 2,
        seed: 42,
        presencePenalty: 0.5,
        frequencyPenalty: 0.25,
        stopSequences: ["END"],
        responseMimeType: "application/json",
        responseJsonSchema: schema
      }
    })
  })

  it("azure-openai: the deployment's URL with api-version, the key in api-key; the OpenAI body as sent", async () => {
    const k = KINDS[1]!
    const azure = await fake("shape-azure", {}, { protocol: "azure-openai" })
    const server = await serve(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
${upstreamYaml(k, "shape-azure", azure.url)}
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
`)
    const body = CONVERSATION(k.model)
    await sdk(server).chat.completions.create(body)
    const seen = azure.counters()
    expect(seen.lastPath).toBe(`/openai/deployments/${DEPLOYMENT}/chat/completions?api-version=${AZURE_API_VERSION}`)
    expect(seen.lastHeaders?.["api-key"]).toBe(key("shape-azure"))
    expect(seen.lastHeaders?.["authorization"]).toBeUndefined()
    expect(JSON.parse(seen.lastBody!)).toEqual(body)
  })

  it("openai: /v1/chat/completions with the bearer key; the body as sent", async () => {
    const k = KINDS[0]!
    const openai = await fake("shape-openai")
    const server = await serve(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
${upstreamYaml(k, "shape-openai", openai.url)}
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
`)
    const body = CONVERSATION(k.model)
    await sdk(server).chat.completions.create(body)
    const seen = openai.counters()
    expect(seen.lastPath).toBe("/v1/chat/completions")
    expect(seen.lastHeaders?.["authorization"]).toBe(`Bearer ${key("shape-openai")}`)
    expect(seen.lastHeaders?.["x-api-key"]).toBeUndefined()
    expect(JSON.parse(seen.lastBody!)).toEqual(body)
  })
})

describe("secrets", () => {
  it("no upstream or gateway key appears in any response or log line of this file", async () => {
    const seen = await everything()
    expect(seen.responses.length).toBeGreaterThan(0)
    expect(seen.responses).not.toMatch(/sk-[\w-]+-MATRIX-SECRET-2/)
    expect(seen.logs).not.toMatch(/sk-[\w-]+-MATRIX-SECRET-2/)
    expect(seen.logs).not.toContain(GATEWAY_KEY)
    expect(seen.responses).not.toContain(ADMIN_KEY)
  })
})
