/**
 * Runs one fake upstream as its own process, for benchmarks and demos:
 *   tsx packages/core/src/testing/fake-upstream-main.ts [--port N] [--name NAME] [--faults JSON] [--seed N]
 *     [--protocol openai|azure-openai|anthropic|gemini]
 * Prints `listening <url>` when ready; faults can be switched later with
 * `POST <url-without-/v1>/_fake/faults`.
 */
import * as FakeUpstream from "./FakeUpstream.js"

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`)
  return i === -1 ? undefined : process.argv[i + 1]
}

const faults = arg("faults")
const seed = arg("seed")
const protocol = arg("protocol")
const upstream = await FakeUpstream.start({
  name: arg("name") ?? "fake",
  port: Number(arg("port") ?? 0),
  ...(faults === undefined ? {} : { faults: JSON.parse(faults) as FakeUpstream.Faults }),
  ...(seed === undefined ? {} : { seed: Number(seed) }),
  ...(protocol === undefined ? {} : { protocol: protocol as FakeUpstream.Protocol })
})
console.log(`listening ${upstream.url}`)
const stop = () => void upstream.close().then(() => process.exit(0))
process.once("SIGTERM", stop)
process.once("SIGINT", stop)
