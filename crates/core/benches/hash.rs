//! Directory-hash benchmark: testfleet's hash against the shell tools on the same data, in the
//! same run, printed as ratios (no timed assertions anywhere).
//!
//! Data: a tree of 5,000 × 4 KiB files and one 256 MiB file, generated under a temp dir
//! (`/dev/shm` when present, so the disk is not measured). Run with
//! `cargo bench -p testfleet-core --bench hash` or `cargo xtask bench hash`.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testfleet_core::hash::hash_dir;

const SMALL_FILES: usize = 5_000;
const SMALL_FILE_BYTES: usize = 4 * 1024;
const BIG_FILE_BYTES: usize = 256 * 1024 * 1024;

fn main() {
    let samples: usize = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let base = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm")
    } else {
        Path::new("/tmp")
    };
    let scratch = tempfile::Builder::new()
        .prefix("tf-hash-bench")
        .tempdir_in(base)
        .expect("scratch dir");
    let small = scratch.path().join("small");
    let big_dir = scratch.path().join("big");
    eprintln!(
        "generating {SMALL_FILES} x {SMALL_FILE_BYTES} B and 1 x {BIG_FILE_BYTES} B under {}",
        scratch.path().display()
    );
    generate_small_tree(&small);
    std::fs::create_dir(&big_dir).expect("mkdir");
    let big_file = big_dir.join("blob");
    generate_big_file(&big_file);

    let rows = [
        (
            "small tree: testfleet hash",
            median(samples, || hash_only(&small)),
        ),
        (
            "small tree: find|sort|xargs sha256sum|sha256sum",
            median(samples, || {
                shell(&format!(
                    "cd '{}' && find . -type f | sort | xargs sha256sum | sha256sum",
                    small.display()
                ))
            }),
        ),
        (
            "256 MiB: testfleet hash",
            median(samples, || hash_only(&big_dir)),
        ),
        (
            "256 MiB: openssl dgst -sha256",
            median(samples, || {
                shell(&format!("openssl dgst -sha256 '{}'", big_file.display()))
            }),
        ),
        (
            "256 MiB: sha256sum",
            median(samples, || {
                shell(&format!("sha256sum '{}'", big_file.display()))
            }),
        ),
    ];

    println!("\n{:<50} {:>10}", "work (median of samples)", "time");
    for (name, time) in &rows {
        println!("{name:<50} {:>8.1}ms", time.as_secs_f64() * 1e3);
    }
    let ratio = |a: usize, b: usize| rows[b].1.as_secs_f64() / rows[a].1.as_secs_f64();
    println!("\nratios (reference time / testfleet time; > 1 means testfleet is faster)");
    println!(
        "  small tree vs find|sort|xargs sha256sum pipeline: {:.2}x  (target >= 2x)",
        ratio(0, 1)
    );
    println!(
        "  256 MiB vs openssl dgst -sha256:                  {:.2}x  (target >= 0.8x, i.e. within 25%)",
        ratio(2, 3)
    );
    println!(
        "  256 MiB vs sha256sum:                             {:.2}x",
        ratio(2, 4)
    );
}

fn hash_only(dir: &Path) {
    let manifest = hash_dir(dir).expect("the generated tree hashes");
    std::hint::black_box(manifest.hash);
}

fn shell(script: &str) {
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh starts");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn median(samples: usize, mut work: impl FnMut()) -> Duration {
    work(); // warm the page cache and the code
    let mut times: Vec<Duration> = (0..samples.max(1))
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Pseudo-random bytes (xorshift), so compression or dedup cannot flatter anyone.
fn fill(buffer: &mut [u8], seed: &mut u64) {
    for chunk in buffer.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
}

fn generate_small_tree(root: &Path) {
    let mut seed = 0x9E37_79B9_7F4A_7C15;
    let mut buffer = vec![0u8; SMALL_FILE_BYTES];
    for file_idx in 0..SMALL_FILES {
        let dir = root.join(format!("d{:03}", file_idx / 100));
        if file_idx % 100 == 0 {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        fill(&mut buffer, &mut seed);
        std::fs::write(dir.join(format!("f{file_idx:05}.bin")), &buffer).expect("write");
    }
}

fn generate_big_file(path: &Path) {
    let mut seed = 0x2545_F491_4F6C_DD1D;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut buffer = vec![0u8; 1024 * 1024];
    for _ in 0..BIG_FILE_BYTES / buffer.len() {
        fill(&mut buffer, &mut seed);
        file.write_all(&buffer).expect("write");
    }
    file.flush().expect("flush");
}
