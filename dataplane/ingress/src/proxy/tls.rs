//! TLS on the HTTPS listener: certificates chosen by SNI from the live table, handshake counters.
//!
//! The resolver loads the current table for every ClientHello, so a certificate change applies to the next
//! handshake while established connections keep the certificate they negotiated: rotation drops nothing.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::runtime::metrics::{Metrics, TlsLabels};
use crate::table::RouteTable;

/// Chooses the certificate for a ClientHello from the live table.
#[derive(Debug)]
pub struct SniResolver {
    table: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<Metrics>,
}

impl SniResolver {
    /// A resolver over `table`.
    pub fn new(table: Arc<ArcSwap<RouteTable>>, metrics: Arc<Metrics>) -> Self {
        SniResolver { table, metrics }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.metrics.tls_started.inc();
        let table = self.table.load();
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        match table.certs.find(sni.as_deref()) {
            Some(c) => Some(c.key.clone()),
            None => {
                self.metrics.tls_default_cert.inc();
                Some(table.certs.resolve(None).key.clone())
            }
        }
    }
}

/// Counts completed handshakes by protocol version.
#[derive(Debug)]
pub struct HandshakeCounter {
    metrics: Arc<Metrics>,
}

impl HandshakeCounter {
    /// A counter recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        HandshakeCounter { metrics }
    }
}

#[async_trait]
impl TlsAccept for HandshakeCounter {
    async fn handshake_complete_callback(&self, tls: &TlsRef) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let version = tls.version().unwrap_or("unknown").replace('_', ".");
        self.metrics.tls_handshakes.get_or_create(&TlsLabels { version }).inc();
        None
    }
}
