import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { schemaLeaves } from '../../src/config/load.js'
import { repoRoot } from './container.js'

/**
 * The environment variables canaryd reads, for checking what a deployment
 * sets: every schema leaf's variable (`CANARYD_STATE_FILE` → `state.file`),
 * and the process-level ones outside the schema that `canaryd --help` names
 * (`LOG_LEVEL`, `CANARYD_CONFIG`, `CANARYD_WORKERS`). A variable in neither
 * is a typo or a leftover: canaryd would ignore it without a word.
 */
export interface CanarydEnv {
  /** Variable → the config key it sets. */
  schema: ReadonlyMap<string, string>
  /** Variables outside the schema, as listed by `canaryd --help`. */
  process: ReadonlySet<string>
}

/** Reads both lists; `canaryd --help` runs from the built dist/cli.js (npm run build). */
export function canarydEnv (): CanarydEnv {
  const schema = new Map<string, string>()
  for (const leaf of schemaLeaves()) if (leaf.env !== undefined) schema.set(leaf.env, leaf.key)
  const help = spawnSync(process.execPath, [join(repoRoot, 'dist', 'cli.js'), '--help'], { encoding: 'utf8', timeout: 30_000 })
  const text = `${help.stdout}${help.stderr}`
  const named = new Set(text.match(/\b(?:CANARYD_[A-Z0-9_]*[A-Z0-9]|LOG_LEVEL)\b/g) ?? [])
  for (const v of schema.keys()) named.delete(v)
  return { schema, process: named }
}

/** Why `name` is not a variable canaryd reads, or undefined when it is. */
export function unknownEnvProblem (env: CanarydEnv, name: string): string | undefined {
  if (env.schema.has(name) || env.process.has(name)) return undefined
  return `${name} is neither a config key's variable (src/config/schema.ts) nor one that \`canaryd --help\` lists (${[...env.process].sort().join(', ')})`
}
