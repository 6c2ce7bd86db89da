//! A container's environment and command line as pure functions: image `ENV`, Service links, `envFrom`, `env`
//! (value, configMapKeyRef, secretKeyRef, fieldRef, resourceFieldRef) with `$(VAR)` expansion, and the argv from
//! command/args and the image's ENTRYPOINT/CMD. Errors carry the kubelet's messages (they become
//! CreateContainerConfigError).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};

use crate::images::store::RunConfig;

/// Looks up ConfigMaps and Secrets of the pod's namespace by name.
pub trait Lookup: Sync {
    /// A ConfigMap.
    fn config_map(&self, name: &str) -> Option<ConfigMap>;
    /// A Secret.
    fn secret(&self, name: &str) -> Option<Secret>;
}

/// Facts about the pod that `fieldRef` can name.
#[derive(Clone, Debug, Default)]
pub struct PodFacts {
    /// status.podIP.
    pub pod_ip: String,
    /// status.hostIP.
    pub host_ip: String,
    /// spec.nodeName.
    pub node_name: String,
}

/// The value of a `fieldRef` path.
pub fn field_value(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, String> {
    let m = &pod.metadata;
    let lookup = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref().and_then(|l| l.get(key)).cloned().unwrap_or_default()
    };
    let sub = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => {
            pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into())
        }
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "metadata.labels" => format_map(m.labels.as_ref()),
        "metadata.annotations" => format_map(m.annotations.as_ref()),
        _ => {
            if let Some(k) = sub("metadata.labels") {
                lookup(&m.labels, &k)
            } else if let Some(k) = sub("metadata.annotations") {
                lookup(&m.annotations, &k)
            } else {
                return Err(format!("unsupported fieldRef {path}"));
            }
        }
    })
}

/// `key="value"` lines, as the downward API writes label and annotation maps.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| m.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join("\n")).unwrap_or_default()
}

/// The value of a `resourceFieldRef` (`limits.cpu` in cores rounded up by the divisor, `limits.memory` in bytes…).
/// A missing limit is reported as the node's allocatable amount, as Kubernetes does.
pub fn resource_value(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_cpus: u64,
    node_memory: u64,
) -> Result<String, String> {
    use skiff_api::quantity::Quantity;
    let res = c.resources.as_ref();
    let (kind, name) = resource.split_once('.').ok_or_else(|| format!("unsupported resourceFieldRef {resource}"))?;
    let map = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported resourceFieldRef {resource}")),
    };
    let q: Option<Quantity> = map.and_then(|m| m.get(name)).and_then(|q| q.0.parse().ok());
    let q = match (q, name) {
        (Some(q), _) => q,
        (None, "cpu") if kind == "limits" => Quantity::from_units(i64::try_from(node_cpus).unwrap_or(1)),
        (None, "memory") if kind == "limits" => Quantity::from_bytes(i64::try_from(node_memory).unwrap_or(0)),
        (None, _) => Quantity::from_units(0),
    };
    let div: Quantity = divisor.unwrap_or("1").parse().map_err(|_| format!("bad divisor {divisor:?}"))?;
    if div.is_zero() {
        return Err("divisor must not be zero".into());
    }
    let v = q.as_nanos();
    let d = div.as_nanos();
    Ok(((v + d - 1) / d).to_string())
}

/// Expands `$(VAR)` with `vars`; `$$` is a literal `$`; unknown references stay as written.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The Docker-link style variables of the Services in the pod's namespace (`FOO_SERVICE_HOST`, `FOO_PORT_80_TCP…`).
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in services {
        let Some(spec) = &s.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "None") else { continue };
        let name = s.metadata.name.clone().unwrap_or_default().to_uppercase().replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        if let Some(first) = ports.first() {
            out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
            let proto = first.protocol.clone().unwrap_or_else(|| "TCP".into()).to_lowercase();
            out.push((format!("{name}_PORT"), format!("{proto}://{ip}:{}", first.port)));
        }
        for p in &ports {
            if let Some(pn) = &p.name {
                out.push((format!("{name}_SERVICE_PORT_{}", pn.to_uppercase().replace('-', "_")), p.port.to_string()));
            }
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((prefix.clone(), format!("{}://{ip}:{}", proto.to_lowercase(), p.port)));
            out.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    out
}

fn secret_string(s: &Secret, key: &str) -> Option<String> {
    if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&v.0).into_owned());
    }
    s.string_data.as_ref().and_then(|d| d.get(key)).cloned()
}

fn config_map_string(c: &ConfigMap, key: &str) -> Option<String> {
    c.data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
        .or_else(|| c.binary_data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).into_owned()))
}

/// Inputs of [`container_env`] besides the container.
pub struct EnvInputs<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Pod facts.
    pub facts: &'a PodFacts,
    /// Objects of its namespace.
    pub lookup: &'a dyn Lookup,
    /// Services visible to it (its namespace, plus `kubernetes` in default).
    pub services: &'a [Service],
    /// The image's configuration.
    pub image: &'a RunConfig,
    /// Node capacity for resourceFieldRef defaults.
    pub node_cpus: u64,
    /// Node memory.
    pub node_memory: u64,
}

/// The environment of `c`, in order, later entries overriding earlier ones of the same name.
pub fn container_env(c: &Container, inp: &EnvInputs<'_>) -> Result<Vec<(String, String)>, String> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for e in inp.image.env.clone().unwrap_or_default() {
        let (k, v) = e.split_once('=').unwrap_or((&e, ""));
        set(&mut vars, k.to_string(), v.to_string());
    }
    if inp.pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false) {
        for (k, v) in service_env(inp.services) {
            set(&mut vars, k, v);
        }
    }
    let ns = inp.pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    for from in c.env_from.clone().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match inp.lookup.config_map(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match inp.lookup.secret(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(&mut vars, format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into_owned());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }
    for e in c.env.clone().unwrap_or_default() {
        let value = if let Some(v) = &e.value {
            Some(expand(v, &vars))
        } else if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                match inp.lookup.config_map(&r.name) {
                    Some(cm) => match config_map_string(&cm, &r.key) {
                        Some(v) => Some(v),
                        None if r.optional == Some(true) => None,
                        None => return Err(format!("couldn't find key {} in ConfigMap {ns}/{}", r.key, r.name)),
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(format!("configmap {:?} not found", r.name)),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match inp.lookup.secret(&r.name) {
                    Some(s) => match secret_string(&s, &r.key) {
                        Some(v) => Some(v),
                        None if r.optional == Some(true) => None,
                        None => return Err(format!("couldn't find key {} in Secret {ns}/{}", r.key, r.name)),
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(format!("secret {:?} not found", r.name)),
                }
            } else if let Some(f) = &from.field_ref {
                Some(field_value(inp.pod, inp.facts, &f.field_path)?)
            } else if let Some(r) = &from.resource_field_ref {
                let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                    Some(n) => {
                        inp.pod.spec.as_ref().and_then(|s| s.containers.iter().find(|x| x.name == n)).unwrap_or(c)
                    }
                    None => c,
                };
                Some(resource_value(
                    target,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                    inp.node_cpus,
                    inp.node_memory,
                )?)
            } else {
                Some(String::new())
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(&mut vars, e.name.clone(), v);
        }
    }
    Ok(order.into_iter().filter_map(|k| vars.get(&k).map(|v| (k.clone(), v.clone()))).collect())
}

/// The argv: `command` replaces ENTRYPOINT (and drops CMD), `args` replaces CMD; `$(VAR)` is expanded in both.
pub fn argv(c: &Container, image: &RunConfig, env: &[(String, String)]) -> Vec<String> {
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let exp = |v: &Vec<String>| v.iter().map(|a| expand(a, &vars)).collect::<Vec<_>>();
    match (&c.command, &c.args) {
        (Some(cmd), args) => {
            let mut v = exp(cmd);
            v.extend(args.as_ref().map(exp).unwrap_or_default());
            v
        }
        (None, Some(args)) => {
            let mut v = image.entrypoint.clone().unwrap_or_default();
            v.extend(exp(args));
            v
        }
        (None, None) => {
            let mut v = image.entrypoint.clone().unwrap_or_default();
            v.extend(image.cmd.clone().unwrap_or_default());
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector,
    };

    struct Objects;

    impl Lookup for Objects {
        fn config_map(&self, name: &str) -> Option<ConfigMap> {
            (name == "cfg").then(|| ConfigMap {
                data: Some([("color".to_string(), "blue".to_string())].into()),
                ..Default::default()
            })
        }
        fn secret(&self, name: &str) -> Option<Secret> {
            (name == "sec").then(|| Secret {
                data: Some([("pw".to_string(), ByteString(b"hunter2".to_vec()))].into()),
                ..Default::default()
            })
        }
    }

    fn env_var(name: &str, value: Option<&str>, from: Option<EnvVarSource>) -> EnvVar {
        EnvVar { name: name.into(), value: value.map(str::to_string), value_from: from }
    }

    fn inputs<'a>(pod: &'a Pod, facts: &'a PodFacts, image: &'a RunConfig) -> EnvInputs<'a> {
        EnvInputs { pod, facts, lookup: &Objects, services: &[], image, node_cpus: 2, node_memory: 1 << 30 }
    }

    #[test]
    fn values_refs_and_fields_resolve_in_order_with_expansion() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-1".into());
        pod.metadata.namespace = Some("prod".into());
        let facts = PodFacts { pod_ip: "10.244.0.5".into(), ..Default::default() };
        let image = RunConfig { env: Some(vec!["PATH=/bin".into(), "COLOR=red".into()]), ..Default::default() };
        let c = Container {
            name: "c".into(),
            env: Some(vec![
                env_var(
                    "COLOR",
                    None,
                    Some(EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "color".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                ),
                env_var(
                    "PW",
                    None,
                    Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "sec".into(),
                            key: "pw".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                ),
                env_var(
                    "ME",
                    None,
                    Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), api_version: None }),
                        ..Default::default()
                    }),
                ),
                env_var(
                    "IP",
                    None,
                    Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector { field_path: "status.podIP".into(), api_version: None }),
                        ..Default::default()
                    }),
                ),
                env_var("GREETING", Some("$(ME) is $(COLOR), $$(ME) and $(NOPE)"), None),
            ]),
            ..Default::default()
        };
        let env = container_env(&c, &inputs(&pod, &facts, &image)).expect("resolves");
        let m: BTreeMap<_, _> = env.iter().cloned().collect();
        assert_eq!(m["COLOR"], "blue");
        assert_eq!(m["PW"], "hunter2");
        assert_eq!(m["IP"], "10.244.0.5");
        assert_eq!(m["GREETING"], "web-1 is blue, $(ME) and $(NOPE)");
        assert_eq!(env[0].0, "PATH", "image variables keep their place");
    }

    #[test]
    fn a_missing_config_map_or_key_is_the_kubelet_message_unless_optional() {
        let pod = Pod::default();
        let facts = PodFacts::default();
        let image = RunConfig::default();
        let missing = |name: &str, key: &str, optional: Option<bool>| Container {
            name: "c".into(),
            env: Some(vec![env_var(
                "X",
                None,
                Some(EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector { name: name.into(), key: key.into(), optional }),
                    ..Default::default()
                }),
            )]),
            ..Default::default()
        };
        assert_eq!(
            container_env(&missing("nope", "k", None), &inputs(&pod, &facts, &image)).expect_err("missing"),
            "configmap \"nope\" not found"
        );
        assert_eq!(
            container_env(&missing("cfg", "k", None), &inputs(&pod, &facts, &image)).expect_err("missing key"),
            "couldn't find key k in ConfigMap default/cfg"
        );
        assert!(
            container_env(&missing("nope", "k", Some(true)), &inputs(&pod, &facts, &image))
                .expect("optional")
                .is_empty()
        );
    }

    #[test]
    fn command_replaces_entrypoint_and_args_replace_cmd() {
        let image =
            RunConfig { entrypoint: Some(vec!["/ep".into()]), cmd: Some(vec!["default".into()]), ..Default::default() };
        let env = vec![("N".to_string(), "3".to_string())];
        let mut c = Container { name: "c".into(), ..Default::default() };
        assert_eq!(argv(&c, &image, &env), vec!["/ep", "default"]);
        c.args = Some(vec!["x$(N)".into()]);
        assert_eq!(argv(&c, &image, &env), vec!["/ep", "x3"]);
        c.command = Some(vec!["sh".into(), "-c".into()]);
        assert_eq!(argv(&c, &image, &env), vec!["sh", "-c", "x3"]);
    }

    #[test]
    fn resource_fields_are_divided_and_rounded_up() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let c = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: Some(
                    [("cpu".to_string(), Quantity("250m".into())), ("memory".to_string(), Quantity("64Mi".into()))]
                        .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(resource_value(&c, "limits.cpu", None, 4, 0).expect("cpu"), "1");
        assert_eq!(resource_value(&c, "limits.cpu", Some("1m"), 4, 0).expect("cpu"), "250");
        assert_eq!(resource_value(&c, "limits.memory", Some("1Mi"), 4, 0).expect("mem"), "64");
        assert_eq!(resource_value(&Container::default(), "limits.cpu", None, 4, 0).expect("node"), "4");
    }

    #[test]
    fn services_become_link_variables() {
        use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
        let svc = Service {
            metadata: kube::api::ObjectMeta { name: Some("redis-main".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.20".into()),
                ports: Some(vec![ServicePort { port: 6379, name: Some("redis".into()), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m: BTreeMap<_, _> = service_env(&[svc]).into_iter().collect();
        assert_eq!(m["REDIS_MAIN_SERVICE_HOST"], "10.96.0.20");
        assert_eq!(m["REDIS_MAIN_SERVICE_PORT"], "6379");
        assert_eq!(m["REDIS_MAIN_PORT"], "tcp://10.96.0.20:6379");
        assert_eq!(m["REDIS_MAIN_PORT_6379_TCP_ADDR"], "10.96.0.20");
    }
}
