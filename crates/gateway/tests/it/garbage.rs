//! Thousands of malformed frames: the process stays healthy, other clients are
//! unaffected, and nothing crosses workspaces.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A small deterministic generator (xorshift), so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn garbage_frames(rng: &mut Rng, n: usize) -> Vec<Message> {
    let valid = [
        r#"{"type":"subscribe","event_types":["a"]}"#,
        r#"{"type":"update_filter","event_types":"*","entity_refs":"*"}"#,
        r#"{"type":"request_history","limit":5}"#,
    ];
    let odd_unicode = ["\u{0}", "\u{202e}", "\u{feff}", "😀", "\u{fffd}", "\u{10ffff}", "e\u{301}"];
    (0..n)
        .map(|i| match i % 9 {
            0 => Message::Binary((0..rng.below(64)).map(|_| rng.next() as u8).collect::<Vec<u8>>().into()),
            1 => {
                // Truncated JSON.
                let v = valid[rng.below(valid.len())];
                Message::Text(v[..rng.below(v.len())].to_string().into())
            }
            2 => {
                let depth = 1 + rng.below(5000);
                Message::Text(format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into())
            }
            3 => Message::Text(
                format!(r#"{{"type":"subscribe","event_types":{}}}"#, ["1", "null", "{}", "[1,2]", "\"x\""][rng.below(5)]).into(),
            ),
            4 => Message::Text(
                format!(
                    r#"{{"type":"request_history","limit":{}}}"#,
                    ["1e400", "-1", "18446744073709551616", "3.5", "\"9\""][rng.below(5)]
                )
                .into(),
            ),
            5 => Message::Text(
                format!(
                    r#"{{"type":"{}","id":"{}"}}"#,
                    odd_unicode[rng.below(odd_unicode.len())],
                    odd_unicode[rng.below(odd_unicode.len())]
                )
                .into(),
            ),
            6 => Message::Text(
                format!(r#"{{"type":"subscribe","entity_refs":["{}:x/y"]}}"#, odd_unicode[rng.below(odd_unicode.len())]).into(),
            ),
            7 => Message::Text(r#"{"type":"subscribe","id":{"nested":[1,{"a":null}]}}"#.into()),
            _ => Message::Text(format!(r#"{{"type":"auth","token":"{}"}}"#, "x".repeat(rng.below(2000))).into()),
        })
        .collect()
}

#[tokio::test]
async fn thousands_of_malformed_frames_harm_nobody() {
    const FRAMES: usize = 3000;
    let gw = TestGateway::start_with(|c| c.client_rate = 1_000_000).await;
    let mut attacker = gw.client("acme", "").await;
    let mut neighbour = gw.client("acme", "").await;
    let mut other_workspace = gw.client("other", "").await;

    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for frame in garbage_frames(&mut rng, FRAMES) {
        attacker.ws.send(frame).await.unwrap();
    }
    // Every frame is answered (an error, or the reply of a frame that parsed).
    let mut errors = 0;
    for _ in 0..FRAMES {
        let reply = attacker.next_json().await;
        if reply["type"] == "error" {
            errors += 1;
            let code = reply["code"].as_str().unwrap();
            assert!(["invalid_message", "unknown_type", "unsupported", "token_invalid", "token_missing"].contains(&code), "{reply}");
        }
    }
    assert!(errors > FRAMES / 2, "most frames were refused ({errors})");
    attacker.assert_alive().await;

    // Delivery is intact for everyone, and stays inside each workspace.
    gw.publish("acme", "after_attack", None, json!(1)).await;
    gw.publish("other", "other_event", None, json!(2)).await;
    let e = neighbour.next_json().await;
    assert_eq!((e["type"].as_str(), e["workspace_id"].as_str()), (Some("after_attack"), Some("acme")));
    let e = other_workspace.next_json().await;
    assert_eq!((e["type"].as_str(), e["workspace_id"].as_str()), (Some("other_event"), Some("other")));
    let healthz = reqwest::get(format!("{}/healthz", gw.base())).await.unwrap();
    assert_eq!(healthz.status(), 200);
}
