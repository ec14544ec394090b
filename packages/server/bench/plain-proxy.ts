/**
 * A plain reverse proxy, the benchmarks' reference for what a second
 * loopback hop costs by itself: `node:http` in, undici out, nothing else.
 *
 *   node --import tsx packages/server/bench/plain-proxy.ts --upstream http://127.0.0.1:PORT/v1
 *
 * Each request's body is read whole, sent to `<upstream><path minus /v1>` with
 * one kept-alive undici Agent (undici's `request`, as a hand-written proxy
 * would), and the upstream's body is answered in one write with its
 * content-length. No checks, no log, no metrics. Prints `listening <url>`
 * (ending in /v1) once it listens on 127.0.0.1.
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { Agent, request } from "undici"

const i = process.argv.indexOf("--upstream")
const upstream = i === -1 ? undefined : process.argv[i + 1]
if (upstream === undefined) throw new Error("--upstream URL is required")
const base = upstream.replace(/\/v1\/?$/, "")
const agent = new Agent({ keepAliveTimeout: 30_000 })

const server = createServer((req, res) => {
  const chunks: Array<Buffer> = []
  req.on("data", (c: Buffer) => chunks.push(c))
  req.on("end", () => {
    request(base + req.url!, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer sk-plain" },
      body: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks),
      dispatcher: agent
    }).then(
      async (up) => {
        const text = await up.body.text()
        res.writeHead(up.statusCode, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
        res.end(text)
      },
      () => {
        res.writeHead(502)
        res.end()
      }
    )
  })
})
server.listen(0, "127.0.0.1", () => {
  console.log(`listening http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`)
})
const stop = () => server.close(() => process.exit(0))
process.once("SIGTERM", stop)
process.once("SIGINT", stop)
