// Type declarations for RedMessenger's browser library (redmessenger.js, served at /redmessenger.js).
// docs/protocol.md, "Channels", is the wire protocol behind them.

/** A refusal: a reply code ("denied", "read_only", "bad_grant", ...) or a close code (4401, ...). */
export interface RedMessengerError extends Error {
  name: "RedMessengerError";
  code: string | number;
}

export type Mode = "read_write" | "read_only" | "write_only";
export type ConnectionState = "disconnected" | "connecting" | "connected" | "reconnecting";

/** Who published a client message (set by the daemon); null for the application's messages. */
export interface Sender {
  client_id: string;
  uid: string | null;
}

export interface Envelope {
  id: string;
  source: string;
  timestamp: number;
  /** true on one tab of the user's: raise a desktop notification there only (notify()). */
  bubble: boolean;
  payload: string;
  sender: Sender | null;
}

/**
 * Called once per message; the message is acknowledged when it returns (or its promise settles). Over long-polling
 * the next poll waits for it (the poll is what confirms), unless the page makes a request meanwhile (an awaited
 * publish()): its reply comes with a poll, which then goes at once and confirms what the handlers hold.
 */
export type ChannelHandler<T = unknown> = (data: T, envelope: Envelope) => void | Promise<void>;

export interface Channel<T = unknown> {
  readonly name: string;
  readonly mode: Mode | null;
  /** Resolves (with nothing) once the daemon took it; rejects with a RedMessengerError (read_only, too_large, ...). */
  publish(message: unknown): Promise<void>;
  /** Stops the channel; the last subscription's end closes the connection (unless connect() was called). */
  unsubscribe(): Promise<void>;
}

/** "polling": Engine.IO 4 long-polling with fetch(); "jsonp": Engine.IO 3 JSONP (script elements and forms). */
export type Transport = "websocket" | "polling" | "jsonp";

export interface RedMessengerOptions {
  /** Default: the redmessenger-url meta tag. */
  url?: string;
  /** Default: the redmessenger-pkey meta tag. */
  publicKey?: string;
  /** Handed to the application with each subscription request. */
  clientAuth?: string;
  /** Personal messages: the user's uid, with its key or an identity grant from the application. */
  uid?: string;
  key?: string;
  identityGrant?: string;
  /**
   * Reconnection back-off, in milliseconds (jittered, doubling up to the maximum). It starts again from
   * reconnectDelay only after a connection that stayed up 5 s past its welcome.
   */
  reconnectDelay?: number;
  maxReconnectDelay?: number;
  /** An attempt that has not opened after this many milliseconds is given up (default 10000). */
  connectTimeout?: number;
  /**
   * Tried in this order (default all three): an attempt that fails moves to the next transport, unless this one
   * opened before in the page (then the daemon is away, not the transport blocked).
   */
  transports?: Transport[];
  /** A WebSocket implementation (tests, Node). */
  WebSocket?: unknown;
}

export declare class RedMessenger {
  constructor(options?: RedMessengerOptions);
  readonly state: ConnectionState;
  /** The transport of the current (or last) connection; null before the first. */
  readonly transport: Transport | null;
  subscribe<T = unknown>(name: string, handler?: ChannelHandler<T>): Promise<Channel<T>>;
  /** Personal messages (rm.users.<uid>); with several listeners, acknowledged once every one's promise settled. */
  onMessage(listener: (envelope: Envelope) => void | Promise<void>): this;
  on(event: "state", listener: (state: ConnectionState) => void): this;
  /** A refusal of the connection (4401, 4429, ...), or of a resubscription for good (denied, ...: the channel is dropped). */
  on(event: "error", listener: (error: RedMessengerError) => void): this;
  on(event: "message", listener: (envelope: Envelope) => void | Promise<void>): this;
  connect(): void;
  disconnect(): void;
  /** A desktop notification for a personal message, only where envelope.bubble is true; null elsewhere. */
  notify(envelope: Envelope, title?: string, options?: NotificationOptions): Notification | null;
  static RequestError(code: string | number, reason: string): RedMessengerError;
}

declare global {
  interface Window {
    RedMessenger: typeof RedMessenger;
  }
}
