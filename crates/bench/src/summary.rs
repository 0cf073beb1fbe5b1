//! Summaries of timing samples: what every benchmark prints.

use std::time::Duration;

use serde_json::json;

/// Summary of a set of samples, in milliseconds.
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
        Self {
            min: ms[0],
            median: at(0.5),
            p99: at(0.99),
            max: ms[ms.len() - 1],
            n: ms.len(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        json!({"n": self.n, "min_ms": self.min, "median_ms": self.median, "p99_ms": self.p99, "max_ms": self.max})
    }

    pub fn row(&self, name: &str) -> String {
        format!(
            "{name:<28} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            self.n, self.min, self.median, self.p99, self.max
        )
    }
}
