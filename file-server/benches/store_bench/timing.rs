//! Latency recording shared by the workloads.

use std::time::Duration;

use hdrhistogram::Histogram;

/// A histogram of microseconds, from 1 µs to 10 minutes.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// `d` in whole microseconds, at least 1 (the histogram's lowest value).
pub fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX).max(1)
}

/// "p50 x ms, p99 y ms" of a microsecond histogram.
pub fn p50_p99(latencies: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0
    )
}
