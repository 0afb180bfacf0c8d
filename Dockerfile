# syntax=docker/dockerfile:1
# Build stage: compile TypeScript with the dev dependencies.
FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

# Runtime stage: current LTS, slim, non-root, config from /etc/canaryd.
FROM node:22-bookworm-slim
ENV NODE_ENV=production \
    CANARYD_CONFIG=/etc/canaryd/canaryd.json \
    CANARYD_STATE_FILE=/var/lib/canaryd/state.json
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY config/default.json /etc/canaryd/canaryd.json
RUN mkdir -p /var/lib/canaryd && chown node:node /var/lib/canaryd
USER node
EXPOSE 8080 9901
# exec form: node is PID 1's child-free process and receives SIGTERM directly
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["serve"]
