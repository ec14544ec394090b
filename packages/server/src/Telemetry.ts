/**
 * Traces: the gateway's spans, through `@effect/opentelemetry` to an OTLP
 * collector (OTLP/HTTP, protobuf bodies, batched).
 *
 * Loaded only when traces are on (`telemetry` in the config, or the
 * `OTEL_EXPORTER_OTLP_*` variables): a gateway without them never loads the
 * OpenTelemetry SDK, and its requests make no span at all.
 *
 * What it provides: Effect's `Tracer` backed by an OpenTelemetry tracer (the
 * request and attempt spans of Http.ts and the core's Relay go through it);
 * the caller's W3C trace context (`traceparent`, `tracestate`) as the
 * request span's parent; and the headers that carry an attempt's span to its
 * upstream. Spans are exported in batches (at most 2048 queued: past that
 * new spans are dropped, never the gateway's memory); a collector that
 * fails is said in a warning at most once a minute, and the gateway serves
 * on. At shutdown the spans still queued are sent, for at most 2 s.
 */
import * as OtelTracer from "@effect/opentelemetry/Tracer"
import { type ExportResult, ExportResultCode, parseTraceParent, TraceState } from "@opentelemetry/core"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto"
import { resourceFromAttributes } from "@opentelemetry/resources"
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  ParentBasedSampler,
  type ReadableSpan,
  type SpanExporter,
  type SpanProcessor,
  TraceIdRatioBasedSampler
} from "@opentelemetry/sdk-trace-base"
import { Relay } from "@breakwater/core"
import * as Context from "effect/Context"
import * as Option from "effect/Option"
import * as Effect from "effect/Effect"
import { hostname } from "node:os"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import type { TelemetryConfig } from "./Config.js"
import type * as Http from "./Http.js"

export interface Telemetry {
  /** Effect's tracer, backed by the OpenTelemetry SDK: install it in the request fibers' runtime. */
  readonly tracer: Tracer.Tracer
  /** For the relay: the headers that name an attempt's span upstream. */
  readonly relay: Relay.Tracing
  /** For the HTTP handler: the caller's trace context. */
  readonly requests: Http.RequestTracing
}

export interface Options {
  /** Where spans go instead of the OTLP exporter (tests: a `SimpleSpanProcessor` over an in-memory exporter). */
  readonly spanProcessor?: SpanProcessor | undefined
  /** Says that exports fail (at most once a minute). */
  readonly warn?: ((message: string) => void) | undefined
}

const VERSION = "0.1.0"

/**
 * The caller's span from its W3C headers (Node writes header names in lower
 * case, and joins repeated ones with commas: two `traceparent`s are invalid),
 * or undefined when it sent none or an invalid one (a request then starts a
 * new trace). Its sampled flag and `tracestate` are kept: the gateway's spans
 * follow the caller's sampling decision and pass its `tracestate` on.
 */
export const parentOf = (headers: Readonly<Record<string, string | undefined>>): Tracer.ExternalSpan | undefined => {
  const traceparent = headers["traceparent"]
  if (traceparent === undefined) return undefined
  // OpenTelemetry's own parser (its W3C propagator's), without the propagator's contexts.
  const parsed = parseTraceParent(traceparent)
  if (parsed === null) return undefined
  const tracestate = headers["tracestate"]
  return OtelTracer.makeExternalSpan({
    traceId: parsed.traceId,
    spanId: parsed.spanId,
    traceFlags: parsed.traceFlags,
    ...(tracestate === undefined || tracestate === "" ? {} : { traceState: new TraceState(tracestate) })
  })
}

/**
 * The caller's `tracestate`, kept on the trace's remote root (see
 * {@link parentOf}); the gateway's spans add nothing to it.
 */
const traceStateOf = (span: Tracer.Span): string | undefined => {
  let at: Tracer.AnySpan = span
  // A request's spans are at most two levels below the caller's.
  for (let depth = 0; depth < 4; depth++) {
    if (at._tag === "ExternalSpan") {
      const state = Context.getOption(at.context, OtelTracer.OtelTraceState)
      const text = Option.isSome(state) ? state.value.serialize() : ""
      return text === "" ? undefined : text
    }
    if (Option.isNone(at.parent)) return undefined
    at = at.parent.value
  }
  return undefined
}

/** `traceparent` naming an attempt's span, and the caller's `tracestate`, for the upstream call. */
const upstreamHeaders = (span: Tracer.Span): Readonly<Record<string, string>> => {
  const state = traceStateOf(span)
  const traceparent = Relay.traceparentOf(span)
  return state === undefined ? { traceparent } : { traceparent, tracestate: state }
}

/** The exporter, saying (at most once a minute) when the collector refuses or cannot be reached. */
const warning = (inner: SpanExporter, url: string, secrets: ReadonlyArray<string>, warn: (message: string) => void): SpanExporter => {
  let lastWarned = Number.NEGATIVE_INFINITY
  let failed = 0
  const scrub = (text: string) => secrets.reduce((acc, s) => (s.length >= 4 ? acc.split(s).join("<redacted>") : acc), text)
  return {
    export: (spans: Array<ReadableSpan>, done: (result: ExportResult) => void) =>
      inner.export(spans, (result) => {
        if (result.code !== ExportResultCode.SUCCESS) {
          failed++
          const now = performance.now()
          if (now - lastWarned >= 60_000) {
            lastWarned = now
            const why = result.error === undefined ? "unknown error" : scrub(String(result.error.message)).slice(0, 200)
            warn(`traces: exporting spans to ${url} failed (${why}); ${failed} batch(es) lost since the last warning`)
            failed = 0
          }
        }
        done(result)
      }),
    shutdown: () => inner.shutdown(),
    forceFlush: () => inner.forceFlush?.() ?? Promise.resolve()
  }
}

/**
 * The tracer provider for `settings`, shut down (its queue flushed, for at
 * most 2 s) when the scope closes.
 */
export const make = (settings: TelemetryConfig | undefined, options: Options = {}): Effect.Effect<Telemetry, never, Scope.Scope> =>
  Effect.gen(function*() {
    const serviceName = settings?.serviceName ?? "breakwater"
    let processor = options.spanProcessor
    if (processor === undefined && settings !== undefined) {
      const headers: Record<string, string> = {}
      for (const [k, v] of Object.entries(settings.headers)) headers[k] = Redacted.value(v)
      const exporter = new OTLPTraceExporter({ url: settings.tracesUrl, headers })
      processor = new BatchSpanProcessor(
        warning(exporter, settings.tracesUrl, Object.values(headers), options.warn ?? (() => {})),
        { maxQueueSize: 2048 }
      )
    }
    const provider = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new BasicTracerProvider({
          resource: resourceFromAttributes({
            // Tells replicas apart; OTEL_RESOURCE_ATTRIBUTES may say otherwise.
            "host.name": hostname(),
            ...settings?.resourceAttributes,
            "service.name": serviceName,
            "service.version": VERSION
          }),
          spanProcessors: processor === undefined ? [] : [processor],
          ...(settings?.sampleRatio === undefined
            ? {}
            : { sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(settings.sampleRatio) }) })
        })
      ),
      (provider) =>
        Effect.promise(() => provider.forceFlush().then(() => provider.shutdown()).catch(() => {})).pipe(
          Effect.timeoutOption("2 seconds"),
          Effect.interruptible,
          Effect.asVoid
        )
    )
    const bridge = yield* Effect.provideService(OtelTracer.make, OtelTracer.OtelTracer, provider.getTracer("breakwater", VERSION))
    // The bridge's spans, without its `context` hook: Effect runs that hook
    // around every operation of a fiber that has a span, to set
    // OpenTelemetry's active context for libraries instrumented by
    // OpenTelemetry itself. The gateway has none (it propagates trace
    // context itself), and with the hook a traced request cost 2.6 times an
    // untraced one in CPU (bench:handler; 2.2 without it), in new contexts to collect.
    const tracer = Tracer.make({ span: bridge.span, context: (execution) => execution() })
    return { tracer, relay: { headers: upstreamHeaders }, requests: { parentOf } }
  })
