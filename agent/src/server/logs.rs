//! `GET /containerLogs/{ns}/{pod}/{container}`: reading the CRI-format log files the shims write, with the
//! kubelet's options (`follow`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`, `previous`, `limitBytes`).
//! Parsing and selection are pure; following polls the file (and notices rotation) until the container stops.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

/// One log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// When the runtime read it.
    pub time: Timestamp,
    /// The text as written by the runtime (`2024-…Z`).
    pub time_text: String,
    /// The content (without the newline).
    pub content: String,
    /// Whether it ends a line (tag `F`) or is part of a longer one (`P`).
    pub full: bool,
}

/// Parses one record `<time> <stream> <F|P> <content>`.
pub fn parse_line(s: &str) -> Option<Line> {
    let mut it = s.splitn(4, ' ');
    let time_text = it.next()?;
    let _stream = it.next()?;
    let tag = it.next()?;
    let content = it.next().unwrap_or("");
    Some(Line {
        time: time_text.parse().ok()?,
        time_text: time_text.to_string(),
        content: content.to_string(),
        full: tag != "P",
    })
}

/// The query options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Keep streaming.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines at or after this time.
    pub since: Option<Timestamp>,
    /// Prefix each line with its time.
    pub timestamps: bool,
    /// The previous run's log.
    pub previous: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

impl Options {
    /// Reads the options from query pairs; `now` resolves `sinceSeconds`.
    pub fn from_query(pairs: &[(String, String)], now: Timestamp) -> Result<Self, String> {
        let mut o = Options::default();
        for (k, v) in pairs {
            let flag = || v == "true" || v == "1";
            match k.as_str() {
                "follow" => o.follow = flag(),
                "timestamps" => o.timestamps = flag(),
                "previous" => o.previous = flag(),
                "tailLines" => {
                    o.tail_lines =
                        Some(v.parse::<i64>().map_err(|_| format!("invalid tailLines {v:?}"))?.max(0) as usize)
                }
                "limitBytes" => {
                    o.limit_bytes = Some(v.parse::<usize>().map_err(|_| format!("invalid limitBytes {v:?}"))?)
                }
                "sinceSeconds" => {
                    let s: i64 = v.parse().map_err(|_| format!("invalid sinceSeconds {v:?}"))?;
                    o.since = now.checked_sub(jiff::SignedDuration::from_secs(s.max(0))).ok();
                }
                "sinceTime" => o.since = Some(v.parse().map_err(|_| format!("invalid sinceTime {v:?}"))?),
                _ => {}
            }
        }
        Ok(o)
    }
}

/// Renders records as the client sees them (partial records are joined with the next one).
pub fn render(lines: &[Line], opts: &Options) -> String {
    let mut out = String::new();
    let mut start_of_line = true;
    for l in lines {
        if opts.timestamps && start_of_line {
            out.push_str(&l.time_text);
            out.push(' ');
        }
        out.push_str(&l.content);
        if l.full {
            out.push('\n');
        }
        start_of_line = l.full;
    }
    out
}

/// Applies `since` and `tailLines` (counting whole lines) to the records.
pub fn select(lines: Vec<Line>, opts: &Options) -> Vec<Line> {
    let mut lines: Vec<Line> = match opts.since {
        Some(s) => lines.into_iter().filter(|l| l.time >= s).collect(),
        None => lines,
    };
    if let Some(n) = opts.tail_lines {
        let mut whole = 0;
        let mut cut = 0;
        for (i, l) in lines.iter().enumerate().rev() {
            if l.full {
                whole += 1;
                if whole > n {
                    cut = i + 1;
                    break;
                }
            }
        }
        if whole > n || n == 0 {
            lines.drain(..if n == 0 { lines.len() } else { cut });
        }
    }
    lines
}

/// Applies `limitBytes`.
pub fn limit(mut text: String, opts: &Options) -> String {
    if let Some(n) = opts.limit_bytes
        && text.len() > n
    {
        let mut cut = n;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Every record of a run's log: the rotated file first, then the current one.
pub fn read_all(path: &Path) -> Vec<Line> {
    let mut out = Vec::new();
    for p in [PathBuf::from(format!("{}.1", path.display())), path.to_path_buf()] {
        if let Ok(text) = std::fs::read_to_string(&p) {
            out.extend(text.lines().filter_map(parse_line));
        }
    }
    out
}

/// The last lines of a log as plain text (for `FallbackToLogsOnError` termination messages).
pub fn tail_text(path: &Path, lines: usize, max_bytes: usize) -> String {
    let opts = Options { tail_lines: Some(lines), ..Default::default() };
    let text = render(&select(read_all(path), &opts), &opts);
    let start = text.len().saturating_sub(max_bytes);
    let mut s = start;
    while !text.is_char_boundary(s) {
        s += 1;
    }
    text[s..].to_string()
}

/// Follows `path` from byte `offset`, sending rendered text to `tx` until `running()` turns false (and the file
/// has been read to its end), the receiver goes away, or `max` passes.
pub async fn follow(
    path: PathBuf,
    mut offset: u64,
    opts: Options,
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    running: impl Fn() -> bool + Send + 'static,
    max: Duration,
) {
    let deadline = tokio::time::Instant::now() + max;
    let mut pending = String::new();
    let mut sent = 0usize;
    let mut idle_after_stop = 0;
    while tokio::time::Instant::now() < deadline {
        let chunk = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, u64)> {
                let mut f = std::fs::File::open(&path)?;
                let len = f.metadata()?.len();
                let start = if len < offset { 0 } else { offset };
                f.seek(SeekFrom::Start(start))?;
                let mut buf = Vec::new();
                f.take(1 << 20).read_to_end(&mut buf)?;
                Ok((buf, start))
            })
            .await
        };
        let (data, start) = match chunk {
            Ok(Ok(x)) => x,
            _ => (Vec::new(), offset),
        };
        if !data.is_empty() {
            offset = start + data.len() as u64;
            pending.push_str(&String::from_utf8_lossy(&data));
            let mut records = Vec::new();
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                if let Some(l) = parse_line(line.trim_end_matches('\n')) {
                    records.push(l);
                }
            }
            let records = match opts.since {
                Some(s) => records.into_iter().filter(|l| l.time >= s).collect(),
                None => records,
            };
            let mut text = render(&records, &opts);
            if let Some(n) = opts.limit_bytes {
                let left = n.saturating_sub(sent);
                text = limit(text, &Options { limit_bytes: Some(left), ..Default::default() });
            }
            sent += text.len();
            if !text.is_empty() && tx.send(Ok(bytes::Bytes::from(text))).await.is_err() {
                return;
            }
            if opts.limit_bytes.is_some_and(|n| sent >= n) {
                return;
            }
            continue;
        }
        if !running() {
            idle_after_stop += 1;
            if idle_after_stop > 3 {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Line> {
        text.lines().filter_map(parse_line).collect()
    }

    const LOG: &str = "2026-01-01T00:00:01.000000000Z stdout F one\n2026-01-01T00:00:02.000000000Z stderr F two\n2026-01-01T00:00:03.000000000Z stdout P thr\n2026-01-01T00:00:03.500000000Z stdout F ee\n2026-01-01T00:00:04.000000000Z stdout F four\n";

    #[test]
    fn records_render_as_the_container_wrote_them() {
        assert_eq!(render(&lines(LOG), &Options::default()), "one\ntwo\nthree\nfour\n");
        let ts = render(&lines(LOG), &Options { timestamps: true, ..Default::default() });
        assert!(ts.starts_with("2026-01-01T00:00:01.000000000Z one\n"), "{ts}");
        assert!(ts.contains("2026-01-01T00:00:03.000000000Z three\n"), "{ts}");
    }

    #[test]
    fn tail_counts_whole_lines_and_since_filters_by_time() {
        let o = Options { tail_lines: Some(2), ..Default::default() };
        assert_eq!(render(&select(lines(LOG), &o), &o), "three\nfour\n");
        let o = Options { tail_lines: Some(0), ..Default::default() };
        assert_eq!(render(&select(lines(LOG), &o), &o), "");
        let o = Options { since: Some("2026-01-01T00:00:02Z".parse().expect("ts")), ..Default::default() };
        assert_eq!(render(&select(lines(LOG), &o), &o), "two\nthree\nfour\n");
        assert_eq!(limit("hello".into(), &Options { limit_bytes: Some(3), ..Default::default() }), "hel");
    }

    #[test]
    fn query_options_are_parsed_with_errors_for_bad_numbers() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("ts");
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        let o = Options::from_query(
            &q(&[("follow", "true"), ("tailLines", "5"), ("sinceSeconds", "30"), ("previous", "true")]),
            now,
        )
        .expect("ok");
        assert!(o.follow && o.previous);
        assert_eq!(o.tail_lines, Some(5));
        assert_eq!(o.since, Some("2026-01-01T00:00:30Z".parse().expect("ts")));
        assert!(Options::from_query(&q(&[("tailLines", "x")]), now).is_err());
    }
}
