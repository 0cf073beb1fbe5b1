//! Tables for people: columns as wide as their widest cell (colour codes
//! take no room), and the cells every table shares: times and ages.

use super::colour::{Paint, paint};
use super::json;

/// How wide `s` shows on a terminal: its characters, less colour codes.
fn width(s: &str) -> usize {
    let mut n = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            n += 1;
        }
    }
    n
}

/// A time to the second (`2026-11-29T10:00:00Z`), or `-` for none.
pub fn time(us: i64) -> String {
    match json::time(us) {
        serde_json::Value::String(s) => {
            // Seconds are enough in a table.
            s.get(..19).map(|t| format!("{t}Z")).unwrap_or(s)
        }
        _ => "-".into(),
    }
}

/// How long ago (`5s ago`, `3m ago`, `2h ago`, `4d ago`), or `never`.
pub fn ago(us: i64) -> String {
    if us <= 0 {
        return "never".into();
    }
    let secs = (tend_proto::now_us() - us).max(0) / 1_000_000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Prints rows with each column as wide as its widest cell.
pub fn print(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(&cell);
            } else {
                let pad = w.saturating_sub(width(&cell)) + 2;
                out.push_str(&cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| paint(h, Paint::Bold)).collect());
    for row in rows {
        line(row);
    }
}
