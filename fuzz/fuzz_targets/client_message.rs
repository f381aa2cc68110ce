//! Any text a client can send: parsing never panics, and whatever parses can
//! be applied to a filter without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_protocol::messages::{ClientMessage, parse_client_message};
use tidings_protocol::Filter;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_client_message(text) {
        Ok(message) => {
            let mut filter = Filter::default();
            match message {
                ClientMessage::Subscribe { event_types, entity_refs, .. } => {
                    let _ = filter.subscribe(event_types, entity_refs);
                }
                ClientMessage::Unsubscribe { event_types, entity_refs, .. } => {
                    let _ = filter.unsubscribe(event_types, entity_refs);
                }
                ClientMessage::UpdateFilter { event_types, entity_refs, .. } => {
                    let _ = filter.replace(event_types, entity_refs);
                }
                _ => {}
            }
            let _ = filter.matches("t", Some("a:b/c"));
            let _ = serde_json::to_string(&filter);
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
});
