//! Close codes (SPEC §3.4) and error codes, named once so call sites never use literals.

/// WebSocket close codes sent by the gateway.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Protocol error: the client broke RFC 6455 framing (an unmasked frame,
    /// non-zero reserved bits, a reserved opcode, a stray continuation…).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame (or a close reason) that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: the auth message was missing or invalid after the upgrade.
    pub const POLICY: u16 = 1008;
    /// A frame was larger than `TIDINGS_MAX_MESSAGE_BYTES`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// The gateway is draining: reconnect elsewhere at once, with `since`.
    pub const DRAINING: u16 = 1012;
    /// Overloaded: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token expired and was not refreshed.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The token was revoked, or lost access to the workspace.
    pub const FORBIDDEN: u16 = 4003;
    /// Too many messages.
    pub const RATE_LIMITED: u16 = 4008;
    /// The client fell too far behind.
    pub const TOO_SLOW: u16 = 4009;
}

/// `code` values of `{"type":"error"}` messages and of HTTP error bodies.
pub mod error {
    /// The frame is not a JSON object of a known message shape, or a field is wrong.
    pub const INVALID_MESSAGE: &str = "invalid_message";
    /// The frame's `type` is not a client message type.
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    /// Binary frames are not part of the protocol.
    pub const UNSUPPORTED: &str = "unsupported";
    /// The client sends faster than `TIDINGS_CLIENT_RATE`.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// No token was given.
    pub const TOKEN_MISSING: &str = "token_missing";
    /// The token could not be decoded or lacks a required claim.
    pub const TOKEN_INVALID: &str = "token_invalid";
    /// The token's signature does not verify.
    pub const TOKEN_BAD_SIGNATURE: &str = "token_bad_signature";
    /// The token's `exp` has passed.
    pub const TOKEN_EXPIRED: &str = "token_expired";
    /// The token's `nbf` lies in the future.
    pub const TOKEN_NOT_YET_VALID: &str = "token_not_yet_valid";
    /// The token's `iss` is not the configured issuer.
    pub const TOKEN_WRONG_ISSUER: &str = "token_wrong_issuer";
    /// The token's `aud` does not contain the configured audience.
    pub const TOKEN_WRONG_AUDIENCE: &str = "token_wrong_audience";
    /// The token was revoked.
    pub const TOKEN_REVOKED: &str = "token_revoked";
    /// The token does not grant the requested workspace.
    pub const WORKSPACE_FORBIDDEN: &str = "workspace_forbidden";
    /// The `Origin` header is not in `TIDINGS_ALLOWED_ORIGINS`.
    pub const ORIGIN_FORBIDDEN: &str = "origin_forbidden";
    /// A query parameter or body field is malformed.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The request body is larger than allowed.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// The process is draining or at its connection limit.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The per-user connection cap is reached.
    pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
    /// The route does not exist.
    pub const NOT_FOUND: &str = "not_found";
    /// Something failed inside the server.
    pub const INTERNAL: &str = "internal";
    /// The publish bearer token is missing or wrong.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// An event does not follow SPEC §2.
    pub const INVALID_EVENT: &str = "invalid_event";
}
