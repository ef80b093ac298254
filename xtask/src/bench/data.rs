//! The data the uploads and whole runs send: trees of random bytes, each with a `run.sh`.

use std::path::Path;

use anyhow::{Context as _, Result};

/// xorshift bytes, so compression cannot flatter anyone.
fn fill(buffer: &mut [u8], seed: &mut u64) {
    for chunk in buffer.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
}

/// Writes `len` random bytes to `path`; `seed` moves on, so the next call writes other bytes.
pub(super) fn write_random(path: &Path, len: usize, seed: &mut u64) -> Result<()> {
    let mut data = vec![0u8; len];
    fill(&mut data, seed);
    std::fs::write(path, data).with_context(|| format!("failed to write {}", path.display()))
}

const RUN_SCRIPT: &str = "#!/bin/sh\nmkdir -p artifacts && cp run.sh artifacts/done.txt\n";

pub(super) fn small_tree(dir: &Path) -> Result<()> {
    let mut seed = 0x9E37_79B9_7F4A_7C15;
    for idx in 0..5_000 {
        let sub = dir.join(format!("d{:02}", idx / 100));
        std::fs::create_dir_all(&sub)?;
        write_random(&sub.join(format!("f{idx:04}")), 4096, &mut seed)?;
    }
    std::fs::write(dir.join("run.sh"), RUN_SCRIPT)?;
    Ok(())
}

/// ~2,000 files from 100 B to 2 MiB, log-uniform (most small, a few large), ~420 MB.
pub(super) fn mixed_tree(dir: &Path) -> Result<()> {
    let mut seed = 0x2545_F491_4F6C_DD1D;
    for idx in 0..2_000 {
        let sub = dir.join(format!("m{:02}", idx / 50));
        std::fs::create_dir_all(&sub)?;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let unit = (seed % 10_000) as f64 / 10_000.0;
        let len = (100.0 * (2.0 * 1024.0 * 1024.0 / 100.0_f64).powf(unit)) as usize;
        write_random(&sub.join(format!("f{idx:04}")), len, &mut seed)?;
    }
    std::fs::write(dir.join("run.sh"), RUN_SCRIPT)?;
    Ok(())
}

pub(super) fn big_file(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut seed = 0x1234_5678_9ABC_DEF1;
    write_random(&dir.join("big.bin"), 256 * 1024 * 1024, &mut seed)?;
    std::fs::write(dir.join("run.sh"), RUN_SCRIPT)?;
    Ok(())
}
