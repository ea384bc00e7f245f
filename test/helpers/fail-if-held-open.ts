/**
 * Call at the end of a file's last `after` hook, once every app and client is closed. A Redis
 * connection the plugin failed to close would keep reconnecting and the process alive for ever;
 * this fails the file instead of hanging the whole suite. It never fires in a clean run, where
 * the process exits before the (unref'd) timer is due.
 */
export function failIfHeldOpen (file: string, graceMs = 5000): void {
  setTimeout(() => {
    process.stderr.write(`${file}: something still holds the process open after every app was closed\n`)
    process.exit(1)
  }, graceMs).unref()
}
