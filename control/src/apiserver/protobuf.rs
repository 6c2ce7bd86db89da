//! Decoding of the Kubernetes protobuf envelope for the kinds `kubectl create secret|configmap|namespace` send
//! (kubectl has no JSON fallback for them; see shared/docs/kubectl-wire.md §12).
//!
//! The envelope is `k8s\0` followed by a `runtime.Unknown` whose `raw` field is the object message. Only the fields
//! those generators set are decoded; anything else in the message is skipped.

use base64::Engine;
use serde_json::{Map, Value, json};

/// The protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Why a protobuf body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid protobuf body: {0}")]
pub struct ProtobufError(String);

fn err(m: &str) -> ProtobufError {
    ProtobufError(m.to_string())
}

/// One decoded field: its number and its value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or_else(|| err("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err("varint too long"))
    }

    fn next(&mut self) -> Result<Option<(u32, Field<'a>)>, ProtobufError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wire) = ((key >> 3) as u32, key & 7);
        let field = match wire {
            0 => Field::Varint(self.varint()?),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if self.buf.len() < n {
                    return Err(err("truncated fixed field"));
                }
                self.buf = &self.buf[n..];
                return self.next();
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| err("length overflow"))?;
                if self.buf.len() < len {
                    return Err(err("truncated length-delimited field"));
                }
                let (b, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(b)
            }
            _ => return Err(err("unsupported wire type")),
        };
        Ok(Some((num, field)))
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u32, Field<'_>)>, ProtobufError> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

fn string(b: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(b.to_vec()).map_err(|_| err("string field is not UTF-8"))
}

fn map_entry(b: &[u8]) -> Result<(String, Vec<u8>), ProtobufError> {
    let (mut k, mut v) = (String::new(), Vec::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = string(x)?,
            (2, Field::Bytes(x)) => v = x.to_vec(),
            _ => {}
        }
    }
    Ok((k, v))
}

fn object_meta(b: &[u8]) -> Result<Value, ProtobufError> {
    let mut m = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => _ = m.insert("name".into(), json!(string(x)?)),
            (2, Field::Bytes(x)) => _ = m.insert("generateName".into(), json!(string(x)?)),
            (3, Field::Bytes(x)) => _ = m.insert("namespace".into(), json!(string(x)?)),
            (11, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                labels.insert(k, json!(string(&v)?));
            }
            (12, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                annotations.insert(k, json!(string(&v)?));
            }
            (14, Field::Bytes(x)) => finalizers.push(json!(string(x)?)),
            _ => {}
        }
    }
    m.retain(|_, v| v.as_str().is_some_and(|s| !s.is_empty()));
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

fn secret(raw: &[u8]) -> Result<Value, ProtobufError> {
    let mut obj = json!({"apiVersion": "v1", "kind": "Secret"});
    let (mut data, mut string_data) = (Map::new(), Map::new());
    for (n, f) in fields(raw)? {
        match (n, f) {
            (1, Field::Bytes(x)) => obj["metadata"] = object_meta(x)?,
            (2, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(v)));
            }
            (3, Field::Bytes(x)) => obj["type"] = json!(string(x)?),
            (4, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                string_data.insert(k, json!(string(&v)?));
            }
            (5, Field::Varint(v)) => obj["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        obj["data"] = Value::Object(data);
    }
    if !string_data.is_empty() {
        obj["stringData"] = Value::Object(string_data);
    }
    if obj.get("type").and_then(Value::as_str) == Some("") {
        obj.as_object_mut().expect("an object").remove("type");
    }
    Ok(obj)
}

fn config_map(raw: &[u8]) -> Result<Value, ProtobufError> {
    let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap"});
    let (mut data, mut binary) = (Map::new(), Map::new());
    for (n, f) in fields(raw)? {
        match (n, f) {
            (1, Field::Bytes(x)) => obj["metadata"] = object_meta(x)?,
            (2, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                data.insert(k, json!(string(&v)?));
            }
            (3, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                binary.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(v)));
            }
            (4, Field::Varint(v)) => obj["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        obj["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        obj["binaryData"] = Value::Object(binary);
    }
    Ok(obj)
}

fn namespace(raw: &[u8]) -> Result<Value, ProtobufError> {
    let mut obj = json!({"apiVersion": "v1", "kind": "Namespace"});
    for (n, f) in fields(raw)? {
        if let (1, Field::Bytes(x)) = (n, f) {
            obj["metadata"] = object_meta(x)?;
        }
    }
    Ok(obj)
}

/// Decodes a protobuf request body into the JSON object it represents.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body.strip_prefix(b"k8s\0").ok_or_else(|| err("missing the k8s\\0 prefix"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm)? {
                    match (tn, tf) {
                        (1, Field::Bytes(x)) => api_version = string(x)?,
                        (2, Field::Bytes(x)) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret") => secret(raw),
        ("v1", "ConfigMap") => config_map(raw),
        ("v1", "Namespace") => namespace(raw),
        (av, k) => Err(ProtobufError(format!(
            "protobuf bodies are accepted for Secret, ConfigMap and Namespace; for {k} ({av}) send JSON, e.g. `kubectl create … --dry-run=client -o yaml | kubectl apply -f -`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(n: u32, wire: u8) -> u8 {
        ((n << 3) as u8) | wire
    }

    fn ld(n: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![tag(n, 2), payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = ld(1, k.as_bytes());
        e.extend(ld(2, v));
        e
    }

    #[test]
    fn a_tls_secret_from_kubectl_create_decodes() {
        let mut meta = ld(1, b"tls");
        meta.extend(ld(3, b"default"));
        let mut raw = ld(1, &meta);
        raw.extend(ld(2, &entry("tls.crt", b"CERT")));
        raw.extend(ld(2, &entry("tls.key", b"KEY")));
        raw.extend(ld(3, b"kubernetes.io/tls"));
        let mut tm = ld(1, b"v1");
        tm.extend(ld(2, b"Secret"));
        let mut unknown = ld(1, &tm);
        unknown.extend(ld(2, &raw));
        let mut body = b"k8s\0".to_vec();
        body.extend(unknown);
        let obj = decode(&body).expect("decodes");
        assert_eq!(obj["metadata"]["name"], "tls");
        assert_eq!(obj["type"], "kubernetes.io/tls");
        assert_eq!(obj["data"]["tls.crt"], base64::engine::general_purpose::STANDARD.encode("CERT"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"k8s\0\xff\xff\xff").is_err());
        assert!(decode(b"nope").is_err());
        let mut tm = ld(1, b"apps/v1");
        tm.extend(ld(2, b"Deployment"));
        let mut body = b"k8s\0".to_vec();
        body.extend(ld(1, &tm));
        assert!(decode(&body).expect_err("unsupported kind").to_string().contains("send JSON"));
    }
}
