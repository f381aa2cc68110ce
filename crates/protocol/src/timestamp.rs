//! RFC 3339 UTC timestamps as the events carry them.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, as `2026-11-24T12:00:00.000Z` (millisecond precision, UTC).
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// `t` in UTC with millisecond precision.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses any RFC 3339 timestamp.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_millis_and_round_trips() {
        let t = parse_rfc3339("2026-11-24T13:00:00.123+01:00").unwrap();
        assert_eq!(format_rfc3339(t), "2026-11-24T12:00:00.123Z");
        assert!(parse_rfc3339(&now_rfc3339()).is_some());
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
