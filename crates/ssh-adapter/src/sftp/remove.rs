//! Removing a remote file or folder: the tree is listed first, then its files are removed with
//! many requests in flight, then its folders, deepest first. A folder its owner cannot read,
//! write or enter (a script's `chmod 000`) is given those rights back first, so that it cannot
//! stay behind.

use futures::StreamExt as _;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, StatusCode};
use testfleet_core::ports::SshError;
use testfleet_core::remote::{check_remote_name, join_remote};

use super::{Kind, Op, is_status, kind_of, op_failed};
use crate::session::RusshSession;

pub(crate) async fn remove(session: &RusshSession, path: &str) -> Result<(), SshError> {
    let sftp = session.sftp().await?;
    let attrs = match sftp.symlink_metadata(path).await {
        Ok(attrs) => attrs,
        Err(error) if is_status(&error, StatusCode::NoSuchFile) => return Ok(()),
        Err(error) => return Err(op_failed(session, Op::Remove, path, error)),
    };
    if kind_of(&attrs) != Some(Kind::Dir) {
        return remove_file(session, &sftp, path).await;
    }
    // List the whole tree first (depth-first, without recursion), then delete its files with
    // many requests in flight — one round trip per file made cleanup of a 5,000-file run folder
    // cost more than its upload — and finally the folders, deepest first.
    let mut folders = vec![path.to_owned()];
    let mut to_list = vec![(path.to_owned(), attrs.permissions)];
    let mut files = Vec::new();
    while let Some((folder, permissions)) = to_list.pop() {
        owner_may_change(&sftp, &folder, permissions).await;
        let entries = match sftp.read_dir(folder.as_str()).await {
            Ok(entries) => entries,
            Err(error) if is_status(&error, StatusCode::NoSuchFile) => continue,
            Err(error) => return Err(op_failed(session, Op::Remove, &folder, error)),
        };
        for entry in entries {
            let child = join_remote(&folder, &entry.file_name());
            // Names come from the server; a hostile one could point elsewhere, so only plain
            // names are followed and the rest deleted as files would be meaningless.
            if check_remote_name(&entry.file_name()).is_err() {
                continue;
            }
            if kind_of(&entry.metadata()) == Some(Kind::Dir) {
                folders.push(child.clone());
                to_list.push((child, entry.metadata().permissions));
            } else {
                files.push(child);
            }
        }
    }
    let limit = session.tuning.files_in_flight.max(1) * 2;
    let mut pending = files.iter();
    let mut removals = futures::stream::FuturesUnordered::new();
    loop {
        while removals.len() < limit {
            let Some(file) = pending.next() else { break };
            removals.push(remove_file(session, &sftp, file));
        }
        match removals.next().await {
            Some(removed) => removed?,
            None => break,
        }
    }
    for folder in folders.iter().rev() {
        match sftp.remove_dir(folder.as_str()).await {
            Ok(()) => {}
            Err(error) if is_status(&error, StatusCode::NoSuchFile) => {}
            Err(error) => return Err(op_failed(session, Op::Remove, folder, error)),
        }
    }
    Ok(())
}

/// Gives a folder's owner read, write and search rights when its mode lacks them (the request
/// may fail; the removal then reports what it could not remove).
async fn owner_may_change(sftp: &SftpSession, folder: &str, permissions: Option<u32>) {
    let Some(mode) = permissions else { return };
    if mode & 0o700 != 0o700 {
        let attrs = FileAttributes {
            permissions: Some((mode & 0o7777) | 0o700),
            ..FileAttributes::empty()
        };
        let _ = sftp.set_metadata(folder, attrs).await;
    }
}

async fn remove_file(
    session: &RusshSession,
    sftp: &SftpSession,
    path: &str,
) -> Result<(), SshError> {
    match sftp.remove_file(path).await {
        Ok(()) => Ok(()),
        Err(error) if is_status(&error, StatusCode::NoSuchFile) => Ok(()),
        Err(error) => Err(op_failed(session, Op::Remove, path, error)),
    }
}
