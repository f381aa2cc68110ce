//! The connection task's two halves: the writer, polled on every wake-up (most
//! wake-ups are an event for it), and the reader, polled only when its own
//! waker fired. `tokio::join!` polls both every time, so each event sent to a
//! connection also polled its reader (the socket's read readiness, the split
//! stream's lock, the cancellation token): ~5 % of the gateway's CPU at 100
//! events/s to 1,000 connections (BENCHMARKS.md).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

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
        first: bool,
        reader_waker: Arc<ReaderWaker>,
        waker: Waker,
    }
}

pub(super) fn writer_and_reader<W: Future<Output = ()>, R: Future<Output = ()>>(writer: W, reader: R) -> WriterAndReader<W, R> {
    let reader_waker = Arc::new(ReaderWaker::default());
    let waker = Waker::from(reader_waker.clone());
    WriterAndReader { writer, reader, writing: true, reading: true, first: true, reader_waker, waker }
}

impl<W: Future<Output = ()>, R: Future<Output = ()>> Future for WriterAndReader<W, R> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if *this.writing {
            *this.writing = this.writer.poll(cx).is_pending();
        }
        if *this.reading {
            this.reader_waker.task.register(cx.waker());
            // Swapped after registering, so a wake-up in between is not lost;
            // polled the first time regardless, so it registers what it waits for.
            let woken = this.reader_waker.woken.swap(false, Ordering::AcqRel) || *this.first;
            if woken {
                *this.reading = this.reader.poll(&mut Context::from_waker(this.waker)).is_pending();
            }
        }
        *this.first = false;
        if *this.writing || *this.reading { Poll::Pending } else { Poll::Ready(()) }
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
        tokio::time::timeout(std::time::Duration::from_secs(5), writer_and_reader(sender, receiver)).await.expect("both halves ended");
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
        let both = tokio::spawn(writer_and_reader(writer, reader));
        for _ in 0..10 {
            // One permit at a time: each is a separate wake-up of the writer.
            wake_writer.notify_one();
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), both).await.expect("both halves ended").unwrap();
        // Once to register, once when its channel fired: not once per writer wake-up.
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
