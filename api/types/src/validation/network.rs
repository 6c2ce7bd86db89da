//! Validation of Services, Ingresses, IngressClasses and EndpointSlices.

use std::collections::HashSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ErrorList;
use super::common::{NameRule, is_dns1123_subdomain, is_iana_svc_name, validate_labels, validate_object_meta};
use super::pod::check_enum;

/// The NodePort range, inclusive.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<i32> = 30000..=32767;

/// Validates a Service.
pub fn validate_service(s: &Service, errs: &mut ErrorList) {
    validate_object_meta(&s.metadata, true, NameRule::Dns1035Label, errs);
    let Some(spec) = &s.spec else { return errs.required("spec", "") };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    check_enum(ty, &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"], "spec.type", errs);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !headless && ty != "ExternalName" {
        errs.required("spec.ports", "");
    }
    if ty == "ExternalName" {
        match spec.external_name.as_deref() {
            None | Some("") => errs.required("spec.externalName", ""),
            Some(n) if !is_dns1123_subdomain(n.trim_end_matches('.')) => {
                errs.invalid("spec.externalName", n, "must be a valid DNS name")
            }
            _ => {}
        }
    }
    if let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "None")
        && ip.parse::<IpAddr>().is_err()
    {
        errs.invalid("spec.clusterIP", ip, "must be empty, 'None', or a valid IP address");
    }
    if headless && matches!(ty, "NodePort" | "LoadBalancer") {
        errs.invalid("spec.clusterIP", "None", format!("may not be set to 'None' for {ty} services"));
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        match p.name.as_deref() {
            None | Some("") if ports.len() > 1 => errs.required(format!("{pp}.name"), ""),
            Some(n) if !n.is_empty() => {
                if !super::common::is_dns1123_label(n) {
                    errs.invalid(format!("{pp}.name"), n, "must be a DNS label");
                } else if !names.insert(n.to_string()) {
                    errs.duplicate(format!("{pp}.name"), n);
                }
            }
            _ => {}
        }
        if !(1..=65535).contains(&p.port) {
            errs.invalid(format!("{pp}.port"), p.port, "must be between 1 and 65535, inclusive");
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        check_enum(proto, &["TCP", "UDP", "SCTP"], &format!("{pp}.protocol"), errs);
        if !seen.insert((p.port, proto.to_string())) {
            errs.duplicate(pp.clone(), format!("{{{}, {proto}}}", p.port));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => {
                errs.invalid(format!("{pp}.targetPort"), t, "must be between 1 and 65535, inclusive");
            }
            Some(IntOrString::String(t)) if !is_iana_svc_name(t) => {
                errs.invalid(
                    format!("{pp}.targetPort"),
                    t,
                    "must contain only lowercase alphanumerics and '-', at most 15 characters",
                );
            }
            _ => {}
        }
        if let Some(np) = p.node_port.filter(|np| *np != 0) {
            if !matches!(ty, "NodePort" | "LoadBalancer") {
                errs.forbidden(format!("{pp}.nodePort"), "may not be used when `type` is 'ClusterIP'");
            } else if !NODE_PORT_RANGE.contains(&np) {
                errs.invalid(
                    format!("{pp}.nodePort"),
                    np,
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                );
            }
        }
    }
    if let Some(a) = &spec.session_affinity {
        check_enum(a, &["None", "ClientIP"], "spec.sessionAffinity", errs);
    }
    if let Some(t) =
        spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds)
        && !(1..=86400).contains(&t)
    {
        errs.invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            t,
            "must be greater than 0 and less than 86400",
        );
    }
    if let Some(p) = &spec.external_traffic_policy {
        check_enum(p, &["Cluster", "Local"], "spec.externalTrafficPolicy", errs);
        if !matches!(ty, "NodePort" | "LoadBalancer") {
            errs.invalid(
                "spec.externalTrafficPolicy",
                p,
                "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
            );
        }
    }
    if let Some(p) = &spec.internal_traffic_policy {
        check_enum(p, &["Cluster", "Local"], "spec.internalTrafficPolicy", errs);
    }
    if let Some(sel) = &spec.selector {
        validate_labels(sel, "spec.selector", errs);
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            errs.invalid(format!("spec.externalIPs[{i}]"), ip, "must be a valid IP address");
        }
    }
}

fn validate_backend(b: &IngressBackend, path: &str, errs: &mut ErrorList) {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => errs.invalid(path, "", "cannot set both service and resource backends"),
        (None, None) => errs.invalid(path, "", "one backend (service or resource) must be specified"),
        (Some(s), None) => {
            if s.name.is_empty() {
                errs.required(format!("{path}.service.name"), "");
            }
            match &s.port {
                None => errs.required(format!("{path}.service.port"), "port name or number is required"),
                Some(p) => match (&p.name, p.number) {
                    (Some(_), Some(_)) => {
                        errs.invalid(format!("{path}.service.port"), "", "cannot set both port name & port number")
                    }
                    (None, None) => errs.invalid(format!("{path}.service.port"), "", "port name or number is required"),
                    (None, Some(n)) if !(1..=65535).contains(&n) => {
                        errs.invalid(format!("{path}.service.port.number"), n, "must be between 1 and 65535, inclusive")
                    }
                    _ => {}
                },
            }
        }
        (None, Some(r)) => {
            if r.kind.is_empty() || r.name.is_empty() {
                errs.required(format!("{path}.resource"), "kind and name are required");
            }
        }
    }
}

/// Whether `host` is a valid Ingress host: a DNS subdomain, or `*.` followed by one.
pub fn is_ingress_host(host: &str) -> bool {
    match host.strip_prefix("*.") {
        Some(rest) => is_dns1123_subdomain(rest),
        None => is_dns1123_subdomain(host),
    }
}

/// Validates an Ingress.
pub fn validate_ingress(ing: &Ingress, errs: &mut ErrorList) {
    validate_object_meta(&ing.metadata, true, NameRule::Dns1123Subdomain, errs);
    let Some(spec) = &ing.spec else { return errs.required("spec", "") };
    if let Some(b) = &spec.default_backend {
        validate_backend(b, "spec.defaultBackend", errs);
    }
    if spec.default_backend.is_none() && spec.rules.as_ref().is_none_or(Vec::is_empty) {
        errs.invalid("spec.rules", "[]", "either `defaultBackend` or `rules` must be specified");
    }
    for (i, r) in spec.rules.iter().flatten().enumerate() {
        let rp = format!("spec.rules[{i}]");
        if let Some(h) = r.host.as_deref().filter(|h| !h.is_empty()) {
            if h.parse::<IpAddr>().is_ok() {
                errs.invalid(format!("{rp}.host"), h, "must be a DNS name, not an IP address");
            } else if !is_ingress_host(h) {
                errs.invalid(
                    format!("{rp}.host"),
                    h,
                    "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain",
                );
            }
        }
        let Some(http) = &r.http else { continue };
        if http.paths.is_empty() {
            errs.required(format!("{rp}.http.paths"), "");
        }
        for (j, p) in http.paths.iter().enumerate() {
            let pp = format!("{rp}.http.paths[{j}]");
            check_enum(&p.path_type, &["Exact", "Prefix", "ImplementationSpecific"], &format!("{pp}.pathType"), errs);
            let path = p.path.as_deref().unwrap_or_default();
            if matches!(p.path_type.as_str(), "Exact" | "Prefix") {
                if !path.starts_with('/') {
                    errs.invalid(format!("{pp}.path"), path, "must be an absolute path");
                } else if path.contains("//") || path.split('/').any(|s| s == ".." || s == ".") {
                    errs.invalid(format!("{pp}.path"), path, "must not contain '//', '/./' or '/../'");
                }
            } else if !path.is_empty() && !path.starts_with('/') {
                errs.invalid(format!("{pp}.path"), path, "must be an absolute path");
            }
            validate_backend(&p.backend, &format!("{pp}.backend"), errs);
        }
    }
    for (i, t) in spec.tls.iter().flatten().enumerate() {
        for (j, h) in t.hosts.iter().flatten().enumerate() {
            if !is_ingress_host(h) {
                errs.invalid(format!("spec.tls[{i}].hosts[{j}]"), h, "must be a DNS name");
            }
        }
    }
}

/// Validates an IngressClass.
pub fn validate_ingress_class(c: &IngressClass, errs: &mut ErrorList) {
    validate_object_meta(&c.metadata, false, NameRule::Dns1123Subdomain, errs);
    match c.spec.as_ref().and_then(|s| s.controller.as_deref()) {
        None | Some("") => errs.required("spec.controller", ""),
        Some(ctrl) if ctrl.len() > 250 || !ctrl.contains('/') => {
            errs.invalid("spec.controller", ctrl, "must be a domain-prefixed path (such as \"acme.io/foo\")");
        }
        _ => {}
    }
}

/// Validates an EndpointSlice.
pub fn validate_endpoint_slice(s: &EndpointSlice, errs: &mut ErrorList) {
    validate_object_meta(&s.metadata, true, NameRule::Dns1123Subdomain, errs);
    check_enum(&s.address_type, &["IPv4", "IPv6", "FQDN"], "addressType", errs);
    for (i, e) in s.endpoints.iter().enumerate() {
        if e.addresses.is_empty() {
            errs.required(format!("endpoints[{i}].addresses"), "must contain at least 1 address");
        }
        for (j, a) in e.addresses.iter().enumerate() {
            let ok = match s.address_type.as_str() {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => is_dns1123_subdomain(a),
            };
            if !ok {
                errs.invalid(
                    format!("endpoints[{i}].addresses[{j}]"),
                    a,
                    format!("must be a valid {} address", s.address_type),
                );
            }
        }
    }
    if s.endpoints.len() > 1000 {
        errs.push("endpoints", super::ErrorKind::TooLong, None, "must have at most 1000 items");
    }
}
