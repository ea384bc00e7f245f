import type { Period } from './period'

/** What one step on a period's counter answered. */
export interface QuotaGrant {
  /** Units counted for the caller: `min(requested, limit − counted)`, never negative. */
  granted: number
  /** What the period still holds for everyone after this grant. */
  left: number
}

/**
 * Where an owner's count for a period lives. Every step is atomic and counts only what it
 * grants, so the units handed out in one period never exceed its limit, whatever the number of
 * processes asking.
 */
export interface QuotaStore {
  /** Grants `min(requested, limit − counted)` and counts it, in one step. */
  take (owner: string, period: Period, limit: number, requested: number): Promise<QuotaGrant>
  /**
   * Uncounts `units` that were granted and not spent, in one step. `token` names this return:
   * the same token applied twice (a client resending a command whose reply was lost) counts once.
   */
  giveBack (owner: string, period: Period, units: number, token: string): Promise<void>
}
