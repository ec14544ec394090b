/**
 * A throwaway `redis-server` for tests: on 127.0.0.1, a free port, no
 * persistence. `stop()` kills it (SIGKILL by default: a crash, not a clean
 * shutdown) and `restart()` starts a new, empty one on the same port.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { createConnection, createServer } from "node:net"

/** Whether `redis-server` is on the PATH. */
export const available: boolean = (() => {
  try {
    return spawnSync("redis-server", ["--version"], { stdio: "ignore" }).status === 0
  } catch {
    return false
  }
})()

export interface RedisServer {
  readonly port: number
  /** `redis://127.0.0.1:<port>` (db 0); append `/<db>` for another database. */
  readonly url: string
  readonly running: () => boolean
  readonly stop: (signal?: NodeJS.Signals) => Promise<void>
  /** Starts a new (empty) server on the same port; stops the current one first if needed. */
  readonly restart: () => Promise<void>
}

/** A port nothing listens on (at the time of asking). */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

/** One PING over a raw socket: true on `+PONG`. */
const ping = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port })
    let reply = ""
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(200, () => done(false))
    socket.once("error", () => done(false))
    socket.once("connect", () => socket.write("PING\r\n"))
    socket.on("data", (chunk) => {
      reply += chunk.toString("utf8")
      if (reply.includes("\r\n")) done(reply.startsWith("+PONG"))
    })
  })

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export const start = async (): Promise<RedisServer> => {
  const port = await freePort()
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()

  const launch = async () => {
    const proc = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"],
      { stdio: "ignore" }
    )
    child = proc
    exited = new Promise((resolve) => proc.once("exit", () => resolve()))
    const deadline = Date.now() + 5000
    while (Date.now() < deadline) {
      if (proc.exitCode !== null) throw new Error(`redis-server exited with code ${proc.exitCode}`)
      if (await ping(port)) return
      await sleep(20)
    }
    proc.kill("SIGKILL")
    throw new Error(`redis-server did not answer PING on port ${port}`)
  }

  const running = () => child !== undefined && child.exitCode === null && child.signalCode === null

  const stop = async (signal: NodeJS.Signals = "SIGKILL") => {
    if (running()) child?.kill(signal)
    await exited
    child = undefined
  }

  // Never leave a server behind, whatever happens to the test run.
  process.once("exit", () => {
    if (running()) child?.kill("SIGKILL")
  })

  await launch()
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    running,
    stop,
    restart: async () => {
      await stop()
      await launch()
    }
  }
}
