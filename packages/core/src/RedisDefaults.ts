/**
 * Defaults of the Redis stores' options (see `Redis`), in a module of their
 * own: a config can state and check them without loading `Redis` and so
 * `ioredis`, which a gateway with in-memory stores never loads.
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"

/**
 * How long a Redis command may take before the call is answered from
 * memory: a Redis slower than this costs a request no more than this.
 */
export const commandTimeout: Duration.Duration = Duration.millis(50)

/** The prefix of every key the stores write: several apps can share one Redis by each having its own. */
export const prefix = "breakwater:"
