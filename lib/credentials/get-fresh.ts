import { CredentialsRefreshFailedError, InvalidOptionError } from '../errors'
import { UPDATE_LOCK_TTL_MS, UPDATE_WAIT_MS } from '../limits'

export interface GetFreshOptions<T> {
  /** Whether `value` is still good at the epoch millisecond `atMs`. Never called with `undefined`: absent is stale. */
  isFresh: (value: T, atMs: number) => boolean
  /** Makes the next value from the current one (`undefined` when absent), e.g. an OAuth refresh-token grant. */
  refresh: (current: T | undefined) => T | Promise<T>
  /**
   * A value fresh now but not `refreshAheadMs` from now is returned at once and renewed in the
   * background, once across every process sharing the backend. Default 0: off.
   */
  refreshAheadMs?: number
  /** Lease of the update lock, and the bound on `refresh`: one that outlives it fails and writes nothing. Default 10000. */
  lockTtlMs?: number
  /** How long a caller that needs a fresh value waits for the lock. Default 5000. */
  waitMs?: number
}

/**
 * What `getFresh` needs from a credential store. `update` is the store's update protocol: `fn`
 * runs exclusively across every process on the value re-read under the lock (never one from
 * process memory), its result is saved; `fn` throwing writes nothing and frees the lock.
 */
export interface FreshSource<T> {
  /** The full storage key: names errors, keys the single flight. */
  readonly key: string
  /** One object per backend instance (shared by every scope of one app): single flight is per owner and key. */
  readonly owner: object
  load (): Promise<T | undefined>
  /**
   * Under the update lock: unless `keep(current)`, saves `fn(current)`. Resolves with the value
   * now stored and whether this call saved it.
   */
  update (keep: (current: T | undefined) => boolean, fn: (current: T | undefined) => T | Promise<T>,
    options: { lockTtlMs: number, waitMs: number }): Promise<{ value: T | undefined, saved: boolean }>
}

interface Flights {
  /** Refreshes that callers are waiting for, by key; callers that need a fresh value join them. */
  foreground: Map<string, Promise<unknown>>
  /** Keys with a refresh-ahead running in this process. */
  background: Set<string>
}

const flightsByOwner = new WeakMap<object, Flights>()

function flightsOf (owner: object): Flights {
  let flights = flightsByOwner.get(owner)
  if (flights === undefined) {
    flights = { foreground: new Map(), background: new Set() }
    flightsByOwner.set(owner, flights)
  }
  return flights
}

function refreshFailed (key: string, cause: unknown): Error {
  const err = new CredentialsRefreshFailedError(key)
  err.cause = cause
  return err
}

/**
 * `refresh(current)`, failing as FST_CREDENTIALS_REFRESH_FAILED when it throws or outlives
 * `boundMs`. The timer keeps the process alive only while a caller waits for the answer.
 */
function runRefresh<T> (
  key: string, refresh: (current: T | undefined) => T | Promise<T>, current: T | undefined, boundMs: number, awaited: boolean
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      const cause = new Error(`refresh did not settle within lockTtlMs (${boundMs} ms); its result, if any, is dropped`)
      cause.name = 'TimeoutError'
      reject(refreshFailed(key, cause))
    }, boundMs)
    if (!awaited) timer.unref()
    let pending: Promise<T>
    try {
      pending = Promise.resolve(refresh(current))
    } catch (cause) {
      pending = Promise.reject(cause)
    }
    // A late answer or failure after the timeout settles nothing: the promise is already rejected.
    pending.then((value) => {
      clearTimeout(timer)
      resolve(value)
    }, (cause: unknown) => {
      clearTimeout(timer)
      reject(refreshFailed(key, cause))
    })
  })
}

interface Settings<T> {
  fresh: (value: T | undefined, atMs: number) => value is T
  refresh: (current: T | undefined) => T | Promise<T>
  refreshAheadMs: number
  lockTtlMs: number
  waitMs: number
}

/**
 * Under the update lock: refreshes when `needsRefresh(current)` says so and saves the result,
 * else writes nothing. Resolves with the value now stored and whether it was refreshed here.
 * In the background it takes the lock only if it is free at once.
 */
async function refreshUnderLock<T> (
  source: FreshSource<T>, settings: Settings<T>, needsRefresh: (current: T | undefined) => boolean, background: boolean
): Promise<{ value: T | undefined, refreshed: boolean }> {
  const { value, saved } = await source.update(
    (current) => !needsRefresh(current),
    (current) => runRefresh(source.key, settings.refresh, current, settings.lockTtlMs, !background),
    { lockTtlMs: settings.lockTtlMs, waitMs: background ? 0 : settings.waitMs })
  return { value, refreshed: saved }
}

/** A value that is fresh now: the stored one re-read under the lock, or a new one from `refresh`. */
async function refreshNow<T> (source: FreshSource<T>, settings: Settings<T>): Promise<T> {
  const needsRefresh = (current: T | undefined): boolean => !settings.fresh(current, Date.now())
  // A second round only for a stored value that went stale between the check under the lock and now.
  for (let round = 1; ; round++) {
    const { value, refreshed } = await refreshUnderLock(source, settings, needsRefresh, false)
    if (settings.fresh(value, Date.now())) return value
    // `refresh` answered something `isFresh` refuses. It was saved all the same (it may carry a
    // rotated refresh token that must not be lost), but it cannot be handed out as fresh.
    if (refreshed) throw refreshFailed(source.key, new Error('refresh resolved with a value that isFresh does not accept'))
    if (round === 2) throw refreshFailed(source.key, new Error('the stored value went stale as soon as it was read'))
  }
}

/** One refresh per key in this process at a time; callers that need a fresh value meanwhile share it. */
function startFlight<T> (source: FreshSource<T>, settings: Settings<T>, flights: Flights): Promise<T> {
  const flight = refreshNow(source, settings)
  if (!flights.foreground.has(source.key)) {
    flights.foreground.set(source.key, flight)
    const done = (): void => {
      if (flights.foreground.get(source.key) === flight) flights.foreground.delete(source.key)
    }
    flight.then(done, done)
  }
  return flight
}

/**
 * Refresh-ahead: one attempt per key in this process at a time, and across processes only by
 * whoever gets the lock without waiting. Skipped when the value re-read under the lock was
 * renewed meanwhile or is gone. Its failure rejects no one: callers keep their fresh value.
 */
function refreshInBackground<T> (source: FreshSource<T>, settings: Settings<T>, flights: Flights): void {
  if (flights.foreground.has(source.key) || flights.background.has(source.key)) return
  flights.background.add(source.key)
  const needsRefresh = (current: T | undefined): boolean =>
    current !== undefined && !settings.fresh(current, Date.now() + settings.refreshAheadMs)
  const done = (): void => { flights.background.delete(source.key) }
  refreshUnderLock(source, settings, needsRefresh, true).then(done, done)
}

function resolveSettings<T> (options: GetFreshOptions<T>): Settings<T> {
  if (options === null || typeof options !== 'object') throw new InvalidOptionError('options', 'must be an object')
  const { isFresh, refresh } = options
  if (typeof isFresh !== 'function') throw new InvalidOptionError('isFresh', 'must be a function')
  if (typeof refresh !== 'function') throw new InvalidOptionError('refresh', 'must be a function')
  const refreshAheadMs = options.refreshAheadMs ?? 0
  const lockTtlMs = options.lockTtlMs ?? UPDATE_LOCK_TTL_MS
  const waitMs = options.waitMs ?? UPDATE_WAIT_MS
  const finite = (n: unknown): n is number => typeof n === 'number' && Number.isFinite(n)
  if (!finite(refreshAheadMs) || refreshAheadMs < 0) throw new InvalidOptionError('refreshAheadMs', 'must be zero or more')
  if (!finite(lockTtlMs) || lockTtlMs <= 0) throw new InvalidOptionError('lockTtlMs', 'must be a positive number')
  if (!finite(waitMs) || waitMs < 0) throw new InvalidOptionError('waitMs', 'must be zero or more')
  return {
    fresh: (value, atMs): value is T => value !== undefined && Boolean(isFresh(value, atMs)),
    refresh,
    refreshAheadMs,
    lockTtlMs,
    waitMs
  }
}

/** See `CredentialStore.getFresh`. */
export async function getFresh<T> (source: FreshSource<T>, options: GetFreshOptions<T>): Promise<T> {
  const settings = resolveSettings(options)
  const stored = await source.load()
  const now = Date.now()
  const flights = flightsOf(source.owner)
  if (settings.fresh(stored, now)) {
    if (settings.refreshAheadMs > 0 && !settings.fresh(stored, now + settings.refreshAheadMs)) {
      refreshInBackground(source, settings, flights)
    }
    return stored
  }
  const running = flights.foreground.get(source.key) as Promise<T> | undefined
  if (running !== undefined) {
    // Another caller's refresh; its failure is this caller's too. Its value is checked with
    // this caller's own isFresh, which may be stricter.
    const shared = await running
    if (settings.fresh(shared, Date.now())) return shared
  }
  return await startFlight(source, settings, flights)
}
