import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import * as Config from "../src/Config.js"

// ---------------------------------------------------------------------------
// Helpers

const fixture = fileURLToPath(new URL("./fixtures/example.yaml", import.meta.url))

const SECRETS = {
  BREAKWATER_ADMIN_KEY: "admin-secret-0123456789",
  TEAM_A_KEY: "sk-team-a-secret-0123456789",
  PRIMARY_API_KEY: "sk-primary-secret-0123456789"
}

const parse = (text: string, env: Record<string, string | undefined> = {}, file = "breakwater.yaml") =>
  Config.parse(text, { file, env })

const ok = (result: Either.Either<Config.ServerConfig, Config.ConfigInvalid | Config.ConfigUnreadable>) => {
  if (Either.isLeft(result)) throw new Error(`expected a config, got: ${result.left.message}`)
  return result.right
}

const invalid = (result: Either.Either<Config.ServerConfig, Config.ConfigInvalid | Config.ConfigUnreadable>) => {
  if (Either.isRight(result)) throw new Error("expected ConfigInvalid, got a config")
  if (result.left._tag !== "ConfigInvalid") throw new Error(`expected ConfigInvalid, got: ${result.left.message}`)
  return result.left
}

const unreadable = (result: Either.Either<Config.ServerConfig, Config.ConfigInvalid | Config.ConfigUnreadable>) => {
  if (Either.isRight(result)) throw new Error("expected ConfigUnreadable, got a config")
  if (result.left._tag !== "ConfigUnreadable") throw new Error(`expected ConfigUnreadable, got: ${result.left.message}`)
  return result.left
}

const ms = (d: Duration.Duration) => Duration.toMillis(d)

const minimal = `
upstreams:
  - name: only
    baseUrl: http://localhost:11434/v1
    apiKey: none
`

// ---------------------------------------------------------------------------

describe("Config.parse", () => {
  it("parses the documented example into typed values", () => {
    const config = ok(parse(readFileSync(fixture, "utf8"), SECRETS, fixture))

    expect(config.server.host).toBe("127.0.0.1")
    expect(config.server.port).toBe(8080)
    expect(config.server.adminKey && Redacted.value(config.server.adminKey)).toBe(SECRETS.BREAKWATER_ADMIN_KEY)
    expect(config.server.maxBodyBytes).toBe(10_485_760)
    expect(config.server.logLevel).toBe("Info")
    expect(ms(config.server.shutdownTimeout)).toBe(10_000)
    expect(ms(config.server.drainGrace)).toBe(2_000)
    expect(config.server.maxConnections).toBe(10_000)
    expect(ms(config.server.bodyTimeout)).toBe(30_000)
    expect(ms(config.server.headersTimeout)).toBe(10_000)
    expect(ms(config.server.keepAliveTimeout)).toBe(65_000)

    expect(config.keys).toHaveLength(1)
    const key = config.keys[0]!
    expect(key.name).toBe("team-a")
    expect(Redacted.isRedacted(key.key)).toBe(true)
    expect(Redacted.value(key.key)).toBe(SECRETS.TEAM_A_KEY)
    expect(key).toMatchObject({ requestsPerMinute: 600, tokensPerMinute: 200_000, budgetUsd: 50 })

    expect(config.upstreams).toHaveLength(1)
    const up = config.upstreams[0]
    expect(up.name).toBe("primary")
    expect(up.baseUrl).toBe("https://relay.example.com/v1")
    expect(Redacted.value(up.apiKey)).toBe(SECRETS.PRIMARY_API_KEY)
    expect(up.models).toEqual(["gpt-4.1", "deepseek-v3.2"])
    expect(up.aliases).toEqual({ "gpt-4": "gpt-4.1" })
    expect(up).toMatchObject({
      priority: 1,
      weight: 1,
      maxConcurrent: 20,
      requestsPerMinute: 3000,
      tokensPerMinute: 400_000
    })
    expect(ms(up.timeout)).toBe(30_000)
    expect(ms(up.streamIdleTimeout!)).toBe(120_000)
    expect(up.breaker).toEqual({ failureThreshold: 5 })
    expect(up.retry).toEqual({ maxRetries: 1 })

    expect(config.routing.strategy).toBe("priority")
    expect(config.routing.maxAttempts).toBe(3)
    expect(ms(config.routing.requestTimeout)).toBe(60_000)
    expect(ms(config.routing.streamIdleTimeout)).toBe(60_000)
    expect(config.breaker).toMatchObject({ failureThreshold: 10, successThreshold: 3, halfOpenMaxCalls: 3 })
    expect(config.routing.panic).toBe(0.5)
    expect(ms(config.breaker.openDuration)).toBe(30_000)
    expect(config.retry.maxRetries).toBe(2)
    expect([config.retry.baseDelay, config.retry.maxDelay, config.retry.maxRetryAfter].map(ms)).toEqual([
      200,
      5_000,
      10_000
    ])
    expect(ms(config.cooldown.rateLimited)).toBe(1_000)
    expect(ms(config.cooldown.quota)).toBe(3_600_000)
    expect(ms(config.cooldown.authFailed)).toBe(300_000)
    expect(config.cooldown.headroomWatermark).toBe(0)
    expect(config.cache).toMatchObject({ enabled: true, maxEntries: 10_000, mode: "deterministic", scope: "key" })
    expect(ms(config.cache.ttl)).toBe(300_000)
    expect(ms(config.healthCheck.interval)).toBe(10_000)
    expect(ms(config.healthCheck.timeout)).toBe(5_000)
    expect(config.pricing).toEqual({ "gpt-4.1": { input: 2, output: 8, cachedInput: 0.5 } })
    expect(config.pricingPolicy).toEqual({ unknown: "highest", estimatedOutputTokens: 1024 })
    expect(config.keys[0]?.budgetPeriod).toBe("month")
    expect(config.store).toEqual({ kind: "memory" })
  })

  it("reads JSON when the file ends in .json, with the same interpolation", () => {
    const json = JSON.stringify({
      server: { port: 9000, logLevel: "debug" },
      upstreams: [{ name: "a", baseUrl: "https://a.example/v1", apiKey: "${A_KEY}", models: "*", timeout: "1m30s" }],
      routing: { strategy: "least-busy" }
    })
    const config = ok(parse(json, { A_KEY: "sk-a" }, "breakwater.json"))
    expect(config.server.port).toBe(9000)
    expect(config.server.logLevel).toBe("Debug")
    expect(Redacted.value(config.upstreams[0].apiKey)).toBe("sk-a")
    expect(config.upstreams[0].models).toBe("*")
    expect(ms(config.upstreams[0].timeout)).toBe(90_000)
    expect(config.routing.strategy).toBe("least-busy")
  })

  it("a JSON syntax error is ConfigUnreadable with the line", () => {
    const error = unreadable(parse(`{\n  "upstreams": [\n    { "name": "a", }\n  ]\n  "x": 1\n}`, {}, "c.json"))
    expect(error.file).toBe("c.json")
    expect(error.reason).toMatch(/^JSON syntax error at line 3, column \d+: /)

    const trailing = unreadable(parse(`{\n  "upstreams": [{ "apiKey": "sk-literal-0123", }]\n}`, {}, "c.json"))
    expect(trailing.reason).toMatch(/^JSON syntax error at line 2, column \d+: /)
    expect(trailing.reason).not.toContain("sk-literal-0123")
  })

  it("fills every default for a minimal config", () => {
    const config = ok(parse(minimal))
    expect(config.server).toEqual({
      host: "127.0.0.1",
      port: 8080,
      console: true,
      maxBodyBytes: 10 * 1024 * 1024,
      logLevel: "Info",
      shutdownTimeout: Duration.seconds(10),
      drainGrace: Duration.seconds(2),
      maxConnections: 10_000,
      bodyTimeout: Duration.seconds(30),
      headersTimeout: Duration.seconds(10),
      keepAliveTimeout: Duration.seconds(65)
    })
    expect(config.server.adminKey).toBeUndefined()
    expect(config.keys).toEqual([])
    const up = config.upstreams[0]
    expect(up.models).toBe("*")
    expect(up.aliases).toEqual({})
    expect(up).toMatchObject({ priority: 1, weight: 1, maxConcurrent: 64 })
    expect(ms(up.timeout)).toBe(30_000)
    expect(up.requestsPerMinute).toBeUndefined()
    expect(up.breaker).toBeUndefined()
    expect(up.retry).toBeUndefined()
    expect(up.streamIdleTimeout).toBeUndefined()
    expect(config.routing.strategy).toBe("priority")
    expect(config.routing.maxAttempts).toBe(3)
    expect(ms(config.routing.requestTimeout)).toBe(60_000)
    expect(ms(config.routing.streamIdleTimeout)).toBe(60_000)
    // Never worse than direct (issue 15): panic at 50%, a retry budget, breakers on a failure rate.
    expect(config.routing.panic).toBe(0.5)
    expect(config.routing.retryBudget).toEqual({ enabled: true, ratio: 0.2, window: Duration.seconds(10), minPerSecond: 3 })
    expect(config.breaker).toMatchObject({
      failureThreshold: 10,
      successThreshold: 3,
      halfOpenMaxCalls: 3,
      failureRate: { threshold: 0.5, minimumCalls: 20, window: Duration.seconds(10) }
    })
    expect(config.retry.maxRetries).toBe(2)
    expect(config.cache).toMatchObject({ enabled: true, maxEntries: 10_000, mode: "deterministic", scope: "key" })
    expect(config.pricing).toEqual({})
    expect(config.store).toEqual({ kind: "memory" })
  })

  it("interpolates ${VAR} and ${VAR:-default} inside strings, and numbers from strings", () => {
    const text = `
server:
  port: \${PORT:-8081}
  host: \${HOST:-0.0.0.0}
upstreams:
  - name: \${NAME:-fallback}
    baseUrl: https://\${HOST_NAME}/v\${VERSION:-1}
    apiKey: "\${KEY}"
    priority: \${PRIORITY:-2}
    models: ["\${MODEL:-gpt-4.1}", "literal-$$\{NOT_A_VAR}"]
cache: { enabled: "\${CACHE:-false}" }
`
    const config = ok(parse(text, { HOST_NAME: "api.example.com", KEY: "sk-x", NAME: "", HOST: "::" }))
    expect(config.server.port).toBe(8081)
    expect(config.server.host).toBe("::")
    expect(config.upstreams[0].name).toBe("fallback") // set but empty: the default applies
    expect(config.upstreams[0].baseUrl).toBe("https://api.example.com/v1")
    expect(Redacted.value(config.upstreams[0].apiKey)).toBe("sk-x")
    expect(config.upstreams[0].priority).toBe(2)
    expect(config.upstreams[0].models).toEqual(["gpt-4.1", "literal-${NOT_A_VAR}"])
    expect(config.cache.enabled).toBe(false)
  })

  it("a missing env var names the variable and where it is used", () => {
    const text = `
server: { adminKey: "\${ADMIN}" }
upstreams:
  - { name: primary, baseUrl: "https://x.example/v1", apiKey: "\${PRIMARY_API_KEY}" }
`
    const error = unreadable(parse(text, { ADMIN: "set" }))
    expect(error.reason).toBe("upstreams[0].apiKey uses ${PRIMARY_API_KEY}, which is not set")
    expect(error.message).toContain("breakwater.yaml")

    const both = unreadable(parse(text, {}))
    expect(both.reason).toContain("server.adminKey uses ${ADMIN}, which is not set")
    expect(both.reason).toContain("upstreams[0].apiKey uses ${PRIMARY_API_KEY}, which is not set")
  })

  it("a malformed reference is ConfigUnreadable", () => {
    const error = unreadable(parse(`upstreams:\n  - name: "\${not a name}"\n`))
    expect(error.reason).toContain("upstreams[0].name has a malformed reference")
  })

  it("names every bad field at once", () => {
    const text = `
server:
  port: -1
  logLevel: verbose
upstreams:
  - name: primary
    baseUrl: https://a.example/v1
    apiKey: sk-a
    timeout: thirty
  - name: primary
    baseUrl: not a url
    apiKey: sk-b
    maxConcurrent: 0
    models: gpt-4.1
routing: { strategy: fastest, requestTimout: 60s }
cache: { ttl: 300 }
store: { kind: redis }
`
    const error = invalid(parse(text))
    const byPath = Object.fromEntries(error.problems.map((p) => [p.path, p.message]))
    expect(byPath).toEqual({
      "server.port": "expected a port number from 0 to 65535, got -1",
      "server.logLevel":
        `expected one of "trace", "debug", "info", "warning", "error", "fatal", "none", got "verbose"`,
      "upstreams[0].timeout": `expected a positive duration like "30s", got "thirty"`,
      "upstreams[1].name": `duplicate upstream name "primary" (also upstreams[0])`,
      "upstreams[1].baseUrl": `expected an http(s) URL like "https://api.openai.com/v1", got "not a url"`,
      "upstreams[1].maxConcurrent": "expected a positive integer, got 0",
      "upstreams[1].models": `expected "*" or a non-empty list of model names, got "gpt-4.1"`,
      "routing.strategy": `expected one of "priority", "weighted", "latency", "least-busy", got "fastest"`,
      "routing.requestTimout": `unknown field (did you mean "requestTimeout"?)`,
      "cache.ttl": `expected a positive duration like "30s", got 300`,
      "store.url": `is required when store.kind is "redis"`
    })
    expect(error.problems).toHaveLength(11)
    // One line per problem, in the documented format.
    const lines = error.message.split("\n")
    expect(lines[0]).toBe("Invalid config breakwater.yaml (11 problems):")
    expect(lines).toContain(`  - upstreams[0].timeout: expected a positive duration like "30s", got "thirty"`)
    expect(lines).toHaveLength(12)
  })

  it("names a missing upstreams section along with other bad fields", () => {
    const error = invalid(parse("server: { port: 70000, shutdownTimeout: 5 }\nrouting: { strategy: fast }\n"))
    expect(error.problems).toEqual([
      { path: "server.port", message: "expected a port number from 0 to 65535, got 70000" },
      { path: "server.shutdownTimeout", message: `expected a duration like "30s", got 5` },
      { path: "upstreams", message: "is required" },
      { path: "routing.strategy", message: `expected one of "priority", "weighted", "latency", "least-busy", got "fast"` }
    ])
  })

  it("a recursive YAML alias is ConfigUnreadable, not a stack overflow", () => {
    const error = unreadable(parse(`${minimal}\npricing: &p { x: *p }\n`))
    expect(error.reason).toContain("pricing.x contains itself")
  })

  it("missing or empty upstreams, and a non-mapping file", () => {
    expect(invalid(parse("server: { port: 8080 }\n")).problems).toEqual([{ path: "upstreams", message: "is required" }])
    expect(invalid(parse("")).problems).toEqual([{ path: "upstreams", message: "is required" }])
    expect(invalid(parse("upstreams: []\n")).problems).toEqual([
      { path: "upstreams", message: "expected at least one upstream" }
    ])
    expect(invalid(parse("upstreams: {}\n")).problems).toEqual([
      { path: "upstreams", message: "expected a list, got a mapping" }
    ])
    expect(invalid(parse("- a\n- b\n")).problems).toEqual([
      { path: "", message: "expected a mapping of sections, got a list" }
    ])
    expect(invalid(parse(`${minimal}\nupstream: []\n`)).problems).toEqual([
      { path: "upstream", message: `unknown field (did you mean "upstreams"?)` }
    ])
    expect(invalid(parse(`${minimal}\n    extra: 1\n`)).problems[0]?.message).toMatch(
      /^unknown field \(expected one of: name, baseUrl, apiKey, /
    )
  })

  it("names required fields, duplicate keys, and keys' limits", () => {
    const text = `
keys:
  - { name: a, key: "\${K}" }
  - { name: a, key: "\${K}", budgetUsd: -5 }
  - { key: other-key }
upstreams:
  - { baseUrl: "https://x.example/v1" }
`
    const error = invalid(parse(text, { K: "sk-shared-gateway-key" }))
    expect(error.problems).toEqual(expect.arrayContaining([
      { path: "keys[1].budgetUsd", message: "expected a positive number, got -5" },
      { path: "keys[2].name", message: "is required" },
      { path: "upstreams[0].name", message: "is required" },
      { path: "upstreams[0].apiKey", message: "is required" },
      { path: "keys[1].name", message: `duplicate key name "a" (also keys[0])` },
      { path: "keys[1].key", message: "the same key as keys[0]" }
    ]))
    expect(error.problems).toHaveLength(6)
    expect(error.message).not.toContain("sk-shared-gateway-key")
  })

  it("reads budget periods and the pricing section (models, unknown, estimatedOutputTokens), defaults filled in", () => {
    const base = ok(parse(`${minimal}\nkeys:\n  - { name: a, key: k1, budgetUsd: 5 }\n`))
    expect(base.keys[0]?.budgetPeriod).toBeUndefined()
    expect(base.pricingPolicy).toEqual({ unknown: "highest", estimatedOutputTokens: 1024 })
    const config = ok(parse(`${minimal}
keys:
  - { name: a, key: k1, budgetUsd: 5, budgetPeriod: month }
  - { name: b, key: k2, budgetUsd: 1, budgetPeriod: day }
pricing:
  models: { my-model: { input: 1, output: 2, cachedInput: 0.25 } }
  unknown: reject
  estimatedOutputTokens: 300
`))
    expect(config.keys.map((k) => k.budgetPeriod)).toEqual(["month", "day"])
    expect(config.pricing).toEqual({ "my-model": { input: 1, output: 2, cachedInput: 0.25 } })
    expect(config.pricingPolicy).toEqual({ unknown: "reject", estimatedOutputTokens: 300 })
    const explicit = ok(parse(`${minimal}\npricing: { unknown: { input: 10, output: 40 } }\n`))
    expect(explicit.pricingPolicy.unknown).toEqual({ input: 10, output: 40 })
    // Prices listed directly under pricing (the earlier form) still work, next to the new fields.
    const flat = ok(parse(`${minimal}\npricing: { gpt-4.1: { input: 1, output: 4 }, unknown: reject }\n`))
    expect(flat.pricing).toEqual({ "gpt-4.1": { input: 1, output: 4 } })
    expect(flat.pricingPolicy.unknown).toBe("reject")
  })

  it("names the bad pricing and budget fields where the file has them", () => {
    const error = invalid(parse(`${minimal}
keys:
  - { name: a, key: k1, budgetUsd: 5, budgetPeriod: yearly }
pricing:
  gpt-4.1: { input: cheap, output: 4 }
  models: { m: { input: 1 } }
  unknown: sometimes
  estimatedOutputTokens: 0
`))
    expect(error.problems).toEqual(expect.arrayContaining([
      { path: "keys[0].budgetPeriod", message: `expected one of "day", "week", "month", "total", got "yearly"` },
      { path: "pricing.gpt-4.1.input", message: `expected a number of 0 or more, got "cheap"` },
      { path: "pricing.models.m.output", message: "is required" },
      {
        path: "pricing.unknown",
        message: `expected "highest", "reject" or a price { input, output } in USD per million tokens, got "sometimes"`
      },
      { path: "pricing.estimatedOutputTokens", message: "expected a positive integer, got 0" }
    ]))
    expect(error.problems).toHaveLength(5)
  })

  it("never shows a secret value in any error message", () => {
    const env = { ...SECRETS, REDIS_URL: "redis://:redis-password-0123@localhost:6379" }
    const text = `
server:
  adminKey: \${BREAKWATER_ADMIN_KEY}
  port: http
keys:
  - name: team-a
    key: \${TEAM_A_KEY}
    requestsPerMinute: lots
  - name: \${TEAM_A_KEY}
    key: ""
upstreams:
  - name: \${PRIMARY_API_KEY}
    baseUrl: https://user:literal-password-0123@relay.example.com/v1
    apiKey: \${PRIMARY_API_KEY}
    timeout: forever
  - name: second
    baseUrl: \${PRIMARY_API_KEY}
    apiKey: 12345678
store: { kind: redis, url: "\${REDIS_URL}x" }
`
    const error = invalid(parse(text, env))
    const everything = [error.message, JSON.stringify(error.problems), String(error), JSON.stringify(error)].join("\n")
    for (const secret of [...Object.values(env), "literal-password-0123", "12345678", "redis-password-0123"]) {
      expect(everything).not.toContain(secret)
    }
    // The secret fields themselves are still named.
    const paths = error.problems.map((p) => p.path)
    expect(paths).toEqual(expect.arrayContaining([
      "server.port",
      "keys[0].requestsPerMinute",
      "keys[1].key",
      "upstreams[0].baseUrl",
      "upstreams[0].timeout",
      "upstreams[1].baseUrl",
      "upstreams[1].apiKey",
      "store.url"
    ]))
    expect(error.problems.find((p) => p.path === "keys[1].key")?.message).toBe("must not be empty")
    expect(error.problems.find((p) => p.path === "upstreams[1].apiKey")?.message).toBe(
      "expected a string (quote the value)"
    )
  })

  it("never echoes a value that came from the environment, whatever the field", () => {
    const env = {
      UPSTREAM_KEY: "sk-live-not-a-url-0123456789",
      PORT: "eighty",
      HOST_PART: "bad host with spaces",
      NAME: "same-name-from-env",
      TIMEOUT: "forever-and-a-day"
    }
    const text = `
server: { port: "\${PORT}" }
upstreams:
  - { name: "\${NAME}", baseUrl: "\${UPSTREAM_KEY}", apiKey: k, timeout: "\${TIMEOUT}" }
  - { name: "\${NAME}", baseUrl: "https://\${HOST_PART}/v1", apiKey: k }
`
    const error = invalid(parse(text, env))
    const everything = [error.message, JSON.stringify(error.problems)].join("\n")
    for (const value of Object.values(env)) expect(everything).not.toContain(value)
    const problem = (path: string) => error.problems.find((p) => p.path === path)?.message
    // Each problem still names the field and says where its value came from.
    expect(problem("upstreams[0].baseUrl")).toBe(
      `expected an http(s) URL like "https://api.openai.com/v1", got the value of \${UPSTREAM_KEY} (not shown)`
    )
    expect(problem("server.port")).toBe("expected a port number from 0 to 65535, got the value of ${PORT} (not shown)")
    expect(problem("upstreams[0].timeout")).toContain("got the value of ${TIMEOUT} (not shown)")
    expect(problem("upstreams[1].baseUrl")).toContain("got the value of ${HOST_PART} (not shown)")
    expect(problem("upstreams[1].name")).toBe("duplicate upstream name from ${NAME} (also upstreams[0])")
    // A value written in the file (a default included) is still shown: it is in the file anyway.
    const literal = invalid(parse(`server: { port: "\${UNSET_PORT:-eighty}" }\n${minimal}`, {}))
    expect(literal.problems).toEqual([
      { path: "server.port", message: `expected a port number from 0 to 65535, got "eighty"` }
    ])
  })

  it("caps every duration at what a timer can hold (2^31-1 ms, about 24.8 days)", () => {
    const durations = [
      "server.shutdownTimeout",
      "server.drainGrace",
      "server.bodyTimeout",
      "server.headersTimeout",
      "server.keepAliveTimeout",
      "upstreams[0].timeout",
      "upstreams[0].breaker.openDuration",
      "upstreams[0].retry.baseDelay",
      "upstreams[0].retry.maxDelay",
      "routing.requestTimeout",
      "breaker.openDuration",
      "breaker.failureRate.window",
      "retry.baseDelay",
      "retry.maxDelay",
      "retry.maxRetryAfter",
      "cooldown.rateLimited",
      "cooldown.quota",
      "cache.ttl",
      "healthCheck.interval",
      "healthCheck.timeout"
    ]
    const yamlWith = (value: string) => `
server:
  shutdownTimeout: ${value}
  drainGrace: ${value}
  bodyTimeout: ${value}
  headersTimeout: ${value}
  keepAliveTimeout: ${value}
upstreams:
  - name: a
    baseUrl: http://localhost:1/v1
    apiKey: k
    timeout: ${value}
    breaker: { openDuration: ${value} }
    retry: { baseDelay: ${value}, maxDelay: ${value} }
routing: { requestTimeout: ${value} }
breaker: { openDuration: ${value}, failureRate: { threshold: 0.5, minimumCalls: 10, window: ${value} } }
retry: { baseDelay: ${value}, maxDelay: ${value}, maxRetryAfter: ${value} }
cooldown: { rateLimited: ${value}, quota: ${value} }
cache: { ttl: ${value} }
healthCheck: { interval: ${value}, timeout: ${value} }
`
    const error = invalid(parse(yamlWith("25d")))
    expect(error.problems.map((p) => p.path).sort()).toEqual([...durations].sort())
    for (const p of error.problems) {
      expect(p.message).toBe(
        `expected a duration of at most 24d20h31m23.647s (2147483647 ms, the longest a timer can wait), got "25d"`
      )
    }
    // The largest a timer holds is fine, and so is 24 days.
    ok(parse(yamlWith("24d20h31m23.647s")))
    const config = ok(parse(yamlWith("24d")))
    expect(ms(config.upstreams[0].timeout)).toBe(24 * 86_400_000)
    expect(invalid(parse(yamlWith("24d20h31m23.648s"))).problems).toHaveLength(durations.length)
  })

  it("a redis store needs a redis URL, kept redacted", () => {
    const config = ok(parse(`${minimal}\nstore: { kind: redis, url: "redis://localhost:6379/0" }\n`))
    expect(config.store.kind).toBe("redis")
    if (config.store.kind === "redis") {
      expect(Redacted.value(config.store.url)).toBe("redis://localhost:6379/0")
      expect(config.store.prefix).toBe("breakwater:")
      expect(Duration.toMillis(config.store.commandTimeout)).toBe(50)
    }
    const slow = ok(parse(`${minimal}\nstore: { kind: redis, url: "redis://localhost:6379/0", commandTimeout: 2s }\n`))
    expect(slow.store.kind === "redis" && Duration.toMillis(slow.store.commandTimeout)).toBe(2_000)
    expect(invalid(parse(`${minimal}\nstore: { kind: redis, url: "redis://localhost:6379/0", commandTimeout: 0s }\n`)).problems[0]?.path)
      .toBe("store.commandTimeout")
    expect(invalid(parse(`${minimal}\nstore: { kind: redis, url: "http://x" }\n`)).problems).toEqual([
      { path: "store.url", message: "expected a redis:// or rediss:// URL" }
    ])
    expect(invalid(parse(`${minimal}\nstore: { kind: postgres }\n`)).problems).toEqual([
      { path: "store.kind", message: `expected one of "memory", "redis", got "postgres"` }
    ])
  })

  it("a YAML syntax error is ConfigUnreadable with the line number", () => {
    const error = unreadable(parse("server:\n  port: 8080\n  host: [oops\nupstreams: []\n"))
    expect(error.reason).toMatch(/^YAML syntax error at line 4, column \d+: /)
    expect(error.message).toContain("breakwater.yaml")

    const dup = unreadable(parse("server:\n  port: 1\n  port: 2\n"))
    expect(dup.reason).toMatch(/^YAML syntax error at line 3, column 3: Map keys must be unique/)
  })

  it("an unquoted ${VAR} in a flow mapping is a syntax error with a hint, and no source text", () => {
    const error = unreadable(parse("keys:\n  - { name: a, key: ${SECRET_KEY_VALUE} }\n"))
    expect(error.reason).toMatch(/^YAML syntax error at line 2, column \d+: /)
    expect(error.reason).toContain(`quote references: "\${NAME}"`)
    expect(error.reason).not.toContain("SECRET_KEY_VALUE")
  })
})

describe("Config.parse: telemetry", () => {
  const OTLP_SECRET = "otlp-secret-0123456789"
  const traced = (section: string, env: Record<string, string | undefined> = {}) => ok(parse(`${minimal}\n${section}\n`, env))

  it("is off without a telemetry section or OTEL_* endpoint", () => {
    expect(ok(parse(minimal)).telemetry).toBeUndefined()
    expect(ok(parse(minimal, { OTEL_SERVICE_NAME: "x", OTEL_EXPORTER_OTLP_HEADERS: "a=b" })).telemetry).toBeUndefined()
  })

  it("reads the section: spans go to <endpoint>/v1/traces, headers stay secret, defaults filled in", () => {
    const t = traced(`telemetry:\n  otlp:\n    endpoint: http://collector:4318\n    headers: { x-api-key: "${OTLP_SECRET}" }`).telemetry!
    expect(t.tracesUrl).toBe("http://collector:4318/v1/traces")
    expect(Redacted.value(t.headers["x-api-key"]!)).toBe(OTLP_SECRET)
    expect(String(t.headers["x-api-key"])).not.toContain(OTLP_SECRET)
    expect(t.serviceName).toBe("breakwater")
    expect(t.sampleRatio).toBeUndefined()
    expect(traced("telemetry: { otlp: { endpoint: https://otlp.example.com/v1/traces } }").telemetry!.tracesUrl)
      .toBe("https://otlp.example.com/v1/traces")
    expect(traced("telemetry: { otlp: { endpoint: http://c:4318/otlp/ }, serviceName: gw, sampleRatio: 0.25 }").telemetry)
      .toMatchObject({ tracesUrl: "http://c:4318/otlp/v1/traces", serviceName: "gw", sampleRatio: 0.25 })
  })

  it("follows the standard OTEL_* variables where the file says nothing, and the file where it does", () => {
    const env = {
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://env-collector:4318",
      OTEL_SERVICE_NAME: "from-env",
      OTEL_EXPORTER_OTLP_HEADERS: "x-api-key=from-env,x-team=a%20b",
      OTEL_EXPORTER_OTLP_TRACES_HEADERS: "X-Team=traces",
      OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=prod,service.name=ignored"
    }
    const fromEnv = ok(parse(minimal, env)).telemetry!
    expect(fromEnv.tracesUrl).toBe("http://env-collector:4318/v1/traces")
    expect(fromEnv.serviceName).toBe("from-env")
    expect(Object.fromEntries(Object.entries(fromEnv.headers).map(([k, v]) => [k, Redacted.value(v)])))
      .toEqual({ "x-api-key": "from-env", "X-Team": "traces" })
    expect(fromEnv.resourceAttributes).toEqual({ "deployment.environment": "prod", "service.name": "ignored" })
    // The traces endpoint is used as it is, and wins over the general one.
    expect(ok(parse(minimal, { ...env, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://t:9/custom" })).telemetry!.tracesUrl)
      .toBe("http://t:9/custom")
    // The file wins over the variables.
    const fromFile = traced(`telemetry: { otlp: { endpoint: "http://file:4318", headers: { X-API-KEY: file } }, serviceName: file }`, env)
      .telemetry!
    expect(fromFile.tracesUrl).toBe("http://file:4318/v1/traces")
    expect(fromFile.serviceName).toBe("file")
    expect(Object.fromEntries(Object.entries(fromFile.headers).map(([k, v]) => [k, Redacted.value(v)])))
      .toEqual({ "X-Team": "traces", "X-API-KEY": "file" })
  })

  it("OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn traces off, even with a section", () => {
    const section = "telemetry: { otlp: { endpoint: http://c:4318 } }"
    expect(traced(section, { OTEL_SDK_DISABLED: "true" }).telemetry).toBeUndefined()
    expect(traced(section, { OTEL_TRACES_EXPORTER: "none" }).telemetry).toBeUndefined()
    expect(traced(section, { OTEL_SDK_DISABLED: "false" }).telemetry).toBeDefined()
  })

  it("names what is wrong, never showing a header's value or a variable's", () => {
    expect(invalid(parse(`${minimal}\ntelemetry: { serviceName: gw }\n`)).problems).toEqual([
      {
        path: "telemetry.otlp.endpoint",
        message: "is required for traces (or set OTEL_EXPORTER_OTLP_ENDPOINT); remove the telemetry section to turn them off"
      }
    ])
    // With the endpoint in the environment, the section needs none.
    expect(traced("telemetry: { serviceName: gw }", { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" }).telemetry!.serviceName).toBe("gw")
    const bad = invalid(parse(
      `${minimal}\ntelemetry:\n  otlp:\n    endpoint: ftp://c\n    headers: { "bad name": "${OTLP_SECRET}", x-ok: "a${OTLP_SECRET}\\nb" }\n  sampleRatio: 2\n`
    ))
    expect(bad.problems).toEqual([
      { path: "telemetry.otlp.endpoint", message: `expected an http(s) URL like "http://otel-collector:4318", got "ftp://c"` },
      { path: "telemetry.sampleRatio", message: "expected a number from 0 to 1, got 2" },
      { path: "telemetry.otlp.headers.bad name", message: "is not a valid HTTP header name" },
      { path: "telemetry.otlp.headers.x-ok", message: "must not contain line breaks" }
    ])
    expect(bad.message).not.toContain(OTLP_SECRET)
    expect(invalid(parse(`${minimal}\ntelemetry: { otlp: { endpoint: "http://user:${OTLP_SECRET}@c:4318" } }\n`)).message)
      .not.toContain(OTLP_SECRET)
    const env = invalid(parse(minimal, {
      OTEL_EXPORTER_OTLP_ENDPOINT: `not a url ${OTLP_SECRET}`,
      OTEL_EXPORTER_OTLP_HEADERS: `novalue${OTLP_SECRET}`
    }))
    expect(env.problems).toEqual([
      { path: "OTEL_EXPORTER_OTLP_ENDPOINT (environment)", message: "expected an http(s) URL without credentials (value not shown)" },
      { path: "OTEL_EXPORTER_OTLP_HEADERS (environment)", message: "expected name=value pairs separated by commas (values not shown)" }
    ])
    expect(env.message).not.toContain(OTLP_SECRET)
    // Only OTLP/HTTP with protobuf bodies is spoken.
    expect(invalid(parse(minimal, { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4317", OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" })).problems)
      .toEqual([{
        path: "OTEL_EXPORTER_OTLP_PROTOCOL (environment)",
        message: `only "http/protobuf" is supported, got "grpc"; point the endpoint at the collector's OTLP/HTTP port (4318)`
      }])
    expect(ok(parse(minimal, { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/protobuf" })).telemetry)
      .toBeDefined()
    // Without traces, the variable is someone else's business.
    expect(ok(parse(minimal, { OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" })).telemetry).toBeUndefined()
  })
})

describe("Config.toRelayOptions", () => {
  it("routing.pacing.queue and cooldown.unreachable reach the relay; a negative queue is refused, naming the field", () => {
    const config = ok(parse(`${minimal}routing: { pacing: { queue: 0 } }\ncooldown: { unreachable: 2s }\n`, {}))
    const options = Config.toRelayOptions(config)
    expect(options.pacing).toEqual({ queue: 0 })
    expect(options.unreachableCooldown).toEqual(Duration.seconds(2))
    const bad = parse(`${minimal}routing: { pacing: { queue: -1 } }\n`, {})
    expect(bad._tag).toBe("Left")
    expect(JSON.stringify(bad)).toContain("routing.pacing.queue")
  })

  it("maps the sections to the relay's options", () => {
    const config = ok(parse(readFileSync(fixture, "utf8"), SECRETS, fixture))
    const options = Config.toRelayOptions(config)
    expect(options.maxAttempts).toBe(3)
    expect(Duration.toMillis(options.requestTimeout!)).toBe(60_000)
    expect(options.router).toEqual({ strategy: "priority", panic: 0.5 })
    expect(options.retryBudget).toEqual({ ratio: 0.2, window: Duration.seconds(10), minPerSecond: 3 })
    expect(options.breaker).toEqual({
      failureRate: { threshold: 0.5, minimumCalls: 20, window: { duration: Duration.seconds(10) } },
      failureThreshold: 10,
      successThreshold: 3,
      openDuration: Duration.seconds(30),
      halfOpenMaxCalls: 3
    })
    expect(options.retry).toEqual({
      maxRetries: 2,
      baseDelay: Duration.millis(200),
      maxDelay: Duration.seconds(5),
      maxRetryAfter: Duration.seconds(10)
    })
    expect(options.rateLimitCooldown).toEqual(Duration.seconds(1))
    expect(options.quotaCooldown).toEqual(Duration.hours(1))
    expect(options.authFailedCooldown).toEqual(Duration.minutes(5))
    expect(options.unreachableCooldown).toEqual(Duration.seconds(5))
    expect(options.pacing).toEqual({ queue: 100 })
    expect(options.headroomWatermark).toBe(0)
    expect(options.cacheMode).toBe("deterministic")
    expect(options.cacheScope).toBe("key")

    expect(options.upstreams).toHaveLength(1)
    const up = options.upstreams[0]!
    expect(up).toMatchObject({
      name: "primary",
      baseUrl: "https://relay.example.com/v1",
      models: ["gpt-4.1", "deepseek-v3.2"],
      aliases: { "gpt-4": "gpt-4.1" },
      priority: 1,
      weight: 1,
      maxConcurrent: 20,
      requestsPerMinute: 3000,
      tokensPerMinute: 400_000,
      breaker: { failureThreshold: 5 },
      retry: { maxRetries: 1 }
    })
    expect(Redacted.isRedacted(up.apiKey)).toBe(true)
    expect(Redacted.value(up.apiKey)).toBe(SECRETS.PRIMARY_API_KEY)
    expect(up.timeout).toEqual(Duration.seconds(30))
    expect(up.streamIdleTimeout).toEqual(Duration.minutes(2))
    expect(options.streamIdleTimeout).toEqual(Duration.seconds(60))
  })

  it("the upstream client's backstop timeouts lie past every limit of the gateway's own", () => {
    const config = ok(parse(readFileSync(fixture, "utf8"), SECRETS, fixture))
    // requestTimeout 60s is the longest wait for headers; the upstream's streamIdleTimeout 2m the longest silence.
    expect(Config.toUndiciOptions(config)).toEqual({ headersTimeout: 65_000, bodyTimeout: 125_000 })
    const invalidIdle = invalid(parse(`upstreams: [{ name: a, baseUrl: "http://127.0.0.1:1/v1", apiKey: k, streamIdleTimeout: 0s }]
routing: { streamIdleTimeout: soon }`))
    expect(invalidIdle.problems.map((p) => p.path)).toEqual(["upstreams[0].streamIdleTimeout", "routing.streamIdleTimeout"])
  })

  it("cache.enabled false means cacheMode none; otherwise cache.mode", () => {
    const off = ok(parse(`${minimal}\ncache: { enabled: false, mode: deterministic }\n`))
    expect(Config.toRelayOptions(off).cacheMode).toBe("none")
    const deterministic = ok(parse(`${minimal}\ncache: { mode: deterministic }\nrouting: { strategy: latency }\n`))
    expect(Config.toRelayOptions(deterministic).cacheMode).toBe("deterministic")
    const all = ok(parse(`${minimal}\ncache: { mode: all, scope: shared }\n`))
    expect(Config.toRelayOptions(all).cacheMode).toBe("all")
    expect(Config.toRelayOptions(all).cacheScope).toBe("shared")
    expect(Config.parse(`${minimal}\ncache: { scope: global }\n`, { file: "x.yaml", env: {} })).toMatchObject({
      _tag: "Left",
      left: { problems: [{ path: "cache.scope", message: `expected one of "key", "shared", got "global"` }] }
    })
    expect(Config.toRelayOptions(deterministic).router).toEqual({ strategy: "latency", panic: 0.5 })
    const rated = ok(parse(`${minimal}\nbreaker: { failureRate: { threshold: 0.5, minimumCalls: 20, window: 30s } }\n`))
    expect(Config.toRelayOptions(rated).breaker?.failureRate).toEqual({
      threshold: 0.5,
      minimumCalls: 20,
      window: { duration: Duration.seconds(30) }
    })
    const counted = ok(parse(`${minimal}\nbreaker: { failureRate: { threshold: 1, minimumCalls: 5, calls: 50 } }\n`))
    expect(Config.toRelayOptions(counted).breaker?.failureRate?.window).toEqual({ calls: 50 })
    const over = parse(`${minimal}\nbreaker: { failureRate: { threshold: 1.5, minimumCalls: 5, calls: 50 } }\n`)
    expect(Either.isLeft(over) && over.left.message).toContain("breaker.failureRate.threshold: expected a share above 0")
    const both = parse(`${minimal}\nbreaker: { failureRate: { threshold: 0.5, minimumCalls: 5, calls: 50, window: 10s } }\n`)
    expect(Either.isLeft(both) && both.left.message).toContain(
      "breaker.failureRate: set exactly one of window (a duration) or calls (a count)"
    )
    const panicking = ok(parse(`${minimal}\nrouting: { panic: true }\n`))
    expect(Config.toRelayOptions(panicking).router).toEqual({ strategy: "priority", panic: true })
    const threshold = ok(parse(`${minimal}\nrouting: { panic: 0.3 }\n`))
    expect(Config.toRelayOptions(threshold).router).toEqual({ strategy: "priority", panic: 0.3 })
    const badPanic = parse(`${minimal}\nrouting: { panic: 2 }\n`)
    expect(Either.isLeft(badPanic) && badPanic.left.message).toContain(
      "routing.panic: expected true, false or a threshold above 0 and at most 1 (like 0.5), got 2"
    )
  })

  it("routing.retryBudget: on by default, its fields, or off", () => {
    expect(Config.toRelayOptions(ok(parse(minimal))).retryBudget).toEqual({
      ratio: 0.2,
      window: Duration.seconds(10),
      minPerSecond: 3
    })
    const tuned = ok(parse(`${minimal}\nrouting: { retryBudget: { ratio: 0.1, window: 30s, minPerSecond: 0 } }\n`))
    expect(Config.toRelayOptions(tuned).retryBudget).toEqual({ ratio: 0.1, window: Duration.seconds(30), minPerSecond: 0 })
    const off = ok(parse(`${minimal}\nrouting: { retryBudget: { enabled: false } }\n`))
    expect(Config.toRelayOptions(off).retryBudget).toBe(false)
    const bad = parse(`${minimal}\nrouting: { retryBudget: { ratio: -1, window: 0s, spare: 1 } }\n`)
    expect(invalid(bad).problems.map((p) => p.path).sort()).toEqual([
      "routing.retryBudget.ratio",
      "routing.retryBudget.spare",
      "routing.retryBudget.window"
    ])
  })
})

describe("Config.parseDuration", () => {
  it.each([
    ["200ms", 200],
    ["30s", 30_000],
    ["5m", 300_000],
    ["1h", 3_600_000],
    ["1d", 86_400_000],
    ["1.5s", 1_500],
    ["1m30s", 90_000],
    ["1h2m3s4ms", 3_723_004],
    ["0s", 0],
    [" 10s ", 10_000]
  ])("%s is %d ms", (text, millis) => {
    const d = Config.parseDuration(text)
    expect(Option.map(d, Duration.toMillis)).toEqual(Option.some(millis))
  })

  it.each(["", "30", "thirty", "30 s", "s", "-5s", "1.s", "5sec", "1m30", "1e3ms", "30S"])("%j is not a duration", (text) => {
    expect(Option.isNone(Config.parseDuration(text))).toBe(true)
  })
})

describe("Config.load", () => {
  it.effect("reads and parses a file", () =>
    Effect.gen(function*() {
      const config = yield* Config.load(fixture, SECRETS)
      expect(config.upstreams[0].name).toBe("primary")
    }))

  it.effect("a missing file is ConfigUnreadable", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Config.load("/nonexistent/breakwater.yaml", {}))
      expect(error._tag).toBe("ConfigUnreadable")
      if (error._tag === "ConfigUnreadable") {
        expect(error.file).toBe("/nonexistent/breakwater.yaml")
        expect(error.reason).toBe("no such file")
      }
    }))

  it.effect("an invalid file is ConfigInvalid naming the file", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Config.load(fixture, { ...SECRETS, BREAKWATER_ADMIN_KEY: "" }))
      expect(error._tag).toBe("ConfigInvalid")
      expect(error.message).toBe(`Invalid config ${fixture} (1 problem):\n  - server.adminKey: must not be empty`)
    }))
})
