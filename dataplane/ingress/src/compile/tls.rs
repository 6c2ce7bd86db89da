//! `spec.tls` of the Ingresses into the certificate store.
//!
//! The oldest Ingress wins a host; a missing Secret, a Secret of the wrong type or a bad certificate is a problem
//! and the host falls back to the default certificate (it still counts as a TLS host for redirects).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;

use super::problems::{ObjectRef, Problem};
use crate::table::{CertStore, Certificate};

/// Secrets by `(namespace, name)`.
pub type Secrets<'a> = HashMap<(&'a str, &'a str), &'a Secret>;

/// Adds the certificates of one Ingress to `store`; returns the hosts its TLS sections name.
pub fn add(
    ingress: &Ingress,
    who: &ObjectRef,
    rule_hosts: &[String],
    secrets: &Secrets<'_>,
    store: &mut CertStore,
    owners: &mut HashMap<String, Arc<str>>,
    problems: &mut Vec<Problem>,
) -> BTreeSet<String> {
    let mut tls_hosts = BTreeSet::new();
    let problem = |reason, message| Problem { ingress: who.clone(), reason, message };
    for tls in ingress.spec.as_ref().and_then(|s| s.tls.as_ref()).into_iter().flatten() {
        let hosts: Vec<String> = match &tls.hosts {
            Some(h) if !h.is_empty() => h.iter().map(|h| h.to_ascii_lowercase()).collect(),
            _ => rule_hosts.to_vec(),
        };
        tls_hosts.extend(hosts.iter().cloned());
        let Some(secret_name) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
            continue; // no secret: the default certificate, as in ingress-nginx
        };
        let key: Arc<str> = format!("{}/{secret_name}", who.namespace).into();
        let cert = match secrets.get(&(who.namespace.as_str(), secret_name)) {
            None => Err(("MissingSecret", format!("TLS secret \"{key}\" not found; serving the default certificate"))),
            Some(secret) => from_secret(secret, key.clone()),
        };
        let cert = match cert {
            Ok(c) => c,
            Err((reason, message)) => {
                problems.push(problem(reason, message));
                continue;
            }
        };
        for host in &hosts {
            if store.insert(host, cert.clone()) {
                owners.insert(host.clone(), key.clone());
            } else if owners.get(host).is_some_and(|owner| *owner != key) {
                let owner = &owners[host];
                problems.push(problem(
                    "TLSHostConflict",
                    format!(
                        "host {host:?} already has the certificate of secret \"{owner}\"; \"{key}\" is ignored for it"
                    ),
                ));
            }
        }
    }
    tls_hosts
}

fn from_secret(secret: &Secret, key: Arc<str>) -> Result<Certificate, (&'static str, String)> {
    let ty = secret.type_.as_deref().unwrap_or("Opaque");
    if ty != "kubernetes.io/tls" {
        return Err(("InvalidSecret", format!("secret \"{key}\" is of type {ty:?}, not kubernetes.io/tls")));
    }
    let data = secret.data.clone().unwrap_or_default();
    let crt = data.get("tls.crt").ok_or_else(|| ("InvalidSecret", format!("secret \"{key}\" has no tls.crt")))?;
    let k = data.get("tls.key").ok_or_else(|| ("InvalidSecret", format!("secret \"{key}\" has no tls.key")))?;
    Certificate::from_pem(&crt.0, &k.0, key.clone())
        .map_err(|e| ("InvalidCertificate", format!("secret \"{key}\": {e}; serving the default certificate")))
}
