//! The progress line on stderr while minions answer a job or a ping.

use std::io::IsTerminal;

/// A progress line on stderr while minions answer ("7/10 answered, 1
/// failed"), only when stderr is a terminal and more than one minion was
/// asked; results print above it.
pub struct Progress {
    on: bool,
    total: usize,
    done: usize,
    failed: usize,
}

impl Progress {
    /// A line not drawn yet: it shows once the master says how many minions
    /// were targeted.
    pub fn new() -> Self {
        Self {
            on: std::io::stderr().is_terminal(),
            total: 0,
            done: 0,
            failed: 0,
        }
    }

    /// The master targeted `n` minions.
    pub fn targeted(&mut self, n: usize) {
        self.total = n;
        self.draw();
    }

    /// Before printing a result: the line goes, to be drawn again after.
    pub fn clear(&self) {
        if self.on && self.total > 1 {
            eprint!("\r\x1b[K");
        }
    }

    /// One more minion answered, well or not.
    pub fn answered(&mut self, ok: bool) {
        self.done += 1;
        if !ok {
            self.failed += 1;
        }
        self.draw();
    }

    fn draw(&self) {
        if !self.on || self.total <= 1 {
            return;
        }
        let failed = if self.failed > 0 {
            format!(", {} failed", self.failed)
        } else {
            String::new()
        };
        eprint!(
            "\r\x1b[K{}/{} answered{failed}",
            self.done.min(self.total),
            self.total
        );
    }
}
