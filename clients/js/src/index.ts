// Tidings browser client: `new TidingsClient({...}).start()`.
export { TidingsClient, parseSseBlock } from "./client.js";
export type { ClientOptions, ConnectionState, Environment, Status, TokenSource, Transport, WebSocketLike } from "./client.js";
export { Backoff } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export * from "./protocol.js";
