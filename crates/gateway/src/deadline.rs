//! A write deadline for every accepted socket: a write that makes no progress
//! for the deadline fails with `TimedOut`, so hyper ends the connection.
//!
//! The WebSocket writer times its own sends, but an SSE stream is a response
//! body: when the client stops reading, hyper stops polling the body once its
//! buffers are full, and nothing of ours runs again. Only the socket sees the
//! stall, so the deadline lives here; hyper then drops the body, which frees
//! the stream's connection slot and takes it out of the hub.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;

use crate::socket::{SharedSocket, SocketIo};

/// Accepts TCP connections and gives each a write deadline.
#[derive(Debug)]
pub struct DeadlineListener {
    inner: TcpListener,
    deadline: Duration,
}

impl DeadlineListener {
    pub fn new(inner: TcpListener, deadline: Duration) -> Self {
        Self { inner, deadline }
    }
}

impl axum::serve::Listener for DeadlineListener {
    type Io = DeadlineIo<SocketIo>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // The writer coalesces what is queued itself; Nagle would only add
        // latency on top (up to a round trip for the last frame of a burst).
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        (DeadlineIo::new(SocketIo(SharedSocket::new(io)), self.deadline), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection accepted by [`DeadlineListener`], for `ConnectInfo<Peer>`:
/// its address, and its socket for the fan-out's direct writes.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub socket: Arc<SharedSocket>,
}

impl Connected<IncomingStream<'_, DeadlineListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, DeadlineListener>) -> Self {
        Peer { addr: *stream.remote_addr(), socket: stream.io().inner.0.clone() }
    }
}

/// Bytes an I/O object has written in all, counting progress that its
/// writes do not report: the rest of a frame the fan-out wrote in part is
/// drained inside writes that still end `Pending` ([`SocketIo`]).
pub trait WriteProgress {
    fn written(&self) -> u64;
}

/// An I/O object whose writes fail once they have been pending for `deadline`
/// without progress. Reads are untouched (idle clients are the heartbeat's business).
#[derive(Debug)]
pub struct DeadlineIo<T> {
    inner: T,
    deadline: Duration,
    /// Armed when a write first returns `Pending`, with what had been written
    /// by then; disarmed by any progress.
    stalled: Option<(Pin<Box<Sleep>>, u64)>,
}

impl<T: WriteProgress> DeadlineIo<T> {
    pub fn new(inner: T, deadline: Duration) -> Self {
        Self { inner, deadline, stalled: None }
    }

    /// Called when the inner write is pending: `Pending` until the deadline,
    /// then the error that ends the connection. Polling the timer registers
    /// the task's waker, so the deadline fires even if the socket never wakes it.
    fn stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let deadline = self.deadline;
        let written = self.inner.written();
        if self.stalled.as_ref().is_some_and(|(_, at)| *at != written) {
            self.stalled = None;
        }
        let (timer, _) = self.stalled.get_or_insert_with(|| (Box::pin(tokio::time::sleep(deadline)), written));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write deadline passed: the peer stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<R>(&mut self, result: io::Result<R>) -> Poll<io::Result<R>> {
        self.stalled = None;
        Poll::Ready(result)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + WriteProgress + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => this.progress(result),
            Poll::Pending => this.stall(cx),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => this.progress(result),
            Poll::Pending => this.stall(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => this.progress(result),
            Poll::Pending => this.stall(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    impl WriteProgress for tokio::io::DuplexStream {
        fn written(&self) -> u64 {
            0
        }
    }

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_after_the_deadline_and_progress_resets_it() {
        // A duplex pipe with a 16-byte buffer: the 17th byte waits for a reader.
        let (client, mut server) = tokio::io::duplex(16);
        let mut io = DeadlineIo::new(client, Duration::from_millis(100));
        io.write_all(&[0; 16]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = io.write_all(&[0; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Once the peer reads, writes go through again.
        let mut sink = [0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut server, &mut sink).await.unwrap();
        io.write_all(&[1; 8]).await.unwrap();
    }

    /// Takes nothing it is given; the progress it reports is made elsewhere.
    struct DrainedElsewhere(Arc<std::sync::atomic::AtomicU64>);

    impl WriteProgress for DrainedElsewhere {
        fn written(&self) -> u64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl AsyncWrite for DrainedElsewhere {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Pending
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn progress_made_inside_pending_writes_re_arms_the_deadline() {
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut io = DeadlineIo::new(DrainedElsewhere(written.clone()), Duration::from_secs(60));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut poll_once = |io: &mut DeadlineIo<DrainedElsewhere>| {
            assert!(Pin::new(&mut *io).poll_flush(&mut cx).is_pending());
            let (timer, at) = io.stalled.as_ref().expect("armed while pending");
            (timer.deadline(), *at)
        };
        let (first_deadline, at) = poll_once(&mut io);
        assert_eq!(at, 0);
        // No progress: the same timer keeps running.
        assert_eq!(poll_once(&mut io), (first_deadline, 0));
        // Bytes went out while the write stayed pending: a fresh timer.
        written.store(512, std::sync::atomic::Ordering::SeqCst);
        let (deadline, at) = poll_once(&mut io);
        assert_eq!(at, 512);
        assert!(deadline >= first_deadline);
    }
}
