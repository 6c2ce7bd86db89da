//! Services, endpoints and ingress.

use serde_json::{Value, json};

use super::{Cells, i, s};
use crate::apiserver::table::{AGE, Column, NAME, age, col, name, wide};

fn ports_of(svc: &Value) -> String {
    let ports = svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    if ports.is_empty() {
        return "<none>".into();
    }
    ports
        .iter()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{}:{np}/{proto}", i(p, "/port")),
                None => format!("{}/{proto}", i(p, "/port")),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn external_ip(svc: &Value) -> String {
    let ty = s(svc, "/spec/type");
    let mut ips: Vec<String> = svc
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    match ty {
        "ExternalName" => s(svc, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            let lb: Vec<String> = svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.get("ip").or(v.get("hostname")).and_then(Value::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            ips.extend(lb);
            if ips.is_empty() { "<pending>".into() } else { ips.join(",") }
        }
        _ => {
            if ips.is_empty() {
                "<none>".into()
            } else {
                ips.join(",")
            }
        }
    }
}

/// `kubectl get services`.
pub fn services() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, col("Type"), col("Cluster-IP"), col("External-IP"), col("Port(s)"), AGE, wide("Selector")];
    (
        cols,
        Box::new(|svc| {
            let sel: Vec<String> = svc
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
                .unwrap_or_default();
            let cip = s(svc, "/spec/clusterIP");
            vec![
                name(svc),
                json!(s(svc, "/spec/type")),
                json!(if cip.is_empty() { "<none>" } else { cip }),
                json!(external_ip(svc)),
                json!(ports_of(svc)),
                age(svc),
                json!(super::join_or_none(&sel)),
            ]
        }),
    )
}

/// `kubectl get endpoints`.
pub fn endpoints() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, col("Endpoints"), AGE];
    (
        cols,
        Box::new(|ep| {
            let mut list = Vec::new();
            for subset in ep.get("subsets").and_then(Value::as_array).into_iter().flatten() {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| i(p, "/port"))
                    .collect();
                for a in subset.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                    let ip = s(a, "/ip");
                    if ports.is_empty() {
                        list.push(ip.to_string());
                    }
                    for p in &ports {
                        list.push(format!("{ip}:{p}"));
                    }
                }
            }
            let shown = if list.len() > 3 {
                format!("{} + {} more...", list[..3].join(","), list.len() - 3)
            } else {
                super::join_or_none(&list)
            };
            vec![name(ep), json!(shown), age(ep)]
        }),
    )
}

/// `kubectl get endpointslices`.
pub fn endpoint_slices() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, col("AddressType"), col("Ports"), col("Endpoints"), AGE];
    (
        cols,
        Box::new(|es| {
            let ports: Vec<String> = es
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| i(p, "/port").to_string())
                .collect();
            let addrs: Vec<String> = es
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| e.get("addresses").and_then(Value::as_array).cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                super::join_or_none(&addrs)
            };
            vec![name(es), json!(s(es, "/addressType")), json!(super::join_or_none(&ports)), json!(shown), age(es)]
        }),
    )
}

/// `kubectl get ingresses`.
pub fn ingresses() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, col("Class"), col("Hosts"), col("Address"), col("Ports"), AGE];
    (
        cols,
        Box::new(|ing| {
            let hosts: Vec<String> = ing
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|r| r.get("host").and_then(Value::as_str).unwrap_or("*").to_string())
                .collect();
            let addrs: Vec<String> = ing
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| a.get("ip").or(a.get("hostname")).and_then(Value::as_str).map(str::to_string))
                .collect();
            let tls = ing.pointer("/spec/tls").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
            let class = s(ing, "/spec/ingressClassName");
            vec![
                name(ing),
                json!(if class.is_empty() { "<none>" } else { class }),
                json!(if hosts.is_empty() { "*".into() } else { hosts.join(",") }),
                json!(addrs.join(",")),
                json!(if tls { "80, 443" } else { "80" }),
                age(ing),
            ]
        }),
    )
}

/// `kubectl get ingressclasses`.
pub fn ingress_classes() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, col("Controller"), col("Parameters"), AGE];
    (
        cols,
        Box::new(|c| {
            let params = c
                .pointer("/spec/parameters")
                .map(|p| format!("{}/{}", s(p, "/kind"), s(p, "/name")))
                .unwrap_or_else(|| "<none>".into());
            vec![name(c), json!(s(c, "/spec/controller")), json!(params), age(c)]
        }),
    )
}
