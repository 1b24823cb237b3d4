//! Microsecond UTC timestamps, rendered and parsed as RFC 3339 (with chrono).

use std::fmt;

/// Microseconds since the Unix epoch, UTC. Serialised as an RFC 3339 string with microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }

    /// Milliseconds since the epoch, as the original protocol's `meta.timestamp` carries them.
    pub fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Parses an RFC 3339 timestamp (`2024-02-29T12:00:00Z`, `…+08:00`, fractions), with
    /// chrono: a date that does not exist (`2024-13-45T99:99:99Z`) is refused, never rolled over.
    pub fn parse(s: &str) -> Option<Self> {
        chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| Timestamp(t.timestamp_micros()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_micros(self.0) {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            None => write!(f, "invalid timestamp {}", self.0),
        }
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).ok_or_else(|| serde::de::Error::custom("invalid RFC 3339 timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        for t in [0, 1_700_000_000_123_456, 951_782_400_000_001, -1] {
            let ts = Timestamp(t);
            assert_eq!(Timestamp::parse(&ts.to_string()), Some(ts), "{ts}");
        }
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            Timestamp::parse("2024-02-29T12:00:00Z").map(|t| t.to_string()).as_deref(),
            Some("2024-02-29T12:00:00.000000Z")
        );
        assert_eq!(Timestamp::parse("yesterday"), None);
        // Dates that do not exist are refused, not rolled over into another date.
        for bad in ["2024-13-45T99:99:99Z", "2023-02-29T00:00:00Z", "2024-01-01T24:00:00Z"] {
            assert_eq!(Timestamp::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Timestamp::parse("2024-02-29T20:00:00+08:00").map(|t| t.to_string()).as_deref(),
            Some("2024-02-29T12:00:00.000000Z")
        );
    }
}
