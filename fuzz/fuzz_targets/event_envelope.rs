//! Any bytes arriving as an event (HTTP publish body, Redis channel message):
//! decoding and validation never panic, and a valid event re-encodes to JSON
//! that decodes to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_protocol::{Event, EventHeader, EventId};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<EventHeader>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<EventId>();
    }
    if let Ok(mut event) = serde_json::from_slice::<Event>(data) {
        if event.validate().is_ok() {
            let json = event.to_json();
            let back: Event = serde_json::from_str(&json).expect("a validated event re-decodes");
            assert_eq!(back, event);
        }
    }
});
