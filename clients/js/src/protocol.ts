// The wire contract of SPEC §2–§3, as TypeScript types. `crates/protocol`
// is the source of truth; `crates/protocol/tests/js_client.rs` checks that the
// message type names below match its own, so the two cannot drift.

/** An event (SPEC §2). `id` is set on durable events only. */
export interface TidingsEvent {
  type: string;
  id?: string;
  workspace_id: string;
  entity_ref?: string;
  timestamp?: string;
  data: unknown;
  trace?: string;
}

/** `"*"` or an explicit list. */
export type Selection = "*" | string[];

export interface Filter {
  event_types: Selection;
  entity_refs: Selection;
}

/** Every `type` a client may send. */
export const CLIENT_MESSAGE_TYPES = [
  "subscribe",
  "unsubscribe",
  "update_filter",
  "ping",
  "request_metrics",
  "request_history",
  "auth",
] as const;

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
] as const;

export type ClientMessage =
  | { type: "subscribe"; id?: unknown; event_types?: string[]; entity_refs?: string[]; since?: string }
  | { type: "unsubscribe"; id?: unknown; event_types?: string[]; entity_refs?: string[] }
  | { type: "update_filter"; id?: unknown; event_types?: Selection; entity_refs?: Selection }
  | { type: "ping"; id?: unknown }
  | { type: "request_metrics"; id?: unknown; entity_refs?: string[] }
  | { type: "request_history"; id?: unknown; since?: string; limit?: number; event_types?: string[] }
  | { type: "auth"; id?: unknown; token: string };

export type ServerMessage =
  | {
      type: "connected";
      connection_id: string;
      workspace_id: string;
      user_id: string;
      server: string;
      heartbeat_ms: number;
      expires_at: string;
      recovered?: boolean;
    }
  | { type: "subscribed"; id?: unknown; filter: Filter; recovered?: boolean }
  | { type: "unsubscribed"; id?: unknown; filter: Filter }
  | { type: "filter_updated"; id?: unknown; filter: Filter }
  | { type: "pong"; id?: unknown; timestamp: string }
  | { type: "metrics"; id?: unknown; data: Record<string, TidingsEvent> }
  | { type: "history"; id?: unknown; events: TidingsEvent[]; recovered: boolean }
  | { type: "authenticated"; id?: unknown; expires_at: string }
  | { type: "batch"; events: TidingsEvent[] }
  | { type: "lagged"; dropped: number }
  | { type: "error"; code: string; message: string; id?: unknown };

/** Close codes of SPEC §3.4 that the client acts on. */
export const CLOSE = {
  NORMAL: 1000,
  DRAINING: 1012,
  TRY_AGAIN_LATER: 1013,
  TOKEN_EXPIRED: 4001,
  FORBIDDEN: 4003,
  RATE_LIMITED: 4008,
  TOO_SLOW: 4009,
} as const;

/** Event ids (`ms-seq`) compared numerically. */
export function compareIds(a: string, b: string): number {
  const [am, as] = a.split("-").map((x) => BigInt(x));
  const [bm, bs] = b.split("-").map((x) => BigInt(x));
  if (am !== bm) return am < bm ? -1 : 1;
  if (as !== bs) return as < bs ? -1 : 1;
  return 0;
}
