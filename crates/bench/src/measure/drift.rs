//! Drift -> restore: hand edits of a managed file, timed to the restore.

use super::prelude::*;

pub fn drift(edits: usize) -> anyhow::Result<Report> {
    let tmp = tempfile::tempdir()?;
    let c = start(tmp.path())?;
    let mut restored = Vec::new();
    let mut stored = Vec::new();
    for i in 0..edits + 5 {
        let text = format!("drift {i}\n");
        let (r, s, _) = one_edit(&c, || Ok(hand_write(&c.managed, &text)?))?;
        if i >= 5 {
            restored.push(r);
            stored.push(s);
        }
    }
    let mut report = Report::new(
        "drift",
        format!("drift: a managed file edited by hand, {edits} times"),
    );
    report.timing("write -> restored", &restored);
    report.timing("write -> event stored", &stored);
    Ok(report)
}
