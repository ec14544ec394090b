/**
 * The server's edges, over real HTTP on 127.0.0.1 (in-process server, fake
 * upstream): authorization schemes, malformed admin paths, HEAD on the
 * probes, connection limits and timeouts for slow or endless requests.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { connect } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { captureStdout, openAIError, startServer, type TestServer } from "./helpers/e2e.js"

const UPSTREAM_KEY = "sk-upstream-SECRET-hardening"
const GATEWAY_KEY = "gw-key-HARDENING-SECRET-1"
const ADMIN_KEY = "admin-key-HARDENING-SECRET-2"

const fakes: Array<FakeUpstream.FakeUpstream> = []
const servers: Array<TestServer> = []

const yamlFor = (upstream: FakeUpstream.FakeUpstream, server = "") => `
server: { adminKey: "${ADMIN_KEY}"${server === "" ? "" : `, ${server}`} }
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: ${upstream.name}, baseUrl: "${upstream.url}", apiKey: "${UPSTREAM_KEY}", models: [gpt-4.1] }
`

const serve = async (server = "") => {
  const upstream = await FakeUpstream.start({ name: `hardening-${fakes.length}` })
  fakes.push(upstream)
  const s = await startServer(yamlFor(upstream, server))
  servers.push(s)
  return s
}

let restoreStdout: (() => void) | undefined
beforeAll(() => {
  restoreStdout = captureStdout()
})

afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()))
  await Promise.all(fakes.map((f) => f.close()))
  restoreStdout?.()
})

const chat = JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "hi" }] })

/**
 * Writes `text` on a fresh connection and collects what comes back until the
 * server closes it (or `timeoutMs` passes). `closed` says whether the server
 * closed it.
 */
const raw = (port: number, text: string, timeoutMs = 5_000) =>
  new Promise<{ readonly data: string; readonly closed: boolean; readonly ms: number }>((resolve) => {
    const started = performance.now()
    const socket = connect({ port, host: "127.0.0.1" })
    let data = ""
    const done = (closed: boolean) => {
      clearTimeout(timer)
      socket.destroy()
      resolve({ data, closed, ms: performance.now() - started })
    }
    const timer = setTimeout(() => done(false), timeoutMs)
    socket.setEncoding("utf8")
    socket.on("data", (chunk: string) => {
      data += chunk
    })
    socket.once("close", () => done(true))
    socket.once("error", () => undefined)
    socket.write(text)
  })

describe("Authorization schemes are case-insensitive (RFC 9110 11.1)", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await serve()
  })

  it("gateway keys: 'bearer', 'BEARER' and 'BeArEr' are accepted; other schemes are not", async () => {
    for (const scheme of ["Bearer", "bearer", "BEARER", "BeArEr"]) {
      const res = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `${scheme} ${GATEWAY_KEY}` },
        body: chat
      })
      expect(res.status, scheme).toBe(200)
      await res.arrayBuffer()
    }
    const models = await fetch(`${server.url}/v1/models`, { headers: { authorization: `bearer ${GATEWAY_KEY}` } })
    expect(models.status).toBe(200)
    const basic = await fetch(`${server.url}/v1/models`, { headers: { authorization: `Basic ${GATEWAY_KEY}` } })
    expect(basic.status).toBe(401)
    expect(openAIError(await basic.text()).code).toBe("invalid_api_key")
  })

  it("the admin key: 'bearer' and 'BEARER' are accepted", async () => {
    for (const scheme of ["Bearer", "bearer", "BEARER"]) {
      const res = await fetch(`${server.url}/admin/upstreams`, { headers: { authorization: `${scheme} ${ADMIN_KEY}` } })
      expect(res.status, scheme).toBe(200)
      await res.arrayBuffer()
    }
    const wrong = await fetch(`${server.url}/admin/upstreams`, { headers: { authorization: `bearer admin-WRONG` } })
    expect(wrong.status).toBe(401)
  })
})

describe("admin paths", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await serve()
  })

  it("a malformed percent-encoding in the upstream name is a 400, not a 500", async () => {
    for (const name of ["%", "%E0%A4%A", "ab%zz"]) {
      const res = await fetch(`${server.url}/admin/upstreams/${name}/reset`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN_KEY}` }
      })
      expect(res.status, name).toBe(400)
      const e = openAIError(await res.text())
      expect(e.type).toBe("invalid_request_error")
      expect(e.message).toContain("percent-encoding")
    }
    // A well-formed encoding of a real name still works.
    const ok = await fetch(`${server.url}/admin/upstreams/${encodeURIComponent(fakes[fakes.length - 1]!.name)}/reset`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_KEY}` }
    })
    expect(ok.status).toBe(200)
    await ok.arrayBuffer()
  })
})

describe("HEAD on the probes", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await serve()
  })

  it("HEAD /healthz and /readyz answer the status with no body; 405s allow HEAD", async () => {
    for (const path of ["/healthz", "/readyz"]) {
      const head = await fetch(`${server.url}${path}`, { method: "HEAD" })
      expect(head.status, path).toBe(200)
      expect(await head.text()).toBe("")
      // On the wire: no body bytes between this response and the next one on the connection.
      const wire = await raw(
        server.port,
        `HEAD ${path} HTTP/1.1\r\nHost: x\r\n\r\nGET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`
      )
      const responses = wire.data.split(/(?=HTTP\/1\.1 )/)
      expect(responses).toHaveLength(2)
      expect(responses[0]).toMatch(/^HTTP\/1\.1 200 /)
      expect(responses[0]!.endsWith("\r\n\r\n")).toBe(true)
      expect(responses[1]).toMatch(/^HTTP\/1\.1 200 [\s\S]*\r\n\r\n\{"status":/)

      const post = await fetch(`${server.url}${path}`, { method: "POST" })
      expect(post.status).toBe(405)
      expect(post.headers.get("allow")).toBe("GET, HEAD")
      expect(openAIError(await post.text()).code).toBe("method_not_allowed")
    }
  })
})
