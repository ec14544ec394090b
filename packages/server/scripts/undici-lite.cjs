/**
 * What the bundle gives the core's undici client (`@breakwater/core`'s
 * internal/undici.ts) for `import { Agent, request } from "undici"`: those two
 * and nothing else. undici's index also loads fetch, WebSocket,
 * EventSource, the cache stores and the mocks, which the gateway never
 * uses; leaving them out takes about 50 ms off the start (npm run
 * bench:start). The bundle's other user of undici (@effect/platform-node,
 * for `layerHttpClient`, which the server does not use) gets all of it.
 *
 * `request` is undici's own `request` (`makeDispatcher(api.request)` in its
 * index.js) for the call the client makes: a URL string and options with a
 * `dispatcher`. The paths below are undici's files, pinned by the lockfile;
 * if an upgrade moves them the bundle fails to build, and the CLI tests run
 * this bundle.
 */
"use strict"
const Agent = require("undici/lib/dispatcher/agent")
const Dispatcher = require("undici/lib/dispatcher/dispatcher")
const api = require("undici/lib/api")
const util = require("undici/lib/core/util")

// As undici's index does: dispatchers get request(), stream(), pipeline()...
Object.assign(Dispatcher.prototype, api)

function request(url, opts) {
  const parsed = util.parseURL(url)
  return api.request.call(opts.dispatcher, {
    ...opts,
    origin: parsed.origin,
    path: parsed.search ? `${parsed.pathname}${parsed.search}` : parsed.pathname,
    method: opts.method || (opts.body ? "PUT" : "GET")
  })
}

module.exports = { Agent, request }
