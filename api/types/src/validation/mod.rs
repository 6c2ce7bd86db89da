//! Validation of API objects, reporting every error with its field path, as the Kubernetes API server does.
//!
//! Each kind has a `validate_*` function over its k8s-openapi type; [`crate::normalize`] picks the right one.

mod common;
mod config;
mod network;
mod network_policy;
mod pod;
mod workloads;

pub use common::{
    NameRule, is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_iana_svc_name, validate_object_meta,
};
pub use config::*;
pub use network::*;
pub use network_policy::validate_network_policy;
pub use pod::{validate_pod, validate_pod_spec, validate_pod_template, validate_pod_template_with_claims};
pub use workloads::*;

use std::fmt;

/// What is wrong with a field (`metav1.CauseType` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A required field is missing.
    Required,
    /// A value is malformed or out of range.
    Invalid,
    /// A value is not one of the allowed ones.
    NotSupported,
    /// A value appears twice where it must be unique.
    Duplicate,
    /// A field may not be set (in this context).
    Forbidden,
    /// A value is too long.
    TooLong,
    /// Too many items or properties.
    TooMany,
}

impl ErrorKind {
    /// The `reason` of the `metav1.StatusCause`.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorKind::Required => "FieldValueRequired",
            ErrorKind::Invalid => "FieldValueInvalid",
            ErrorKind::NotSupported => "FieldValueNotSupported",
            ErrorKind::Duplicate => "FieldValueDuplicate",
            ErrorKind::Forbidden => "FieldValueForbidden",
            ErrorKind::TooLong => "FieldValueTooLong",
            ErrorKind::TooMany => "FieldValueTooMany",
        }
    }

    fn label(self) -> &'static str {
        match self {
            ErrorKind::Required => "Required value",
            ErrorKind::Invalid => "Invalid value",
            ErrorKind::NotSupported => "Unsupported value",
            ErrorKind::Duplicate => "Duplicate value",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::TooLong => "Too long",
            ErrorKind::TooMany => "Too many",
        }
    }
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
    /// What is wrong.
    pub kind: ErrorKind,
    /// The offending value, rendered, when there is one.
    pub value: Option<String>,
    /// A sentence a person can act on.
    pub detail: String,
}

impl FieldError {
    /// The cause message without the field (`Invalid value: -1: must be greater than or equal to 0`).
    pub fn message(&self) -> String {
        let mut m = self.kind.label().to_string();
        if let Some(v) = &self.value {
            m.push_str(": ");
            m.push_str(v);
        }
        if !self.detail.is_empty() {
            m.push_str(": ");
            m.push_str(&self.detail);
        }
        m
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

/// Every error found in one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorList(pub Vec<FieldError>);

impl ErrorList {
    /// Whether nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records an error.
    pub fn push(
        &mut self,
        field: impl Into<String>,
        kind: ErrorKind,
        value: Option<String>,
        detail: impl Into<String>,
    ) {
        self.0.push(FieldError { field: field.into(), kind, value, detail: detail.into() });
    }

    /// A required field is missing.
    pub fn required(&mut self, field: impl Into<String>, detail: impl Into<String>) {
        self.push(field, ErrorKind::Required, None, detail);
    }

    /// A value is invalid.
    pub fn invalid(&mut self, field: impl Into<String>, value: impl fmt::Display, detail: impl Into<String>) {
        self.push(field, ErrorKind::Invalid, Some(render(&value.to_string())), detail);
    }

    /// A value is not one of `allowed`.
    pub fn not_supported(&mut self, field: impl Into<String>, value: &str, allowed: &[&str]) {
        let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        self.push(
            field,
            ErrorKind::NotSupported,
            Some(format!("\"{value}\"")),
            format!("supported values: {}", list.join(", ")),
        );
    }

    /// A value appears twice.
    pub fn duplicate(&mut self, field: impl Into<String>, value: impl fmt::Display) {
        self.push(field, ErrorKind::Duplicate, Some(render(&value.to_string())), "");
    }

    /// A field may not be set.
    pub fn forbidden(&mut self, field: impl Into<String>, detail: impl Into<String>) {
        self.push(field, ErrorKind::Forbidden, None, detail);
    }

    /// `field` must not be negative.
    pub fn non_negative(&mut self, field: impl Into<String>, v: Option<i64>) {
        if let Some(v) = v.filter(|v| *v < 0) {
            self.invalid(field, v, "must be greater than or equal to 0");
        }
    }

    /// The whole list as the API server's message: `[a: …, b: …]` or a single error.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        if parts.len() == 1 { parts[0].clone() } else { format!("[{}]", parts.join(", ")) }
    }
}

fn render(v: &str) -> String {
    if v.parse::<f64>().is_ok() || v.starts_with('{') || v.starts_with('[') || v.starts_with("map[") {
        v.to_string()
    } else {
        format!("\"{v}\"")
    }
}
