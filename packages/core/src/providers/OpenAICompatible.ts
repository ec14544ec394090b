/**
 * Upstreams that speak OpenAI's wire format (`kind: openai`): bodies pass
 * as they are; only how the key is sent can differ (`auth`), and static
 * extra headers may be added (`headers`).
 *
 * @since 0.1.0
 */

/** How the upstream's key is sent: `Authorization: Bearer` (the default), an `api-key` header, or not at all. */
export type Auth = "bearer" | "api-key" | "none"

export const auths: ReadonlyArray<Auth> = ["bearer", "api-key", "none"]

/**
 * The request headers of a call: the configured static headers first, then
 * the key's header, which a static header of the same name never replaces.
 */
export const headers = (
  auth: Auth,
  apiKey: string,
  extra: Readonly<Record<string, string>> = {}
): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(extra)) {
    const lower = name.toLowerCase()
    if (lower === "authorization" && auth === "bearer") continue
    if (lower === "api-key" && auth === "api-key") continue
    out[lower] = value
  }
  if (auth === "bearer") out["authorization"] = `Bearer ${apiKey}`
  else if (auth === "api-key") out["api-key"] = apiKey
  return out
}
