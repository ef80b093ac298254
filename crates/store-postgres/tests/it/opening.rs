//! Opening the store: migrations and schemas, an unreachable server, where passwords come from
//! (and that no message shows one), TLS, and a server restart under a running operation.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use testfleet_core::ports::{Claim, RunStore};
use testfleet_core::{ErrorCode, error_chain};
use testfleet_store_postgres::{PgConfig, PgEnv, PostgresStore, SCHEMA_VERSION};
use testfleet_testkit::postgres::{
    ClusterOptions, PASSWORD, PASSWORD_USER, PrivateCluster, TestCertificates,
};

use crate::support::{cluster, config, fresh_schema, new_run};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn open_err(config: &PgConfig) -> String {
    let error = PostgresStore::open(config).expect_err("the store must be refused");
    assert_eq!(error.code(), ErrorCode::StoreError);
    error_chain(&error)
}

#[test]
fn an_unreachable_server_is_named_by_host_and_port_never_by_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = format!("postgres://ci:s3cr3t-pw-91@127.0.0.1:{port}/runs");
    let started = Instant::now();
    let message = open_err(&config(&url, "testfleet"));
    assert!(started.elapsed() < Duration::from_secs(15), "fails fast");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("cannot reach the run store"), "{message}");
    assert!(!message.contains("s3cr3t"), "{message}");
}

#[test]
fn a_fresh_schema_is_migrated_once_by_concurrent_openers() {
    let cluster = &cluster();
    let schema = fresh_schema("concurrent");
    let url = cluster.superuser_url();
    const OPENERS: usize = 8;
    let barrier = Arc::new(Barrier::new(OPENERS));
    let threads: Vec<_> = (0..OPENERS)
        .map(|_| {
            let (url, schema, barrier) = (url.clone(), schema.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                PostgresStore::open(&config(&url, &schema)).map(drop)
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .expect("no panic")
            .expect("every opener succeeds");
    }
    let applied = cluster
        .psql(&format!(
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM \"{schema}\".schema_migrations"
        ))
        .expect("psql");
    // Each migration once, in order.
    let expected: Vec<String> = (1..=SCHEMA_VERSION)
        .map(|version| version.to_string())
        .collect();
    assert_eq!(applied.trim(), expected.join(","));
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let cluster = &cluster();
    let schema = fresh_schema("newer");
    let url = cluster.superuser_url();
    PostgresStore::open(&config(&url, &schema)).expect("a fresh schema opens");
    let future = SCHEMA_VERSION + 7;
    cluster
        .psql(&format!(
            "INSERT INTO \"{schema}\".schema_migrations (version, name) VALUES ({future}, 'from the future')"
        ))
        .expect("psql");
    let snapshot = |cluster: &PrivateCluster| {
        cluster
            .psql(&format!(
                "SELECT (SELECT count(*) FROM \"{schema}\".runs) || '/' || \
                 (SELECT string_agg(version || ':' || applied_at, ',' ORDER BY version) FROM \"{schema}\".schema_migrations) || '/' || \
                 (SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}')"
            ))
            .expect("psql")
    };
    let before = snapshot(cluster);
    let message = open_err(&config(&url, &schema));
    assert!(
        message.contains(&format!("schema version {future}"))
            && message.contains("left untouched")
            && message.contains("upgrade testfleet"),
        "{message}"
    );
    assert_eq!(snapshot(cluster), before, "nothing was written");
}

#[test]
fn fleets_in_two_schemas_of_one_database_do_not_see_each_other() {
    let cluster = &cluster();
    let url = cluster.superuser_url();
    let a = PostgresStore::open(&config(&url, &fresh_schema("fleet_a"))).expect("opens");
    let b = PostgresStore::open(&config(&url, &fresh_schema("fleet_b"))).expect("opens");
    let runtime = runtime();
    for (store, serial) in [(&a, 1), (&b, 2)] {
        let claim = runtime.block_on(store.claim(new_run("linux-1", serial)));
        assert!(matches!(claim, Ok(Claim::Created(_))), "{claim:?}");
    }
    let seen = runtime
        .block_on(a.list(&Default::default()))
        .expect("lists");
    assert_eq!(seen.len(), 1);
}

#[test]
fn passwords_come_from_the_url_pgpassword_or_the_password_file_and_are_never_shown() {
    let cluster = &cluster();
    let schema = fresh_schema("passwords");
    let bare = cluster.url(PASSWORD_USER, "postgres");
    let with_env = |env: PgEnv| PgConfig::parse(&bare, Some(&schema), &env).expect("valid");

    // No password anywhere: the login is refused, and the message says so.
    let message = open_err(&with_env(PgEnv::default()));
    assert!(
        message.contains(&format!("127.0.0.1:{}", cluster.port())),
        "{message}"
    );

    // A wrong one: refused, and the wrong password is not shown either.
    let wrong = PgEnv {
        password: Some("wrong-pw-5521".to_owned()),
        ..PgEnv::default()
    };
    let message = open_err(&with_env(wrong));
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(!message.contains("wrong-pw-5521"), "{message}");

    // PGPASSWORD.
    let env = PgEnv {
        password: Some(PASSWORD.to_owned()),
        ..PgEnv::default()
    };
    let store = PostgresStore::open(&with_env(env)).expect("PGPASSWORD logs in");
    assert!(!format!("{store:?} {}", store.target()).contains(PASSWORD));

    // The password file, 0600; then the URL's own password.
    let dir = tempfile::tempdir().expect("a temp dir");
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:*:*:{PASSWORD_USER}:{PASSWORD}\n"),
    )
    .expect("writable");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let env = PgEnv {
        passfile: Some(passfile),
        ..PgEnv::default()
    };
    PostgresStore::open(&with_env(env)).expect("the password file logs in");
    let in_url = format!(
        "postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{}/postgres",
        cluster.port()
    );
    let config = PgConfig::parse(&in_url, Some(&schema), &PgEnv::default()).expect("valid");
    assert!(!format!("{config:?} {}", config.describe()).contains(PASSWORD));
    PostgresStore::open(&config).expect("the URL's password logs in");
    assert!(
        !cluster.log().contains(PASSWORD),
        "the server log holds no password"
    );
}

#[test]
fn tls_modes_require_and_verify_full_work_and_a_foreign_ca_is_refused() {
    let cluster = &cluster();
    let certs = TestCertificates::new().expect("openssl makes test certificates");
    let tls_cluster = PrivateCluster::start_with(ClusterOptions {
        tls: Some(certs.server()),
        ..ClusterOptions::default()
    })
    .expect("a TLS cluster starts");
    let port = tls_cluster.port();
    let schema = fresh_schema("tls");
    let url =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");
    let ca = certs.ca().display().to_string();
    let mut open_stores = Vec::new();
    for (host, query) in [
        ("127.0.0.1", "sslmode=require".to_owned()),
        ("127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}")),
        ("localhost", format!("sslmode=verify-full&sslrootcert={ca}")),
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}")),
    ] {
        let config = config(&url(host, &query), &schema);
        let store = PostgresStore::open(&config)
            .unwrap_or_else(|error| panic!("{query}: {}", error_chain(&error)));
        let claimed = runtime().block_on(store.claim(new_run("tls-box", 1)));
        assert!(claimed.is_ok(), "{claimed:?}");
        open_stores.push(store);
    }
    let encrypted = tls_cluster
        .psql(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'testfleet'",
        )
        .expect("psql");
    assert!(
        encrypted.trim().parse::<u32>().expect("a count") >= 1,
        "the store's connections are encrypted: {encrypted}"
    );
    drop(open_stores);

    let other = certs.other_ca().display().to_string();
    let message = open_err(&config(
        &url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={other}"),
        ),
        &schema,
    ));
    assert!(message.contains("certificate"), "{message}");
    // A server without TLS and sslmode=require: refused.
    let plain = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        cluster.port()
    );
    let message = open_err(&config(&plain, &schema));
    assert!(
        message.contains("TLS") || message.contains("tls") || message.contains("SSL"),
        "{message}"
    );
}

#[test]
fn an_operation_outlives_a_server_restart() {
    let mut restarting = PrivateCluster::start().expect("a cluster starts");
    let config = config(&restarting.superuser_url(), "testfleet");
    let store = PostgresStore::open(&config).expect("opens");
    let rt = runtime();
    let first = rt.block_on(store.claim(new_run("m-1", 1)));
    assert!(matches!(first, Ok(Claim::Created(_))), "{first:?}");

    restarting.stop();
    let (tx, rx) = std::sync::mpsc::channel();
    let claimer = std::thread::spawn({
        let store = store.clone();
        move || {
            let started = Instant::now();
            let claimed = runtime().block_on(store.claim(new_run("m-2", 2)));
            tx.send(()).expect("the test waits");
            (claimed, started.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(rx.try_recv().is_err(), "the claim waits for the server");
    restarting.start_again().expect("the cluster restarts");
    let (claimed, waited) = claimer.join().expect("no panic");
    assert!(matches!(claimed, Ok(Claim::Created(_))), "{claimed:?}");
    assert!(waited >= Duration::from_millis(1_500), "{waited:?}");
    let all = rt.block_on(store.list(&Default::default())).expect("lists");
    assert_eq!(all.len(), 2, "nothing lost: {all:?}");
}
