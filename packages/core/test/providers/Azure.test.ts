import { describe, expect, it } from "@effect/vitest"
import * as Azure from "../../src/providers/Azure.js"
import * as OpenAICompatible from "../../src/providers/OpenAICompatible.js"

describe("Azure OpenAI", () => {
  const options = { deployments: { "gpt-4.1": "prod gpt41", "text-embedding-3-small": "emb" }, apiVersion: "2025-01-01-preview" }

  it("builds Azure's deployment URLs with the api-version", () => {
    expect(Azure.chatPath("gpt-4.1", options)).toBe(
      "/openai/deployments/prod%20gpt41/chat/completions?api-version=2025-01-01-preview"
    )
    expect(Azure.embeddingsPath("text-embedding-3-small", options)).toBe(
      "/openai/deployments/emb/embeddings?api-version=2025-01-01-preview"
    )
    expect(Azure.chatPath("gpt-4.1", { deployments: options.deployments })).toBe(
      `/openai/deployments/prod%20gpt41/chat/completions?api-version=${Azure.DEFAULT_API_VERSION}`
    )
  })

  it("a model without a deployment is not served (not even one named like an Object method)", () => {
    expect(Azure.chatPath("gpt-4o", options)).toBeUndefined()
    expect(Azure.deploymentFor("toString", options)).toBeUndefined()
  })

  it("sends the key in api-key", () => {
    expect(Azure.headers("k")).toEqual({ "api-key": "k" })
  })
})

describe("OpenAI-compatible auth", () => {
  it("bearer, api-key or none, after static headers that never replace the key's", () => {
    const extra = { "X-Org": "acme", Authorization: "Bearer other" }
    expect(OpenAICompatible.headers("bearer", "k", extra)).toEqual({ "x-org": "acme", authorization: "Bearer k" })
    expect(OpenAICompatible.headers("api-key", "k", { "API-Key": "x" })).toEqual({ "api-key": "k" })
    expect(OpenAICompatible.headers("none", "k", extra)).toEqual({ "x-org": "acme", authorization: "Bearer other" })
  })
})
