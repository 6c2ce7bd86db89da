//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded for every built-in kind.
//!
//! kubectl sends the objects its generators build (`kubectl create deployment|service|job|…`, `run`, `expose`,
//! `autoscale`) as protobuf and has no JSON fallback (shared/docs/kubectl-wire.md §12). The body is the `k8s\0`
//! envelope: a `runtime.Unknown` whose `typeMeta` names the kind and whose `raw` field holds the object's message.
//! The message is decoded dynamically against the descriptor set compiled from the vendored `generated.proto` files
//! of the served Kubernetes version (api/vendor/kubernetes, refreshed by `scripts/vendor-k8s-api`), then turned into
//! the same JSON a JSON body would have carried ([`json`]). Answers stay JSON.
//!
//! # Guarantees
//! - No kind-specific code: a kind is decodable when its message is in the vendored schema.
//! - Bad input is an error, never a panic: truncated or malformed messages, nesting deeper than the decoder's
//!   recursion limit, raw JSON members that are not JSON, and times out of range.

mod json;
mod time;

use prost_reflect::{DynamicMessage, Value as Pb};

use json::{get as field, text as string};
use serde_json::{Map, Value};

use crate::schema::SCHEMA;

/// The protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Why a protobuf body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    /// The body is not a well-formed protobuf object.
    #[error("invalid protobuf body: {0}")]
    Malformed(String),
    /// The envelope names a kind the vendored schema does not have (a custom resource, or an unknown group).
    #[error("no protobuf schema for {kind} ({api_version}); send it as JSON or YAML")]
    UnknownKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
}

impl ProtobufError {
    pub(crate) fn new(m: impl Into<String>) -> Self {
        Self::Malformed(m.into())
    }
}

/// Decodes a protobuf request body into the JSON object it represents.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body.strip_prefix(b"k8s\0").ok_or_else(|| ProtobufError::new("missing the k8s\\0 prefix"))?;
    let unknown = SCHEMA
        .message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
        .expect("the vendored schema has runtime.Unknown");
    let envelope = DynamicMessage::decode(unknown, rest).map_err(|e| ProtobufError::new(e.to_string()))?;
    let (api_version, kind) = match field(&envelope, 1) {
        Some(Pb::Message(tm)) => (string(&tm, 1), string(&tm, 2)),
        _ => (String::new(), String::new()),
    };
    let encoding = string(&envelope, 3);
    if !encoding.is_empty() {
        return Err(ProtobufError::new(format!("unsupported contentEncoding {encoding:?}")));
    }
    let raw = match field(&envelope, 2) {
        Some(Pb::Bytes(b)) => b,
        _ => Default::default(),
    };
    if api_version.is_empty() || kind.is_empty() {
        return Err(ProtobufError::new("the envelope does not name apiVersion and kind"));
    }
    let desc = SCHEMA
        .message(&api_version, &kind)
        .ok_or_else(|| ProtobufError::UnknownKind { api_version: api_version.clone(), kind: kind.clone() })?;
    let msg = DynamicMessage::decode(desc, raw).map_err(|e| ProtobufError::new(format!("{kind}: {e}")))?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    if let Value::Object(fields) = json::message(&msg)? {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

/// Encodes a JSON object into the envelope kubectl would send (tests build bodies with it).
///
/// Zero values in `object` stay on the wire, as Go's encoder writes its non-pointer fields.
#[cfg(test)]
pub(crate) fn encode_for_test(object: &Value) -> Vec<u8> {
    use prost::Message;
    let av = object["apiVersion"].as_str().expect("apiVersion");
    let kind = object["kind"].as_str().expect("kind");
    let desc = SCHEMA.message(av, kind).expect("a known kind");
    let mut fields = object.clone();
    let o = fields.as_object_mut().expect("an object");
    o.remove("apiVersion");
    o.remove("kind");
    let msg = DynamicMessage::deserialize(desc, fields).expect("the object fits the schema");
    let unknown = SCHEMA.message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown").expect("Unknown");
    let envelope = DynamicMessage::deserialize(
        unknown,
        serde_json::json!({
            "typeMeta": {"apiVersion": av, "kind": kind},
            "raw": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, msg.encode_to_vec()),
        }),
    )
    .expect("an envelope");
    let mut body = b"k8s\0".to_vec();
    body.extend(envelope.encode_to_vec());
    body
}

#[cfg(test)]
mod tests;
