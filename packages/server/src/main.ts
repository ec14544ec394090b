/**
 * The `breakwater` command.
 *
 *   breakwater [--config FILE] [--port N] [--host H] [--log-format json|pretty] [--log-level L]
 *                                                      serve (demo mode without a config)
 *   breakwater check-config FILE                       validate a config and exit
 *   breakwater simulate SCENARIO [--seed N] [--json] [--chart FILE.svg] [--html FILE.html]
 *                        [--hedge p95|800ms|off] [--hedge-max-extra 10%]
 *                                                      run a scenario in simulated time
 *
 * The config file comes from `--config` or `BREAKWATER_CONFIG`. SIGTERM and
 * SIGINT drain (see Server.drain): new requests get 503 for
 * `server.drainGrace`, then the listener closes and what is in flight
 * (streams included) finishes up to `server.shutdownTimeout`; exit 0. The
 * process exits within `shutdownTimeout` + 1 s whatever still hangs (exit 1
 * then), and a second signal exits at once (128 + its number: 130, 143).
 *
 * Everything the server says goes to stdout in one format (Log.ts): JSON
 * lines, or `--log-format pretty` (the demo's default: it is for people);
 * `--log-level` filters all of it and overrides `server.logLevel`. Options
 * may come in any order.
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { readFileSync } from "node:fs"
import { constants } from "node:os"
import * as Config from "./Config.js"
import * as Demo from "./Demo.js"
import * as Log from "./Log.js"
import * as Server from "./Server.js"
import type * as Simulate from "./simulate/Cli.js"
import * as UnhandledErrors from "./UnhandledErrors.js"

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1"])

/**
 * A repeat of the first signal within this is the same signal: a terminal's
 * Ctrl-C reaches both `npm start` and the server, and npm forwards it too.
 */
const REPEAT_WINDOW_MS = 250

/**
 * Resolves with the first SIGTERM or SIGINT. The handlers stay: a second
 * signal of either kind (the same one repeated within REPEAT_WINDOW_MS
 * aside) exits at once with 128 + the signal's number.
 */
const waitForSignal = (say: Say) => Effect.async<NodeJS.Signals>((resume) => {
  let first: { readonly signal: NodeJS.Signals; readonly at: number } | undefined
  const on = (signal: NodeJS.Signals) => {
    const now = performance.now()
    if (first === undefined) {
      first = { signal, at: now }
      resume(Effect.succeed(signal))
    } else if (signal !== first.signal || now - first.at >= REPEAT_WINDOW_MS) {
      say.now("Warning", `${signal} during shutdown: exiting now`, { signal })
      process.exit(128 + constants.signals[signal])
    }
  }
  process.on("SIGTERM", on)
  process.on("SIGINT", on)
  return Effect.sync(() => {
    process.off("SIGTERM", on)
    process.off("SIGINT", on)
  })
})

/**
 * After the drain's deadline, how long closing the rest (upstream clients,
 * stores) may take before the process exits anyway: the exit comes within
 * `shutdownTimeout` + 1 s, whatever hangs.
 */
const CLOSE_MARGIN_MS = 500

/** Exits the process `shutdownTimeout` + CLOSE_MARGIN_MS from now, unless it has exited by then. */
const exitDeadline = (say: Say, shutdownTimeout: Duration.Duration) =>
  Effect.sync(() => {
    const ms = Math.min(Duration.toMillis(shutdownTimeout) + CLOSE_MARGIN_MS, Config.MAX_DURATION_MILLIS)
    setTimeout(() => {
      say.now(
        "Error",
        `shutdown: still closing ${Duration.format(ms)} after the signal (shutdownTimeout ${
          Duration.format(shutdownTimeout)
        } + ${CLOSE_MARGIN_MS}ms); exiting now`
      )
      process.exit(1)
    }, ms).unref()
  })

/**
 * How the CLI speaks outside Effect's logger: at once, in the log format,
 * filtered by the level in force (for a process about to exit).
 */
interface Say {
  readonly now: (level: LogLevel.Literal, msg: string, fields?: Record<string, unknown>) => void
}

const sayWith = (format: Log.Format, level: () => LogLevel.Literal): Say => ({
  now: (at, msg, fields) => {
    if (LogLevel.greaterThanEqual(LogLevel.fromLiteral(at), LogLevel.fromLiteral(level()))) {
      Log.writeNow(format, LogLevel.fromLiteral(at).label, msg, fields)
    }
  }
})

/** A config that cannot be used: an ERROR entry naming every problem (no secret), then the failure. */
const configFailure = (error: Config.ConfigInvalid | Config.ConfigUnreadable) =>
  Effect.zipRight(Effect.logError(error.message), Effect.fail(error))

interface ServeArgs {
  readonly config: Option.Option<string>
  readonly port: Option.Option<number>
  readonly host: Option.Option<string>
  readonly logFormat: Option.Option<Log.Format>
}

/**
 * `--log-level L` (or `--log-level=L`) anywhere on the command line, taken
 * out before @effect/cli parses the rest. @effect/cli has a built-in option
 * of that name which it takes only when it comes before every other option
 * (so `--log-level debug --config F` and `--config F --log-level debug` meant
 * different things); read here, it works in any position. The last one wins.
 */
const takeLogLevel = (
  args: ReadonlyArray<string>
): { readonly level: LogLevel.Literal | undefined; readonly rest: ReadonlyArray<string> } | { readonly error: string } => {
  let level: LogLevel.Literal | undefined
  const rest: Array<string> = []
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === "--") {
      rest.push(...args.slice(i))
      break
    }
    let value: string | undefined
    if (arg === "--log-level") value = args[++i] ?? ""
    else if (arg.startsWith("--log-level=")) value = arg.slice("--log-level=".length)
    else {
      rest.push(arg)
      continue
    }
    const parsed = Config.logLevelOf(value)
    if (parsed === undefined) {
      return {
        error: `--log-level: expected one of all, trace, debug, info, warning, error, fatal, none, got ${JSON.stringify(value)}`
      }
    }
    level = parsed
  }
  return { level, rest }
}

const serve = (cliLevel: LogLevel.Literal | undefined) => (args: ServeArgs) => {
  const file = Option.getOrUndefined(args.config) ?? process.env["BREAKWATER_CONFIG"]
  const demo = file === undefined || file === ""
  // The demo is for a person at a terminal; a served config, for log collectors.
  const format = Option.getOrElse(args.logFormat, () => demo ? "pretty" : "json")
  return Effect.scoped(Effect.gen(function*() {
    const started = performance.now()
    const loaded = yield* (demo
      ? Effect.map(
        Demo.make({ port: Option.getOrElse(args.port, () => 8080), host: Option.getOrElse(args.host, () => "127.0.0.1") }),
        (d) => ({ config: d.config, demo: d as Demo.Demo | undefined })
      )
      : Effect.map(Config.load(file, process.env), (config) => ({ config, demo: undefined }))).pipe(
        Effect.catchAll(configFailure),
        Logger.withMinimumLogLevel(LogLevel.fromLiteral(cliLevel ?? "Info"))
      )
    const { config, warning } = overridden(loaded.config, args, cliLevel)
    // A reload reads the file again, with the same overrides (not in the demo: no file).
    const reload = demo
      ? undefined
      : { file, load: Effect.map(Config.load(file, process.env), (c) => overridden(c, args, cliLevel).config) }
    yield* run(config, warning, loaded.demo, reload, format, started).pipe(
      Logger.withMinimumLogLevel(LogLevel.fromLiteral(config.server.logLevel))
    )
  })).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, Log.logger(format))))
}

/**
 * The config as served: `--host`, `--port` and `--log-level` override the
 * file, and a config without gateway keys binds to loopback only (with a
 * warning saying so). Applied at start and to every reload alike.
 */
const overridden = (
  config: Config.ServerConfig,
  args: ServeArgs,
  cliLevel: LogLevel.Literal | undefined
): { readonly config: Config.ServerConfig; readonly warning: string | undefined } => {
  let host = Option.getOrElse(args.host, () => config.server.host)
  const port = Option.getOrElse(args.port, () => config.server.port)
  let warning: string | undefined
  if (config.keys.length === 0 && !LOOPBACK.has(host)) {
    warning = `no gateway keys are configured, so any caller is accepted; binding to 127.0.0.1 instead of ${host}. ` +
      `Add keys to the config to serve other hosts.`
    host = "127.0.0.1"
  } else if (config.keys.length === 0) {
    warning = "no gateway keys are configured: any caller on this machine is accepted."
  }
  const logLevel = cliLevel ?? config.server.logLevel
  return { config: { ...config, server: { ...config.server, host, port, logLevel } }, warning }
}

/**
 * SIGHUP reloads the config (Server's `Running.reload`, which logs the
 * outcome). The handler is installed before the server listens, so that an
 * early SIGHUP does not end the process (Node's default); the server is
 * told once it runs.
 */
const onHangUp = () => {
  let target: ((trigger: string) => Promise<unknown>) | undefined
  const handler = () => {
    if (target !== undefined) void target("SIGHUP")
  }
  process.on("SIGHUP", handler)
  return {
    serve: (reload: (trigger: string) => Promise<unknown>) => {
      target = reload
    },
    uninstall: () => process.off("SIGHUP", handler)
  }
}

const run = (
  config: Config.ServerConfig,
  keysWarning: string | undefined,
  demo: Demo.Demo | undefined,
  reload: Server.ServeOptions["reload"],
  format: Log.Format,
  started: number
) =>
  Effect.gen(function*() {
    const hangUp = yield* Effect.acquireRelease(Effect.sync(onHangUp), (h) => Effect.sync(h.uninstall))
    if (keysWarning !== undefined) yield* Effect.logWarning(keysWarning)
    const limits = (() => {
      try {
        return readFileSync("/proc/self/limits", "utf8")
      } catch {
        return "" // not Linux: no check
      }
    })()
    const fds = Server.openFilesWarning(limits, config.server.maxConnections)
    if (fds !== undefined) yield* Effect.logWarning(fds.replace(/^warning: /, ""))
    // What the server serves now: a reload may change the level, shutdownTimeout and drainGrace.
    let served = () => config
    const say = sayWith(format, () => served().server.logLevel)
    // From here on no error ends the process: it is logged, counted, and the server keeps serving.
    const level = config.server.logLevel
    yield* Effect.acquireRelease(
      Effect.sync(() =>
        UnhandledErrors.install({
          log: level !== "Fatal" && level !== "None",
          write: (line) => process.stdout.write(Log.reformat(format, line))
        })
      ),
      (uninstall) => Effect.sync(uninstall)
    )
    const running = yield* Server.serve(config, { logFormat: format, reload })
    served = running.config
    hangUp.serve(running.reload)
    const ms = Math.round(performance.now() - started)
    if (demo !== undefined) {
      const tryIt = [
        `curl -s ${running.url}/v1/chat/completions -H 'content-type: application/json' \\\n` +
        `    -d '{"model":"gpt-4.1","messages":[{"role":"user","content":"Hello!"}]}'`,
        `curl -s ${running.url}/admin/upstreams -H 'authorization: Bearer demo-admin-key'`,
        `curl -si ${running.url}/v1/chat/completions -H 'content-type: application/json' \\\n` +
        `    -d '{"model":"${Demo.OUTAGE_MODEL}","messages":[{"role":"user","content":"Hello!"}]}'`
      ]
      const headline = `Breakwater demo on ${running.url} (ready in ${ms} ms)`
      yield* format === "pretty"
        ? Effect.logInfo(
          [
            headline,
            `  upstreams (in-process fakes): ${demo.upstreams.map((u) => `${u.name} ${u.url}`).join(", ")}`,
            `  flaky answers 429 to 30% of requests, slow takes 250-500 ms, steady is healthy.`,
            `  ${Demo.OUTAGE_MODEL}'s only upstream (outage) is down: its requests fall back to ${Demo.FALLBACK_MODEL}`,
            `  on claude (Anthropic's protocol); see x-breakwater-model in the last curl's headers.`,
            `  admin key: demo-admin-key   metrics: ${running.url}/metrics`,
            `  console: ${running.url}/console (sign in with the admin key)`,
            ``,
            `Try:`,
            ...tryIt.map((t) => `  ${t}`)
          ].join("\n")
        )
        : Effect.logInfo(headline).pipe(Effect.annotateLogs({
          url: running.url,
          readyMs: ms,
          upstreams: demo.upstreams.map((u) => ({ name: u.name, url: u.url })),
          adminKey: "demo-admin-key",
          console: `${running.url}/console`,
          try: tryIt
        }))
    } else {
      yield* Effect.logInfo(
        `Breakwater on ${running.url} (ready in ${ms} ms): ${config.upstreams.length} upstream(s), ${config.keys.length} key(s)`
      ).pipe(Effect.annotateLogs({ url: running.url, readyMs: ms, upstreams: config.upstreams.length, keys: config.keys.length }))
    }
    const signal = yield* waitForSignal(say)
    const { drainGrace, logLevel, shutdownTimeout } = running.config().server
    yield* exitDeadline(say, shutdownTimeout)
    const grace = Duration.min(drainGrace, shutdownTimeout)
    yield* Effect.gen(function*() {
      yield* Effect.logInfo(
        `${signal}: draining (${
          Duration.toMillis(grace) > 0 ? `new requests get 503 for ${Duration.format(grace)}, ` : ""
        }up to ${Duration.format(shutdownTimeout)} in all; a second signal exits at once)`
      ).pipe(Effect.annotateLogs({ signal }))
      const { drained } = yield* Effect.promise(() => Server.drain(running, shutdownTimeout, grace))
      yield* drained
        ? Effect.logInfo("drained; bye")
        : Effect.logWarning("shutdown deadline reached; closed remaining connections")
    }).pipe(Logger.withMinimumLogLevel(LogLevel.fromLiteral(logLevel)))
  })

const command = (cliLevel: LogLevel.Literal | undefined) => Command.make(
  "breakwater",
  {
    config: Options.file("config").pipe(Options.withDescription("config file (YAML or JSON)"), Options.optional),
    port: Options.integer("port").pipe(Options.withDescription("override server.port"), Options.optional),
    host: Options.text("host").pipe(Options.withDescription("override server.host"), Options.optional),
    logFormat: Options.choice("log-format", Log.FORMATS).pipe(
      Options.withDescription("json (one JSON object per line; the default) or pretty (for people; the demo's default)"),
      Options.optional
    ),
    // --log-level is read before @effect/cli parses (see takeLogLevel); its help is the built-in option's.
  },
  serve(cliLevel)
).pipe(Command.withDescription("An OpenAI-compatible relay that survives 429s, outages and hung upstreams."))

const checkConfig = Command.make(
  "check-config",
  { file: Args.file({ name: "FILE", exists: "yes" }) },
  ({ file }) =>
    Effect.catchAll(
      Effect.flatMap(Config.load(file, process.env), (config) =>
        Console.log(`${file}: OK (${config.upstreams.length} upstream(s), ${config.keys.length} key(s))`)),
      // A command's answer to a person, not a log entry: the problems on stderr.
      (error) => Effect.zipRight(Console.error(error.message), Effect.fail(error))
    )
).pipe(Command.withDescription("Validate a config file and exit."))

const simulate = Command.make(
  "simulate",
  {
    scenario: Args.file({ name: "SCENARIO", exists: "yes" }),
    seed: Options.integer("seed").pipe(Options.withDescription("override the scenario's seed"), Options.optional),
    json: Options.boolean("json").pipe(Options.withDescription("print the results as JSON")),
    chart: Options.file("chart").pipe(Options.withDescription("write an SVG chart per simulated minute"), Options.optional),
    html: Options.file("html").pipe(
      Options.withDescription("write one self-contained HTML report with the console's charts (outages shaded)"),
      Options.optional
    ),
    hedge: Options.text("hedge").pipe(
      Options.withDescription("override routing.hedge.after: a percentile (p95), a duration (800ms), or off"),
      Options.optional
    ),
    hedgeMaxExtra: Options.text("hedge-max-extra").pipe(
      Options.withDescription("with --hedge: routing.hedge.maxExtra, a share (0.1) or a percentage (10%); default 10%"),
      Options.optional
    )
  },
  // Loaded when the command runs: serving never loads the simulator.
  (args: Simulate.Args) => Effect.flatMap(Effect.promise(() => import("./simulate/Cli.js")), (m) => m.simulate(args))
).pipe(Command.withDescription("Run a scenario through the relay against simulated upstreams, in simulated time."))

const taken = takeLogLevel(process.argv.slice(2))
if ("error" in taken) {
  process.stderr.write(`${taken.error}\n`)
  process.exit(1)
}

const cli = Command.run(command(taken.level).pipe(Command.withSubcommands([checkConfig, simulate])), {
  name: "breakwater",
  version: "0.1.0"
})

Effect.runPromiseExit(cli([...process.argv.slice(0, 2), ...taken.rest]).pipe(Effect.provide(NodeContext.layer))).then((exit) => {
  process.exit(Exit.isSuccess(exit) ? 0 : 1)
})
