// Lint: neostandard (the standard style, as undici and fastify use it) for
// TypeScript, plus the import directions of ../shared/STYLE.md as rules, so a
// wrong-direction import fails `npm test` instead of waiting for a reviewer.
import neostandard from 'neostandard'

/** Our top-level folders under src/. */
const FOLDERS = ['admin', 'cluster', 'commands', 'config', 'listener', 'metrics', 'proxy', 'rollout', 'routing', 'store', 'ui', 'upstream']

/**
 * Which of our folders each folder may import (values and types), and which
 * only for types. Root modules (errors.ts, logger.ts) are open to all;
 * cli.ts, app.ts, demo.ts, commands/ (the CLI's subcommands) and cluster/
 * wire everything and are not listed.
 *
 *   proxy    ──> routing, upstream, metrics          the hot path
 *   admin    ──> routing, metrics, rollout, store, config
 *   rollout  ──> routing, metrics, store, config (the plan schema: a plan is
 *                config a user writes, in the file or through the admin API)
 *   upstream ──> metrics (types only)
 *   routing  ──> nothing of ours but types           pure
 *   metrics  ──> nothing of ours                     written by the hot path, read by the control plane
 *   config   ──> routing                             validates and builds the first table
 *   store    ──> routing, config (types)             runtime state: its file, or Redis (fleet)
 *   ui       ──> nothing of ours                     the dashboard (browser code; talks to the admin API only)
 */
const ALLOWED = {
  proxy: { values: ['routing', 'upstream', 'metrics'], types: [] },
  admin: { values: ['routing', 'metrics', 'rollout', 'store', 'config'], types: [] },
  rollout: { values: ['routing', 'metrics', 'store', 'config'], types: [] },
  upstream: { values: [], types: ['metrics'] },
  routing: { values: [], types: FOLDERS },
  metrics: { values: [], types: [] },
  config: { values: ['routing'], types: [] },
  store: { values: ['routing'], types: ['config'] },
  listener: { values: [], types: [] },
  // the dashboard runs in the browser: it knows the admin API, never the server's code
  ui: { values: [], types: [] }
}

/** One config block per folder: @typescript-eslint/no-restricted-imports with the folders it may not reach. */
const boundaries = Object.entries(ALLOWED).map(([folder, { values, types }]) => {
  const forbidden = FOLDERS.filter((f) => f !== folder && !values.includes(f))
  const typeOnly = forbidden.filter((f) => types.includes(f))
  const never = forbidden.filter((f) => !types.includes(f))
  const why = `src/${folder}/ may import ${values.length === 0 ? 'none of our folders' : values.join(', ')}${types.length === 0 ? '' : ` (types only: ${types.length === FOLDERS.length ? 'any' : types.join(', ')})`}: see STYLE.md "Which way the imports run"`
  const patterns = []
  if (never.length !== 0) patterns.push({ group: never.map((f) => `../${f}/*`), message: why })
  if (typeOnly.length !== 0) patterns.push({ group: typeOnly.map((f) => `../${f}/*`), message: why, allowTypeImports: true })
  return {
    files: [`src/${folder}/**/*.ts`],
    rules: { '@typescript-eslint/no-restricted-imports': ['error', { patterns }] }
  }
})

export default [
  ...neostandard({ ts: true, ignores: ['dist/**', 'coverage/**', 'tap-snapshots/**', 'node_modules/**', 'src/ui/vendor/**'] }),
  {
    rules: {
      // `void promise` marks a promise deliberately not awaited (a timer or
      // event callback starting async work); as an expression it stays banned
      'no-void': ['error', { allowAsStatement: true }]
    }
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // tests poll flags that socket and timer callbacks set (`while (!done) await sleep(…)`)
      'no-unmodified-loop-condition': 'off'
    }
  },
  ...boundaries
]
