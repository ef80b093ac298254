//! The adapter driven directly, against the OpenSSH tools doing the same work: uploads of
//! each tree, the download of a big file, and connect + auth + exec `true`.

use anyhow::{Context as _, Result, ensure};
use testfleet_core::hash::hash_dir;
use testfleet_core::ports::NoProgress;

use super::process::sh;
use super::{Context, clear};

/// Each tree uploaded by testfleet, `sftp -b`, `scp -r` and a tar pipeline.
pub(super) fn uploads(ctx: &mut Context<'_>) -> Result<()> {
    let Context {
        ref runtime,
        ref openssh,
        ref connector,
        ref ssh_target,
        ref dest,
        ref trees,
        ref mut bench,
        ..
    } = *ctx;
    for (label, tree) in trees {
        let group: &'static str = match *label {
            "5,000 x 4 KiB" => "upload 5,000 x 4 KiB",
            "mixed 2,000 files" => "upload mixed tree",
            _ => "upload 256 MiB",
        };
        let manifest = hash_dir(tree)?;
        bench.measure(group, "testfleet (russh, pipelined)", || {
            clear(dest);
            runtime.block_on(async {
                let session = connector.connect(ssh_target).await?;
                session
                    .create_dir_all(dest.to_str().context("utf-8")?)
                    .await?;
                session
                    .upload(&manifest, dest.to_str().context("utf-8")?, &NoProgress)
                    .await?;
                session.close().await.ok();
                anyhow::Ok(())
            })?;
            Ok(None)
        })?;
        bench.measure(group, "sftp -b put -r", || {
            clear(dest);
            openssh.sftp_batch(&format!("put -r {} {}\n", tree.display(), dest.display()))?;
            Ok(None)
        })?;
        bench.measure(group, "scp -r", || {
            clear(dest);
            openssh.scp_dir(tree, dest)?;
            Ok(None)
        })?;
        bench.measure(group, "tar c | ssh tar x", || {
            clear(dest);
            sh(&format!(
                "tar c -C '{}' . | {}",
                tree.display(),
                openssh.ssh_words(&format!("mkdir -p {d} && tar x -C {d}", d = dest.display()))
            ))?;
            Ok(None)
        })?;
    }
    Ok(())
}

/// 256 MiB of artifacts downloaded by testfleet and by `sftp -b`.
pub(super) fn download(ctx: &mut Context<'_>) -> Result<()> {
    let Context {
        ref runtime,
        ref openssh,
        ref connector,
        ref ssh_target,
        data,
        ref remote,
        ref trees,
        ref mut bench,
        ..
    } = *ctx;
    let artifacts = remote.join("art").join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    std::fs::copy(trees[2].1.join("big.bin"), artifacts.join("big.bin"))?;
    let local = data.join("download");
    bench.measure("download 256 MiB", "testfleet (russh, pipelined)", || {
        clear(&local);
        runtime.block_on(async {
            let session = connector.connect(ssh_target).await?;
            let report = session
                .download_dir(artifacts.to_str().context("utf-8")?, &local)
                .await?;
            ensure!(
                report.bytes == 256 * 1024 * 1024,
                "downloaded {} bytes",
                report.bytes
            );
            session.close().await.ok();
            anyhow::Ok(())
        })?;
        Ok(None)
    })?;
    bench.measure("download 256 MiB", "sftp -b get -r", || {
        clear(&local);
        openssh.sftp_batch(&format!(
            "get -r {} {}\n",
            artifacts.display(),
            local.display()
        ))?;
        Ok(None)
    })?;
    clear(&artifacts);
    Ok(())
}

/// Dispatch overhead: connect + auth + exec `true`, by testfleet and by `ssh`.
pub(super) fn connect_exec(ctx: &mut Context<'_>) -> Result<()> {
    let Context {
        ref runtime,
        ref openssh,
        ref connector,
        ref ssh_target,
        ref mut bench,
        ..
    } = *ctx;
    bench.measure("connect + auth + exec true", "testfleet (russh)", || {
        runtime.block_on(async {
            let session = connector.connect(ssh_target).await?;
            let mut sink = testfleet_contract::ssh::Captured::default();
            let exit = session.exec("true", &mut sink).await?;
            ensure!(
                exit == testfleet_core::ports::RemoteExit::Code(0),
                "exec true: {exit:?}"
            );
            session.close().await.ok();
            anyhow::Ok(())
        })?;
        Ok(None)
    })?;
    bench.measure("connect + auth + exec true", "ssh host true", || {
        sh(&openssh.ssh_words("true"))?;
        Ok(None)
    })?;
    Ok(())
}
