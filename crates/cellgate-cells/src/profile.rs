//! Behaviour profiles: what a cell normally uses per call, and how far a
//! call strays from it.
//!
//! Each metric keeps a running mean and variance (Welford). After
//! `warmup_calls` calls, a call whose usage lies more than a threshold of
//! standard deviations above the mean is an anomaly; its severity decides
//! the action. Anomalous calls do not enter the baseline, so a cell cannot
//! drag its own profile up with one outlier.
//!
//! Metrics per call: fuel, peak memory, wall-clock duration, output size
//! and host calls (how often the guest called into the host: WASI imports
//! and runtime services such as memory growth). A profile serialises (for
//! the store) with its metrics by name, so adding a metric later leaves
//! stored profiles readable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::sandbox::CallStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// What to do about an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyAction {
    /// Record it (log and audit).
    Log,
    /// Record it, then audit the cell's next `sample_calls` calls in detail
    /// (every metric, SHA-256 of arguments and output; never the content).
    Sample,
    /// Record it and suspend the cell until an administrator resumes it.
    Suspend,
    /// Record it and revoke the cell for good.
    Revoke,
}

/// Thresholds (in standard deviations above the mean) and actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileConfig {
    /// Calls observed before any call is judged.
    pub warmup_calls: u64,
    pub z_low: f64,
    pub z_medium: f64,
    pub z_high: f64,
    pub z_critical: f64,
    pub on_low: AnomalyAction,
    pub on_medium: AnomalyAction,
    pub on_high: AnomalyAction,
    pub on_critical: AnomalyAction,
    /// How many calls after an anomaly whose action is
    /// [`AnomalyAction::Sample`] are audited in detail.
    pub sample_calls: u64,
}

/// Most calls one anomaly may put under sampling.
pub const SAMPLE_CALLS_MAX: u64 = 100_000;

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            warmup_calls: 20,
            z_low: 4.0,
            z_medium: 8.0,
            z_high: 16.0,
            z_critical: 64.0,
            on_low: AnomalyAction::Log,
            on_medium: AnomalyAction::Sample,
            on_high: AnomalyAction::Suspend,
            on_critical: AnomalyAction::Revoke,
            sample_calls: 20,
        }
    }
}

impl ProfileConfig {
    pub fn validate(&self) -> Result<(), String> {
        let z = [self.z_low, self.z_medium, self.z_high, self.z_critical];
        if z.iter().any(|v| !v.is_finite() || *v <= 0.0) || z.windows(2).any(|w| w[0] > w[1]) {
            return Err(
                "profile thresholds must be positive and z_low ≤ z_medium ≤ z_high ≤ z_critical"
                    .into(),
            );
        }
        if !(1..=SAMPLE_CALLS_MAX).contains(&self.sample_calls) {
            return Err(format!(
                "sample_calls must be 1-{SAMPLE_CALLS_MAX}, got {}",
                self.sample_calls
            ));
        }
        Ok(())
    }

    pub fn action(&self, severity: Severity) -> AnomalyAction {
        match severity {
            Severity::Low => self.on_low,
            Severity::Medium => self.on_medium,
            Severity::High => self.on_high,
            Severity::Critical => self.on_critical,
        }
    }

    fn severity(&self, z: f64) -> Option<Severity> {
        if z >= self.z_critical {
            Some(Severity::Critical)
        } else if z >= self.z_high {
            Some(Severity::High)
        } else if z >= self.z_medium {
            Some(Severity::Medium)
        } else if z >= self.z_low {
            Some(Severity::Low)
        } else {
            None
        }
    }
}

/// A call that strayed from the profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Anomaly {
    pub metric: String,
    pub value: f64,
    pub mean: f64,
    pub z: f64,
    pub severity: Severity,
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} anomaly: {} = {:.0}, profile mean {:.0}, z = {:.1}",
            self.severity, self.metric, self.value, self.mean, self.z
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Running {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Running {
    fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }
    fn std(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            (self.m2 / (self.n - 1) as f64).sqrt()
        }
    }
}

/// Metric names, and a floor under each standard deviation: a perfectly
/// regular cell (σ = 0) must not turn every tiny variation into an
/// infinite z-score. Wall-clock time is noisy on a shared host, so its
/// floor is wide.
const METRICS: [(&str, f64, f64); N] = [
    // (name, relative floor × mean, absolute floor)
    ("fuelUsed", 0.05, 1_000.0),
    ("peakMemoryBytes", 0.05, 65_536.0),
    ("durationUs", 0.5, 2_000.0),
    ("outputBytes", 0.1, 256.0),
    ("hostCalls", 0.1, 8.0),
];
const N: usize = 5;

fn values(s: &CallStats) -> [f64; N] {
    [
        s.fuel_used as f64,
        s.peak_memory_bytes as f64,
        s.duration_us as f64,
        s.output_bytes as f64,
        s.host_calls as f64,
    ]
}

/// The behaviour profile of one installed cell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredProfile", into = "StoredProfile")]
pub struct BehaviourProfile {
    calls: u64,
    failures: u64,
    anomalies: u64,
    metrics: [Running; N],
    last_anomaly: Option<Anomaly>,
    /// Calls still to be audited in detail after an anomaly.
    sampling_remaining: u64,
}

/// The stored form: metrics by name.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredProfile {
    calls: u64,
    failures: u64,
    anomalies: u64,
    metrics: BTreeMap<String, Running>,
    last_anomaly: Option<Anomaly>,
    #[serde(default)]
    sampling_remaining: u64,
}

impl From<BehaviourProfile> for StoredProfile {
    fn from(p: BehaviourProfile) -> Self {
        StoredProfile {
            calls: p.calls,
            failures: p.failures,
            anomalies: p.anomalies,
            metrics: METRICS
                .iter()
                .zip(p.metrics)
                .map(|((name, _, _), m)| ((*name).to_owned(), m))
                .collect(),
            last_anomaly: p.last_anomaly,
            sampling_remaining: p.sampling_remaining,
        }
    }
}

impl From<StoredProfile> for BehaviourProfile {
    fn from(s: StoredProfile) -> Self {
        let mut metrics = [Running::default(); N];
        for (i, (name, _, _)) in METRICS.iter().enumerate() {
            if let Some(m) = s.metrics.get(*name) {
                metrics[i] = *m;
            }
        }
        BehaviourProfile {
            calls: s.calls,
            failures: s.failures,
            anomalies: s.anomalies,
            metrics,
            last_anomaly: s.last_anomaly,
            sampling_remaining: s.sampling_remaining,
        }
    }
}

impl BehaviourProfile {
    /// Records one call; returns the worst anomaly it shows, if any.
    pub fn observe(
        &mut self,
        stats: &CallStats,
        failed: bool,
        config: &ProfileConfig,
    ) -> Option<Anomaly> {
        self.calls += 1;
        if failed {
            self.failures += 1;
        }
        let xs = values(stats);
        let mut worst: Option<Anomaly> = None;
        // Judged per metric once that metric has seen the warm-up: a metric
        // added after a profile was stored starts its own warm-up.
        for (i, (name, rel, abs)) in METRICS.iter().enumerate() {
            let m = &self.metrics[i];
            if m.n >= config.warmup_calls {
                let sigma = m.std().max(rel * m.mean).max(*abs);
                let z = (xs[i] - m.mean) / sigma;
                if let Some(severity) = config.severity(z)
                    && worst.as_ref().is_none_or(|w| z > w.z)
                {
                    worst = Some(Anomaly {
                        metric: (*name).to_owned(),
                        value: xs[i],
                        mean: m.mean,
                        z,
                        severity,
                    });
                }
            }
        }
        match &worst {
            Some(a) => {
                self.anomalies += 1;
                self.last_anomaly = Some(a.clone());
            }
            None => {
                for (m, x) in self.metrics.iter_mut().zip(xs) {
                    m.push(x);
                }
            }
        }
        worst
    }

    pub fn calls(&self) -> u64 {
        self.calls
    }

    pub fn anomalies(&self) -> u64 {
        self.anomalies
    }

    /// Puts the next `calls` calls under sampling (never shortens a
    /// sampling already running).
    pub fn start_sampling(&mut self, calls: u64) {
        self.sampling_remaining = self.sampling_remaining.max(calls);
    }

    /// Whether the call about to be recorded is a sample; if so, counts it
    /// and returns how many samples remain after it.
    pub fn take_sample(&mut self) -> Option<u64> {
        if self.sampling_remaining == 0 {
            return None;
        }
        self.sampling_remaining -= 1;
        Some(self.sampling_remaining)
    }

    pub fn sampling_remaining(&self) -> u64 {
        self.sampling_remaining
    }

    /// Mean and deviation of every metric, for `cell_inspect`.
    pub fn summary(&self) -> Value {
        let mut metrics = serde_json::Map::new();
        for (i, (name, _, _)) in METRICS.iter().enumerate() {
            let m = &self.metrics[i];
            metrics.insert(
                (*name).to_owned(),
                json!({ "mean": m.mean, "std": m.std(), "samples": m.n }),
            );
        }
        json!({
            "calls": self.calls,
            "failures": self.failures,
            "anomalies": self.anomalies,
            "metrics": metrics,
            "lastAnomaly": self.last_anomaly,
            "sampling": {
                "active": self.sampling_remaining > 0,
                "remaining": self.sampling_remaining,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(fuel: u64) -> CallStats {
        CallStats {
            fuel_used: fuel,
            peak_memory_bytes: 1 << 20,
            duration_us: 100,
            output_bytes: 10,
            host_calls: 3,
        }
    }

    #[test]
    fn regular_calls_pass_and_an_outlier_is_graded() {
        let config = ProfileConfig {
            warmup_calls: 5,
            ..ProfileConfig::default()
        };
        let mut p = BehaviourProfile::default();
        for i in 0..10 {
            assert_eq!(p.observe(&stats(10_000 + i * 10), false, &config), None);
        }
        // σ is floored at 1 000 fuel (above 5% of the mean and the real
        // σ ≈ 30), so +5 000 is z ≈ 5: Low.
        let a = p.observe(&stats(15_050), false, &config).unwrap();
        assert_eq!((a.metric.as_str(), a.severity), ("fuelUsed", Severity::Low));
        let a = p.observe(&stats(10_000_000), false, &config).unwrap();
        assert_eq!(a.severity, Severity::Critical);
        // Anomalies stay out of the baseline.
        assert!(p.summary()["metrics"]["fuelUsed"]["mean"].as_f64().unwrap() < 10_100.0);
        assert_eq!(p.anomalies(), 2);
    }

    #[test]
    fn host_calls_are_judged_and_profiles_round_trip_through_json() {
        let config = ProfileConfig {
            warmup_calls: 5,
            ..ProfileConfig::default()
        };
        let mut p = BehaviourProfile::default();
        for _ in 0..6 {
            assert_eq!(p.observe(&stats(10_000), false, &config), None);
        }
        let chatty = CallStats {
            host_calls: 3_000,
            ..stats(10_000)
        };
        let a = p.observe(&chatty, false, &config).unwrap();
        assert_eq!(
            (a.metric.as_str(), a.severity),
            ("hostCalls", Severity::Critical)
        );
        p.start_sampling(2);
        p.start_sampling(1);
        assert_eq!(
            p.take_sample(),
            Some(1),
            "a shorter sampling does not cut one short"
        );

        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["metrics"]["hostCalls"]["n"], 6);
        let back: BehaviourProfile = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, p);
        // A profile stored before a metric existed: that metric starts empty.
        let mut old = json;
        old["metrics"].as_object_mut().unwrap().remove("hostCalls");
        let back: BehaviourProfile = serde_json::from_value(old).unwrap();
        assert_eq!(back.summary()["metrics"]["hostCalls"]["samples"], 0);
        assert_eq!(back.summary()["metrics"]["fuelUsed"]["samples"], 6);
    }

    #[test]
    fn nothing_is_judged_during_warmup() {
        let config = ProfileConfig::default();
        let mut p = BehaviourProfile::default();
        assert_eq!(p.observe(&stats(1), false, &config), None);
        assert_eq!(p.observe(&stats(1_000_000_000), false, &config), None);
    }

    #[test]
    fn thresholds_must_be_ordered() {
        let bad = ProfileConfig {
            z_low: 10.0,
            z_medium: 5.0,
            ..ProfileConfig::default()
        };
        assert!(bad.validate().is_err());
        assert!(ProfileConfig::default().validate().is_ok());
    }
}
