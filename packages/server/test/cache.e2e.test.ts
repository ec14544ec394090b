/**
 * End-to-end: the response cache on a gateway shared by several teams, through
 * the real server on 127.0.0.1 and the official SDK. By default nothing cached
 * for one key is served to another, and sampled answers are not replayed.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { captureStdout, recordingFetch, startServer, type TestServer } from "./helpers/e2e.js"

const KEYS = { a: "gw-key-CACHE-A-SECRET-1", b: "gw-key-CACHE-B-SECRET-2" } as const

let upstream: FakeUpstream.FakeUpstream
let answered = 0
const servers: Array<TestServer> = []
let restoreStdout: (() => void) | undefined

const serve = async (cache: string) => {
  const server = await startServer(`
keys:
  - { name: team-a, key: "${KEYS.a}" }
  - { name: team-b, key: "${KEYS.b}" }
upstreams:
  - { name: only, baseUrl: "${upstream.url}", apiKey: "sk-upstream-CACHE-SECRET", models: [gpt-4.1] }
${cache}
`)
  servers.push(server)
  return server
}

beforeAll(async () => {
  restoreStdout = captureStdout()
  // Every answer is numbered, so a replayed answer is told from a fresh one.
  upstream = await FakeUpstream.start({ name: "only", reply: () => `answer #${++answered}` })
})

afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()))
  await upstream?.close()
  restoreStdout?.()
})

const sdk = (server: TestServer, key: string) =>
  new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key, maxRetries: 0, timeout: 10_000, fetch: recordingFetch })

const ask = async (server: TestServer, key: string, body: OpenAI.ChatCompletionCreateParamsNonStreaming) => {
  const { data, response } = await sdk(server, key).chat.completions.create(body).withResponse()
  return { content: data.choices[0]?.message.content, cache: response.headers.get("x-breakwater-cache") }
}

describe("default cache (mode deterministic, scope key)", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await serve("")
  })

  it("key B never gets key A's cached completion; each key hits its own", async () => {
    const body = { model: "gpt-4.1", temperature: 0, messages: [{ role: "user" as const, content: "the same question" }] }
    const a1 = await ask(server, KEYS.a, body)
    expect(a1.cache).toBe("miss")
    const b1 = await ask(server, KEYS.b, body)
    expect(b1.cache).toBe("miss")
    expect(b1.content).not.toBe(a1.content)
    expect(await ask(server, KEYS.a, body)).toEqual({ content: a1.content, cache: "hit" })
    expect(await ask(server, KEYS.b, body)).toEqual({ content: b1.content, cache: "hit" })
  })

  it("the same key, another user: not served the first user's answer", async () => {
    const body = (user: string) => ({
      model: "gpt-4.1",
      temperature: 0,
      user,
      messages: [{ role: "user" as const, content: "per user" }]
    })
    const alice = await ask(server, KEYS.a, body("alice"))
    const bob = await ask(server, KEYS.a, body("bob"))
    expect(bob.cache).toBe("miss")
    expect(bob.content).not.toBe(alice.content)
  })

  it("temperature 1.2 is not cached: each call is a fresh answer (bypass)", async () => {
    const body = { model: "gpt-4.1", temperature: 1.2, messages: [{ role: "user" as const, content: "be creative" }] }
    const first = await ask(server, KEYS.a, body)
    const second = await ask(server, KEYS.a, body)
    expect([first.cache, second.cache]).toEqual(["bypass", "bypass"])
    expect(second.content).not.toBe(first.content)
  })

  it("a seed makes a request cacheable", async () => {
    const body = { model: "gpt-4.1", seed: 7, temperature: 0.8, messages: [{ role: "user" as const, content: "seeded" }] }
    const first = await ask(server, KEYS.a, body)
    expect(first.cache).toBe("miss")
    expect(await ask(server, KEYS.a, body)).toEqual({ content: first.content, cache: "hit" })
  })
})

describe("cache.scope shared", () => {
  it("shares entries across keys (and still not across users)", async () => {
    const server = await serve("cache: { scope: shared }")
    const body = { model: "gpt-4.1", temperature: 0, messages: [{ role: "user" as const, content: "shared question" }] }
    const a = await ask(server, KEYS.a, body)
    expect(a.cache).toBe("miss")
    expect(await ask(server, KEYS.b, body)).toEqual({ content: a.content, cache: "hit" })
    const other = await ask(server, KEYS.b, { ...body, user: "carol" })
    expect(other.cache).toBe("miss")
  })
})

describe("cache.mode all", () => {
  it("caches sampled requests too, when an operator asks for it", async () => {
    const server = await serve("cache: { mode: all }")
    const body = { model: "gpt-4.1", temperature: 1.2, messages: [{ role: "user" as const, content: "cache anything" }] }
    const first = await ask(server, KEYS.a, body)
    expect(first.cache).toBe("miss")
    expect(await ask(server, KEYS.a, body)).toEqual({ content: first.content, cache: "hit" })
    expect((await ask(server, KEYS.b, body)).cache).toBe("miss")
  })
})
