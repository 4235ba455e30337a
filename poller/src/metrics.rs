//! Prometheus metrics of the poller.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

#[derive(Clone)]
pub struct PollerMetrics {
    registry: Registry,
    pub poll_duration: Histogram,
    pub runs_created: IntCounterVec,
    pub provider_requests: IntCounterVec,
    pub poll_errors: IntCounter,
    pub poll_lag: GaugeVec,
    pub budget_wait: HistogramVec,
    pub polls_not_done: IntCounterVec,
    pub run_events_published: IntCounter,
    pub run_events_backlog: prometheus::IntGauge,
    pub commit_status_reports: IntCounterVec,
}

impl PollerMetrics {
    /// Counts a poll that ended without polling (nothing for one that polled).
    pub fn count_not_done(&self, outcome: &crate::poll::PollOutcome) {
        use crate::poll::PollOutcome;
        let reason = match outcome {
            PollOutcome::Polled(_) | PollOutcome::Interrupted => return,
            PollOutcome::Locked => "locked",
            PollOutcome::Gone => "gone",
            PollOutcome::Superseded => "superseded",
        };
        self.polls_not_done.with_label_values(&[reason]).inc();
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        let poll_duration = Histogram::with_opts(
            HistogramOpts::new(
                "terrapod_vcs_poll_duration_seconds",
                "Time to poll one workspace",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )
        .expect("valid metric");
        let runs_created = IntCounterVec::new(
            Opts::new(
                "terrapod_vcs_runs_created_total",
                "VCS runs created, by provider and type (push, pull_request)",
            ),
            &["provider", "type"],
        )
        .expect("valid metric");
        let provider_requests = IntCounterVec::new(
            Opts::new(
                "terrapod_vcs_provider_requests_total",
                "Requests to VCS providers, by provider and HTTP status",
            ),
            &["provider", "status"],
        )
        .expect("valid metric");
        let poll_errors = IntCounter::new(
            "terrapod_vcs_poll_errors_total",
            "Workspace polls that recorded an error",
        )
        .expect("valid metric");
        let poll_lag = GaugeVec::new(
            Opts::new(
                "terrapod_vcs_poll_lag_seconds",
                "How long after falling due the workspaces of the last cycle were polled, at most, by provider (above zero when the provider's budget stretches the interval)",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let budget_wait = HistogramVec::new(
            HistogramOpts::new(
                "terrapod_vcs_budget_wait_seconds",
                "Time a provider request waited for the shared request budget",
            )
            .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0]),
            &["provider"],
        )
        .expect("valid metric");
        let polls_not_done = IntCounterVec::new(
            Opts::new(
                "terrapod_vcs_polls_not_done_total",
                "Polls that ended without polling, by reason (locked: another poll held the workspace and covers the request; gone: deleted or unlinked; superseded: changed under the poll too often)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let run_events_published = IntCounter::new(
            "terrapod_run_events_published_total",
            "Run events the relay published to terrapod.run-events (confirmed by RabbitMQ)",
        )
        .expect("valid metric");
        let run_events_backlog = prometheus::IntGauge::new(
            "terrapod_run_events_outbox_backlog",
            "Run events waiting in the outbox for the relay (grows while RabbitMQ is away)",
        )
        .expect("valid metric");
        let commit_status_reports = IntCounterVec::new(
            Opts::new(
                "terrapod_vcs_commit_status_reports_total",
                "Runs' states put on their commits (check runs, commit statuses), by outcome (reported; failed: given up after retries, recorded in the event log)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(poll_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(runs_created.clone()),
            Box::new(provider_requests.clone()),
            Box::new(poll_errors.clone()),
            Box::new(poll_lag.clone()),
            Box::new(budget_wait.clone()),
            Box::new(polls_not_done.clone()),
            Box::new(run_events_published.clone()),
            Box::new(run_events_backlog.clone()),
            Box::new(commit_status_reports.clone()),
        ] {
            registry.register(metric).expect("registered once");
        }
        PollerMetrics {
            registry,
            poll_duration,
            runs_created,
            provider_requests,
            poll_errors,
            poll_lag,
            budget_wait,
            polls_not_done,
            run_events_published,
            run_events_backlog,
            commit_status_reports,
        }
    }

    pub fn render(&self) -> String {
        terrapod_shared::health::render_metrics(&self.registry)
    }
}

impl Default for PollerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
