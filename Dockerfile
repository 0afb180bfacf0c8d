# syntax=docker/dockerfile:1
# Build stage: compile TypeScript with the dev dependencies.
FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json tsconfig.build.json tsconfig.ui.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

# Runtime stage: current LTS, slim, non-root. deploy/kubernetes/statefulset.yaml names this base
# image too (test/deploy/kubernetes.test.ts keeps the two in step).
FROM node:22-bookworm-slim
# CANARYD_STATE_FILE is the path every deployment of this image uses; it overrides the config's
# state.file, so deploy/kubernetes/configmap.yaml sets the same path and the manifest mounts its
# volume there. canaryd refuses to start when that directory is not writable.
ENV NODE_ENV=production \
    CANARYD_CONFIG=/etc/canaryd/canaryd.yaml \
    CANARYD_STATE_FILE=/var/lib/canaryd/state.json
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# the dashboard's page and style sheet (its scripts are in dist/ui)
COPY --from=build /app/src/ui/index.html /app/src/ui/style.css ./src/ui/
COPY package.json ./
# a placeholder with no routes: start-up fails with a clear line until a real config is mounted here
COPY config/container.yaml /etc/canaryd/canaryd.yaml
# owned by the runtime user so a plain `docker run -v canaryd-state:/var/lib/canaryd` is writable
RUN mkdir -p /var/lib/canaryd && chown node:node /var/lib/canaryd
USER node
EXPOSE 8080 9901
# exec form: node is PID 1 and receives SIGTERM directly (no shell in between). Kubernetes `args`
# replace CMD only; a `command` would replace this ENTRYPOINT and drop CMD.
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["serve"]
