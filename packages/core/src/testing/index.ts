/**
 * Test support for programs built on Breakwater: `FakeUpstream`, an
 * OpenAI-compatible upstream on 127.0.0.1 whose faults (429s with
 * Retry-After, 5xx, hangs, cut streams, latency) are set per test.
 *
 * @since 0.1.0
 */
export * as FakeUpstream from "./FakeUpstream.js"
