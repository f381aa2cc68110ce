//! What the reader and the writer share: the frame halves a session runs on
//! ([`FrameSink`], [`FrameStream`]), the close frame and how long it may take,
//! and the limits both sides apply.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tidings_protocol::codes::close;
use tokio::time::timeout;

/// Most events in one `batch` frame.
pub(crate) const MAX_BATCH: usize = 100;
/// How long a close handshake may take before the socket is dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a client closed 4009 gets to read its `lagged` and the close
/// frame: it stopped reading, so they wait behind what already fills its
/// socket; a client that was only frozen for a while (a background tab)
/// still learns why it was cut off. Its queue is already freed meanwhile.
pub(crate) const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The longest timer armed for a token's `exp`: an absurd `exp` (year 9999,
/// `u64::MAX`) must not overflow `Instant`, and no connection lives this long.
pub(crate) const MAX_TOKEN_TIMER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// What the session writes frames to: axum's WebSocket (its sink half) on a
/// real socket, a channel in the unit tests (axum's `testing-websockets`).
pub(crate) trait FrameSink: futures_util::Sink<Message, Error = axum::Error> + Unpin + Send + 'static {}
impl<T: futures_util::Sink<Message, Error = axum::Error> + Unpin + Send + 'static> FrameSink for T {}

/// What the session reads frames from; see [`FrameSink`].
pub(crate) trait FrameStream: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin + Send + 'static {}
impl<T: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin + Send + 'static> FrameStream for T {}

/// Sends a close frame, giving up after the close grace (a client that
/// stopped reading never takes it).
pub(crate) async fn send_close(sink: &mut impl FrameSink, code: u16, reason: impl Into<Utf8Bytes>) {
    let grace = if code == close::TOO_SLOW { SLOW_CLOSE_GRACE } else { CLOSE_GRACE };
    let frame = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    let _ = timeout(grace, sink.send(frame)).await;
}

/// `payload` as one complete, unmasked WebSocket text frame (RFC 6455 §5.2):
/// what tungstenite would write for `Message::Text(payload)` on the server side.
pub(crate) fn text_frame(payload: &[u8]) -> Bytes {
    const FIN_TEXT: u8 = 0x81;
    let len = payload.len();
    let mut frame = BytesMut::with_capacity(len + 10);
    frame.put_u8(FIN_TEXT);
    if len < 126 {
        frame.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        frame.put_u8(126);
        frame.put_u16(len);
    } else {
        frame.put_u8(127);
        frame.put_u64(len as u64);
    }
    frame.put_slice(payload);
    frame.freeze()
}

/// Time left until the Unix time `exp`, at most [`MAX_TOKEN_TIMER`] so that
/// `Instant::now() + until_unix(exp)` cannot overflow.
pub(crate) fn until_unix(exp: u64) -> Duration {
    Duration::from_secs(exp.saturating_sub(tidings_token::unix_now())).min(MAX_TOKEN_TIMER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_frame_is_what_tungstenite_writes_for_every_length_form() {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = "x".repeat(len);
            let mut expected = Vec::new();
            Frame::message(
                payload.clone(),
                tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                    tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
                ),
                true,
            )
            .format(&mut expected)
            .unwrap();
            assert_eq!(text_frame(payload.as_bytes()).as_ref(), expected.as_slice(), "payload of {len} bytes");
        }
    }
}
