//! The reactor driven with paused time: windows, holds, group caps, saved
//! state across a restart, and `explain`.

use super::*;
use crate::policy::Clock;
use tokio::time::advance;

fn rules(text: &str) -> Arc<Rules> {
    Arc::new(Rules::from_texts(&[("r.toml".into(), text.into())]).unwrap())
}

fn login(minion: &str, kind: &str) -> Event {
    Event {
        minion: minion.into(),
        seq: 1,
        tag: format!("minion/{minion}/beacon/login/btmp"),
        time_us: 0,
        data: format!(r#"{{"kind":"{kind}"}}"#).into_bytes(),
        cause: 0,
        local_orders: Default::default(),
    }
}

const BRUTE: &str = r#"
    [[rule]]
    name = "brute-force"
    on = "minion/*/beacon/login/*"
    when = 'event.data.kind == "failed"'
    count = 5
    window = "60s"
    [[rule.action]]
    fire = "alert"
"#;

#[tokio::test(start_paused = true)]
async fn windows_count_per_minion() {
    let mut r = Reactor::new(rules(BRUTE));
    let mut fired = Vec::new();
    for _ in 0..4 {
        fired.extend(r.on_event(&login("web1", "failed"), Instant::now()));
        fired.extend(r.on_event(&login("web2", "failed"), Instant::now()));
        advance(Duration::from_secs(5)).await;
    }
    // A success does not count.
    fired.extend(r.on_event(&login("web1", "ok"), Instant::now()));
    assert!(fired.is_empty(), "four failures each: nothing yet");
    fired.extend(r.on_event(&login("web1", "failed"), Instant::now()));
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].event.minion, "web1");
}

#[tokio::test(start_paused = true)]
async fn a_sustained_condition_fires_from_the_timer() {
    let mut r = Reactor::new(rules(
        r#"
        [[rule]]
        name = "hot"
        on = "minion/*/beacon/cpu"
        when = "event.data.percent > 90"
        for = "30s"
        [[rule.action]]
        fire = "hot"
        "#,
    ));
    let cpu = |p: u32| Event {
        minion: "web1".into(),
        tag: "minion/web1/beacon/cpu".into(),
        data: format!(r#"{{"percent":{p}}}"#).into_bytes(),
        ..Default::default()
    };
    assert!(r.on_event(&cpu(95), Instant::now()).is_empty());
    advance(Duration::from_secs(10)).await;
    assert!(r.on_event(&cpu(20), Instant::now()).is_empty()); // a short spike
    assert_eq!(r.next_deadline(), None);
    assert!(r.on_event(&cpu(97), Instant::now()).is_empty());
    let due = r.next_deadline().unwrap();
    assert_eq!(due, Instant::now() + Duration::from_secs(30));
    advance(Duration::from_secs(30)).await;
    let fired = r.on_timer(Instant::now());
    assert_eq!(fired.len(), 1);
}

fn user_login(user: &str) -> Event {
    Event {
        minion: "web1".into(),
        tag: "minion/web1/beacon/login/btmp".into(),
        data: format!(r#"{{"user":"{user}"}}"#).into_bytes(),
        ..Default::default()
    }
}

/// A count rule grouped by a user from event data, keeping at most
/// `max_groups` groups.
fn per_user(max_groups: usize) -> Reactor {
    Reactor::new(rules(&format!(
        r#"
        [[rule]]
        name = "per-user"
        on = "minion/*/beacon/login/*"
        group_by = ["data.user"]
        count = 2
        window = "1h"
        max_groups = {max_groups}
        [[rule.action]]
        fire = "twice"
        "#
    )))
}

#[tokio::test(start_paused = true)]
async fn groups_per_rule_are_capped_and_the_oldest_give_way() {
    // A cap of 3: one group goes at a time.
    let mut r = per_user(3);
    // A thousand users from event data: no more than 3 groups kept.
    for i in 0..1000 {
        r.on_event(&user_login(&format!("u{i}")), Instant::now());
        advance(Duration::from_millis(10)).await;
    }
    assert_eq!(r.groups(), 3);
    assert_eq!(r.evicted, 997);
    // The newest kept their count; the oldest (u0) started over.
    assert_eq!(r.on_event(&user_login("u999"), Instant::now()).len(), 1);
    assert!(r.on_event(&user_login("u0"), Instant::now()).is_empty());
    // What was forgotten is forgotten in the store too.
    let (cleared, changes) = r.take_changes(Clock {
        now: Instant::now(),
        now_us: 1,
    });
    assert!(!cleared);
    assert!(changes.iter().filter(|(_, v)| v.is_none()).count() >= 997);

    // A cap of 640: the oldest 10 (a 64th) go together, never
    // more groups than the cap, never a new one.
    let mut r = per_user(640);
    for i in 0..5000 {
        r.on_event(&user_login(&format!("u{i}")), Instant::now());
        advance(Duration::from_millis(10)).await;
        assert!(r.groups() <= 640);
    }
    assert_eq!(r.groups() as u64 + r.evicted, 5000);
    assert_eq!(r.on_event(&user_login("u4999"), Instant::now()).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn saved_windows_and_holds_go_on_in_a_new_reactor() {
    const RULES: &str = r#"
        [[rule]]
        name = "brute-force"
        on = "minion/*/beacon/login/*"
        when = 'event.data.kind == "failed"'
        count = 3
        window = "60s"
        [[rule.action]]
        fire = "alert"

        [[rule]]
        name = "hot"
        on = "minion/*/beacon/cpu"
        when = "event.data.percent > 90"
        for = "30s"
        [[rule.action]]
        fire = "hot"
        "#;
    let cpu = Event {
        minion: "web1".into(),
        tag: "minion/web1/beacon/cpu".into(),
        data: br#"{"percent":95}"#.to_vec(),
        ..Default::default()
    };
    let mut r = Reactor::new(rules(RULES));
    r.on_event(&login("web1", "failed"), Instant::now());
    r.on_event(&login("web1", "failed"), Instant::now());
    r.on_event(&cpu, Instant::now());
    let clock = |us| Clock {
        now: Instant::now(),
        now_us: us,
    };
    let (_, saved) = r.take_changes(clock(1_000_000_000));
    drop(r);
    // Restarted 10 s later.
    advance(Duration::from_secs(10)).await;
    let mut r = Reactor::new(rules(RULES));
    let saved: Vec<(String, Vec<u8>)> = saved
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    assert_eq!(r.restore(saved, clock(1_010_000_000)), 2);
    assert_eq!(
        r.on_event(&login("web1", "failed"), Instant::now()).len(),
        1
    );
    assert_eq!(
        r.next_deadline(),
        Some(Instant::now() + Duration::from_secs(20))
    );
    advance(Duration::from_secs(20)).await;
    assert_eq!(r.on_timer(Instant::now()).len(), 1);
    // A rule changed across the restart starts over.
    let (_, saved) = r.take_changes(clock(1_030_000_000));
    let mut r = Reactor::new(rules(&RULES.replace("count = 3", "count = 4")));
    let saved = saved
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    assert_eq!(r.restore(saved, clock(1_030_000_000)), 1);
}

#[test]
fn explains_what_one_event_would_do() {
    let rs = rules(BRUTE);
    let why = Reactor::explain(&rs, &login("web1", "failed")).join("\n");
    assert!(
        why.contains("\"brute-force\"") && why.contains("is true") && why.contains("5 such events"),
        "{why}"
    );
    let why = Reactor::explain(&rs, &login("web1", "ok")).join("\n");
    assert!(why.contains("is false"), "{why}");
    let why = Reactor::explain(
        &rs,
        &Event {
            tag: "x".into(),
            ..Default::default()
        },
    )
    .join("\n");
    assert!(why.contains("no rule"), "{why}");
}

#[test]
fn an_event_caused_by_a_job_is_explained_as_such_not_as_a_tag_mismatch() {
    let rs = rules(BRUTE);
    let mut caused = login("web1", "failed");
    caused.cause = 7;
    let why = Reactor::explain(&rs, &caused).join("\n");
    assert!(
        why.contains("the tag matches")
            && why.contains("caused by job 7")
            && why.contains("caused = true")
            && !why.contains("no rule's `on` matches"),
        "{why}"
    );
}

#[tokio::test(start_paused = true)]
async fn condition_failures_and_fires_are_counted_per_rule() {
    let rs = rules(
        r#"
        [[rule]]
        name = "kind"
        on = "minion/*/beacon/login/*"
        when = 'event.data.state == "absent"'
        [[rule.action]]
        fire = "gone"
        "#,
    );
    let mut r = Reactor::new(rs.clone());
    for _ in 0..3 {
        assert!(
            r.on_event(&login("web1", "failed"), Instant::now())
                .is_empty()
        );
    }
    let c = rs.get(0).stats.counts();
    assert_eq!((c.fires, c.condition_errors), (0, 3));
    assert!(c.last_error.contains("state"), "{}", c.last_error);
    let mut absent = login("web1", "x");
    absent.data = br#"{"state":"absent"}"#.to_vec();
    let fired = r.on_event(&absent, Instant::now());
    assert_eq!(fired.len(), 1);
    assert_eq!(rs.get(0).stats.counts().fires, 1);
    // Explaining does not count: it is not the reactor acting.
    let _ = Reactor::explain(&rs, &login("web1", "failed"));
    assert_eq!(rs.get(0).stats.counts().condition_errors, 3);
}
