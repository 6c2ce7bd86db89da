//! The Services and EndpointSlices the balancer follows, indexed by Service, with change detection: each update says
//! which Services it affects, so only those are recomputed and reprogrammed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    desired::{Limits, NodeIdentity, service_name, service_tables, slice_service},
    model::{ServiceName, ServiceTables},
};

/// Namespace and name of an EndpointSlice.
pub type SliceName = (String, String);

fn slice_name(slice: &EndpointSlice) -> SliceName {
    (
        slice.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        slice.metadata.name.clone().unwrap_or_default(),
    )
}

/// Services and EndpointSlices by name.
#[derive(Debug, Default, Clone)]
pub struct ObjectStore {
    services: HashMap<ServiceName, Service>,
    slices: HashMap<SliceName, EndpointSlice>,
    by_service: HashMap<ServiceName, BTreeSet<SliceName>>,
}

impl ObjectStore {
    /// Adds or replaces a Service; returns it if it changed.
    pub fn apply_service(&mut self, svc: Service) -> Option<ServiceName> {
        let name = service_name(&svc);
        if self.services.get(&name) == Some(&svc) {
            return None;
        }
        self.services.insert(name.clone(), svc);
        Some(name)
    }

    /// Removes a Service; returns it if it was there.
    pub fn delete_service(&mut self, name: &ServiceName) -> Option<ServiceName> {
        self.services.remove(name).map(|_| name.clone())
    }

    /// Adds or replaces an EndpointSlice; returns the Services it affects (before and after).
    pub fn apply_slice(&mut self, slice: EndpointSlice) -> BTreeSet<ServiceName> {
        let key = slice_name(&slice);
        let mut affected = BTreeSet::new();
        if self.slices.get(&key) == Some(&slice) {
            return affected;
        }
        if let Some(owner) = self.slices.get(&key).and_then(slice_service) {
            self.unindex(&owner, &key);
            affected.insert(owner);
        }
        if let Some(owner) = slice_service(&slice) {
            self.by_service.entry(owner.clone()).or_default().insert(key.clone());
            affected.insert(owner);
        }
        self.slices.insert(key, slice);
        affected
    }

    /// Removes an EndpointSlice; returns the Service it affected.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> BTreeSet<ServiceName> {
        let key = (namespace.to_string(), name.to_string());
        let mut affected = BTreeSet::new();
        if let Some(owner) = self.slices.remove(&key).as_ref().and_then(slice_service) {
            self.unindex(&owner, &key);
            affected.insert(owner);
        }
        affected
    }

    fn unindex(&mut self, owner: &ServiceName, key: &SliceName) {
        if let Some(set) = self.by_service.get_mut(owner) {
            set.remove(key);
            if set.is_empty() {
                self.by_service.remove(owner);
            }
        }
    }

    /// Replaces all Services (a full list); returns those that changed, appeared or disappeared.
    pub fn replace_services(&mut self, services: Vec<Service>) -> BTreeSet<ServiceName> {
        let mut changed = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for svc in services {
            seen.insert(service_name(&svc));
            changed.extend(self.apply_service(svc));
        }
        let gone: Vec<ServiceName> = self.services.keys().filter(|n| !seen.contains(*n)).cloned().collect();
        for name in gone {
            changed.extend(self.delete_service(&name));
        }
        changed
    }

    /// Replaces all EndpointSlices (a full list); returns the Services affected.
    pub fn replace_slices(&mut self, slices: Vec<EndpointSlice>) -> BTreeSet<ServiceName> {
        let mut changed = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for slice in slices {
            seen.insert(slice_name(&slice));
            changed.extend(self.apply_slice(slice));
        }
        let gone: Vec<SliceName> = self.slices.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for (ns, name) in gone {
            changed.extend(self.delete_slice(&ns, &name));
        }
        changed
    }

    /// Names of all Services.
    pub fn service_names(&self) -> BTreeSet<ServiceName> {
        self.services.keys().cloned().collect()
    }

    /// Number of Services and EndpointSlices.
    pub fn len(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }

    /// A Service by name.
    pub fn service(&self, name: &ServiceName) -> Option<&Service> {
        self.services.get(name)
    }

    /// The desired tables of one Service (`None` if it does not exist).
    pub fn tables(&self, name: &ServiceName, node: &NodeIdentity, limits: &Limits) -> Option<ServiceTables> {
        let svc = self.services.get(name)?;
        let slices: Vec<&EndpointSlice> =
            self.by_service.get(name).into_iter().flatten().filter_map(|k| self.slices.get(k)).collect();
        Some(service_tables(svc, &slices, node, limits))
    }

    /// The desired tables of every Service.
    pub fn all_tables(&self, node: &NodeIdentity, limits: &Limits) -> BTreeMap<ServiceName, ServiceTables> {
        self.services.keys().filter_map(|n| Some((n.clone(), self.tables(n, node, limits)?))).collect()
    }
}
