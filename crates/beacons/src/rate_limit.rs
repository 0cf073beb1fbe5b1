//! The rate limit that keeps a storm of events off the bus without losing
//! count: what is over `N` a period is dropped and counted, and the count
//! is reported once the period ends.

use std::time::Duration;

use tokio::time::Instant;

/// Counts events against `N` per period; what is over is dropped and
/// counted, and the count goes out in one event when the period ends.
#[derive(Debug)]
pub struct RateLimit {
    pub max: u64,
    pub per: Duration,
    window_start: Instant,
    in_window: u64,
    pub dropped: u64,
}

impl RateLimit {
    pub fn new(max: u64, per: Duration) -> Self {
        Self {
            max,
            per,
            window_start: Instant::now(),
            in_window: 0,
            dropped: 0,
        }
    }

    /// Whether one more event may go out now. When a new window starts,
    /// returns the count dropped in the last one (to report).
    pub fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut report = 0;
        if now.duration_since(self.window_start) >= self.per {
            self.window_start = now;
            self.in_window = 0;
            report = std::mem::take(&mut self.dropped);
        }
        if self.in_window < self.max {
            self.in_window += 1;
            (true, report)
        } else {
            self.dropped += 1;
            (false, report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_drops_counts_and_reports() {
        let mut r = RateLimit::new(3, Duration::from_secs(1));
        let got: Vec<bool> = (0..5).map(|_| r.admit(Instant::now()).0).collect();
        assert_eq!(got, vec![true, true, true, false, false]);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            r.admit(Instant::now()),
            (true, 2),
            "the next window reports the two dropped"
        );
        assert_eq!(r.admit(Instant::now()), (true, 0));
    }
}
