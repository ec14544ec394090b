#!/usr/bin/env node
// The server as built JavaScript: dist/bin is src/main.ts and everything it
// runs, bundled by scripts/bundle.js so that it starts fast. `npm run build`
// writes it (`npm start` bundles first); the published package ships it.
//
// Memory: V8 lets the old generation grow to up to four times what survived
// the last full collection before it collects again, so a gateway whose
// live heap is ~35 MB climbs to 150+ MB of RSS under load: garbage, not a
// leak. `--heap-growing-percent` caps that factor (here 1.2). It is one of
// the few heap flags V8 reads at every collection, so setting it here,
// before the server loads, works (measured: peak RSS 166 MB -> 119 MB at
// 20,000 requests, 50 connections; heap *sizes* such as
// --max-semi-space-size are fixed when the process starts and go in
// NODE_OPTIONS instead, as the Dockerfile does). BREAKWATER_V8_FLAGS
// replaces these flags ("" for V8's defaults); flags given to node itself
// win over both.
import { setFlagsFromString } from "node:v8"

const DEFAULT_V8_FLAGS = "--heap-growing-percent=20"
const given = [...process.execArgv, process.env.NODE_OPTIONS ?? ""].join(" ")
for (const flag of (process.env.BREAKWATER_V8_FLAGS ?? DEFAULT_V8_FLAGS).split(/\s+/)) {
  const name = flag.split("=")[0]
  if (name !== undefined && name.startsWith("--") && !given.includes(name)) setFlagsFromString(flag)
}

await import("../dist/bin/breakwater.js")
