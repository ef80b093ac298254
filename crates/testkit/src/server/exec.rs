//! What an exec request runs: `sh -c COMMAND` in a process group of its own (or a scripted
//! answer under Windows emulation), its output and how it ended sent back on the channel.

use std::process::Stdio;
use std::sync::Arc;

use russh::server::Msg;
use russh::{Channel, Sig};
use tokio::io::AsyncWriteExt as _;

use super::config::{ExitOrder, WindowsEmulation};
use super::state::Inner;

fn signal_name(signal: i32) -> Sig {
    match signal {
        1 => Sig::HUP,
        2 => Sig::INT,
        3 => Sig::QUIT,
        4 => Sig::ILL,
        6 => Sig::ABRT,
        8 => Sig::FPE,
        9 => Sig::KILL,
        10 => Sig::USR1,
        11 => Sig::SEGV,
        13 => Sig::PIPE,
        14 => Sig::ALRM,
        15 => Sig::TERM,
        other => Sig::Custom(format!("SIG{other}")),
    }
}

/// How an exec ended, to report to the client.
enum Ended {
    Status(u32),
    Signal(Sig),
}

pub(super) async fn run_exec(
    inner: Arc<Inner>,
    channel: Channel<Msg>,
    handle: russh::server::Handle,
    command: String,
) {
    let id = channel.id();
    let (mut read_half, write_half) = channel.split();
    // Drain what the client sends, passing its data to the command's stdin until EOF: an
    // undrained channel stalls the connection.
    let (stdin_sender, stdin) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let drain = tokio::spawn(async move {
        let mut stdin_sender = Some(stdin_sender);
        while let Some(message) = read_half.wait().await {
            match message {
                russh::ChannelMsg::Data { data } => {
                    if let Some(sender) = &stdin_sender {
                        let _ = sender.send(data.to_vec());
                    }
                }
                russh::ChannelMsg::Eof | russh::ChannelMsg::Close => stdin_sender = None,
                _ => {}
            }
        }
    });
    let faults = &inner.config.faults;
    if faults.stall_exec {
        // Never answer: the client must give up on its own.
        std::future::pending::<()>().await;
    }

    let ended = if let Some(windows) = &inner.config.windows {
        answer_from_script(windows, &write_half, &command).await
    } else {
        run_process(&inner, &write_half, &command, stdin).await
    };

    let send_exit = async {
        if faults.no_exit_status {
            return;
        }
        match ended {
            Ended::Status(status) => {
                let _ = write_half.exit_status(status).await;
            }
            Ended::Signal(signal) => {
                let _ = handle
                    .exit_signal_request(id, signal, false, String::new(), "en".into())
                    .await;
            }
        }
    };
    match inner.config.exit_order {
        ExitOrder::StatusThenEof => {
            send_exit.await;
            let _ = write_half.eof().await;
        }
        ExitOrder::EofThenStatus => {
            let _ = write_half.eof().await;
            send_exit.await;
        }
    }
    let _ = write_half.close().await;
    drain.abort();
}

/// Answers `command` as the Windows emulation's script says: the first matching reply's output
/// and exit status, or no output and 0.
async fn answer_from_script(
    windows: &WindowsEmulation,
    write_half: &russh::ChannelWriteHalf<Msg>,
    command: &str,
) -> Ended {
    let reply = windows
        .replies
        .iter()
        .find(|reply| command.contains(&reply.command_contains));
    if let Some(reply) = reply {
        let _ = write_half.make_writer().write_all(&reply.stdout).await;
        let _ = write_half
            .make_writer_ext(Some(1))
            .write_all(&reply.stderr)
            .await;
    }
    Ended::Status(reply.map_or(0, |reply| reply.exit_status))
}

/// Held (shared) while a run's process is spawned, and (exclusive) while an SFTP request has
/// a file open for writing: a child never starts with a copy of a writable descriptor, which
/// would keep another run's freshly uploaded `run.sh` "busy" until the child execs.
static SPAWNING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Waits until no spawn is under way and keeps new ones from starting while held.
pub(super) fn no_spawn_now() -> std::sync::RwLockWriteGuard<'static, ()> {
    SPAWNING
        .write()
        .unwrap_or_else(|poison| poison.into_inner())
}

async fn run_process(
    inner: &Inner,
    write_half: &russh::ChannelWriteHalf<Msg>,
    command: &str,
    mut stdin: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) -> Ended {
    let mut child = match spawn_shell(inner, command) {
        Ok(child) => child,
        Err(error) => {
            let _ = write_half
                .make_writer_ext(Some(1))
                .write_all(format!("sh: {error}\n").as_bytes())
                .await;
            return Ended::Status(127);
        }
    };
    let leader = child.id();
    if let Some(pid) = leader {
        inner.process_groups.track(pid);
    }
    // The client's stdin data, then EOF; a command that does not read it is not held up.
    if let Some(mut child_stdin) = child.stdin.take() {
        tokio::spawn(async move {
            while let Some(data) = stdin.recv().await {
                if child_stdin.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let copy_out = async {
        if let Some(stdout) = stdout.as_mut() {
            let mut writer = write_half.make_writer();
            let _ = tokio::io::copy(stdout, &mut writer).await;
            let _ = writer.flush().await;
        }
    };
    let copy_err = async {
        if let Some(stderr) = stderr.as_mut() {
            let mut writer = write_half.make_writer_ext(Some(1));
            let _ = tokio::io::copy(stderr, &mut writer).await;
            let _ = writer.flush().await;
        }
    };
    tokio::join!(copy_out, copy_err);
    let waited = child.wait().await;
    if let Some(pid) = leader {
        inner.process_groups.forget_if_gone(pid);
    }
    ended_by(waited)
}

/// Starts `sh -c COMMAND` in the home folder, in a process group of its own.
fn spawn_shell(inner: &Inner, command: &str) -> std::io::Result<tokio::process::Child> {
    let mut process = tokio::process::Command::new("sh");
    process
        .arg("-c")
        .arg(command)
        .current_dir(&inner.home)
        .env("HOME", &inner.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, like sshd's new session: `kill -TERM -<pgid>` reaches the tree.
        .process_group(0)
        .kill_on_drop(true);
    let _spawning = SPAWNING.read().unwrap_or_else(|poison| poison.into_inner());
    // std's spawn returns once the child has exec'd, its inherited copies closed.
    process.spawn()
}

/// How the waited-for shell ended, as the client is told.
fn ended_by(waited: std::io::Result<std::process::ExitStatus>) -> Ended {
    match waited {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            match (status.code(), status.signal()) {
                (Some(code), _) => Ended::Status(u32::try_from(code).unwrap_or(255)),
                (None, Some(signal)) => Ended::Signal(signal_name(signal)),
                (None, None) => Ended::Status(255),
            }
        }
        Err(_) => Ended::Status(255),
    }
}
