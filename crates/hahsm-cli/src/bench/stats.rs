//! What a measurement yields: operations counted in a fixed window and their
//! latencies in an HDR histogram; merging samples from several threads or
//! processes; and the per-point result printed, written and plotted.
use anyhow::{anyhow, Context, Result};
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies in microseconds, from 1 µs to an hour, to 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Operations that completed inside the measured window.
#[derive(Clone, Debug)]
pub struct Sample {
    pub ops: u64,
    pub errors: u64,
    /// The window's length.
    pub seconds: f64,
    pub latency_us: Histogram<u64>,
}

impl Sample {
    pub fn empty(seconds: f64) -> Sample {
        Sample {
            ops: 0,
            errors: 0,
            seconds,
            latency_us: new_histogram(),
        }
    }

    pub fn ops_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Adds a sample measured over the same window (another thread or process).
    pub fn merge(&mut self, other: &Sample) -> Result<()> {
        self.ops += other.ops;
        self.errors += other.errors;
        self.seconds = self.seconds.max(other.seconds);
        self.latency_us
            .add(&other.latency_us)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))
    }

    /// The form a worker process prints on stdout: JSON with the histogram as
    /// base64 of its V2 serialization.
    pub fn to_wire(&self) -> Result<String> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.latency_us, &mut bytes)
            .map_err(|e| anyhow!("serializing the histogram: {e:?}"))?;
        Ok(serde_json::to_string(&WireSample {
            ops: self.ops,
            errors: self.errors,
            seconds: self.seconds,
            histogram: base64::engine::general_purpose::STANDARD.encode(bytes),
        })?)
    }

    pub fn from_wire(text: &str) -> Result<Sample> {
        let w: WireSample = serde_json::from_str(text).context("a worker's result")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(w.histogram)
            .context("a worker's histogram")?;
        let latency_us = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| anyhow!("a worker's histogram: {e:?}"))?;
        Ok(Sample {
            ops: w.ops,
            errors: w.errors,
            seconds: w.seconds,
            latency_us,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct WireSample {
    ops: u64,
    errors: u64,
    seconds: f64,
    histogram: String,
}

/// One point: a mode on a number of threads and processes, with its baselines.
/// These are exactly the fields `--json` prints, one object per point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub mode: String,
    pub threads: usize,
    pub processes: usize,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_ops_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softhsm_ops_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softhsm_ratio: Option<f64>,
}

/// Rates to one decimal, ratios to three: more digits than the noise allows
/// would only mislead.
fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

impl Point {
    pub fn new(mode: String, threads: usize, processes: usize, s: &Sample) -> Point {
        let h = &s.latency_us;
        let (p50, p99, max) = if h.is_empty() {
            (0, 0, 0)
        } else {
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
        };
        Point {
            mode,
            threads,
            processes,
            ops_per_s: round(s.ops_per_s(), 1),
            p50_us: p50,
            p99_us: p99,
            max_us: max,
            errors: s.errors,
            raw_ops_per_s: None,
            raw_ratio: None,
            softhsm_ops_per_s: None,
            softhsm_ratio: None,
        }
    }

    fn ratio_to(&self, baseline: f64) -> Option<f64> {
        (baseline > 0.0).then(|| round(self.ops_per_s / baseline, 3))
    }

    pub fn set_raw(&mut self, s: &Sample) {
        let rate = round(s.ops_per_s(), 1);
        self.raw_ops_per_s = Some(rate);
        self.raw_ratio = self.ratio_to(rate);
    }

    pub fn set_softhsm(&mut self, s: &Sample) {
        let rate = round(s.ops_per_s(), 1);
        self.softhsm_ops_per_s = Some(rate);
        self.softhsm_ratio = self.ratio_to(rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ops: u64, latencies: &[u64]) -> Sample {
        let mut s = Sample::empty(2.0);
        s.ops = ops;
        for l in latencies {
            s.latency_us.record(*l).unwrap();
        }
        s
    }

    #[test]
    fn samples_survive_the_wire_and_merge() {
        let a = sample(10, &[100, 200, 300]);
        let b = Sample::from_wire(&sample(30, &[1000, 50_000]).to_wire().unwrap()).unwrap();
        assert_eq!(b.ops, 30);
        assert_eq!(b.latency_us.len(), 2);
        let mut m = a.clone();
        m.merge(&b).unwrap();
        assert_eq!(m.ops, 40);
        assert_eq!(m.ops_per_s(), 20.0);
        assert_eq!(m.latency_us.len(), 5);
        assert!(m.latency_us.max() >= 50_000);
        assert!(Sample::from_wire("{\"ops\":1}").is_err());
    }

    #[test]
    fn points_carry_percentiles_and_ratios() {
        let s = sample(200, &(1..=100).collect::<Vec<_>>());
        let mut p = Point::new("rsa-sign:2048".into(), 4, 1, &s);
        assert_eq!(p.ops_per_s, 100.0);
        assert_eq!(p.p50_us, 50);
        assert_eq!(p.p99_us, 99);
        assert_eq!(p.max_us, 100);
        p.set_raw(&sample(400, &[]));
        assert_eq!(p.raw_ratio, Some(0.5));
        let json = serde_json::to_value(&p).unwrap();
        assert!(json.get("softhsm_ratio").is_none());
        assert_eq!(json["raw_ops_per_s"], 200.0);
    }
}
