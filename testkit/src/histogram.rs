//! A compact latency histogram (log-linear, microseconds) and its percentiles.

use serde::Serialize;

/// Log-linear histogram of microsecond values: exact below 1024 µs, then 64 sub-buckets per
/// power of two (≤ 1.6 % error). About 24 KiB when full, so every subscriber can keep one.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

const LINEAR: u64 = 1024;
const SUB_BITS: u32 = 6;

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 10
    let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (LINEAR + u64::from(exp - 10) * (1 << SUB_BITS) + sub) as usize
}

fn value_of(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let rest = index - LINEAR;
    let exp = 10 + (rest >> SUB_BITS) as u32;
    let sub = rest & ((1 << SUB_BITS) - 1);
    // Midpoint of the bucket.
    let low = ((1 << SUB_BITS) + sub) << (exp - SUB_BITS);
    low + (1u64 << (exp - SUB_BITS)) / 2
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        let i = bucket_of(v);
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        if rank >= self.count {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(value_of(i).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn summary(&self) -> Option<Percentiles> {
        Some(Percentiles {
            p50: self.quantile(0.50)?,
            p99: self.quantile(0.99)?,
            max: self.max,
            samples: self.count,
        })
    }
}

/// p50/p99/max of a histogram, in its unit.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    pub samples: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.02, "{p50}");
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), Some(100_000));
        let mut small = Histogram::default();
        small.record(7);
        assert_eq!(small.summary().unwrap().p50, 7);
        assert!(Histogram::default().summary().is_none());
    }
}
