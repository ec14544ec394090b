/**
 * How one attempt on one upstream can fail. Each error says what happened and
 * whether another upstream could do better (`retryable`): a 429, a 5xx, a
 * broken connection, a timeout, an invalid body, the upstream refusing its own
 * API key (401, 403) or not having the model (404 `model_not_found`) move the
 * request on; the caller's own bad request (400, 422, another 404) goes
 * straight back, unchanged, because no other upstream would answer it
 * differently.
 *
 * Messages never contain secrets: they name the upstream, never its URL
 * credentials or key.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"

/** 429: the upstream asked us to slow down, maybe for `retryAfter`. */
export class UpstreamRateLimited extends Data.TaggedError("UpstreamRateLimited")<{
  readonly upstream: string
  readonly retryAfter: Duration.Duration | undefined
}> {
  readonly retryable = true
  override get message(): string {
    return `${this.upstream}: rate limited (429)${
      this.retryAfter === undefined ? "" : `, retry after ${Duration.format(this.retryAfter)}`
    }`
  }
}

/** The account's quota is spent (`insufficient_quota`, `tokens_limit_exceeded`). */
export class QuotaExhausted extends Data.TaggedError("QuotaExhausted")<{
  readonly upstream: string
  readonly code: string
}> {
  readonly retryable = true
  override get message(): string {
    return `${this.upstream}: quota exhausted (${this.code})`
  }
}

/** 5xx, or any other status that says the upstream, not the request, failed. */
export class UpstreamServerError extends Data.TaggedError("UpstreamServerError")<{
  readonly upstream: string
  readonly status: number
}> {
  readonly retryable = true
  override get message(): string {
    return `${this.upstream}: server error (${this.status})`
  }
}

/** No HTTP answer: refused, reset, DNS, TLS. */
export class UpstreamUnreachable extends Data.TaggedError("UpstreamUnreachable")<{
  readonly upstream: string
  readonly reason: string
}> {
  readonly retryable = true
  override get message(): string {
    return `${this.upstream}: connection failed (${this.reason})`
  }
}

/** The attempt ran out of time, or a stream went silent after its first event (`idle`). */
export class UpstreamTimeout extends Data.TaggedError("UpstreamTimeout")<{
  readonly upstream: string
  readonly timeout: Duration.Duration
  /** The stream's `streamIdleTimeout` passed without data, after its first event. */
  readonly idle?: boolean | undefined
}> {
  readonly retryable = true
  override get message(): string {
    return this.idle === true
      ? `${this.upstream}: stream stalled, no data for ${Duration.format(this.timeout)}`
      : `${this.upstream}: no answer within ${Duration.format(this.timeout)}`
  }
}

/** A 200 whose body is not a usable answer (truncated, no choices, empty message). */
export class InvalidResponse extends Data.TaggedError("InvalidResponse")<{
  readonly upstream: string
  readonly reason: string
}> {
  readonly retryable = true
  override get message(): string {
    return `${this.upstream}: invalid response (${this.reason})`
  }
}

/**
 * 401 or 403: the upstream refused the API key the gateway holds for it
 * (rotated, revoked, lacking a permission). The operator's problem, not the
 * caller's, whose own key the gateway already accepted: another upstream may
 * serve, and this one stays out (an `auth-failed` cooldown) until its key
 * works again.
 */
export class UpstreamAuthFailed extends Data.TaggedError("UpstreamAuthFailed")<{
  readonly upstream: string
  readonly status: number
}> {
  readonly retryable = true
  override get message(): string {
    return `${this.upstream}: rejected its API key (${this.status})`
  }
}

/**
 * 404 about the model (`model_not_found`): this upstream does not serve it,
 * another configured for it may. Kept as it came, so that when every upstream
 * says so the caller gets the upstream's own 404.
 */
export class UpstreamModelNotFound extends Data.TaggedError("UpstreamModelNotFound")<{
  readonly upstream: string
  readonly status: number
  readonly body: string
  readonly contentType: string | undefined
}> {
  readonly retryable = true
  override get message(): string {
    return `${this.upstream}: model not found (${this.status})`
  }
}

/**
 * The upstream refused the request itself (400, 422, a 404 not about the
 * model): the status and body are relayed to the caller as they came.
 */
export class UpstreamRejected extends Data.TaggedError("UpstreamRejected")<{
  readonly upstream: string
  readonly status: number
  readonly body: string
  readonly contentType: string | undefined
  /** Upstream calls the request made, this one included, when the relay counted them. */
  readonly attempts?: number | undefined
  /**
   * Set when the refusal is ours, not the upstream's: a request field (this
   * path) that the upstream's kind cannot take. Another upstream may.
   */
  readonly untranslatable?: string | undefined
}> {
  readonly retryable = false
  override get message(): string {
    return `${this.upstream}: request rejected (${this.status})`
  }
}

export type UpstreamError =
  | UpstreamRateLimited
  | QuotaExhausted
  | UpstreamServerError
  | UpstreamUnreachable
  | UpstreamTimeout
  | InvalidResponse
  | UpstreamAuthFailed
  | UpstreamModelNotFound
  | UpstreamRejected

/**
 * Statuses that are the caller's fault: relayed, never failed over. (A 404
 * about the model is the upstream's, see {@link UpstreamModelNotFound}.)
 */
export const isCallerError = (status: number): boolean => status === 400 || status === 404 || status === 422

/**
 * Set by `ProviderClient` on its 400 for a request field an upstream's kind
 * cannot take (naming the field): the relay then tries another upstream
 * before answering that 400.
 */
export const UNTRANSLATABLE_HEADER = "x-breakwater-untranslatable"

/** Statuses by which an upstream refuses the gateway's key for it. */
export const isAuthError = (status: number): boolean => status === 401 || status === 403
