#!/usr/bin/env node
// The server as built JavaScript: dist/bin/breakwater.cjs is src/main.ts and
// everything it runs, bundled by scripts/bundle.js so that it starts fast.
// `npm run build` writes it (`npm start` bundles first); the published
// package ships it.
//
// Code cache: compiling the bundle's code is a large part of the start, and
// Node 20 keeps no compiled code between runs. So this loads the bundle as
// a vm.Script (a CommonJS module function, as Node's own loader would) with
// V8's code cache: a file holding the bytecode of the functions that ran up
// to a second after the start, which V8 reads instead of compiling
// them again. The cache file is written once, after that second, by the
// first start (and again whenever V8 rejects it: another node or other V8
// flags); it goes to dist/bin/.cache/ when that is writable, else to the
// system's temporary directory (breakwater-code-cache-<uid>/, the user's
// own, which no one else may write: a cache is code this runs), named by the
// bundle's hash, the node version and the architecture, so that a new
// build never reads an old cache. A missing, unreadable or corrupt cache
// only means compiling as usual; BREAKWATER_CODE_CACHE=0 turns it off.
// Under --enable-source-maps the bundle loads through Node's require instead
// (Node 20 maps stack traces of required files, not of vm scripts): stack
// traces point at the TypeScript sources, without the cache.
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
import { createHash } from "node:crypto"
import { lstatSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { setFlagsFromString } from "node:v8"
import { constants, Script } from "node:vm"

const DEFAULT_V8_FLAGS = "--heap-growing-percent=20"
const given = [...process.execArgv, process.env.NODE_OPTIONS ?? ""].join(" ")
for (const flag of (process.env.BREAKWATER_V8_FLAGS ?? DEFAULT_V8_FLAGS).split(/\s+/)) {
  const name = flag.split("=")[0]
  if (name !== undefined && name.startsWith("--") && !given.includes(name)) setFlagsFromString(flag)
}

const bundle = fileURLToPath(new URL("../dist/bin/breakwater.cjs", import.meta.url))
if (process.env.BREAKWATER_CODE_CACHE === "0" || process.sourceMapsEnabled === true) createRequire(import.meta.url)(bundle)
else runCached()

/** Runs the bundle as a CommonJS module with V8's code cache. */
function runCached() {
  const source = readFileSync(bundle, "utf8")
  const key = /^\/\*breakwater-bundle:(\w+)\*\//.exec(source)?.[1]
  const cacheName = `breakwater-${key}-${process.version}-${process.arch}.v8cache`
  // In the shared temporary directory, a directory of this user's that only this user can
  // write: a cache is code this process runs.
  const uid = process.getuid?.()
  const userTmp = join(tmpdir(), `breakwater-code-cache-${uid ?? "user"}`)
  const cacheDirs = [join(dirname(bundle), ".cache"), userTmp]
  const trusted = (dir) => {
    if (dir !== userTmp || uid === undefined) return true
    const stat = lstatSync(dir)
    return stat.isDirectory() && stat.uid === uid && (stat.mode & 0o022) === 0
  }

  // The file is the cache's SHA-1 then the cache: V8 checks the cache's header (its version,
  // flags, the source's length), not its contents, and crashes on damaged ones.
  const digest = (data) => createHash("sha1").update(data).digest()

  /** The cache's bytes from the first directory that has them intact; undefined when none has. */
  const readCache = () => {
    if (key === undefined) return undefined
    for (const dir of cacheDirs) {
      try {
        if (!trusted(dir)) continue
        const file = readFileSync(join(dir, cacheName))
        const data = file.subarray(20)
        if (data.length > 0 && digest(data).equals(file.subarray(0, 20))) return data
      } catch {
        // not there: the next directory, or no cache
      }
    }
    return undefined
  }

  /** Writes the cache to the first writable directory (whole or not at all: a temporary file renamed). */
  const writeCache = (data) => {
    for (const dir of cacheDirs) {
      try {
        mkdirSync(dir, { recursive: true, mode: 0o700 })
        if (!trusted(dir)) continue
        const tmp = join(dir, `${cacheName}.${process.pid}.tmp`)
        writeFileSync(tmp, Buffer.concat([digest(data), data]))
        renameSync(tmp, join(dir, cacheName))
        return
      } catch {
        // read-only: the next directory, or no cache
      }
    }
  }

  const cachedData = readCache()
  // Node's CommonJS wrapper, on the bundle's first line: stack traces keep the bundle's line numbers.
  const script = new Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
    filename: bundle,
    cachedData,
    // The bundle's own import() calls (of Node's built-ins) go to Node's loader.
    importModuleDynamically: constants.USE_MAIN_CONTEXT_DEFAULT_LOADER
  })
  if (key !== undefined && (cachedData === undefined || script.cachedDataRejected === true)) {
    // After the start, so that the cache holds the functions the start compiled.
    setTimeout(() => {
      try {
        writeCache(script.createCachedData())
      } catch {
        // no cache this time
      }
    }, 1000).unref()
  }
  const module = { exports: {}, filename: bundle, id: bundle, loaded: false }
  script.runInThisContext()(module.exports, createRequire(bundle), module, bundle, dirname(bundle))
}
