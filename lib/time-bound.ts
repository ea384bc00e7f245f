/**
 * What `call` answers (a value, a promise, or any thenable: a query builder, a promise of another
 * realm), or a rejection with `timeoutError()` after `timeoutMs`, whichever comes first; a late
 * answer is dropped. Timers run before the event loop polls sockets: when the process was
 * starved past the deadline, the answer may already be waiting unread, so the timeout is
 * delivered through setImmediate, which runs after that poll, and an answer that did arrive in
 * time wins.
 */
export function withTimeout<T> (call: () => T | PromiseLike<T>, timeoutMs: number, timeoutError: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => setImmediate(() => reject(timeoutError())), timeoutMs)
    let answer: T | PromiseLike<T>
    try {
      answer = call()
    } catch (err) {
      clearTimeout(timer)
      reject(err)
      return
    }
    Promise.resolve(answer).then(
      (value) => { clearTimeout(timer); resolve(value) },
      (err: unknown) => { clearTimeout(timer); reject(err) })
  })
}
