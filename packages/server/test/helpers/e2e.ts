/**
 * Helpers for the end-to-end tests: the real server in-process on
 * 127.0.0.1 (port 0), configs from YAML, and a capture of everything the
 * tests see (response status, headers and bodies) and of the server's log
 * lines, so that a test can check that no secret leaks anywhere.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import type * as Tracer from "effect/Tracer"
import { createServer } from "node:net"
import OpenAI, { APIError } from "openai"
import { afterAll, beforeAll } from "vitest"
import * as Config from "../../src/Config.js"
import * as Server from "../../src/Server.js"

// ---------------------------------------------------------------------------
// capture

export interface Captured {
  /** One entry per response: "<status> <url>\n<headers as JSON>\n<body>". */
  readonly responses: Array<Promise<string>>
  /** Every line the servers logged (through Effect's Console, or written to stdout while captured). */
  readonly logs: Array<string>
}

export const captured: Captured = { responses: [], logs: [] }

/** Records a response (headers now, body when it has been read in full). */
export const record = (url: string, res: Response): void => {
  const head = `${res.status} ${url}\n${JSON.stringify([...res.headers.entries()])}\n`
  let body: Promise<string>
  try {
    body = res.clone().text().catch((e: unknown) => `<body unreadable: ${String(e)}>`)
  } catch (e) {
    body = Promise.resolve(`<body not cloneable: ${String(e)}>`)
  }
  captured.responses.push(body.then((text) => head + text))
}

const urlOf = (input: Parameters<typeof fetch>[0]): string =>
  typeof input === "string" ? input : input instanceof URL ? input.href : input.url

/** `fetch`, recording every response. Also given to the OpenAI SDK. */
export const recordingFetch = async (input: Parameters<typeof fetch>[0], init?: Parameters<typeof fetch>[1]): Promise<Response> => {
  const res = await fetch(input, init)
  record(urlOf(input), res)
  return res
}

/** Everything captured so far, as one string (waits for the bodies). */
/** A request's log line (by its x-request-id), once written: waits up to 2 s for it. */
export const lineOf = async (requestId: string): Promise<Record<string, unknown>> => {
  for (let i = 0; i < 100; i++) {
    const line = captured.logs.find((l) => l.includes(`"requestId":"${requestId}"`))
    if (line !== undefined) return JSON.parse(line) as Record<string, unknown>
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`no log line for ${requestId}`)
}

export const everything = async (): Promise<{ responses: string; logs: string }> => ({
  responses: (await Promise.all(captured.responses)).join("\n----\n"),
  logs: captured.logs.join("\n")
})

const line = (...args: ReadonlyArray<unknown>) => {
  captured.logs.push(args.map((a) => typeof a === "string" ? a : JSON.stringify(a) ?? String(a)).join(" "))
}

/**
 * Sends what is written to `process.stdout` (where the server writes its JSON
 * log lines) to `captured.logs` instead, line by line. Returns the undo.
 */
export const captureStdout = (): (() => void) => {
  const original = process.stdout.write
  let pending = ""
  const write = (chunk: string | Uint8Array, ...rest: Array<unknown>): boolean => {
    pending += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8")
    for (let nl = pending.indexOf("\n"); nl >= 0; nl = pending.indexOf("\n")) {
      captured.logs.push(pending.slice(0, nl))
      pending = pending.slice(nl + 1)
    }
    const callback = rest.find((r): r is () => void => typeof r === "function")
    if (callback !== undefined) queueMicrotask(callback)
    return true
  }
  process.stdout.write = write as typeof process.stdout.write
  return () => {
    process.stdout.write = original
    if (pending !== "") captured.logs.push(pending)
    pending = ""
  }
}

/** A Console whose unsafe side (what loggers write through) goes to `captured.logs`. */
const capturingConsole: Console.Console = (() => {
  const base = Effect.runSync(Console.consoleWith(Effect.succeed))
  return {
    ...base,
    unsafe: { ...base.unsafe, log: line, info: line, warn: line, error: line, debug: line, trace: line }
  }
})()

// ---------------------------------------------------------------------------
// server

export interface TestServer {
  readonly url: string
  readonly port: number
  readonly running: Server.Running
  readonly config: Config.ServerConfig
  /** Drains (briefly) and closes the server. */
  readonly close: () => Promise<void>
}

/** Parses YAML the way the CLI does (no env), or throws with the problems. */
export const configOf = (yaml: string): Config.ServerConfig => {
  const parsed = Config.parse(yaml, { file: "test", env: {} })
  if (Either.isLeft(parsed)) throw new Error(parsed.left.message)
  return parsed.right
}

/** On 127.0.0.1, port 0 (a free one), whatever the config says. */
const local = (config: Config.ServerConfig): Config.ServerConfig => ({
  ...config,
  server: { ...config.server, host: "127.0.0.1", port: 0 }
})

export interface StartOptions extends Omit<Server.ServeOptions, "reload"> {
  /** The tracer of the runtime the server is started in (requests inherit it unless traces are on). */
  readonly tracer?: Tracer.Tracer | undefined
  /**
   * A reload reads this file (with the same host and port overrides, as the
   * CLI's `--host`/`--port` would).
   */
  readonly reloadFrom?: string | undefined
}

/** Serves `yaml` on 127.0.0.1, port 0 (whatever the YAML says), logs captured. */
export const startServer = async (yaml: string, options: StartOptions = {}): Promise<TestServer> => {
  const config = local(configOf(yaml))
  const file = options.reloadFrom
  const reload = file === undefined ? undefined : { file, load: Effect.map(Config.load(file, {}), local) }
  const scope = Effect.runSync(Scope.make())
  const { reloadFrom: _, tracer: __, ...serveOptions } = options
  const serving = Server.serve(config, { ...serveOptions, reload }).pipe(
    Scope.extend(scope),
    Effect.withConsole(capturingConsole)
  )
  const running = await Effect.runPromise(
    options.tracer === undefined ? serving : Effect.withTracer(serving, options.tracer)
  ).catch(async (e: unknown) => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    throw e
  })
  const address = running.server.address()
  if (typeof address !== "object" || address === null) throw new Error("the server has no TCP address")
  const url = `http://127.0.0.1:${address.port}`
  let closed: Promise<void> | undefined
  const close = () => {
    closed ??= Server.drain(running, "500 millis").then(() => Effect.runPromise(Scope.close(scope, Exit.void)))
    return closed
  }
  return { url, port: address.port, running, config, close }
}

// ---------------------------------------------------------------------------
// misc

/** A TCP port that was free a moment ago on 127.0.0.1. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once("error", reject)
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      srv.close(() => resolve(port))
    })
  })

/** Asserts an OpenAI error body: exactly `{"error":{"message","type","param","code"}}`. */
export const openAIError = (text: string): { message: string; type: string; param: string | null; code: string | null } => {
  const body = JSON.parse(text) as Record<string, unknown>
  if (Object.keys(body).join(",") !== "error") throw new Error(`not an OpenAI error body: ${text}`)
  const error = body["error"] as Record<string, unknown>
  if (Object.keys(error).sort().join(",") !== "code,message,param,type") throw new Error(`not an OpenAI error object: ${text}`)
  const { code, message, param, type } = error
  if (typeof message !== "string" || message === "") throw new Error(`error.message is not a string: ${text}`)
  if (typeof type !== "string") throw new Error(`error.type is not a string: ${text}`)
  if (param !== null && typeof param !== "string") throw new Error(`error.param is not a string or null: ${text}`)
  if (code !== null && typeof code !== "string") throw new Error(`error.code is not a string or null: ${text}`)
  return { message, type, param, code }
}

// ---------------------------------------------------------------------------
// a test file's bed

/**
 * The fakes and servers of one test file: stdout is captured while the file
 * runs (the servers' log lines land in `captured.logs`), and everything
 * started through `fake` and `serve` is closed after the file.
 */
export const testBed = () => {
  const fakes: Array<FakeUpstream.FakeUpstream> = []
  const servers: Array<TestServer> = []
  let restoreStdout: (() => void) | undefined
  beforeAll(() => {
    restoreStdout = captureStdout()
  })
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.close()))
    await Promise.all(fakes.map((f) => f.close()))
    restoreStdout?.()
  })
  const fake = async (
    name: string,
    faults: FakeUpstream.Faults = {},
    options: Partial<FakeUpstream.Options> = {}
  ): Promise<FakeUpstream.FakeUpstream> => {
    const f = await FakeUpstream.start({ name, faults, ...options })
    fakes.push(f)
    return f
  }
  const serve = async (yaml: string, options?: StartOptions): Promise<TestServer> => {
    const s = await startServer(yaml, options)
    servers.push(s)
    return s
  }
  return { fakes, fake, serve }
}

/** The openai SDK's error from a call expected to fail (a success fails the test). */
export const thrown = async (f: () => Promise<unknown>): Promise<APIError> => {
  try {
    await f()
  } catch (e) {
    if (e instanceof APIError) return e
    throw e
  }
  throw new Error("expected a failure, got a success")
}

/**
 * The official `openai` SDK against a test server: no retries of its own, a
 * 10 s timeout, every response recorded (see {@link recordingFetch}).
 */
export const sdkFor = (server: TestServer, apiKey: string, headers: Record<string, string> = {}): OpenAI =>
  new OpenAI({
    baseURL: `${server.url}/v1`,
    apiKey,
    maxRetries: 0,
    timeout: 10_000,
    fetch: recordingFetch,
    defaultHeaders: headers
  })
