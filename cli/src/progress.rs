use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Whether stderr is a terminal (progress lines are rewritten in place there).
fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress line: rewritten in place on a terminal; in a log or pipe, one line per call.
pub fn status(msg: std::fmt::Arguments) {
    if on_terminal() {
        eprint!("\r{msg}");
        let _ = std::io::stderr().flush();
    } else {
        eprintln!("{}", msg.to_string().trim_end());
    }
}

/// Ends a run of [`status`] lines (a newline on a terminal; nothing is pending elsewhere).
pub fn status_done() {
    if on_terminal() {
        eprintln!();
    }
}

/// A one-line progress bar of the Euler steps on stderr (in a log: only the last step).
pub struct Progress {
    start: Instant,
    total: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Self { start: Instant::now(), total }
    }

    pub fn step(&self, done: usize, t: f32) {
        const WIDTH: usize = 30;
        if done < self.total && !on_terminal() {
            return;
        }
        let filled = WIDTH * done / self.total.max(1);
        let secs = self.start.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        status(format_args!(
            "[{}{}] step {done}/{} t={t:.0} {rate:.2} it/s {secs:.1}s",
            "#".repeat(filled),
            " ".repeat(WIDTH - filled),
            self.total
        ));
        if done == self.total {
            status_done();
        }
    }
}
