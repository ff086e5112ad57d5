//! Latency histograms (microsecond resolution) and their JSON summaries.

use std::time::Duration;

use crate::report::Summary;
use hdrhistogram::Histogram;

/// 1 µs .. 1 h, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

/// Count, mean and percentiles in milliseconds (`None` when empty).
pub fn summary_ms(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let ms = |us: u64| Some(round3(us as f64 / 1000.0));
    Summary {
        count: h.len(),
        mean: Some(round3(h.mean() / 1000.0)),
        p50: ms(h.value_at_quantile(0.50)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Milliseconds with microsecond precision.
pub fn ms(d: Duration) -> f64 {
    round3(d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let mut h = histogram();
        assert!(summary_ms(&h).p50.is_none());
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us * 1000));
        }
        let s = summary_ms(&h);
        assert_eq!(s.count, 1000);
        let p50 = s.p50.unwrap();
        assert!((499.0..=501.0).contains(&p50), "{p50}");
        let max = s.max.unwrap();
        assert!((999.0..=1001.0).contains(&max), "{max}");
    }
}
