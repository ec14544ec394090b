import { defineWorkspace } from "vitest/config"

/**
 * Tests run the TypeScript sources: `@breakwater/source` is the export
 * condition that maps `@breakwater/core` (and its subpaths) to `src/*.ts`
 * instead of the built `dist/` (see packages/core/package.json).
 */
const sources = { ssr: { resolve: { conditions: ["@breakwater/source", "module", "node", "development|production"] } } }

// One project per package, so `vitest --project core` runs a single package.
export default defineWorkspace([
  {
    ...sources,
    test: {
      name: "core",
      root: "./packages/core",
      include: ["test/**/*.test.ts"]
    }
  },
  {
    ...sources,
    test: {
      name: "server",
      root: "./packages/server",
      include: ["test/**/*.test.ts"],
      // The CLI tests run the built bin: build it when a source is newer.
      globalSetup: ["./test/helpers/built.ts"],
      passWithNoTests: true
    }
  },
  {
    ...sources,
    test: {
      name: "examples",
      root: "./packages/examples",
      include: ["test/**/*.test.ts"],
      // The installed-package test packs the build: build it when a source is newer.
      globalSetup: ["../server/test/helpers/built.ts"],
      passWithNoTests: true
    }
  }
])
