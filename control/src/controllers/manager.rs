//! The controller manager: shared informers, then every workload controller and the scheduler, run under leader
//! election so that only one control-plane instance acts at a time.

use std::sync::Arc;

use super::ctx::{Clock, ControllerConfig, Ctx, SystemClock};
use super::hpa::{MetricsSource, ResourceMetricsApi};
use super::informers::Informers;

/// What the manager runs with.
#[derive(Clone)]
pub struct ManagerOptions {
    /// Controller settings.
    pub config: ControllerConfig,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Time source for CronJob schedules (injectable separately: moving it does not age node heartbeats).
    pub schedule_clock: Arc<dyn Clock>,
    /// Metrics for the HPA.
    pub metrics: Arc<dyn MetricsSource>,
    /// This instance's identity in leader election.
    pub identity: String,
    /// The leader election's timings.
    pub election: super::leader::Timings,
    /// Where failed reconciles are counted (`skiff_controller_reconcile_errors_total`).
    pub errors: prometheus_client::metrics::family::Family<
        super::retry::ErrorLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    /// The scheduler's own client (`None`: the controllers' one). A client holds a bounded number of requests in
    /// flight (`skiff_client::connection::MAX_IN_FLIGHT`) and queues the rest in order, so on a shared one the
    /// scheduler's bindings waited behind every pod creation of a burst; kube-scheduler is a process of its own.
    pub scheduler_client: Option<kube::Client>,
    /// The leader election's own client (`None`: the controllers' one), as kube-controller-manager elects with a
    /// client of its own: on the controllers' client a renewal waited in line behind a burst of pod creations for
    /// longer than its deadline, the lease was lost, and every controller stopped and started again with a relist
    /// of every object (every ~12 s with 50 watchers in scripts/bench-scale).
    pub election_client: Option<kube::Client>,
}

impl std::fmt::Debug for ManagerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerOptions")
            .field("config", &self.config)
            .field("identity", &self.identity)
            .field("election", &self.election)
            .field("own_scheduler_client", &self.scheduler_client.is_some())
            .field("own_election_client", &self.election_client.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ManagerOptions {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "skiff".into());
        ManagerOptions {
            config: ControllerConfig::default(),
            clock: Arc::new(SystemClock),
            schedule_clock: Arc::new(SystemClock),
            metrics: Arc::new(ResourceMetricsApi),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            election: Default::default(),
            errors: Default::default(),
            scheduler_client: None,
            election_client: None,
        }
    }
}

/// Runs every controller (until the task is dropped), without leader election.
pub async fn run_controllers(client: kube::Client, opts: ManagerOptions) {
    let mut inf = Informers::new();
    let rs_trigger = inf.replica_sets.subscribe();
    let rs_pods = inf.pods.subscribe();
    let deploy_trigger = inf.deployments.subscribe();
    let deploy_rs = inf.replica_sets.subscribe();
    let sched_pods = inf.pods.subscribe();
    let sched_nodes = inf.nodes.subscribe();
    let eps_services = inf.services.subscribe();
    let eps_slices = inf.slices.subscribe();
    let eps_pods = inf.pods.subscribe();
    let job_trigger = inf.jobs.subscribe();
    let job_pods = inf.pods.subscribe();
    let cj_trigger = inf.cron_jobs.subscribe();
    let cj_jobs = inf.jobs.subscribe();
    let hpa_trigger = inf.hpas.subscribe();
    let sts_trigger = inf.stateful_sets.subscribe();
    let sts_pods = inf.pods.subscribe();
    let ds_trigger = inf.daemon_sets.subscribe();
    let ds_pods = inf.pods.subscribe();
    let ds_nodes = inf.nodes.subscribe();
    let lb_services = inf.services.subscribe();
    let pdb_trigger = inf.pdbs.subscribe();
    let pdb_pods = inf.pods.subscribe();
    inf.start(&client);
    inf.wait_until_ready().await;
    tracing::info!("controller informers synced; starting controllers");
    let ctx_on = |client: kube::Client| {
        Arc::new(Ctx::new(
            client,
            &inf,
            opts.clock.clone(),
            opts.schedule_clock.clone(),
            opts.config.clone(),
            opts.metrics.clone(),
            super::retry::Retries::new(opts.errors.clone()),
        ))
    };
    let sched_ctx = ctx_on(opts.scheduler_client.clone().unwrap_or_else(|| client.clone()));
    let ctx = ctx_on(client);
    // Each controller is a task of its own, as each has goroutines of its own in kube-controller-manager (kube-runtime
    // already spawns each reconcile). Polled together in this one task (they were, through `join!`), the scheduler's
    // and the node lifecycle's loops and every controller's trigger streams ran on one thread at a time: a
    // scheduling pass over thousands of waiting pods held up every controller's share of the informers' changes,
    // and a subscriber that lags 1,024 changes makes the pod informer's watch wait for it.
    // Dropping this future (the lease lost) drops the set, which aborts them all.
    let mut controllers = tokio::task::JoinSet::new();
    controllers.spawn(super::replicaset::run(ctx.clone(), rs_trigger, rs_pods));
    controllers.spawn(super::deployment::run(ctx.clone(), deploy_trigger, deploy_rs));
    controllers.spawn(super::scheduler::run(sched_ctx, sched_pods, sched_nodes));
    controllers.spawn(super::endpointslice::run(ctx.clone(), eps_services, eps_slices, eps_pods));
    controllers.spawn(super::nodelifecycle::run(ctx.clone()));
    controllers.spawn(super::job::run(ctx.clone(), job_trigger, job_pods));
    controllers.spawn(super::cronjob::run(ctx.clone(), cj_trigger, cj_jobs));
    controllers.spawn(super::hpa::run(ctx.clone(), hpa_trigger));
    controllers.spawn(super::statefulset::run(ctx.clone(), sts_trigger, sts_pods));
    controllers.spawn(super::daemonset::run(ctx.clone(), ds_trigger, ds_pods, ds_nodes));
    controllers.spawn(super::loadbalancer::run(ctx.clone(), lb_services));
    controllers.spawn(super::pdb::run(ctx, pdb_trigger, pdb_pods));
    while let Some(done) = controllers.join_next().await {
        // a controller that panicked takes the manager down with it, as it did inside `join!`
        if let Err(e) = done
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Other work that must run on one instance only (the server's API machinery), started and stopped with the
/// controllers.
pub type Singletons = Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Runs the controllers, and `singletons`, whenever this instance is the leader.
pub async fn run(client: kube::Client, opts: ManagerOptions, singletons: Option<Singletons>) {
    let identity = opts.identity.clone();
    let election = opts.election_client.clone().unwrap_or_else(|| client.clone());
    super::leader::run_as_leader(election, "skiff-controller-manager", &identity, opts.election, move || {
        let (client, opts, singletons) = (client.clone(), opts.clone(), singletons.clone());
        async move {
            let others = async move {
                if let Some(start) = singletons {
                    start().await;
                }
            };
            tokio::join!(run_controllers(client, opts), others);
        }
    })
    .await;
}
