/**
 * The `breakwater` command.
 *
 *   breakwater [--config FILE] [--port N] [--host H]   serve (demo mode without a config)
 *   breakwater check-config FILE                       validate a config and exit
 *   breakwater simulate SCENARIO [--seed N] [--json] [--chart FILE.svg]
 *                                                      run a scenario in simulated time
 *
 * The config file comes from `--config` or `BREAKWATER_CONFIG`. SIGTERM and
 * SIGINT drain (see Server.drain): new requests get 503 for
 * `server.drainGrace`, then the listener closes and what is in flight
 * (streams included) finishes up to `server.shutdownTimeout`; exit 0. The
 * process exits within `shutdownTimeout` + 1 s whatever still hangs (exit 1
 * then), and a second signal exits at once (128 + its number: 130, 143).
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import { readFileSync } from "node:fs"
import { constants } from "node:os"
import * as Config from "./Config.js"
import * as Demo from "./Demo.js"
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
const waitForSignal = Effect.async<NodeJS.Signals>((resume) => {
  let first: { readonly signal: NodeJS.Signals; readonly at: number } | undefined
  const on = (signal: NodeJS.Signals) => {
    const now = performance.now()
    if (first === undefined) {
      first = { signal, at: now }
      resume(Effect.succeed(signal))
    } else if (signal !== first.signal || now - first.at >= REPEAT_WINDOW_MS) {
      process.stderr.write(`${signal} during shutdown: exiting now\n`)
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
const exitDeadline = (shutdownTimeout: Duration.Duration) =>
  Effect.sync(() => {
    const ms = Math.min(Duration.toMillis(shutdownTimeout) + CLOSE_MARGIN_MS, Config.MAX_DURATION_MILLIS)
    setTimeout(() => {
      process.stderr.write(
        `shutdown: still closing ${Duration.format(ms)} after the signal (shutdownTimeout ${
          Duration.format(shutdownTimeout)
        } + ${CLOSE_MARGIN_MS}ms); exiting now\n`
      )
      process.exit(1)
    }, ms).unref()
  })

const configFailure = (error: Config.ConfigInvalid | Config.ConfigUnreadable) =>
  Effect.zipRight(Console.error(error.message), Effect.fail(error))

const serve = (args: { readonly config: Option.Option<string>; readonly port: Option.Option<number>; readonly host: Option.Option<string> }) =>
  Effect.scoped(Effect.gen(function*() {
    const started = performance.now()
    const file = Option.getOrUndefined(args.config) ?? process.env["BREAKWATER_CONFIG"]
    let config: Config.ServerConfig
    let demo: Demo.Demo | undefined
    if (file !== undefined && file !== "") {
      config = yield* Effect.catchAll(Config.load(file, process.env), configFailure)
    } else {
      demo = yield* Effect.catchAll(
        Demo.make({ port: Option.getOrElse(args.port, () => 8080), host: Option.getOrElse(args.host, () => "127.0.0.1") }),
        configFailure
      )
      config = demo.config
    }
    let host = Option.getOrElse(args.host, () => config.server.host)
    const port = Option.getOrElse(args.port, () => config.server.port)
    if (config.keys.length === 0 && !LOOPBACK.has(host)) {
      yield* Console.error(
        `warning: no gateway keys are configured, so any caller is accepted; binding to 127.0.0.1 instead of ${host}. ` +
          `Add keys to the config to serve other hosts.`
      )
      host = "127.0.0.1"
    } else if (config.keys.length === 0) {
      yield* Console.error("warning: no gateway keys are configured: any caller on this machine is accepted.")
    }
    config = { ...config, server: { ...config.server, host, port } }
    const limits = (() => {
      try {
        return readFileSync("/proc/self/limits", "utf8")
      } catch {
        return "" // not Linux: no check
      }
    })()
    const fds = Server.openFilesWarning(limits, config.server.maxConnections)
    if (fds !== undefined) yield* Console.error(fds)
    // From here on no error ends the process: it is logged, counted, and the server keeps serving.
    const level = config.server.logLevel
    yield* Effect.acquireRelease(
      Effect.sync(() => UnhandledErrors.install({ log: level !== "Fatal" && level !== "None" })),
      (uninstall) => Effect.sync(uninstall)
    )
    const running = yield* Server.serve(config)
    const ms = Math.round(performance.now() - started)
    if (demo !== undefined) {
      yield* Console.log(
        [
          `Breakwater demo on ${running.url} (ready in ${ms} ms)`,
          `  upstreams (in-process fakes): ${demo.upstreams.map((u) => `${u.name} ${u.url}`).join(", ")}`,
          `  flaky answers 429 to 30% of requests, slow takes 250-500 ms, steady is healthy.`,
          `  admin key: demo-admin-key   metrics: ${running.url}/metrics`,
          ``,
          `Try:`,
          `  curl -s ${running.url}/v1/chat/completions -H 'content-type: application/json' \\`,
          `    -d '{"model":"gpt-4.1","messages":[{"role":"user","content":"Hello!"}]}'`,
          `  curl -s ${running.url}/admin/upstreams -H 'authorization: Bearer demo-admin-key'`
        ].join("\n")
      )
    } else {
      yield* Console.log(
        `Breakwater on ${running.url} (ready in ${ms} ms): ${config.upstreams.length} upstream(s), ${config.keys.length} key(s)`
      )
    }
    const signal = yield* waitForSignal
    const { drainGrace, shutdownTimeout } = config.server
    yield* exitDeadline(shutdownTimeout)
    const grace = Duration.min(drainGrace, shutdownTimeout)
    yield* Console.error(
      `${signal}: draining (${
        Duration.toMillis(grace) > 0 ? `new requests get 503 for ${Duration.format(grace)}, ` : ""
      }up to ${Duration.format(shutdownTimeout)} in all; a second signal exits at once)`
    )
    const { drained } = yield* Effect.promise(() => Server.drain(running, shutdownTimeout, grace))
    yield* Console.error(drained ? "drained; bye" : "shutdown deadline reached; closed remaining connections")
  }))

const command = Command.make(
  "breakwater",
  {
    config: Options.file("config").pipe(Options.withDescription("config file (YAML or JSON)"), Options.optional),
    port: Options.integer("port").pipe(Options.withDescription("override server.port"), Options.optional),
    host: Options.text("host").pipe(Options.withDescription("override server.host"), Options.optional)
  },
  serve
).pipe(Command.withDescription("An OpenAI-compatible relay that survives 429s, outages and hung upstreams."))

const checkConfig = Command.make(
  "check-config",
  { file: Args.file({ name: "FILE", exists: "yes" }) },
  ({ file }) =>
    Effect.catchAll(
      Effect.flatMap(Config.load(file, process.env), (config) =>
        Console.log(`${file}: OK (${config.upstreams.length} upstream(s), ${config.keys.length} key(s))`)),
      configFailure
    )
).pipe(Command.withDescription("Validate a config file and exit."))

const simulate = Command.make(
  "simulate",
  {
    scenario: Args.file({ name: "SCENARIO", exists: "yes" }),
    seed: Options.integer("seed").pipe(Options.withDescription("override the scenario's seed"), Options.optional),
    json: Options.boolean("json").pipe(Options.withDescription("print the results as JSON")),
    chart: Options.file("chart").pipe(Options.withDescription("write an SVG chart per simulated minute"), Options.optional)
  },
  // Loaded when the command runs: serving never loads the simulator.
  (args: Simulate.Args) => Effect.flatMap(Effect.promise(() => import("./simulate/Cli.js")), (m) => m.simulate(args))
).pipe(Command.withDescription("Run a scenario through the relay against simulated upstreams, in simulated time."))

const cli = Command.run(command.pipe(Command.withSubcommands([checkConfig, simulate])), {
  name: "breakwater",
  version: "0.1.0"
})

Effect.runPromiseExit(cli(process.argv).pipe(Effect.provide(NodeContext.layer))).then((exit) => {
  process.exit(Exit.isSuccess(exit) ? 0 : 1)
})
