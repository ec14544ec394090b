/**
 * Per-request control headers: a caller may narrow, never widen, the
 * relay's policy for one request.
 *
 * - `x-breakwater-fallbacks: claude-sonnet-4.5,gemini-2.5-flash` (or `none`):
 *   which of the model's configured fallbacks may answer, in that order.
 * - `x-breakwater-timeout: 10s`: a shorter deadline (at most `routing.requestTimeout`).
 * - `x-breakwater-max-attempts: 2`: fewer upstream calls (at most `routing.maxAttempts`).
 * - `x-breakwater-upstream: name`: only that upstream (one that serves the model).
 *
 * A value that is malformed or would widen the policy is the caller's error:
 * a 400 whose `param` names the header. Absent headers cost one lookup each.
 */
import type { Relay } from "@breakwater/core"
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
import { parseDuration } from "./Config.js"

export const FALLBACKS = "x-breakwater-fallbacks"
export const TIMEOUT = "x-breakwater-timeout"
export const MAX_ATTEMPTS = "x-breakwater-max-attempts"
export const UPSTREAM = "x-breakwater-upstream"
export const HEDGE = "x-breakwater-hedge"

/** What the headers narrow, as the relay's call options. */
export type Controls = Pick<Relay.CallOptions, "fallbacks" | "timeout" | "maxAttempts" | "upstream" | "hedge">

/** A control header the gateway cannot honour: the 400 names it. */
export interface InvalidControl {
  readonly _tag: "InvalidControl"
  readonly header: string
  readonly message: string
}

export const isInvalid = (c: Controls | InvalidControl): c is InvalidControl => "_tag" in c

const invalid = (header: string, message: string): InvalidControl => ({ _tag: "InvalidControl", header, message })

/** Shown values are cut short: a header may be long. */
const shown = (value: string) => JSON.stringify(value.length > 80 ? `${value.slice(0, 77)}...` : value)

/**
 * The controls a request's headers ask for (undefined when none), or the
 * first invalid one. `model` is the asked model.
 */
export const read = (
  headers: Readonly<Record<string, string | undefined>>,
  model: string,
  relay: Relay.Relay
): Controls | InvalidControl | undefined => {
  const fallbacksHeader = headers[FALLBACKS]
  const timeoutHeader = headers[TIMEOUT]
  const attemptsHeader = headers[MAX_ATTEMPTS]
  const upstreamHeader = headers[UPSTREAM]
  const hedgeHeader = headers[HEDGE]
  if (
    fallbacksHeader === undefined && timeoutHeader === undefined && attemptsHeader === undefined && upstreamHeader === undefined &&
    hedgeHeader === undefined
  ) {
    return undefined
  }
  const out: { -readonly [K in keyof Controls]: Controls[K] } = {}
  if (fallbacksHeader !== undefined) {
    const text = fallbacksHeader.trim()
    if (text.toLowerCase() === "none") out.fallbacks = []
    else {
      const configured = relay.fallbacksOf(model)
      const asked = text.split(",").map((m) => m.trim())
      if (asked.some((m) => m === "")) {
        return invalid(FALLBACKS, `${FALLBACKS} must be a comma-separated list of models, or 'none'; got ${shown(fallbacksHeader)}.`)
      }
      for (const m of asked) {
        if (!configured.includes(m)) {
          return invalid(
            FALLBACKS,
            configured.length === 0
              ? `${FALLBACKS}: '${model}' has no configured fallbacks, so ${shown(m)} cannot be one; use 'none' or leave the header out.`
              : `${FALLBACKS}: ${shown(m)} is not a configured fallback of '${model}' (configured: ${configured.join(", ")}).`
          )
        }
      }
      out.fallbacks = [...new Set(asked)]
    }
  }
  if (timeoutHeader !== undefined) {
    const parsed = parseDuration(timeoutHeader)
    if (Option.isNone(parsed) || Duration.toMillis(parsed.value) <= 0) {
      return invalid(TIMEOUT, `${TIMEOUT} must be a positive duration such as 10s, 500ms or 1m30s; got ${shown(timeoutHeader)}.`)
    }
    if (Duration.greaterThan(parsed.value, relay.requestTimeout)) {
      return invalid(
        TIMEOUT,
        `${TIMEOUT} may only shorten the request's deadline: ${shown(timeoutHeader)} is longer than the gateway's ${Duration.format(relay.requestTimeout)}.`
      )
    }
    out.timeout = parsed.value
  }
  if (attemptsHeader !== undefined) {
    const text = attemptsHeader.trim()
    const n = /^\d{1,6}$/.test(text) ? Number(text) : Number.NaN
    if (!Number.isInteger(n) || n < 1) {
      return invalid(MAX_ATTEMPTS, `${MAX_ATTEMPTS} must be a whole number of at least 1; got ${shown(attemptsHeader)}.`)
    }
    if (n > relay.maxAttempts) {
      return invalid(MAX_ATTEMPTS, `${MAX_ATTEMPTS} may only lower the attempts: ${n} is more than the gateway's ${relay.maxAttempts}.`)
    }
    out.maxAttempts = n
  }
  if (upstreamHeader !== undefined) {
    const name = upstreamHeader.trim()
    const u = relay.upstreams.find((x) => x.name === name)
    if (u === undefined) return invalid(UPSTREAM, `${UPSTREAM}: no upstream named ${shown(name)}.`)
    if (u.modelFor(model) === undefined) return invalid(UPSTREAM, `${UPSTREAM}: upstream ${shown(name)} does not serve '${model}'.`)
    out.upstream = name
  }
  if (hedgeHeader !== undefined) {
    // `off` marks a request that must not be sent twice (not idempotent); `on` asks for the route's hedging.
    const v = hedgeHeader.trim().toLowerCase()
    if (v === "off" || v === "false") out.hedge = false
    else if (v === "on" || v === "true") out.hedge = true
    else return invalid(HEDGE, `${HEDGE} must be 'on' or 'off'; got ${shown(hedgeHeader)}.`)
  }
  return out
}
