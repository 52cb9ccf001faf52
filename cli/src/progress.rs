//! Live progress of long operations on stderr, when a person is watching it.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ir_repository::Progress;
use ir_repository::size::format_size;

/// Redraws a progress line every second until dropped.
pub struct ProgressLine {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressLine {
    /// `verb` describes `bytes_read` ("read", "checked").
    pub fn start(progress: &Arc<Progress>, verb: &'static str) -> ProgressLine {
        if !std::io::stderr().is_terminal() {
            return ProgressLine { task: None };
        }
        let progress = progress.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let s = progress.snapshot();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = format_size((s.bytes_read as f64 / secs) as u64);
                let mut line = format!("\r\x1b[K{} {verb} ({rate}/s)", format_size(s.bytes_read));
                if s.bytes_uploaded > 0 || s.chunks_deduped > 0 {
                    line += &format!(
                        ", {} uploaded, {} new / {} deduplicated chunks",
                        format_size(s.bytes_uploaded),
                        s.chunks_new,
                        s.chunks_deduped
                    );
                }
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(line.as_bytes());
                let _ = err.flush();
            }
        });
        ProgressLine { task: Some(task) }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            eprint!("\r\x1b[K");
        }
    }
}
