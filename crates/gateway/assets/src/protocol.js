// Generated from clients/js by `npm run build`; edit the TypeScript there, not this file.
// The wire contract of SPEC §2–§3, as TypeScript types. `crates/protocol`
// is the source of truth; `crates/protocol/tests/js_client.rs` checks that the
// message type names below match its own, so the two cannot drift.
/** Every `type` a client may send. */
export const CLIENT_MESSAGE_TYPES = [
    "subscribe",
    "unsubscribe",
    "update_filter",
    "ping",
    "request_metrics",
    "request_history",
    "auth",
];
/** Every `type` of a server message; any other `type` is an event. */
export const SERVER_MESSAGE_TYPES = [
    "connected",
    "subscribed",
    "unsubscribed",
    "filter_updated",
    "pong",
    "metrics",
    "history",
    "authenticated",
    "batch",
    "lagged",
    "error",
];
/** Close codes of SPEC §3.4 that the client acts on. */
export const CLOSE = {
    NORMAL: 1000,
    DRAINING: 1012,
    TRY_AGAIN_LATER: 1013,
    TOKEN_EXPIRED: 4001,
    FORBIDDEN: 4003,
    RATE_LIMITED: 4008,
    TOO_SLOW: 4009,
};
/** Event ids (`ms-seq`) compared numerically. */
export function compareIds(a, b) {
    const [am, as] = a.split("-").map((x) => BigInt(x));
    const [bm, bs] = b.split("-").map((x) => BigInt(x));
    if (am !== bm)
        return am < bm ? -1 : 1;
    if (as !== bs)
        return as < bs ? -1 : 1;
    return 0;
}
