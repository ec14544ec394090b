/**
 * `breakwater simulate SCENARIO.yaml [--seed N] [--json] [--chart FILE.svg] [--html FILE.html]
 * [--hedge p95|800ms|off] [--hedge-max-extra 10%]`: reads a scenario, runs it in virtual time,
 * prints the table (or JSON) on stdout and, with `--chart`, writes an SVG.
 * `--hedge` overrides the scenario's `routing.hedge`. Stdout depends only on
 * the scenario, the seed and the options; the wall time taken goes to stderr.
 */
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as fs from "node:fs/promises"
import * as Config from "../Config.js"
import * as ConsoleAssets from "../Console.js"
import * as Render from "./Render.js"
import * as Scenario from "./Scenario.js"
import * as Simulate from "./Simulate.js"

export interface Args {
  readonly scenario: string
  readonly seed: Option.Option<number>
  readonly json: boolean
  readonly chart: Option.Option<string>
  /** One self-contained HTML report with the operator console's charts. */
  readonly html?: Option.Option<string> | undefined
  /** Overrides `routing.hedge.after` (`off`: no hedging). */
  readonly hedge?: Option.Option<string> | undefined
  /** With `hedge`: `routing.hedge.maxExtra`. Default 10%. */
  readonly hedgeMaxExtra?: Option.Option<string> | undefined
}

/** The `--hedge` override: undefined (none), null (off), or the settings. */
const hedgeOverride = (args: Args): Effect.Effect<Config.HedgeConfig | null | undefined, SimulationFailed> => {
  const after = args.hedge === undefined ? undefined : Option.getOrUndefined(args.hedge)
  const maxExtra = args.hedgeMaxExtra === undefined ? undefined : Option.getOrUndefined(args.hedgeMaxExtra)
  if (after === undefined) {
    return maxExtra === undefined ? Effect.succeed(undefined) : Effect.fail(new SimulationFailed("--hedge-max-extra needs --hedge"))
  }
  if (after.trim().toLowerCase() === "off") return Effect.succeed(null)
  const parsed = Config.hedgeOf(after, maxExtra ?? 0.1)
  return Either.isLeft(parsed) ? Effect.fail(new SimulationFailed(`--${parsed.left}`)) : Effect.succeed(parsed.right)
}

export class SimulationFailed extends Error {}

export const simulate = (args: Args): Effect.Effect<void, Scenario.ScenarioInvalid | SimulationFailed> =>
  Effect.gen(function*() {
    const text = yield* Effect.tryPromise({
      try: () => fs.readFile(args.scenario, "utf8"),
      catch: (e) => new SimulationFailed(`Cannot read scenario ${args.scenario}: ${e instanceof Error ? e.message : String(e)}`)
    })
    const parsed = Scenario.parse(text, { file: args.scenario, env: process.env })
    if (Either.isLeft(parsed)) return yield* Effect.fail(parsed.left)
    const hedge = yield* hedgeOverride(args)
    const started = performance.now()
    const report = yield* Effect.try({
      try: () => Simulate.run(parsed.right, { seed: Option.getOrUndefined(args.seed), hedge }),
      catch: (e) => new SimulationFailed(e instanceof Error ? e.message : String(e))
    })
    const seconds = (performance.now() - started) / 1000
    yield* Effect.sync(() => process.stdout.write(args.json ? Render.json(report) : Render.text(report)))
    if (Option.isSome(args.chart)) {
      const file = args.chart.value
      yield* Effect.tryPromise({
        try: () => fs.writeFile(file, Render.svg(report)),
        catch: (e) => new SimulationFailed(`Cannot write ${file}: ${e instanceof Error ? e.message : String(e)}`)
      })
      yield* Console.error(`chart written to ${file}`)
    }
    if (args.html !== undefined && Option.isSome(args.html)) {
      const file = args.html.value
      const charts = ConsoleAssets.asset("charts.js")
      if (charts === undefined) return yield* Effect.fail(new SimulationFailed("The console's charts.js is missing from this installation."))
      const outages = parsed.right.upstreams.flatMap((u) =>
        u.outages.map((o) => ({ from: o.from, to: o.to, label: `${u.name} ${o.share < 1 ? "degraded" : "down"}` }))
      )
      yield* Effect.tryPromise({
        try: () => fs.writeFile(file, Render.html(report, charts, outages)),
        catch: (e) => new SimulationFailed(`Cannot write ${file}: ${e instanceof Error ? e.message : String(e)}`)
      })
      yield* Console.error(`report written to ${file}`)
    }
    yield* Console.error(
      `simulated ${Render.formatDuration(report.durationMs)} (${report.requests} requests) in ${seconds.toFixed(1)} s`
    )
  }).pipe(Effect.tapError((e) => Console.error(e.message)))
