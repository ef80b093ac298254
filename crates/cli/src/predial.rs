//! Dialing ahead: a foreground run's SSH connections are set up while its test directory is
//! hashed and its machines claimed, so that the runner's `connect` finds them ready. On a real
//! network a login is several round trips; they now overlap work that was sequential.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use testfleet_core::ports::{SshConnector, SshError, SshSession, SshTarget};
use tokio::task::JoinHandle;

type Dialing = JoinHandle<Result<Box<dyn SshSession>, SshError>>;

/// An [`SshConnector`] that hands out connections started by [`Predialer::dial`]; any other
/// target (or a second connect to the same one) is dialed as usual.
pub struct Predialer {
    inner: Arc<dyn SshConnector>,
    pending: Mutex<Vec<(SshTarget, Dialing)>>,
}

impl std::fmt::Debug for Predialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predialer")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Predialer {
    pub fn new(inner: Arc<dyn SshConnector>) -> Self {
        Self {
            inner,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Starts connecting to `target` in the background.
    pub fn dial(&self, target: SshTarget) {
        let inner = Arc::clone(&self.inner);
        let dialed = target.clone();
        let dialing = tokio::spawn(async move { inner.connect(&dialed).await });
        self.lock().push((target, dialing));
    }

    /// Ends the connections that no run took (a reused run, a busy machine, an error before
    /// the claim): a finished one is closed politely, one still dialing is abandoned.
    pub async fn close_unused(&self) {
        let unused = std::mem::take(&mut *self.lock());
        for (_, dialing) in unused {
            if !dialing.is_finished() {
                dialing.abort();
                continue;
            }
            if let Ok(Ok(session)) = dialing.await {
                let _ = tokio::time::timeout(Duration::from_secs(2), session.close()).await;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(SshTarget, Dialing)>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl SshConnector for Predialer {
    async fn connect(&self, target: &SshTarget) -> Result<Box<dyn SshSession>, SshError> {
        let dialing = {
            let mut pending = self.lock();
            pending
                .iter()
                .position(|(dialed, _)| dialed == target)
                .map(|idx| pending.remove(idx).1)
        };
        match dialing {
            Some(dialing) => match dialing.await {
                // A queued run takes its login only once it is granted, maybe hours later: if
                // the connection died meanwhile, dial again rather than fail the run.
                Ok(Ok(session)) if session.is_closed() => {
                    tracing::debug!(host = %target.host, "the pre-dialed login is gone: dialing again");
                    self.inner.connect(target).await
                }
                Ok(connected) => connected,
                // The dialing task panicked or was aborted: dial again, here.
                Err(_) => self.inner.connect(target).await,
            },
            None => self.inner.connect(target).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use testfleet_contract::fake_ssh::{FakeScript, FakeSsh, fake_target as target};

    use super::*;

    #[tokio::test]
    async fn a_predialed_connection_is_handed_out_once_and_the_rest_are_closed() {
        let fake = FakeSsh::with_script(FakeScript::default());
        let predialer = Predialer::new(Arc::new(fake.clone()));
        predialer.dial(target("a"));
        predialer.dial(target("b"));
        // Let both dials finish, as they do while the directory is hashed.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.call_names(), ["connect", "connect"]);

        let session = predialer.connect(&target("a")).await.expect("connects");
        assert_eq!(
            fake.call_names().len(),
            2,
            "the dialed connection was taken"
        );
        let again = predialer.connect(&target("a")).await.expect("connects");
        assert_eq!(fake.call_names().len(), 3, "a second connect dials anew");
        session.close().await.expect("closes");
        again.close().await.expect("closes");

        predialer.close_unused().await;
        let names = fake.call_names();
        assert_eq!(
            names.iter().filter(|name| **name == "close").count(),
            3,
            "b, dialed but never taken, was closed too: {names:?}"
        );
        assert!(predialer.lock().is_empty());
    }
}
