//! Container lifecycle hooks (postStart, preStop): exec, httpGet and sleep handlers, run through the probe code.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};

use super::probes::{Target, probe_once};

/// The probe that performs a hook handler, or the sleep it asks for.
pub enum Hook {
    /// Run this like a probe.
    Probe(Box<Probe>),
    /// Sleep this long.
    Sleep(Duration),
}

/// Turns a handler into a [`Hook`].
pub fn hook(h: &LifecycleHandler) -> Option<Hook> {
    if let Some(s) = &h.sleep {
        return Some(Hook::Sleep(Duration::from_secs(u64::try_from(s.seconds).unwrap_or(0))));
    }
    if h.exec.is_none() && h.http_get.is_none() && h.tcp_socket.is_none() {
        return None;
    }
    Some(Hook::Probe(Box::new(Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        ..Default::default()
    })))
}

/// Runs a handler within `limit`; `Err` carries the failure message.
pub async fn run(h: &LifecycleHandler, c: &Container, target: &Target, limit: Duration) -> Result<(), String> {
    match hook(h) {
        None => Ok(()),
        Some(Hook::Sleep(d)) => {
            tokio::time::sleep(d.min(limit)).await;
            Ok(())
        }
        Some(Hook::Probe(p)) => probe_once(&p, c, target, limit.max(Duration::from_secs(1))).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ExecAction, SleepAction};

    #[test]
    fn handlers_become_probes_or_sleeps() {
        let exec =
            LifecycleHandler { exec: Some(ExecAction { command: Some(vec!["true".into()]) }), ..Default::default() };
        assert!(matches!(hook(&exec), Some(Hook::Probe(p)) if p.exec.is_some()));
        let sleep = LifecycleHandler { sleep: Some(SleepAction { seconds: 3 }), ..Default::default() };
        assert!(matches!(hook(&sleep), Some(Hook::Sleep(d)) if d == Duration::from_secs(3)));
        assert!(hook(&LifecycleHandler::default()).is_none());
    }
}
