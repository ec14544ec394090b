# syntax=docker/dockerfile:1
#
# The Breakwater gateway as an image:
#
#   docker build -t breakwater .
#   docker run --rm -p 8080:8080 \
#     -v "$PWD/breakwater.yaml:/etc/breakwater/breakwater.yaml:ro" \
#     -e OPENAI_API_KEY -e APP_GATEWAY_KEY breakwater
#
# The config is a mounted file (BREAKWATER_CONFIG); its ${VAR} references
# are read from the container's environment, which is where secrets go.
# The server listens on 0.0.0.0:8080 whatever the config's server.host and
# server.port say (CMD below), so that EXPOSE, the HEALTHCHECK and your port
# mappings agree. It refuses to listen beyond loopback without gateway keys:
# the config must have `keys`.
#
# Untested on a container engine (the project's CI has none); a test checks
# this file against the server's config and against compose.yaml and
# deploy/kubernetes/ (packages/server/test/deploy.test.ts).

ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: install from the lockfile, type-check and compile, bundle -----
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json tsconfig.base.json ./
COPY packages/core/package.json packages/core/
COPY packages/server/package.json packages/server/
COPY packages/examples/package.json packages/examples/
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY packages/ packages/
RUN npm run build

# ---- runtime: the bundle alone ---------------------------------------------
# dist/bin holds the server and every dependency it runs (see
# packages/server/scripts/bundle.js): no node_modules, no npm at run time.
FROM ${NODE_IMAGE}
# Memory: semi-spaces of at most 8 MB each (V8's default on 64-bit goes to
# 16 MB), fixed at start, hence NODE_OPTIONS; the bin adds
# --heap-growing-percent=20, which bounds how far the old generation grows
# between full collections (see bin/breakwater.js; BREAKWATER_V8_FLAGS).
ENV NODE_ENV=production \
    BREAKWATER_CONFIG=/etc/breakwater/breakwater.yaml \
    NODE_OPTIONS=--max-semi-space-size=8
WORKDIR /app
COPY --from=build /src/packages/server/package.json ./package.json
COPY --from=build /src/packages/server/bin/ ./bin/
COPY --from=build /src/packages/server/dist/bin/ ./dist/bin/
# The image's `node` user (uid 1000), by number so that Kubernetes'
# runAsNonRoot can check it.
USER 1000:1000
EXPOSE 8080
# Liveness: the process answers. (Readiness, /readyz, is for load balancers.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:8080/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# SIGTERM drains: server.drainGrace of 503s, then in-flight requests finish
# within server.shutdownTimeout; the process exits within shutdownTimeout + 1 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/app/bin/breakwater.js"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
