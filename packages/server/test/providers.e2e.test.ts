/**
 * End-to-end: upstreams of every kind behind the OpenAI surface, through the
 * real server on 127.0.0.1, fakes speaking each protocol over HTTP, and the
 * official `openai` SDK as the client: chat, streams, a tool call and its
 * follow-up, an image message, usage, failover from a dead OpenAI primary,
 * and a field a provider cannot take refused by name.
 */
import OpenAI, { BadRequestError } from "openai"
import { describe, expect, it } from "vitest"
import { everything, recordingFetch, testBed, type TestServer } from "./helpers/e2e.js"

const GATEWAY_KEY = "gw-key-PROVIDERS-SECRET-1"
const key = (name: string) => `sk-${name}-PROVIDERS-SECRET-2`

const { fake, serve } = testBed()

const sdk = (server: TestServer) =>
  new OpenAI({ baseURL: `${server.url}/v1`, apiKey: GATEWAY_KEY, maxRetries: 0, timeout: 10_000, fetch: recordingFetch })

const PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"

describe("providers, end to end with the openai SDK", () => {
  it("an OpenAI primary down fails over to Anthropic, Gemini and Azure upstreams; chat, stream, tools, images", async () => {
    const primary = await fake("primary", { status: 503 })
    const claude = await fake("claude", {}, { protocol: "anthropic", callTools: true })
    const gemini = await fake("gemini", {}, { protocol: "gemini" })
    const azure = await fake("azure", {}, { protocol: "azure-openai" })
    const server = await serve(`
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: primary, baseUrl: "${primary.url}", apiKey: "${key("primary")}", models: [gpt-4.1], priority: 1 }
  - { name: claude, kind: anthropic, baseUrl: "${claude.url}", apiKey: "${key("claude")}", models: [gpt-4.1], priority: 2 }
  - { name: gemini, kind: gemini, baseUrl: "${gemini.url}", apiKey: "${key("gemini")}", models: [gemini-2.5-flash] }
  - name: azure
    kind: azure-openai
    baseUrl: "${azure.url}"
    apiKey: "${key("azure")}"
    deployments: { gpt-4o: gpt4o-prod }
retry: { maxRetries: 0 }
healthCheck: { interval: 1h }
`)
    const client = sdk(server)

    // Chat: the primary is down, Anthropic answers, in OpenAI's shape.
    const { data: answer, response } = await client.chat.completions.create({
      model: "gpt-4.1",
      messages: [
        { role: "system", content: "Be terse." },
        {
          role: "user",
          content: [
            { type: "text", text: "What is this?" },
            { type: "image_url", image_url: { url: `data:image/png;base64,${PNG}` } }
          ]
        }
      ]
    }).withResponse()
    expect(response.headers.get("x-breakwater-upstream")).toBe("claude")
    expect(answer.choices[0]!.message.content).toBe("Hello from claude")
    expect(answer.usage).toMatchObject({ prompt_tokens: 6, completion_tokens: 5, total_tokens: 11 })
    expect(JSON.parse(claude.counters().lastBody!)).toEqual({
      model: "gpt-4.1",
      max_tokens: 4096,
      system: "Be terse.",
      messages: [{
        role: "user",
        content: [
          { type: "text", text: "What is this?" },
          { type: "image", source: { type: "base64", media_type: "image/png", data: PNG } }
        ]
      }]
    })
    expect(claude.counters().lastHeaders?.["x-api-key"]).toBe(key("claude"))
    expect(claude.counters().lastHeaders?.["authorization"]).toBeUndefined()

    // Tools: a tool call, then the follow-up with the tool result.
    const tools = [{ type: "function" as const, function: { name: "weather", parameters: { type: "object", properties: {} } } }]
    const call = await client.chat.completions.create({ model: "gpt-4.1", messages: [{ role: "user", content: "Weather?" }], tools })
    expect(call.choices[0]!.finish_reason).toBe("tool_calls")
    const toolCall = call.choices[0]!.message.tool_calls![0]!
    expect(toolCall.type === "function" && toolCall.function.name).toBe("weather")
    const followUp = await client.chat.completions.create({
      model: "gpt-4.1",
      tools,
      messages: [
        { role: "user", content: "Weather?" },
        call.choices[0]!.message,
        { role: "tool", tool_call_id: toolCall.id, content: "18C" }
      ]
    })
    expect(followUp.choices[0]!.message.content).toBe("Hello from claude")
    expect(JSON.parse(claude.counters().lastBody!).messages[2]).toEqual({
      role: "user",
      content: [{ type: "tool_result", tool_use_id: toolCall.id, content: "18C" }]
    })

    // Streams from Anthropic, with usage when asked.
    const stream = await client.chat.completions.create({
      model: "gpt-4.1",
      messages: [{ role: "user", content: "Stream, please" }],
      stream: true,
      stream_options: { include_usage: true }
    })
    let text = ""
    let usage: unknown
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? ""
      if (chunk.usage) usage = chunk.usage
    }
    expect(text).toBe("Hello from claude")
    expect(usage).toMatchObject({ completion_tokens: 5 })

    // Gemini, and Azure through its deployment URL.
    const g = await client.chat.completions.create({ model: "gemini-2.5-flash", messages: [{ role: "user", content: "hi" }] })
    expect(g.choices[0]!.message.content).toBe("Hello from gemini")
    expect(gemini.counters().lastHeaders?.["x-goog-api-key"]).toBe(key("gemini"))
    const a = await client.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }] })
    expect(a.choices[0]!.message.content).toBe("Hello from azure")
    expect(azure.counters().lastPath).toMatch(/^\/openai\/deployments\/gpt4o-prod\/chat\/completions\?api-version=/)
    expect(azure.counters().lastHeaders?.["api-key"]).toBe(key("azure"))

    // A field Anthropic cannot take: a 400 naming it.
    const refused = await client.chat.completions.create({
      model: "gpt-4.1",
      messages: [{ role: "user", content: "hi" }],
      logprobs: true
    }).then(() => undefined, (e: unknown) => e)
    expect(refused).toBeInstanceOf(BadRequestError)
    expect((refused as BadRequestError).param).toBe("logprobs")
    expect((refused as BadRequestError).message).toContain("'logprobs' cannot be sent to Anthropic")

    // No upstream key in any response or log line.
    const seen = await everything()
    for (const name of ["primary", "claude", "gemini", "azure"]) {
      expect(seen.responses).not.toContain(key(name))
      expect(seen.logs).not.toContain(key(name))
    }
  })
})
