//! `network_policy_flows` counters, read from the pinned counters map at scrape time.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::counter::ConstCounter,
};

use super::{maps::PolicyMaps, model::PolicyNames, report::flow_rows};

/// A collector of new-flow verdicts per pod, direction, verdict and policy.
#[derive(Debug)]
pub struct FlowCollector {
    pin_dir: PathBuf,
    maps: Mutex<Option<PolicyMaps>>,
    names: Arc<RwLock<Arc<PolicyNames>>>,
}

impl FlowCollector {
    /// A collector over the maps under `pin_dir` (opened at the first scrape that finds them), naming numbers with
    /// what `names` holds at scrape time.
    pub fn new(pin_dir: PathBuf, names: Arc<RwLock<Arc<PolicyNames>>>) -> Self {
        Self { pin_dir, maps: Mutex::new(None), names }
    }
}

impl Collector for FlowCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Ok(mut guard) = self.maps.lock() else { return Ok(()) };
        if guard.is_none() {
            *guard = PolicyMaps::open(&self.pin_dir).ok();
        }
        let Some(maps) = guard.as_ref() else { return Ok(()) };
        let Ok(stats) = maps.stats() else { return Ok(()) };
        let names = self.names.read().map(|n| Arc::clone(&n)).unwrap_or_default();
        let probe = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "network_policy_flows",
            "New flows judged by NetworkPolicy, by pod, direction, verdict and the policy that allowed them",
            None,
            probe.metric_type(),
        )?;
        for (labels, n) in flow_rows(&stats, &names) {
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
