//! Colour for people: only on a terminal, never with NO_COLOR, never for a
//! dumb terminal; status words in the colour that says good, changed or bad.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static COLOUR: AtomicBool = AtomicBool::new(false);

/// Colour only when stdout is a terminal and NO_COLOR is not set
/// (<https://no-color.org>: set and not empty), and never for a dumb one.
pub fn init() {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    COLOUR.store(
        std::io::stdout().is_terminal() && !no_color && !dumb,
        Ordering::Relaxed,
    );
}

/// The colours and styles tend uses.
#[derive(Clone, Copy)]
pub enum Paint {
    Red,
    Green,
    Yellow,
    Cyan,
    Dim,
    Bold,
}

/// `text` in a colour, when colour is on.
pub fn paint(text: &str, p: Paint) -> String {
    if !COLOUR.load(Ordering::Relaxed) {
        return text.to_string();
    }
    let code = match p {
        Paint::Red => "31;1",
        Paint::Green => "32",
        Paint::Yellow => "33",
        Paint::Cyan => "36",
        Paint::Dim => "2",
        Paint::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A status word in the colour that says good, changed or bad.
pub fn word(word: &str) -> String {
    let p = match word {
        "ok" | "yes" | "accepted" | "done" => Paint::Green,
        "changed" | "would-change" | "pending" | "running" | "queued" => Paint::Yellow,
        "failed" | "FAILED" | "timeout" | "unreachable" | "interrupted" | "no" | "rejected"
        | "denied" => Paint::Red,
        _ => return word.to_string(),
    };
    paint(word, p)
}
