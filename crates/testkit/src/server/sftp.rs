//! The SFTP side of the test server: a russh-sftp handler over the real file system, rooted
//! at the server's home folder, with the byte-count, slow-reply and hostile-name faults.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use russh_sftp::protocol::{
    Attrs, Data, File as NameEntry, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode,
    Version,
};
use tokio_util::sync::CancellationToken;

use super::config::Request;
use super::exec::no_spawn_now;
use super::state::Inner;

/// Names the hostile-artifacts fault adds to the listing of every `artifacts` folder.
pub const HOSTILE_FILE_NAMES: [&str; 3] = ["../escape", "/abs/path", "a/b"];
/// The hostile symlink's name; it points at `/etc`.
pub const HOSTILE_LINK_NAME: &str = "etc-link";

enum OpenHandle {
    File(OpenFile),
    Dir { entries: Vec<NameEntry>, sent: bool },
}

/// An open file that holds no descriptor between requests: each request opens it again.
///
/// Every server of a test process shares one process, and a child spawned for a run gets a
/// copy of every descriptor open at that moment until it execs. A descriptor open for writing
/// on another run's `run.sh` would make that run's exec fail with "Text file busy" (ETXTBSY),
/// which no real host does. So a writable descriptor lives only inside one request, and only
/// while no spawn is under way ([`no_spawn_now`]).
struct OpenFile {
    path: PathBuf,
    read: bool,
    write: bool,
    append: bool,
}

impl OpenFile {
    /// Runs `op` on the file opened again as the SFTP open asked.
    fn with<T>(&self, op: impl FnOnce(&mut File) -> std::io::Result<T>) -> Reply<T> {
        let _no_spawn = self.write.then(no_spawn_now);
        let mut file = OpenOptions::new()
            .read(self.read)
            .write(self.write)
            .append(self.append)
            .open(&self.path)
            .map_err(|error| io_status(&error))?;
        op(&mut file).map_err(|error| io_status(&error))
    }
}

/// One SFTP session.
pub(super) struct SftpHandler {
    inner: Arc<Inner>,
    /// Cancelled to drop this connection (the byte-count faults).
    connection: CancellationToken,
    /// Bytes written and read on this connection, for the byte-count faults.
    uploaded: Arc<AtomicU64>,
    downloaded: Arc<AtomicU64>,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
}

type Reply<T> = Result<T, StatusCode>;

fn io_status(error: &std::io::Error) -> StatusCode {
    match error.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    }
}

fn attrs_of(metadata: &fs::Metadata) -> FileAttributes {
    FileAttributes::from(metadata)
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

impl SftpHandler {
    pub(super) fn new(
        inner: Arc<Inner>,
        connection: CancellationToken,
        uploaded: Arc<AtomicU64>,
        downloaded: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner,
            connection,
            uploaded,
            downloaded,
            handles: HashMap::new(),
            next_handle: 0,
        }
    }

    async fn begin(&self, op: &'static str, path: &str) {
        self.inner.log(Request::Sftp {
            op,
            path: path.to_owned(),
        });
        if let Some(delay) = self.inner.config.faults.reply_delay {
            tokio::time::sleep(delay).await;
        }
    }

    /// The local path an SFTP path names. Relative paths resolve in the home folder; with
    /// Windows emulation absolute paths must start with the emulated home (`/C:/Users/…`).
    fn local(&self, path: &str) -> Reply<PathBuf> {
        let home = self.inner.home.as_path();
        if let Some(windows) = &self.inner.config.windows {
            if let Some(rest) = path.strip_prefix(windows.home.as_str()) {
                return Ok(home.join(rest.trim_start_matches('/')));
            }
            if path.starts_with('/') {
                return Err(StatusCode::NoSuchFile);
            }
        }
        if self.inner.config.faults.hostile_artifacts
            && let Some((parent, name)) = path.rsplit_once('/')
            && name == HOSTILE_LINK_NAME
            && parent.ends_with("artifacts")
        {
            // Following the hostile link leads out of the home folder, as a real one would.
            return Ok(PathBuf::from("/etc"));
        }
        if path.is_empty() || path == "." {
            Ok(home.to_path_buf())
        } else if path.starts_with('/') {
            Ok(PathBuf::from(path))
        } else {
            Ok(home.join(path))
        }
    }

    /// The SFTP form of a local absolute path.
    fn sftp_path(&self, local: &Path) -> String {
        if let Some(windows) = &self.inner.config.windows {
            let rest = local
                .strip_prefix(&self.inner.home)
                .unwrap_or(Path::new(""));
            let rest = rest.to_string_lossy();
            return if rest.is_empty() {
                windows.home.clone()
            } else {
                format!("{}/{rest}", windows.home)
            };
        }
        local.to_string_lossy().into_owned()
    }

    fn add_handle(&mut self, handle: OpenHandle) -> String {
        self.next_handle += 1;
        let name = format!("h{}", self.next_handle);
        self.handles.insert(name.clone(), handle);
        name
    }

    fn count(&self, counter: &AtomicU64, limit: Option<u64>, n_bytes: u64) {
        let total = counter.fetch_add(n_bytes, Ordering::Relaxed) + n_bytes;
        if limit.is_some_and(|limit| total >= limit) {
            self.inner.log(Request::ConnectionDropped);
            self.connection.cancel();
        }
    }

    /// Whether the last name of `path` is one of the fault's unreadable names.
    fn is_unreadable(&self, path: &str) -> bool {
        let name = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        self.inner
            .config
            .faults
            .unreadable_names
            .iter()
            .any(|unreadable| unreadable == name)
    }

    /// Whether the disk-full fault has struck.
    fn disk_is_full(&self) -> bool {
        self.inner
            .config
            .faults
            .disk_full_after_bytes
            .is_some_and(|limit| self.uploaded.load(Ordering::Relaxed) >= limit)
    }

    fn hostile_entries(&self) -> Vec<NameEntry> {
        let mut entries: Vec<NameEntry> = HOSTILE_FILE_NAMES
            .iter()
            .map(|name| {
                let mut attrs = FileAttributes {
                    size: Some(4),
                    permissions: Some(0o100_644),
                    ..FileAttributes::empty()
                };
                attrs.uid = Some(0);
                NameEntry::new(*name, attrs)
            })
            .collect();
        entries.push(NameEntry::new(
            HOSTILE_LINK_NAME,
            FileAttributes {
                size: Some(4),
                permissions: Some(0o120_777),
                ..FileAttributes::empty()
            },
        ));
        entries
    }
}

impl SftpHandler {
    /// `hardlink@openssh.com`: two SSH strings, the existing path and the new one.
    async fn hardlink(&mut self, id: u32, data: &[u8]) -> Reply<russh_sftp::protocol::Packet> {
        fn string(data: &[u8]) -> Option<(String, &[u8])> {
            let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
            let text = std::str::from_utf8(data.get(4..4 + len)?).ok()?.to_owned();
            Some((text, &data[4 + len..]))
        }
        let (old, rest) = string(data).ok_or(StatusCode::BadMessage)?;
        let (new, _) = string(rest).ok_or(StatusCode::BadMessage)?;
        self.begin("hardlink", &new).await;
        fs::hard_link(self.local(&old)?, self.local(&new)?).map_err(|error| io_status(&error))?;
        Ok(russh_sftp::protocol::Packet::Status(ok(id)))
    }
}

impl russh_sftp::server::Handler for SftpHandler {
    type Error = StatusCode;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Reply<Version> {
        let mut version = Version::new();
        version
            .extensions
            .insert(russh_sftp::extensions::STATVFS.to_owned(), "2".to_owned());
        if self.inner.config.hardlink {
            version
                .extensions
                .insert(russh_sftp::extensions::HARDLINK.to_owned(), "1".to_owned());
        }
        Ok(version)
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Reply<russh_sftp::protocol::Packet> {
        if request == russh_sftp::extensions::HARDLINK && self.inner.config.hardlink {
            return self.hardlink(id, &data).await;
        }
        if request != russh_sftp::extensions::STATVFS {
            return Err(StatusCode::OpUnsupported);
        }
        let full = self.disk_is_full();
        let stats = russh_sftp::extensions::Statvfs {
            block_size: 4096,
            fragment_size: 4096,
            blocks: 1 << 20,
            blocks_free: if full { 0 } else { 1 << 19 },
            blocks_avail: if full { 0 } else { 1 << 19 },
            inodes: 1 << 16,
            inodes_free: 1 << 15,
            inodes_avail: 1 << 15,
            fs_id: 0,
            flags: 0,
            name_max: 255,
        };
        let data = russh_sftp::ser::to_bytes(&stats)
            .map_err(|_| StatusCode::Failure)?
            .to_vec();
        Ok(russh_sftp::protocol::Packet::ExtendedReply(
            russh_sftp::protocol::ExtendedReply { id, data },
        ))
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Reply<Handle> {
        self.begin("open", &filename).await;
        if pflags.contains(OpenFlags::READ) && self.is_unreadable(&filename) {
            return Err(StatusCode::PermissionDenied);
        }
        let file = OpenFile {
            path: self.local(&filename)?,
            read: pflags.contains(OpenFlags::READ),
            write: pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND),
            append: pflags.contains(OpenFlags::APPEND),
        };
        // The first open creates and truncates as asked; later requests open it again as is.
        let _no_spawn = file.write.then(no_spawn_now);
        let mut options = OpenOptions::new();
        options
            .read(file.read)
            .write(file.write)
            .append(file.append)
            .truncate(pflags.contains(OpenFlags::TRUNCATE));
        if pflags.contains(OpenFlags::CREATE) {
            if pflags.contains(OpenFlags::EXCLUDE) {
                options.create_new(true);
            } else {
                options.create(true);
            }
            options.mode(attrs.permissions.unwrap_or(0o644) & 0o7777);
        }
        drop(
            options
                .open(&file.path)
                .map_err(|error| io_status(&error))?,
        );
        Ok(Handle {
            id,
            handle: self.add_handle(OpenHandle::File(file)),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Reply<Status> {
        self.begin("close", &handle).await;
        match self.handles.remove(&handle) {
            Some(_) => Ok(ok(id)),
            None => Err(StatusCode::Failure),
        }
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Reply<Data> {
        if let Some(delay) = self.inner.config.faults.reply_delay {
            tokio::time::sleep(delay).await;
        }
        let Some(OpenHandle::File(file)) = self.handles.get(&handle) else {
            return Err(StatusCode::Failure);
        };
        let mut data = vec![0u8; len.min(256 * 1024) as usize];
        let n_read = file.with(|file| {
            file.seek(SeekFrom::Start(offset))?;
            let mut n_read = 0;
            while n_read < data.len() {
                match file.read(&mut data[n_read..])? {
                    0 => break,
                    n => n_read += n,
                }
            }
            Ok(n_read)
        })?;
        if n_read == 0 {
            return Err(StatusCode::Eof);
        }
        data.truncate(n_read);
        self.count(
            &self.downloaded,
            self.inner.config.faults.drop_after_download_bytes,
            n_read as u64,
        );
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Reply<Status> {
        if let Some(delay) = self.inner.config.faults.reply_delay {
            tokio::time::sleep(delay).await;
        }
        let Some(OpenHandle::File(file)) = self.handles.get(&handle) else {
            return Err(StatusCode::Failure);
        };
        if self.disk_is_full() {
            // What OpenSSH's sftp-server answers for ENOSPC.
            return Err(StatusCode::Failure);
        }
        file.with(|file| {
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(&data)
        })?;
        self.count(
            &self.uploaded,
            self.inner.config.faults.drop_after_upload_bytes,
            data.len() as u64,
        );
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Reply<Attrs> {
        self.begin("lstat", &path).await;
        if self.inner.config.faults.hostile_artifacts
            && path.rsplit_once('/').is_some_and(|(parent, name)| {
                name == HOSTILE_LINK_NAME && parent.ends_with("artifacts")
            })
        {
            return Ok(Attrs {
                id,
                attrs: FileAttributes {
                    permissions: Some(0o120_777),
                    ..FileAttributes::empty()
                },
            });
        }
        let metadata =
            fs::symlink_metadata(self.local(&path)?).map_err(|error| io_status(&error))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&metadata),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Reply<Attrs> {
        self.begin("fstat", &handle).await;
        let Some(OpenHandle::File(file)) = self.handles.get(&handle) else {
            return Err(StatusCode::Failure);
        };
        let metadata = file.with(|file| file.metadata())?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&metadata),
        })
    }

    async fn setstat(&mut self, id: u32, path: String, attrs: FileAttributes) -> Reply<Status> {
        self.begin("setstat", &path).await;
        let local = self.local(&path)?;
        if let Some(mode) = attrs.permissions {
            fs::set_permissions(&local, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|error| io_status(&error))?;
        }
        if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
            let at = |secs: u32| std::time::UNIX_EPOCH + Duration::from_secs(u64::from(secs));
            let times = fs::FileTimes::new()
                .set_accessed(at(atime))
                .set_modified(at(mtime));
            fs::File::open(&local)
                .and_then(|file| file.set_times(times))
                .map_err(|error| io_status(&error))?;
        }
        Ok(ok(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: String, attrs: FileAttributes) -> Reply<Status> {
        self.begin("fsetstat", &handle).await;
        let Some(OpenHandle::File(file)) = self.handles.get(&handle) else {
            return Err(StatusCode::Failure);
        };
        if let Some(mode) = attrs.permissions {
            fs::set_permissions(&file.path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|error| io_status(&error))?;
        }
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Reply<Handle> {
        self.begin("opendir", &path).await;
        if self.is_unreadable(&path) {
            return Err(StatusCode::PermissionDenied);
        }
        let local = self.local(&path)?;
        let mut entries = Vec::new();
        for entry in fs::read_dir(&local).map_err(|error| io_status(&error))? {
            let entry = entry.map_err(|error| io_status(&error))?;
            let metadata = entry
                .path()
                .symlink_metadata()
                .map_err(|error| io_status(&error))?;
            entries.push(NameEntry::new(
                entry.file_name().to_string_lossy(),
                attrs_of(&metadata),
            ));
        }
        if self.inner.config.faults.hostile_artifacts
            && path.trim_end_matches('/').ends_with("artifacts")
        {
            entries.extend(self.hostile_entries());
        }
        Ok(Handle {
            id,
            handle: self.add_handle(OpenHandle::Dir {
                entries,
                sent: false,
            }),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Reply<Name> {
        self.begin("readdir", &handle).await;
        let Some(OpenHandle::Dir { entries, sent }) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure);
        };
        if *sent {
            return Err(StatusCode::Eof);
        }
        *sent = true;
        Ok(Name {
            id,
            files: std::mem::take(entries),
        })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Reply<Status> {
        self.begin("remove", &filename).await;
        fs::remove_file(self.local(&filename)?).map_err(|error| io_status(&error))?;
        Ok(ok(id))
    }

    async fn mkdir(&mut self, id: u32, path: String, attrs: FileAttributes) -> Reply<Status> {
        self.begin("mkdir", &path).await;
        let local = self.local(&path)?;
        // Like OpenSSH: an existing directory is a generic failure.
        fs::create_dir(&local).map_err(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => StatusCode::Failure,
            _ => io_status(&error),
        })?;
        if let Some(mode) = attrs.permissions {
            let _ = fs::set_permissions(&local, fs::Permissions::from_mode(mode & 0o7777));
        }
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Reply<Status> {
        self.begin("rmdir", &path).await;
        fs::remove_dir(self.local(&path)?).map_err(|error| io_status(&error))?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Reply<Name> {
        self.begin("realpath", &path).await;
        // Like OpenSSH, which uses realpath(3): the path must exist.
        let resolved = fs::canonicalize(self.local(&path)?).map_err(|error| io_status(&error))?;
        Ok(Name {
            id,
            files: vec![NameEntry::dummy(self.sftp_path(&resolved))],
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Reply<Attrs> {
        self.begin("stat", &path).await;
        let metadata = fs::metadata(self.local(&path)?).map_err(|error| io_status(&error))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&metadata),
        })
    }

    async fn rename(&mut self, id: u32, oldpath: String, newpath: String) -> Reply<Status> {
        self.begin("rename", &oldpath).await;
        fs::rename(self.local(&oldpath)?, self.local(&newpath)?)
            .map_err(|error| io_status(&error))?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Reply<Name> {
        self.begin("readlink", &path).await;
        let target = fs::read_link(self.local(&path)?).map_err(|error| io_status(&error))?;
        Ok(Name {
            id,
            files: vec![NameEntry::dummy(target.to_string_lossy())],
        })
    }

    async fn symlink(&mut self, id: u32, linkpath: String, targetpath: String) -> Reply<Status> {
        self.begin("symlink", &linkpath).await;
        std::os::unix::fs::symlink(targetpath, self.local(&linkpath)?)
            .map_err(|error| io_status(&error))?;
        Ok(ok(id))
    }
}
