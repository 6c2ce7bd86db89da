//! Annotations into a [`Policy`]: limiters linked to the shared state, custom headers read from their ConfigMap.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::annotations::Annotations;
use crate::table::{Policy, State};

/// ConfigMaps by `(namespace, name)`.
pub type ConfigMaps<'a> = HashMap<(&'a str, &'a str), &'a ConfigMap>;

/// Response headers only the proxy writes (framing and hop-by-hop): a route setting them would contradict the body
/// it sends.
const FRAMING: [&str; 8] =
    ["connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Builds the policy of an Ingress (`namespace/name` in `ingress`); problems come back as `(reason, message)`.
pub fn build(
    a: &Annotations,
    ingress: &str,
    namespace: &str,
    config_maps: &ConfigMaps<'_>,
    state: &State,
    problems: &mut Vec<(&'static str, String)>,
) -> Policy {
    let mut response_headers = Vec::new();
    if let Some(reference) = &a.custom_headers {
        let (ns, name) = reference.split_once('/').unwrap_or((namespace, reference.as_str()));
        match config_maps.get(&(ns, name)) {
            None => problems.push(("MissingConfigMap", format!("custom-headers ConfigMap \"{ns}/{name}\" not found"))),
            Some(cm) => {
                for (k, v) in cm.data.iter().flatten() {
                    match (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v)) {
                        (Ok(n), _) if FRAMING.contains(&n.as_str()) => problems.push((
                            "InvalidAnnotation",
                            format!(
                                "custom-headers ConfigMap \"{ns}/{name}\": {k:?} frames the response or the \
                                 connection and is set by the proxy only; it is ignored"
                            ),
                        )),
                        (Ok(_), Ok(v)) => response_headers.push((k.as_str().into(), v)),
                        _ => problems.push((
                            "InvalidAnnotation",
                            format!("custom-headers ConfigMap \"{ns}/{name}\": header {k:?} is not a valid header"),
                        )),
                    }
                }
            }
        }
    }
    let upstream_vhost = a.upstream_vhost.as_deref().and_then(|v| match http::HeaderValue::from_str(v) {
        Ok(v) => Some(v),
        Err(_) => {
            problems.push(("InvalidAnnotation", format!("upstream-vhost {v:?} is not a valid Host header")));
            None
        }
    });
    Policy {
        ssl_redirect: a.ssl_redirect,
        force_ssl_redirect: a.force_ssl_redirect,
        protocol: a.protocol,
        max_body_bytes: a.max_body_bytes,
        connect_timeout: a.connect_timeout,
        read_timeout: a.read_timeout,
        send_timeout: a.send_timeout,
        affinity: a.affinity.clone(),
        rate: a.limit_rps.map(|rps| state.rate_limiter(ingress, rps)),
        conns: a.limit_connections.map(|max| state.conn_limiter(ingress, max)),
        allow: a.allow.clone(),
        redirect: a.redirect.clone(),
        app_root: a.app_root.as_deref().map(Into::into),
        response_headers,
        upstream_vhost,
    }
}

/// Expands nginx-style `$1` … `$9` (and `${10}`) references in a rewrite target from regex captures.
pub fn expand(target: &str, caps: &regex::Captures<'_>) -> String {
    let mut out = String::with_capacity(target.len() + 16);
    let bytes = target.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let (num, len) = if bytes.get(i + 1) == Some(&b'{') {
                match target[i + 2..].find('}') {
                    Some(end) => (target[i + 2..i + 2 + end].parse::<usize>().ok(), end + 3),
                    None => (None, 1),
                }
            } else {
                match bytes.get(i + 1) {
                    Some(d) if d.is_ascii_digit() => (Some(usize::from(d - b'0')), 2),
                    _ => (None, 1),
                }
            };
            if let Some(n) = num {
                out.push_str(caps.get(n).map_or("", |m| m.as_str()));
                i += len;
                continue;
            }
        }
        let ch = target[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The rewritten path for `path` (no query) under a `rewrite-target`, or `None` when the regex does not match.
pub fn rewrite(re: &regex::Regex, target: &str, path: &str) -> Option<String> {
    re.captures(path).map(|caps| expand(target, &caps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_groups_are_substituted_like_nginx() {
        let re = regex::Regex::new("(?i)^/something(/|$)(.*)").expect("regex");
        assert_eq!(rewrite(&re, "/$2", "/something").as_deref(), Some("/"));
        assert_eq!(rewrite(&re, "/$2", "/something/").as_deref(), Some("/"));
        assert_eq!(rewrite(&re, "/$2", "/something/new").as_deref(), Some("/new"));
        assert_eq!(rewrite(&re, "/v2/${2}x", "/something/a").as_deref(), Some("/v2/ax"));
        assert_eq!(rewrite(&re, "/$2", "/other"), None);
    }

    #[test]
    fn a_target_without_captures_replaces_the_whole_path() {
        let re = regex::Regex::new("(?i)^/api").expect("regex");
        assert_eq!(rewrite(&re, "/", "/api/users").as_deref(), Some("/"));
        assert_eq!(rewrite(&re, "/$", "/api").as_deref(), Some("/$"));
    }
}
