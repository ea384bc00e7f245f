import { InvalidOptionError } from './errors'

/** Edit distance (insertions, deletions, substitutions) between two short strings. */
function distance (a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = current
  }
  return previous[b.length]!
}

/**
 * The known name a typo most likely meant, or undefined when none is close. Case is ignored, and
 * a name that holds the typo or is held by it (`ttl` in `ttlSeconds`) counts as close, the one
 * nearest in length first, since plain edit distance would rather suggest `max` for `ttl`.
 */
function nearest (name: string, known: readonly string[]): string | undefined {
  const typed = name.toLowerCase()
  let best: string | undefined
  let bestScore = Infinity
  for (const candidate of known) {
    const lower = candidate.toLowerCase()
    let score = distance(typed, lower)
    if (score > Math.max(2, Math.floor(lower.length / 3))) score = Infinity
    const shorter = Math.min(typed.length, lower.length)
    if (shorter >= 3 && (lower.includes(typed) || typed.includes(lower))) {
      score = Math.min(score, 1 + Math.abs(lower.length - typed.length) / 1000)
    }
    if (score < bestScore) {
      best = candidate
      bestScore = score
    }
  }
  return best
}

/**
 * Refuses every own key of `value` that is not in `known` (the options of one level, `path`
 * naming it: '' for the top level, else e.g. 'apiKeys.'), as a TypeScript user's compiler would:
 * a typo such as `apiKeys.ttl` would otherwise be ignored and its default silently used.
 * `tolerated` keys are accepted without being suggested; `owner` names whose options these are.
 */
export function assertKnownKeys (value: object, known: readonly string[], path: string, tolerated: readonly string[] = [],
  owner = 'fastify-auth-cache'): void {
  for (const key of Object.keys(value)) {
    if (known.includes(key) || tolerated.includes(key)) continue
    const meant = nearest(key, known)
    throw new InvalidOptionError(`${path}${key}`, meant === undefined
      ? `is not an option of ${owner} (the options here are: ${known.map((name) => path + name).join(', ')})`
      : `is not an option of ${owner}; did you mean ${path}${meant}?`)
  }
}
