//! The ingress-nginx annotations Skiff honours, parsed into plain data.
//!
//! Every `nginx.ingress.kubernetes.io/*` key is either understood here or reported as unsupported (once, not
//! fatal). A value that does not parse is reported and the default is used instead, so one typo never takes a
//! route down. Names and defaults follow the ingress-nginx documentation.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::table::Balance;

/// The annotation prefix ingress-nginx uses.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Defaults that the controller's configuration may change (ingress-nginx's ConfigMap equivalents).
#[derive(Debug, Clone)]
pub struct Defaults {
    /// `proxy-body-size` (ingress-nginx default 1m); `None` is unlimited.
    pub max_body_bytes: Option<u64>,
    /// `proxy-connect-timeout` (5 s).
    pub connect_timeout: Duration,
    /// `proxy-read-timeout` (60 s).
    pub read_timeout: Duration,
    /// `proxy-send-timeout` (60 s).
    pub send_timeout: Duration,
    /// `ssl-redirect` (true).
    pub ssl_redirect: bool,
    /// `load-balance` (round robin).
    pub balance: Balance,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            max_body_bytes: Some(1 << 20),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            ssl_redirect: true,
            balance: Balance::RoundRobin,
        }
    }
}

/// `backend-protocol`: how the ingress speaks to the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendProtocol {
    /// HTTP/1.1 over TCP.
    Http,
    /// HTTP/1.1 or HTTP/2 over TLS (certificate not verified, as in ingress-nginx).
    Https,
    /// gRPC: HTTP/2 over cleartext TCP (prior knowledge).
    Grpc,
    /// gRPC over TLS.
    Grpcs,
}

/// A `permanent-redirect` / `temporal-redirect` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Absolute URL to send clients to.
    pub url: String,
    /// 301/308 for permanent, 302/307 for temporal.
    pub code: u16,
}

/// `affinity: cookie` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    /// `session-cookie-name` (INGRESSCOOKIE).
    pub name: String,
    /// `session-cookie-path` (the rule path when unset; `/` here).
    pub path: String,
    /// `session-cookie-max-age` in seconds (a session cookie when unset).
    pub max_age: Option<u64>,
}

/// `canary*` annotations of a canary Ingress.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CanarySpec {
    /// `canary-weight` (0 when unset).
    pub weight: u32,
    /// `canary-weight-total` (100).
    pub weight_total: u32,
    /// `canary-by-header`: `always` sends to the canary, `never` never does.
    pub header: Option<String>,
    /// `canary-by-header-value`: send to the canary when the header has exactly this value.
    pub header_value: Option<String>,
    /// `canary-by-cookie`: `always` / `never` as for the header.
    pub cookie: Option<String>,
}

/// Everything the annotations of one Ingress ask for.
#[derive(Debug, Clone)]
pub struct Annotations {
    /// Redirect HTTP to HTTPS when the host has TLS.
    pub ssl_redirect: bool,
    /// Redirect HTTP to HTTPS even without TLS for the host.
    pub force_ssl_redirect: bool,
    /// How to speak to the pods.
    pub protocol: BackendProtocol,
    /// Largest request body; `None` is unlimited.
    pub max_body_bytes: Option<u64>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream read (idle) timeout.
    pub read_timeout: Duration,
    /// Upstream write (idle) timeout.
    pub send_timeout: Duration,
    /// `rewrite-target` with `$1`-style capture references.
    pub rewrite_target: Option<String>,
    /// Paths are regular expressions (`use-regex`, implied by `rewrite-target`).
    pub use_regex: bool,
    /// Cookie session affinity.
    pub affinity: Option<Affinity>,
    /// `limit-rps` per client IP.
    pub limit_rps: Option<u32>,
    /// `limit-connections` per client IP.
    pub limit_connections: Option<u32>,
    /// `whitelist-source-range` / `allowlist-source-range`: `None` allows everyone, `Some` only clients in these
    /// networks; an annotation with an entry that is not a CIDR gives `Some(vec![])`, which denies every client
    /// (fail closed, as ingress-nginx denies a location whose annotation does not parse).
    pub allow: Option<Vec<ipnet::IpNet>>,
    /// Redirect everything to another URL.
    pub redirect: Option<Redirect>,
    /// `app-root`: redirect `/` here.
    pub app_root: Option<String>,
    /// `custom-headers`: `namespace/name` of a ConfigMap whose entries are added to responses.
    pub custom_headers: Option<String>,
    /// `upstream-vhost`: the Host header sent to the pods.
    pub upstream_vhost: Option<String>,
    /// `load-balance`.
    pub balance: Balance,
    /// Present when `canary: "true"`.
    pub canary: Option<CanarySpec>,
}

/// What was wrong with one annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationProblem {
    /// The full annotation key.
    pub key: String,
    /// Why it was ignored.
    pub message: String,
}

/// Parses the annotations of one Ingress. Problems are returned, never fatal.
pub fn parse(annotations: &BTreeMap<String, String>, d: &Defaults) -> (Annotations, Vec<AnnotationProblem>) {
    let mut problems = Vec::new();
    let get = |k: &str| annotations.get(&format!("{PREFIX}{k}")).map(|v| v.trim().to_owned());
    let mut bad = |k: &str, message: String| problems.push(AnnotationProblem { key: format!("{PREFIX}{k}"), message });
    macro_rules! parsed {
        ($key:expr, $f:expr, $default:expr) => {
            match get($key) {
                None => $default,
                Some(v) => match $f(&v) {
                    Some(x) => x,
                    None => {
                        bad($key, format!("invalid value {v:?}; using the default"));
                        $default
                    }
                },
            }
        };
    }
    let boolean = |v: &str| match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    let seconds = |v: &str| v.trim_end_matches('s').parse::<u64>().ok().filter(|s| *s > 0).map(Duration::from_secs);
    let count = |v: &str| v.parse::<u32>().ok().filter(|n| *n > 0).map(Some);

    let rewrite_target = get("rewrite-target").filter(|v| !v.is_empty());
    let protocol = parsed!(
        "backend-protocol",
        |v: &str| match v.to_ascii_uppercase().as_str() {
            "HTTP" => Some(BackendProtocol::Http),
            "HTTPS" => Some(BackendProtocol::Https),
            "GRPC" => Some(BackendProtocol::Grpc),
            "GRPCS" => Some(BackendProtocol::Grpcs),
            _ => None,
        },
        BackendProtocol::Http
    );
    let affinity = match get("affinity").as_deref() {
        None | Some("") => None,
        Some("cookie") => Some(Affinity {
            name: get("session-cookie-name").filter(|v| !v.is_empty()).unwrap_or_else(|| "INGRESSCOOKIE".into()),
            path: get("session-cookie-path").filter(|v| v.starts_with('/')).unwrap_or_else(|| "/".into()),
            max_age: parsed!("session-cookie-max-age", |v: &str| v.parse::<u64>().ok().map(Some), None),
        }),
        Some(other) => {
            bad("affinity", format!("only \"cookie\" affinity is supported, not {other:?}"));
            None
        }
    };
    let mut allow: Option<Vec<ipnet::IpNet>> = None;
    let mut allow_invalid = false;
    for key in ["whitelist-source-range", "allowlist-source-range"] {
        let Some(value) = get(key).filter(|v| !v.trim().is_empty()) else { continue };
        let list = allow.get_or_insert_with(Vec::new);
        let entries: Vec<&str> = value.split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
        if entries.is_empty() {
            allow_invalid = true;
            bad(key, format!("no CIDR in {value:?}: the route denies every client until it is fixed"));
        }
        for cidr in entries {
            match parse_cidr(cidr) {
                Some(net) => list.push(net),
                None => {
                    allow_invalid = true;
                    bad(key, format!("invalid CIDR {cidr:?}: the route denies every client until it is fixed"));
                }
            }
        }
    }
    if allow_invalid {
        allow = Some(Vec::new());
    }
    let redirect = match (get("permanent-redirect"), get("temporal-redirect")) {
        (Some(url), _) if !url.is_empty() => {
            let code =
                parsed!("permanent-redirect-code", |v: &str| v.parse().ok().filter(|c| matches!(c, 301 | 308)), 301);
            Some(Redirect { url, code })
        }
        (_, Some(url)) if !url.is_empty() => {
            let code =
                parsed!("temporal-redirect-code", |v: &str| v.parse().ok().filter(|c| matches!(c, 302 | 307)), 302);
            Some(Redirect { url, code })
        }
        _ => None,
    };
    let canary = match get("canary").as_deref() {
        Some("true") => Some(CanarySpec {
            weight: parsed!("canary-weight", |v: &str| v.parse::<u32>().ok(), 0),
            weight_total: parsed!("canary-weight-total", |v: &str| v.parse::<u32>().ok().filter(|t| *t > 0), 100),
            header: get("canary-by-header").filter(|v| !v.is_empty()),
            header_value: get("canary-by-header-value").filter(|v| !v.is_empty()),
            cookie: get("canary-by-cookie").filter(|v| !v.is_empty()),
        }),
        _ => None,
    };
    let out = Annotations {
        ssl_redirect: parsed!("ssl-redirect", boolean, d.ssl_redirect),
        force_ssl_redirect: parsed!("force-ssl-redirect", boolean, false),
        protocol,
        max_body_bytes: parsed!("proxy-body-size", parse_size, d.max_body_bytes),
        connect_timeout: parsed!("proxy-connect-timeout", seconds, d.connect_timeout),
        read_timeout: parsed!("proxy-read-timeout", seconds, d.read_timeout),
        send_timeout: parsed!("proxy-send-timeout", seconds, d.send_timeout),
        use_regex: rewrite_target.is_some() || parsed!("use-regex", boolean, false),
        rewrite_target,
        affinity,
        limit_rps: parsed!("limit-rps", count, None),
        limit_connections: parsed!("limit-connections", count, None),
        allow,
        redirect,
        app_root: parsed!("app-root", |v: &str| v.starts_with('/').then(|| Some(v.to_owned())), None),
        custom_headers: parsed!("custom-headers", |v: &str| (!v.is_empty()).then(|| Some(v.to_owned())), None),
        upstream_vhost: get("upstream-vhost").filter(|v| !v.is_empty()),
        balance: parsed!(
            "load-balance",
            |v: &str| match v {
                "round_robin" => Some(Balance::RoundRobin),
                "ewma" => Some(Balance::PeakEwma),
                _ => None,
            },
            d.balance
        ),
        canary,
    };
    for key in annotations.keys() {
        if let Some(name) = key.strip_prefix(PREFIX)
            && !KNOWN.contains(&name)
        {
            bad(name, "unsupported annotation ignored".into());
        }
    }
    (out, problems)
}

/// Every ingress-nginx annotation (without the prefix) that [`parse`] reads.
const KNOWN: &[&str] = &[
    "ssl-redirect",
    "force-ssl-redirect",
    "backend-protocol",
    "proxy-body-size",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "rewrite-target",
    "use-regex",
    "affinity",
    "session-cookie-name",
    "session-cookie-path",
    "session-cookie-max-age",
    "limit-rps",
    "limit-connections",
    "whitelist-source-range",
    "allowlist-source-range",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "temporal-redirect-code",
    "app-root",
    "custom-headers",
    "upstream-vhost",
    "load-balance",
    "canary",
    "canary-weight",
    "canary-weight-total",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-cookie",
];

/// nginx sizes: `1024`, `8k`, `8m`, `1g` (either case); `0` is unlimited.
pub fn parse_size(v: &str) -> Option<Option<u64>> {
    let (digits, unit) = match v.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&v[..i], c.to_ascii_lowercase()),
        _ => (v, 'b'),
    };
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    Some((n != 0).then(|| n.saturating_mul(mult)))
}

/// A CIDR, or a bare address meaning a /32 or /128.
fn parse_cidr(v: &str) -> Option<ipnet::IpNet> {
    v.parse::<ipnet::IpNet>().ok().or_else(|| v.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string())).collect()
    }

    #[test]
    fn no_annotations_give_the_ingress_nginx_defaults() {
        let (a, problems) = parse(&BTreeMap::new(), &Defaults::default());
        assert!(problems.is_empty());
        assert!(a.ssl_redirect && !a.force_ssl_redirect && !a.use_regex);
        assert_eq!(a.max_body_bytes, Some(1 << 20));
        assert_eq!((a.connect_timeout.as_secs(), a.read_timeout.as_secs()), (5, 60));
        assert_eq!(a.protocol, BackendProtocol::Http);
        assert!(a.canary.is_none() && a.redirect.is_none() && a.allow.is_none());
    }

    #[test]
    fn every_supported_annotation_is_read() {
        let (a, problems) = parse(
            &ann(&[
                ("ssl-redirect", "false"),
                ("force-ssl-redirect", "true"),
                ("backend-protocol", "GRPC"),
                ("proxy-body-size", "8m"),
                ("proxy-connect-timeout", "2"),
                ("proxy-read-timeout", "120"),
                ("proxy-send-timeout", "30s"),
                ("rewrite-target", "/$2"),
                ("affinity", "cookie"),
                ("session-cookie-name", "route"),
                ("session-cookie-max-age", "3600"),
                ("limit-rps", "10"),
                ("limit-connections", "3"),
                ("whitelist-source-range", "10.0.0.0/8, 192.168.1.1"),
                ("temporal-redirect", "https://example.org/"),
                ("app-root", "/app"),
                ("custom-headers", "default/headers"),
                ("upstream-vhost", "internal.local"),
                ("load-balance", "ewma"),
            ]),
            &Defaults::default(),
        );
        assert_eq!(problems, vec![]);
        assert!(!a.ssl_redirect && a.force_ssl_redirect && a.use_regex, "rewrite-target implies use-regex");
        assert_eq!(a.protocol, BackendProtocol::Grpc);
        assert_eq!(a.max_body_bytes, Some(8 << 20));
        assert_eq!((a.connect_timeout.as_secs(), a.read_timeout.as_secs(), a.send_timeout.as_secs()), (2, 120, 30));
        assert_eq!(a.rewrite_target.as_deref(), Some("/$2"));
        assert_eq!(a.affinity, Some(Affinity { name: "route".into(), path: "/".into(), max_age: Some(3600) }));
        assert_eq!((a.limit_rps, a.limit_connections), (Some(10), Some(3)));
        assert_eq!(a.allow.as_ref().map(Vec::len), Some(2));
        assert_eq!(a.redirect, Some(Redirect { url: "https://example.org/".into(), code: 302 }));
        assert_eq!(a.app_root.as_deref(), Some("/app"));
        assert_eq!(a.custom_headers.as_deref(), Some("default/headers"));
        assert_eq!(a.upstream_vhost.as_deref(), Some("internal.local"));
        assert_eq!(a.balance, Balance::PeakEwma);
    }

    #[test]
    fn canary_annotations_are_read_only_when_canary_is_true() {
        let (a, _) = parse(&ann(&[("canary-weight", "30")]), &Defaults::default());
        assert!(a.canary.is_none());
        let (a, _) = parse(
            &ann(&[
                ("canary", "true"),
                ("canary-weight", "30"),
                ("canary-by-header", "X-Canary"),
                ("canary-by-cookie", "c"),
            ]),
            &Defaults::default(),
        );
        let c = a.canary.expect("canary");
        assert_eq!((c.weight, c.weight_total), (30, 100));
        assert_eq!((c.header.as_deref(), c.cookie.as_deref()), (Some("X-Canary"), Some("c")));
    }

    #[test]
    fn an_allowlist_that_does_not_parse_denies_everyone() {
        for value in ["10.0.0.0/33", "10.0.0.0/8, nonsense", " , ", "10.0.0.0/8,,300.1.1.1"] {
            let (a, problems) = parse(&ann(&[("whitelist-source-range", value)]), &Defaults::default());
            assert_eq!(a.allow, Some(Vec::new()), "{value:?} must deny every client");
            assert!(problems.iter().any(|p| p.message.contains("denies every client")), "{value:?}: {problems:?}");
        }
        let (a, problems) =
            parse(&ann(&[("allowlist-source-range", " 10.0.0.0/8 ,192.168.1.1 ")]), &Defaults::default());
        assert_eq!(a.allow.as_ref().map(Vec::len), Some(2));
        assert!(problems.is_empty(), "{problems:?}");
        let (a, _) = parse(&ann(&[("whitelist-source-range", "")]), &Defaults::default());
        assert_eq!(a.allow, None, "an empty annotation restricts nothing");
    }

    #[test]
    fn bad_values_and_unknown_keys_are_reported_and_defaults_kept() {
        let (a, problems) = parse(
            &ann(&[("proxy-body-size", "lots"), ("configuration-snippet", "more_set_headers x"), ("affinity", "ip")]),
            &Defaults::default(),
        );
        assert_eq!(a.max_body_bytes, Some(1 << 20));
        assert!(a.affinity.is_none());
        let keys: Vec<_> = problems.iter().map(|p| p.key.trim_start_matches(PREFIX)).collect();
        assert_eq!(keys, ["affinity", "proxy-body-size", "configuration-snippet"]);
        assert!(problems[2].message.contains("unsupported"));
    }

    #[test]
    fn sizes_follow_nginx_units_and_zero_is_unlimited() {
        assert_eq!(parse_size("1024"), Some(Some(1024)));
        assert_eq!(parse_size("8k"), Some(Some(8192)));
        assert_eq!(parse_size("1G"), Some(Some(1 << 30)));
        assert_eq!(parse_size("0"), Some(None));
        assert_eq!(parse_size("8x"), None);
        assert_eq!(parse_size(""), None);
    }
}
