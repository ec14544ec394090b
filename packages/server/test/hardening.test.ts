/**
 * The server's edges, over real HTTP on 127.0.0.1 (in-process server, fake
 * upstream): authorization schemes, malformed admin paths, HEAD on the
 * probes, connection limits and timeouts for slow or endless requests.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { connect } from "node:net"
import { beforeAll, describe, expect, it } from "vitest"
import * as Server from "../src/Server.js"
import { openAIError, testBed, type TestServer } from "./helpers/e2e.js"

const UPSTREAM_KEY = "sk-upstream-SECRET-hardening"
const GATEWAY_KEY = "gw-key-HARDENING-SECRET-1"
const ADMIN_KEY = "admin-key-HARDENING-SECRET-2"

const { fakes, fake, serve: startTracked } = testBed()

const yamlFor = (upstream: FakeUpstream.FakeUpstream, server = "") => `
server: { adminKey: "${ADMIN_KEY}"${server === "" ? "" : `, ${server}`} }
keys:
  - { name: team, key: "${GATEWAY_KEY}" }
upstreams:
  - { name: ${upstream.name}, baseUrl: "${upstream.url}", apiKey: "${UPSTREAM_KEY}", models: [gpt-4.1] }
`

const serve = async (server = "") => {
  const upstream = await fake(`hardening-${fakes.length}`)
  return startTracked(yamlFor(upstream, server))
}

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

/** One kept-alive connection that sends requests one at a time and reads each response. */
const keptAlive = (port: number) => {
  const socket = connect({ port, host: "127.0.0.1" })
  let buffer = ""
  let closed = false
  let waiting: (() => void) | undefined
  socket.setEncoding("utf8")
  socket.on("data", (chunk: string) => {
    buffer += chunk
    waiting?.()
  })
  socket.once("close", () => {
    closed = true
    waiting?.()
  })
  socket.once("error", () => undefined)
  /** Sends a GET and resolves with the status line, or "closed". */
  const get = (path: string, timeoutMs = 3_000) =>
    new Promise<string>((resolve) => {
      buffer = ""
      const timer = setTimeout(() => finish("timeout"), timeoutMs)
      const finish = (result: string) => {
        clearTimeout(timer)
        waiting = undefined
        resolve(result)
      }
      waiting = () => {
        const m = /^HTTP\/1\.1 (\d{3})[^\r]*\r\n[\s\S]*?content-length: (\d+)\r\n[\s\S]*?\r\n\r\n/i.exec(buffer)
        if (m !== null && buffer.length >= m[0].length + Number(m[2])) finish(m[1]!)
        else if (closed) finish("closed")
      }
      if (closed) finish("closed")
      else socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`)
    })
  return { socket, get, isClosed: () => closed }
}

const metricValue = async (url: string, series: string): Promise<number> => {
  const text = await (await fetch(`${url}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

describe("connection limits (server.maxConnections)", { timeout: 10_000 }, () => {
  let server: TestServer
  beforeAll(async () => {
    server = await serve("maxConnections: 3")
  })

  it("over maxConnections a new connection is closed at once, while the open ones keep working", async () => {
    const open = [keptAlive(server.port), keptAlive(server.port), keptAlive(server.port)]
    try {
      for (const c of open) expect(await c.get("/healthz")).toBe("200")
      // The fourth is accepted by the kernel and closed by the server without an answer.
      const fourth = await raw(server.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 3_000)
      expect(fourth.closed).toBe(true)
      expect(fourth.data).toBe("")
      // The open ones still work.
      for (const c of open) expect(await c.get("/readyz")).toBe("200")
      // Once one goes away, a new connection is served again.
      open[0]!.socket.destroy()
      let status = "closed"
      for (let i = 0; i < 50 && status === "closed"; i++) {
        await new Promise((r) => setTimeout(r, 20))
        const again = keptAlive(server.port)
        status = await again.get("/healthz")
        if (status === "200") {
          // Counted, over one of the kept-alive connections (the server is full again).
          expect(await open[1]!.get("/healthz")).toBe("200")
          again.socket.destroy()
        }
      }
      expect(status).toBe("200")
    } finally {
      for (const c of open) c.socket.destroy()
    }
    await new Promise((r) => setTimeout(r, 50))
    expect(await metricValue(server.url, "breakwater_connections_refused_total")).toBeGreaterThanOrEqual(1)
  })
})

describe("maxConnections against the open-files limit", () => {
  const limits = (soft: string) =>
    `Limit                     Soft Limit           Hard Limit           Units     \n` +
    `Max processes             63704                63704                processes \n` +
    `Max open files            ${soft}                ${soft}                files     \n`

  it("warns when maxConnections plus a reserve for upstreams would not fit, naming both numbers", () => {
    expect(Server.openFilesWarning(limits("20000"), 10_000)).toBeUndefined()
    expect(Server.openFilesWarning(limits("11024"), 10_000)).toBeUndefined()
    const warning = Server.openFilesWarning(limits("4096"), 10_000)
    expect(warning).toContain("server.maxConnections (10000)")
    expect(warning).toContain("open-files limit (4096)")
    expect(warning).toContain("Lower maxConnections to 3072")
    expect(Server.openFilesWarning(limits("unlimited"), 10_000)).toBeUndefined()
    expect(Server.openFilesWarning("", 10_000)).toBeUndefined() // not Linux
  })
})

describe("slow and endless requests (server.bodyTimeout, headersTimeout, keepAliveTimeout)", { timeout: 10_000 }, () => {
  let server: TestServer
  beforeAll(async () => {
    server = await serve("bodyTimeout: 1s, headersTimeout: 1s, keepAliveTimeout: 1500ms")
  })

  const post = (auth: string, contentLength: number, sent: string) =>
    `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${auth}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${contentLength}\r\n\r\n${sent}`

  it("a body that never ends gets 408 with an OpenAI error after bodyTimeout, and its connection is closed", async () => {
    const r = await raw(server.port, post(GATEWAY_KEY, 1_000, `{"model":"gpt-4.1",`), 6_000)
    expect(r.closed).toBe(true)
    expect(r.ms).toBeGreaterThanOrEqual(900)
    expect(r.ms).toBeLessThan(2_500)
    expect(r.data).toMatch(/^HTTP\/1\.1 408 /)
    expect(r.data.toLowerCase()).toContain("connection: close")
    const e = openAIError(r.data.slice(r.data.indexOf("\r\n\r\n") + 4))
    expect(e).toMatchObject({ type: "invalid_request_error", code: "request_timeout" })
    expect(e.message).toContain("1s")
    // Nothing is held: no request in flight, and the upstream was never called.
    expect(server.running.inFlight()).toBe(0)
    expect(fakes[fakes.length - 1]!.counters().chat).toBe(0)
    expect(await metricValue(server.url, `breakwater_client_errors_total{status="408"}`)).toBeGreaterThanOrEqual(1)
  })

  it("a body that never ends after an early answer (a wrong key) is cut after bodyTimeout too", async () => {
    const r = await raw(server.port, post("gw-key-WRONG", 1_000, "{"), 6_000)
    expect(r.data).toMatch(/^HTTP\/1\.1 401 /)
    expect(r.closed).toBe(true)
    expect(r.ms).toBeLessThan(2_500)
  })

  it("headers that never end, and a connection that sends nothing, are closed after headersTimeout", async () => {
    const [partial, silent] = await Promise.all([
      raw(server.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n", 6_000),
      raw(server.port, "", 6_000)
    ])
    for (const r of [partial, silent]) {
      expect(r.closed).toBe(true)
      expect(r.ms).toBeGreaterThanOrEqual(900)
      expect(r.ms).toBeLessThan(2_500)
    }
    expect(partial.data).toMatch(/^HTTP\/1\.1 408 /)
    expect(openAIError(partial.data.slice(partial.data.indexOf("\r\n\r\n") + 4)).code).toBe("request_timeout")
    // Nothing is written to a connection that never sent a byte (a client's pre-opened connection).
    expect(silent.data).toBe("")
  })

  it("what the HTTP parser refuses is answered as an OpenAI error: 400 not HTTP, 431 headers too large", async () => {
    const garbage = await raw(server.port, "HELLO THERE\r\n\r\n")
    expect(garbage.data).toMatch(/^HTTP\/1\.1 400 /)
    expect(openAIError(garbage.data.slice(garbage.data.indexOf("\r\n\r\n") + 4)).code).toBe("bad_request")
    expect(garbage.closed).toBe(true)
    const huge = await raw(server.port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`)
    expect(huge.data).toMatch(/^HTTP\/1\.1 431 /)
    expect(openAIError(huge.data.slice(huge.data.indexOf("\r\n\r\n") + 4)).code).toBe("headers_too_large")
    expect(await metricValue(server.url, `breakwater_client_errors_total{status="400"}`)).toBeGreaterThanOrEqual(1)
    expect(await metricValue(server.url, `breakwater_client_errors_total{status="431"}`)).toBeGreaterThanOrEqual(1)
  })

  it("an idle kept-alive connection is closed after keepAliveTimeout, not before", async () => {
    const c = keptAlive(server.port)
    const res = await fetch(`${server.url}/healthz`)
    expect(res.headers.get("keep-alive")).toBe("timeout=1")
    await res.arrayBuffer()
    expect(await c.get("/healthz")).toBe("200")
    const t0 = performance.now()
    await new Promise((r) => setTimeout(r, 1_400))
    // Still open after 1.4 s (longer than headersTimeout: an idle connection is not a slow request).
    expect(c.isClosed()).toBe(false)
    for (let i = 0; i < 150 && !c.isClosed(); i++) await new Promise((r) => setTimeout(r, 20))
    expect(c.isClosed()).toBe(true)
    // Node keeps it 1 s past what it advertises, so that the client, not the server, closes first.
    expect(performance.now() - t0).toBeLessThan(3_200)
  })
})
