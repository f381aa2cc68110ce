//! Event ids: Redis stream entry ids `<milliseconds>-<sequence>`, strictly increasing
//! per workspace, compared numerically (not as strings).

use std::fmt;
use std::str::FromStr;

/// A stream entry id. Ordering is by `(ms, seq)`, as in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    pub fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The next id after `self` for an event published at `now_ms`, the way Redis
    /// picks `*` ids: the clock if it moved forward, else the same millisecond with
    /// the next sequence number.
    pub fn next_after(self, now_ms: u64) -> Self {
        if now_ms > self.ms { Self { ms: now_ms, seq: 0 } } else { Self { ms: self.ms, seq: self.seq.saturating_add(1) } }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event id {0:?}: expected <milliseconds>-<sequence>, e.g. 1764000000000-0")]
pub struct InvalidEventId(pub String);

impl FromStr for EventId {
    type Err = InvalidEventId;

    /// Accepts `ms-seq` and, like Redis, a bare `ms` (meaning `ms-0`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidEventId(s.chars().take(64).collect());
        let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (s, "0"),
        };
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        Ok(Self { ms: ms.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_numerically() {
        let a: EventId = "1764000000000-9".parse().unwrap();
        let b: EventId = "1764000000000-10".parse().unwrap();
        assert!(a < b, "seq 9 < seq 10 numerically, unlike strings");
        assert_eq!(b.to_string(), "1764000000000-10");
        assert_eq!("42".parse::<EventId>().unwrap(), EventId::new(42, 0));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "-", "1-", "-1", "a-1", "1-b", "1-2-3", " 1-2", "123456789012345678901-0"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn next_after_is_strictly_increasing() {
        let id = EventId::new(100, 5);
        assert_eq!(id.next_after(99), EventId::new(100, 6), "clock went back");
        assert_eq!(id.next_after(100), EventId::new(100, 6));
        assert_eq!(id.next_after(101), EventId::new(101, 0));
    }
}
