import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricKey from "effect/MetricKey"
import * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"
import * as Prometheus from "../src/Prometheus.js"

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** A metric-name prefix no other test (or run) shares. */
const uniquePrefix = () => `test_prom_${Math.random().toString(36).slice(2, 10)}`

/** Renders the default registry and keeps the lines that mention `prefix`. */
const renderFor = (prefix: string) =>
  Effect.map(Prometheus.render, (text) => text.split("\n").filter((l) => l.includes(prefix)))

// ---------------------------------------------------------------------------
// Default registry (render)
// ---------------------------------------------------------------------------

describe("Prometheus.render", () => {
  it("exposes the content type of the text format 0.0.4", () => {
    expect(Prometheus.contentType).toBe("text/plain; version=0.0.4; charset=utf-8")
  })

  it.effect("renders a tagged counter: one HELP/TYPE, series sorted by labels", () =>
    Effect.gen(function*() {
      const p = uniquePrefix()
      const requests = Metric.counter(`${p}_requests_total`, { description: "Requests served" })
      yield* Metric.increment(Metric.tagged(requests, "upstream", "b"))
      yield* Metric.incrementBy(Metric.tagged(Metric.tagged(requests, "upstream", "a"), "code", "200"), 3)
      yield* Metric.increment(Metric.tagged(requests, "upstream", "a"))
      yield* Metric.increment(Metric.tagged(requests, "upstream", "b"))

      const lines = yield* renderFor(p)
      expect(lines).toEqual([
        `# HELP ${p}_requests_total Requests served`,
        `# TYPE ${p}_requests_total counter`,
        `${p}_requests_total{code="200",upstream="a"} 3`,
        `${p}_requests_total{upstream="a"} 1`,
        `${p}_requests_total{upstream="b"} 2`
      ])
    }))

  it.effect("renders a bigint counter without precision loss", () =>
    Effect.gen(function*() {
      const p = uniquePrefix()
      const tokens = Metric.counter(`${p}_tokens_total`, { bigint: true })
      yield* Metric.incrementBy(tokens, 12345678901234567890n)
      yield* Metric.increment(tokens)

      const lines = yield* renderFor(p)
      expect(lines).toEqual([
        `# TYPE ${p}_tokens_total counter`,
        `${p}_tokens_total 12345678901234567891`
      ])
    }))

  it.effect("renders gauges: integers without decimals, fractions, negatives", () =>
    Effect.gen(function*() {
      const p = uniquePrefix()
      const gauge = Metric.gauge(`${p}_in_flight`, { description: "Calls in flight" })
      yield* Metric.set(Metric.tagged(gauge, "pool", "x"), 7)
      yield* Metric.set(Metric.tagged(gauge, "pool", "y"), 2.5)
      yield* Metric.set(Metric.tagged(gauge, "pool", "z"), -3)

      const lines = yield* renderFor(p)
      expect(lines).toEqual([
        `# HELP ${p}_in_flight Calls in flight`,
        `# TYPE ${p}_in_flight gauge`,
        `${p}_in_flight{pool="x"} 7`,
        `${p}_in_flight{pool="y"} 2.5`,
        `${p}_in_flight{pool="z"} -3`
      ])
    }))

  it.effect("renders a histogram with cumulative buckets, +Inf, _sum and _count", () =>
    Effect.gen(function*() {
      const p = uniquePrefix()
      const latency = Metric.histogram(
        `${p}_latency_ms`,
        MetricBoundaries.fromIterable([1, 5, 10]),
        "Latency"
      ).pipe(Metric.tagged("route", "/v1/chat"))
      for (const v of [0.5, 3, 3, 7, 20]) yield* Metric.update(latency, v)

      const lines = yield* renderFor(p)
      expect(lines).toEqual([
        `# HELP ${p}_latency_ms Latency`,
        `# TYPE ${p}_latency_ms histogram`,
        `${p}_latency_ms_bucket{route="/v1/chat",le="1"} 1`,
        `${p}_latency_ms_bucket{route="/v1/chat",le="5"} 3`,
        `${p}_latency_ms_bucket{route="/v1/chat",le="10"} 4`,
        `${p}_latency_ms_bucket{route="/v1/chat",le="+Inf"} 5`,
        `${p}_latency_ms_sum{route="/v1/chat"} 33.5`,
        `${p}_latency_ms_count{route="/v1/chat"} 5`
      ])
    }))

  it.effect("histogram buckets never decrease and +Inf equals _count", () =>
    Effect.gen(function*() {
      const p = uniquePrefix()
      const h = Metric.histogram(`${p}_size`, MetricBoundaries.exponential({ start: 1, factor: 2, count: 8 }))
      const values = [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233]
      for (const v of values) yield* Metric.update(h, v)

      const lines = yield* renderFor(p)
      const buckets = lines.filter((l) => l.startsWith(`${p}_size_bucket`))
      const counts = buckets.map((l) => Number(l.split(" ")[1]))
      expect(buckets).toHaveLength(8) // 7 finite boundaries + "+Inf", no duplicate +Inf
      expect(buckets.filter((l) => l.includes(`le="+Inf"`))).toHaveLength(1)
      expect(buckets.at(-1)).toContain(`le="+Inf"`)
      for (let i = 1; i < counts.length; i++) expect(counts[i]).toBeGreaterThanOrEqual(counts[i - 1]!)
      expect(lines).toContain(`${p}_size_count ${values.length}`)
      expect(counts.at(-1)).toBe(values.length)
      // every finite bucket counts exactly the values <= its boundary
      for (const l of buckets.slice(0, -1)) {
        const le = Number(/le="([^"]+)"/.exec(l)![1])
        expect(Number(l.split(" ")[1])).toBe(values.filter((v) => v <= le).length)
      }
    }))

  it.effect("renders a frequency as a counter with one series per occurrence (key label)", () =>
    Effect.gen(function*() {
      const p = uniquePrefix()
      const finish = Metric.frequency(`${p}_finish_reason`, { description: "Finish reasons" }).pipe(
        Metric.tagged("model", "m1")
      )
      for (const w of ["stop", "length", "stop"]) yield* Metric.update(finish, w)

      const lines = yield* renderFor(p)
      expect(lines).toEqual([
        `# HELP ${p}_finish_reason Finish reasons`,
        `# TYPE ${p}_finish_reason counter`,
        `${p}_finish_reason{model="m1",key="length"} 1`,
        `${p}_finish_reason{model="m1",key="stop"} 2`
      ])
    }))

  it.live("renders a summary: quantile lines, then _sum and _count", () =>
    Effect.gen(function*() {
      const p = uniquePrefix()
      const s = Metric.summary({
        name: `${p}_ttfb`,
        maxAge: "1 minute",
        maxSize: 100,
        error: 0,
        quantiles: [0.9, 0.5]
      })
      for (let v = 1; v <= 10; v++) yield* Metric.update(s, v)

      const lines = yield* renderFor(p)
      expect(lines).toEqual([
        `# TYPE ${p}_ttfb summary`,
        `${p}_ttfb{quantile="0.5"} 5`,
        `${p}_ttfb{quantile="0.9"} 9`,
        `${p}_ttfb_sum 55`,
        `${p}_ttfb_count 10`
      ])
    }))

  it.effect("escapes HELP text and label values, sanitizes label names", () =>
    Effect.gen(function*() {
      const p = uniquePrefix()
      const c = Metric.counter(`${p}_escaped_total`, { description: "back\\slash and\nnewline \"quoted\"" }).pipe(
        Metric.tagged("http.method", "a\\b\"c\nd"),
        Metric.tagged("1st-tag", "ok")
      )
      yield* Metric.increment(c)

      const text = yield* Prometheus.render
      const lines = text.split("\n").filter((l) => l.includes(p))
      expect(lines).toEqual([
        `# HELP ${p}_escaped_total back\\\\slash and\\nnewline "quoted"`,
        `# TYPE ${p}_escaped_total counter`,
        `${p}_escaped_total{_1st_tag="ok",http_method="a\\\\b\\"c\\nd"} 1`
      ])
      // no raw newline leaked into the middle of a series
      expect(text.split("\n").filter((l) => l.startsWith("d\"") || l.startsWith("newline"))).toEqual([])
    }))

  it.effect("HELP and TYPE appear once per name; output ends with a newline", () =>
    Effect.gen(function*() {
      const p = uniquePrefix()
      const c = Metric.counter(`${p}_many_total`, { description: "Many" })
      for (const tag of ["c", "a", "b", "a"]) yield* Metric.increment(Metric.tagged(c, "t", tag))
      const g = Metric.gauge(`${p}_other`)
      yield* Metric.set(g, 1)

      const text = yield* Prometheus.render
      const lines = text.split("\n").filter((l) => l.includes(p))
      expect(lines.filter((l) => l.startsWith(`# HELP ${p}_many_total `))).toHaveLength(1)
      expect(lines.filter((l) => l.startsWith(`# TYPE ${p}_many_total `))).toHaveLength(1)
      expect(lines).toEqual([
        `# HELP ${p}_many_total Many`,
        `# TYPE ${p}_many_total counter`,
        `${p}_many_total{t="a"} 2`,
        `${p}_many_total{t="b"} 1`,
        `${p}_many_total{t="c"} 1`,
        `# TYPE ${p}_other gauge`,
        `${p}_other 1`
      ])
      expect(text.endsWith("\n")).toBe(true)
      expect(text.endsWith("\n\n")).toBe(false)
    }))

  it.effect("is deterministic: rendering twice gives the same text", () =>
    Effect.gen(function*() {
      const p = uniquePrefix()
      const c = Metric.counter(`${p}_det_total`)
      for (const tag of ["z", "m", "a"]) yield* Metric.increment(Metric.tagged(c, "t", tag))
      const a = yield* renderFor(p)
      const b = yield* renderFor(p)
      expect(a).toEqual(b)
    }))
})

// ---------------------------------------------------------------------------
// Pure rendering (renderPairs)
// ---------------------------------------------------------------------------

describe("Prometheus.renderPairs", () => {
  it("renders nothing for no pairs", () => {
    expect(Prometheus.renderPairs([])).toBe("")
  })

  it("formats NaN, infinities, integers, fractions and bigint gauges", () => {
    const pairs = [
      MetricPair.unsafeMake(MetricKey.gauge("g_nan"), MetricState.gauge(Number.NaN)),
      MetricPair.unsafeMake(MetricKey.gauge("g_pinf"), MetricState.gauge(Number.POSITIVE_INFINITY)),
      MetricPair.unsafeMake(MetricKey.gauge("g_ninf"), MetricState.gauge(Number.NEGATIVE_INFINITY)),
      MetricPair.unsafeMake(MetricKey.gauge("g_int"), MetricState.gauge(42)),
      MetricPair.unsafeMake(MetricKey.gauge("g_frac"), MetricState.gauge(0.25)),
      MetricPair.unsafeMake(MetricKey.gauge("g_big", { bigint: true }), MetricState.gauge(9007199254740993n))
    ]
    expect(Prometheus.renderPairs(pairs)).toBe(
      [
        "# TYPE g_big gauge",
        "g_big 9007199254740993",
        "# TYPE g_frac gauge",
        "g_frac 0.25",
        "# TYPE g_int gauge",
        "g_int 42",
        "# TYPE g_nan gauge",
        "g_nan NaN",
        "# TYPE g_ninf gauge",
        "g_ninf -Inf",
        "# TYPE g_pinf gauge",
        "g_pinf +Inf",
        ""
      ].join("\n")
    )
  })

  it("sorts families by name and series by labels, whatever the input order", () => {
    const pair = (name: string, tag: string, n: number) =>
      MetricPair.unsafeMake(MetricKey.counter(name).pipe(MetricKey.tagged("t", tag)), MetricState.counter(n))
    const pairs = [pair("b_total", "2", 1), pair("a_total", "y", 2), pair("b_total", "1", 3), pair("a_total", "x", 4)]
    const expected = [
      "# TYPE a_total counter",
      "a_total{t=\"x\"} 4",
      "a_total{t=\"y\"} 2",
      "# TYPE b_total counter",
      "b_total{t=\"1\"} 3",
      "b_total{t=\"2\"} 1",
      ""
    ].join("\n")
    expect(Prometheus.renderPairs(pairs)).toBe(expected)
    expect(Prometheus.renderPairs([...pairs].reverse())).toBe(expected)
  })

  it("renders a summary with missing quantiles as NaN", () => {
    const key = MetricKey.summary({
      name: "s",
      maxAge: "1 minute",
      maxSize: 10,
      error: 0.01,
      quantiles: [0.5, 0.99],
      description: "A summary"
    })
    const state = MetricState.summary({
      error: 0.01,
      quantiles: [[0.99, Option.none()], [0.5, Option.some(1.5)]],
      count: 2,
      min: 1,
      max: 2,
      sum: 3
    })
    expect(Prometheus.renderPairs([MetricPair.unsafeMake(key, state)])).toBe(
      [
        "# HELP s A summary",
        "# TYPE s summary",
        "s{quantile=\"0.5\"} 1.5",
        "s{quantile=\"0.99\"} NaN",
        "s_sum 3",
        "s_count 2",
        ""
      ].join("\n")
    )
  })

  it("keeps Effect's cumulative buckets as they are and takes +Inf from count", () => {
    const key = MetricKey.histogram("h", MetricBoundaries.fromIterable([0.1, 1]))
    const state = MetricState.histogram({
      buckets: [[0.1, 2], [1, 5], [Number.POSITIVE_INFINITY, 6]],
      count: 6,
      min: 0,
      max: 3,
      sum: 7.25
    })
    expect(Prometheus.renderPairs([MetricPair.unsafeMake(key, state)])).toBe(
      [
        "# TYPE h histogram",
        "h_bucket{le=\"0.1\"} 2",
        "h_bucket{le=\"1\"} 5",
        "h_bucket{le=\"+Inf\"} 6",
        "h_sum 7.25",
        "h_count 6",
        ""
      ].join("\n")
    )
  })

  it("sanitizes metric names and dedupes label names (last wins; renderer labels win)", () => {
    const key = MetricKey.frequency("my.app-events").pipe(
      MetricKey.tagged("a.b", "first"),
      MetricKey.tagged("a-b", "second"),
      MetricKey.tagged("key", "user-tag")
    )
    const state = MetricState.frequency(new Map([["x", 1]]))
    expect(Prometheus.renderPairs([MetricPair.unsafeMake(key, state)])).toBe(
      ["# TYPE my_app_events counter", "my_app_events{a_b=\"second\",key=\"x\"} 1", ""].join("\n")
    )
  })

  it("types a name shared by different kinds as untyped", () => {
    const pairs = [
      MetricPair.unsafeMake(MetricKey.counter("mixed").pipe(MetricKey.tagged("k", "c")), MetricState.counter(1)),
      MetricPair.unsafeMake(MetricKey.gauge("mixed").pipe(MetricKey.tagged("k", "g")), MetricState.gauge(2))
    ]
    expect(Prometheus.renderPairs(pairs)).toBe(
      ["# TYPE mixed untyped", "mixed{k=\"c\"} 1", "mixed{k=\"g\"} 2", ""].join("\n")
    )
  })
})
