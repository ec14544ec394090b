import { expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { program } from "../src/relay.js"

it.live("the relay example fails over from the broken primary and then answers from the cache", () =>
  Effect.gen(function*() {
    const [first, again] = yield* program
    expect(first.metadata.upstream).toBe("fallback")
    expect(first.metadata.attempts).toBe(2)
    expect(first.metadata.failures).toEqual(["primary: server error (503)"])
    expect(first.metadata.cache).toBe("miss")
    expect(JSON.parse(first.body).choices[0].message.content).toBe("Hello from fallback")
    expect(again.metadata.cache).toBe("hit")
    expect(again.metadata.attempts).toBe(0)
    expect(again.body).toBe(first.body)
  }))
