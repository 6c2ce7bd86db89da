//! The pure part of the Deployment controller: from a Deployment and its ReplicaSets to the ReplicaSet to create,
//! the scale changes, the annotation updates and the history cleanup — following Kubernetes' rolling update and
//! recreate algorithms.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::controllers::util::{owner_ref, scaled_value, template_hash, without_hash};

/// The revision annotation on Deployments and their ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The desired replicas annotation on ReplicaSets.
pub const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
/// The max replicas (desired + surge) annotation on ReplicaSets.
pub const MAX: &str = "deployment.kubernetes.io/max-replicas";
/// The change cause annotation, copied to ReplicaSets.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// One action on a ReplicaSet.
#[derive(Debug, Clone, PartialEq)]
pub enum RsAction {
    /// Create this ReplicaSet.
    Create(Box<ReplicaSet>),
    /// Set `spec.replicas` (and the replica annotations) of a ReplicaSet, from `from` to `to`.
    Scale {
        /// ReplicaSet name.
        name: String,
        /// Current replicas.
        from: i32,
        /// New replicas.
        to: i32,
    },
    /// Set annotations of a ReplicaSet (the revision of a rolled-back template).
    Annotate {
        /// ReplicaSet name.
        name: String,
        /// Annotations to set.
        annotations: BTreeMap<String, String>,
    },
    /// Delete an old, scaled-down ReplicaSet beyond the revision history limit.
    Delete(String),
}

/// What one reconcile should do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// ReplicaSet actions, in order.
    pub actions: Vec<RsAction>,
    /// The new ReplicaSet's name (existing or about to be created).
    pub new_rs: Option<String>,
    /// The revision of the new ReplicaSet (for the Deployment's annotation).
    pub revision: Option<String>,
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// The available replicas a ReplicaSet can be counted on for: its status, but never more than it is now asked to
/// keep. Right after a scale-down its status still counts the pods it is deleting; trusting that let a 10k-pod
/// rolling update (`scripts/bench-scale`) scale old sets down again and again while the new pods waited for nodes,
/// to 50% availability against maxUnavailable 25%.
fn available_of(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0).min(replicas_of(rs))
}

/// A ReplicaSet's revision number.
pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> Option<jiff::Timestamp> {
    rs.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The surge and unavailability limits of a Deployment (both resolved; never both zero).
pub fn limits(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let ru = spec.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
    let surge = scaled_value(ru.max_surge.as_ref(), replicas, true, "25%");
    let mut unavailable = scaled_value(ru.max_unavailable.as_ref(), replicas, false, "25%");
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge.max(0), unavailable.min(replicas).max(0))
}

/// The ReplicaSet whose template is the Deployment's.
pub fn find_new<'a>(d: &Deployment, owned: &'a [Arc<ReplicaSet>]) -> Option<&'a Arc<ReplicaSet>> {
    let want = without_hash(&d.spec.as_ref()?.template);
    let mut matching: Vec<&Arc<ReplicaSet>> = owned
        .iter()
        .filter(|rs| rs.spec.as_ref().and_then(|s| s.template.as_ref()).map(without_hash).as_ref() == Some(&want))
        .collect();
    matching.sort_by_key(|rs| created(rs));
    matching.into_iter().next()
}

/// The ReplicaSet a Deployment would create for its current template.
pub fn new_replica_set(d: &Deployment, replicas: i32, revision: i64, collision_count: Option<i32>) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let hash = template_hash(&spec.template, collision_count);
    let name = format!("{}-{hash}", d.metadata.name.clone().unwrap_or_default());
    let mut template = spec.template.clone();
    let tmeta = template.metadata.get_or_insert_with(ObjectMeta::default);
    tmeta.labels.get_or_insert_with(BTreeMap::new).insert("pod-template-hash".into(), hash.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector.match_labels.get_or_insert_with(BTreeMap::new).insert("pod-template-hash".into(), hash.clone());
    let mut labels = tmeta.labels.clone().unwrap_or_default();
    labels.insert("pod-template-hash".into(), hash);
    let (surge, _) = limits(d);
    let mut annotations = BTreeMap::new();
    annotations.insert(REVISION.to_string(), revision.to_string());
    annotations.insert(DESIRED.to_string(), spec.replicas.unwrap_or(1).to_string());
    annotations.insert(MAX.to_string(), (spec.replicas.unwrap_or(1) + surge).to_string());
    if let Some(cause) = d.metadata.annotations.as_ref().and_then(|a| a.get(CHANGE_CAUSE)) {
        annotations.insert(CHANGE_CAUSE.to_string(), cause.clone());
    }
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// Plans one step of a Deployment's rollout over the ReplicaSets it owns.
pub fn plan(d: &Deployment, owned: &[Arc<ReplicaSet>]) -> Plan {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let mut out = Plan::default();
    let max_revision = owned.iter().map(|r| revision_of(r)).max().unwrap_or(0);
    let new = find_new(d, owned);
    let mut olds: Vec<&Arc<ReplicaSet>> = owned.iter().filter(|r| Some(*r) != new).collect();
    olds.sort_by_key(|r| (created(r), r.metadata.name.clone()));
    let paused = spec.paused == Some(true);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let (surge, max_unavailable) = limits(d);

    let Some(new) = new else {
        if paused {
            return out;
        }
        let old_total: i32 = olds.iter().map(|r| replicas_of(r)).sum();
        let initial = if recreate {
            0
        } else {
            let max_total = replicas + surge;
            (max_total - old_total).clamp(0, replicas)
        };
        let rs = new_replica_set(d, initial, max_revision + 1, d.status.as_ref().and_then(|s| s.collision_count));
        out.new_rs = rs.metadata.name.clone();
        out.revision = Some((max_revision + 1).to_string());
        if recreate && old_total > 0 {
            for o in &olds {
                if replicas_of(o) > 0 {
                    out.actions.push(RsAction::Scale {
                        name: o.metadata.name.clone().unwrap_or_default(),
                        from: replicas_of(o),
                        to: 0,
                    });
                }
            }
        }
        out.actions.push(RsAction::Create(Box::new(rs)));
        return out;
    };
    let new_name = new.metadata.name.clone().unwrap_or_default();
    out.new_rs = Some(new_name.clone());
    let mut revision = revision_of(new);
    if revision < max_revision || revision == 0 {
        // a rollback to an older template makes it the newest revision
        revision = max_revision + 1;
        let mut a = BTreeMap::new();
        a.insert(REVISION.to_string(), revision.to_string());
        out.actions.push(RsAction::Annotate { name: new_name.clone(), annotations: a });
    }
    out.revision = Some(revision.to_string());
    if paused {
        return out;
    }
    let scale = |out: &mut Plan, rs: &ReplicaSet, to: i32| {
        let from = replicas_of(rs);
        if from != to {
            out.actions.push(RsAction::Scale { name: rs.metadata.name.clone().unwrap_or_default(), from, to });
        }
    };
    if recreate {
        let old_running: i32 =
            olds.iter().map(|r| replicas_of(r) + r.status.as_ref().map(|s| s.replicas).unwrap_or(0)).sum();
        for o in &olds {
            scale(&mut out, o, 0);
        }
        if old_running == 0 {
            scale(&mut out, new, replicas);
        }
    } else {
        let new_replicas = replicas_of(new);
        let total: i32 = owned.iter().map(|r| replicas_of(r)).sum();
        if new_replicas > replicas {
            scale(&mut out, new, replicas);
        } else if new_replicas < replicas {
            let max_total = replicas + surge;
            let up = (max_total - total).min(replicas - new_replicas);
            if up > 0 {
                scale(&mut out, new, new_replicas + up);
                return with_cleanup(out, d, &olds);
            }
        }
        // scale down old ReplicaSets without going under the minimum availability
        let old_total: i32 = olds.iter().map(|r| replicas_of(r)).sum();
        if old_total > 0 {
            let min_available = replicas - max_unavailable;
            let new_unavailable = (replicas_of(new) - available_of(new)).max(0);
            let mut budget = total - min_available - new_unavailable;
            let mut targets: Vec<(&Arc<ReplicaSet>, i32)> = olds.iter().map(|o| (*o, replicas_of(o))).collect();
            // first the unhealthy replicas of old sets
            for (o, t) in targets.iter_mut() {
                if budget <= 0 {
                    break;
                }
                let unhealthy = (*t - available_of(o)).max(0);
                let down = unhealthy.min(budget).min(*t);
                *t -= down;
                budget -= down;
            }
            // then healthy ones while enough stay available
            let available: i32 = owned.iter().map(|r| available_of(r)).sum();
            let already: i32 = olds.iter().zip(&targets).map(|(o, (_, t))| replicas_of(o) - t).sum();
            let mut healthy_budget = (available - min_available - already).max(0);
            for (_, t) in targets.iter_mut() {
                if healthy_budget <= 0 {
                    break;
                }
                let down = (*t).min(healthy_budget);
                *t -= down;
                healthy_budget -= down;
            }
            for (o, t) in targets {
                scale(&mut out, o, t);
            }
        }
    }
    with_cleanup(out, d, &olds)
}

/// Deletes scaled-down old ReplicaSets beyond `revisionHistoryLimit` (oldest revisions first).
fn with_cleanup(mut out: Plan, d: &Deployment, olds: &[&Arc<ReplicaSet>]) -> Plan {
    let limit = d.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
    let mut idle: Vec<&&Arc<ReplicaSet>> = olds
        .iter()
        .filter(|o| {
            replicas_of(o) == 0
                && o.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
                && o.metadata.deletion_timestamp.is_none()
        })
        .filter(|o| {
            !out.actions
                .iter()
                .any(|a| matches!(a, RsAction::Scale { name, .. } if Some(name) == o.metadata.name.as_ref()))
        })
        .collect();
    if idle.len() > limit {
        idle.sort_by_key(|o| revision_of(o));
        for o in &idle[..idle.len() - limit] {
            out.actions.push(RsAction::Delete(o.metadata.name.clone().unwrap_or_default()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d", "uid": "d-uid", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "strategy": strategy, "revisionHistoryLimit": 1,
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}}))
        .expect("deployment")
    }

    fn rs_for(d: &Deployment, replicas: i32, available: i32, revision: i64, created: &str) -> Arc<ReplicaSet> {
        let mut rs = new_replica_set(d, replicas, revision, None);
        rs.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created.parse().expect("time")));
        rs.status = Some(k8s_openapi::api::apps::v1::ReplicaSetStatus {
            replicas,
            available_replicas: Some(available),
            ready_replicas: Some(available),
            ..Default::default()
        });
        Arc::new(rs)
    }

    fn rolling() -> serde_json::Value {
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    }

    #[test]
    fn a_new_deployment_creates_its_first_replica_set_at_full_size() {
        let d = deployment(3, "v1", rolling());
        let p = plan(&d, &[]);
        match &p.actions[..] {
            [RsAction::Create(rs)] => {
                assert_eq!(rs.spec.as_ref().and_then(|s| s.replicas), Some(3));
                assert_eq!(
                    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).map(String::as_str),
                    Some("1")
                );
                assert!(
                    rs.spec
                        .as_ref()
                        .expect("spec")
                        .selector
                        .match_labels
                        .as_ref()
                        .expect("labels")
                        .contains_key("pod-template-hash")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_rolling_update_with_zero_unavailable_surges_one_pod_at_a_time() {
        let v1 = deployment(3, "v1", rolling());
        let old = rs_for(&v1, 3, 3, 1, "2026-01-01T00:00:00Z");
        let v2 = deployment(3, "v2", rolling());
        // step 1: the new set is created with one surge pod
        let p = plan(&v2, std::slice::from_ref(&old));
        let new = match &p.actions[..] {
            [RsAction::Create(rs)] => rs.clone(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(new.spec.as_ref().and_then(|s| s.replicas), Some(1));
        assert_eq!(p.revision.as_deref(), Some("2"));
        // step 2: the surge pod is not available yet: nothing scales down
        let new_not_ready = rs_for(&v2, 1, 0, 2, "2026-01-02T00:00:00Z");
        assert!(plan(&v2, &[old.clone(), new_not_ready]).actions.is_empty());
        // step 3: once it is available, one old pod goes
        let new_ready = rs_for(&v2, 1, 1, 2, "2026-01-02T00:00:00Z");
        let p = plan(&v2, &[old.clone(), new_ready]);
        assert_eq!(p.actions, vec![RsAction::Scale { name: old.metadata.name.clone().expect("name"), from: 3, to: 2 }]);
        // step 4: then the new set grows again
        let old2 = rs_for(&v1, 2, 2, 1, "2026-01-01T00:00:00Z");
        let new_ready = rs_for(&v2, 1, 1, 2, "2026-01-02T00:00:00Z");
        let p = plan(&v2, &[old2, new_ready.clone()]);
        assert_eq!(
            p.actions,
            vec![RsAction::Scale { name: new_ready.metadata.name.clone().expect("name"), from: 1, to: 2 }]
        );
    }

    #[test]
    fn an_old_set_just_scaled_down_counts_only_what_it_keeps_as_available() {
        let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
        let (v1, v2) = (deployment(100, "v1", strategy.clone()), deployment(100, "v2", strategy));
        // old scaled 100 -> 75, its status not yet updated (still 100 available); the new set at 50, none available
        let old = rs_for(&v1, 75, 100, 1, "2026-01-01T00:00:00Z");
        let new = rs_for(&v2, 50, 0, 2, "2026-01-02T00:00:00Z");
        let p = plan(&v2, &[old, new]);
        assert!(p.actions.is_empty(), "75 available at most: nothing more may go, got {:?}", p.actions);
        // once 25 new pods are available, 25 old may go
        let old = rs_for(&v1, 75, 75, 1, "2026-01-01T00:00:00Z");
        let new = rs_for(&v2, 50, 25, 2, "2026-01-02T00:00:00Z");
        let p = plan(&v2, &[old.clone(), new]);
        assert_eq!(
            p.actions,
            vec![RsAction::Scale { name: old.metadata.name.clone().expect("name"), from: 75, to: 50 }]
        );
    }

    #[test]
    fn the_default_strategy_rounds_surge_up_and_unavailability_down() {
        let d = deployment(
            3,
            "v1",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
        );
        assert_eq!(limits(&d), (1, 0));
        let d = deployment(
            10,
            "v1",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
        );
        assert_eq!(limits(&d), (3, 2));
        let d = deployment(
            3,
            "v1",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}),
        );
        assert_eq!(limits(&d), (0, 1), "both zero is not allowed: one pod may be unavailable");
    }

    #[test]
    fn recreate_scales_old_sets_to_zero_before_starting_the_new_one() {
        let v1 = deployment(2, "v1", json!({"type": "Recreate"}));
        let old = rs_for(&v1, 2, 2, 1, "2026-01-01T00:00:00Z");
        let v2 = deployment(2, "v2", json!({"type": "Recreate"}));
        let p = plan(&v2, std::slice::from_ref(&old));
        assert!(matches!(&p.actions[0], RsAction::Scale { to: 0, .. }));
        assert!(matches!(&p.actions[1], RsAction::Create(rs) if rs.spec.as_ref().and_then(|s| s.replicas) == Some(0)));
        let old_gone = rs_for(&v1, 0, 0, 1, "2026-01-01T00:00:00Z");
        let new = rs_for(&v2, 0, 0, 2, "2026-01-02T00:00:00Z");
        let p = plan(&v2, &[old_gone, new.clone()]);
        assert_eq!(p.actions, vec![RsAction::Scale { name: new.metadata.name.clone().expect("name"), from: 0, to: 2 }]);
    }

    #[test]
    fn a_rollback_reuses_the_old_replica_set_with_a_new_revision_and_history_is_trimmed() {
        let v1 = deployment(1, "v1", rolling());
        let v2 = deployment(1, "v2", rolling());
        let v3 = deployment(1, "v3", rolling());
        let rs1 = rs_for(&v1, 0, 0, 1, "2026-01-01T00:00:00Z");
        let rs2 = rs_for(&v2, 0, 0, 2, "2026-01-02T00:00:00Z");
        let rs3 = rs_for(&v3, 1, 1, 3, "2026-01-03T00:00:00Z");
        // roll back to v1's template
        let p = plan(&v1, &[rs1.clone(), rs2.clone(), rs3]);
        assert_eq!(p.revision.as_deref(), Some("4"));
        assert!(
            p.actions
                .iter()
                .any(|a| matches!(a, RsAction::Annotate { name, .. } if Some(name) == rs1.metadata.name.as_ref()))
        );
        assert!(p.actions.iter().any(|a| matches!(a, RsAction::Scale { to: 1, .. })));
        // with revisionHistoryLimit 1, of the idle old sets only the newest revision stays
        let idle_old = rs_for(&v2, 0, 0, 2, "2026-01-02T00:00:00Z");
        let older = rs_for(&v3, 0, 0, 1, "2026-01-01T00:00:00Z");
        let current = rs_for(&v1, 1, 1, 4, "2026-01-04T00:00:00Z");
        let p = plan(&v1, &[idle_old, older.clone(), current]);
        assert_eq!(p.actions, vec![RsAction::Delete(older.metadata.name.clone().expect("name"))]);
    }
}
