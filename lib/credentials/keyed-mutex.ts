export type Release = () => void

interface Queue { waiters: Array<() => void> }

/**
 * One holder per key inside this process, granted in arrival order, so concurrent updates queue
 * here instead of polling Redis. A hold ends by release or after `holdMs`, as a Redis lock would.
 */
export class KeyedMutex {
  private readonly queues = new Map<string, Queue>()

  /** Resolves with a release function, or rejects with `onTimeout()` after `waitMs`. */
  acquire (key: string, waitMs: number, holdMs: number, onTimeout: () => Error): Promise<Release> {
    return new Promise((resolve, reject) => {
      const grant = (): void => {
        let released = false
        const release = (): void => {
          if (released) return
          released = true
          clearTimeout(holdTimer)
          this.next(key)
        }
        const holdTimer = setTimeout(release, holdMs)
        holdTimer.unref()
        resolve(release)
      }
      const queue = this.queues.get(key)
      if (queue === undefined) {
        this.queues.set(key, { waiters: [] })
        grant()
        return
      }
      const waiter = (): void => {
        clearTimeout(waitTimer)
        grant()
      }
      const waitTimer = setTimeout(() => {
        queue.waiters.splice(queue.waiters.indexOf(waiter), 1)
        reject(onTimeout())
      }, waitMs)
      queue.waiters.push(waiter)
    })
  }

  private next (key: string): void {
    const queue = this.queues.get(key)!
    const waiter = queue.waiters.shift()
    if (waiter === undefined) this.queues.delete(key)
    else waiter()
  }
}
