//! The lifecycle state machine: every edge of the diagram in `docs/contract.md#lifecycle`, and
//! no way out of a terminal state.

use proptest::prelude::*;
use testfleet_core::run::{LifecycleEvent, RunStatus, transition};

#[test]
fn the_diagram_edges() {
    use LifecycleEvent as E;
    use RunStatus as S;
    let edges = [
        (S::Pending, E::Start, Some(S::Running)),
        (S::Pending, E::Failed, Some(S::Failed)),
        (S::Pending, E::Interrupted, Some(S::Interrupted)),
        (S::Pending, E::ExitedZero, None),
        (S::Pending, E::TimedOut, None),
        (S::Running, E::ExitedZero, Some(S::Completed)),
        (S::Running, E::Failed, Some(S::Failed)),
        (S::Running, E::TimedOut, Some(S::Timeout)),
        (S::Running, E::Interrupted, Some(S::Interrupted)),
        (S::Running, E::Start, None),
    ];
    for (from, event, to) in edges {
        assert_eq!(transition(from, event).ok(), to, "{from} + {event:?}");
    }
    for terminal in [S::Completed, S::Failed, S::Timeout, S::Interrupted] {
        for event in LifecycleEvent::ALL {
            assert!(
                transition(terminal, event).is_err(),
                "{terminal} + {event:?}"
            );
        }
        for to in RunStatus::ALL {
            assert!(!terminal.can_become(to));
        }
    }
    assert!(S::Pending.can_become(S::Running));
    assert!(!S::Pending.can_become(S::Completed));
    assert!(!S::Running.can_become(S::Pending));
}

fn event() -> impl Strategy<Value = LifecycleEvent> {
    prop::sample::select(LifecycleEvent::ALL.to_vec())
}

proptest! {
    #[test]
    fn no_sequence_leaves_a_terminal_state(events in prop::collection::vec(event(), 0..24)) {
        let mut status = RunStatus::Pending;
        let mut terminal_at = None;
        for (idx, event) in events.into_iter().enumerate() {
            match transition(status, event) {
                Ok(next) => {
                    prop_assert!(terminal_at.is_none(), "left terminal {status} at step {idx}");
                    prop_assert!(RunStatus::ALL.contains(&next));
                    prop_assert!(next != RunStatus::Pending, "nothing returns to pending");
                    status = next;
                    if status.is_terminal() {
                        terminal_at = Some(idx);
                    }
                }
                Err(error) => {
                    prop_assert_eq!(error.status, status);
                }
            }
        }
    }
}
