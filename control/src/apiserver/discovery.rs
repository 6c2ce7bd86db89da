//! Discovery: `/version`, aggregated discovery (`apidiscovery.k8s.io/v2`) and the legacy documents
//! (`APIVersions`, `APIGroupList`, `APIResourceList`), all generated from the registry.

use serde_json::{Value, json};

use skiff_api::registry::{KUBERNETES_MINOR, KUBERNETES_VERSION, Registry, ResourceInfo};

/// The content type of aggregated discovery.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2"))
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1", "minor": KUBERNETES_MINOR, "gitVersion": KUBERNETES_VERSION,
        "gitCommit": "skiff", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a (skiff, Rust)", "compiler": "rustc", "platform": "linux/amd64",
    })
}

fn resource_entry(r: &ResourceInfo) -> Value {
    let mut e = json!({
        "resource": r.plural, "singularResource": r.singular,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced() { "Namespaced" } else { "Cluster" },
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    let subs: Vec<Value> = r
        .subresources
        .iter()
        .map(|s| json!({"subresource": s.name, "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}, "verbs": s.verbs}))
        .collect();
    if !subs.is_empty() {
        e["subresources"] = json!(subs);
    }
    e
}

/// Aggregated discovery for the core group (`core = true`, `/api`) or the named groups (`/apis`).
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let items: Vec<Value> = reg
        .groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = reg.in_group_version(&group, v).map(|r| resource_entry(r)).collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Legacy `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or_default()})
}

/// Legacy `/apis`.
pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> =
        reg.groups().into_iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| group_entry(&g, &vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Legacy `/apis/{group}`.
pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let (g, vs) = reg.groups().into_iter().find(|(g, _)| g == group)?;
    let mut e = group_entry(&g, &vs);
    e["kind"] = json!("APIGroup");
    e["apiVersion"] = json!("v1");
    Some(e)
}

/// Legacy `/api/v1`, `/apis/{group}/{version}`.
pub fn api_resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<&std::sync::Arc<ResourceInfo>> = reg.in_group_version(group, version).collect();
    if resources.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in resources {
        let mut e = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced(), "kind": r.kind, "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        list.push(e);
        for s in &r.subresources {
            let mut se = json!({"name": format!("{}/{}", r.plural, s.name), "singularName": "", "namespaced": r.namespaced(), "kind": s.kind, "verbs": s.verbs});
            if s.group != r.group || s.version != r.version {
                se["group"] = json!(s.group);
                se["version"] = json!(s.version);
            }
            list.push(se);
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}
