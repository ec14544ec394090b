/**
 * A simulation scenario: simulated upstreams (latency, faults, quotas,
 * outages, prices), a workload, and the Breakwater config to run it through.
 *
 * ```yaml
 * name: example                 # default: the file's name
 * description: what it shows    # optional, free text
 * duration: 1h                  # simulated time during which requests arrive
 * seed: 42                      # default 1; `--seed` overrides
 * directTimeout: 30s            # the direct client's timeout (default 30s)
 * upstreams:                    # the first is the "direct" column's only upstream
 *   - name: primary
 *     latency: { p50: 300ms, p99: 2s }   # lognormal fitted to these two
 *     errorLatency: 50ms        # how fast errors come back (default 50ms)
 *     rate429: 0.123            # share of calls answered 429
 *     retryAfter: 2s            # Retry-After on those 429s (optional)
 *     quota: { requestsPerMinute: 3000, tokensPerMinute: 400000 }  # per clock minute; 429 + Retry-After beyond
 *     rate5xx: 0.01             # share answered 503
 *     hang: 0.001               # share never answered
 *     stalls: { share: 0.015, latency: { p50: 2.5s, p99: 5s } }   # a share of the answers that
 *                               # take this latency instead: a tail made of rare stalls (optional)
 *     outages: [{ from: 10m, to: 20m, mode: error }]   # mode: error (503, default) or hang;
 *                               # share: 0.5 makes it a partial outage (half the calls fail)
 *     price: { input: 2.00, output: 8.00 }   # USD per million tokens; or per model:
 *     # price: { gpt-4.1: { input: 2, output: 8 }, deepseek-v3.2: { input: 0.28, output: 0.42 } }
 * workload:
 *   requestsPerSecond: 26.6     # or steps: [{ at: 0s, rps: 10 }, { at: 5m, rps: 40 }]
 *   arrivals: poisson           # or uniform (evenly spaced, for worked examples)
 *   models: { gpt-4.1: 0.5, deepseek-v3.2: 0.5 }   # shares of new prompts
 *   repeatedPrompts: 0.34       # share of requests that repeat an earlier prompt
 *   promptPool: 1000            # how many recent prompts a repeat is drawn from
 *   promptTokens: 500
 *   completionTokens: 200
 * breakwater:                   # the server's config file, as in `--config`
 *   upstreams:                  # names must be simulated upstreams; baseUrl and apiKey may be left out
 *     - { name: primary, models: [gpt-4.1, deepseek-v3.2], priority: 1 }
 * ```
 *
 * Without a price, a call is priced by the Breakwater config's `pricing`
 * table and the built-in defaults (`@breakwater/core` Pricing).
 */
import { Pricing } from "@breakwater/core"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { parseDocument, stringify } from "yaml"
import * as Config from "../Config.js"

export interface Price {
  readonly input: number
  readonly output: number
}

export interface Outage {
  /** Millis from the start. */
  readonly from: number
  readonly to: number
  readonly mode: "error" | "hang"
  /** Share of calls (and health probes) that meet it; 1 = the upstream is down, less = degraded. */
  readonly share: number
}

export interface SimulatedUpstream {
  readonly name: string
  readonly latency: { readonly p50: number; readonly p99: number }
  readonly errorLatency: number
  readonly rate429: number
  readonly retryAfter: number | undefined
  readonly quota: { readonly requestsPerMinute: number | undefined; readonly tokensPerMinute: number | undefined }
  readonly rate5xx: number
  readonly hang: number
  /**
   * A share of the successful answers drawn from a second, slower latency: a
   * tail made of rare stalls (a provider's queueing) rather than of one wide
   * distribution. Hedging can cut the first and not the second.
   */
  readonly stalls: { readonly share: number; readonly latency: { readonly p50: number; readonly p99: number } } | undefined
  readonly outages: ReadonlyArray<Outage>
  /** USD for one call of `model` with the given tokens. */
  readonly price: (model: string) => Price
}

export interface RateStep {
  readonly at: number
  readonly rps: number
}

export interface Workload {
  /** Sorted by `at`; the first starts at 0. */
  readonly steps: ReadonlyArray<RateStep>
  readonly arrivals: "poisson" | "uniform"
  readonly models: ReadonlyArray<readonly [model: string, share: number]>
  readonly repeatedPrompts: number
  readonly promptPool: number
  readonly promptTokens: number
  readonly completionTokens: number
}

export interface Scenario {
  readonly file: string
  readonly name: string
  readonly description: string | undefined
  /** Millis. */
  readonly duration: number
  readonly seed: number
  readonly directTimeout: number
  readonly upstreams: readonly [SimulatedUpstream, ...Array<SimulatedUpstream>]
  readonly workload: Workload
  readonly breakwater: Config.ServerConfig
}

export class ScenarioInvalid extends Data.TaggedError("ScenarioInvalid")<{
  readonly file: string
  readonly problems: ReadonlyArray<string>
}> {
  override get message(): string {
    const n = this.problems.length
    return [`Invalid scenario ${this.file} (${n} ${n === 1 ? "problem" : "problems"}):`, ...this.problems.map((p) => `  - ${p}`)]
      .join("\n")
  }
}

// ---------------------------------------------------------------------------
// A small reader that collects every problem with its path

type Obj = Record<string, unknown>

const isObj = (u: unknown): u is Obj => typeof u === "object" && u !== null && !Array.isArray(u)

class Reader {
  readonly problems: Array<string> = []

  problem(path: string, message: string): undefined {
    this.problems.push(`${path === "" ? "(top level)" : path}: ${message}`)
    return undefined
  }

  /** Reports fields not in `known`. */
  fields(o: Obj, path: string, known: ReadonlyArray<string>): void {
    for (const k of Object.keys(o)) {
      if (!known.includes(k)) this.problem(join(path, k), `unknown field (expected one of ${known.join(", ")})`)
    }
  }

  obj(u: unknown, path: string): Obj | undefined {
    return isObj(u) ? u : this.problem(path, `expected a mapping, got ${show(u)}`)
  }

  number(u: unknown, path: string, what: string, ok: (n: number) => boolean): number | undefined {
    const n = typeof u === "number" ? u : typeof u === "string" && u.trim() !== "" ? Number(u) : Number.NaN
    return Number.isFinite(n) && ok(n) ? n : this.problem(path, `expected ${what}, got ${show(u)}`)
  }

  share(u: unknown, path: string): number | undefined {
    return this.number(u, path, "a share from 0 to 1", (n) => n >= 0 && n <= 1)
  }

  positive(u: unknown, path: string): number | undefined {
    return this.number(u, path, "a positive number", (n) => n > 0)
  }

  positiveInt(u: unknown, path: string): number | undefined {
    return this.number(u, path, "a positive integer", (n) => n > 0 && Number.isInteger(n))
  }

  nonNegative(u: unknown, path: string): number | undefined {
    return this.number(u, path, "a number of 0 or more", (n) => n >= 0)
  }

  /** A duration in millis (`300ms`, `2s`, `1h`, `1m30s`). */
  duration(u: unknown, path: string, positive = false): number | undefined {
    const d = typeof u === "string" ? Config.parseDuration(u) : Option.none()
    if (Option.isSome(d)) {
      const ms = Duration.toMillis(d.value)
      if (!positive || ms > 0) return ms
    }
    return this.problem(path, `expected a ${positive ? "positive " : ""}duration like "30s", got ${show(u)}`)
  }

  string(u: unknown, path: string): string | undefined {
    return typeof u === "string" && u.trim() !== "" ? u : this.problem(path, `expected a non-empty string, got ${show(u)}`)
  }
}

const join = (path: string, key: string | number) =>
  typeof key === "number" ? `${path}[${key}]` : path === "" ? key : `${path}.${key}`

const show = (u: unknown): string => {
  if (u === null || u === undefined) return "an empty value"
  if (Array.isArray(u)) return "a list"
  if (typeof u === "object") return "a mapping"
  if (typeof u === "string") return JSON.stringify(u.length > 60 ? `${u.slice(0, 57)}...` : u)
  return String(u)
}

// ---------------------------------------------------------------------------
// Sections

const readPrice = (r: Reader, u: unknown, path: string): Price | undefined => {
  const o = r.obj(u, path)
  if (o === undefined) return undefined
  r.fields(o, path, ["input", "output"])
  const input = r.nonNegative(o["input"], join(path, "input"))
  const output = r.nonNegative(o["output"], join(path, "output"))
  return input === undefined || output === undefined ? undefined : { input, output }
}

/** `{ p50, p99 }`, both durations, p99 not below p50. */
const readLatency = (r: Reader, u: unknown, path: string): { p50: number; p99: number } | undefined => {
  const lat = r.obj(u, path)
  if (lat === undefined) return undefined
  r.fields(lat, path, ["p50", "p99"])
  const p50 = r.duration(lat["p50"], join(path, "p50"), true)
  const p99 = r.duration(lat["p99"], join(path, "p99"), true)
  if (p50 === undefined || p99 === undefined) return undefined
  if (p99 < p50) {
    r.problem(path, "p99 must not be below p50")
    return undefined
  }
  return { p50, p99 }
}

const readUpstream = (
  r: Reader,
  u: unknown,
  path: string,
  fallbackPrice: (model: string) => Price
): SimulatedUpstream | undefined => {
  const o = r.obj(u, path)
  if (o === undefined) return undefined
  r.fields(o, path, [
    "name",
    "latency",
    "errorLatency",
    "rate429",
    "retryAfter",
    "quota",
    "rate5xx",
    "hang",
    "stalls",
    "outages",
    "price"
  ])
  const name = r.string(o["name"], join(path, "name"))
  const latency = readLatency(r, o["latency"], join(path, "latency"))
  let stalls: SimulatedUpstream["stalls"] = undefined
  if (o["stalls"] !== undefined) {
    const st = r.obj(o["stalls"], join(path, "stalls"))
    if (st !== undefined) {
      r.fields(st, join(path, "stalls"), ["share", "latency"])
      const share = r.share(st["share"], join(path, "stalls.share"))
      const stallLatency = readLatency(r, st["latency"], join(path, "stalls.latency"))
      if (share !== undefined && stallLatency !== undefined) stalls = { share, latency: stallLatency }
    }
  }
  const errorLatency = o["errorLatency"] === undefined ? 50 : r.duration(o["errorLatency"], join(path, "errorLatency"))
  const rate429 = o["rate429"] === undefined ? 0 : r.share(o["rate429"], join(path, "rate429"))
  const rate5xx = o["rate5xx"] === undefined ? 0 : r.share(o["rate5xx"], join(path, "rate5xx"))
  const hang = o["hang"] === undefined ? 0 : r.share(o["hang"], join(path, "hang"))
  if (rate429 !== undefined && rate5xx !== undefined && hang !== undefined && rate429 + rate5xx + hang > 1 + 1e-12) {
    r.problem(path, "rate429 + rate5xx + hang must not exceed 1")
  }
  const retryAfter = o["retryAfter"] === undefined ? undefined : r.duration(o["retryAfter"], join(path, "retryAfter"))
  let quota: SimulatedUpstream["quota"] = { requestsPerMinute: undefined, tokensPerMinute: undefined }
  if (o["quota"] !== undefined) {
    const q = r.obj(o["quota"], join(path, "quota"))
    if (q !== undefined) {
      r.fields(q, join(path, "quota"), ["requestsPerMinute", "tokensPerMinute"])
      quota = {
        requestsPerMinute: q["requestsPerMinute"] === undefined
          ? undefined
          : r.positiveInt(q["requestsPerMinute"], join(path, "quota.requestsPerMinute")),
        tokensPerMinute: q["tokensPerMinute"] === undefined
          ? undefined
          : r.positiveInt(q["tokensPerMinute"], join(path, "quota.tokensPerMinute"))
      }
    }
  }
  const outages: Array<Outage> = []
  if (o["outages"] !== undefined) {
    if (!Array.isArray(o["outages"])) r.problem(join(path, "outages"), `expected a list, got ${show(o["outages"])}`)
    else {
      o["outages"].forEach((e, i) => {
        const p = join(join(path, "outages"), i)
        const oo = r.obj(e, p)
        if (oo === undefined) return
        r.fields(oo, p, ["from", "to", "mode", "share"])
        const from = r.duration(oo["from"], join(p, "from"))
        const to = r.duration(oo["to"], join(p, "to"))
        const mode = oo["mode"] ?? "error"
        if (mode !== "error" && mode !== "hang") r.problem(join(p, "mode"), `expected "error" or "hang", got ${show(mode)}`)
        const share = oo["share"] === undefined ? 1 : r.share(oo["share"], join(p, "share"))
        if (from !== undefined && to !== undefined && share !== undefined) {
          if (to <= from) r.problem(p, "`to` must be after `from`")
          else outages.push({ from, to, mode: mode === "hang" ? "hang" : "error", share })
        }
      })
    }
  }
  let price = fallbackPrice
  if (o["price"] !== undefined) {
    const p = r.obj(o["price"], join(path, "price"))
    if (p !== undefined) {
      if ("input" in p || "output" in p) {
        const flat = readPrice(r, p, join(path, "price"))
        if (flat !== undefined) price = () => flat
      } else {
        const table = new Map<string, Price>()
        for (const [model, v] of Object.entries(p)) {
          const one = readPrice(r, v, join(join(path, "price"), model))
          if (one !== undefined) table.set(model, one)
        }
        price = (model) => table.get(model) ?? fallbackPrice(model)
      }
    }
  }
  if (
    name === undefined || latency === undefined || errorLatency === undefined || rate429 === undefined ||
    rate5xx === undefined || hang === undefined || (o["stalls"] !== undefined && stalls === undefined)
  ) return undefined
  return { name, latency, errorLatency, rate429, retryAfter, quota, rate5xx, hang, stalls, outages, price }
}

const readWorkload = (r: Reader, u: unknown): Workload | undefined => {
  const o = r.obj(u, "workload")
  if (o === undefined) return undefined
  r.fields(o, "workload", [
    "requestsPerSecond",
    "arrivals",
    "models",
    "repeatedPrompts",
    "promptPool",
    "promptTokens",
    "completionTokens"
  ])
  let steps: Array<RateStep> | undefined
  const rps = o["requestsPerSecond"]
  if (Array.isArray(rps)) {
    steps = []
    rps.forEach((e, i) => {
      const p = `workload.requestsPerSecond[${i}]`
      const s = r.obj(e, p)
      if (s === undefined) return
      r.fields(s, p, ["at", "rps"])
      const at = r.duration(s["at"], join(p, "at"))
      const rate = r.nonNegative(s["rps"], join(p, "rps"))
      if (at !== undefined && rate !== undefined) steps!.push({ at, rps: rate })
    })
    steps.sort((a, b) => a.at - b.at)
    if (steps.length === 0) r.problem("workload.requestsPerSecond", "expected at least one step")
    else if (steps[0]!.at !== 0) steps.unshift({ at: 0, rps: 0 })
  } else {
    const rate = r.positive(rps, "workload.requestsPerSecond")
    if (rate !== undefined) steps = [{ at: 0, rps: rate }]
  }
  const arrivals = o["arrivals"] ?? "poisson"
  if (arrivals !== "poisson" && arrivals !== "uniform") {
    r.problem("workload.arrivals", `expected "poisson" or "uniform", got ${show(arrivals)}`)
  }
  const models: Array<readonly [string, number]> = []
  const m = r.obj(o["models"], "workload.models")
  if (m !== undefined) {
    for (const [model, share] of Object.entries(m)) {
      const s = r.nonNegative(share, `workload.models.${model}`)
      if (s !== undefined && s > 0) models.push([model, s])
    }
    if (models.length === 0) r.problem("workload.models", "expected at least one model with a positive share")
  }
  const repeatedPrompts = o["repeatedPrompts"] === undefined ? 0 : r.share(o["repeatedPrompts"], "workload.repeatedPrompts")
  const promptPool = o["promptPool"] === undefined ? 1000 : r.positiveInt(o["promptPool"], "workload.promptPool")
  const promptTokens = o["promptTokens"] === undefined ? 500 : r.positiveInt(o["promptTokens"], "workload.promptTokens")
  const completionTokens = o["completionTokens"] === undefined
    ? 200
    : r.positiveInt(o["completionTokens"], "workload.completionTokens")
  if (
    steps === undefined || repeatedPrompts === undefined || promptPool === undefined || promptTokens === undefined ||
    completionTokens === undefined || models.length === 0
  ) return undefined
  const total = models.reduce((a, [, s]) => a + s, 0)
  return {
    steps,
    arrivals: arrivals === "uniform" ? "uniform" : "poisson",
    models: models.map(([model, s]) => [model, s / total] as const),
    repeatedPrompts,
    promptPool,
    promptTokens,
    completionTokens
  }
}

/** The Breakwater section, with dummy `baseUrl`s and `apiKey`s filled in where left out. */
const readBreakwater = (
  r: Reader,
  u: unknown,
  file: string,
  env: Record<string, string | undefined>
): Config.ServerConfig | undefined => {
  const o = r.obj(u, "breakwater")
  if (o === undefined) return undefined
  const filled: Obj = { ...o }
  if (Array.isArray(o["upstreams"])) {
    filled["upstreams"] = o["upstreams"].map((e) =>
      isObj(e)
        ? {
          ...e,
          baseUrl: e["baseUrl"] ?? `http://sim/${String(e["name"])}/v1`,
          apiKey: e["apiKey"] ?? "sim-key"
        }
        : e
    )
  }
  const parsed = Config.parse(stringify(filled), { file: `${file} (breakwater section)`, env })
  if (Either.isLeft(parsed)) {
    const e = parsed.left
    if (e._tag === "ConfigInvalid") {
      for (const p of e.problems) r.problem(p.path === "" ? "breakwater" : `breakwater.${p.path}`, p.message)
    } else r.problem("breakwater", e.reason)
    return undefined
  }
  return parsed.right
}

export interface ParseOptions {
  readonly file: string
  readonly env?: Record<string, string | undefined>
}

/** Parses and checks a scenario's YAML text. */
export const parse = (text: string, options: ParseOptions): Either.Either<Scenario, ScenarioInvalid> => {
  const { file } = options
  const env = options.env ?? {}
  const fail = (problems: ReadonlyArray<string>) => Either.left(new ScenarioInvalid({ file, problems }))
  const doc = parseDocument(text)
  if (doc.errors.length > 0) return fail(doc.errors.map((e) => `YAML syntax error: ${e.message.split("\n")[0]}`))
  const root: unknown = doc.toJS({ maxAliasCount: 100 })
  const r = new Reader()
  const o = r.obj(root, "")
  if (o === undefined) return fail(r.problems)
  r.fields(o, "", ["name", "description", "duration", "seed", "directTimeout", "upstreams", "workload", "breakwater"])

  const name = o["name"] === undefined ? baseName(file) : r.string(o["name"], "name")
  const description = typeof o["description"] === "string" ? o["description"].trim() : undefined
  const duration = r.duration(o["duration"], "duration", true)
  const seed = o["seed"] === undefined
    ? 1
    : r.number(o["seed"], "seed", "an integer", (n) => Number.isSafeInteger(n))
  const directTimeout = o["directTimeout"] === undefined ? 30_000 : r.duration(o["directTimeout"], "directTimeout", true)
  const breakwater = readBreakwater(r, o["breakwater"], file, env)
  const pricing = Pricing.make(breakwater?.pricing ?? {})
  const fallbackPrice = (model: string): Price => pricing.price(model) ?? { input: 0, output: 0 }

  const upstreams: Array<SimulatedUpstream> = []
  if (!Array.isArray(o["upstreams"]) || o["upstreams"].length === 0) {
    r.problem("upstreams", `expected a non-empty list, got ${show(o["upstreams"])}`)
  } else {
    o["upstreams"].forEach((e, i) => {
      const up = readUpstream(r, e, `upstreams[${i}]`, fallbackPrice)
      if (up === undefined) return
      if (upstreams.some((x) => x.name === up.name)) r.problem(`upstreams[${i}].name`, `duplicate name ${JSON.stringify(up.name)}`)
      upstreams.push(up)
    })
  }
  const workload = readWorkload(r, o["workload"])

  // Names as written, so that this is checked even when an upstream has other problems.
  const simulated = Array.isArray(o["upstreams"])
    ? o["upstreams"].flatMap((e) => isObj(e) && typeof e["name"] === "string" ? [e["name"]] : [])
    : []
  if (breakwater !== undefined && simulated.length > 0) {
    breakwater.upstreams.forEach((u, i) => {
      if (!simulated.includes(u.name)) {
        r.problem(
          `breakwater.upstreams[${i}].name`,
          `${JSON.stringify(u.name)} is not a simulated upstream (expected one of ${simulated.join(", ")})`
        )
      }
    })
  }
  if (
    r.problems.length > 0 || name === undefined || duration === undefined || seed === undefined ||
    directTimeout === undefined || breakwater === undefined || workload === undefined || upstreams.length === 0
  ) return fail(r.problems.length > 0 ? r.problems : ["invalid scenario"])
  return Either.right({
    file,
    name,
    description,
    duration,
    seed,
    directTimeout,
    upstreams: upstreams as unknown as Scenario["upstreams"],
    workload,
    breakwater
  })
}

const baseName = (file: string): string => (file.split(/[\\/]/).pop() ?? file).replace(/\.(ya?ml|json)$/i, "")
