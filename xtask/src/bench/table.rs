//! The table a benchmark run fills: one row per measured work (the median of its samples and
//! its peak memory), printed with the ratios between rows.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// One measured row.
struct Row {
    group: &'static str,
    name: String,
    time: Duration,
    peak_rss_kib: Option<u64>,
}

pub(super) struct Bench {
    rows: Vec<Row>,
    samples: usize,
    /// `BENCH_ONLY`: measure only the groups whose name contains it.
    only: Option<String>,
}

impl Bench {
    /// A table with `BENCH_SAMPLES` samples per row (3) of the groups `BENCH_ONLY` names.
    pub(super) fn from_env() -> Self {
        let samples = std::env::var("BENCH_SAMPLES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        Self {
            rows: Vec::new(),
            samples,
            only: std::env::var("BENCH_ONLY")
                .ok()
                .filter(|only| !only.is_empty()),
        }
    }

    pub(super) fn wants(&self, group: &str) -> bool {
        self.only.as_deref().is_none_or(|only| group.contains(only))
    }

    pub(super) fn measure(
        &mut self,
        group: &'static str,
        name: impl Into<String>,
        work: impl FnMut() -> Result<Option<u64>>,
    ) -> Result<()> {
        self.measure_after(group, name, || Ok(()), work)
    }

    /// Like [`Bench::measure`], with `setup` run before every sample and not timed.
    pub(super) fn measure_after(
        &mut self,
        group: &'static str,
        name: impl Into<String>,
        mut setup: impl FnMut() -> Result<()>,
        mut work: impl FnMut() -> Result<Option<u64>>,
    ) -> Result<()> {
        if !self.wants(group) {
            return Ok(());
        }
        let name = name.into();
        eprintln!("  {group}: {name}");
        let mut times = Vec::new();
        let mut peak = None;
        for _ in 0..self.samples {
            setup().with_context(|| format!("{group}: {name}: setup"))?;
            let started = Instant::now();
            let rss = work().with_context(|| format!("{group}: {name}"))?;
            times.push(started.elapsed());
            peak = peak.max(rss);
        }
        times.sort();
        self.rows.push(Row {
            group,
            name,
            time: times[times.len() / 2],
            peak_rss_kib: peak,
        });
        Ok(())
    }

    /// The peak RSS (KiB) measured for a row, when it was measured.
    pub(super) fn peak_rss_of(&self, group: &str, name: &str) -> Option<u64> {
        self.rows
            .iter()
            .find(|row| row.group == group && row.name == name)
            .and_then(|row| row.peak_rss_kib)
    }

    fn time_of(&self, group: &str, name: &str) -> Option<Duration> {
        self.rows
            .iter()
            .find(|row| row.group == group && row.name == name)
            .map(|row| row.time)
    }

    pub(super) fn print(&self, ratios: &[(&str, &str, &str, &str)]) {
        println!("\n| group | work | median | peak RSS |");
        println!("|---|---|---|---|");
        for row in &self.rows {
            let rss = row.peak_rss_kib.map_or("—".to_owned(), |kib| {
                format!("{:.1} MiB", kib as f64 / 1024.0)
            });
            println!(
                "| {} | {} | {:.0} ms | {rss} |",
                row.group,
                row.name,
                row.time.as_secs_f64() * 1e3
            );
        }
        if ratios.is_empty() {
            return;
        }
        println!("\n| ratio | value | target |");
        println!("|---|---|---|");
        for (group, ours, theirs, target) in ratios {
            if let (Some(ours_time), Some(theirs_time)) =
                (self.time_of(group, ours), self.time_of(group, theirs))
            {
                let ratio = theirs_time.as_secs_f64() / ours_time.as_secs_f64();
                println!("| {group}: {theirs} / {ours} | {ratio:.2}x | {target} |");
            }
        }
        println!("(ratio > 1: testfleet is faster)");
    }
}
