//! The node's figures for `GET /metrics`, in the OpenMetrics text format (prometheus-client):
//! requests by op, error answers by op and code, how long an instruction takes from its
//! frame's arrival to its answer, and the node's connections, watched topics and the
//! connections it closed. The embedding binary adds its own collectors (the store's, the
//! logger's) to the registry it hands to [`Ingress::expose_metrics`](crate::Ingress::expose_metrics).
//!
//! Counting costs an atomic add per request and a short lock per answer (the histogram), on
//! whichever thread handles it; nothing is counted per event sent.

use std::fmt;
use std::sync::Weak;
use std::time::Instant;

use ferry_protocol::{ErrorCode, Operation, Request};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::server::Shared;

/// What a request asked for, as a label: the protocol's ops, `custom` for the application's
/// own, and `invalid` for a frame that is not a request (not JSON, a binary frame, a missing or
/// mistyped field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RequestKind {
    Put,
    Append,
    Patch,
    Delete,
    Get,
    Stat,
    List,
    Sub,
    Unsub,
    Custom,
    Invalid,
}

impl RequestKind {
    const ALL: [RequestKind; 11] = [
        RequestKind::Put,
        RequestKind::Append,
        RequestKind::Patch,
        RequestKind::Delete,
        RequestKind::Get,
        RequestKind::Stat,
        RequestKind::List,
        RequestKind::Sub,
        RequestKind::Unsub,
        RequestKind::Custom,
        RequestKind::Invalid,
    ];

    pub(crate) fn of(request: &Request) -> RequestKind {
        match request {
            Request::Instruction { op, .. } => RequestKind::of_op(op),
            Request::Sub { .. } => RequestKind::Sub,
            Request::Unsub { .. } => RequestKind::Unsub,
        }
    }

    pub(crate) fn of_op(op: &Operation) -> RequestKind {
        match op {
            Operation::Put { .. } => RequestKind::Put,
            Operation::Append { .. } => RequestKind::Append,
            Operation::Patch { .. } => RequestKind::Patch,
            Operation::Delete { .. } => RequestKind::Delete,
            Operation::Get { .. } => RequestKind::Get,
            Operation::Stat { .. } => RequestKind::Stat,
            Operation::List { .. } => RequestKind::List,
            // Not a client's request (the ingress asks it itself), counted with the
            // application's ops should a client ever name it.
            Operation::WorkingSet { .. } | Operation::Custom { .. } => RequestKind::Custom,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            RequestKind::Put => "put",
            RequestKind::Append => "append",
            RequestKind::Patch => "patch",
            RequestKind::Delete => "delete",
            RequestKind::Get => "get",
            RequestKind::Stat => "stat",
            RequestKind::List => "list",
            RequestKind::Sub => "sub",
            RequestKind::Unsub => "unsub",
            RequestKind::Custom => "custom",
            RequestKind::Invalid => "invalid",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    op: &'static str,
    code: &'static str,
}

/// Seconds from a request's arrival to its answer: 100 us to 10 s.
const DURATION_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

/// The node's request counters, shared by its connections and the reply callbacks.
pub(crate) struct RequestMetrics {
    requests: Family<OpLabel, Counter>,
    /// `requests`' counter of each kind, looked up once: a request costs one atomic add.
    by_kind: [Counter; RequestKind::ALL.len()],
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
}

impl RequestMetrics {
    pub(crate) fn new() -> RequestMetrics {
        let requests = Family::<OpLabel, Counter>::default();
        let by_kind = RequestKind::ALL
            .map(|kind| requests.get_or_create(&OpLabel { op: kind.as_str() }).clone());
        RequestMetrics {
            requests,
            by_kind,
            errors: Family::default(),
            duration: Histogram::new(DURATION_BUCKETS),
        }
    }

    /// A request (or a frame that is not one) arrived.
    pub(crate) fn received(&self, kind: RequestKind) {
        self.by_kind[kind as usize].inc();
    }

    /// An error answer went out for a request of `kind`.
    pub(crate) fn error(&self, kind: RequestKind, code: ErrorCode) {
        self.errors.get_or_create(&ErrorLabels { op: kind.as_str(), code: code.as_str() }).inc();
    }

    /// The answer of an instruction that arrived at `arrived`, with its error code if it failed.
    pub(crate) fn answered(&self, kind: RequestKind, arrived: Instant, error: Option<ErrorCode>) {
        self.duration.observe(arrived.elapsed().as_secs_f64());
        if let Some(code) = error {
            self.error(kind, code);
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Requests received, by op (invalid: frames that are not a request)",
            self.requests.clone(),
        );
        registry.register(
            "request_errors",
            "Error answers sent, by the request's op and the error code",
            self.errors.clone(),
        );
        registry.register(
            "instruction_duration_seconds",
            "Time from an instruction's arrival at this node to its answer (applied, durable per \
             the store's sync policy, or refused by the worker)",
            self.duration.clone(),
        );
    }
}

/// The node's gauges and close counts, read from [`Shared`] at each scrape.
struct NodeFigures(Weak<Shared>);

impl fmt::Debug for NodeFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeFigures")
    }
}

impl Collector for NodeFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(shared) = self.0.upgrade() else { return Ok(()) };
        let stats = shared.stats();
        let gauges = [
            ("ingress_connections", "Open WebSocket connections", stats.connections),
            (
                "ingress_topics",
                "Files and prefixes watched through the change bus",
                stats.bus_topics,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "ingress_slow_consumers_closed",
                "Connections closed with 4008 (their send queue filled up)",
                stats.slow_consumers_closed,
            ),
            (
                "ingress_changes_lost_closed",
                "Connections closed with 4009 (changes of a watched topic were lost)",
                stats.changes_lost_closed,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        Ok(())
    }
}

/// Registers the node's figures (`shared`'s) in `registry`.
pub(crate) fn register(shared: &std::sync::Arc<Shared>, registry: &mut Registry) {
    shared.requests.register(registry);
    registry.register_collector(Box::new(NodeFigures(std::sync::Arc::downgrade(shared))));
}

/// The registry as OpenMetrics text.
pub(crate) fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// `Content-Type` of [`render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(metrics: &RequestMetrics) -> String {
        let mut registry = Registry::with_prefix("ferry");
        metrics.register(&mut registry);
        render(&registry).unwrap()
    }

    #[test]
    fn requests_errors_and_durations_are_counted_by_op_and_code() {
        let metrics = RequestMetrics::new();
        metrics.received(RequestKind::Put);
        metrics.received(RequestKind::Put);
        metrics.received(RequestKind::Invalid);
        metrics.error(RequestKind::Invalid, ErrorCode::BadRequest);
        metrics.answered(RequestKind::Put, Instant::now(), None);
        metrics.answered(RequestKind::Put, Instant::now(), Some(ErrorCode::Conflict));
        let text = rendered(&metrics);
        for line in [
            "ferry_requests_total{op=\"put\"} 2",
            "ferry_requests_total{op=\"invalid\"} 1",
            "ferry_requests_total{op=\"sub\"} 0",
            "ferry_request_errors_total{op=\"invalid\",code=\"bad_request\"} 1",
            "ferry_request_errors_total{op=\"put\",code=\"conflict\"} 1",
            "ferry_instruction_duration_seconds_count 2",
            "ferry_instruction_duration_seconds_bucket{le=\"+Inf\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn every_kind_has_its_own_counter_and_label() {
        let labels: std::collections::HashSet<&str> =
            RequestKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), RequestKind::ALL.len());
        for (i, kind) in RequestKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "ALL must list the kinds in declaration order");
        }
    }
}
