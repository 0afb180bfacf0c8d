/* IMPORTANT
 * This snapshot file is auto-generated, but designed for humans.
 * It should be checked into source control and tracked carefully.
 * Re-generate by setting TAP_SNAPSHOT=1 and running tests.
 * Make sure to inspect the output below.  Do not ignore changes!
 */
'use strict'
exports[`test/routing/pick.test.ts > TAP > pinned picks: the algorithm does not drift between releases > pinned 50/50 picks 1`] = `
Array [
  "alice:stable",
  "bob:stable",
  "carol:canary",
  "dave:stable",
  "erin:stable",
  "frank:canary",
  "grace:stable",
  "heidi:canary",
]
`
