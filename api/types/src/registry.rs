//! The resource registry: every resource the API serves, with its group, version, kind, scope, short names,
//! categories, subresources and the fields it can be selected by.
//!
//! Discovery, the generic REST handlers, OpenAPI, Tables and CustomResourceDefinitions are all driven by it.

use std::sync::Arc;

/// The Kubernetes version Skiff's API server reports (`/version`), matching the k8s-openapi feature in use.
pub const KUBERNETES_VERSION: &str = "v1.32.4";
/// The minor version reported in `/version` (the kubectl dispatcher picks the matching kubectl).
pub const KUBERNETES_MINOR: &str = "32";

/// Whether objects of a resource live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `metadata.namespace` is required.
    Namespaced,
    /// No namespace.
    Cluster,
}

/// A subresource served under `…/{name}/{subresource}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subresource {
    /// `status`, `scale`, `binding`, `log`, `exec`, `eviction`, `token`, `finalize`, …
    pub name: String,
    /// The group of the kind it takes and returns (`autoscaling` for `scale`).
    pub group: String,
    /// The version of that kind.
    pub version: String,
    /// The kind it takes and returns.
    pub kind: String,
    /// The verbs it allows.
    pub verbs: Vec<String>,
}

/// An extra column of `kubectl get` for a custom resource (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    /// Header.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// A simple JSONPath (`.spec.replicas`).
    pub json_path: String,
    /// 0: always shown; 1: with `-o wide`.
    pub priority: i32,
    /// Description.
    pub description: String,
}

/// One resource (a group, version and plural name) the API serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group, `""` for core.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Plural resource name, e.g. `deployments`.
    pub plural: String,
    /// Singular name, e.g. `deployment`.
    pub singular: String,
    /// Namespaced or cluster-wide.
    pub scope: Scope,
    /// Short names (`deploy`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Subresources.
    pub subresources: Vec<Subresource>,
    /// Fields accepted in `fieldSelector`, besides `metadata.name` and `metadata.namespace`.
    pub selectable_fields: Vec<String>,
    /// Whether the kind has a `spec` whose changes bump `metadata.generation` (and a separate `status`).
    pub has_status: bool,
    /// Verbs allowed on the resource.
    pub verbs: Vec<String>,
    /// Whether this entry comes from a CustomResourceDefinition.
    pub custom: bool,
    /// Extra printer columns (custom resources).
    pub printer_columns: Vec<PrinterColumn>,
    /// The structural schema (`openAPIV3Schema`) of a custom resource's version, when its CRD has one.
    pub schema: Option<std::sync::Arc<serde_json::Value>>,
}

impl ResourceInfo {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `deployments.apps`, or `pods` for the core group (the form used in error messages).
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// The storage prefix of the resource: `/registry/<group>/<plural>/` (core resources have no group part).
    ///
    /// Objects of every version of a resource share one prefix, as in Kubernetes.
    pub fn storage_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        }
    }

    /// The storage key of one object.
    pub fn storage_key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => format!("{}{ns}/{name}", self.storage_prefix()),
            _ => format!("{}{name}", self.storage_prefix()),
        }
    }

    /// Whether the resource is namespaced.
    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }

    /// The subresource with this name.
    pub fn subresource(&self, name: &str) -> Option<&Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether `field` may be used in a field selector.
    pub fn selectable(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace") || self.selectable_fields.iter().any(|f| f == field)
    }
}

/// The resource metrics group, served from the node agents rather than from storage.
pub const METRICS_GROUP: &str = "metrics.k8s.io";

const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

struct Def {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    scope: Scope,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    fields: &'static [&'static str],
    has_status: bool,
}

const fn def(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    scope: Scope,
) -> Def {
    Def {
        group,
        version,
        kind,
        plural,
        scope,
        short: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        has_status: false,
    }
}

impl Def {
    const fn short(mut self, s: &'static [&'static str]) -> Self {
        self.short = s;
        self
    }
    const fn all(mut self) -> Self {
        self.categories = &["all"];
        self
    }
    const fn sub(mut self, s: &'static [&'static str]) -> Self {
        self.subresources = s;
        self
    }
    const fn fields(mut self, f: &'static [&'static str]) -> Self {
        self.fields = f;
        self
    }
    const fn status(mut self) -> Self {
        self.has_status = true;
        self
    }
}

use Scope::{Cluster, Namespaced};

const BUILTIN: &[Def] = &[
    def("", "v1", "Pod", "pods", Namespaced)
        .short(&["po"])
        .all()
        .status()
        .sub(&["status", "binding", "log", "exec", "eviction", "attach", "portforward", "proxy", "ephemeralcontainers"])
        .fields(&[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]),
    def("", "v1", "Service", "services", Namespaced)
        .short(&["svc"])
        .all()
        .status()
        .sub(&["status", "proxy"])
        .fields(&["spec.clusterIP", "spec.type"]),
    def("", "v1", "Endpoints", "endpoints", Namespaced).short(&["ep"]),
    def("", "v1", "ConfigMap", "configmaps", Namespaced).short(&["cm"]),
    def("", "v1", "Secret", "secrets", Namespaced).fields(&["type"]),
    def("", "v1", "Namespace", "namespaces", Cluster)
        .short(&["ns"])
        .status()
        .sub(&["status", "finalize"])
        .fields(&["status.phase"]),
    def("", "v1", "Node", "nodes", Cluster)
        .short(&["no"])
        .status()
        .sub(&["status", "proxy"])
        .fields(&["spec.unschedulable"]),
    def("", "v1", "Event", "events", Namespaced).short(&["ev"]).fields(&[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ]),
    def("", "v1", "ServiceAccount", "serviceaccounts", Namespaced).short(&["sa"]).sub(&["token"]),
    def("", "v1", "PersistentVolume", "persistentvolumes", Cluster).short(&["pv"]).status().sub(&["status"]),
    def("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", Namespaced)
        .short(&["pvc"])
        .status()
        .sub(&["status"]),
    def("", "v1", "ResourceQuota", "resourcequotas", Namespaced).short(&["quota"]).status().sub(&["status"]),
    def("", "v1", "LimitRange", "limitranges", Namespaced).short(&["limits"]),
    def("apps", "v1", "Deployment", "deployments", Namespaced)
        .short(&["deploy"])
        .all()
        .status()
        .sub(&["status", "scale"]),
    def("apps", "v1", "ReplicaSet", "replicasets", Namespaced)
        .short(&["rs"])
        .all()
        .status()
        .sub(&["status", "scale"])
        .fields(&["status.replicas"]),
    def("apps", "v1", "StatefulSet", "statefulsets", Namespaced)
        .short(&["sts"])
        .all()
        .status()
        .sub(&["status", "scale"]),
    def("apps", "v1", "DaemonSet", "daemonsets", Namespaced).short(&["ds"]).all().status().sub(&["status"]),
    def("apps", "v1", "ControllerRevision", "controllerrevisions", Namespaced),
    def("batch", "v1", "Job", "jobs", Namespaced).all().status().sub(&["status"]).fields(&["status.successful"]),
    def("batch", "v1", "CronJob", "cronjobs", Namespaced).short(&["cj"]).all().status().sub(&["status"]),
    def("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", Namespaced)
        .short(&["hpa"])
        .all()
        .status()
        .sub(&["status"]),
    // served beside v2 (the storage version) for `kubectl autoscale`; converted by the API server
    def("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", Namespaced)
        .short(&["hpa"])
        .status()
        .sub(&["status"]),
    def("networking.k8s.io", "v1", "Ingress", "ingresses", Namespaced).short(&["ing"]).status().sub(&["status"]),
    def("networking.k8s.io", "v1", "IngressClass", "ingressclasses", Cluster),
    def("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", Namespaced).short(&["netpol"]),
    def("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", Namespaced),
    def("coordination.k8s.io", "v1", "Lease", "leases", Namespaced),
    def("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", Cluster)
        .short(&["crd", "crds"])
        .status()
        .sub(&["status"]),
    def("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", Namespaced)
        .short(&["pdb"])
        .status()
        .sub(&["status"]),
    def("storage.k8s.io", "v1", "StorageClass", "storageclasses", Cluster).short(&["sc"]),
    def("certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests", Cluster)
        .short(&["csr"])
        .status()
        .sub(&["status", "approval"])
        .fields(&["spec.signerName"]),
    def("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", Cluster).short(&["pc"]),
    def("metrics.k8s.io", "v1beta1", "NodeMetrics", "nodes", Cluster),
    def("metrics.k8s.io", "v1beta1", "PodMetrics", "pods", Namespaced),
    def("rbac.authorization.k8s.io", "v1", "Role", "roles", Namespaced),
    def("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", Namespaced),
    def("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", Cluster),
    def("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", Cluster),
    def("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", Cluster),
    def("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", Cluster),
    def("authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", Cluster),
    def("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", Cluster),
    def("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", Namespaced),
];

/// Groups whose resources are only created and answered, never stored (`kubectl auth whoami`, `auth can-i`).
pub const REVIEW_GROUPS: &[&str] = &["authentication.k8s.io", "authorization.k8s.io"];

fn subresource(owner: &Def, name: &str) -> Subresource {
    let verbs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let same = |verbs: Vec<String>| Subresource {
        name: name.to_string(),
        group: owner.group.to_string(),
        version: owner.version.to_string(),
        kind: owner.kind.to_string(),
        verbs,
    };
    let other = |group: &str, version: &str, kind: &str, verbs: Vec<String>| Subresource {
        name: name.to_string(),
        group: group.to_string(),
        version: version.to_string(),
        kind: kind.to_string(),
        verbs,
    };
    match name {
        "status" => same(verbs(&["get", "patch", "update"])),
        "scale" => other("autoscaling", "v1", "Scale", verbs(&["get", "patch", "update"])),
        "binding" => other("", "v1", "Binding", verbs(&["create"])),
        "eviction" => other("policy", "v1", "Eviction", verbs(&["create"])),
        "token" => other("authentication.k8s.io", "v1", "TokenRequest", verbs(&["create"])),
        "finalize" => same(verbs(&["update"])),
        "approval" => same(verbs(&["get", "patch", "update"])),
        "ephemeralcontainers" => same(verbs(&["get", "patch", "update"])),
        "log" => other("", "v1", "Pod", verbs(&["get"])),
        "exec" | "attach" | "portforward" => other("", "v1", "PodExecOptions", verbs(&["create", "get"])),
        _ => other("", "v1", owner.kind, verbs(&["create", "delete", "get", "patch", "update"])),
    }
}

fn singular_of(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

/// Every built-in resource, in discovery order.
pub fn builtin() -> Vec<ResourceInfo> {
    BUILTIN
        .iter()
        .map(|d| ResourceInfo {
            group: d.group.to_string(),
            version: d.version.to_string(),
            kind: d.kind.to_string(),
            plural: d.plural.to_string(),
            singular: singular_of(d.kind),
            scope: d.scope,
            short_names: d.short.iter().map(|s| s.to_string()).collect(),
            categories: d.categories.iter().map(|s| s.to_string()).collect(),
            subresources: d.subresources.iter().map(|s| subresource(d, s)).collect(),
            selectable_fields: d.fields.iter().map(|s| s.to_string()).collect(),
            has_status: d.has_status,
            verbs: if d.group == METRICS_GROUP {
                vec!["get".into(), "list".into()]
            } else if REVIEW_GROUPS.contains(&d.group) {
                vec!["create".into()]
            } else {
                ALL_VERBS.iter().map(|s| s.to_string()).collect()
            },
            custom: false,
            printer_columns: Vec::new(),
            schema: None,
        })
        .collect()
}

/// A lookup table over resources: built-ins plus custom resources added at run time.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    resources: Vec<Arc<ResourceInfo>>,
}

impl Registry {
    /// The registry of built-in resources.
    pub fn with_builtins() -> Self {
        Registry { resources: builtin().into_iter().map(Arc::new).collect() }
    }

    /// Every resource, built-ins first.
    pub fn all(&self) -> &[Arc<ResourceInfo>] {
        &self.resources
    }

    /// Adds or replaces (by group, version and plural) a resource.
    pub fn upsert(&mut self, info: ResourceInfo) {
        let info = Arc::new(info);
        match self
            .resources
            .iter_mut()
            .find(|r| r.group == info.group && r.version == info.version && r.plural == info.plural)
        {
            Some(slot) => *slot = info,
            None => self.resources.push(info),
        }
    }

    /// Removes every custom version of `plural.group`.
    pub fn remove_custom(&mut self, group: &str, plural: &str) {
        self.resources.retain(|r| !(r.custom && r.group == group && r.plural == plural));
    }

    /// Replaces every custom resource with `custom` (built-ins stay).
    pub fn replace_custom(&mut self, custom: Vec<ResourceInfo>) {
        self.resources.retain(|r| !r.custom);
        for info in custom {
            self.upsert(info);
        }
    }

    /// The resource served at `group/version/plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.resources.iter().find(|r| r.group == group && r.version == version && r.plural == plural).cloned()
    }

    /// The resource for an object's `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        let (group, version) = crate::meta::split_api_version(api_version);
        self.resources.iter().find(|r| r.group == group && r.version == version && r.kind == kind).cloned()
    }

    /// The groups served, each with its versions in preference order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in &self.resources {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    if !versions.contains(&r.version) {
                        versions.push(r.version.clone());
                    }
                }
                None => out.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        out
    }

    /// The resources of one group-version.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ResourceInfo>> {
        self.resources.iter().filter(move |r| r.group == group && r.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_kind_the_issue_names_is_served() {
        let r = Registry::with_builtins();
        for (av, kind) in [
            ("v1", "Pod"),
            ("v1", "Service"),
            ("v1", "Endpoints"),
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("v1", "Namespace"),
            ("v1", "Node"),
            ("v1", "Event"),
            ("v1", "ServiceAccount"),
            ("v1", "PersistentVolume"),
            ("v1", "PersistentVolumeClaim"),
            ("v1", "ResourceQuota"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "ReplicaSet"),
            ("apps/v1", "StatefulSet"),
            ("apps/v1", "DaemonSet"),
            ("batch/v1", "Job"),
            ("batch/v1", "CronJob"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"),
            ("networking.k8s.io/v1", "Ingress"),
            ("networking.k8s.io/v1", "IngressClass"),
            ("discovery.k8s.io/v1", "EndpointSlice"),
            ("coordination.k8s.io/v1", "Lease"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        ] {
            assert!(r.by_kind(av, kind).is_some(), "{av} {kind}");
        }
    }

    #[test]
    fn storage_keys_follow_the_kubernetes_layout() {
        let r = Registry::with_builtins();
        let deploy = r.get("apps", "v1", "deployments").expect("served");
        assert_eq!(deploy.storage_key(Some("default"), "web"), "/registry/apps/deployments/default/web");
        let ns = r.get("", "v1", "namespaces").expect("served");
        assert_eq!(ns.storage_key(None, "kube-system"), "/registry/namespaces/kube-system");
        assert_eq!(deploy.subresource("scale").map(|s| s.kind.as_str()), Some("Scale"));
    }

    #[test]
    fn short_names_and_categories_are_those_kubectl_expects() {
        let r = Registry::with_builtins();
        let all: Vec<&str> =
            r.all().iter().filter(|r| r.categories.iter().any(|c| c == "all")).map(|r| r.plural.as_str()).collect();
        for p in [
            "pods",
            "services",
            "deployments",
            "replicasets",
            "statefulsets",
            "daemonsets",
            "jobs",
            "cronjobs",
            "horizontalpodautoscalers",
        ] {
            assert!(all.contains(&p), "{p} in category all");
        }
        assert_eq!(r.get("networking.k8s.io", "v1", "ingresses").expect("served").short_names, vec!["ing"]);
    }
}
