//! The vendored Kubernetes API schema (api/vendor/kubernetes): the descriptor set compiled from `generated.proto`
//! by `build.rs`, and the notes on the JSON form that `scripts/vendor-k8s-api` derived from the Go types
//! (`json-fields.tsv`): renamed, embedded and pointer fields, slice wrappers, and the strategic-merge/apply
//! metadata of list and map fields.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kubernetes.fds"));
static JSON_FIELDS: &str = include_str!("../../vendor/kubernetes/json-fields.tsv");

/// What the Go type of one protobuf field says about its JSON form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldNote {
    /// The JSON name, when it differs from the protobuf field name.
    pub json_name: Option<String>,
    /// An embedded struct: its fields appear directly in the parent's JSON object.
    pub inline: bool,
    /// A Go pointer: a zero value on the wire was set on purpose and is kept.
    pub pointer: bool,
}

/// The strategic-merge and server-side-apply metadata of one field, as the OpenAPI documents carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListMeta {
    /// `x-kubernetes-patch-strategy` (`merge`, `retainKeys`, `merge,retainKeys`).
    pub strategy: Option<String>,
    /// `x-kubernetes-patch-merge-key`.
    pub merge_key: Option<String>,
    /// `x-kubernetes-list-type` (`atomic`, `set`, `map`).
    pub list_type: Option<String>,
    /// `x-kubernetes-list-map-keys`.
    pub list_map_keys: Vec<String>,
    /// `x-kubernetes-map-type` (`atomic`, `granular`).
    pub map_type: Option<String>,
}

/// How a list field merges, in strategic merge patch and in server-side apply's field sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeList {
    /// Replaced whole.
    Atomic,
    /// Elements are objects merged by these keys (the first is the strategic-merge `patchMergeKey`).
    Map(Vec<String>),
    /// Elements are primitives merged as a set.
    Set,
}

/// The merge metadata of one field (by its JSON name) of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeField {
    /// How the field merges when it is a list.
    pub list: MergeList,
    /// The message of the field's value (or of its list elements or map values), when it is a message.
    pub ty: Option<String>,
}

/// The compiled schema.
pub struct Schema {
    pool: DescriptorPool,
    fields: HashMap<(String, u32), FieldNote>,
    lists: HashSet<String>,
    list_meta: HashMap<(String, String), ListMeta>,
    merge: HashMap<String, HashMap<String, MergeField>>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("fields", &self.fields.len()).field("lists", &self.lists.len()).finish()
    }
}

/// The schema of the served Kubernetes version, loaded on first use.
pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(DESCRIPTORS).expect("build.rs wrote a valid descriptor set");
    let (fields, lists, list_meta) = parse_notes(JSON_FIELDS);
    let mut schema = Schema { pool, fields, lists, list_meta, merge: HashMap::new() };
    schema.merge = schema.pool.all_messages().map(|m| (m.full_name().to_string(), schema.merge_fields(&m))).collect();
    schema
});

fn merge_list(meta: Option<&ListMeta>) -> MergeList {
    let Some(meta) = meta else { return MergeList::Atomic };
    let merge = meta.strategy.as_deref().is_some_and(|s| s.split(',').any(|p| p == "merge"));
    match (merge, &meta.merge_key, meta.list_type.as_deref()) {
        (true, Some(key), _) => {
            let mut keys = vec![key.clone()];
            keys.extend(meta.list_map_keys.iter().filter(|k| *k != key).cloned());
            MergeList::Map(keys)
        }
        (true, None, _) | (false, _, Some("set")) => MergeList::Set,
        (false, _, Some("map")) if !meta.list_map_keys.is_empty() => MergeList::Map(meta.list_map_keys.clone()),
        _ => MergeList::Atomic,
    }
}

type Notes = (HashMap<(String, u32), FieldNote>, HashSet<String>, HashMap<(String, String), ListMeta>);

fn parse_notes(text: &str) -> Notes {
    let (mut fields, mut lists, mut list_meta) = (HashMap::new(), HashSet::new(), HashMap::new());
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [message, number, json, flags] = cols[..] else { continue };
        let flags: Vec<&str> = flags.split(',').collect();
        if flags.contains(&"list") {
            lists.insert(message.to_string());
            continue;
        }
        let Ok(number) = number.parse::<u32>() else { continue };
        let value = |key: &str| flags.iter().find_map(|f| f.strip_prefix(key)).map(|v| v.replace('+', ","));
        let meta = ListMeta {
            strategy: value("strategy="),
            merge_key: value("merge-key="),
            list_type: value("list-type="),
            list_map_keys: value("list-map-keys=")
                .map(|v| v.split('|').map(str::to_string).collect())
                .unwrap_or_default(),
            map_type: value("map-type="),
        };
        if meta != ListMeta::default() {
            list_meta.insert((message.to_string(), json.to_string()), meta);
        }
        let note = FieldNote {
            json_name: flags.contains(&"rename").then(|| json.to_string()),
            inline: flags.contains(&"inline"),
            pointer: flags.contains(&"pointer"),
        };
        if note != FieldNote::default() {
            fields.insert((message.to_string(), number), note);
        }
    }
    (fields, lists, list_meta)
}

impl Schema {
    /// The merge metadata of every field of `m` by JSON name; an embedded (`,inline`) field contributes its own
    /// fields, as in the JSON form.
    fn merge_fields(&self, m: &MessageDescriptor) -> HashMap<String, MergeField> {
        let mut out = HashMap::new();
        for f in m.fields() {
            let note = self.note(m.full_name(), f.number());
            let child = match f.kind() {
                Kind::Message(d) if f.is_map() => match d.map_entry_value_field().kind() {
                    Kind::Message(v) => Some(v),
                    _ => None,
                },
                Kind::Message(d) => Some(d),
                _ => None,
            };
            if note.is_some_and(|n| n.inline) {
                if let Some(c) = &child {
                    out.extend(self.merge_fields(c));
                }
                continue;
            }
            let json = note.and_then(|n| n.json_name.clone()).unwrap_or_else(|| f.name().to_string());
            let list = merge_list(self.list_meta(m.full_name(), &json));
            out.insert(json, MergeField { list, ty: child.map(|c| c.full_name().to_string()) });
        }
        out
    }

    /// The merge metadata of field `field` (JSON name) of message `message`.
    pub fn merge_field(&self, message: &str, field: &str) -> Option<&MergeField> {
        self.merge.get(message).and_then(|m| m.get(field))
    }

    /// The message name of a top-level kind (`apps/v1`, `Deployment` → `k8s.io.api.apps.v1.Deployment`).
    pub fn kind_message(&self, api_version: &str, kind: &str) -> Option<String> {
        self.message(api_version, kind).map(|m| m.full_name().to_string())
    }

    /// The message of a top-level kind, found from its apiVersion (`apps/v1`) and kind (`Deployment`).
    pub fn message(&self, api_version: &str, kind: &str) -> Option<MessageDescriptor> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        if version.is_empty() || kind.is_empty() || !version.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let package = match group {
            "" => "k8s.io.api.core".to_string(),
            "apiextensions.k8s.io" => "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions".to_string(),
            "internal.apiserver.k8s.io" => "k8s.io.api.apiserverinternal".to_string(),
            "meta.k8s.io" => "k8s.io.apimachinery.pkg.apis.meta".to_string(),
            g => format!("k8s.io.api.{}", g.split('.').next().unwrap_or(g)),
        };
        self.pool.get_message_by_name(&format!("{package}.{version}.{kind}"))
    }

    /// A message by its full protobuf name.
    pub fn message_by_name(&self, name: &str) -> Option<MessageDescriptor> {
        self.pool.get_message_by_name(name)
    }

    /// The note on field `number` of `message`, if its Go type says anything the descriptor does not.
    pub fn note(&self, message: &str, number: u32) -> Option<&FieldNote> {
        self.fields.get(&(message.to_string(), number))
    }

    /// The list/patch metadata of the field with JSON name `field` in `message` (a protobuf message name).
    pub fn list_meta(&self, message: &str, field: &str) -> Option<&ListMeta> {
        self.list_meta.get(&(message.to_string(), field.to_string()))
    }

    /// Every field with list/patch metadata: (protobuf message name, JSON field name, metadata).
    pub fn all_list_meta(&self) -> impl Iterator<Item = (&str, &str, &ListMeta)> {
        self.list_meta.iter().map(|((m, f), meta)| (m.as_str(), f.as_str(), meta))
    }

    /// Whether `message` wraps a Go slice, so its JSON form is the array of its `items`.
    pub fn is_list(&self, message: &str) -> bool {
        self.lists.contains(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_group_maps_to_its_package() {
        for (av, kind) in [
            ("v1", "Pod"),
            ("apps/v1", "Deployment"),
            ("batch/v1", "CronJob"),
            ("networking.k8s.io/v1", "Ingress"),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
            ("autoscaling/v1", "HorizontalPodAutoscaler"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"),
            ("policy/v1", "PodDisruptionBudget"),
            ("scheduling.k8s.io/v1", "PriorityClass"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
            ("authentication.k8s.io/v1", "TokenRequest"),
            ("coordination.k8s.io/v1", "Lease"),
            ("discovery.k8s.io/v1", "EndpointSlice"),
            ("events.k8s.io/v1", "Event"),
            ("meta.k8s.io/v1", "DeleteOptions"),
        ] {
            assert!(SCHEMA.message(av, kind).is_some(), "{av} {kind}");
        }
        assert!(SCHEMA.message("example.com/v1", "Widget").is_none());
        assert!(SCHEMA.message("v1", "").is_none());
        assert!(SCHEMA.message("apps/v1.x", "Deployment").is_none());
    }

    #[test]
    fn notes_say_what_the_go_types_say() {
        assert!(SCHEMA.note("k8s.io.api.apps.v1.DeploymentSpec", 1).is_some_and(|n| n.pointer));
        assert!(SCHEMA.note("k8s.io.api.core.v1.Volume", 2).is_some_and(|n| n.inline));
        let r = SCHEMA.note("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps", 3);
        assert_eq!(r.and_then(|n| n.json_name.as_deref()), Some("$ref"));
        assert!(SCHEMA.is_list("k8s.io.apimachinery.pkg.apis.meta.v1.Verbs"));
        assert!(SCHEMA.note("k8s.io.api.core.v1.ServicePort", 5).is_none(), "nodePort is not a pointer");
        let ports = SCHEMA.list_meta("k8s.io.api.core.v1.Container", "ports").expect("ports have list metadata");
        assert_eq!(ports.merge_key.as_deref(), Some("containerPort"));
        assert_eq!(ports.list_map_keys, ["containerPort", "protocol"]);
        let volumes = SCHEMA.list_meta("k8s.io.api.core.v1.PodSpec", "volumes").expect("volumes");
        assert_eq!(volumes.strategy.as_deref(), Some("merge,retainKeys"));
        let args = SCHEMA.list_meta("k8s.io.api.core.v1.Container", "args").expect("args");
        assert_eq!(args.list_type.as_deref(), Some("atomic"));
    }
}
