/**
 * The config's provider fields (issue 14): `upstreams[].kind`, `auth`,
 * `headers`, `deployments`, `apiVersion`, and `routing.fallbacks`, with
 * check-config's messages for unknown kinds, missing deployments, a
 * fallback to a model no upstream serves, and a fallback cycle.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Config from "../src/Config.js"

const parse = (text: string, env: Record<string, string> = {}) => Config.parse(text, { file: "breakwater.yaml", env })

const ok = (text: string, env: Record<string, string> = {}) => {
  const r = parse(text, env)
  if (Either.isLeft(r)) throw new Error(`expected a config, got: ${r.left.message}`)
  return r.right
}

const problems = (text: string, env: Record<string, string> = {}) => {
  const r = parse(text, env)
  if (Either.isRight(r)) throw new Error("expected ConfigInvalid, got a config")
  if (r.left._tag !== "ConfigInvalid") throw new Error(r.left.message)
  return r.left.problems
}

const ALL_KINDS = `
upstreams:
  - name: openai
    baseUrl: https://api.openai.com/v1
    apiKey: sk-openai-0123456789
    models: [gpt-4.1]
    headers: { OpenAI-Organization: "\${ORG}" }
  - name: azure
    kind: azure-openai
    baseUrl: https://my-resource.openai.azure.com
    apiKey: azure-key-0123456789
    deployments: { gpt-4.1: my-gpt41, text-embedding-3-small: emb }
    apiVersion: 2025-01-01-preview
  - name: claude
    kind: anthropic
    baseUrl: https://api.anthropic.com/v1
    apiKey: sk-ant-0123456789
    models: [claude-sonnet-4.5]
    aliases: { claude-latest: claude-sonnet-4.5 }
    apiVersion: "2023-06-01"
  - name: gemini
    kind: gemini
    baseUrl: https://generativelanguage.googleapis.com/v1beta
    apiKey: AIza-0123456789
    models: [gemini-2.5-flash]
  - name: local
    baseUrl: http://127.0.0.1:11434/v1
    auth: none
    models: [llama]
routing:
  fallbacks:
    gpt-4.1: [claude-sonnet-4.5, gemini-2.5-flash]
    claude-latest: [gemini-2.5-flash]
`

describe("Config: upstream kinds", () => {
  it("defaults: kind openai, bearer auth, no headers, no fallbacks", () => {
    const config = ok("upstreams:\n  - { name: a, baseUrl: \"https://a.example/v1\", apiKey: k }\n")
    const up = config.upstreams[0]
    expect(up.kind).toBe("openai")
    expect(up.auth).toBe("bearer")
    expect(up.headers).toEqual({})
    expect(up.deployments).toBeUndefined()
    expect(up.apiVersion).toBeUndefined()
    expect(config.routing.fallbacks).toEqual({})
  })

  it("reads every kind with its fields; azure serves its deployments' models and sends api-key by default", () => {
    const config = ok(ALL_KINDS, { ORG: "org-secret-0123" })
    const [openai, azure, claude, gemini, local] = config.upstreams
    expect(openai).toMatchObject({ kind: "openai", auth: "bearer", models: ["gpt-4.1"] })
    expect(Redacted.isRedacted(openai.headers["OpenAI-Organization"])).toBe(true)
    expect(Redacted.value(openai.headers["OpenAI-Organization"]!)).toBe("org-secret-0123")
    expect(azure).toMatchObject({
      kind: "azure-openai",
      auth: "api-key",
      deployments: { "gpt-4.1": "my-gpt41", "text-embedding-3-small": "emb" },
      apiVersion: "2025-01-01-preview",
      models: ["gpt-4.1", "text-embedding-3-small"]
    })
    expect(claude).toMatchObject({ kind: "anthropic", apiVersion: "2023-06-01" })
    expect(gemini).toMatchObject({ kind: "gemini", models: ["gemini-2.5-flash"] })
    expect(local).toMatchObject({ kind: "openai", auth: "none" })
    expect(Redacted.value(local!.apiKey)).toBe("")
    expect(config.routing.fallbacks).toEqual({
      "gpt-4.1": ["claude-sonnet-4.5", "gemini-2.5-flash"],
      "claude-latest": ["gemini-2.5-flash"]
    })
  })

  it("names an unknown kind", () => {
    expect(problems("upstreams:\n  - { name: a, baseUrl: \"https://a.example/v1\", apiKey: k, kind: claude }\n")).toEqual([
      { path: "upstreams[0].kind", message: `expected one of "openai", "azure-openai", "anthropic", "gemini", got "claude"` }
    ])
  })

  it("names missing deployments of an azure-openai upstream, and models without one", () => {
    const base = `upstreams:\n  - { name: az, kind: azure-openai, baseUrl: "https://r.openai.azure.com", apiKey: k`
    expect(problems(`${base} }\n`)).toEqual([{
      path: "upstreams[0].deployments",
      message: `is required for kind "azure-openai": map each model to its deployment, e.g. { gpt-4.1: my-gpt41 }`
    }])
    expect(problems(`${base}, models: [gpt-4.1, gpt-4o], deployments: { gpt-4.1: d } }\n`)).toEqual([
      { path: "upstreams[0].models", message: `"gpt-4o" has no deployment (add it to deployments)` }
    ])
  })

  it("refuses fields that do not apply to the kind", () => {
    const text = `
upstreams:
  - { name: a, kind: anthropic, baseUrl: "https://api.anthropic.com/v1", apiKey: k, auth: bearer }
  - { name: b, kind: gemini, baseUrl: "https://g.example/v1beta", apiKey: k, apiVersion: v1 }
  - { name: c, baseUrl: "https://c.example/v1", apiKey: k, deployments: { m: d } }
`
    expect(problems(text)).toEqual([
      { path: "upstreams[0].auth", message: `applies to kinds "openai" and "azure-openai" only, not "anthropic" (its key goes in x-api-key)` },
      { path: "upstreams[1].apiVersion", message: `applies to kinds "azure-openai" and "anthropic" only, not "gemini"` },
      { path: "upstreams[2].deployments", message: `applies to kind "azure-openai" only, not "openai"` }
    ])
  })

  it("needs an apiKey unless auth is none; bad header names are named, header values never shown", () => {
    const text = `
upstreams:
  - { name: a, baseUrl: "https://a.example/v1" }
  - name: b
    baseUrl: https://b.example/v1
    apiKey: k
    headers: { "bad header": "\${SECRET}", X-Ok: 42 }
`
    const found = problems(text, { SECRET: "super-secret-value" })
    expect(found).toEqual(expect.arrayContaining([
      { path: "upstreams[0].apiKey", message: "is required" },
      { path: "upstreams[1].headers.bad header", message: "is not a valid HTTP header name" },
      { path: "upstreams[1].headers.X-Ok", message: "expected a string (quote the value)" }
    ]))
    expect(JSON.stringify(found)).not.toContain("super-secret-value")
  })
})

describe("Config: routing.fallbacks", () => {
  const upstreams = `
upstreams:
  - { name: a, baseUrl: "https://a.example/v1", apiKey: k, models: [gpt-4.1, gpt-4.1-mini] }
  - { name: c, kind: anthropic, baseUrl: "https://api.anthropic.com/v1", apiKey: k, models: [claude-sonnet-4.5] }
`

  it("names a fallback to a model no upstream serves", () => {
    expect(problems(`${upstreams}routing:\n  fallbacks: { gpt-4.1: [claude-sonnet-4.5, gemini-2.5-flash] }\n`)).toEqual([
      {
        path: "routing.fallbacks.gpt-4.1[1]",
        message: `no upstream serves "gemini-2.5-flash" (see upstreams[].models, aliases and deployments)`
      }
    ])
  })

  it("names a fallback cycle once, and a model that falls back to itself", () => {
    const cycle = `${upstreams}routing:
  fallbacks:
    gpt-4.1: [claude-sonnet-4.5]
    claude-sonnet-4.5: [gpt-4.1-mini]
    gpt-4.1-mini: [gpt-4.1]
`
    expect(problems(cycle)).toEqual([
      { path: "routing.fallbacks.gpt-4.1-mini", message: "fallback cycle: gpt-4.1 -> claude-sonnet-4.5 -> gpt-4.1-mini -> gpt-4.1" }
    ])
    expect(problems(`${upstreams}routing:\n  fallbacks: { gpt-4.1: [gpt-4.1] }\n`)).toEqual([
      { path: "routing.fallbacks.gpt-4.1", message: "fallback cycle: gpt-4.1 -> gpt-4.1" }
    ])
  })

  it("a chain without a cycle is fine; with an upstream serving any model every fallback is served", () => {
    const chain = ok(`${upstreams}routing:\n  fallbacks: { gpt-4.1: [claude-sonnet-4.5], claude-sonnet-4.5: [gpt-4.1-mini] }\n`)
    expect(chain.routing.fallbacks["gpt-4.1"]).toEqual(["claude-sonnet-4.5"])
    const any = ok(`upstreams:\n  - { name: a, baseUrl: "https://a.example/v1", apiKey: k }\nrouting:\n  fallbacks: { x: [y] }\n`)
    expect(any.routing.fallbacks).toEqual({ x: ["y"] })
  })
})

describe("Config.load", () => {
  it.effect("loads routing.fallbacks and hands them to the relay", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "bw-providers-"))
      const file = join(dir, "breakwater.yaml")
      writeFileSync(file, ALL_KINDS)
      const loaded = yield* Config.load(file, { ORG: "org-secret-0123" })
      expect(Config.toRelayOptions(loaded).fallbacks).toEqual(loaded.routing.fallbacks)
      expect(Object.keys(loaded.routing.fallbacks).length).toBeGreaterThan(0)
      const kinds = join(dir, "kinds.yaml")
      writeFileSync(kinds, ALL_KINDS.slice(0, ALL_KINDS.indexOf("routing:")))
      const config = yield* Config.load(kinds, { ORG: "org-secret-0123" })
      expect(config.upstreams.map((u) => u.kind)).toEqual(["openai", "azure-openai", "anthropic", "gemini", "openai"])
      // What the server's client translates: every upstream but a plain OpenAI one.
      const providers = Config.toProviders(config)
      expect(Object.keys(providers)).toEqual(["openai", "azure", "claude", "gemini", "local"])
      expect(providers["openai"]).toMatchObject({ kind: "openai", auth: "bearer", headers: { "OpenAI-Organization": "org-secret-0123" } })
      expect(providers["azure"]).toMatchObject({ kind: "azure-openai", auth: "api-key", deployments: { "gpt-4.1": "my-gpt41" } })
      expect(providers["local"]).toMatchObject({ kind: "openai", auth: "none" })
      const plain = Config.toProviders(Either.getOrThrow(parse("upstreams:\n  - { name: a, baseUrl: \"https://a.example/v1\", apiKey: k }\n")))
      expect(plain).toEqual({})
    }))
})
