/**
 * Runs the `breakwater` CLI (`node packages/server/bin/breakwater.js`) as a
 * child process from the repository root, collecting its output.
 */
import * as FakeUpstream from "@breakwater/core/testing/FakeUpstream"
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { connect } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll } from "vitest"

export const ROOT = fileURLToPath(new URL("../../../../", import.meta.url))
export const BIN = "packages/server/bin/breakwater.js"

export interface Exit {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

export interface Cli {
  readonly child: ChildProcess
  /** When the process was spawned (performance.now()). */
  readonly spawnedAt: number
  stdout(): string
  stderr(): string
  readonly exited: Promise<Exit>
  /** Resolves with the first match of `re` on stdout (checked as output arrives). */
  waitForStdout(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>
  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
  stop(graceMs?: number): Promise<Exit>
}

export const cli = (args: ReadonlyArray<string>, env: Record<string, string | undefined> = {}): Cli => {
  const spawnedAt = performance.now()
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let out = ""
  let err = ""
  const listeners = new Set<() => void>()
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    out += chunk
    for (const l of listeners) l()
  })
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    err += chunk
  })
  const exited = new Promise<Exit>((resolve) => {
    child.once("exit", (code, signal) => {
      // Let the pipes flush.
      setTimeout(() => resolve({ code, signal }), 20)
      for (const l of listeners) l()
    })
  })
  let exit: Exit | undefined
  void exited.then((e) => {
    exit = e
  })

  const waitForStdout = (re: RegExp, timeoutMs = 10_000) =>
    new Promise<RegExpMatchArray>((resolve, reject) => {
      const check = () => {
        const m = re.exec(out)
        if (m !== null) {
          done()
          resolve(m)
        } else if (child.exitCode !== null || child.signalCode !== null) {
          done()
          reject(new Error(`process exited (${child.exitCode ?? child.signalCode}) before ${re}\nstdout:\n${out}\nstderr:\n${err}`))
        }
      }
      const timer = setTimeout(() => {
        done()
        reject(new Error(`no ${re} on stdout within ${timeoutMs} ms\nstdout:\n${out}\nstderr:\n${err}`))
      }, timeoutMs)
      const done = () => {
        clearTimeout(timer)
        listeners.delete(check)
      }
      listeners.add(check)
      check()
    })

  const stop = async (graceMs = 5_000): Promise<Exit> => {
    if (exit !== undefined) return exit
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM")
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs)
    const e = await exited
    clearTimeout(timer)
    return e
  }

  return { child, spawnedAt, stdout: () => out, stderr: () => err, exited, waitForStdout, stop }
}

/** Runs the CLI to completion. */
export const runCli = async (args: ReadonlyArray<string>, timeoutMs = 15_000) => {
  const p = cli(args)
  const timer = setTimeout(() => p.child.kill("SIGKILL"), timeoutMs)
  const exit = await p.exited
  clearTimeout(timer)
  return { ...exit, stdout: p.stdout(), stderr: p.stderr() }
}

/** Polls `url` until it answers 200; resolves with the time since `since` (performance.now()). */
export const waitFor200 = async (url: string, since: number, timeoutMs = 10_000): Promise<number> => {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) })
      await res.arrayBuffer()
      if (res.status === 200) return performance.now() - since
    } catch {
      // not listening yet
    }
    if (performance.now() > deadline) throw new Error(`${url} did not answer 200 within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** Tries a fresh TCP connection: "connected", or the error code (e.g. ECONNREFUSED). */
export const tryConnect = (port: number): Promise<string> =>
  new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1" })
    socket.setTimeout(2_000)
    socket.once("connect", () => {
      socket.destroy()
      resolve("connected")
    })
    socket.once("timeout", () => {
      socket.destroy()
      resolve("timeout")
    })
    socket.once("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message))
  })

/**
 * The fakes and config files of a test file that runs the CLI: a temporary
 * folder for configs, fakes in this process; both gone after the file.
 */
export const processBed = (name: string) => {
  const dir = mkdtempSync(join(tmpdir(), `breakwater-${name}-`))
  const fakes: Array<FakeUpstream.FakeUpstream> = []
  afterAll(async () => {
    await Promise.all(fakes.map((f) => f.close()))
    rmSync(dir, { recursive: true, force: true })
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
  /** Writes `text` to `file` in the folder; its path. */
  const file = (file: string, text: string): string => {
    const path = join(dir, file)
    writeFileSync(path, text)
    return path
  }
  return { dir, fake, file }
}
