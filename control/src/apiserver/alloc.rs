//! Allocation of Service ClusterIPs (from 10.96.0.0/12) and NodePorts (30000–32767).
//!
//! Each allocated address or port is a key in the store (`/registry/ipallocations/<ip>`,
//! `/registry/nodeportallocations/<port>`) created with create-if-absent, so allocation is race-free across several
//! API servers sharing one datastore. `10.96.0.1` (the `kubernetes` Service) and `10.96.0.10` (cluster DNS) are
//! reserved for the Services that claim them by name.

use std::net::Ipv4Addr;

use bytes::Bytes;
use serde_json::{Value, json};

use super::Api;
use super::error::{ApiError, ApiResult};
use crate::storage::StorageError;
use skiff_api::validation::{ErrorList, NODE_PORT_RANGE};

/// The Service CIDR.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The API server's Service address.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// Cluster DNS.
pub const DNS_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

const IP_PREFIX: &str = "/registry/ipallocations/";
const POD_CIDR_PREFIX: &str = "/registry/podcidrallocations/";
/// The cluster's pod network; each node gets a /24 of it.
pub const CLUSTER_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 244, 0, 0), 16);
const PORT_PREFIX: &str = "/registry/nodeportallocations/";

fn in_cidr(ip: Ipv4Addr) -> bool {
    let (base, len) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - len);
    (u32::from(ip) & mask) == u32::from(base)
}

fn owner(ns: &str, name: &str) -> Bytes {
    Bytes::from(json!({"service": format!("{ns}/{name}")}).to_string())
}

fn invalid(info_kind: &str, name: &str, field: &str, value: &str, detail: &str) -> ApiError {
    let mut errs = ErrorList::default();
    errs.invalid(field, value, detail);
    let info = skiff_api::registry::Registry::with_builtins().get("", "v1", "services").expect("services are built in");
    ApiError::invalid(&info, info_kind, name, &errs)
}

impl Api {
    async fn claim(&self, key: String, ns: &str, name: &str) -> Result<bool, ApiError> {
        match self.store.create(&key, owner(ns, name)).await {
            Ok(_) => Ok(true),
            Err(StorageError::AlreadyExists { .. }) => {
                // Already ours (a retried create)?
                let mine = self.store.get(&key).await.ok().flatten().is_some_and(|kv| kv.value == owner(ns, name));
                Ok(mine)
            }
            Err(e) => Err(ApiError::internal("allocating", &e)),
        }
    }

    async fn release(&self, key: String) {
        if let Err(e) = self.store.delete(&key, None).await
            && !matches!(e, StorageError::NotFound { .. })
        {
            tracing::warn!(%key, error = %e, "releasing an allocation failed");
        }
    }

    /// Allocates what a new (or changed) Service needs: a ClusterIP unless headless or ExternalName, NodePorts for
    /// NodePort and LoadBalancer Services. Fills them into `svc`; releases nothing (see [`Api::release_service`]).
    pub async fn allocate_service(&self, svc: &mut Value, old: Option<&Value>) -> ApiResult<()> {
        let ns = skiff_api::meta::namespace(svc).to_string();
        let name = skiff_api::meta::name(svc).to_string();
        let ty = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        if ty == "ExternalName" {
            if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            return Ok(());
        }
        let requested = svc.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default().to_string();
        let previous =
            old.and_then(|o| o.pointer("/spec/clusterIP")).and_then(Value::as_str).unwrap_or_default().to_string();
        let ip = if requested == "None" {
            "None".to_string()
        } else if !previous.is_empty() && (requested.is_empty() || requested == previous) {
            previous
        } else if !requested.is_empty() {
            let parsed: Ipv4Addr = requested
                .parse()
                .map_err(|_| invalid("Service", &name, "spec.clusterIP", &requested, "must be a valid IPv4 address"))?;
            if !in_cidr(parsed) {
                return Err(invalid(
                    "Service",
                    &name,
                    "spec.clusterIP",
                    &requested,
                    "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12",
                ));
            }
            if !self.claim(format!("{IP_PREFIX}{parsed}"), &ns, &name).await? {
                return Err(invalid(
                    "Service",
                    &name,
                    "spec.clusterIP",
                    &requested,
                    "provided IP is already allocated",
                ));
            }
            requested
        } else {
            self.allocate_ip(&ns, &name).await?.to_string()
        };
        let mut ports_changed = Vec::new();
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
            let old_ports: Vec<(i64, i64)> = old
                .and_then(|o| o.pointer("/spec/ports"))
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter().filter_map(|p| Some((p.get("port")?.as_i64()?, p.get("nodePort")?.as_i64()?))).collect()
                })
                .unwrap_or_default();
            if let Some(Value::Array(ports)) = svc.pointer_mut("/spec/ports") {
                for p in ports.iter_mut() {
                    let port = p.get("port").and_then(Value::as_i64).unwrap_or_default();
                    let wanted = p.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0);
                    let kept = old_ports.iter().find(|(sp, _)| *sp == port).map(|(_, np)| *np);
                    let node_port = match (wanted, kept) {
                        (Some(w), Some(k)) if w == k => k,
                        (None, Some(k)) => k,
                        (Some(w), _) => {
                            if !NODE_PORT_RANGE.contains(&(w as i32)) {
                                return Err(invalid(
                                    "Service",
                                    &name,
                                    "spec.ports[].nodePort",
                                    &w.to_string(),
                                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                                ));
                            }
                            if !self.claim(format!("{PORT_PREFIX}{w}"), &ns, &name).await? {
                                return Err(invalid(
                                    "Service",
                                    &name,
                                    "spec.ports[].nodePort",
                                    &w.to_string(),
                                    "provided port is already allocated",
                                ));
                            }
                            w
                        }
                        (None, None) => self.allocate_node_port(&ns, &name).await?,
                    };
                    ports_changed.push(node_port);
                    p["nodePort"] = json!(node_port);
                }
            }
        } else if let Some(Value::Array(ports)) = svc.pointer_mut("/spec/ports") {
            for p in ports.iter_mut() {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
            }
        }
        if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            if ip != "None" || !spec.contains_key("ipFamilies") {
                spec.insert("ipFamilies".into(), json!(["IPv4"]));
                spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
            }
        }
        Ok(())
    }

    async fn allocate_ip(&self, ns: &str, name: &str) -> ApiResult<Ipv4Addr> {
        let (base, len) = SERVICE_CIDR;
        let size = 1u32 << (32 - len);
        if ns == "default"
            && name == "kubernetes"
            && self.claim(format!("{IP_PREFIX}{KUBERNETES_SERVICE_IP}"), ns, name).await?
        {
            return Ok(KUBERNETES_SERVICE_IP);
        }
        if ns == "kube-system"
            && name == "kube-dns"
            && self.claim(format!("{IP_PREFIX}{DNS_SERVICE_IP}"), ns, name).await?
        {
            return Ok(DNS_SERVICE_IP);
        }
        // random probing, then a bounded linear scan
        let start = rand::random::<u32>() % size;
        for i in 0..size.min(4096 + 64) {
            let offset = if i < 64 { rand::random::<u32>() % size } else { (start + i) % size };
            let ip = Ipv4Addr::from(u32::from(base) + offset);
            let last = Ipv4Addr::from(u32::from(base) + size - 1);
            if offset == 0 || ip == last || ip == KUBERNETES_SERVICE_IP || ip == DNS_SERVICE_IP {
                continue;
            }
            if self.claim(format!("{IP_PREFIX}{ip}"), ns, name).await? {
                return Ok(ip);
            }
        }
        Err(ApiError::internal("allocating a ClusterIP", &"the service range is full"))
    }

    async fn allocate_node_port(&self, ns: &str, name: &str) -> ApiResult<i64> {
        let (lo, hi) = (*NODE_PORT_RANGE.start() as u32, *NODE_PORT_RANGE.end() as u32);
        let size = hi - lo + 1;
        let start = rand::random::<u32>() % size;
        for i in 0..size {
            let port = lo + (start + i) % size;
            if self.claim(format!("{PORT_PREFIX}{port}"), ns, name).await? {
                return Ok(i64::from(port));
            }
        }
        Err(ApiError::internal("allocating a NodePort", &"the node port range is full"))
    }

    /// Assigns a node its pod CIDR (a free /24 of the cluster CIDR) unless it asked for one; keeps the one it has.
    pub async fn allocate_pod_cidr(&self, node: &mut Value, old: Option<&Value>) -> ApiResult<()> {
        let name = skiff_api::meta::name(node).to_string();
        let kept = old
            .and_then(|o| o.pointer("/spec/podCIDR"))
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let wanted =
            node.pointer("/spec/podCIDR").and_then(Value::as_str).filter(|c| !c.is_empty()).map(str::to_string);
        let cidr = match (kept, wanted) {
            (Some(k), _) => k,
            (None, Some(w)) => {
                let _ = self.claim(format!("{POD_CIDR_PREFIX}{}", w.replace('/', "_")), "", &name).await?;
                w
            }
            (None, None) => {
                let (base, _) = CLUSTER_CIDR;
                let mut found = None;
                for i in 0..256u32 {
                    let net = Ipv4Addr::from(u32::from(base) + (i << 8));
                    if self.claim(format!("{POD_CIDR_PREFIX}{net}_24"), "", &name).await? {
                        found = Some(format!("{net}/24"));
                        break;
                    }
                }
                found.ok_or_else(|| ApiError::internal("allocating a pod CIDR", &"the cluster CIDR is full"))?
            }
        };
        if let Some(spec) =
            node.as_object_mut().map(|m| m.entry("spec").or_insert_with(|| json!({}))).and_then(Value::as_object_mut)
        {
            spec.insert("podCIDR".into(), json!(cidr));
            spec.insert("podCIDRs".into(), json!([cidr]));
        }
        Ok(())
    }

    /// Releases a deleted node's pod CIDR.
    pub async fn release_pod_cidr(&self, node: &Value) {
        if let Some(c) = node.pointer("/spec/podCIDR").and_then(Value::as_str).filter(|c| !c.is_empty()) {
            self.release(format!("{POD_CIDR_PREFIX}{}", c.replace('/', "_"))).await;
        }
    }

    /// Releases what `old` held and `new` (if any) no longer holds.
    pub async fn release_service(&self, old: &Value, new: Option<&Value>) {
        let ip = |v: &Value| v.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default().to_string();
        let ports = |v: &Value| -> Vec<i64> {
            v.pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| ps.iter().filter_map(|p| p.get("nodePort").and_then(Value::as_i64)).collect())
                .unwrap_or_default()
        };
        let old_ip = ip(old);
        if !old_ip.is_empty() && old_ip != "None" && new.map(ip).as_deref() != Some(old_ip.as_str()) {
            self.release(format!("{IP_PREFIX}{old_ip}")).await;
        }
        let keep = new.map(ports).unwrap_or_default();
        for p in ports(old) {
            if !keep.contains(&p) {
                self.release(format!("{PORT_PREFIX}{p}")).await;
            }
        }
    }
}
