#!/usr/bin/env node
// The server as built JavaScript: dist/bin is src/main.ts and everything it
// runs, bundled by scripts/bundle.js so that it starts fast. `npm run build`
// writes it (`npm start` bundles first); the published package ships it.
import "../dist/bin/breakwater.js"
