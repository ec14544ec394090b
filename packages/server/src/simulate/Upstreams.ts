/**
 * Simulated upstreams: what each answers to a call, drawn from the scenario
 * with seeded random numbers, and an `UpstreamClient` that gives those
 * answers to the real relay (no HTTP; time passes on the Clock).
 *
 * Each call's draws come from its own generator, seeded by (seed, request,
 * upstream, n-th call of that request to that upstream). So the direct
 * column's call for request i and Breakwater's first call of request i to
 * the same upstream see the same luck: the columns differ by what Breakwater
 * does, not by chance.
 */
import { UpstreamClient, UpstreamError } from "@breakwater/core"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { hash, Prng, Z99 } from "./Prng.js"
import type { SimulatedUpstream } from "./Scenario.js"

export type AnswerKind = "ok" | "429" | "503" | "hang"

export interface Answer {
  readonly kind: AnswerKind
  /** Millis until the answer (not used for a hang). */
  readonly delay: number
  /** The Retry-After to send with a 429, millis. */
  readonly retryAfter: number | undefined
  readonly cause: "random" | "quota" | "outage" | "ok"
}

/** Counts of one upstream's calls by what it answered. */
export interface Traffic {
  calls: number
  ok: number
  rateLimited: number
  quotaExceeded: number
  serverErrors: number
  hangs: number
  outageAnswers: number
  /**
   * Calls that would have answered but were aborted first (a hedge's loser,
   * a timeout). Billed in full all the same: a provider may finish and bill
   * a request whose client has gone, so the cost is the worst case.
   */
  aborted: number
  probes: number
  costUsd: number
}

const emptyTraffic = (): Traffic => ({
  calls: 0,
  ok: 0,
  rateLimited: 0,
  quotaExceeded: 0,
  serverErrors: 0,
  hangs: 0,
  outageAnswers: 0,
  aborted: 0,
  probes: 0,
  costUsd: 0
})

/** Where {@link Model.peek} counts (nothing reads it). */
const scratch: Traffic = emptyTraffic()

/** One simulated upstream in one world (the direct and the Breakwater columns each have their own). */
export class Model {
  readonly traffic: Traffic = emptyTraffic()
  private readonly mu: number
  private readonly sigma: number
  private readonly stallMu: number
  private readonly stallSigma: number
  private window = -1
  private windowRequests = 0
  private windowTokens = 0

  constructor(readonly spec: SimulatedUpstream, readonly index: number, private readonly seed: number) {
    this.mu = Math.log(spec.latency.p50)
    this.sigma = Math.log(spec.latency.p99 / spec.latency.p50) / Z99
    const stall = spec.stalls?.latency
    this.stallMu = stall === undefined ? 0 : Math.log(stall.p50)
    this.stallSigma = stall === undefined ? 0 : Math.log(stall.p99 / stall.p50) / Z99
  }

  /** The outage met by a call at `now` whose draw is `v` (uniform in [0, 1)). */
  outageAt(now: number, v: number) {
    for (const o of this.spec.outages) if (now >= o.from && now < o.to && v < o.share) return o
    return undefined
  }

  /** The answer to call number `nth` (from 0) of request `request`, made at `now`, for `tokens` tokens. */
  decide(now: number, request: number, nth: number, tokens: number): Answer {
    return this.answer(now, request, nth, tokens, true)
  }

  /**
   * The answer {@link decide} would give now, without counting the call: the
   * simulator's fast path looks before it commits to a path.
   */
  peek(now: number, request: number, nth: number, tokens: number): Answer {
    return this.answer(now, request, nth, tokens, false)
  }

  /**
   * Counts a call whose answer {@link peek} just gave as "ok", with nothing
   * changed since: what {@link decide} would count for it, without drawing
   * again (the same counts, the same quota window).
   */
  commitOk(now: number, tokens: number): void {
    this.traffic.calls++
    const window = Math.floor(now / 60_000) * 60_000
    if (window !== this.window) {
      this.window = window
      this.windowRequests = 0
      this.windowTokens = 0
    }
    this.windowRequests++
    this.windowTokens += tokens
    this.traffic.ok++
  }

  private answer(now: number, request: number, nth: number, tokens: number, commit: boolean): Answer {
    const s = this.spec
    const rng = new Prng(hash(this.seed, request, this.index, nth))
    const u = rng.next()
    const v = rng.next()
    const z = rng.normal()
    let latency = this.sigma === 0 ? s.latency.p50 : Math.max(1, Math.round(Math.exp(this.mu + this.sigma * z)))
    // Drawn after the others, and only with stalls configured: a scenario without them draws as before.
    if (s.stalls !== undefined && rng.next() < s.stalls.share) {
      const zs = rng.normal()
      latency = this.stallSigma === 0 ? s.stalls.latency.p50 : Math.max(1, Math.round(Math.exp(this.stallMu + this.stallSigma * zs)))
    }
    // Counts go to a scratch record when only looking.
    const t = commit ? this.traffic : scratch
    t.calls++
    const outage = this.outageAt(now, v)
    if (outage !== undefined) {
      t.outageAnswers++
      return outage.mode === "hang"
        ? { kind: "hang", delay: 0, retryAfter: undefined, cause: "outage" }
        : { kind: "503", delay: s.errorLatency, retryAfter: undefined, cause: "outage" }
    }
    const window = Math.floor(now / 60_000) * 60_000
    const fresh = window !== this.window
    const windowRequests = fresh ? 0 : this.windowRequests
    const windowTokens = fresh ? 0 : this.windowTokens
    if (commit && fresh) {
      this.window = window
      this.windowRequests = 0
      this.windowTokens = 0
    }
    const { requestsPerMinute: rpm, tokensPerMinute: tpm } = s.quota
    if ((rpm !== undefined && windowRequests + 1 > rpm) || (tpm !== undefined && windowTokens + tokens > tpm)) {
      t.quotaExceeded++
      return { kind: "429", delay: s.errorLatency, retryAfter: window + 60_000 - now, cause: "quota" }
    }
    if (commit) {
      this.windowRequests++
      this.windowTokens += tokens
    }
    if (u < s.rate429) {
      t.rateLimited++
      return { kind: "429", delay: s.errorLatency, retryAfter: s.retryAfter, cause: "random" }
    }
    if (u < s.rate429 + s.rate5xx) {
      t.serverErrors++
      return { kind: "503", delay: s.errorLatency, retryAfter: undefined, cause: "random" }
    }
    if (u < s.rate429 + s.rate5xx + s.hang) {
      t.hangs++
      return { kind: "hang", delay: 0, retryAfter: undefined, cause: "random" }
    }
    t.ok++
    return { kind: "ok", delay: latency, retryAfter: undefined, cause: "ok" }
  }

  /** Bills one successful answer. */
  bill(model: string, promptTokens: number, completionTokens: number): void {
    const p = this.spec.price(model)
    this.traffic.costUsd += (promptTokens * p.input + completionTokens * p.output) / 1_000_000
  }
}

/** The simulated upstreams of one world, by name. */
export class World {
  readonly models: ReadonlyArray<Model>
  private readonly byName: Map<string, Model>

  constructor(specs: ReadonlyArray<SimulatedUpstream>, seed: number) {
    this.models = specs.map((s, i) => new Model(s, i, seed))
    this.byName = new Map(this.models.map((m) => [m.spec.name, m]))
  }

  get(name: string): Model | undefined {
    return this.byName.get(name)
  }

  get costUsd(): number {
    return this.models.reduce((a, m) => a + m.traffic.costUsd, 0)
  }

  get calls(): number {
    return this.models.reduce((a, m) => a + m.traffic.calls, 0)
  }
}

// ---------------------------------------------------------------------------
// The client the relay calls

const JSON_HEADERS = { "content-type": "application/json" }

const errorBody = (message: string, type: string, code: string) =>
  JSON.stringify({ error: { message, type, param: null, code } })

const RATE_LIMITED = errorBody("Rate limit reached. Please try again later.", "requests", "rate_limit_exceeded")

/** A simulated 429, with `Retry-After` in whole seconds (at least 1) when the answer gives one (ms). */
const rateLimitedReply = (retryAfterMs: number | undefined): UpstreamClient.Reply => ({
  status: 429,
  headers: retryAfterMs === undefined
    ? JSON_HEADERS
    : { ...JSON_HEADERS, "retry-after": String(Math.max(1, Math.ceil(retryAfterMs / 1000))) },
  text: RATE_LIMITED
})
const UNAVAILABLE = errorBody("The server is temporarily unavailable.", "server_error", "service_unavailable")
const MODELS = JSON.stringify({ object: "list", data: [] })
const UNAVAILABLE_REPLY: UpstreamClient.Reply = { status: 503, headers: JSON_HEADERS, text: UNAVAILABLE }

export interface ClientOptions {
  readonly world: World
  readonly seed: number
  readonly promptTokens: number
  readonly completionTokens: number
  /** Calls made so far by each request in flight, per upstream index. */
  readonly callsOf: (request: number) => Array<number> | undefined
  /**
   * `Effect.sleep(millis)` then `reply()`, in one step where the clock can
   * (`VirtualClock.after`); by default through the Clock, as under TestClock.
   */
  readonly after?: (<A>(millis: number, reply: () => A) => Effect.Effect<A>) | undefined
  /**
   * A plain timer where the clock has them (`VirtualClock.unsafeTimer`):
   * then the client also answers the relay's low-level `unsafePost`, with no
   * fiber per call.
   */
  readonly timer?: ((millis: number, fire: () => void) => () => void) | undefined
  /** The clock's time, with `timer`. */
  readonly now?: (() => number) | undefined
}

const sleepThen = <A>(millis: number, reply: () => A): Effect.Effect<A> =>
  Effect.zipRight(Effect.sleep(Duration.millis(millis)), Effect.sync(reply))

const decoder = new TextDecoder()

/** The request index and model from a body the simulator wrote (`{"model":"...","metadata":{"sim":"r<i>"},...}`). */
const readBody = (text: string): { readonly request: number; readonly model: string } => {
  const m = text.indexOf("\"model\":\"")
  const model = m < 0 ? "" : text.slice(m + 9, text.indexOf("\"", m + 9))
  const r = text.indexOf("\"sim\":\"r")
  const request = r < 0 ? -1 : Number.parseInt(text.slice(r + 8, text.indexOf("\"", r + 8)), 10)
  return { request, model }
}

/** The body of a simulated upstream's answer for `model` (the same for every call, so built once per model). */
export const completions = (promptTokens: number, completionTokens: number): (model: string) => string => {
  const bodies = new Map<string, string>()
  return (model) => {
    let body = bodies.get(model)
    if (body === undefined) {
      body = JSON.stringify({
        id: "chatcmpl-sim",
        object: "chat.completion",
        created: 0,
        model,
        choices: [{ index: 0, message: { role: "assistant", content: "ok" }, finish_reason: "stop" }],
        usage: { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens }
      })
      bodies.set(model, body)
    }
    return body
  }
}

export const makeClient = (options: ClientOptions): UpstreamClient.UpstreamClient => {
  const { completionTokens, promptTokens, seed, world } = options
  const tokens = promptTokens + completionTokens
  const completion = completions(promptTokens, completionTokens)
  const after = options.after ?? sleepThen
  const now = options.now ?? (() => 0)

  const unknown = (name: string) =>
    Effect.fail(new UpstreamError.UpstreamUnreachable({ upstream: name, reason: "not a simulated upstream" }))

  const post: UpstreamClient.UpstreamClient["post"] = (upstream, _path, body) =>
    Effect.clockWith((clock) => {
      const model = world.get(upstream.name)
      if (model === undefined) return unknown(upstream.name)
      const parsed = readBody(typeof body === "string" ? body : decoder.decode(body))
      const calls = options.callsOf(parsed.request)
      const nth = calls === undefined ? 0 : calls[model.index] ?? 0
      if (calls !== undefined) calls[model.index] = nth + 1
      const answer = model.decide(clock.unsafeCurrentTimeMillis(), parsed.request, nth, tokens)
      switch (answer.kind) {
        case "hang":
          return Effect.never
        case "ok":
          return Effect.onInterrupt(
            after(answer.delay, (): UpstreamClient.Reply => {
              model.bill(parsed.model, promptTokens, completionTokens)
              return { status: 200, headers: JSON_HEADERS, text: completion(parsed.model) }
            }),
            () =>
              Effect.sync(() => {
                model.traffic.aborted++
                model.bill(parsed.model, promptTokens, completionTokens)
              })
          )
        case "429": {
          const reply = rateLimitedReply(answer.retryAfter)
          return after(answer.delay, () => reply)
        }
        case "503":
          return after(answer.delay, () => UNAVAILABLE_REPLY)
      }
    })

  /**
   * `post` without a fiber, for the relay's `unsafePost`: the same draws
   * and bookkeeping at the call's start, the answer on one timer (`timer`:
   * it fires as the scheduler task where `post`'s fiber would resume and
   * end), and an abort that does what interrupting `post`'s fiber does (an
   * answer that was to come is counted aborted and billed; a hang or an
   * error answer just ends).
   */
  const timer = options.timer
  const unsafePost: UpstreamClient.UpstreamClient["unsafePost"] = timer === undefined ? undefined : (upstream, _path, body, _headers, done) => {
    const model = world.get(upstream.name)
    if (model === undefined) {
      done(new UpstreamError.UpstreamUnreachable({ upstream: upstream.name, reason: "not a simulated upstream" }), undefined)
      return () => {}
    }
    const parsed = readBody(typeof body === "string" ? body : decoder.decode(body))
    const calls = options.callsOf(parsed.request)
    const nth = calls === undefined ? 0 : calls[model.index] ?? 0
    if (calls !== undefined) calls[model.index] = nth + 1
    const answer = model.decide(now(), parsed.request, nth, tokens)
    let reply: () => UpstreamClient.Reply
    let aborted: (() => void) | undefined
    switch (answer.kind) {
      case "hang":
        return () => {}
      case "ok":
        reply = () => {
          model.bill(parsed.model, promptTokens, completionTokens)
          return { status: 200, headers: JSON_HEADERS, text: completion(parsed.model) }
        }
        aborted = () => {
          model.traffic.aborted++
          model.bill(parsed.model, promptTokens, completionTokens)
        }
        break
      case "429": {
        const answered = rateLimitedReply(answer.retryAfter)
        reply = () => answered
        break
      }
      case "503":
        reply = () => UNAVAILABLE_REPLY
        break
    }
    let pending = true
    const cancel = timer(answer.delay, () => {
      pending = false
      done(undefined, reply())
    })
    return () => {
      if (!pending) return
      pending = false
      cancel()
      aborted?.()
    }
  }

  /** Health probes: answered unless the upstream is in an outage. */
  const get: UpstreamClient.UpstreamClient["get"] = (upstream) =>
    Effect.clockWith((clock) => {
      const model = world.get(upstream.name)
      if (model === undefined) return unknown(upstream.name)
      const probe = model.traffic.probes++
      const outage = model.outageAt(clock.unsafeCurrentTimeMillis(), new Prng(hash(seed, probe, model.index, 0x9b0e)).next())
      const delay = Duration.millis(model.spec.errorLatency)
      if (outage?.mode === "hang") return Effect.never
      return Effect.as(
        Effect.sleep(delay),
        outage === undefined
          ? { status: 200, headers: JSON_HEADERS, text: MODELS }
          : { status: 503, headers: JSON_HEADERS, text: UNAVAILABLE }
      )
    })

  return UpstreamClient.UpstreamClient.of({
    post,
    ...(unsafePost === undefined ? {} : { unsafePost }),
    get,
    postStream: (upstream) =>
      Effect.fail(new UpstreamError.UpstreamUnreachable({ upstream: upstream.name, reason: "streaming is not simulated" }))
  })
}
