//! Writes: create, update (the main resource or a subresource) and delete, with defaulting, validation,
//! admission, managed fields, dry runs, finalizers and graceful deletion.

use std::sync::Arc;

use serde_json::{Value, json};

use super::cas::{self, Attempt};
use super::error::{ApiError, ApiResult};
use super::objects::{Stored, decode, encode};
use super::{Api, managed, strategy};
use crate::storage::StorageError;
use skiff_api::meta;
use skiff_api::normalize::{FieldValidation, Steps, normalize};
use skiff_api::registry::ResourceInfo;
use skiff_api::validation::{ErrorList, NameRule, validate_object_meta};

/// Options of a write request.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: do everything but store.
    pub dry_run: bool,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
    /// Who writes (for the RBAC escalation check); `None` for the server's own writes.
    pub user: Option<super::auth::User>,
}

impl WriteOptions {
    fn manager(&self, default: &str) -> String {
        self.field_manager.clone().unwrap_or_else(|| default.to_string())
    }
}

/// The result of a write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The object as stored (or as it would be, for a dry run).
    pub object: Value,
    /// Whether the write created it.
    pub created: bool,
    /// Warnings for the response.
    pub warnings: Vec<String>,
}

/// `DeleteOptions` of a request.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `propagationPolicy`: `Orphan`, `Background` or `Foreground`.
    pub propagation: Option<String>,
    /// `gracePeriodSeconds`.
    pub grace_period: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// Who deletes (NodeRestriction); `None` for the server's own deletes.
    pub user: Option<super::auth::User>,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// The object is gone; its last state.
    Gone(Value),
    /// The object is being deleted (finalizers or a grace period remain); its current state.
    Pending(Value),
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| ALPHABET[rand::random::<u8>() as usize % ALPHABET.len()] as char).collect()
}

/// Kinds that `PUT` may create.
fn create_on_update(info: &ResourceInfo) -> bool {
    matches!(
        (info.group.as_str(), info.plural.as_str()),
        ("", "endpoints") | ("", "events") | ("coordination.k8s.io", "leases")
    )
}

impl Api {
    /// Normalizes (decodes, defaults, validates) an object of `info`.
    pub(crate) fn normalize_object(
        &self,
        info: &ResourceInfo,
        obj: Value,
        fields: FieldValidation,
    ) -> ApiResult<(Value, Vec<String>)> {
        let name = meta::name(&obj).to_string();
        let kind = info.kind.clone();
        match normalize(&obj, Steps { defaults: true, validate: true, fields }) {
            Some(r) => r.map(|n| (n.object, n.warnings)).map_err(|e| ApiError::from_normalize(info, &kind, &name, e)),
            None => {
                // custom resources: the object must have valid metadata; the rest is the CRD's schema
                let md: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
                    serde_json::from_value(obj.get("metadata").cloned().unwrap_or_else(|| json!({})))
                        .map_err(|e| ApiError::bad_request(format!("error decoding metadata: {e}")))?;
                let mut errs = ErrorList::default();
                validate_object_meta(&md, info.namespaced(), NameRule::Dns1123Subdomain, &mut errs);
                let (mut obj, mut warnings) = (obj, Vec::new());
                if let Some(schema) = &info.schema {
                    // the CRD's structural schema: unknown fields go (an error under fieldValidation=Strict, a
                    // warning under Warn, as for built-in kinds), defaults come, the rest is checked
                    let unknown = skiff_api::structural::prune(&mut obj, schema);
                    if !unknown.is_empty() {
                        match fields {
                            FieldValidation::Strict => {
                                return Err(ApiError::from_normalize(
                                    info,
                                    &kind,
                                    &name,
                                    skiff_api::normalize::NormalizeError::UnknownFields(unknown),
                                ));
                            }
                            FieldValidation::Warn => {
                                warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
                            }
                            FieldValidation::Ignore => {}
                        }
                    }
                    skiff_api::structural::default(&mut obj, schema);
                    errs.0.extend(skiff_api::structural::validate(&obj, schema).0);
                }
                if !errs.is_empty() {
                    return Err(ApiError::invalid(info, &kind, &name, &errs));
                }
                Ok((obj, warnings))
            }
        }
    }

    /// Checks that the namespace of a new namespaced object exists and is not being deleted.
    async fn admit_namespace(&self, info: &ResourceInfo, ns: &str, name: &str) -> ApiResult<()> {
        if !info.namespaced() {
            return Ok(());
        }
        let ns_info = self.builtin("", "namespaces");
        match self.try_get(&ns_info, None, ns).await? {
            None => Err(ApiError::not_found(&ns_info, ns)),
            Some(n) if meta::is_terminating(&n.object) && info.plural != "events" => Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                info.qualified_plural(),
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Creates an object in `namespace` (from the URL).
    pub async fn create(
        &self,
        info: &Arc<ResourceInfo>,
        namespace: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        self.fill_type(info, &mut obj)?;
        if let Some(storage) = self.storage_info(info) {
            let obj = super::conversion::to_storage(info, obj);
            return Box::pin(self.create(&storage, namespace, obj, opts)).await;
        }
        let ns = self.check_namespace(info, namespace, &mut obj)?;
        {
            let md = meta::metadata_mut(&mut obj);
            let name = md.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            if name.is_empty() {
                let base = md.get("generateName").and_then(Value::as_str).unwrap_or_default().to_string();
                if !base.is_empty() {
                    md.insert("name".into(), json!(format!("{base}{}", random_suffix())));
                }
            }
            if md.get("resourceVersion").and_then(Value::as_str).is_some_and(|rv| !rv.is_empty()) {
                return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
            }
            md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            md.insert("creationTimestamp".into(), json!(managed::now()));
            md.remove("deletionTimestamp");
            md.remove("deletionGracePeriodSeconds");
            md.remove("selfLink");
        }
        strategy::prepare_for_create(info, &mut obj);
        let (mut obj, mut warnings) = self.normalize_object(info, obj, opts.field_validation)?;
        let name = meta::name(&obj).to_string();
        if super::csr::is_csr(info) {
            super::csr::prepare_create(&mut obj, opts.user.as_ref())
                .map_err(|e| ApiError::invalid(info, &info.kind, &name, &e))?;
        }
        if info.plural != "namespaces" {
            self.admit_namespace(info, ns.as_deref().unwrap_or_default(), &name).await?;
        }
        super::noderestriction::check_node_create(opts.user.as_ref(), &info.group, &info.plural, &obj)
            .map_err(|m| ApiError::forbidden(format!("{} {:?} is forbidden: {m}", info.plural, meta::name(&obj))))?;
        if info.group.is_empty() && info.plural == "pods" {
            obj = self.admit_service_account(ns.as_deref().unwrap_or_default(), obj).await?;
        }
        warnings.extend(self.admit_pod_security(info, ns.as_deref(), &obj, None, None).await?);
        self.admit_quota(info, ns.as_deref(), &obj, None).await?;
        self.admit_rbac(info, ns.as_deref(), &obj, None, opts.user.as_ref()).await?;
        managed::record_update(None, &mut obj, &opts.manager("unknown"), &info.kind, None);
        let is_service = info.group.is_empty() && info.plural == "services";
        if is_service && !opts.dry_run {
            if self.try_get(info, ns.as_deref(), &name).await?.is_some() {
                return Err(ApiError::already_exists(info, &name));
            }
            self.allocate_service(&mut obj, None).await?;
        }
        if info.group.is_empty() && info.plural == "nodes" && !opts.dry_run {
            self.allocate_pod_cidr(&mut obj, None).await?;
        }
        if opts.dry_run {
            return Ok(Written { object: obj, created: true, warnings });
        }
        let key = info.storage_key(ns.as_deref(), &name);
        let kv = match self.store.create(&key, encode(&obj)?).await {
            Ok(kv) => kv,
            Err(e) => {
                if is_service {
                    self.release_service(&obj, None).await;
                }
                return Err(ApiError::from_storage(info, &name, e));
            }
        };
        let object = super::objects::served(info, obj, kv.mod_revision);
        self.after_write(info, None, Some(&object), kv.mod_revision).await;
        Ok(Written { object, created: true, warnings })
    }

    /// Sets `apiVersion`/`kind` from the resource when missing, and rejects a mismatch.
    fn fill_type(&self, info: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
        let m = obj.as_object_mut().ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
        let av = m.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        let kind = m.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        if !kind.is_empty() && kind != info.kind {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({kind}) does not match the resource ({})",
                info.kind
            )));
        }
        if !av.is_empty() && av != info.api_version() {
            let (group, _) = meta::split_api_version(&av);
            if group != info.group {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    info.api_version()
                )));
            }
        }
        m.insert("apiVersion".into(), json!(info.api_version()));
        m.insert("kind".into(), json!(info.kind));
        Ok(())
    }

    /// Reconciles the namespace in the object with the one in the URL; returns the object's namespace.
    fn check_namespace(&self, info: &ResourceInfo, url_ns: Option<&str>, obj: &mut Value) -> ApiResult<Option<String>> {
        let md = meta::metadata_mut(obj);
        let body_ns = md.get("namespace").and_then(Value::as_str).unwrap_or_default().to_string();
        if !info.namespaced() {
            md.remove("namespace");
            return Ok(None);
        }
        let url_ns =
            url_ns.ok_or_else(|| ApiError::bad_request(format!("{} must be created in a namespace", info.plural)))?;
        if !body_ns.is_empty() && body_ns != url_ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        md.insert("namespace".into(), json!(url_ns));
        Ok(Some(url_ns.to_string()))
    }

    /// Replaces an object (PUT), through the main resource or a subresource (`status`, `finalize`).
    pub async fn update(
        &self,
        info: &Arc<ResourceInfo>,
        namespace: Option<&str>,
        name: &str,
        mut obj: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        self.fill_type(info, &mut obj)?;
        if let Some(storage) = self.storage_info(info) {
            let obj = super::conversion::to_storage(info, obj);
            return Box::pin(self.update(&storage, namespace, name, obj, subresource, opts)).await;
        }
        let body_name = meta::name(&obj).to_string();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
        let ns = self.check_namespace(info, namespace, &mut obj)?;
        let precondition = meta::resource_version(&obj).to_string();
        cas::retry!(info, name, {
            let Some(cur) = self.try_get(info, ns.as_deref(), name).await? else {
                if create_on_update(info) && subresource.is_none() {
                    self.authorize_implicit_create(info, ns.as_deref(), name, opts).await?;
                    let mut obj = obj.clone();
                    if let Some(m) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                    }
                    return self.create(info, ns.as_deref(), obj, opts).await.map(Attempt::Done);
                }
                return Err(ApiError::not_found(info, name));
            };
            if !precondition.is_empty() && precondition != cur.revision.to_string() {
                return Err(ApiError::conflict(info, name));
            }
            let written =
                self.commit_update(info, ns.as_deref(), name, &cur, obj.clone(), subresource, opts, "unknown").await;
            cas::settle(written, precondition.is_empty())
        })
    }

    /// Stores `new` over `cur` (compare-and-swap on `cur`'s revision). The common tail of update and patch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit_update(
        &self,
        info: &Arc<ResourceInfo>,
        ns: Option<&str>,
        name: &str,
        cur: &Stored,
        mut new: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
        default_manager: &str,
    ) -> ApiResult<Written> {
        if let Some(storage) = self.storage_info(info) {
            // a patch or apply through a converted version was computed on the served form
            let cur =
                Stored { object: super::conversion::to_storage(info, cur.object.clone()), revision: cur.revision };
            let new = super::conversion::to_storage(info, new);
            return Box::pin(self.commit_update(&storage, ns, name, &cur, new, subresource, opts, default_manager))
                .await;
        }
        strategy::prepare_for_update(info, &cur.object, &mut new, subresource);
        let (mut new, mut warnings) = self.normalize_object(info, new, opts.field_validation)?;
        strategy::set_generation(info, &cur.object, &mut new, subresource);
        let errs = strategy::validate_update(info, &cur.object, &new);
        if !errs.is_empty() {
            return Err(ApiError::invalid(info, &info.kind, name, &errs));
        }
        if subresource.is_none() && meta::is_terminating(&cur.object) {
            let old_f = meta::finalizers(&cur.object);
            if meta::finalizers(&new).iter().any(|f| !old_f.contains(f)) {
                let mut e = ErrorList::default();
                e.forbidden("metadata.finalizers", "no new finalizers can be added if the object is being deleted");
                return Err(ApiError::invalid(info, &info.kind, name, &e));
            }
        }
        warnings.extend(self.admit_pod_security(info, ns, &new, Some(&cur.object), subresource).await?);
        self.admit_quota(info, ns, &new, Some(&cur.object)).await?;
        self.admit_rbac(info, ns, &new, Some(&cur.object), opts.user.as_ref()).await?;
        super::noderestriction::admit_node_write(opts.user.as_ref(), info, name, &cur.object, Some(&new))?;
        if super::csr::is_csr(info) {
            self.admit_csr(&new, &cur.object, subresource, opts.user.as_ref()).await?;
        }
        managed::record_update(Some(&cur.object), &mut new, &opts.manager(default_manager), &info.kind, subresource);
        let is_service = info.group.is_empty() && info.plural == "services";
        if is_service && subresource.is_none() && !opts.dry_run {
            self.allocate_service(&mut new, Some(&cur.object)).await?;
        }
        if info.group.is_empty() && info.plural == "nodes" && subresource.is_none() && !opts.dry_run {
            self.allocate_pod_cidr(&mut new, Some(&cur.object)).await?;
        }
        // a no-op write changes nothing, not even the resourceVersion
        if super::objects::same_but_resource_version(&new, &cur.object) {
            return Ok(Written { object: cur.object.clone(), created: false, warnings });
        }
        if opts.dry_run {
            return Ok(Written { object: new, created: false, warnings });
        }
        if self.finished_deleting(info, &new) {
            let key = info.storage_key(ns, name);
            let kv =
                self.store.delete(&key, Some(cur.revision)).await.map_err(|e| ApiError::from_storage(info, name, e))?;
            let gone = decode(info, &kv)?;
            self.after_write(info, Some(&cur.object), None, kv.mod_revision).await;
            return Ok(Written { object: gone, created: false, warnings });
        }
        let key = info.storage_key(ns, name);
        let kv = self
            .store
            .update(&key, encode(&new)?, cur.revision)
            .await
            .map_err(|e| ApiError::from_storage(info, name, e))?;
        let object = super::objects::served(info, new, kv.mod_revision);
        if is_service {
            self.release_service(&cur.object, Some(&object)).await;
        }
        self.after_write(info, Some(&cur.object), Some(&object), kv.mod_revision).await;
        Ok(Written { object, created: false, warnings })
    }

    /// An object being deleted whose finalizers are all gone (and, for a namespace, whose spec finalizers are gone
    /// too; for a pod, whose grace period is over) is removed from storage.
    fn finished_deleting(&self, info: &ResourceInfo, obj: &Value) -> bool {
        if !meta::is_terminating(obj) || !meta::finalizers(obj).is_empty() {
            return false;
        }
        if info.group.is_empty() && info.plural == "namespaces" {
            return obj.pointer("/spec/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
        }
        let grace = obj.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0);
        grace == 0
    }

    /// Deletes an object, honouring finalizers, propagation policy and (for pods on a node) a grace period.
    pub async fn delete(
        &self,
        info: &Arc<ResourceInfo>,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Deleted> {
        if info.group.is_empty()
            && info.plural == "namespaces"
            && matches!(name, "default" | "kube-system" | "kube-public")
        {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let ns = if info.namespaced() { namespace } else { None };
        cas::retry!(info, name, {
            let cur = self.get(info, ns, name).await?;
            super::noderestriction::admit_node_write(opts.user.as_ref(), info, name, &cur.object, None)?;
            if let Some(uid) = &opts.uid
                && uid != meta::uid(&cur.object)
            {
                return Err(ApiError::conflict_message(
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta::uid(&cur.object)
                    ),
                    None,
                ));
            }
            if let Some(rv) = &opts.resource_version
                && *rv != cur.revision.to_string()
            {
                return Err(ApiError::conflict_message(
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        cur.revision
                    ),
                    None,
                ));
            }
            let mut obj = cur.object.clone();
            let mut changed = false;
            let terminating = meta::is_terminating(&obj);
            // graceful deletion of pods bound to a node: the node agent stops them, then deletes with grace 0
            let is_pod = info.group.is_empty() && info.plural == "pods";
            let bound = obj.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
            let finished = matches!(obj.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
            let mut grace = 0;
            if is_pod && bound && !finished {
                grace = opts
                    .grace_period
                    .unwrap_or_else(|| {
                        obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30)
                    })
                    .max(0);
                let current = obj.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
                if grace > 0 && current.is_none_or(|c| grace < c) {
                    let md = meta::metadata_mut(&mut obj);
                    md.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    md.insert("deletionTimestamp".into(), json!(now_plus(grace)));
                    changed = true;
                } else if grace == 0 && current.is_some() {
                    meta::metadata_mut(&mut obj).insert("deletionGracePeriodSeconds".into(), json!(0));
                    changed = true;
                }
                if current.is_some() && grace > 0 && !changed {
                    return Ok(Attempt::Done(Deleted::Pending(cur.object)));
                }
            }
            // propagation policy finalizers
            let policy = opts.propagation.as_deref().unwrap_or("Background");
            if !terminating {
                let finalizer = match policy {
                    "Orphan" => Some("orphan"),
                    "Foreground" => Some("foregroundDeletion"),
                    "Background" => None,
                    other => return Err(ApiError::bad_request(format!("unknown propagationPolicy {other:?}"))),
                };
                if let Some(f) = finalizer {
                    let md = meta::metadata_mut(&mut obj);
                    let list = md.entry("finalizers").or_insert_with(|| json!([]));
                    if let Some(a) = list.as_array_mut()
                        && !a.iter().any(|x| x == f)
                    {
                        a.push(json!(f));
                    }
                    changed = true;
                }
            }
            let is_ns = info.group.is_empty() && info.plural == "namespaces";
            let spec_finalizers =
                is_ns && obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            let must_wait =
                !meta::finalizers(&obj).is_empty() || spec_finalizers || (is_pod && bound && grace > 0 && !finished);
            if must_wait {
                if !meta::is_terminating(&obj) {
                    let md = meta::metadata_mut(&mut obj);
                    md.insert("deletionTimestamp".into(), json!(managed::now()));
                    md.entry("deletionGracePeriodSeconds").or_insert(json!(0));
                    changed = true;
                }
                if is_ns {
                    obj["status"]["phase"] = json!("Terminating");
                    changed = true;
                }
                if !changed {
                    return Ok(Attempt::Done(Deleted::Pending(cur.object)));
                }
                if opts.dry_run {
                    return Ok(Attempt::Done(Deleted::Pending(obj)));
                }
                let key = info.storage_key(ns, name);
                return match self.store.update(&key, encode(&obj)?, cur.revision).await {
                    Ok(kv) => Ok(Attempt::Done(Deleted::Pending(decode(info, &kv)?))),
                    Err(StorageError::Conflict { .. }) => Ok(Attempt::LostRace),
                    Err(e) => Err(ApiError::from_storage(info, name, e)),
                };
            }
            if opts.dry_run {
                return Ok(Attempt::Done(Deleted::Gone(cur.object)));
            }
            let key = info.storage_key(ns, name);
            match self.store.delete(&key, Some(cur.revision)).await {
                Ok(kv) => {
                    let gone = decode(info, &kv)?;
                    self.after_write(info, Some(&cur.object), None, kv.mod_revision).await;
                    Ok(Attempt::Done(Deleted::Gone(gone)))
                }
                Err(StorageError::Conflict { .. }) => Ok(Attempt::LostRace),
                Err(e) => Err(ApiError::from_storage(info, name, e)),
            }
        })
    }

    /// Side effects of a write committed at `revision`: releasing Service allocations, (un)registering custom
    /// resources.
    pub(crate) async fn after_write(
        &self,
        info: &ResourceInfo,
        old: Option<&Value>,
        new: Option<&Value>,
        revision: crate::storage::Revision,
    ) {
        if info.group == super::authz::RBAC_GROUP {
            self.authz.invalidate();
        }
        if info.group == super::csr::GROUP {
            self.csr_changed.notify_one();
        }
        if info.group.is_empty()
            && info.plural == "services"
            && new.is_none()
            && let Some(old) = old
        {
            self.release_service(old, None).await;
        }
        if info.group.is_empty()
            && info.plural == "nodes"
            && new.is_none()
            && let Some(old) = old
        {
            self.release_pod_cidr(old).await;
        }
        if info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions" {
            self.sync_crd(old, new, revision).await;
        }
    }
}

fn now_plus(seconds: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Api {
    /// Reads an object, lets `change` modify it, and stores the result (retrying on conflicts). `change` returns
    /// `false` to leave the object alone. Returns the stored object, or `None` when it is gone or left alone.
    pub async fn update_with(
        &self,
        info: &Arc<ResourceInfo>,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        manager: &str,
        mut change: impl FnMut(&mut Value) -> bool,
    ) -> ApiResult<Option<Value>> {
        let opts = WriteOptions { field_manager: Some(manager.to_string()), ..Default::default() };
        cas::retry!(info, name, {
            let Some(cur) = self.try_get(info, ns, name).await? else { return Ok(Attempt::Done(None)) };
            let mut obj = cur.object.clone();
            if !change(&mut obj) {
                return Ok(Attempt::Done(None));
            }
            match self.commit_update(info, ns, name, &cur, obj, subresource, &opts, manager).await {
                Err(e) if e.code == 404 => Ok(Attempt::Done(None)),
                r => cas::settle(r.map(|w| Some(w.object)), true),
            }
        })
    }
}
