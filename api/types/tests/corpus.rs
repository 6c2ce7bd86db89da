//! Real manifests from the Kubernetes documentation (under `tests/corpus/`) round-trip through their typed form
//! unchanged, decode strictly (no unknown fields), and are valid once defaulted.

use std::path::Path;

use serde_json::Value;
use skiff_api::normalize::{FieldValidation, Steps, normalize};

fn corpus() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("corpus dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        for (i, doc) in skiff_api::yaml::parse_documents(&text).expect("valid YAML").into_iter().enumerate() {
            out.push((format!("{}#{i}", f.file_name().expect("file").to_string_lossy()), doc));
        }
    }
    assert!(out.len() >= 25, "the corpus has {} objects", out.len());
    out
}

#[test]
fn documentation_manifests_round_trip_unchanged() {
    for (name, doc) in corpus() {
        let steps = Steps { defaults: false, validate: false, fields: FieldValidation::Strict };
        let n = normalize(&doc, steps)
            .unwrap_or_else(|| panic!("{name}: not a built-in kind"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut expected = doc;
        // Secret data written as YAML blocks carries line breaks that Kubernetes' base64 decoder skips.
        if let Some(Value::Object(data)) = expected.get_mut("data").filter(|_| n.object["kind"] == "Secret") {
            for v in data.values_mut() {
                *v = Value::from(v.as_str().unwrap_or_default().replace('\n', ""));
            }
        }
        assert_eq!(n.object, expected, "{name} changed in its round trip");
    }
}

#[test]
fn documentation_manifests_are_valid_once_defaulted() {
    for (name, mut doc) in corpus() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let cluster_scoped =
            ["Namespace", "PersistentVolume", "IngressClass", "CustomResourceDefinition"].contains(&kind.as_str());
        if !cluster_scoped && doc["metadata"].get("namespace").is_none() {
            doc["metadata"]["namespace"] = Value::from("default");
        }
        let n = normalize(&doc, Steps::default()).expect("built-in");
        assert!(n.is_ok(), "{name}: {}", n.err().map(|e| e.to_string()).unwrap_or_default());
    }
}
