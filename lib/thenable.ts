/**
 * Whether `value` has a `then` to wait on: a promise of any realm, or a query builder (Knex,
 * Mongoose, Drizzle). Reading `then` may run a getter, which may throw; callers treat that as a
 * failure of whoever handed them the value.
 */
export function isThenable (value: unknown): value is PromiseLike<unknown> {
  return (typeof value === 'object' || typeof value === 'function') && value !== null &&
    typeof (value as { then?: unknown }).then === 'function'
}
