//! Finding the run a user named (`docs/contract.md#commands`, run ids): a whole id, a unique
//! prefix of one, or the newest run. It works through [`RunStore`] alone, so it works the same
//! for every store.

use crate::ids::{MachineName, RunIdPrefix, RunRef};
use crate::ports::{RunFilter, RunStore, StoreError};
use crate::run::Run;

/// Why no single run answers to what was typed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// No run has this id, or an id starting with this prefix. Code `RUN_NOT_FOUND`.
    #[error("run {typed} not found")]
    NotFound {
        /// What was typed, upper-cased.
        typed: String,
    },
    /// Several runs have ids starting with the prefix: the newest
    /// [`MAX_CANDIDATES`] of them are listed, and `more` says whether there are others.
    #[error(
        "the run id prefix {prefix} is ambiguous: it starts the ids of {}{} runs",
        candidates.len(),
        if *more { " or more" } else { "" }
    )]
    Ambiguous {
        /// The prefix.
        prefix: RunIdPrefix,
        /// The runs it matches, newest first.
        candidates: Vec<Run>,
        /// Whether it matches more runs than are listed.
        more: bool,
    },
    /// `last` and there is no run at all (on the machine, when one was given). Code
    /// `RUN_NOT_FOUND`.
    #[error("there is no run{} yet", machine.as_ref().map(|m| format!(" on {m}")).unwrap_or_default())]
    NoRuns {
        /// The machine `last` was restricted to.
        machine: Option<MachineName>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many runs an ambiguous prefix lists at most.
pub const MAX_CANDIDATES: usize = 10;

/// The run `reference` names: the run with that id; the one run whose id starts with that
/// prefix; or the newest run, of `machine` when given (`machine` restricts `last` only).
///
/// # Errors
/// [`LookupError::NotFound`], [`LookupError::Ambiguous`], [`LookupError::NoRuns`],
/// [`LookupError::Store`].
pub async fn find_run(
    store: &dyn RunStore,
    reference: &RunRef,
    machine: Option<&MachineName>,
) -> Result<Run, LookupError> {
    match reference {
        RunRef::Id(id) => match store.get(id).await {
            Ok(run) => Ok(run),
            Err(StoreError::NotFound(_)) => Err(LookupError::NotFound {
                typed: id.to_string(),
            }),
            Err(error) => Err(error.into()),
        },
        RunRef::Prefix(prefix) => {
            let mut runs = store.find_by_id_prefix(prefix, MAX_CANDIDATES + 1).await?;
            match runs.len() {
                0 => Err(LookupError::NotFound {
                    typed: prefix.to_string(),
                }),
                1 => Ok(runs.remove(0)),
                n => {
                    runs.truncate(MAX_CANDIDATES);
                    Err(LookupError::Ambiguous {
                        prefix: prefix.clone(),
                        candidates: runs,
                        more: n > MAX_CANDIDATES,
                    })
                }
            }
        }
        RunRef::Last => {
            let runs = store
                .list(&RunFilter {
                    machine: machine.cloned(),
                    limit: Some(1),
                    ..RunFilter::default()
                })
                .await?;
            runs.into_iter().next().ok_or_else(|| LookupError::NoRuns {
                machine: machine.cloned(),
            })
        }
    }
}
