/**
 * The server's log output: one entry per line on stdout, in one format for
 * everything the process says (request logs, Effect log messages, warnings,
 * the CLI's start and drain messages, errors nothing else caught).
 *
 * - `json` (the default): one JSON object per line — `time`, `level`, `msg`
 *   and the entry's annotations as top-level fields (`cause` when there is
 *   one). Flat on purpose: it is written for every request, and Effect's
 *   `jsonLogger` (which nests and inspects every value) costs several times
 *   more.
 * - `pretty`: for people at a terminal — `HH:MM:SS.mmm LEVEL message
 *   key=value ...` in local time, a request's fields in a fixed order, null
 *   ones left out; strings with spaces, and objects, quoted as JSON. A
 *   multi-line message (a config error, the demo's banner) keeps its lines.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Logger from "effect/Logger"

export type Format = "json" | "pretty"

export const FORMATS: ReadonlyArray<Format> = ["json", "pretty"]

/** Where lines go: stdout, where the request log always was. */
const stdout = (line: string): void => {
  process.stdout.write(line)
}

const pad = (n: number, width = 2) => String(n).padStart(width, "0")

const clock = (date: Date) =>
  `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`

const FIRST = ["requestId", "method", "path", "status", "key", "model", "upstream", "attempts", "latencyMs", "cache", "costUsd"]
const rank = (key: string): number => {
  const i = FIRST.indexOf(key)
  return i === -1 ? FIRST.length : i
}

const PLAIN = /^[^\s"=]+$/

const prettyValue = (v: unknown): string => {
  if (typeof v === "string") return PLAIN.test(v) ? v : JSON.stringify(v)
  if (v === null || typeof v === "number" || typeof v === "boolean") return String(v)
  return JSON.stringify(v) ?? String(v)
}

/**
 * One entry as a line (with its newline). `level` is Effect's label (`INFO`,
 * `WARN`, ...). Undefined fields are left out.
 */
export const format = (
  fmt: Format,
  date: Date,
  level: string,
  msg: string,
  fields: Iterable<readonly [string, unknown]> = [],
  cause?: string
): string => {
  if (fmt === "json") {
    const line: Record<string, unknown> = { time: date.toISOString(), level, msg }
    for (const [k, v] of fields) if (v !== undefined) line[k] = v
    if (cause !== undefined) line["cause"] = cause
    return JSON.stringify(line) + "\n"
  }
  let line = `${clock(date)} ${level.padEnd(5)} ${msg}`
  // Annotations come in hash order: a request's line reads better in this one.
  const sorted = [...fields].sort(([a], [b]) => rank(a) - rank(b))
  for (const [k, v] of sorted) if (v !== undefined && v !== null) line += ` ${k}=${prettyValue(v)}`
  if (cause !== undefined) line += `\n  ${cause.split("\n").join("\n  ")}`
  return line + "\n"
}

/** An Effect logger writing `fmt` lines to `write` (stdout by default). */
export const logger = (fmt: Format, write: (line: string) => void = stdout): Logger.Logger<unknown, void> =>
  Logger.make(({ annotations, cause, date, logLevel, message }) => {
    const msg = Array.isArray(message) ? message.map(String).join(" ") : String(message)
    write(format(fmt, date, logLevel.label, msg, annotations, cause._tag === "Empty" ? undefined : Cause.pretty(cause)))
  })

/**
 * Writes one entry now, outside any Effect (a signal handler about to exit
 * the process, the guard for errors nothing else caught). Never throws.
 */
export const writeNow = (
  fmt: Format,
  level: string,
  msg: string,
  fields: Record<string, unknown> = {},
  write: (line: string) => void = stdout
): void => {
  try {
    write(format(fmt, new Date(), level, msg, Object.entries(fields)))
  } catch {
    // stdout closed: nowhere to say it
  }
}

/**
 * A JSON line (as `UnhandledErrors` writes them) in `fmt`: as it is for
 * `json`, re-rendered for `pretty`.
 */
export const reformat = (fmt: Format, jsonLine: string): string => {
  if (fmt === "json") return jsonLine
  try {
    const { level, msg, time, ...fields } = JSON.parse(jsonLine) as Record<string, unknown>
    return format(fmt, new Date(String(time)), String(level), String(msg), Object.entries(fields))
  } catch {
    return jsonLine
  }
}
