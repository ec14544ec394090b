/**
 * The undici implementation of `UpstreamClient` (see `UpstreamClient.makeUndici`),
 * in its own module so that `undici` is loaded only by programs that build it:
 * a program on the platform HttpClient (`UpstreamClient.layer`) never loads it.
 */
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { Readable } from "node:stream"
import { Agent, type Dispatcher, request as undiciRequest } from "undici"
import type { Upstream } from "../Upstream.js"
import type { Reply, StreamReply, UndiciOptions, UpstreamClient } from "../UpstreamClient.js"
import { UpstreamUnreachable } from "../UpstreamError.js"

const flatHeaders = (headers: Record<string, string | Array<string> | undefined>): Record<string, string | undefined> => {
  const out: Record<string, string | undefined> = {}
  for (const key in headers) {
    const v = headers[key]
    out[key] = Array.isArray(v) ? v.join(", ") : v
  }
  return out
}

const transportError = (upstream: Upstream, error: unknown) => {
  const e = error as { readonly code?: string; readonly name?: string; readonly cause?: { readonly code?: string } } | undefined
  return new UpstreamUnreachable({ upstream: upstream.name, reason: e?.code ?? e?.cause?.code ?? e?.name ?? "transport error" })
}

const noop = (): void => {}

/** Our headers plus `extra` (trace context), which never replaces one of ours, whatever its case. */
const withExtra = (ours: Record<string, string>, extra: Readonly<Record<string, string>>): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const key in extra) if (!(key.toLowerCase() in ours)) out[key] = extra[key]!
  return Object.assign(out, ours)
}

/** Raw header lines (name, value, ...) as one record; repeated names joined with ", " (as `flatHeaders`). */
const rawHeaders = (raw: ReadonlyArray<Buffer | string>): Record<string, string | undefined> => {
  // No prototype: a header named `__proto__` is just a header.
  const out: Record<string, string | undefined> = Object.create(null)
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const k = raw[i]!
    const key = (typeof k === "string" ? k : k.toString("latin1")).toLowerCase()
    const v = raw[i + 1]!
    const value = typeof v === "string" ? v : v.toString("latin1")
    const prev = out[key]
    out[key] = prev === undefined ? value : `${prev}, ${value}`
  }
  return out
}

const utf8 = new TextDecoder()

/**
 * One `unsafePost` call, as undici's lowest-level handler: the answer's
 * status, headers and body chunks come straight from the parser, with no
 * body stream (so no stream that could emit an unheard 'error') and no
 * promise. Every ending reaches `done` once: the answer (`onComplete`), or
 * a transport failure, undici's own timeouts included (`onError`); after an
 * abort, nothing does.
 */
class JsonCall implements Dispatcher.DispatchHandler {
  private status = 0
  private headers: Record<string, string | undefined> | undefined
  private readonly chunks: Array<Buffer> = []
  private abortRequest: ((error?: Error) => void) | undefined
  private settled = false

  constructor(
    private readonly upstream: Upstream,
    private readonly done: (error: UpstreamUnreachable | undefined, reply: Reply | undefined) => void
  ) {}

  onConnect(abort: (error?: Error) => void): void {
    // Aborted while queued or connecting: the request ends before it is written.
    if (this.settled) abort()
    else this.abortRequest = abort
  }

  onHeaders(statusCode: number, headers: Array<Buffer>): boolean {
    // 1xx answers are informational; the real one follows.
    if (statusCode >= 200) {
      this.status = statusCode
      this.headers = rawHeaders(headers)
    }
    return true
  }

  onData(chunk: Buffer): boolean {
    this.chunks.push(chunk)
    return true
  }

  onComplete(): void {
    if (this.settled) return
    this.settled = true
    const chunks = this.chunks
    const text = chunks.length === 0
      ? ""
      : utf8.decode(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks))
    this.done(undefined, { status: this.status, headers: this.headers ?? {}, text })
  }

  onError(error: Error): void {
    if (this.settled) return
    this.settled = true
    this.done(transportError(this.upstream, error), undefined)
  }

  /** Ends the request (and its connection, if it was written); `done` is not called. */
  readonly abort = (): void => {
    if (this.settled) return
    this.settled = true
    this.chunks.length = 0
    const abort = this.abortRequest
    this.abortRequest = undefined
    abort?.()
  }
}

/** Where an upstream's path goes, and its headers: computed once per upstream and path. */
interface Target {
  readonly origin: string
  readonly path: string
  /** Our headers as raw name/value pairs, shared by every call (undici does not change them). */
  readonly headers: ReadonlyArray<string>
  readonly record: Record<string, string>
}

/**
 * A response body as an async iterable whose `return` destroys the body at
 * once. Node's own iterator only finishes a pending read when the next chunk
 * arrives, so a stalled upstream would hold the connection (and whatever
 * waits on the release) until it spoke again.
 */
const bodyIterable = (body: Readable): AsyncIterable<Uint8Array> => ({
  [Symbol.asyncIterator]: () => {
    const it = body[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>
    return {
      next: () => it.next(),
      return: () => {
        body.destroy()
        return Promise.resolve({ done: true as const, value: undefined })
      }
    }
  }
})

/**
 * undici's `request` on a dedicated Agent. The Agent is destroyed with the
 * layer, without waiting for calls still in flight: at that point nothing
 * will read their answers, and a shutdown must not wait on a hung upstream.
 */
export const makeUndici = (options: UndiciOptions = {}): Effect.Effect<UpstreamClient, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() =>
        new Agent({
          keepAliveTimeout: options.keepAliveTimeout ?? 30_000,
          headersTimeout: options.headersTimeout ?? 120_000,
          bodyTimeout: options.bodyTimeout ?? 120_000,
          ...(options.connections === undefined ? {} : { connections: options.connections })
        })
      ),
      (agent) => Effect.promise(() => agent.destroy().catch(noop))
    ),
    (agent) => {
      const headersFor = (upstream: Upstream, body: boolean): Record<string, string> =>
        body
          ? {
            authorization: `Bearer ${Redacted.value(upstream.apiKey)}`,
            accept: "application/json",
            "content-type": "application/json"
          }
          : { authorization: `Bearer ${Redacted.value(upstream.apiKey)}`, accept: "application/json" }

      const send = (
        upstream: Upstream,
        method: "GET" | "POST",
        path: string,
        body: string | Uint8Array | undefined,
        signal: AbortSignal,
        extra?: Readonly<Record<string, string>>
      ) =>
        undiciRequest(upstream.baseUrl + path, {
          method,
          headers: extra === undefined ? headersFor(upstream, body !== undefined) : withExtra(headersFor(upstream, body !== undefined), extra),
          ...(body === undefined ? {} : { body }),
          signal,
          dispatcher: agent
        })

      const readAll = (
        upstream: Upstream,
        method: "GET" | "POST",
        path: string,
        body?: string | Uint8Array,
        headers?: Readonly<Record<string, string>>
      ) =>
        Effect.tryPromise({
          try: async (signal) => {
            const res = await send(upstream, method, path, body, signal, headers)
            // A destroyed body emits 'error': never without a listener (it would end the process).
            res.body.on("error", noop)
            const text = await res.body.text()
            return { status: res.statusCode, headers: flatHeaders(res.headers), text } satisfies Reply
          },
          catch: (error) => transportError(upstream, error)
        })

      /**
       * The request is interruptible up to the answer's headers (the signal
       * aborts it); the body's release is registered in the same
       * uninterruptible step that receives the answer, so no body is ever
       * left open. An answer that arrives just as the call is interrupted is
       * destroyed on the spot (undici does so too, through the signal).
       */
      const postStream = (
        upstream: Upstream,
        path: string,
        body: string | Uint8Array,
        headers?: Readonly<Record<string, string>>
      ) =>
        Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(
            restore(Effect.tryPromise({
              try: async (signal) => {
                const res = await send(upstream, "POST", path, body, signal, headers)
                res.body.on("error", noop)
                if (signal.aborted) res.body.destroy()
                return res
              },
              catch: (error) => transportError(upstream, error)
            })),
            (res) =>
              Effect.as(
                Effect.addFinalizer(() => Effect.sync(() => res.body.destroy())),
                {
                  status: res.statusCode,
                  headers: flatHeaders(res.headers),
                  body: Stream.fromAsyncIterable(bodyIterable(res.body), (error) => transportError(upstream, error))
                } satisfies StreamReply
              )
          )
        )

      const targets = new WeakMap<Upstream, Map<string, Target>>()
      const targetOf = (upstream: Upstream, path: string): Target => {
        let byPath = targets.get(upstream)
        if (byPath === undefined) {
          byPath = new Map()
          targets.set(upstream, byPath)
        }
        let target = byPath.get(path)
        if (target === undefined) {
          const url = new URL(upstream.baseUrl + path)
          const record = headersFor(upstream, true)
          const headers: Array<string> = []
          for (const key in record) headers.push(key, record[key]!)
          target = { origin: url.origin, path: url.pathname + url.search, headers, record }
          if (byPath.size < 100) byPath.set(path, target)
        }
        return target
      }

      /**
       * `post` one level down: undici's `dispatch` with a handler of our own
       * (no AbortController, no promise, no body stream per call). Errors
       * thrown while starting (a bad URL) are reported to `done` too.
       */
      const unsafePost: NonNullable<UpstreamClient["unsafePost"]> = (upstream, path, body, headers, done) => {
        const call = new JsonCall(upstream, done)
        try {
          const target = targetOf(upstream, path)
          agent.dispatch({
            origin: target.origin,
            path: target.path,
            method: "POST",
            headers: headers === undefined ? target.headers as Array<string> : withExtra(target.record, headers),
            body
          }, call)
        } catch (error) {
          call.onError(error as Error)
        }
        return call.abort
      }

      return {
        post: (upstream, path, body, headers) => readAll(upstream, "POST", path, body, headers),
        get: (upstream, path) => readAll(upstream, "GET", path),
        postStream,
        unsafePost
      } satisfies UpstreamClient
    }
  )

