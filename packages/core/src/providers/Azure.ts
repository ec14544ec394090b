/**
 * Azure OpenAI: the OpenAI wire format at Azure's URLs. A resource
 * (`https://my-resource.openai.azure.com`) serves each model from a
 * deployment the operator named, at
 * `/openai/deployments/{deployment}/chat/completions?api-version=...`, with
 * the key in an `api-key` header. Bodies and answers are OpenAI's: only the
 * URL and the key's header differ.
 *
 * @since 0.1.0
 */

/** The `api-version` sent when the config gives none: the latest GA data-plane version known to this release. */
export const DEFAULT_API_VERSION = "2024-10-21"

export interface Options {
  /** Model name (as the upstream knows it, after aliases) -> deployment name. */
  readonly deployments: Readonly<Record<string, string>>
  /** Default {@link DEFAULT_API_VERSION}. */
  readonly apiVersion?: string | undefined
}

/** The deployment serving `model`, or undefined: a model without one is not routed to this upstream. */
export const deploymentFor = (model: string, options: Options): string | undefined =>
  Object.prototype.hasOwnProperty.call(options.deployments, model) ? options.deployments[model] : undefined

const path = (operation: string) => (model: string, options: Options): string | undefined => {
  const deployment = deploymentFor(model, options)
  if (deployment === undefined) return undefined
  return `/openai/deployments/${encodeURIComponent(deployment)}/${operation}?api-version=${
    encodeURIComponent(options.apiVersion ?? DEFAULT_API_VERSION)
  }`
}

/** The chat completions path under the resource's `baseUrl`, or undefined when no deployment serves `model`. */
export const chatPath: (model: string, options: Options) => string | undefined = path("chat/completions")

/** The embeddings path under the resource's `baseUrl`, or undefined when no deployment serves `model`. */
export const embeddingsPath: (model: string, options: Options) => string | undefined = path("embeddings")

/** The header that carries the key. */
export const headers = (apiKey: string): Record<string, string> => ({ "api-key": apiKey })
