//! The forward-only migrations, versioned in the database (`<schema>.schema_migrations`).
//!
//! A store whose recorded version is newer than this build knows is refused before anything
//! is written. Missing migrations are applied in one transaction under an advisory lock keyed
//! by the schema, so that of several controllers opening a fresh database at once exactly one
//! migrates it and the others then see the new version.

use postgres::Client;

use crate::error::Error;

/// The migrations, in order; the schema version is the number applied.
const MIGRATIONS: &[(&str, &str)] = &[
    ("runs", include_str!("../migrations/0001_runs.sql")),
    ("queue", include_str!("../migrations/0002_queue.sql")),
    (
        "invocation",
        include_str!("../migrations/0003_invocation.sql"),
    ),
    ("upload", include_str!("../migrations/0004_upload.sql")),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The version recorded in `schema`, 0 when it has no migrations table (or does not exist).
fn recorded_version(client: &mut Client, schema: &str) -> Result<i32, postgres::Error> {
    let table = format!("\"{schema}\".schema_migrations");
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    client
        .query_one(
            &format!("SELECT COALESCE(max(version), 0) FROM {table}"),
            &[],
        )
        .map(|row| row.get(0))
}

/// Brings `schema` up to [`SCHEMA_VERSION`], or refuses a newer one untouched.
pub(crate) fn migrate(client: &mut Client, schema: &str, target: &str) -> Result<(), Error> {
    let sql = |action| {
        move |source| Error::Sql {
            action,
            target: target.to_owned(),
            source,
        }
    };
    let check = |found: i32| {
        if found > SCHEMA_VERSION {
            Err(Error::NewerSchema {
                target: target.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            })
        } else {
            Ok(found)
        }
    };
    // The common case, without a lock: already up to date.
    if check(recorded_version(client, schema).map_err(sql("read the schema version"))?)?
        == SCHEMA_VERSION
    {
        return Ok(());
    }
    let mut tx = client.transaction().map_err(sql("start the migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("testfleet schema {schema}")],
    )
    .map_err(sql("lock the schema for migration"))?;
    // Created if missing (nothing is written to a schema that exists), then read with a
    // fresh snapshot: what an opener that held the lock before committed is seen here.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS \"{schema}\".schema_migrations (
             version    integer     NOT NULL PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .map_err(sql("create the schema"))?;
    let found: i32 = tx
        .query_one(
            &format!("SELECT COALESCE(max(version), 0) FROM \"{schema}\".schema_migrations"),
            &[],
        )
        .map_err(sql("read the schema version"))?
        .get(0);
    let found = check(found)?;
    for (migration_idx, (name, migration)) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(migration_idx + 1).expect("a handful of migrations");
        if version <= found {
            continue;
        }
        tx.batch_execute(&migration.replace("{schema}", schema))
            .map_err(sql("apply a migration"))?;
        tx.execute(
            &format!("INSERT INTO \"{schema}\".schema_migrations (version, name) VALUES ($1, $2)"),
            &[&version, name],
        )
        .map_err(sql("record a migration"))?;
        tracing::info!(target_store = target, version, "migrated the run store");
    }
    tx.commit().map_err(sql("commit the migration"))
}
