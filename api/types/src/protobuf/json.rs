//! A decoded protobuf message → the JSON the Kubernetes API server would have made of the same Go object.
//!
//! The rules, from how gogo-protobuf and `encoding/json` treat the Go types:
//! - a non-pointer Go field is always on the wire, so its zero value (`""`, `0`, `false`, a zero `Time`) means "not
//!   set" and is left out; a pointer field is only on the wire when set, so its zero value is kept (`replicas: 0`);
//! - a message field on the wire is kept even when empty (`emptyDir: {}`, `status: {}`);
//! - lists and maps are left out when empty; an embedded (`,inline`) struct's fields join its parent's object;
//! - Kubernetes' own types have their own JSON: Time and MicroTime are RFC 3339 strings, Duration a Go duration
//!   string, IntOrString a number or a string, Quantity a string, RawExtension/JSON/FieldsV1 the JSON they hold.
//!
//! Nesting depth is bounded by the protobuf decoder's recursion limit (100), so the walk cannot overflow the stack.

use base64::Engine;
use prost_reflect::{DynamicMessage, FieldDescriptor, MapKey, ReflectMessage, Value as Pb};
use serde_json::{Map, Number, Value, json};

use super::ProtobufError;
use crate::schema::SCHEMA;

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const EXT: &str = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1";

/// The JSON object for a decoded message.
pub fn message(msg: &DynamicMessage) -> Result<Value, ProtobufError> {
    let desc = msg.descriptor();
    let name = desc.full_name().to_string();
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        let note = SCHEMA.note(&name, field.number());
        let pointer = note.is_some_and(|n| n.pointer);
        let Some(v) = field_value(&field, value, pointer)? else { continue };
        if note.is_some_and(|n| n.inline) {
            if let Value::Object(inner) = v {
                out.extend(inner);
            }
            continue;
        }
        let key = note.and_then(|n| n.json_name.clone()).unwrap_or_else(|| field.name().to_string());
        out.insert(key, v);
    }
    Ok(Value::Object(out))
}

/// A field's JSON value, or `None` when Go's JSON would leave it out.
fn field_value(field: &FieldDescriptor, value: &Pb, pointer: bool) -> Result<Option<Value>, ProtobufError> {
    match value {
        Pb::List(items) => {
            if items.is_empty() {
                return Ok(None);
            }
            let list = items.iter().map(|i| element(field, i)).collect::<Result<Vec<_>, _>>()?;
            Ok(Some(Value::Array(list)))
        }
        Pb::Map(entries) => {
            if entries.is_empty() {
                return Ok(None);
            }
            let mut keys: Vec<&MapKey> = entries.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(map_key(k), element(field, &entries[k])?);
            }
            Ok(Some(Value::Object(out)))
        }
        Pb::Message(m) => {
            let v = special(m)?;
            match v {
                Some(Special::Zero) if !pointer => Ok(None),
                Some(Special::Zero) => Ok(Some(zero_of(m)?)),
                Some(Special::Value(v)) => Ok(Some(v)),
                None => Ok(Some(message(m)?)),
            }
        }
        scalar => {
            if is_zero(scalar) && !pointer {
                return Ok(None);
            }
            scalar_value(scalar).map(Some)
        }
    }
}

/// A list element or map value: always present, whatever its value.
fn element(field: &FieldDescriptor, value: &Pb) -> Result<Value, ProtobufError> {
    match value {
        Pb::Message(m) => match special(m)? {
            Some(Special::Value(v)) => Ok(v),
            Some(Special::Zero) => zero_of(m),
            None => message(m),
        },
        Pb::List(_) | Pb::Map(_) => Err(ProtobufError::new(format!("nested collection in field {}", field.name()))),
        scalar => scalar_value(scalar),
    }
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::String(s) => s.clone(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

fn is_zero(v: &Pb) -> bool {
    match v {
        Pb::Bool(b) => !b,
        Pb::I32(n) => *n == 0,
        Pb::I64(n) => *n == 0,
        Pb::U32(n) => *n == 0,
        Pb::U64(n) => *n == 0,
        Pb::F32(n) => *n == 0.0,
        Pb::F64(n) => *n == 0.0,
        Pb::String(s) => s.is_empty(),
        Pb::Bytes(b) => b.is_empty(),
        Pb::EnumNumber(n) => *n == 0,
        Pb::Message(_) | Pb::List(_) | Pb::Map(_) => false,
    }
}

fn scalar_value(v: &Pb) -> Result<Value, ProtobufError> {
    Ok(match v {
        Pb::Bool(b) => json!(b),
        Pb::I32(n) => json!(n),
        Pb::I64(n) => json!(n),
        Pb::U32(n) => json!(n),
        Pb::U64(n) => json!(n),
        Pb::F32(n) => float(f64::from(*n))?,
        Pb::F64(n) => float(*n)?,
        Pb::String(s) => json!(s),
        Pb::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Pb::EnumNumber(n) => json!(n),
        Pb::Message(_) | Pb::List(_) | Pb::Map(_) => unreachable!("scalar_value is called on scalars only"),
    })
}

fn float(f: f64) -> Result<Value, ProtobufError> {
    Number::from_f64(f).map(Value::Number).ok_or_else(|| ProtobufError::new("a number is NaN or infinite"))
}

/// Kubernetes' types with a JSON form of their own.
enum Special {
    /// The type's zero value (left out unless the field is a pointer).
    Zero,
    Value(Value),
}

/// Field `number` of `m`, when it is on the wire.
pub(super) fn get(m: &DynamicMessage, number: u32) -> Option<Pb> {
    let f = m.descriptor().get_field(number)?;
    m.has_field(&f).then(|| m.get_field(&f).into_owned())
}

fn int(m: &DynamicMessage, number: u32) -> i64 {
    match get(m, number) {
        Some(Pb::I64(n)) => n,
        Some(Pb::I32(n)) => i64::from(n),
        _ => 0,
    }
}

/// String field `number` of `m` (`""` when absent).
pub(super) fn text(m: &DynamicMessage, number: u32) -> String {
    match get(m, number) {
        Some(Pb::String(s)) => s,
        _ => String::new(),
    }
}

fn raw_json(m: &DynamicMessage, number: u32, what: &str) -> Result<Option<Special>, ProtobufError> {
    let Some(Pb::Bytes(b)) = get(m, number) else { return Ok(Some(Special::Zero)) };
    if b.is_empty() {
        return Ok(Some(Special::Zero));
    }
    serde_json::from_slice(&b)
        .map(|v| Some(Special::Value(v)))
        .map_err(|e| ProtobufError::new(format!("{what} does not hold JSON: {e}")))
}

fn special(m: &DynamicMessage) -> Result<Option<Special>, ProtobufError> {
    let desc = m.descriptor();
    let name = desc.full_name();
    let value = |v: Value| Ok(Some(Special::Value(v)));
    match name.strip_prefix("k8s.io.apimachinery.pkg.") {
        Some("apis.meta.v1.Time") | Some("apis.meta.v1.MicroTime") => {
            let (secs, nanos) = (int(m, 1), int(m, 2));
            if secs == 0 && nanos == 0 {
                return Ok(Some(Special::Zero));
            }
            let micro = name.ends_with("MicroTime");
            value(json!(super::time::rfc3339(secs, nanos, micro)?))
        }
        Some("apis.meta.v1.Duration") => match int(m, 1) {
            0 => Ok(Some(Special::Zero)),
            n => value(json!(super::time::go_duration(n))),
        },
        Some("util.intstr.IntOrString") => match int(m, 1) {
            0 if int(m, 2) == 0 => Ok(Some(Special::Zero)),
            0 => value(json!(int(m, 2))),
            _ => value(json!(text(m, 3))),
        },
        Some("api.resource.Quantity") => match text(m, 1) {
            s if s.is_empty() => Ok(Some(Special::Zero)),
            s => value(json!(s)),
        },
        Some("runtime.RawExtension") => raw_json(m, 1, "a RawExtension"),
        Some("apis.meta.v1.FieldsV1") => raw_json(m, 1, "FieldsV1"),
        _ if name == format!("{EXT}.JSON") => raw_json(m, 1, "a JSON value"),
        _ if name.starts_with(EXT) => schema_union(m, name.strip_prefix(EXT).unwrap_or_default()),
        _ if SCHEMA.is_list(name) => {
            let field = desc.get_field(1).ok_or_else(|| ProtobufError::new(format!("{name} has no items")))?;
            match m.get_field(&field).as_ref() {
                Pb::List(items) => {
                    value(Value::Array(items.iter().map(|i| element(&field, i)).collect::<Result<Vec<_>, _>>()?))
                }
                _ => value(json!([])),
            }
        }
        _ => Ok(None),
    }
}

/// The JSONSchemaPropsOr… unions of CRD schemas: the schema when set, else the other member.
fn schema_union(m: &DynamicMessage, short: &str) -> Result<Option<Special>, ProtobufError> {
    let schema = |n: u32| match get(m, n) {
        Some(Pb::Message(s)) => message(&s).map(Some),
        _ => Ok(None),
    };
    let other = |n: u32| -> Result<Value, ProtobufError> {
        let f = m.descriptor().get_field(n).ok_or_else(|| ProtobufError::new(format!("{short} lacks field {n}")))?;
        match m.get_field(&f).as_ref() {
            Pb::List(items) => Ok(Value::Array(items.iter().map(|i| element(&f, i)).collect::<Result<_, _>>()?)),
            Pb::Bool(b) => Ok(json!(b)),
            _ => Ok(Value::Null),
        }
    };
    let v = match short {
        ".JSONSchemaPropsOrArray" => schema(1)?.map_or_else(|| other(2), Ok)?,
        ".JSONSchemaPropsOrBool" => schema(2)?.map_or_else(|| other(1), Ok)?,
        ".JSONSchemaPropsOrStringArray" => schema(1)?.map_or_else(|| other(2), Ok)?,
        _ => return Ok(None),
    };
    Ok(Some(Special::Value(v)))
}

/// The JSON of a special type's zero value, for a pointer field that was set to it.
fn zero_of(m: &DynamicMessage) -> Result<Value, ProtobufError> {
    let name = m.descriptor().full_name().to_string();
    Ok(match name.as_str() {
        n if n == format!("{META}.Time") => json!(super::time::rfc3339(0, 0, false)?),
        n if n == format!("{META}.MicroTime") => json!(super::time::rfc3339(0, 0, true)?),
        n if n == format!("{META}.Duration") => json!("0s"),
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => json!(0),
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => json!("0"),
        _ => Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use prost_reflect::Kind;

    use super::*;

    #[test]
    fn fields_kind_lookup_is_by_number_not_name() {
        let d = SCHEMA.message_by_name("k8s.io.api.core.v1.ServicePort").expect("ServicePort");
        assert!(matches!(d.get_field(5).map(|f| f.kind()), Some(Kind::Int32)), "nodePort is field 5");
    }
}
