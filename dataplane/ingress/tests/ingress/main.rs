//! Integration tests of the ingress: real upstreams, real ingress, real clients (hyper, tungstenite, curl), all on
//! loopback. One test binary (linking Pingora once); each test starts its own ingress so configurations do not
//! interfere (a departure from "one system per binary": these tests change the whole configuration).

mod annotations;
mod differential;
mod fast_path;
mod harness;
mod hot_swap;
mod http2;
mod routing;
mod tls;
