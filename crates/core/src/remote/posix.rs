//! The POSIX side of a run (`docs/contract.md#remote-side`): the wrapper that runs the
//! entrypoint and takes its whole tree down with it, the kill, the probe of what other runs left
//! on the machine, and the cleanup. Every script runs under `exec sh -c '…'`, whatever the login
//! shell.
//!
//! # What belongs to a run
//! Everything the entrypoint starts inherits two things: the process group of the wrapper
//! (sshd puts every exec in a session of its own, and the leading `exec` makes the wrapper its
//! leader), and the environment variable `TESTFLEET_RUN_ID`. A process that leaves the group
//! (`setsid`, a double fork into a new session) keeps the variable, so on Linux, where
//! `/proc/PID/environ` can be read, the run's processes are *the group plus every process of the
//! user that carries the variable*. Elsewhere (macOS, the BSDs) only the group is known, read
//! with `ps`.
//!
//! On Linux the wrapper also tries to give the entrypoint a cgroup (v2) of its own,
//! `testfleet-<id>` under the wrapper's own cgroup, which works where the login may create one
//! (root, or a delegated subtree). Every process started in it stays in it, whatever it does to
//! its group, session or environment, so its `cgroup.procs` belongs to the run too; the path is
//! the pid file's second line. Without a cgroup, a process that both leaves the group and clears
//! its environment escapes.
//!
//! # When the tree is killed
//! - the entrypoint ended: the wrapper kills what is left of the tree before it exits, so a
//!   background child cannot outlive the run (or hold its output open);
//! - the session's stdin ended (gated runs only): the client keeps stdin open for the whole run,
//!   so its end means the connection or the sshd session is gone, and a guard process kills the
//!   tree, the wrapper included;
//! - testfleet asked (timeout, cancel, a run found orphaned): [`posix_kill_command`].
//!
//! Every kill is `TERM` to everything of the run, then `KILL` to what is still alive after the
//! grace.

use std::time::Duration;

use super::quote::quote_posix;

/// Exit status of [`posix_kill_command`] when nothing of the run was alive.
pub const KILL_ALREADY_GONE: i32 = 4;
/// Exit status of [`posix_kill_command`] when neither a pid file nor a marked process was found.
pub const KILL_NO_PID_FILE: i32 = 3;
/// Exit status of [`posix_kill_command`] when processes of the run were still alive after `KILL`
/// (stuck in the kernel, or not ours to kill).
pub const KILL_SURVIVORS: i32 = 5;

/// The paths and names a run's scripts are built from (SFTP path form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunScript<'a> {
    /// The run folder: the entrypoint's working directory.
    pub run_dir: &'a str,
    /// The pid file beside it, holding the wrapper's pid (the process group's id).
    pub pid_file: &'a str,
    /// The entrypoint's file name (`run.sh`).
    pub entrypoint: &'a str,
    /// The run's id: the value of `TESTFLEET_RUN_ID` that marks its processes.
    pub run_id: &'a str,
    /// The fleet machine's name: the value of `TESTFLEET_MACHINE`.
    pub machine: &'a str,
    /// The entrypoint's arguments, each passed as one word, exactly.
    pub args: &'a [String],
    /// The variables set for the entrypoint, in order (testfleet's own come after them).
    pub env: &'a [ScriptVar<'a>],
    /// Time between `TERM` and `KILL` when the tree is killed.
    pub grace: Duration,
}

/// A variable set for a run's entrypoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptVar<'a> {
    /// Its name (`[A-Za-z_][A-Za-z0-9_]*`).
    pub name: &'a str,
    /// Its value.
    pub value: &'a str,
    /// A secret: a gated POSIX command reads its value from its stdin after the gate's line
    /// ([`posix_secret_lines`]), so that it is on no command line (which every user of the
    /// machine may read in the process table) and in no log; elsewhere it is written into the
    /// command like any value.
    pub secret: bool,
}

/// The variables testfleet sets for every entrypoint, after the user's: `TESTFLEET_RUN_ID`,
/// `TESTFLEET_MACHINE` and `TESTFLEET_ARTIFACTS` (the absolute path of the run folder's
/// `artifacts`, which the script creates if it leaves any), as `(name, value)`.
pub fn testfleet_vars(
    script: &RunScript<'_>,
    artifacts_dir: String,
) -> [(&'static str, String); 3] {
    [
        ("TESTFLEET_RUN_ID", script.run_id.to_owned()),
        ("TESTFLEET_MACHINE", script.machine.to_owned()),
        ("TESTFLEET_ARTIFACTS", artifacts_dir),
    ]
}

/// What a gated command ([`posix_gated_exec_command`]) reads after the gate's line: one line
/// per secret of `env`, in order, each byte written as a `\ooo` octal escape that the script
/// turns back into the byte with `printf` (so that a value may hold newlines, quotes, `$` or
/// backslashes, and no line is ever longer than four times the value). Empty when there is no
/// secret.
pub fn posix_secret_lines(env: &[ScriptVar<'_>]) -> Vec<u8> {
    let mut lines = Vec::new();
    for var in env.iter().filter(|var| var.secret) {
        for byte in var.value.bytes() {
            lines.extend_from_slice(format!("\\{byte:03o}").as_bytes());
        }
        lines.push(b'\n');
    }
    lines
}

/// Shell functions every script of a run shares. They expect `tf_id` (the run id), `tf_pg` (the
/// process group, may be empty), `tf_cg` (the run's cgroup folder, may be empty) and `tf_spare`
/// (a pid never listed, may be empty). With `tf_fast` set and the cgroup there, the cgroup alone
/// is listed: the wrapper's sweep after the entrypoint ended, when everything the entrypoint
/// started was born in the cgroup.
///
/// `tf_left` sets `tf_l` to the pids of the run still alive: on Linux one `grep` for the marker
/// over `/proc/*/environ` and one `pgrep -g` for the group (without `pgrep`, one pass over
/// `/proc/*/stat` with shell builtins); elsewhere `ps`. Each candidate's `stat` is read again
/// with builtins: processes whose parent is the scanning shell (its own helpers, the guard) and
/// zombies are left out. `tf_stop` sends `TERM` to all of
/// them and waits up to `grace` for those to go (each tick only looks at them again, with
/// builtins, so that the grace is close to wall time even on a host with many processes), lists
/// the run again (what is new, or still there), sends `KILL` to that and gives it up to 2 s to be
/// gone, then removes the emptied cgroup.
fn functions(grace: Duration) -> String {
    let ticks = grace.as_millis().div_ceil(100);
    format!(
        "if [ -r /proc/self/stat ]; then read -r tf_self _ < /proc/self/stat; else tf_self=$$; fi; \
         tf_left() {{ \
           tf_l=; \
           if [ -n \"$tf_cg\" ] && [ -r \"$tf_cg/cgroup.procs\" ]; then \
             while read -r tf_p; do tf_l=\"$tf_l $tf_p\"; done < \"$tf_cg/cgroup.procs\"; \
             [ -n \"$tf_fast\" ] && return 0; fi; \
           if [ -r /proc/self/stat ] && command -v pgrep >/dev/null 2>&1; then \
             tf_m=$(grep -l -F \"TESTFLEET_RUN_ID=$tf_id\" /proc/[0-9]*/environ 2>/dev/null); \
             [ -n \"$tf_pg\" ] && tf_m=\"$tf_m $(pgrep -g \"$tf_pg\" 2>/dev/null)\"; \
             set -f; set -- $tf_m; set +f; \
             for tf_p in \"$@\"; do \
               tf_p=${{tf_p#/proc/}}; tf_p=${{tf_p%/environ}}; \
               case \" $tf_l \" in *\" $tf_p \"*) continue;; esac; \
               [ \"$tf_p\" = \"$tf_self\" ] || [ \"$tf_p\" = \"$tf_spare\" ] && continue; \
               {{ read -r _ tf_s < \"/proc/$tf_p/stat\"; }} 2>/dev/null || continue; \
               tf_s=${{tf_s##*) }}; set -f; set -- $tf_s; set +f; \
               [ \"$1\" = Z ] || [ \"$2\" = \"$tf_self\" ] && continue; \
               tf_l=\"$tf_l $tf_p\"; \
             done; \
           elif [ -r /proc/self/stat ]; then \
             tf_m=$(grep -l -F \"TESTFLEET_RUN_ID=$tf_id\" /proc/[0-9]*/environ 2>/dev/null); \
             set -f; set -- $tf_m; tf_m=\" $* \"; set +f; \
             for tf_d in /proc/[0-9]*; do \
               {{ read -r tf_p tf_s < \"$tf_d/stat\"; }} 2>/dev/null || continue; \
               tf_s=${{tf_s##*) }}; set -f; set -- $tf_s; set +f; \
               [ \"$1\" = Z ] || [ \"$2\" = \"$tf_self\" ] || [ \"$tf_p\" = \"$tf_self\" ] \
                 || [ \"$tf_p\" = \"$tf_spare\" ] && continue; \
               if [ -n \"$tf_pg\" ] && [ \"$3\" = \"$tf_pg\" ]; then tf_l=\"$tf_l $tf_p\"; \
               else case $tf_m in *\" $tf_d/environ \"*) tf_l=\"$tf_l $tf_p\";; esac; fi; \
             done; \
           elif [ -n \"$tf_pg\" ] && tf_ps=$(ps -A -o pid= -o ppid= -o pgid= -o stat= 2>/dev/null); then \
             set -f; set -- $tf_ps; set +f; \
             while [ $# -ge 4 ]; do \
               case $4 in Z*) ;; *) [ \"$3\" = \"$tf_pg\" ] && [ \"$2\" != \"$tf_self\" ] \
                 && [ \"$1\" != \"$tf_self\" ] && [ \"$1\" != \"$tf_spare\" ] && tf_l=\"$tf_l $1\";; esac; \
               shift 4; \
             done; \
           elif [ -n \"$tf_pg\" ] && kill -0 -\"$tf_pg\" 2>/dev/null; then tf_l=\"-$tf_pg\"; fi; }}; \
         tf_alive() {{ \
           case $1 in -*) kill -0 -- \"$1\" 2>/dev/null; return;; esac; \
           [ -r /proc/self/stat ] || {{ kill -0 \"$1\" 2>/dev/null; return; }}; \
           {{ read -r _ tf_z < \"/proc/$1/stat\"; }} 2>/dev/null || return 1; \
           tf_z=${{tf_z##*) }}; case $tf_z in Z*) return 1;; esac; return 0; }}; \
         tf_stop() {{ \
           [ -n \"$tf_pg\" ] && kill -TERM -\"$tf_pg\" 2>/dev/null; \
           tf_left; \
           if [ -n \"$tf_l\" ]; then \
             kill -TERM $tf_l 2>/dev/null; \
             tf_i=0; while [ -n \"$tf_l\" ] && [ $tf_i -lt {ticks} ]; do \
               sleep 0.1; tf_i=$((tf_i+1)); \
               tf_a=; for tf_q in $tf_l; do tf_alive \"$tf_q\" && tf_a=\"$tf_a $tf_q\"; done; tf_l=$tf_a; \
             done; \
             tf_left; \
             [ -n \"$tf_l\" ] && {{ kill -KILL $tf_l 2>/dev/null; tf_i=0; \
               while [ $tf_i -lt 20 ]; do sleep 0.1; tf_i=$((tf_i+1)); tf_left; [ -z \"$tf_l\" ] && break; done; }}; \
           fi; \
           [ -z \"$tf_l\" ] && [ -n \"$tf_cg\" ] && rmdir \"$tf_cg\" 2>/dev/null; return 0; }}; \
         tf_pidfile() {{ tf_pg=; tf_cg=; {{ read -r tf_pg; read -r tf_cg; }} < \"$1\" 2>/dev/null; \
           case $tf_cg in /*/testfleet-\"$tf_id\") ;; *) tf_cg=;; esac; }}; "
    )
}

/// Shell that makes `tf_cg` the folder of a new cgroup v2 `testfleet-<id>` beside the wrapper's
/// own, or leaves it empty where none can be made (no cgroup v2, or the login may not create
/// one there). The path goes on the pid file's second line **before** the `mkdir`, so that a kill
/// that stops the wrapper in between still knows what to remove. Shell builtins and one `mkdir`.
fn make_cgroup(pid_file: &str) -> String {
    format!(
        "tf_cg=; \
         if [ -r /proc/self/cgroup ]; then \
           tf_rel=; while IFS= read -r tf_line; do case $tf_line in 0::*) tf_rel=${{tf_line#0::}};; esac; \
           done < /proc/self/cgroup; \
           for tf_mnt in /sys/fs/cgroup /sys/fs/cgroup/unified; do \
             [ -n \"$tf_rel\" ] && [ -f \"$tf_mnt/cgroup.controllers\" ] || continue; \
             tf_c=\"$tf_mnt${{tf_rel%/}}/testfleet-$tf_id\"; \
             echo \"$tf_c\" >> {pid} && mkdir \"$tf_c\" 2>/dev/null && tf_cg=$tf_c; break; \
           done; \
         fi; ",
        pid = quote_posix(pid_file),
    )
}

/// `exec sh -c '<script>'` whose script first waits for the gate's open line on stdin
/// ([`crate::ports::ExecGate::OPEN_LINE`]), and exits with 125 without running anything when
/// stdin ends before it.
pub fn posix_gated_command(script: &str) -> String {
    let gated = format!("read -r tf_gate && [ \"$tf_gate\" = go ] || exit 125; {script}");
    format!("exec sh -c {}", quote_posix(&gated))
}

/// The wrapper behind a gate ([`posix_gated_command`]), which writes its pid to the pid file
/// before it waits at the gate (so that a run waiting for its upload is already seen as alive,
/// and can be killed; the pid file goes again when the gate is refused). It runs the entrypoint
/// in the run folder
/// with `TESTFLEET_RUN_ID` set and its stdin at end-of-file, while a guard watches the session's
/// stdin and kills the whole tree when it ends. When the entrypoint ends, the wrapper kills what
/// is left of the tree and exits with the entrypoint's status; a status of 129–192 that names a
/// terminating signal is passed on as that signal, as a shell would.
pub fn posix_gated_exec_command(script: &RunScript<'_>) -> String {
    let pid = quote_posix(script.pid_file);
    // The secrets follow the gate's line, one line each (see `posix_secret_lines`).
    let mut secrets = String::new();
    for (secret_idx, _) in script.env.iter().filter(|var| var.secret).enumerate() {
        secrets.push_str(&format!(
            "IFS= read -r tf_s{secret_idx} || {{ rm -f {pid}; exit 125; }}; \
             tf_s{secret_idx}=$(printf \"${{tf_s{secret_idx}}}x\"); tf_s{secret_idx}=${{tf_s{secret_idx}%x}}; "
        ));
    }
    let body = format!(
        "echo $$ > {pid} || exit 126; \
         read -r tf_gate && [ \"$tf_gate\" = go ] || {{ rm -f {pid}; exit 125; }}; {secrets}{}",
        wrapper(script, true)
    );
    format!("exec sh -c {}", quote_posix(&body))
}

/// The wrapper without a gate and without the stdin guard (its stdin is not held open), for a
/// caller that starts the entrypoint only when it may run. It writes its pid itself.
pub fn posix_exec_command(script: &RunScript<'_>) -> String {
    let body = format!(
        "echo $$ > {} || exit 126; {}",
        quote_posix(script.pid_file),
        wrapper(script, false)
    );
    format!("exec sh -c {}", quote_posix(&body))
}

/// `NAME=VALUE` words for the entrypoint's variables (the user's, then testfleet's), and its
/// arguments as words with a leading space each. A secret's value is `"$tf_sN"`, read from
/// stdin, when `secrets_on_stdin`.
fn invocation_words(script: &RunScript<'_>, secrets_on_stdin: bool) -> (String, String) {
    let mut assignments = Vec::new();
    let mut secret_idx = 0;
    for var in script.env {
        let value = if var.secret && secrets_on_stdin {
            let value = format!("\"$tf_s{secret_idx}\"");
            secret_idx += 1;
            value
        } else {
            quote_posix(var.value)
        };
        assignments.push(format!("{}={value}", var.name));
    }
    let artifacts = super::join_remote(script.run_dir, "artifacts");
    for (name, value) in testfleet_vars(script, artifacts) {
        assignments.push(format!("{name}={}", quote_posix(&value)));
    }
    let args: String = script
        .args
        .iter()
        .map(|arg| format!(" {}", quote_posix(arg)))
        .collect();
    (assignments.join(" "), args)
}

fn wrapper(script: &RunScript<'_>, guard_stdin: bool) -> String {
    let ep = quote_posix(script.entrypoint);
    let (vars, args) = invocation_words(script, guard_stdin);
    // Without job control, a background list's stdin would be /dev/null: the session's stdin is
    // kept on fd 3 for the guard, and closed for the entrypoint.
    let guard = if guard_stdin {
        "{ trap 'exit 0' TERM; while read -r tf_line; do :; done; trap '' TERM; \
           [ -r /proc/self/stat ] && read -r tf_self _ < /proc/self/stat; tf_stop; } \
           <&3 >/dev/null 2>&1 & tf_guard=$!; "
    } else {
        "tf_guard=; "
    };
    // With a cgroup, the entrypoint's subshell moves itself into it before it becomes the
    // entrypoint (`exec` keeps its pid), so that everything it starts is born there; the wrapper
    // stays out. When the move fails, the subshell removes the cgroup, so that a cgroup that
    // exists once the entrypoint ended holds all of the run. The guard, which has nothing to
    // clean, is ended with KILL: a shell blocked in `read` runs a TERM trap only once a line
    // comes.
    format!(
        "exec 3<&0; cd {dir} || exit 126; [ -x ./{ep} ] || chmod +x ./{ep}; \
         tf_id={id}; tf_pg=$$; tf_spare=; {functions}{make_cgroup}\
         if [ -n \"$tf_cg\" ]; then \
           ( read -r tf_me _ < /proc/self/stat; \
             echo \"$tf_me\" > \"$tf_cg/cgroup.procs\" 2>/dev/null || rmdir \"$tf_cg\" 2>/dev/null; \
             export {vars}; exec ./{ep}{args} ) </dev/null 3<&- & tf_child=$!; \
         else {vars} ./{ep}{args} </dev/null 3<&- & tf_child=$!; fi; \
         {guard}\
         wait \"$tf_child\"; tf_status=$?; \
         [ -n \"$tf_guard\" ] && kill -KILL \"$tf_guard\" 2>/dev/null; \
         trap : TERM; tf_fast=1; tf_stop; trap - TERM; \
         if [ \"$tf_status\" -gt 128 ] && [ \"$tf_status\" -le 192 ]; then \
           tf_sig=$(kill -l \"$tf_status\" 2>/dev/null); \
           case $tf_sig in \
             HUP|INT|QUIT|ILL|TRAP|ABRT|BUS|FPE|KILL|USR1|SEGV|USR2|PIPE|ALRM|TERM|XCPU|XFSZ|SYS) \
               trap - \"$tf_sig\"; kill -s \"$tf_sig\" $$;; \
           esac; \
         fi; \
         exit \"$tf_status\"",
        dir = quote_posix(script.run_dir),
        id = quote_posix(script.run_id),
        functions = functions(script.grace),
        make_cgroup = make_cgroup(script.pid_file),
    )
}

/// A POSIX script that kills everything of the run whose pid file is `pid_file` and whose id is
/// `run_id`: `TERM`, then `KILL` after `grace` to what is left. It waits up to 5 s for the pid
/// file to appear (a kill right after the start), and reads it again after the kill, for a cgroup
/// the wrapper named meanwhile. Exit status: 0 when something of the run was
/// alive and now is not; [`KILL_ALREADY_GONE`] when nothing was alive;
/// [`KILL_NO_PID_FILE`] when no pid file appeared and no process carries the run's marker;
/// [`KILL_SURVIVORS`] when something was still alive after `KILL`.
pub fn posix_kill_command(pid_file: &str, run_id: &str, grace: Duration) -> String {
    let script = format!(
        "f={pid}; i=0; \
         while [ ! -s \"$f\" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; \
         tf_id={id}; tf_spare=; {functions}tf_pidfile \"$f\"; \
         tf_left; tf_was=; [ -n \"$tf_l\" ] && {{ tf_was=1; tf_stop; }}; \
         tf_pidfile \"$f\"; [ -n \"$tf_cg\" ] && [ -d \"$tf_cg\" ] && tf_stop; \
         [ -n \"$tf_l\" ] && exit {survived}; [ -n \"$tf_was\" ] && exit 0; \
         [ -n \"$tf_pg\" ] && exit {gone}; exit {no_pid}",
        pid = quote_posix(pid_file),
        id = quote_posix(run_id),
        functions = functions(grace),
        gone = KILL_ALREADY_GONE,
        no_pid = KILL_NO_PID_FILE,
        survived = KILL_SURVIVORS,
    );
    format!("exec sh -c {}", quote_posix(&script))
}

/// A POSIX script that looks at the pid files in `runs_dir` other than `own_id`'s and prints one
/// line per file: `live ID` when something of run `ID` is alive (its process group or a process
/// marked with its id, or in its cgroup), `dead ID` otherwise (and an empty cgroup it names is
/// removed). A missing `runs_dir` prints nothing.
pub fn posix_probe_command(runs_dir: &str, own_id: &str) -> String {
    let script = format!(
        "cd {dir} 2>/dev/null || exit 0; tf_spare=; {functions}\
         for f in *.pid; do [ -f \"$f\" ] || continue; tf_id=${{f%.pid}}; \
           [ \"$tf_id\" = {own} ] && continue; tf_pidfile \"$f\"; \
           tf_left; if [ -n \"$tf_l\" ]; then echo \"live $tf_id\"; \
           else [ -n \"$tf_cg\" ] && rmdir \"$tf_cg\" 2>/dev/null; echo \"dead $tf_id\"; fi; \
         done; exit 0",
        dir = quote_posix(runs_dir),
        own = quote_posix(own_id),
        functions = functions(Duration::ZERO),
    );
    format!("exec sh -c {}", quote_posix(&script))
}

/// A gated script (see [`posix_gated_command`]) that removes `run_dir` and `pid_file` with one
/// `rm -rf`; when that fails, it makes `run_dir` writable and searchable by its owner all the
/// way down and removes it again: a folder the script made unreadable cannot stay behind.
pub fn posix_gated_cleanup_command(run_dir: &str, pid_file: &str) -> String {
    let (dir, pid) = (quote_posix(run_dir), quote_posix(pid_file));
    // The run's cgroup, named on the pid file's second line, is empty by now (the wrapper
    // removes it itself when it can).
    posix_gated_command(&format!(
        "{{ read -r _; read -r tf_cg; }} < {pid} 2>/dev/null; \
         case $tf_cg in /*/testfleet-*) [ -d \"$tf_cg\" ] && rmdir \"$tf_cg\" 2>/dev/null;; esac; \
         rm -rf -- {dir} {pid} 2>/dev/null || {{ chmod -R u+rwx -- {dir} 2>/dev/null; rm -rf -- {dir} {pid}; }}"
    ))
}
