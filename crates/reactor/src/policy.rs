//! When a matched rule acts: correlation (`count` within `window`, a
//! condition held `for` a while) and throttles (`debounce`, `once_within`,
//! `max_rate`), per group of events (`group_by`).
//!
//! Pure state machines over explicit instants, so every edge is tested
//! with paused time and nothing here sleeps.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// A rule's correlation and throttles, as configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Act when this many events arrived within the window.
    pub count: Option<(usize, Duration)>,
    /// Act when the condition has held continuously this long.
    pub hold: Option<Duration>,
    /// Act once the burst has been quiet this long, with its last event.
    pub debounce: Option<Duration>,
    /// Act on the first, then stay quiet this long.
    pub once_within: Option<Duration>,
    /// At most this many actions per period.
    pub max_rate: Option<(usize, Duration)>,
}

/// One group's state under one rule.
#[derive(Debug)]
pub(crate) struct Track<E> {
    hits: VecDeque<Instant>,
    holding_since: Option<Instant>,
    hold_event: Option<E>,
    hold_fired: bool,
    debounce_until: Option<Instant>,
    debounce_event: Option<E>,
    last_acted: Option<Instant>,
    rate: VecDeque<Instant>,
    /// Actions throttled away since the last one that went out.
    pub suppressed: u64,
    pub last_touch: Instant,
}

impl<E> Track<E> {
    pub fn new(now: Instant) -> Self {
        Self {
            hits: VecDeque::new(),
            holding_since: None,
            hold_event: None,
            hold_fired: false,
            debounce_until: None,
            debounce_event: None,
            last_acted: None,
            rate: VecDeque::new(),
            suppressed: 0,
            last_touch: now,
        }
    }

    /// The events a running hold or debounce holds, to act on later.
    pub fn held(&self) -> impl Iterator<Item = &E> {
        let hold = (self.holding_since.is_some() && !self.hold_fired)
            .then_some(self.hold_event.as_ref())
            .flatten();
        let debounce = self
            .debounce_until
            .is_some()
            .then_some(self.debounce_event.as_ref())
            .flatten();
        hold.into_iter().chain(debounce)
    }

    /// Something is still to happen (a hold or a debounce running).
    pub fn pending(&self) -> bool {
        (self.holding_since.is_some() && !self.hold_fired) || self.debounce_until.is_some()
    }
}

/// A track with its instants as wall-clock microseconds: what is stored,
/// so that a restarted master goes on with the windows, holds and
/// throttles where the last one left them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SavedTrack<E> {
    pub hits: Vec<i64>,
    pub holding_since: Option<i64>,
    pub hold_event: Option<E>,
    pub hold_fired: bool,
    pub debounce_until: Option<i64>,
    pub debounce_event: Option<E>,
    pub last_acted: Option<i64>,
    pub rate: Vec<i64>,
    pub suppressed: u64,
    pub last_touch: i64,
}

/// One moment on both clocks: how a monotonic instant becomes wall-clock
/// time to be stored, and back after a restart.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Instant,
    pub now_us: i64,
}

impl Clock {
    fn to_us(self, i: Instant) -> i64 {
        if i <= self.now {
            self.now_us - self.now.duration_since(i).as_micros() as i64
        } else {
            self.now_us + i.duration_since(self.now).as_micros() as i64
        }
    }

    /// None for a time before this machine's monotonic clock began (a
    /// moment before the last boot): it is dropped.
    fn to_instant(self, us: i64) -> Option<Instant> {
        let d = Duration::from_micros(us.abs_diff(self.now_us));
        if us <= self.now_us {
            self.now.checked_sub(d)
        } else {
            Some(self.now + d)
        }
    }
}

impl<E: Clone> Track<E> {
    pub fn save(&self, clock: Clock) -> SavedTrack<E> {
        SavedTrack {
            hits: self.hits.iter().map(|i| clock.to_us(*i)).collect(),
            holding_since: self.holding_since.map(|i| clock.to_us(i)),
            hold_event: self.hold_event.clone(),
            hold_fired: self.hold_fired,
            debounce_until: self.debounce_until.map(|i| clock.to_us(i)),
            debounce_event: self.debounce_event.clone(),
            last_acted: self.last_acted.map(|i| clock.to_us(i)),
            rate: self.rate.iter().map(|i| clock.to_us(*i)).collect(),
            suppressed: self.suppressed,
            last_touch: clock.to_us(self.last_touch),
        }
    }

    pub fn restore(saved: SavedTrack<E>, clock: Clock) -> Self {
        let at = |us: i64| clock.to_instant(us);
        Self {
            hits: saved.hits.into_iter().filter_map(at).collect(),
            holding_since: saved.holding_since.and_then(at),
            hold_event: saved.hold_event,
            hold_fired: saved.hold_fired,
            debounce_until: saved.debounce_until.and_then(at),
            debounce_event: saved.debounce_event,
            last_acted: saved.last_acted.and_then(at),
            rate: saved.rate.into_iter().filter_map(at).collect(),
            suppressed: saved.suppressed,
            last_touch: at(saved.last_touch).unwrap_or(clock.now),
        }
    }
}

/// What an event or a timer led to.
#[derive(Debug, PartialEq)]
pub(crate) enum Step<E> {
    /// Nothing (yet).
    Wait,
    /// Act, on this event.
    Act(E),
    /// Would have acted, but a throttle said no.
    Suppressed,
}

impl Policy {
    /// An event matched the rule's tag; `holds` is its condition.
    pub(crate) fn on_event<E: Clone>(
        &self,
        t: &mut Track<E>,
        event: E,
        holds: bool,
        now: Instant,
    ) -> Step<E> {
        t.last_touch = now;
        if self.hold.is_some() {
            if holds {
                if t.holding_since.is_none() {
                    t.holding_since = Some(now);
                    t.hold_fired = false;
                }
                t.hold_event = Some(event);
            } else {
                // The condition broke: the streak starts over.
                t.holding_since = None;
                t.hold_event = None;
                t.hold_fired = false;
            }
            return Step::Wait;
        }
        if !holds {
            return Step::Wait;
        }
        if let Some((n, window)) = self.count {
            t.hits.push_back(now);
            while t
                .hits
                .front()
                .is_some_and(|h| now.duration_since(*h) > window)
            {
                t.hits.pop_front();
            }
            if t.hits.len() < n {
                return Step::Wait;
            }
            t.hits.clear();
        }
        self.trigger(t, event, now)
    }

    /// Time passed: a hold may be complete, a debounce may have settled.
    pub(crate) fn on_timer<E: Clone>(&self, t: &mut Track<E>, now: Instant) -> Step<E> {
        if let (Some(hold), Some(since)) = (self.hold, t.holding_since)
            && !t.hold_fired
            && now.duration_since(since) >= hold
        {
            t.hold_fired = true;
            if let Some(e) = t.hold_event.clone() {
                return self.trigger(t, e, now);
            }
        }
        if t.debounce_until.is_some_and(|d| now >= d) {
            t.debounce_until = None;
            if let Some(e) = t.debounce_event.take() {
                return self.act(t, e, now);
            }
        }
        Step::Wait
    }

    /// When `on_timer` next has something to do for this track.
    pub(crate) fn deadline<E>(&self, t: &Track<E>) -> Option<Instant> {
        let hold = match (self.hold, t.holding_since) {
            (Some(h), Some(since)) if !t.hold_fired => Some(since + h),
            _ => None,
        };
        match (hold, t.debounce_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn trigger<E>(&self, t: &mut Track<E>, event: E, now: Instant) -> Step<E> {
        if let Some(quiet) = self.debounce {
            t.debounce_until = Some(now + quiet);
            t.debounce_event = Some(event);
            return Step::Wait;
        }
        self.act(t, event, now)
    }

    fn act<E>(&self, t: &mut Track<E>, event: E, now: Instant) -> Step<E> {
        if let (Some(quiet), Some(last)) = (self.once_within, t.last_acted)
            && now.duration_since(last) < quiet
        {
            t.suppressed += 1;
            return Step::Suppressed;
        }
        if let Some((n, period)) = self.max_rate {
            while t
                .rate
                .front()
                .is_some_and(|r| now.duration_since(*r) >= period)
            {
                t.rate.pop_front();
            }
            if t.rate.len() >= n {
                t.suppressed += 1;
                return Step::Suppressed;
            }
            t.rate.push_back(now);
        }
        t.last_acted = Some(now);
        Step::Act(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const S: Duration = Duration::from_secs(1);

    fn acts(steps: &[Step<u32>]) -> Vec<u32> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Act(e) => Some(*e),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn five_within_the_window_act_once_and_four_do_not() {
        let p = Policy {
            count: Some((5, 60 * S)),
            ..Default::default()
        };
        let mut t = Track::new(Instant::now());
        let mut steps = Vec::new();
        for i in 0..4 {
            steps.push(p.on_event(&mut t, i, true, Instant::now()));
            advance(10 * S).await;
        }
        assert!(acts(&steps).is_empty(), "four are not enough");
        steps.push(p.on_event(&mut t, 4, true, Instant::now()));
        assert_eq!(acts(&steps), vec![4]);
        // The window starts over after acting.
        for i in 5..9 {
            assert_eq!(p.on_event(&mut t, i, true, Instant::now()), Step::Wait);
        }
        // Events that do not meet the condition do not count.
        assert_eq!(p.on_event(&mut t, 99, false, Instant::now()), Step::Wait);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_edge() {
        let p = Policy {
            count: Some((2, 10 * S)),
            ..Default::default()
        };
        let mut t = Track::new(Instant::now());
        assert_eq!(p.on_event(&mut t, 1, true, Instant::now()), Step::Wait);
        advance(10 * S).await;
        // Exactly at the edge: still inside.
        assert_eq!(p.on_event(&mut t, 2, true, Instant::now()), Step::Act(2));
        assert_eq!(p.on_event(&mut t, 3, true, Instant::now()), Step::Wait);
        advance(10 * S + Duration::from_millis(1)).await;
        // Just past the edge: the first has left the window.
        assert_eq!(p.on_event(&mut t, 4, true, Instant::now()), Step::Wait);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_acts_only_after_the_condition_held_the_whole_time() {
        let p = Policy {
            hold: Some(30 * S),
            ..Default::default()
        };
        let mut t = Track::new(Instant::now());
        // A short spike: above, then below within 30 s.
        p.on_event(&mut t, 1, true, Instant::now());
        assert_eq!(p.deadline(&t), Some(Instant::now() + 30 * S));
        advance(20 * S).await;
        p.on_event(&mut t, 2, false, Instant::now());
        assert_eq!(p.deadline(&t), None);
        advance(20 * S).await;
        assert_eq!(p.on_timer(&mut t, Instant::now()), Step::Wait);
        // Sustained: above, and still above 30 s later.
        p.on_event(&mut t, 3, true, Instant::now());
        advance(29 * S).await;
        p.on_event(&mut t, 4, true, Instant::now());
        assert_eq!(p.on_timer(&mut t, Instant::now()), Step::Wait);
        advance(S).await;
        assert_eq!(p.on_timer(&mut t, Instant::now()), Step::Act(4));
        // Once per streak.
        advance(60 * S).await;
        assert_eq!(p.on_timer(&mut t, Instant::now()), Step::Wait);
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_acts_once_after_the_burst_settles() {
        let p = Policy {
            debounce: Some(2 * S),
            ..Default::default()
        };
        let mut t = Track::new(Instant::now());
        for i in 0..100 {
            assert_eq!(p.on_event(&mut t, i, true, Instant::now()), Step::Wait);
            advance(S / 2).await;
            assert_eq!(p.on_timer(&mut t, Instant::now()), Step::Wait);
        }
        advance(S + S / 2 - Duration::from_millis(1)).await;
        assert_eq!(
            p.on_timer(&mut t, Instant::now()),
            Step::Wait,
            "not quite settled"
        );
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            p.on_timer(&mut t, Instant::now()),
            Step::Act(99),
            "the last event"
        );
        assert_eq!(p.on_timer(&mut t, Instant::now()), Step::Wait);
    }

    #[tokio::test(start_paused = true)]
    async fn once_within_and_max_rate_count_what_they_suppress() {
        let p = Policy {
            once_within: Some(60 * S),
            ..Default::default()
        };
        let mut t = Track::new(Instant::now());
        assert_eq!(p.on_event(&mut t, 1, true, Instant::now()), Step::Act(1));
        for i in 2..5 {
            advance(10 * S).await;
            assert_eq!(
                p.on_event(&mut t, i, true, Instant::now()),
                Step::Suppressed
            );
        }
        assert_eq!(t.suppressed, 3);
        advance(30 * S).await; // 60 s after the first
        assert_eq!(p.on_event(&mut t, 5, true, Instant::now()), Step::Act(5));

        let p = Policy {
            max_rate: Some((3, 60 * S)),
            ..Default::default()
        };
        let mut t = Track::new(Instant::now());
        let steps: Vec<_> = (0..5)
            .map(|i| p.on_event(&mut t, i, true, Instant::now()))
            .collect();
        assert_eq!(acts(&steps), vec![0, 1, 2]);
        assert_eq!(t.suppressed, 2);
        advance(60 * S).await;
        assert_eq!(p.on_event(&mut t, 9, true, Instant::now()), Step::Act(9));
    }

    #[tokio::test(start_paused = true)]
    async fn a_saved_track_goes_on_after_a_restore() {
        let p = Policy {
            count: Some((3, 60 * S)),
            ..Default::default()
        };
        let mut t = Track::new(Instant::now());
        p.on_event(&mut t, 1, true, Instant::now());
        advance(10 * S).await;
        p.on_event(&mut t, 2, true, Instant::now());
        let saved = t.save(Clock {
            now: Instant::now(),
            now_us: 1_000_000_000,
        });
        // Another process, 5 s later on both clocks.
        advance(5 * S).await;
        let mut t = Track::restore(
            saved,
            Clock {
                now: Instant::now(),
                now_us: 1_005_000_000,
            },
        );
        assert_eq!(p.on_event(&mut t, 3, true, Instant::now()), Step::Act(3));
    }

    #[tokio::test(start_paused = true)]
    async fn count_then_once_within() {
        let p = Policy {
            count: Some((3, 10 * S)),
            once_within: Some(60 * S),
            ..Default::default()
        };
        let mut t = Track::new(Instant::now());
        let steps: Vec<_> = (0..9)
            .map(|i| p.on_event(&mut t, i, true, Instant::now()))
            .collect();
        assert_eq!(
            acts(&steps),
            vec![2],
            "three make one; the next threes are throttled"
        );
        assert_eq!(t.suppressed, 2);
    }
}
