/**
 * A latch for "the connection is back": `ready` calls `listener` only after a `lost`, since
 * client libraries also say ready for the first connection, which lost nothing.
 */
export function readyAfterLoss (listener: () => void): { lost: () => void, ready: () => void } {
  let lost = false
  return {
    lost: () => { lost = true },
    ready: () => {
      if (!lost) return
      lost = false
      listener()
    }
  }
}
