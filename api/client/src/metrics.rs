//! Prometheus exposition shared by every Skiff component: a `prometheus-client` registry rendered in the classic
//! text format (0.0.4), which Prometheus, `promtool check metrics` and people with `curl` all read.
//!
//! `prometheus-client` writes OpenMetrics, where a counter family `x` has samples `x_total` and the text ends with
//! `# EOF`. Read as the classic format (what `promtool check metrics` does), such a counter has no HELP or TYPE of its
//! own. [`to_text_format`] renames counter families to their sample name and drops what the classic format lacks.

use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `registry` in the classic text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
        out.clear();
    }
    to_text_format(&out)
}

/// Converts OpenMetrics text (as `prometheus-client` writes it) to the classic text format: counter families take
/// their samples' `_total` name in HELP and TYPE, `info` families become gauges named `_info`, `unknown` becomes
/// `untyped`, and `# UNIT`, `# EOF` and exemplars are dropped.
pub fn to_text_format(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut out = String::with_capacity(openmetrics.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // The TYPE line follows the HELP line (after an optional UNIT line).
            let ty = lines[i..].iter().take(2).find_map(|l| {
                l.strip_prefix("# TYPE ").and_then(|t| t.split_once(' ')).filter(|(n, _)| *n == name).map(|(_, t)| t)
            });
            let renamed = family_name(name, ty.unwrap_or(""));
            out.push_str(&format!("# HELP {renamed} {help}\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let classic = match ty {
                "counter" | "gauge" | "histogram" | "summary" => ty,
                "info" | "stateset" | "gaugehistogram" => "gauge",
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {classic}\n", family_name(name, ty)));
            continue;
        }
        // A sample, without its exemplar (` # {…} value`).
        let sample = line.split_once(" # ").map_or(line, |(s, _)| s);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

fn family_name(name: &str, ty: &str) -> String {
    match ty {
        "counter" if !name.ends_with("_total") => format!("{name}_total"),
        "info" if !name.ends_with("_info") => format!("{name}_info"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;

    #[test]
    fn counters_take_their_sample_name_and_eof_and_units_go() {
        let mut r = Registry::with_prefix("demo");
        let c = Family::<Vec<(String, String)>, Counter>::default();
        c.get_or_create(&vec![("host".into(), "a".into())]).inc_by(3);
        r.register("requests", "Requests served", c);
        let g = Gauge::<i64>::default();
        g.set(7);
        r.register("open", "Open connections", g);
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.5);
        r.register_with_unit("latency", "Latency", prometheus_client::registry::Unit::Seconds, h);
        let text = encode(&r);
        assert!(
            text.contains("# HELP demo_requests_total Requests served.\n# TYPE demo_requests_total counter\n"),
            "{text}"
        );
        assert!(text.contains("demo_requests_total{host=\"a\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE demo_open gauge\ndemo_open 7\n"), "{text}");
        assert!(text.contains("# TYPE demo_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("demo_latency_seconds_bucket{le=\"1.0\"} 1\n"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    }

    #[test]
    fn info_and_unknown_families_map_to_classic_types_and_exemplars_are_dropped() {
        let om = "# HELP build Build\n# TYPE build info\nbuild_info{v=\"1\"} 1\n# HELP x X\n# TYPE x unknown\nx 1\n# HELP c C\n# TYPE c counter\nc_total 2 # {trace=\"t\"} 1.0\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP build_info Build\n# TYPE build_info gauge\nbuild_info{v=\"1\"} 1\n# HELP x X\n# TYPE x untyped\nx 1\n# HELP c_total C\n# TYPE c_total counter\nc_total 2\n"
        );
    }
}
