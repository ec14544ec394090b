/**
 * The process's last line of defence: an error that nothing else caught (an
 * `'error'` event without a listener, a rejected promise nobody awaited) is
 * logged at ERROR as one JSON line with its name, message, code and stack,
 * counted in `breakwater_unhandled_errors_total{kind}`, and the process
 * keeps serving. No client action may end the gateway; each such error is a
 * bug to fix, hence a log line and a metric to alert on, never silence.
 *
 * A burst is logged in part so that a client cannot fill the disk through
 * it: at most 20 lines with the stack per 10 s, then one line at the end of
 * the 10 s with how many more there were (every one is counted).
 *
 * Installed by the CLI when it serves (main.ts), not by `Server.serve`: a
 * process-wide handler is the application's decision, not a library's.
 */
import * as Metric from "effect/Metric"

/** `breakwater_unhandled_errors_total`, tagged `kind`: exception or rejection. */
export const unhandled = Metric.counter("breakwater_unhandled_errors_total", {
  description: "Errors nothing else caught (uncaught exceptions, unhandled rejections); the process kept serving",
  incremental: true
})
const byKind = {
  exception: Metric.tagged(unhandled, "kind", "exception"),
  rejection: Metric.tagged(unhandled, "kind", "rejection")
}

export type Kind = keyof typeof byKind

/** What is logged of a thrown value: an Error's name, message, code and stack; anything else, its type and text. */
export const describeError = (u: unknown): {
  readonly name: string
  readonly message: string
  readonly code?: string
  readonly stack?: string
} => {
  if (u instanceof Error) {
    const code = (u as { readonly code?: unknown }).code
    return {
      name: u.name,
      message: u.message,
      ...(typeof code === "string" ? { code } : {}),
      ...(u.stack === undefined ? {} : { stack: u.stack })
    }
  }
  let message: string
  try {
    message = String(u)
  } catch {
    message = "(a value that cannot be shown)"
  }
  return { name: u === null ? "null" : typeof u, message: message.slice(0, 1_000) }
}

/** Where the handlers go (the process, or a stand-in in tests). */
export interface Target {
  on(event: "uncaughtException" | "unhandledRejection", listener: (error: unknown) => void): unknown
  off(event: "uncaughtException" | "unhandledRejection", listener: (error: unknown) => void): unknown
}

export interface Options {
  readonly target?: Target | undefined
  /** Writes one log line; stdout (with the request log) by default. */
  readonly write?: ((line: string) => void) | undefined
  /** False when the log level is above ERROR: the error is then only counted. */
  readonly log?: boolean | undefined
  /** Lines with the error in full per window (20); the rest are summed up at the window's end. */
  readonly linesPerWindow?: number | undefined
  /** The window, in ms (10 s). */
  readonly windowMs?: number | undefined
  /** The clock and the timer, for tests. */
  readonly now?: (() => number) | undefined
  readonly later?: ((f: () => void, ms: number) => void) | undefined
}

/** Installs the handlers; returns their removal. */
export const install = (options: Options = {}): () => void => {
  const target: Target = options.target ?? process
  const write = options.write ?? ((line: string) => process.stdout.write(line))
  const log = options.log ?? true
  const linesPerWindow = options.linesPerWindow ?? 20
  const windowMs = options.windowMs ?? 10_000
  const now = options.now ?? Date.now
  const later = options.later ?? ((f: () => void, ms: number) => setTimeout(f, ms).unref())
  let windowStart = -Infinity
  let logged = 0
  let more = 0
  const writeSafely = (line: string) => {
    try {
      write(line + "\n")
    } catch {
      // Nowhere to write (stdout closed): still counted.
    }
  }
  const endWindow = () => {
    if (more > 0) {
      writeSafely(JSON.stringify({
        time: new Date(now()).toISOString(),
        level: "ERROR",
        msg: "unhandled errors not logged one by one",
        count: more,
        windowMs
      }))
    }
    more = 0
  }
  const handle = (kind: Kind) => (error: unknown) => {
    byKind[kind].unsafeUpdate(1, [])
    if (!log) return
    const t = now()
    if (t - windowStart >= windowMs) {
      windowStart = t
      logged = 0
    }
    if (logged >= linesPerWindow) {
      if (more++ === 0) later(endWindow, Math.max(0, windowStart + windowMs - t))
      return
    }
    logged++
    let line: string
    try {
      line = JSON.stringify({
        time: new Date(t).toISOString(),
        level: "ERROR",
        msg: "unhandled error",
        kind,
        error: describeError(error)
      })
    } catch {
      line = JSON.stringify({ time: new Date(t).toISOString(), level: "ERROR", msg: "unhandled error", kind })
    }
    writeSafely(line)
  }
  const exception = handle("exception")
  const rejection = handle("rejection")
  target.on("uncaughtException", exception)
  target.on("unhandledRejection", rejection)
  return () => {
    target.off("uncaughtException", exception)
    target.off("unhandledRejection", rejection)
  }
}
