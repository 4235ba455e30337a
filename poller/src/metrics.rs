//! Prometheus metrics of the poller.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct PollerMetrics {
    registry: Registry,
    pub poll_duration: Histogram,
    pub runs_created: IntCounterVec,
    pub provider_requests: IntCounterVec,
    pub poll_errors: IntCounter,
}

impl PollerMetrics {
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
        for metric in [
            Box::new(poll_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(runs_created.clone()),
            Box::new(provider_requests.clone()),
            Box::new(poll_errors.clone()),
        ] {
            registry.register(metric).expect("registered once");
        }
        PollerMetrics {
            registry,
            poll_duration,
            runs_created,
            provider_requests,
            poll_errors,
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
