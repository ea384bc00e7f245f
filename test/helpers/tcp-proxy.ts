import { once } from 'node:events'
import { createConnection, createServer, type Server, type Socket } from 'node:net'

/**
 * A TCP proxy of the tests' own in front of a private Redis, to make gray faults real (the
 * kernel here has no `tc netem`): each connection's replies can be delayed (late but live, order
 * kept), stalled (held until released), or one reply lost (the connection dies right after the
 * command reached Redis, so the client resends it on reconnection).
 */
export class ProxiedConnection {
  /** Extra delay of every byte Redis sends to this client, in ms; order is kept. */
  delayMs = 0
  /** While true, what Redis sends is held; released in order when set back to false. */
  stalled = false
  readonly #client: Socket
  readonly #server: Socket
  // What the client sent so far (the start of it), to tell a subscriber from a command connection.
  #sent = ''
  #queue: Array<{ at: number, data: Buffer }> = []
  #timer: NodeJS.Timeout | undefined
  #loseReplyTo: string | undefined
  #awaitingLostReply = false

  /** `stallOnceSent`: once the client's bytes hold it (in any case), what Redis sends is held (see `stalled`). */
  constructor (client: Socket, server: Socket, stallOnceSent?: string) {
    this.#client = client
    this.#server = server
    client.on('data', (data: Buffer) => {
      if (this.#sent.length < 1 << 16) this.#sent += data.toString('latin1')
      if (stallOnceSent !== undefined && data.toString('latin1').toLowerCase().includes(stallOnceSent.toLowerCase())) this.stalled = true
      if (this.#loseReplyTo !== undefined && data.toString('latin1').includes(this.#loseReplyTo)) {
        this.#loseReplyTo = undefined
        this.#awaitingLostReply = true
      }
      server.write(data)
    })
    server.on('data', (data: Buffer) => {
      if (this.#awaitingLostReply) {
        // The command ran; its reply never reaches the client, whose connection then drops.
        this.#awaitingLostReply = false
        this.destroy()
        return
      }
      this.#queue.push({ at: performance.now() + this.delayMs, data })
      this.#drain()
    })
    const end = (): void => this.destroy()
    client.on('close', end)
    server.on('close', end)
    client.on('error', () => {})
    server.on('error', () => {})
  }

  /** Whether this client subscribed (the plugin's invalidation subscriber). */
  get subscriber (): boolean {
    return /\bsubscribe\b/i.test(this.#sent)
  }

  get open (): boolean {
    return !this.#client.destroyed
  }

  /** The reply to the next command whose bytes hold `marker` is lost, and the connection drops. */
  loseReplyTo (marker: string): void {
    this.#loseReplyTo = marker
  }

  release (): void {
    this.stalled = false
    this.#drain()
  }

  #drain (): void {
    if (this.#timer !== undefined) return
    while (this.#queue.length > 0 && !this.stalled) {
      const next = this.#queue[0]!
      const wait = next.at - performance.now()
      if (wait > 0) {
        this.#timer = setTimeout(() => {
          this.#timer = undefined
          this.#drain()
        }, wait)
        return
      }
      this.#queue.shift()
      this.#client.write(next.data)
    }
  }

  destroy (): void {
    clearTimeout(this.#timer)
    this.#queue = []
    this.#client.destroy()
    this.#server.destroy()
  }
}

export class TcpProxy {
  port = 0
  readonly connections: ProxiedConnection[] = []
  /** While true, new connections are accepted and closed at once (Redis unreachable). */
  refusing = false
  /** Each new connection is stalled once its client sends bytes holding this, in any case (a command's name, say). */
  stallNewOnceSent: string | undefined
  readonly #target: { host: string, port: number }
  readonly #server: Server

  constructor (target: { host?: string, port: number }) {
    this.#target = { host: target.host ?? '127.0.0.1', port: target.port }
    this.#server = createServer((client) => {
      if (this.refusing) {
        client.destroy()
        return
      }
      const server = createConnection(this.#target)
      // Bytes from the client wait in the socket until the upstream connection is open.
      this.connections.push(new ProxiedConnection(client, server, this.stallNewOnceSent))
    })
  }

  async start (): Promise<this> {
    this.#server.listen(0, '127.0.0.1')
    await once(this.#server, 'listening')
    this.port = (this.#server.address() as { port: number }).port
    return this
  }

  get url (): string {
    return `redis://127.0.0.1:${this.port}`
  }

  /** Connections still open; `subscriber` picks the plugin's subscriber or the others. */
  live (subscriber?: boolean): ProxiedConnection[] {
    return this.connections.filter((connection) => connection.open && (subscriber === undefined || connection.subscriber === subscriber))
  }

  /** Drops every connection (a network cut); with `refusing`, clients cannot come back. */
  dropAll (): void {
    for (const connection of this.connections) connection.destroy()
  }

  async close (): Promise<void> {
    this.dropAll()
    this.#server.close()
    await once(this.#server, 'close').catch(() => {})
  }
}

export async function startProxy (targetPort: number): Promise<TcpProxy> {
  return await new TcpProxy({ port: targetPort }).start()
}
