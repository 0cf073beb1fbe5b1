//! Events for people: the table `tend events` prints, and the one-line
//! form of a live tail (`tend events --follow`).

use tend_proto::v1::StoredEvent;

use super::colour::{Paint, paint};
use super::{json, table};

/// Stored events as a table: when, from whom, tag, cause, data.
pub fn list(events: &[StoredEvent]) {
    if events.is_empty() {
        println!("no events");
        return;
    }
    let rows = events
        .iter()
        .map(|e| {
            let ev = e.event.clone().unwrap_or_default();
            let mut data = String::from_utf8_lossy(&ev.data).into_owned();
            if data.chars().count() > 120 {
                data = data.chars().take(117).collect::<String>() + "...";
            }
            let cause = cause_word(&ev);
            vec![
                table::time(e.stored_us),
                ev.minion,
                if ev.seq == 0 {
                    "-".into()
                } else {
                    ev.seq.to_string()
                },
                paint(&ev.tag, Paint::Cyan),
                cause,
                data,
            ]
        })
        .collect();
    table::print(&["STORED", "MINION", "SEQ", "TAG", "CAUSE", "DATA"], rows);
}

/// One event of a live tail: time, minion, tag, data.
pub fn line(e: &StoredEvent) {
    let ev = e.event.clone().unwrap_or_default();
    let stamp = match json::time(e.stored_us) {
        // The time of day to the millisecond is what a tail needs.
        serde_json::Value::String(s) => s.get(11..23).unwrap_or(&s).to_string(),
        _ => "-".into(),
    };
    let cause = match cause_word(&ev).as_str() {
        "-" => String::new(),
        word => format!(" ({word})"),
    };
    println!(
        "{}  {}  {}{}  {}",
        paint(&stamp, Paint::Dim),
        paint(
            if ev.minion.is_empty() {
                "-"
            } else {
                &ev.minion
            },
            Paint::Bold
        ),
        paint(&ev.tag, Paint::Cyan),
        cause,
        String::from_utf8_lossy(&ev.data)
    );
}

/// What caused an event, in a word: a master's job, a job the minion ran
/// itself while cut off (`local job N`), or `local` for an event the
/// minion handled itself; `-` for none.
fn cause_word(ev: &tend_proto::v1::Event) -> String {
    const LOCAL_JOB: u64 = 1 << 62;
    match (ev.cause, ev.local_orders) {
        (0, 0) => "-".into(),
        (0, _) => "local".into(),
        (c, _) if c & LOCAL_JOB != 0 => format!("local job {}", c & !LOCAL_JOB),
        (c, _) => format!("job {c}"),
    }
}
