//! A value against a threshold, with hysteresis and a sustain time: it is
//! `high` once it has been at or above `above` for `sustain`, and `normal`
//! again once it has been below `below` (lower than `above`) for `sustain`.
//! A value hovering at the line does not flap.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::ConfigError;

#[derive(Debug, Clone)]
pub struct Threshold {
    pub above: f64,
    pub below: f64,
    pub sustain: Duration,
    high: bool,
    /// Since when the value has been on the other side.
    crossing: Option<Instant>,
}

impl Threshold {
    /// `below` defaults to 5 points under `above`.
    pub fn new(above: f64, below: Option<f64>, sustain: Duration) -> Result<Self, ConfigError> {
        let below = below.unwrap_or(above - 5.0);
        if below > above {
            return Err(ConfigError::rule(
                "below",
                format!("({below}) must not be above `above` ({above})"),
            ));
        }
        Ok(Self {
            above,
            below,
            sustain,
            high: false,
            crossing: None,
        })
    }

    /// Observes a value; returns whether the state is high.
    pub fn observe(&mut self, value: f64, now: Instant) -> bool {
        let across = if self.high {
            value < self.below
        } else {
            value >= self.above
        };
        if !across {
            self.crossing = None;
            return self.high;
        }
        let since = *self.crossing.get_or_insert(now);
        if now.duration_since(since) >= self.sustain {
            self.high = !self.high;
            self.crossing = None;
        }
        self.high
    }

    pub fn state(&self) -> &'static str {
        if self.high { "high" } else { "normal" }
    }
}

/// Reads `above`, `below` and `for` from a beacon's config.
pub fn from_config(
    above: Option<f64>,
    below: Option<f64>,
    sustain: Option<&str>,
    default_above: f64,
) -> Result<Threshold, ConfigError> {
    let above = above.unwrap_or(default_above);
    if !(0.0..=100.0).contains(&above) {
        return Err(ConfigError::value(
            "above",
            format!("{above} is not a percentage (0 to 100)"),
        ));
    }
    if below.is_some_and(|b| !(0.0..=100.0).contains(&b)) {
        return Err(ConfigError::value(
            "below",
            format!(
                "{} is not a percentage (0 to 100)",
                below.unwrap_or_default()
            ),
        ));
    }
    let sustain = match sustain {
        Some(s) => crate::config::duration("for", &toml::Value::String(s.to_string()))?,
        None => Duration::ZERO,
    };
    Threshold::new(above, below, sustain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn hovering_at_the_line_does_not_flap() {
        let mut t = Threshold::new(90.0, Some(80.0), Duration::ZERO).unwrap();
        assert!(!t.observe(89.0, Instant::now()));
        assert!(t.observe(90.0, Instant::now()));
        for v in [89.0, 91.0, 85.0, 90.5, 81.0] {
            assert!(
                t.observe(v, Instant::now()),
                "{v} stays high until below 80"
            );
        }
        assert!(!t.observe(79.0, Instant::now()));
        assert!(!t.observe(89.9, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn it_must_be_sustained() {
        let mut t = Threshold::new(90.0, None, 30 * S).unwrap();
        assert!(!t.observe(95.0, Instant::now()));
        advance(20 * S).await;
        assert!(!t.observe(50.0, Instant::now()), "a short spike");
        assert!(!t.observe(95.0, Instant::now()));
        advance(29 * S).await;
        assert!(!t.observe(96.0, Instant::now()));
        advance(S).await;
        assert!(t.observe(97.0, Instant::now()), "30 s above");
        assert!(
            t.observe(10.0, Instant::now()),
            "and 30 s below before it is normal"
        );
        advance(30 * S).await;
        assert!(!t.observe(10.0, Instant::now()));
    }

    #[test]
    fn bad_thresholds_are_refused() {
        assert!(from_config(Some(120.0), None, None, 90.0).is_err());
        assert!(from_config(Some(50.0), Some(60.0), None, 90.0).is_err());
        assert!(from_config(None, None, Some("soon"), 90.0).is_err());
    }
}
