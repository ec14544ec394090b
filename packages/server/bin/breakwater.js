#!/usr/bin/env node
// The built server: dist/bin/ is dist/src/main.js (from `tsc -b`) bundled by
// scripts/bundle.js, so that it starts fast. `npm run build` makes both, and
// `npm start` runs it first.
import "../dist/bin/breakwater.js"
