import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import { EventEmitter } from "node:events"
import { describe, expect, it } from "vitest"
import * as UnhandledErrors from "../src/UnhandledErrors.js"

const count = (kind: UnhandledErrors.Kind) =>
  Effect.runSync(
    Metric.value(Metric.tagged(UnhandledErrors.unhandled, "kind", kind))
  ).count

describe("UnhandledErrors.install", () => {
  it("logs each error as one JSON line at ERROR, counts it by kind, and uninstalls", () => {
    const target = new EventEmitter()
    const lines: Array<string> = []
    const before = { exception: count("exception"), rejection: count("rejection") }
    const uninstall = UnhandledErrors.install({ target, write: (l) => lines.push(l) })

    const error = Object.assign(new Error("socket went away"), { name: "RequestAbortedError", code: "UND_ERR_ABORTED" })
    target.emit("uncaughtException", error)
    target.emit("unhandledRejection", "a plain string")
    target.emit("unhandledRejection", null)

    expect(lines).toHaveLength(3)
    expect(lines.every((l) => l.endsWith("\n") && !l.slice(0, -1).includes("\n"))).toBe(true)
    const [first, second, third] = lines.map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(first).toMatchObject({
      level: "ERROR",
      msg: "unhandled error",
      kind: "exception",
      error: { name: "RequestAbortedError", message: "socket went away", code: "UND_ERR_ABORTED" }
    })
    expect((first!["error"] as { stack: string }).stack).toContain("UnhandledErrors.test.ts")
    expect(typeof first!["time"]).toBe("string")
    expect(second).toMatchObject({ kind: "rejection", error: { name: "string", message: "a plain string" } })
    expect(third).toMatchObject({ kind: "rejection", error: { name: "null", message: "null" } })
    expect(count("exception") - before.exception).toBe(1)
    expect(count("rejection") - before.rejection).toBe(2)

    uninstall()
    expect(target.listenerCount("uncaughtException")).toBe(0)
    expect(target.listenerCount("unhandledRejection")).toBe(0)
  })

  it("with logging off (log level above ERROR) still counts, writing nothing", () => {
    const target = new EventEmitter()
    const lines: Array<string> = []
    const before = count("exception")
    const uninstall = UnhandledErrors.install({ target, write: (l) => lines.push(l), log: false })
    target.emit("uncaughtException", new Error("quiet"))
    uninstall()
    expect(lines).toEqual([])
    expect(count("exception") - before).toBe(1)
  })

  it("a burst: the first lines per window in full, then one line with how many more; every error counted", () => {
    const target = new EventEmitter()
    const lines: Array<Record<string, unknown>> = []
    let t = 1_000_000
    const timers: Array<{ readonly f: () => void; readonly at: number }> = []
    const before = count("exception")
    const uninstall = UnhandledErrors.install({
      target,
      write: (l) => lines.push(JSON.parse(l) as Record<string, unknown>),
      linesPerWindow: 3,
      windowMs: 10_000,
      now: () => t,
      later: (f, ms) => timers.push({ f, at: t + ms })
    })
    for (let i = 0; i < 10; i++) {
      target.emit("uncaughtException", new Error(`burst ${i}`))
      t += 100
    }
    expect(lines.map((l) => l["msg"])).toEqual(["unhandled error", "unhandled error", "unhandled error"])
    expect(timers).toHaveLength(1)
    expect(timers[0]!.at).toBe(1_000_000 + 10_000)
    t = timers[0]!.at
    timers[0]!.f()
    expect(lines[3]).toMatchObject({ level: "ERROR", msg: "unhandled errors not logged one by one", count: 7, windowMs: 10_000 })
    // A new window logs in full again.
    target.emit("uncaughtException", new Error("next window"))
    expect(lines[4]).toMatchObject({ msg: "unhandled error", error: { message: "next window" } })
    expect(count("exception") - before).toBe(11)
    uninstall()
  })
})
