use std::io::Write;
use std::time::Instant;

/// A one-line progress bar on stderr.
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
        let filled = WIDTH * done / self.total.max(1);
        let secs = self.start.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        eprint!(
            "\r[{}{}] step {done}/{} t={t:.0} {rate:.2} it/s {secs:.1}s",
            "#".repeat(filled),
            " ".repeat(WIDTH - filled),
            self.total
        );
        if done == self.total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}
