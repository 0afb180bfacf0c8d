/** Placeholder until this command lands; replaced by its own issue's work. */
export async function runRollout (argv: string[]): Promise<void> {
  void argv
  process.stderr.write('canaryd: this command is not implemented yet\n')
  process.exitCode = 2
}
