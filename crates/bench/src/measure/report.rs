//! How a benchmark says its result: a table for people, or one JSON
//! object with `--json`.

use super::prelude::*;

/// Prints a benchmark's result: a table for people, or JSON.
pub struct Report {
    name: &'static str,
    title: String,
    timings: Vec<(String, Summary)>,
    figures: Vec<(String, Value, String)>,
}

impl Report {
    pub fn new(name: &'static str, title: impl Into<String>) -> Self {
        Self {
            name,
            title: title.into(),
            timings: Vec::new(),
            figures: Vec::new(),
        }
    }

    pub(super) fn timing(&mut self, what: &str, samples: &[Duration]) {
        self.timings.push((what.to_string(), Summary::of(samples)));
    }

    pub(super) fn figure(&mut self, what: &str, value: impl Into<Value>, unit: &str) {
        self.figures
            .push((what.to_string(), value.into(), unit.to_string()));
    }

    pub fn print(&self, as_json: bool) {
        if as_json {
            let mut obj = serde_json::Map::new();
            obj.insert("benchmark".into(), json!(self.name));
            for (what, s) in &self.timings {
                obj.insert(what.replace(' ', "_"), s.json());
            }
            for (what, v, unit) in &self.figures {
                obj.insert(what.replace(' ', "_"), json!({"value": v, "unit": unit}));
            }
            println!("{}", Value::Object(obj));
            return;
        }
        println!("{}", self.title);
        if !self.timings.is_empty() {
            println!(
                "{:<32} {:>6} {:>9} {:>9} {:>9} {:>9}",
                "(ms)", "n", "min", "median", "p99", "max"
            );
            for (what, s) in &self.timings {
                println!("{}", s.row(what));
            }
        }
        for (what, v, unit) in &self.figures {
            let v = match v {
                Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string(),
            };
            println!("{what:<32} {v:>12} {unit}");
        }
    }
}
