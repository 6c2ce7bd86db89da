//! The input of the compiler: every Kubernetes object the ingress follows, as one plain value.
//!
//! [`Objects`] is filled either from a multi-document YAML file (standalone mode) or from the kube-rs reflector
//! stores (API mode); the compiler never knows which.

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::Value;

/// Every object the compiler reads. Order does not matter: the compiler sorts what it needs to.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// `networking.k8s.io/v1` Ingresses.
    pub ingresses: Vec<Ingress>,
    /// `networking.k8s.io/v1` IngressClasses.
    pub classes: Vec<IngressClass>,
    /// `v1` Services.
    pub services: Vec<Service>,
    /// `discovery.k8s.io/v1` EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// `v1` Secrets (only `kubernetes.io/tls` ones are used).
    pub secrets: Vec<Secret>,
    /// `v1` ConfigMaps (referenced by the `custom-headers` annotation).
    pub config_maps: Vec<ConfigMap>,
}

/// Why a manifest could not be turned into [`Objects`].
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// The text is not a valid stream of Kubernetes objects.
    #[error(transparent)]
    Manifest(#[from] skiff_api::yaml::ManifestError),
    /// A document of a kind the ingress follows does not match that kind's schema.
    #[error("document {index} ({kind} {name:?}): {source}")]
    Schema {
        /// Zero-based index of the document.
        index: usize,
        /// Its `kind`.
        kind: String,
        /// Its `metadata.name`, if any.
        name: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

impl Objects {
    /// Reads a multi-document YAML (or JSON) stream. Kinds the ingress does not follow are skipped; a document of a
    /// followed kind that does not parse fails the whole read, so a half-written file never replaces a good table.
    pub fn from_yaml(text: &str) -> Result<Self, ObjectsError> {
        let mut out = Objects::default();
        for (index, doc) in skiff_api::yaml::parse_documents(text)?.into_iter().enumerate() {
            out.push_value(index, doc)?;
        }
        Ok(out)
    }

    fn push_value(&mut self, index: usize, doc: Value) -> Result<(), ObjectsError> {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
        let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let schema = |source| ObjectsError::Schema { index, kind: kind.clone(), name: name.clone(), source };
        match (api_version.as_str(), kind.as_str()) {
            ("networking.k8s.io/v1", "Ingress") => self.ingresses.push(serde_json::from_value(doc).map_err(schema)?),
            ("networking.k8s.io/v1", "IngressClass") => self.classes.push(serde_json::from_value(doc).map_err(schema)?),
            ("v1", "Service") => self.services.push(serde_json::from_value(doc).map_err(schema)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => self.slices.push(serde_json::from_value(doc).map_err(schema)?),
            ("v1", "Secret") => self.secrets.push(with_string_data(doc).map_err(schema)?),
            ("v1", "ConfigMap") => self.config_maps.push(serde_json::from_value(doc).map_err(schema)?),
            _ => {}
        }
        Ok(())
    }
}

/// Folds a Secret's `stringData` into `data`, as the API server does on write, so files written by hand work.
fn with_string_data(mut doc: Value) -> Result<Secret, serde_json::Error> {
    if let Some(Value::Object(string_data)) = doc.as_object_mut().and_then(|m| m.remove("stringData")) {
        use base64::Engine as _;
        let data = doc.as_object_mut().map(|m| m.entry("data").or_insert_with(|| Value::Object(Default::default())));
        if let Some(Value::Object(data)) = data {
            for (k, v) in string_data {
                let text = v.as_str().unwrap_or_default();
                data.insert(k, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
            }
        }
    }
    serde_json::from_value(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followed_kinds_are_read_and_others_skipped() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec: {ingressClassName: skiff}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: v1
kind: Secret
metadata: {name: tls}
type: kubernetes.io/tls
stringData: {tls.crt: "abc"}
"#;
        let objects = Objects::from_yaml(text).expect("valid stream");
        assert_eq!(objects.ingresses.len(), 1);
        assert_eq!(objects.secrets.len(), 1);
        let data = objects.secrets[0].data.as_ref().expect("stringData folded into data");
        assert_eq!(data["tls.crt"].0, b"abc");
    }

    #[test]
    fn a_followed_kind_with_a_bad_schema_names_the_document() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: 7}\n";
        let err = Objects::from_yaml(text).expect_err("ports must be a list");
        assert!(err.to_string().contains("document 0 (Service \"web\")"), "{err}");
    }
}
