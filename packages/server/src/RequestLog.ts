/**
 * The request log: one line per request, written the cheap way.
 *
 * Each request's line is a plain object, turned into a line of the server's
 * log format (Log.ts) at once, and kept in a buffer; the lines of one turn of
 * the event loop go out in one `write`, at `setImmediate`. Under load that is
 * one system call for dozens of requests instead of one each, and no Effect
 * logger (with its annotations map and fiber references) on a request's path.
 * `Effect.log*` stays for everything else the server says.
 *
 * No line is lost: the buffer is flushed when the layer's scope closes (the
 * server's shutdown) and, as a last resort, when the process exits. A buffer
 * past `maxBufferBytes` is flushed at once.
 *
 * Levels: the handler decides whether a line is written (it knows the level
 * in force for its config, which a reload may change); this module writes.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as Log from "./Log.js"

export interface RequestLog {
  /**
   * Writes `fields` as one line with `level` (Effect's label: `INFO`,
   * `WARN`) and message `msg`, in the log format, before this turn of the
   * event loop ends. Undefined fields are left out.
   */
  readonly write: (level: string, msg: string, fields: Record<string, unknown>) => void
  /** Writes what is buffered now. */
  readonly flush: () => void
}

export const RequestLog = Context.GenericTag<RequestLog>("@breakwater/server/RequestLog")

export interface Options {
  /** `json` (the default) or `pretty`, as Log.ts formats them. */
  readonly format?: Log.Format | undefined
  /** Where the lines go; default `process.stdout.write` (looked up at each write). */
  readonly sink?: ((chunk: string) => void) | undefined
  /** A buffer this large is written at once, without waiting for the turn's end. Default 64 KiB. */
  readonly maxBufferBytes?: number | undefined
}

const stdout = (chunk: string): void => {
  process.stdout.write(chunk)
}

/** One JSON line: the fields after `time`, `level` and `msg`, one `JSON.stringify` in all. */
const jsonLine = (level: string, msg: string, fields: Record<string, unknown>): string => {
  const rest = JSON.stringify(fields)
  const head = `{"time":"${new Date().toISOString()}","level":"${level}","msg":${JSON.stringify(msg)}`
  return rest.length <= 2 ? `${head}}\n` : `${head},${rest.slice(1)}\n`
}

/** A request log writing to `sink`; `flush` writes what is pending (call it before exiting). */
export const make = (options: Options = {}): RequestLog => {
  const format = options.format ?? "json"
  const sink = options.sink ?? stdout
  const max = options.maxBufferBytes ?? 65_536
  let buffer = ""
  let scheduled: NodeJS.Immediate | undefined

  const flush = (): void => {
    if (scheduled !== undefined) {
      clearImmediate(scheduled)
      scheduled = undefined
    }
    if (buffer === "") return
    const chunk = buffer
    buffer = ""
    try {
      sink(chunk)
    } catch {
      // stdout closed: nowhere to say it
    }
  }
  const onImmediate = (): void => {
    scheduled = undefined
    flush()
  }

  const write = (level: string, msg: string, fields: Record<string, unknown>): void => {
    buffer += format === "json"
      ? jsonLine(level, msg, fields)
      : Log.format("pretty", new Date(), level, msg, Object.entries(fields))
    if (buffer.length >= max) flush()
    else if (scheduled === undefined) scheduled = setImmediate(onImmediate)
  }

  return { write, flush }
}

/**
 * A request log for the life of the scope: flushed when the scope closes,
 * and at the process's exit should that come first.
 */
export const scoped = (options: Options = {}): Effect.Effect<RequestLog, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const log = make(options)
      process.on("exit", log.flush)
      return log
    }),
    (log) =>
      Effect.sync(() => {
        process.off("exit", log.flush)
        log.flush()
      })
  )

/** The request log as a layer (see {@link scoped}). */
export const layer = (options: Options = {}): Layer.Layer<RequestLog> => Layer.scoped(RequestLog, scoped(options))
