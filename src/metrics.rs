//! Prometheus metrics, served as text at `GET /metrics`: requests by status and their
//! duration by operation, instant purchases and queue actions by outcome, jobs by kind and
//! result, and webhook deliveries.
//!
//! One registry per process (not global), handed to the API and the job runner, so tests
//! can build as many services as they like.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Seconds: from a millisecond (a cached read) to the 5 s request deadline and past it.
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Every metric's exposed name (histograms without the `_bucket`/`_sum`/`_count`).
    names: Vec<String>,
    /// HTTP responses by status class (`2xx`, `4xx`, ...).
    pub http_responses: IntCounterVec,
    /// Time to answer a request, by operation (the OpenAPI `operationId`: a route template,
    /// never a raw path with ids or skus in it; `other` for docs, spec, metrics and unknown
    /// routes) and status class.
    pub http_duration: HistogramVec,
    /// Buyers decided by one group-commit statement.
    pub batch_size: Histogram,
    /// Time of one group-commit statement (its commit included).
    pub batch_seconds: Histogram,
    /// How late a job started after it fell due, by kind.
    pub job_lag: HistogramVec,
    /// Database connections by pool (`main`, `reserved`) and state (`in_use`, `idle`), read
    /// at each scrape.
    pub pool_connections: IntGaugeVec,
    /// Buyers waiting and live holds of each live queued sale (label: its sku; at most
    /// 1,000 sales), read at each scrape.
    pub queue_waiting: IntGaugeVec,
    pub queue_active_holds: IntGaugeVec,
    /// Server-Sent Event streams open now (admin, buyer and public).
    pub streams_open: IntGauge,
    /// Sale-change notifications this instance received (one per writing transaction and
    /// sale, however many streams it serves).
    pub live_notifications: IntCounter,
    /// Reads of a watched sale by the live hub (one per wake-up and sale, not per stream).
    pub live_refreshes: IntCounter,
    /// From a hold's grant (database clock) to its `held` event leaving on the buyer's
    /// stream.
    pub hold_push: Histogram,
    /// Time a request or worker waited for a pooled connection, by pool.
    pub pool_wait: HistogramVec,
    /// How long buyers waited for a free unit: from the queue tick falling due (a unit came
    /// back, a buyer joined, the sale opened) to the admission's commit, once per tick that
    /// admitted someone.
    pub admission_lag: Histogram,
    /// Instant purchase attempts by outcome (`purchased`, `sold_out`, ...).
    pub purchases: IntCounterVec,
    /// Queue actions by action and outcome (`join`/`queued`, `confirm`/`hold_expired`, ...).
    pub queue_actions: IntCounterVec,
    /// Jobs run by kind and result (`ok`, `failed`, `dead`: failed for good).
    pub jobs: IntCounterVec,
    /// Jobs that failed for good and wait for an admin (`GET /api/v1/admin/jobs`), as last
    /// counted by the job runner.
    pub jobs_dead: IntGauge,
    /// Webhook delivery attempts by result (`delivered`, `retrying`, `failed`: failed for
    /// good, replayable from the admin API).
    pub webhook_attempts: IntCounterVec,
    /// Deliveries waiting to be sent or retried, as last counted by the sender.
    pub webhook_pending: IntGauge,
    /// Deliveries that failed for good, as last counted by the sender.
    pub webhook_failed: IntGauge,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("flashsale".into()), None)?;
        let names = std::cell::RefCell::new(Vec::new());
        let register = |collector: Box<dyn prometheus::core::Collector>| -> prometheus::Result<()> {
            for desc in collector.desc() {
                names
                    .borrow_mut()
                    .push(format!("flashsale_{}", desc.fq_name));
            }
            registry.register(collector)
        };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
                register(Box::new(counter.clone()))?;
                Ok(counter)
            };
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> prometheus::Result<Histogram> {
                let histogram =
                    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
                register(Box::new(histogram.clone()))?;
                Ok(histogram)
            };
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
                let gauge = IntGaugeVec::new(Opts::new(name, help), labels)?;
                register(Box::new(gauge.clone()))?;
                Ok(gauge)
            };
        let histogram_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<HistogramVec> {
                let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
                let histogram = HistogramVec::new(opts, labels)?;
                register(Box::new(histogram.clone()))?;
                Ok(histogram)
            };
        let plain_counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let counter = IntCounter::new(name, help)?;
            register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let gauge = IntGauge::new(name, help)?;
            register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        Ok(Self {
            http_responses: counter(
                "http_responses_total",
                "HTTP responses by status class",
                &["class"],
            )?,
            http_duration: histogram_vec(
                "http_request_duration_seconds",
                "Time to answer a request, by OpenAPI operation and status class",
                &["operation", "class"],
            )?,
            purchases: counter(
                "purchases_total",
                "Instant purchase attempts by outcome",
                &["outcome"],
            )?,
            queue_actions: counter(
                "queue_actions_total",
                "Queue actions by action and outcome",
                &["action", "outcome"],
            )?,
            jobs: counter(
                "jobs_total",
                "Background jobs run by kind and result",
                &["kind", "result"],
            )?,
            jobs_dead: gauge(
                "jobs_dead",
                "Jobs that failed for good and wait for an admin to requeue them",
            )?,
            webhook_attempts: counter(
                "webhook_attempts_total",
                "Webhook delivery attempts by result",
                &["result"],
            )?,
            webhook_pending: gauge(
                "webhook_deliveries_pending",
                "Webhook deliveries waiting to be sent or retried",
            )?,
            webhook_failed: gauge(
                "webhook_deliveries_failed",
                "Webhook deliveries that failed for good (replay them from the admin API)",
            )?,
            batch_size: histogram(
                "purchase_batch_size",
                "Buyers decided by one group-commit statement",
                &[
                    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2048.0,
                ],
            )?,
            batch_seconds: histogram(
                "purchase_batch_seconds",
                "Time of one group-commit statement, commit included",
                &LATENCY_BUCKETS,
            )?,
            job_lag: histogram_vec(
                "job_lag_seconds",
                "How late a job started after it fell due, by kind",
                &["kind"],
            )?,
            pool_connections: gauge_vec(
                "db_pool_connections",
                "Database connections by pool and state",
                &["pool", "state"],
            )?,
            queue_waiting: gauge_vec(
                "queue_waiting",
                "Buyers waiting in each live queued sale",
                &["sale"],
            )?,
            queue_active_holds: gauge_vec(
                "queue_active_holds",
                "Live holds of each live queued sale",
                &["sale"],
            )?,
            streams_open: gauge("event_streams_open", "Server-Sent Event streams open now")?,
            live_notifications: plain_counter(
                "live_notifications_total",
                "Sale-change notifications received by the live hub",
            )?,
            live_refreshes: plain_counter(
                "live_refreshes_total",
                "Reads of watched sales by the live hub (per wake-up, not per stream)",
            )?,
            hold_push: histogram(
                "hold_push_seconds",
                "From a hold's grant to its held event leaving on the buyer's stream",
                &LATENCY_BUCKETS,
            )?,
            pool_wait: histogram_vec(
                "db_pool_wait_seconds",
                "Time spent waiting for a pooled database connection, by pool",
                &["pool"],
            )?,
            admission_lag: histogram(
                "admission_lag_seconds",
                "From a queue tick falling due to its admissions' commit",
                &LATENCY_BUCKETS,
            )?,
            names: names.take(),
            registry,
        })
    }

    /// The exposed name of every metric, whether it has samples yet or not.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_text_exposition() {
        let metrics = Metrics::new().expect("metrics");
        metrics.purchases.with_label_values(&["sold_out"]).inc_by(3);
        metrics.jobs.with_label_values(&["queue_tick", "ok"]).inc();
        let text = metrics.render();
        assert!(
            text.contains("flashsale_purchases_total{outcome=\"sold_out\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("flashsale_jobs_total{kind=\"queue_tick\",result=\"ok\"} 1"),
            "{text}"
        );
    }

    /// The Grafana dashboard of `deploy/grafana/`: valid JSON, every panel queries through
    /// the dashboard's data source variable (so it imports as is), and every metric it names
    /// is one this service exports.
    #[test]
    fn the_grafana_dashboard_parses_and_names_only_exported_metrics() {
        let text = include_str!("../deploy/grafana/dashboards/flashsale.json");
        let dashboard: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        let exported = Metrics::new().expect("metrics").names().to_vec();
        let panels = dashboard["panels"].as_array().expect("panels");
        let mut named = std::collections::BTreeSet::new();
        for panel in panels.iter().filter(|panel| panel["type"] != "row") {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{}", panel["title"]);
            for target in targets {
                let expr = target["expr"].as_str().expect("expr");
                for name in metric_names(expr) {
                    named.insert(name);
                }
            }
        }
        let base = |name: &str| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| exported.iter().any(|e| e == base))
                .unwrap_or(name)
                .to_string()
        };
        let unknown: Vec<&String> = named
            .iter()
            .filter(|name| !exported.contains(&base(name)))
            .collect();
        assert!(unknown.is_empty(), "not exported: {unknown:?}");
        for wanted in [
            "flashsale_http_request_duration_seconds_bucket",
            "flashsale_db_pool_wait_seconds_bucket",
            "flashsale_job_lag_seconds_bucket",
            "flashsale_admission_lag_seconds_bucket",
            "flashsale_queue_waiting",
            "flashsale_purchases_total",
        ] {
            assert!(named.contains(wanted), "the dashboard shows {wanted}");
        }
    }

    /// The `flashsale_...` identifiers in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = expr;
        while let Some(start) = rest.find("flashsale_") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_string());
            rest = &tail[end..];
        }
        names
    }
}
