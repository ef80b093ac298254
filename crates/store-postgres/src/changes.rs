//! The store's change feed: one connection per store `LISTEN`s on `testfleet_queue`, where a
//! trigger tells every new run and every status change (migration 2), and counts what it hears
//! in a [`watch`] channel. A waiter takes the count before it looks at the queue and waits for it
//! to move ([`RunStore::wait_for_change`](testfleet_core::ports::RunStore::wait_for_change)), so
//! that a freed machine is granted without waiting for a poll.
//!
//! The listener is a thread of its own, started by the first waiter; it reconnects after a lost
//! connection (and counts that as a change, since it may have missed one) and ends within a
//! quarter of a second once the store is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;
use tokio::sync::watch;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long the listener waits for a notification before it looks at its stop flag.
const LISTEN_SLICE: Duration = Duration::from_millis(250);

/// The channel the trigger notifies (the payload is the schema).
const CHANNEL: &str = "testfleet_queue";

pub(crate) struct Changes {
    /// The count of changes heard so far.
    pub(crate) sender: Arc<watch::Sender<u64>>,
    started: Once,
    stop: Arc<AtomicBool>,
    config: postgres::Config,
    tls: MakeRustlsConnect,
    schema: String,
}

impl Changes {
    pub(crate) fn new(config: postgres::Config, tls: MakeRustlsConnect, schema: &str) -> Self {
        Self {
            sender: Arc::new(watch::Sender::new(0)),
            started: Once::new(),
            stop: Arc::new(AtomicBool::new(false)),
            config,
            tls,
            schema: schema.to_owned(),
        }
    }

    /// Starts the listener unless it runs already.
    pub(crate) fn listen(&self) {
        self.started.call_once(|| {
            let (config, tls, schema) =
                (self.config.clone(), self.tls.clone(), self.schema.clone());
            let (sender, stop) = (Arc::clone(&self.sender), Arc::clone(&self.stop));
            let spawned = thread::Builder::new()
                .name("testfleet-pg-listen".to_owned())
                .spawn(move || listen_loop(&config, &tls, &schema, &sender, &stop));
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start the store's listener; waiters poll");
            }
        });
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn listen_loop(
    config: &postgres::Config,
    tls: &MakeRustlsConnect,
    schema: &str,
    sender: &watch::Sender<u64>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut client = match config.connect(tls.clone()) {
            Ok(client) => client,
            Err(error) => {
                tracing::debug!(%error, "the store's listener cannot connect; trying again");
                thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(error) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::debug!(%error, "the store's listener cannot LISTEN; trying again");
            thread::sleep(Duration::from_secs(1));
            continue;
        }
        // Changes may have come while nobody listened.
        sender.send_modify(|count| *count += 1);
        while !stop.load(Ordering::SeqCst) {
            let mut notifications = client.notifications();
            match notifications.timeout_iter(LISTEN_SLICE).next() {
                Ok(Some(note)) if note.payload() == schema => {
                    sender.send_modify(|count| *count += 1);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "the store's listener lost its connection");
                    break;
                }
            }
        }
    }
}
