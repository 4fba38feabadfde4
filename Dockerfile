# syntax=docker/dockerfile:1

# QuanTutor job scheduler: compiled TypeScript on Node 24 LTS.
#   docker build -t quantutor-scheduler .
#   docker run --rm -p 127.0.0.1:8002:8001 -e SCHEDULER_POSTGRES_HOST=... quantutor-scheduler

ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: all dependencies, TypeScript compiled to dist/ -----------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app

# Dependencies first, so a source change reuses this layer. Install scripts
# stay on here: the `node` devDependency fetches its binary in one, and npx
# puts node_modules/.bin (and so that binary) first on PATH for tsc.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

COPY tsconfig.json tsconfig.build.json ./
COPY config ./config
COPY machines ./machines
COPY src ./src
# Emits dist/src, dist/config and dist/machines (rootDir is the project root).
RUN npx tsc -p tsconfig.build.json \
    && test -f dist/src/main.js

# ---- runtime: production dependencies and the compiled code only -----------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app

# --omit=dev leaves out typescript, tsx and the `node` binary package. No
# production dependency needs an install script (core-js-pure's only prints a
# notice and allowScripts denies it anyway), so none are run.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
    && npm cache clean --force \
    && mkdir -p /app/logs \
    && chown node:node /app/logs

# main.js reads its version from ../../package.json, i.e. /app/package.json.
COPY --from=build /app/dist ./dist

# Files stay root-owned and read-only to the service; only /app/logs (used
# when LOG_DIR=/app/logs) is writable.
USER node

EXPOSE 8001
# main.ts stops gracefully on SIGTERM within SHUTDOWN_GRACE_SECONDS (default
# 20 s): give `docker stop` a longer timeout than Docker's 10 s default.
STOPSIGNAL SIGTERM
# Liveness only; /health/ready also checks PostgreSQL and RabbitMQ.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8001) + '/health', { signal: AbortSignal.timeout(5000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

CMD ["node", "dist/src/main.js"]
