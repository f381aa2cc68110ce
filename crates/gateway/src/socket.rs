//! An accepted TCP socket shared between hyper's I/O (HTTP, then the
//! WebSocket's own reads and writes through tungstenite) and the fan-out, which
//! writes an event's pre-built frame straight to the socket when the
//! connection's writer has nothing queued ([`crate::outbox`]): the same
//! `write(2)` the writer task would make, without waking the task.
//!
//! Both writers take one lock per write, and the fan-out only writes between
//! whole frames: never while tungstenite has bytes in flight (from its last
//! write until its flush), and a frame the socket took only part of is
//! finished before anything else is written.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::deadline::WriteProgress;
use crate::outbox::{DirectWrite, DirectWriter, PreparedEvent};

/// One accepted connection's socket, shared by [`SocketIo`] and the fan-out.
#[derive(Debug)]
pub struct SharedSocket {
    stream: TcpStream,
    state: Mutex<WriteState>,
    /// Bytes of partly written frames finished so far: progress the write
    /// deadline must see although the write that made it ends `Pending`.
    remainder_written: AtomicU64,
}

#[derive(Debug, Default)]
struct WriteState {
    /// tungstenite (or hyper) wrote since its last flush: its frame may be
    /// half-written, so nobody else may write.
    dirty: bool,
    /// The rest of a frame the fan-out wrote in part; written before anything else.
    remainder: Bytes,
}

impl SharedSocket {
    pub fn new(stream: TcpStream) -> Arc<Self> {
        Arc::new(Self { stream, state: Mutex::new(WriteState::default()), remainder_written: AtomicU64::new(0) })
    }

    fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what is left of a partly written frame; `Pending` (with the
    /// task registered for writability) until it is all gone.
    fn poll_remainder(&self, state: &mut WriteState, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !state.remainder.is_empty() {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(&state.remainder) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    state.remainder.advance(n);
                    self.remainder_written.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl DirectWriter for SharedSocket {
    fn try_write_frames(&self, events: &[Arc<PreparedEvent>]) -> DirectWrite {
        let mut state = self.lock();
        if state.dirty || !state.remainder.is_empty() {
            return DirectWrite::Busy;
        }
        // Never waits: a socket whose buffer is full (tokio's readiness says
        // so without a syscall) leaves the frames to the writer task.
        let written = match events {
            [event] => self.stream.try_write(event.ws_frame()),
            _ => {
                let slices: Vec<io::IoSlice<'_>> = events.iter().map(|e| io::IoSlice::new(e.ws_frame())).collect();
                self.stream.try_write_vectored(&slices)
            }
        };
        let total: usize = events.iter().map(|e| e.ws_frame().len()).sum();
        match written {
            Ok(n) if n == total => DirectWrite::Whole,
            Ok(0) | Err(_) => DirectWrite::Busy,
            Ok(n) => {
                state.remainder = unwritten(events, n);
                DirectWrite::Partial(total - n)
            }
        }
    }
}

/// What is left of the events' frames after the first `written` bytes.
fn unwritten(events: &[Arc<PreparedEvent>], mut written: usize) -> Bytes {
    let mut rest = BytesMut::new();
    for frame in events.iter().map(|e| e.ws_frame()) {
        if written >= frame.len() {
            written -= frame.len();
        } else {
            rest.extend_from_slice(&frame[written..]);
            written = 0;
        }
    }
    rest.freeze()
}

/// hyper's I/O object over a [`SharedSocket`].
#[derive(Debug, Clone)]
pub struct SocketIo(pub Arc<SharedSocket>);

impl WriteProgress for SocketIo {
    fn written(&self) -> u64 {
        self.0.remainder_written.load(Ordering::Relaxed)
    }
}

impl AsyncRead for SocketIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // tungstenite reads into initialised buffers, so this zeroes
            // nothing on the WebSocket's path.
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale: tokio cleared it, wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl SocketIo {
    /// One write by hyper or tungstenite: it bars direct writes until its
    /// flush, and goes after the rest of a frame the fan-out wrote in part.
    fn poll_write_with(&self, cx: &mut Context<'_>, write: impl Fn(&TcpStream) -> io::Result<usize>) -> Poll<io::Result<usize>> {
        let socket = &self.0;
        let mut state = socket.lock();
        state.dirty = true;
        ready!(socket.poll_remainder(&mut state, cx))?;
        loop {
            ready!(socket.stream.poll_write_ready(cx))?;
            match write(&socket.stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |stream| stream.try_write(buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |stream| stream.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &self.0;
        let mut state = socket.lock();
        ready!(socket.poll_remainder(&mut state, cx))?;
        // Everything written so far is in the kernel, whole frames only: the
        // fan-out may write again.
        state.dirty = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &self.0;
        let mut state = socket.lock();
        // Nothing more is written after a shutdown, by anyone.
        state.dirty = true;
        ready!(socket.poll_remainder(&mut state, cx))?;
        Poll::Ready(socket2::SockRef::from(&socket.stream).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn event(n: usize) -> Arc<PreparedEvent> {
        Arc::new(PreparedEvent {
            event_type: "t".into(),
            entity_ref: None,
            id: None,
            published_at: None,
            text: format!("{n:0>2000}").into(),
            trace: None,
            frame: OnceLock::new(),
        })
    }

    async fn pair() -> (Arc<SharedSocket>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (SharedSocket::new(server), client)
    }

    #[tokio::test]
    async fn direct_writes_to_a_peer_that_stops_reading_end_busy_and_every_frame_arrives_whole_after_the_flush() {
        let (socket, mut client) = pair().await;
        let mut expected = Vec::new();
        let mut partial = false;
        // The client reads nothing yet: the socket fills.
        for n in 0.. {
            let batch = [event(2 * n), event(2 * n + 1)];
            match socket.try_write_frames(&batch) {
                DirectWrite::Whole => batch.iter().for_each(|e| expected.extend_from_slice(e.ws_frame())),
                DirectWrite::Partial(_) => {
                    batch.iter().for_each(|e| expected.extend_from_slice(e.ws_frame()));
                    partial = true;
                }
                DirectWrite::Busy => break,
            }
        }
        // Nothing more goes directly until the writer's flush finished the frame.
        if partial {
            assert_eq!(socket.try_write_frames(&[event(99_999)]), DirectWrite::Busy);
        }
        let reader = tokio::spawn(async move {
            let mut got = vec![0; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == expected, "the bytes read are the frames written, whole and in order");
            client
        });
        let mut io = SocketIo(socket.clone());
        tokio::time::timeout(std::time::Duration::from_secs(10), io.flush()).await.unwrap().unwrap();
        let mut client = tokio::time::timeout(std::time::Duration::from_secs(10), reader).await.unwrap().unwrap();
        // A write through the I/O object bars direct writes until its flush.
        io.write_all(b"abc").await.unwrap();
        assert_eq!(socket.try_write_frames(&[event(1)]), DirectWrite::Busy);
        io.flush().await.unwrap();
        assert_eq!(socket.try_write_frames(&[event(1)]), DirectWrite::Whole);
        let mut got = vec![0; 3 + event(1).ws_frame().len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..3], b"abc");
        assert_eq!(&got[3..], &event(1).ws_frame()[..]);
    }
}
