//! `cargo xtask bench store`: the SQLite and the PostgreSQL run stores side by side, in one run.
//!
//! - claim + start + complete lifecycles per second, from one process and from 8 concurrent
//!   processes (each on machines of its own);
//! - `list` of the newest 50 runs of one machine among 100,000 (median of 20);
//! - 16 concurrent processes contending for 4 machines for a few seconds, then a check of what
//!   the store holds: no two runs of a machine held it at the same time (by the processes'
//!   own clock readings around each hold), no claim that a process saw created is missing, and no
//!   run in the store that no process created.
//!
//! Every process is this binary again (`_bench-store-child`), on a store opened by itself. The
//! PostgreSQL server is a private cluster on loopback with its default (durable) settings; the
//! SQLite file and the cluster's data are on the same disk. Targets: PostgreSQL ≥ 1,000
//! lifecycles/s from one process, a listing under 5 ms, zero lost or duplicated claims.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use testfleet_core::ports::{Claim, RunFilter, RunStore};
use testfleet_core::run::{NewRun, RunPaths, RunStatus, Transition};
use testfleet_core::{MachineName, RunId, TargetOs, TestDirHash, Timestamp};
use testfleet_store_postgres::{PgConfig, PgEnv, PostgresStore};
use testfleet_store_sqlite::{DATABASE_FILE, SqliteStore};
use testfleet_testkit::postgres::PrivateCluster;

const ONE_PROCESS_LIFECYCLES: u64 = 5_000;
const PROCESSES: u64 = 8;
const PER_PROCESS_LIFECYCLES: u64 = 1_500;
const LIST_RUNS: u64 = 100_000;
const LIST_MACHINES: u64 = 100;
const LIST_QUERIES: usize = 20;
const LIST_LIMIT: usize = 50;
const FILL_TASKS: u64 = 8;
const CONTENDERS: u64 = 16;
const CONTENDED_MACHINES: u64 = 4;
const CONTENTION: Duration = Duration::from_secs(4);

/// Where a store is, as a child process is told.
#[derive(Debug, Clone)]
enum Locator {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

impl Locator {
    fn to_json(&self) -> Value {
        match self {
            Self::Sqlite(path) => json!({ "sqlite": path }),
            Self::Postgres { url, schema } => json!({ "url": url, "schema": schema }),
        }
    }

    fn from_json(value: &Value) -> Result<Self> {
        if let Some(path) = value["sqlite"].as_str() {
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        Ok(Self::Postgres {
            url: value["url"].as_str().context("a url")?.to_owned(),
            schema: value["schema"].as_str().context("a schema")?.to_owned(),
        })
    }

    /// Opens the store (blocking).
    fn open(&self) -> Result<Arc<dyn RunStore>> {
        Ok(match self {
            Self::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
            Self::Postgres { url, schema } => {
                let config = PgConfig::parse(url, Some(schema), &PgEnv::default())?;
                Arc::new(PostgresStore::open(&config)?)
            }
        })
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or_default()
}

fn new_run(machine: &str, id: RunId) -> NewRun {
    NewRun {
        paths: RunPaths::in_state_dir(&PathBuf::from("/state"), &id),
        id,
        machine: MachineName::parse(machine).expect("bench machine names are valid"),
        os: TargetOs::linux(),
        test_dir: PathBuf::from("/home/ci/tests/hello"),
        test_dir_hash: TestDirHash::parse(&"ab".repeat(32)).expect("64 hex digits form a hash"),
        entrypoint: "run.sh".to_owned(),
        invocation: testfleet_core::Invocation::default(),
        created_at: Timestamp::now(),
        timeout_ms: Some(1_800_000),
        keep_remote: false,
        owner: None,
        lease: Duration::from_secs(30),
        controller: None,
    }
}

/// An id unique across processes: now, and the process and a counter in the random bits.
fn unique_id(process_idx: u64, serial: u64) -> RunId {
    let ms = u64::try_from(Timestamp::now().unix_ms()).unwrap_or_default();
    RunId::from_parts(ms, (u128::from(process_idx) << 64) | u128::from(serial))
}

async fn lifecycle(store: &dyn RunStore, machine: &str, id: RunId) -> Result<()> {
    let Claim::Created(run) = store.claim(new_run(machine, id)).await? else {
        bail!("the bench claims a free machine");
    };
    store
        .transition(
            &run.id,
            Transition::new(RunStatus::Pending, RunStatus::Running, Timestamp::now()),
        )
        .await?;
    let mut done = Transition::new(RunStatus::Running, RunStatus::Completed, Timestamp::now());
    done.exit_code = Some(0);
    store.transition(&run.id, done).await?;
    Ok(())
}

/// Figures of one backend.
#[derive(Debug, Default)]
struct Figures {
    one_process: f64,
    processes: f64,
    list_median_ms: f64,
    list_worst_ms: f64,
    fill_per_sec: f64,
    contended_created: usize,
    contended_active_answers: usize,
    duplicated: usize,
    lost: usize,
    phantom: usize,
}

pub fn run() -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("tf-bench-store")
        .tempdir()
        .context("a scratch dir")?;
    let cluster = PrivateCluster::start().context("failed to start PostgreSQL")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for backend in ["SQLite", "PostgreSQL"] {
        let locator = |name: &str| -> Result<Locator> {
            Ok(match backend {
                "SQLite" => {
                    let dir = scratch.path().join(name);
                    std::fs::create_dir_all(&dir)?;
                    Locator::Sqlite(dir.join(DATABASE_FILE))
                }
                _ => Locator::Postgres {
                    url: cluster.superuser_url(),
                    schema: format!("bench_{name}"),
                },
            })
        };
        eprintln!("== {backend}");
        let mut figures = Figures::default();

        let one = locator("one")?;
        let (done, secs) = children(
            &one,
            1,
            &json!({ "mode": "lifecycles", "count": ONE_PROCESS_LIFECYCLES }),
        )?;
        figures.one_process = done as f64 / secs;
        eprintln!("  1 process: {:.0} lifecycles/s", figures.one_process);

        let many = locator("many")?;
        let (done, secs) = children(
            &many,
            PROCESSES,
            &json!({ "mode": "lifecycles", "count": PER_PROCESS_LIFECYCLES }),
        )?;
        figures.processes = done as f64 / secs;
        eprintln!(
            "  {PROCESSES} processes: {:.0} lifecycles/s",
            figures.processes
        );

        let list = locator("list")?;
        let store = runtime.block_on(async {
            let list = list.clone();
            tokio::task::spawn_blocking(move || list.open()).await?
        })?;
        let fill_started = Instant::now();
        runtime.block_on(fill(&store))?;
        figures.fill_per_sec = LIST_RUNS as f64 / fill_started.elapsed().as_secs_f64();
        let mut timings = runtime.block_on(list_timings(store.as_ref()))?;
        timings.sort();
        figures.list_median_ms = timings[timings.len() / 2].as_secs_f64() * 1_000.0;
        figures.list_worst_ms = timings[timings.len() - 1].as_secs_f64() * 1_000.0;
        eprintln!("  list: {:.3} ms", figures.list_median_ms);
        drop(store);

        let contended = locator("contended")?;
        contend(&runtime, &contended, &mut figures)?;
        eprintln!(
            "  {CONTENDERS} contending processes: {} claims created, {} duplicated, {} lost, {} phantom",
            figures.contended_created, figures.duplicated, figures.lost, figures.phantom
        );
        results.push((backend, figures));
    }
    print_table(&results);
    for (backend, figures) in &results {
        ensure!(
            figures.duplicated == 0 && figures.lost == 0 && figures.phantom == 0,
            "{backend}: the machine lock failed under contention: {figures:?}"
        );
    }
    Ok(())
}

/// Fills the store with [`LIST_RUNS`] lifecycles over [`LIST_MACHINES`] machines, from
/// [`FILL_TASKS`] tasks, each owning its own machines.
async fn fill(store: &Arc<dyn RunStore>) -> Result<()> {
    let mut tasks = Vec::new();
    for task_idx in 0..FILL_TASKS {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let mut serial = task_idx;
            while serial < LIST_RUNS {
                let machine_idx =
                    task_idx + FILL_TASKS * (serial / FILL_TASKS % (LIST_MACHINES / FILL_TASKS));
                lifecycle(
                    store.as_ref(),
                    &format!("m-{machine_idx}"),
                    unique_id(task_idx, serial),
                )
                .await?;
                serial += FILL_TASKS;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn list_timings(store: &dyn RunStore) -> Result<Vec<Duration>> {
    let filter = RunFilter {
        machine: Some(MachineName::parse("m-42")?),
        status: None,
        limit: Some(LIST_LIMIT),
    };
    let mut timings = Vec::new();
    for _ in 0..LIST_QUERIES {
        let started = Instant::now();
        let runs = store.list(&filter).await?;
        timings.push(started.elapsed());
        ensure!(
            runs.len() == LIST_LIMIT,
            "the listing found {} runs",
            runs.len()
        );
    }
    Ok(timings)
}

/// Starts `count` children on `locator` with `task`, released together; returns the
/// lifecycles they did and the seconds from the release to the last one's end.
fn children(locator: &Locator, count: u64, task: &Value) -> Result<(u64, f64)> {
    let outputs = spawn_children(locator, count, task)?;
    let mut done = 0;
    let mut last_end = 0_u128;
    let mut go = u128::MAX;
    for output in &outputs {
        done += output["done"].as_u64().context("done")?;
        last_end = last_end.max(output["ended_ns"].as_str().context("end")?.parse()?);
        go = go.min(output["go_ns"].as_str().context("go")?.parse()?);
    }
    Ok((done, (last_end - go) as f64 / 1e9))
}

/// Runs the children and collects their JSON results.
fn spawn_children(locator: &Locator, count: u64, task: &Value) -> Result<Vec<Value>> {
    let exe = std::env::current_exe()?;
    // Opening (and migrating) happens before the release, so it is not timed.
    let go_ns = now_ns() + 2_000_000_000 + u128::from(count) * 100_000_000;
    let mut running = Vec::new();
    for process_idx in 0..count {
        let spec = json!({
            "store": locator.to_json(),
            "task": task,
            "process": process_idx,
            "go_ns": go_ns.to_string(),
        });
        running.push(
            Command::new(&exe)
                .arg("_bench-store-child")
                .arg(spec.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("the bench runs itself")?,
        );
    }
    let mut outputs = Vec::new();
    for child in running {
        let output = child.wait_with_output()?;
        ensure!(
            output.status.success(),
            "a bench child failed ({})",
            output.status
        );
        outputs.push(serde_json::from_slice(&output.stdout).context("a child's result")?);
    }
    Ok(outputs)
}

/// 16 processes contend for 4 machines, then the store and their reports are checked.
fn contend(
    runtime: &tokio::runtime::Runtime,
    locator: &Locator,
    figures: &mut Figures,
) -> Result<()> {
    let outputs = spawn_children(
        locator,
        CONTENDERS,
        &json!({ "mode": "contend", "millis": CONTENTION.as_millis() as u64 }),
    )?;
    // Every hold a process saw: (machine, from, to, id).
    let mut holds: BTreeMap<String, Vec<(u128, u128, String)>> = BTreeMap::new();
    let mut created: Vec<String> = Vec::new();
    let mut seen_active: BTreeSet<String> = BTreeSet::new();
    for output in &outputs {
        for hold in output["holds"].as_array().context("holds")? {
            let id = hold["id"].as_str().context("id")?.to_owned();
            holds
                .entry(hold["machine"].as_str().context("machine")?.to_owned())
                .or_default()
                .push((
                    hold["from"].as_str().context("from")?.parse()?,
                    hold["to"].as_str().context("to")?.parse()?,
                    id.clone(),
                ));
            created.push(id);
        }
        for id in output["active"].as_array().context("active")? {
            seen_active.insert(id.as_str().context("id")?.to_owned());
        }
    }
    figures.contended_created = created.len();
    figures.contended_active_answers = seen_active.len();
    let unique: BTreeSet<&String> = created.iter().collect();
    figures.duplicated = created.len() - unique.len();
    // Overlapping holds of one machine: two processes held it at once.
    for intervals in holds.values_mut() {
        intervals.sort();
        for pair in intervals.windows(2) {
            if pair[1].0 < pair[0].1 {
                figures.duplicated += 1;
            }
        }
    }
    let locator = locator.clone();
    let store =
        runtime.block_on(async { tokio::task::spawn_blocking(move || locator.open()).await? })?;
    let stored = runtime.block_on(store.list(&RunFilter::default()))?;
    let stored_ids: BTreeSet<String> = stored.iter().map(|run| run.id.to_string()).collect();
    figures.lost = unique
        .iter()
        .filter(|id| !stored_ids.contains(id.as_str()))
        .count()
        + seen_active
            .iter()
            .filter(|id| !stored_ids.contains(id.as_str()))
            .count();
    figures.phantom = stored_ids.iter().filter(|id| !unique.contains(id)).count()
        + stored
            .iter()
            .filter(|run| run.status != RunStatus::Completed)
            .count();
    Ok(())
}

/// `_bench-store-child SPEC`: one process of the store bench.
pub fn child(spec: &str) -> Result<()> {
    let spec: Value = serde_json::from_str(spec)?;
    let locator = Locator::from_json(&spec["store"])?;
    let process_idx = spec["process"].as_u64().context("process")?;
    let go_ns: u128 = spec["go_ns"].as_str().context("go")?.parse()?;
    let store = locator.open()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    while now_ns() < go_ns {
        std::thread::sleep(Duration::from_micros(200));
    }
    let task = &spec["task"];
    let result = match task["mode"].as_str() {
        Some("lifecycles") => {
            let count = task["count"].as_u64().context("count")?;
            let machine = format!("p-{process_idx}");
            runtime.block_on(async {
                for serial in 0..count {
                    lifecycle(store.as_ref(), &machine, unique_id(process_idx, serial)).await?;
                }
                anyhow::Ok(())
            })?;
            json!({ "done": count, "go_ns": go_ns.to_string(), "ended_ns": now_ns().to_string() })
        }
        Some("contend") => {
            let until =
                Instant::now() + Duration::from_millis(task["millis"].as_u64().context("millis")?);
            runtime.block_on(contend_child(store.as_ref(), process_idx, until))?
        }
        other => bail!("unknown bench task {other:?}"),
    };
    println!("{result}");
    Ok(())
}

async fn contend_child(store: &dyn RunStore, process_idx: u64, until: Instant) -> Result<Value> {
    let mut holds = Vec::new();
    let mut active = BTreeSet::new();
    let mut serial = 0;
    while Instant::now() < until {
        let machine = format!("c-{}", (process_idx + serial) % CONTENDED_MACHINES);
        serial += 1;
        match store
            .claim(new_run(&machine, unique_id(process_idx, serial)))
            .await?
        {
            Claim::Created(run) => {
                let from = now_ns();
                store
                    .transition(
                        &run.id,
                        Transition::new(RunStatus::Pending, RunStatus::Running, Timestamp::now()),
                    )
                    .await?;
                let to = now_ns();
                let mut done =
                    Transition::new(RunStatus::Running, RunStatus::Completed, Timestamp::now());
                done.exit_code = Some(0);
                store.transition(&run.id, done).await?;
                holds.push(json!({
                    "id": run.id.to_string(), "machine": machine,
                    "from": from.to_string(), "to": to.to_string(),
                }));
            }
            Claim::Active(run) => {
                active.insert(run.id.to_string());
            }
        }
    }
    Ok(json!({ "holds": holds, "active": active }))
}

fn print_table(results: &[(&str, Figures)]) {
    let col = |f: &dyn Fn(&Figures) -> String| -> Vec<String> {
        results.iter().map(|(_, figures)| f(figures)).collect()
    };
    let rows: Vec<(String, Vec<String>, &str)> = vec![
        (
            format!("claim+start+complete, 1 process ({ONE_PROCESS_LIFECYCLES} runs)"),
            col(&|f| format!("{:.0}/s", f.one_process)),
            "PostgreSQL >= 1000/s",
        ),
        (
            format!("claim+start+complete, {PROCESSES} processes ({PER_PROCESS_LIFECYCLES} each)"),
            col(&|f| format!("{:.0}/s", f.processes)),
            "",
        ),
        (
            format!(
                "list newest {LIST_LIMIT} of 1 machine among {LIST_RUNS} (median of {LIST_QUERIES})"
            ),
            col(&|f| format!("{:.3} ms", f.list_median_ms)),
            "< 5 ms",
        ),
        (
            "  slowest of those queries".to_owned(),
            col(&|f| format!("{:.3} ms", f.list_worst_ms)),
            "",
        ),
        (
            format!("  filling {LIST_RUNS} lifecycles, {FILL_TASKS} tasks of 1 process"),
            col(&|f| format!("{:.0}/s", f.fill_per_sec)),
            "",
        ),
        (
            format!(
                "{CONTENDERS} processes on {CONTENDED_MACHINES} machines for {CONTENTION:?}: claims won"
            ),
            col(&|f| format!("{}", f.contended_created)),
            "",
        ),
        (
            "  duplicated (overlapping holds or one run won twice)".to_owned(),
            col(&|f| format!("{}", f.duplicated)),
            "0",
        ),
        (
            "  lost (won or seen active, not stored) + phantom (stored, not won)".to_owned(),
            col(&|f| format!("{} + {}", f.lost, f.phantom)),
            "0 + 0",
        ),
    ];
    println!(
        "{:<72} {:>12} {:>12}   target",
        "benchmark",
        results[0].0,
        results.get(1).map_or("", |r| r.0),
    );
    for (name, values, target) in rows {
        println!(
            "{:<72} {:>12} {:>12}   {target}",
            name,
            values[0],
            values.get(1).map_or("", String::as_str)
        );
    }
}
