// Generated from clients/js by `npm run build`; edit the TypeScript there, not this file.
// Tidings browser client: `new TidingsClient({...}).start()`.
export { TidingsClient, parseSseBlock } from "./client.js";
export { Backoff } from "./backoff.js";
export * from "./protocol.js";
