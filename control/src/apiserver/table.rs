//! `meta.k8s.io/v1` Tables: what `kubectl get` prints, with the columns a real API server sends for each kind
//! (see [`super::columns`]).

use std::borrow::Cow;

use serde_json::{Value, json};

use super::columns;
use skiff_api::registry::ResourceInfo;

/// One column definition.
#[derive(Debug, Clone)]
pub struct Column {
    /// Header (kubectl upper-cases it).
    pub name: Cow<'static, str>,
    /// `string`, `integer`, `number`, `boolean`, `date`.
    pub type_: Cow<'static, str>,
    /// `name` for the name column, otherwise empty.
    pub format: &'static str,
    /// 0: always; 1: `-o wide`.
    pub priority: i32,
}

/// A column of type string shown always.
pub const fn col(name: &'static str) -> Column {
    Column { name: Cow::Borrowed(name), type_: Cow::Borrowed("string"), format: "", priority: 0 }
}

/// An integer column shown always.
pub const fn int(name: &'static str) -> Column {
    Column { name: Cow::Borrowed(name), type_: Cow::Borrowed("integer"), format: "", priority: 0 }
}

/// A column shown with `-o wide`.
pub const fn wide(name: &'static str) -> Column {
    Column { name: Cow::Borrowed(name), type_: Cow::Borrowed("string"), format: "", priority: 1 }
}

/// The name column.
pub const NAME: Column =
    Column { name: Cow::Borrowed("Name"), type_: Cow::Borrowed("string"), format: "name", priority: 0 };
/// The age column.
pub const AGE: Column = col("Age");

/// What to embed in each row (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl Include {
    /// Parses `?includeObject=`.
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// An object's metadata as a `PartialObjectMetadata` (metadata-only lists and watches, and Table rows).
pub fn partial_metadata(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or_default()})
}

/// Renders objects of `info` as a Table.
pub fn table(
    info: &ResourceInfo,
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    include: Include,
    with_columns: bool,
) -> Value {
    let rows = Rows::new(info, include);
    let made = objects.iter().map(|o| rows.row(o)).collect();
    rows.table(made, resource_version, continue_token, with_columns)
}

/// Makes a Table of `info`'s objects one row at a time, so that a listing can turn each object into its row as it
/// goes rather than hold every object decoded.
pub struct Rows {
    defs: Vec<Column>,
    cells: columns::Cells,
    include: Include,
}

impl Rows {
    /// The columns of `info`'s kind, each row embedding `include`.
    pub fn new(info: &ResourceInfo, include: Include) -> Rows {
        let (defs, cells) = columns::for_kind(info);
        Rows { defs, cells, include }
    }

    /// The row of one object.
    pub fn row(&self, o: &Value) -> Value {
        let mut row = json!({"cells": (self.cells)(o)});
        match self.include {
            Include::None => {}
            Include::Metadata => row["object"] = partial_metadata(o),
            Include::Object => row["object"] = o.clone(),
        }
        row
    }

    /// The Table of `rows` (the column definitions only `with_columns`).
    pub fn table(
        &self,
        rows: Vec<Value>,
        resource_version: &str,
        continue_token: Option<&str>,
        with_columns: bool,
    ) -> Value {
        let column_definitions: Vec<Value> = if with_columns {
            self.defs
                .iter()
                .map(|c| json!({"name": c.name, "type": c.type_, "format": c.format, "description": column_description(&c.name), "priority": c.priority}))
                .collect()
        } else {
            Vec::new()
        };
        let mut md = json!({"resourceVersion": resource_version});
        if let Some(c) = continue_token {
            md["continue"] = json!(c);
        }
        json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md, "columnDefinitions": column_definitions, "rows": rows})
    }
}

fn column_description(name: &str) -> String {
    match name {
        "Name" => "Name must be unique within a namespace.".into(),
        "Age" => "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
        other => other.to_string(),
    }
}

/// Renders a duration the way kubectl does (`14s`, `3m2s`, `5h`, `2d3h`, `45d`, `2y10d`).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let r = s % 60;
        return if r == 0 { format!("{m}m") } else { format!("{m}m{r}s") };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let r = (s % 3600) / 60;
        return if r == 0 { format!("{h}h") } else { format!("{h}h{r}m") };
    }
    if h < 48 {
        return format!("{h}h");
    }
    let d = h / 24;
    if h < 24 * 8 {
        let r = h % 24;
        return if r == 0 { format!("{d}d") } else { format!("{d}d{r}h") };
    }
    if d < 365 * 2 {
        return format!("{d}d");
    }
    let y = d / 365;
    let r = d % 365;
    if y < 8 && r != 0 { format!("{y}y{r}d") } else { format!("{y}y") }
}

/// Seconds since an RFC 3339 timestamp (0 when missing or malformed).
pub fn since(ts: Option<&Value>) -> Option<i64> {
    let t: jiff::Timestamp = ts?.as_str()?.parse().ok()?;
    Some(jiff::Timestamp::now().duration_since(t).as_secs())
}

/// The age cell of an object.
pub fn age(obj: &Value) -> Value {
    match since(obj.pointer("/metadata/creationTimestamp")) {
        Some(s) => json!(human_duration(s)),
        None => json!("<unknown>"),
    }
}

/// The name cell.
pub fn name(obj: &Value) -> Value {
    json!(skiff_api::meta::name(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_render_like_kubectl() {
        assert_eq!(human_duration(14), "14s");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(30 * 60), "30m");
        assert_eq!(human_duration(5 * 3600 + 120), "5h2m");
        assert_eq!(human_duration(20 * 3600), "20h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(45 * 86400), "45d");
    }
}
