//! `skiff-api`: the Kubernetes-compatible API types Skiff speaks, and the pure logic around them.
//!
//! The object types themselves are [`k8s_openapi`]'s, generated from the Kubernetes OpenAPI, so JSON and YAML
//! match Kubernetes byte for byte. This crate adds what they lack, all without I/O:
//!
//! - [`yaml`]: multi-document YAML/JSON manifests into objects, with the document index in errors;
//! - [`quantity`]: resource quantities (`250m`, `128Mi`) with exact arithmetic;
//! - [`selector`]: label selectors (equality and set-based) and field selectors;
//! - [`registry`]: every built-in resource with its group, version, kind, scope, short names and categories;
//! - [`validation`] and [`defaults`]: what the API server checks and fills in, per kind, with field paths;
//! - [`normalize`]: decode, default and validate a built-in object as the API server stores it;
//! - [`schema`]: the vendored Kubernetes type definitions (protobuf descriptors and notes from the Go types);
//! - [`protobuf`]: protobuf request bodies of every built-in kind, decoded into the JSON they stand for;
//! - [`smp`]: strategic merge patch with the merge keys of every built-in type, from [`schema`];
//! - [`structural`]: custom resources against their CRD's structural schema (pruning, defaults, validation);
//! - [`meta`]: helpers over the `metadata` of an untyped object;
//! - [`references`]: the Secrets, ConfigMaps and claims a pod names (what its node may read).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use k8s_openapi;

pub mod defaults;
pub mod loadbalancer;
pub mod meta;
pub mod normalize;
pub mod protobuf;
pub mod qos;
pub mod quantity;
pub mod references;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod smp;
pub mod structural;
pub mod validation;
pub mod yaml;
