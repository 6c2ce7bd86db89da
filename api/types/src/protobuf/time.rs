//! The JSON forms of Kubernetes' time types: `metav1.Time`/`MicroTime` (RFC 3339 in UTC, seconds or microseconds)
//! and `metav1.Duration` (Go's `time.Duration.String()`).

use super::ProtobufError;

/// `seconds`/`nanos` since the epoch as Kubernetes writes a Time (`2024-05-01T10:00:00Z`) or, with `micro`, a
/// MicroTime (`2024-05-01T10:00:00.123456Z`).
pub fn rfc3339(seconds: i64, nanos: i64, micro: bool) -> Result<String, ProtobufError> {
    let nanos = i32::try_from(nanos).map_err(|_| ProtobufError::new("a time's nanos are out of range"))?;
    let ts =
        jiff::Timestamp::new(seconds, nanos).map_err(|e| ProtobufError::new(format!("a time is out of range: {e}")))?;
    let base = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    Ok(if micro { format!("{base}.{:06}Z", ts.subsec_nanosecond() / 1000) } else { format!("{base}Z") })
}

/// A duration in nanoseconds as Go prints it: `1h2m3.5s`, `1.5s`, `250ms`, `0s`.
pub fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let frac = |value: u64, unit: u64| {
        let (whole, rest) = (value / unit, value % unit);
        let digits = unit.to_string().len() - 1;
        let f = format!("{rest:0digits$}");
        let f = f.trim_end_matches('0');
        if f.is_empty() { whole.to_string() } else { format!("{whole}.{f}") }
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", frac(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", frac(n, 1_000_000));
    }
    let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, s) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let secs = format!("{}s", frac(s, 1_000_000_000));
    match (h, m) {
        (0, 0) => format!("{sign}{secs}"),
        (0, m) => format!("{sign}{m}m{secs}"),
        (h, m) => format!("{sign}{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_kubernetes_writes_them() {
        assert_eq!(rfc3339(1_714_557_600, 0, false).expect("in range"), "2024-05-01T10:00:00Z");
        assert_eq!(rfc3339(1_714_557_600, 123_456_789, false).expect("in range"), "2024-05-01T10:00:00Z");
        assert_eq!(rfc3339(1_714_557_600, 123_456_789, true).expect("in range"), "2024-05-01T10:00:00.123456Z");
        assert!(rfc3339(i64::MAX, 0, false).is_err());
    }

    #[test]
    fn durations_are_written_as_go_writes_them() {
        for (n, s) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (250_000_000, "250ms"),
            (1_500_000_000, "1.5s"),
            (60_000_000_000, "1m0s"),
            (3_723_500_000_000, "1h2m3.5s"),
            (-90_000_000_000, "-1m30s"),
        ] {
            assert_eq!(go_duration(n), s, "{n}");
        }
    }
}
