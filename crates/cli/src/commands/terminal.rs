//! What a foreground `run` shows on the terminal: remote output as it arrives (prefixed with
//! `[machine] ` for several machines, in bounded memory), upload bars and waiting lines on a
//! TTY for small fan-outs, and a newline before the summary when the output did not end with one.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use testfleet_core::ports::{OutputStream, TransferProgress};
use testfleet_core::queue::QueuePlace;
use testfleet_core::runner::RunObserver;
use testfleet_core::{Run, RunId};

use crate::context::Context;
use crate::output;

/// The machine name and the bytes of an unterminated line of one run's stream.
type PartialLine = (String, Vec<u8>);

/// The most of an unterminated line kept while waiting for its end; past it, the line is
/// written as a fragment, with its prefix, so that memory never grows with a line's length.
const MAX_PARTIAL_LINE: usize = 64 * 1024;

/// Appends `data` to the unterminated line in `buffer` and returns every complete line, each
/// with `[machine] ` before it, and a fragment of what is still unterminated once it reaches
/// [`MAX_PARTIAL_LINE`] (the line goes on after it, under the next prefix).
fn prefixed_lines(machine: &str, buffer: &mut Vec<u8>, data: &[u8]) -> Vec<u8> {
    let prefix = format!("[{machine}] ");
    let mut text = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let room = MAX_PARTIAL_LINE - buffer.len();
        match rest.iter().take(room).position(|&b| b == b'\n') {
            Some(newline) => {
                text.extend_from_slice(prefix.as_bytes());
                text.append(buffer);
                text.extend_from_slice(&rest[..=newline]);
                rest = &rest[newline + 1..];
            }
            None if rest.len() >= room => {
                text.extend_from_slice(prefix.as_bytes());
                text.append(buffer);
                text.extend_from_slice(&rest[..room]);
                text.push(b'\n');
                rest = &rest[room..];
            }
            None => {
                buffer.extend_from_slice(rest);
                rest = &[];
            }
        }
    }
    text
}

/// The most runs of one command shown with live upload and waiting lines.
const MOST_BARS: usize = 8;

/// Streams remote output to the terminal and shows upload progress on a TTY.
pub(super) struct TerminalObserver {
    /// Whether remote output goes to the terminal at all (not with `--json`).
    stream_output: bool,
    /// Prefix every line with `[machine] ` (several machines).
    prefix: bool,
    partial_lines: Mutex<HashMap<(RunId, bool), PartialLine>>,
    /// Whether what was last written to stdout and to stderr ended a line (or nothing was
    /// written): the summary must start on a line of its own.
    line_ended: Mutex<[bool; 2]>,
    progress: Option<(MultiProgress, Mutex<HashMap<RunId, ProgressBar>>)>,
    /// Queued runs: their live line on a TTY, or the last line printed elsewhere.
    waiting: Mutex<HashMap<RunId, Waiting>>,
}

/// How a queued run's wait is shown.
enum Waiting {
    Bar(ProgressBar),
    Printed(String),
}

impl TerminalObserver {
    /// An observer for `runs` runs: live bars only on a TTY and for at most [`MOST_BARS`] runs
    /// (a fan-out to hundreds prints its summary lines and counts, not hundreds of bars).
    pub(super) fn new(ctx: &Context, prefix: bool, runs: usize) -> Self {
        use std::io::IsTerminal as _;
        let show_progress = !ctx.style.json && runs <= MOST_BARS && std::io::stderr().is_terminal();
        Self {
            stream_output: !ctx.style.json,
            prefix,
            partial_lines: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            line_ended: Mutex::new([true, true]),
            progress: show_progress.then(|| {
                (
                    MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                    Mutex::new(HashMap::new()),
                )
            }),
        }
    }

    /// [`Self::write`], remembering whether the bytes ended a line.
    fn write_tracked(&self, stream: OutputStream, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            let mut ended = self
                .line_ended
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            ended[usize::from(stream == OutputStream::Stderr)] = last == b'\n';
        }
        Self::write(stream, bytes);
    }

    fn write(stream: OutputStream, bytes: &[u8]) {
        // A closed terminal or pipe must not stop the run: the logs still get everything.
        let _ = match stream {
            OutputStream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            OutputStream::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(bytes).and_then(|()| err.flush())
            }
        };
    }

    /// A queued run stopped waiting (granted, or ended): its live line goes.
    pub(super) fn done_waiting(&self, run: &Run) {
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(Waiting::Bar(bar)) = waiting.remove(&run.id) {
            bar.finish_and_clear();
        }
    }

    /// Writes out what is left of unterminated prefixed lines, and ends an unterminated line
    /// of output so that the summary starts on a line of its own.
    pub(super) fn finish(&self) {
        self.finish_prefixed();
        let ended = *self
            .line_ended
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !ended[0] {
            Self::write(OutputStream::Stdout, b"\n");
        }
        if !ended[1] {
            Self::write(OutputStream::Stderr, b"\n");
        }
    }

    fn finish_prefixed(&self) {
        let mut partial = self
            .partial_lines
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for ((_, is_stderr), (machine, rest)) in partial.drain() {
            if !rest.is_empty() {
                let stream = if is_stderr {
                    OutputStream::Stderr
                } else {
                    OutputStream::Stdout
                };
                let mut line = format!("[{machine}] ").into_bytes();
                line.extend_from_slice(&rest);
                line.push(b'\n');
                Self::write(stream, &line);
            }
        }
    }
}

impl RunObserver for TerminalObserver {
    fn upload_progress(&self, run: &Run, progress: TransferProgress) {
        let Some((multi, bars)) = &self.progress else {
            return;
        };
        let mut bars = bars.lock().unwrap_or_else(|poison| poison.into_inner());
        let bar = bars.entry(run.id.clone()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(progress.bytes_total));
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} upload [{bar:30}] {bytes}/{total_bytes} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(run.machine.to_string());
            bar
        });
        bar.set_length(progress.bytes_total);
        bar.set_position(progress.bytes_done);
        bar.set_message(format!(
            "{}/{} files",
            progress.files_done, progress.files_total
        ));
        if progress.files_done >= progress.files_total {
            bar.finish_and_clear();
        }
    }

    fn output(&self, run: &Run, stream: OutputStream, data: &[u8]) {
        if !self.stream_output {
            return;
        }
        if !self.prefix {
            self.write_tracked(stream, data);
            return;
        }
        let is_stderr = stream == OutputStream::Stderr;
        let mut partial = self
            .partial_lines
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let (machine, buffer) = partial
            .entry((run.id.clone(), is_stderr))
            .or_insert_with(|| (run.machine.to_string(), Vec::new()));
        let text = prefixed_lines(machine, buffer, data);
        if !text.is_empty() {
            Self::write(stream, &text);
        }
    }

    fn warning(&self, run: &Run, message: &str) {
        eprintln!("warning: {} ({}): {message}", run.machine, run.id);
    }

    fn waiting(&self, run: &Run, places: &[QueuePlace], waited: std::time::Duration) {
        if !self.stream_output {
            return;
        }
        let line = output::waiting_line(places);
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match (&self.progress, waiting.get(&run.id)) {
            (Some(_), Some(Waiting::Bar(bar))) => {
                bar.set_message(format!(
                    "{line}, {}",
                    humantime::format_duration(std::time::Duration::from_secs(waited.as_secs()))
                ));
            }
            (Some((multi, _)), _) => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.enable_steady_tick(std::time::Duration::from_millis(200));
                bar.set_message(format!("{line}, 0s"));
                waiting.insert(run.id.clone(), Waiting::Bar(bar));
            }
            // Without a TTY, a line each time what it waits for changes.
            (None, Some(Waiting::Printed(last))) if *last == line => {}
            (None, _) => {
                eprintln!("{} {line}", run.id);
                waiting.insert(run.id.clone(), Waiting::Printed(line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_lines_are_whole_or_bounded_fragments() {
        let mut buffer = Vec::new();
        assert_eq!(prefixed_lines("m", &mut buffer, b"a\nb"), b"[m] a\n");
        assert_eq!(buffer, b"b");
        assert_eq!(
            prefixed_lines("m", &mut buffer, b"c\nd\n"),
            b"[m] bc\n[m] d\n"
        );
        assert!(buffer.is_empty());

        // A line of 2.5 × the limit, in chunks: two fragments, and the rest kept.
        let long = vec![b'x'; MAX_PARTIAL_LINE * 5 / 2];
        let mut written = Vec::new();
        for chunk in long.chunks(10_000) {
            written.extend(prefixed_lines("m", &mut buffer, chunk));
            assert!(buffer.len() < MAX_PARTIAL_LINE, "the buffer stays bounded");
        }
        let fragments: Vec<&[u8]> = written
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(fragments.len(), 2);
        assert!(
            fragments
                .iter()
                .all(|f| f.starts_with(b"[m] ") && f.len() == 4 + MAX_PARTIAL_LINE)
        );
        assert_eq!(buffer.len(), MAX_PARTIAL_LINE / 2);
    }
}
