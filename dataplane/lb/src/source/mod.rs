//! Where Services and EndpointSlices come from: a multi-document YAML file ([`file`]) or the API server ([`api`]).

pub mod api;
pub mod file;
