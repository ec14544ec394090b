/**
 * The gateway as a library: `Config` reads and checks a config file (what
 * `breakwater check-config` does), `Server` serves one (what `breakwater`
 * does, without the CLI's signal handling). The `breakwater` bin is the usual
 * way to run it.
 *
 * @since 0.1.0
 */
export * as Config from "./Config.js"
export * as Server from "./Server.js"
