//! The outbox's unit tests: bounds, conflation, lagged markers, condemnation,
//! the replay's wait for room, and the fan-out's direct writes.

use super::*;

fn ev(event_type: &str, entity: Option<&str>, id: u64) -> Arc<PreparedEvent> {
    Arc::new(PreparedEvent {
        event_type: event_type.into(),
        entity_ref: entity.map(String::from),
        id: Some(EventId::new(id, 0)),
        published_at: None,
        text: format!("{id}").into(),
        trace: None,
        frame: Default::default(),
    })
}

fn drain(outbox: &Outbox) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(item) = outbox.try_pop() {
        out.push(match item {
            Outgoing::Event(e) => e.text.to_string(),
            Outgoing::Control(t) => format!("ctl:{t}"),
            Outgoing::Lagged(n) => format!("lagged:{n}"),
            Outgoing::Flush => "flush".into(),
            Outgoing::Close(code, _) => {
                out.push(format!("close:{code}"));
                break;
            }
        });
    }
    out
}

/// Room for `n` of the one-character events of `ev`.
fn room_for(n: usize) -> usize {
    n * (SLOT_OVERHEAD + 1)
}

#[test]
fn drops_beyond_capacity_leave_one_lagged_marker_at_the_gap() {
    let outbox = Outbox::new(room_for(2));
    for id in 1..=4 {
        outbox.push_event(ev("t", None, id));
    }
    assert_eq!(drain(&outbox), ["1", "2", "lagged:2"]);
    assert_eq!(outbox.push_event(ev("t", None, 5)), Pushed::Queued, "caught up: room again");
    assert_eq!(drain(&outbox), ["5"]);
    assert_eq!(outbox.queued_bytes(), 0, "what was sent is no longer counted");
}

#[test]
fn the_bound_counts_bytes_not_items() {
    let outbox = Outbox::new(1000);
    let big = |id| {
        Arc::new(PreparedEvent {
            event_type: "t".into(),
            entity_ref: None,
            id: Some(EventId::new(id, 0)),
            published_at: None,
            text: "x".repeat(400).into(),
            trace: None,
            frame: Default::default(),
        })
    };
    assert_eq!(outbox.push_event(big(1)), Pushed::Queued);
    assert_eq!(outbox.push_event(big(2)), Pushed::Queued);
    assert_eq!(outbox.push_event(big(3)), Pushed::Dropped, "a third 400-byte event does not fit in 1000 bytes");
    assert_eq!(outbox.push_event(ev("t", None, 4)), Pushed::Dropped);
}

#[test]
fn a_reply_that_does_not_fit_condemns_the_client_instead_of_growing() {
    let outbox = Outbox::new(1000);
    outbox.push_control("x".repeat(5000));
    assert!(!outbox.is_closing(), "any single reply fits an empty queue");
    outbox.push_control("x".repeat(500));
    assert_eq!(drain(&outbox), ["close:4009"]);
}

#[test]
fn conflation_replaces_the_older_metrics_of_the_same_entity_first() {
    let outbox = Outbox::new(room_for(2));
    outbox.push_event(ev("metrics_update", Some("host:default/a"), 1));
    outbox.push_event(ev("deployment_update", Some("host:default/a"), 2));
    assert_eq!(outbox.push_event(ev("metrics_update", Some("host:default/a"), 3)), Pushed::Conflated);
    assert_eq!(outbox.push_event(ev("metrics_update", Some("host:default/b"), 4)), Pushed::Dropped);
    assert_eq!(drain(&outbox), ["2", "3", "lagged:1"]);
    let outbox = Outbox::new(room_for(3));
    for id in 1..=3 {
        outbox.push_event(ev("health_update", Some("host:default/a"), id));
    }
    assert_eq!(outbox.push_event(ev("health_update", Some("host:default/a"), 4)), Pushed::Conflated);
    assert_eq!(outbox.push_event(ev("alert", None, 5)), Pushed::Queued, "conflation freed room");
    assert_eq!(drain(&outbox), ["4", "5"]);
}

#[test]
fn a_client_that_stays_behind_is_condemned_with_4009() {
    let outbox = Outbox::new(room_for(3));
    let outcomes: Vec<Pushed> = (1..=7).map(|id| outbox.push_event(ev("t", None, id))).collect();
    assert_eq!(outcomes[..3], [Pushed::Queued; 3]);
    assert_eq!(outcomes[3..6], [Pushed::Dropped; 3]);
    assert_eq!(outcomes[6], Pushed::Condemned);
    assert_eq!(drain(&outbox), ["close:4009"]);
    assert_eq!(outbox.push_event(ev("t", None, 8)), Pushed::Closed);
}

#[tokio::test]
async fn replay_goes_before_held_live_events_without_duplicates() {
    let outbox = Outbox::new(room_for(10));
    outbox.hold();
    outbox.push_event(ev("t", None, 3)); // live, also part of the replay
    outbox.push_event(ev("t", None, 4));
    outbox.push_control("connected");
    for id in [2, 3] {
        assert!(outbox.push_replay(ev("t", None, id)).await);
    }
    assert!(outbox.try_release(EventId::new(3, 0)));
    assert_eq!(drain(&outbox), ["ctl:connected", "2", "3", "4"]);
    assert_eq!(outbox.last_sent(), Some(EventId::new(4, 0)));
    outbox.push_event(ev("t", None, 4));
    assert_eq!(drain(&outbox), Vec::<String>::new(), "an id already sent is not sent again");
}

#[tokio::test]
async fn a_replay_waits_for_room_and_live_events_dropped_meanwhile_are_replayed_on() {
    let outbox = Arc::new(Outbox::new(room_for(2)));
    outbox.hold();
    assert!(outbox.push_replay(ev("t", None, 1)).await);
    assert!(outbox.push_replay(ev("t", None, 2)).await);
    // Full: live events wait aside and, past the bound, are dropped but remembered.
    outbox.push_event(ev("t", None, 3));
    let waiting = tokio::spawn({
        let outbox = outbox.clone();
        async move { outbox.push_replay(ev("t", None, 3)).await }
    });
    assert_eq!(drain(&outbox), ["1", "2"]);
    assert!(waiting.await.unwrap(), "the writer made room");
    assert!(!outbox.try_release(EventId::new(2, 0)), "event 3 was dropped from the held lane: replay on");
    assert!(outbox.try_release(EventId::new(3, 0)));
    assert_eq!(drain(&outbox), ["3"]);
}

#[test]
fn a_hold_ended_without_its_replay_reports_what_it_dropped() {
    let outbox = Outbox::new(room_for(1));
    outbox.push_event(ev("t", None, 1));
    outbox.hold();
    outbox.push_event(ev("t", None, 2));
    outbox.push_event(ev("t", None, 3));
    outbox.release_without_replay();
    assert_eq!(drain(&outbox), ["1", "lagged:2"]);
}

#[tokio::test]
async fn hold_puts_unsent_live_events_aside_so_a_replay_keeps_id_order() {
    let outbox = Outbox::new(room_for(10));
    outbox.push_event(ev("t", None, 5));
    outbox.push_control("subscribed");
    outbox.hold();
    assert!(outbox.push_replay(ev("t", None, 4)).await);
    assert!(outbox.push_replay(ev("t", None, 5)).await);
    assert!(outbox.try_release(EventId::new(5, 0)));
    assert_eq!(drain(&outbox), ["ctl:subscribed", "4", "5"]);
}

#[test]
fn a_queued_close_waits_for_earlier_replies() {
    let outbox = Outbox::new(room_for(10));
    outbox.push_control("error");
    outbox.close_after_queued(close::RATE_LIMITED, "too many messages");
    assert_eq!(outbox.push_event(ev("t", None, 1)), Pushed::Closed);
    assert_eq!(drain(&outbox), ["ctl:error", "close:4008"]);
}

#[test]
fn close_wins_over_queued_items() {
    let outbox = Outbox::new(room_for(10));
    outbox.push_event(ev("t", None, 1));
    outbox.close(close::DRAINING, "draining");
    outbox.close(close::NORMAL, "later");
    assert_eq!(drain(&outbox), ["close:1012"]);
}

/// A socket stand-in that answers each write as told and keeps what it took.
#[derive(Debug, Default)]
struct FakeSocket {
    answer: Mutex<Option<DirectWrite>>,
    written: Mutex<Vec<String>>,
}

impl FakeSocket {
    fn answer(&self, answer: DirectWrite) {
        *self.answer.lock().unwrap() = Some(answer);
    }

    fn written(&self) -> Vec<String> {
        self.written.lock().unwrap().clone()
    }
}

impl DirectWriter for FakeSocket {
    fn try_write_frames(&self, events: &[Arc<PreparedEvent>]) -> DirectWrite {
        let answer = self.answer.lock().unwrap().unwrap_or(DirectWrite::Whole);
        if answer != DirectWrite::Busy {
            self.written.lock().unwrap().extend(events.iter().map(|e| e.text.to_string()));
        }
        answer
    }
}

/// An outbox writing to a fake socket, its writer waiting on an empty queue.
fn direct_outbox() -> (Outbox, Arc<FakeSocket>) {
    let outbox = Outbox::new(room_for(100));
    let socket = Arc::new(FakeSocket::default());
    outbox.write_directly_to(socket.clone());
    assert!(futures_util::FutureExt::now_or_never(outbox.pop()).is_none(), "nothing queued yet");
    (outbox, socket)
}

#[test]
fn events_for_an_idle_writer_go_straight_to_the_socket_and_queue_once_it_is_full() {
    let (outbox, socket) = direct_outbox();
    assert_eq!(outbox.push_event(ev("t", None, 1)), Pushed::Written);
    let mut outcomes = Vec::new();
    outbox.push_events(&[ev("t", None, 2), ev("t", None, 3)], |e, p| outcomes.push((e.text.to_string(), p)));
    assert_eq!(outcomes, [("2".to_string(), Pushed::Written), ("3".to_string(), Pushed::Written)]);
    assert_eq!(socket.written(), ["1", "2", "3"]);
    assert!(drain(&outbox).is_empty());
    // The socket is full: the event queues, and so does the next one behind
    // it even though the socket has room again, so order holds.
    assert!(futures_util::FutureExt::now_or_never(outbox.pop()).is_none());
    socket.answer(DirectWrite::Busy);
    assert_eq!(outbox.push_event(ev("t", None, 4)), Pushed::Queued);
    socket.answer(DirectWrite::Whole);
    assert_eq!(outbox.push_event(ev("t", None, 5)), Pushed::Queued);
    assert_eq!(drain(&outbox), ["4", "5"]);
    assert_eq!(socket.written(), ["1", "2", "3"]);
    // After a direct write, a live event the socket already got is skipped.
    assert!(futures_util::FutureExt::now_or_never(outbox.pop()).is_none());
    assert_eq!(outbox.push_event(ev("t", None, 3)), Pushed::Queued);
    assert!(drain(&outbox).is_empty());
}

#[test]
fn a_frame_written_in_part_makes_everything_after_it_wait_for_the_writers_flush() {
    let (outbox, socket) = direct_outbox();
    socket.answer(DirectWrite::Partial(3));
    assert_eq!(outbox.push_event(ev("t", None, 1)), Pushed::Written);
    // The rest waiting in the socket counts against the bound until it is written.
    assert_eq!(outbox.queued_bytes(), SLOT_OVERHEAD + 3);
    socket.answer(DirectWrite::Whole);
    assert_eq!(outbox.push_event(ev("t", None, 2)), Pushed::Queued);
    assert_eq!(drain(&outbox), ["flush", "2"]);
    assert_eq!(socket.written(), ["1"]);
}

#[test]
fn a_busy_writer_a_running_replay_or_a_closing_connection_get_nothing_directly() {
    let outbox = Outbox::new(room_for(100));
    let socket = Arc::new(FakeSocket::default());
    outbox.write_directly_to(socket.clone());
    // The writer has not waited yet (it is sending what it popped).
    assert_eq!(outbox.push_event(ev("t", None, 1)), Pushed::Queued);
    assert_eq!(drain(&outbox), ["1"]);
    // A replay holds live events back.
    assert!(futures_util::FutureExt::now_or_never(outbox.pop()).is_none());
    outbox.hold();
    assert_eq!(outbox.push_event(ev("t", None, 2)), Pushed::Queued);
    assert!(outbox.try_release(EventId::new(1, 0)));
    assert_eq!(drain(&outbox), ["2"]);
    assert!(futures_util::FutureExt::now_or_never(outbox.pop()).is_none());
    outbox.close(close::NORMAL, "");
    assert_eq!(outbox.push_event(ev("t", None, 3)), Pushed::Closed);
    assert!(socket.written().is_empty());
}

#[test]
fn events_that_would_not_fit_the_queue_are_not_written_directly() {
    // What a partial write leaves behind must fit the same bound as the queue.
    let outbox = Outbox::new(room_for(1));
    let socket = Arc::new(FakeSocket::default());
    outbox.write_directly_to(socket.clone());
    assert!(futures_util::FutureExt::now_or_never(outbox.pop()).is_none());
    let big = Arc::new(PreparedEvent {
        event_type: "t".into(),
        entity_ref: None,
        id: None,
        published_at: None,
        text: "x".repeat(400).into(),
        trace: None,
        frame: Default::default(),
    });
    assert_eq!(outbox.push_event(big), Pushed::Queued);
    assert!(socket.written().is_empty());
    assert_eq!(drain(&outbox).len(), 1);
}
