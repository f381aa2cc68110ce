//! The connection task's two halves: the writer, polled on every wake-up (most
//! wake-ups are an event for it), and the reader, polled only when its own
//! waker fired. `tokio::join!` polls both every time, so each event sent to a
//! connection also polled its reader (the socket's read readiness, the split
//! stream's lock, the cancellation token): ~5 % of the gateway's CPU at 100
//! events/s to 1,000 connections (BENCHMARKS.md). The halves tell each other
//! the connection is over with [`Done`], a flag this loop watches.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The connection is over: set by whichever half decides it, seen by the
/// other. It has no wakers: [`WriterAndReader`] polls both halves again when
/// it flips, so waiting on it is a flag check, and it costs one small
/// allocation where a `CancellationToken` cost ~110 bytes and a waiter
/// (~70 bytes) inside each half's state (BENCHMARKS.md, idle memory).
#[derive(Debug, Default, Clone)]
pub(super) struct Done(Arc<AtomicBool>);

impl Done {
    pub(super) fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Resolves once cancelled; only for the halves run by [`writer_and_reader`].
    pub(super) fn cancelled(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|_| if self.is_cancelled() { Poll::Ready(()) } else { Poll::Pending })
    }
}

/// The reader's waker: marks the reader woken and wakes the task.
#[derive(Default)]
struct ReaderWaker {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReaderWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// Runs the writer and the reader to completion in the calling task. A
    /// struct rather than an `async fn`: the generator of one kept both
    /// futures twice (as its arguments and pinned), 1.4 KiB more per idle
    /// connection; this costs one small allocation (~0.1 KiB measured).
    pub(super) struct WriterAndReader<W, R> {
        #[pin]
        writer: W,
        #[pin]
        reader: R,
        writing: bool,
        reading: bool,
        // The reader is polled next whether or not its waker fired.
        poll_reader: bool,
        done: Done,
        saw_done: bool,
        reader_waker: Arc<ReaderWaker>,
        waker: Waker,
    }
}

/// Runs `writer` and `reader`, which share `done`, to completion.
pub(super) fn writer_and_reader<W: Future<Output = ()>, R: Future<Output = ()>>(writer: W, reader: R, done: Done) -> WriterAndReader<W, R> {
    let reader_waker = Arc::new(ReaderWaker::default());
    let waker = Waker::from(reader_waker.clone());
    // Polled the first time regardless, so it registers what it waits for.
    WriterAndReader { writer, reader, writing: true, reading: true, poll_reader: true, done, saw_done: false, reader_waker, waker }
}

impl<W: Future<Output = ()>, R: Future<Output = ()>> Future for WriterAndReader<W, R> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            if *this.writing {
                *this.writing = this.writer.as_mut().poll(cx).is_pending();
            }
            if *this.reading {
                this.reader_waker.task.register(cx.waker());
                // Swapped after registering, so a wake-up in between is not lost.
                let woken = this.reader_waker.woken.swap(false, Ordering::AcqRel) || *this.poll_reader;
                *this.poll_reader = false;
                if woken {
                    *this.reading = this.reader.as_mut().poll(&mut Context::from_waker(this.waker)).is_pending();
                }
            }
            // One half just ended the connection: both look again, as
            // nothing wakes them for it.
            if !*this.saw_done && this.done.is_cancelled() {
                *this.saw_done = true;
                *this.poll_reader = true;
                continue;
            }
            return if *this.writing || *this.reading { Poll::Pending } else { Poll::Ready(()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_halves_run_to_the_end_whichever_is_woken() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        let sender = async move {
            tokio::task::yield_now().await;
            tx.send(1).unwrap();
            assert_eq!(done_rx.await.unwrap(), 2);
        };
        let receiver = async move {
            let n = rx.await.unwrap();
            done_tx.send(n + 1).unwrap();
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), writer_and_reader(sender, receiver, Done::default()))
            .await
            .expect("both halves ended");
    }

    #[tokio::test]
    async fn the_reader_is_polled_only_when_its_own_waker_fired() {
        use std::sync::atomic::AtomicUsize;
        let polls = Arc::new(AtomicUsize::new(0));
        let wake_writer = Arc::new(tokio::sync::Notify::new());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let writer = {
            let wake_writer = wake_writer.clone();
            async move {
                for _ in 0..10 {
                    wake_writer.notified().await;
                }
                tx.send(()).unwrap();
            }
        };
        let counted = polls.clone();
        let reader = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut rx).poll(cx).map(|_| ())
        });
        let both = tokio::spawn(writer_and_reader(writer, reader, Done::default()));
        for _ in 0..10 {
            // One permit at a time: each is a separate wake-up of the writer.
            wake_writer.notify_one();
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), both).await.expect("both halves ended").unwrap();
        // Once to register, once when its channel fired: not once per writer wake-up.
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_half_that_ends_the_connection_is_seen_by_the_other_without_a_wake_up() {
        let done = Done::default();
        let writer = {
            let done = done.clone();
            async move {
                tokio::task::yield_now().await;
                done.cancel();
            }
        };
        let reader = {
            let done = done.clone();
            async move { done.cancelled().await }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), writer_and_reader(writer, reader, done)).await.expect("the reader saw it");

        // The other way round: the reader ends it while the writer waits.
        let done = Done::default();
        let writer = {
            let done = done.clone();
            async move { done.cancelled().await }
        };
        let reader = {
            let done = done.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move { tx.send(()) });
            async move {
                let _ = rx.await;
                done.cancel();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), writer_and_reader(writer, reader, done)).await.expect("the writer saw it");
    }
}
