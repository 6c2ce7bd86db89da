//! Multi-document YAML (and JSON) manifests.
//!
//! `kubectl apply -f` accepts a stream of YAML documents separated by `---`, JSON objects, and `List` objects whose
//! `items` are applied one by one. [`parse_documents`] does the same and reports which document failed.

use serde_json::Value;

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not valid YAML or JSON.
    #[error("document {index}: invalid YAML: {message}")]
    Syntax {
        /// Zero-based index of the document in the stream (best effort for syntax errors).
        index: usize,
        /// What the parser said.
        message: String,
    },
    /// A document parsed but is not a Kubernetes object.
    #[error("document {index}: {reason}")]
    NotAnObject {
        /// Zero-based index of the document in the stream.
        index: usize,
        /// What is missing.
        reason: String,
    },
}

/// Parses a YAML or JSON stream into Kubernetes objects, skipping empty documents and flattening `*List` kinds.
///
/// Every returned value is a JSON object with non-empty string `apiVersion` and `kind`.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, ManifestError> {
    let docs: Vec<Value> = if text.trim_start().starts_with('{') || text.trim_start().starts_with('[') {
        // JSON: one value, or several concatenated ones.
        let mut out = Vec::new();
        for (index, v) in serde_json::Deserializer::from_str(text).into_iter::<Value>().enumerate() {
            out.push(v.map_err(|e| ManifestError::Syntax { index, message: e.to_string() })?);
        }
        out
    } else {
        serde_saphyr::from_multiple::<Value>(text)
            .map_err(|e| ManifestError::Syntax { index: 0, message: e.to_string() })?
    };
    let mut objects = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        flatten(index, doc, &mut objects)?;
    }
    Ok(objects)
}

fn flatten(index: usize, doc: Value, out: &mut Vec<Value>) -> Result<(), ManifestError> {
    let Value::Object(map) = &doc else {
        return Err(ManifestError::NotAnObject { index, reason: "expected a mapping at the top level".into() });
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind.is_empty() {
        return Err(ManifestError::NotAnObject { index, reason: "Object 'Kind' is missing".into() });
    }
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if api_version.is_empty() {
        return Err(ManifestError::NotAnObject {
            index,
            reason: format!("Object 'apiVersion' is missing in kind {kind}"),
        });
    }
    if kind.ends_with("List") && map.get("items").is_some_and(Value::is_array) {
        if let Some(Value::Array(items)) = map.get("items") {
            for item in items.clone() {
                flatten(index, item, out)?;
            }
        }
        return Ok(());
    }
    out.push(doc);
    Ok(())
}

/// Parses a stream and converts every object to the typed `T` (for tools that know what they read).
pub fn parse_typed<T: serde::de::DeserializeOwned>(text: &str) -> Result<Vec<T>, ManifestError> {
    parse_documents(text)?
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            serde_json::from_value(v).map_err(|e| ManifestError::NotAnObject { index, reason: e.to_string() })
        })
        .collect()
}

/// Renders a value as YAML (for `-o yaml`-style output of Skiff's own CLI).
pub fn to_yaml(value: &Value) -> Result<String, ManifestError> {
    serde_saphyr::to_string(value).map_err(|e| ManifestError::Syntax { index: 0, message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_are_read_and_empty_ones_skipped() {
        let text = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\nspec:\n  ports:\n  - port: 80\n    targetPort: \"http\"\n";
        let docs = parse_documents(text).expect("valid stream");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["spec"]["ports"][0]["port"], 80);
        assert_eq!(docs[1]["spec"]["ports"][0]["targetPort"], "http");
    }

    #[test]
    fn lists_are_flattened() {
        let text =
            r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}]}"#;
        let docs = parse_documents(text).expect("valid list");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["kind"], "Pod");
    }

    #[test]
    fn a_document_without_kind_is_rejected_with_its_index() {
        let err = parse_documents("apiVersion: v1\nkind: Pod\n---\napiVersion: v1\n").expect_err("no kind");
        assert!(err.to_string().contains("document 1"), "{err}");
    }

    #[test]
    fn broken_yaml_is_a_syntax_error() {
        assert!(matches!(parse_documents("a: [1, 2\n"), Err(ManifestError::Syntax { .. })));
    }
}
