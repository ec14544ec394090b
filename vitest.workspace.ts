import { defineWorkspace } from "vitest/config"

// One project per package, so `vitest --project core` runs a single package.
export default defineWorkspace([
  {
    test: {
      name: "core",
      root: "./packages/core",
      include: ["test/**/*.test.ts"]
    }
  },
  {
    test: {
      name: "server",
      root: "./packages/server",
      include: ["test/**/*.test.ts"],
      passWithNoTests: true
    }
  },
  {
    test: {
      name: "examples",
      root: "./packages/examples",
      include: ["test/**/*.test.ts"],
      passWithNoTests: true
    }
  }
])
