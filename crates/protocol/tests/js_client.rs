//! The browser client's copy of the wire contract (`clients/js/src/protocol.ts`)
//! must name the same message types and close codes as this crate.

use tidings_protocol::codes::close;
use tidings_protocol::messages::{CLIENT_MESSAGE_TYPES, SERVER_MESSAGE_TYPES};

fn protocol_ts() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/js/src/protocol.ts");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The quoted strings of the `export const NAME = [ … ] as const;` list.
fn ts_list(source: &str, name: &str) -> Vec<String> {
    let start = source.find(&format!("export const {name} = [")).unwrap_or_else(|| panic!("{name} not in protocol.ts"));
    let body = &source[start..];
    let body = &body[..body.find("] as const").unwrap_or_else(|| panic!("{name} is not closed"))];
    body.split('"').skip(1).step_by(2).map(String::from).collect()
}

#[test]
fn message_types_match_the_rust_contract() {
    let source = protocol_ts();
    assert_eq!(ts_list(&source, "CLIENT_MESSAGE_TYPES"), CLIENT_MESSAGE_TYPES);
    assert_eq!(ts_list(&source, "SERVER_MESSAGE_TYPES"), SERVER_MESSAGE_TYPES);
    for ty in CLIENT_MESSAGE_TYPES.iter().chain(SERVER_MESSAGE_TYPES) {
        assert!(source.contains(&format!("type: \"{ty}\"")), "protocol.ts has no message shape for {ty:?}");
    }
}

#[test]
fn close_codes_match_the_rust_contract() {
    let source = protocol_ts();
    for (name, code) in [
        ("NORMAL", close::NORMAL),
        ("DRAINING", close::DRAINING),
        ("TRY_AGAIN_LATER", close::TRY_AGAIN_LATER),
        ("TOKEN_EXPIRED", close::TOKEN_EXPIRED),
        ("FORBIDDEN", close::FORBIDDEN),
        ("RATE_LIMITED", close::RATE_LIMITED),
        ("TOO_SLOW", close::TOO_SLOW),
    ] {
        assert!(source.contains(&format!("{name}: {code},")), "protocol.ts CLOSE.{name} must be {code}");
    }
}
