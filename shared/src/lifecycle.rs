//! The run lifecycle (SPEC section 9): which status may follow which, decided here
//! and nowhere else. The database applies a decision with a compare-and-set on the
//! status the decision was made from (`runs::move_run`), so two movers never both win.

use crate::domain::RunStatus;

/// Who asks for a move: the executor reporting progress, or a person's action
/// (`apply`, `discard`, `cancel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mover {
    Executor,
    Person,
}

/// What the lifecycle needs to know of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunState {
    pub status: RunStatus,
    pub plan_only: bool,
    pub auto_apply: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a run cannot move from {from} to {to}")]
    NotAllowed { from: RunStatus, to: RunStatus },
    #[error("plan-only runs cannot be applied")]
    PlanOnly,
    #[error("an executor cannot move a run from planned to confirmed: the run awaits confirmation (POST /runs/{{id}}/actions/apply), as its workspace does not auto-apply")]
    AwaitsConfirmation,
}

/// The statuses TFE allows after `from` (plan-only runs are narrowed in [`check`]).
pub fn successors(from: RunStatus) -> &'static [RunStatus] {
    use RunStatus::*;
    match from {
        Pending => &[PlanQueued, Canceled],
        PlanQueued => &[Planning, Canceled],
        Planning => &[Planned, PlannedAndFinished, Errored],
        Planned => &[Confirmed, Canceled, Discarded],
        Confirmed => &[ApplyQueued],
        ApplyQueued => &[Applying],
        Applying => &[Applied, Errored],
        Applied | PlannedAndFinished | Discarded | Canceled | Errored => &[],
    }
}

/// True once nothing can follow.
pub fn is_final(status: RunStatus) -> bool {
    successors(status).is_empty()
}

/// Whether `mover` may move `run` to `to`.
pub fn check(run: RunState, to: RunStatus, mover: Mover) -> Result<(), Refusal> {
    let applies = matches!(
        to,
        RunStatus::Confirmed | RunStatus::ApplyQueued | RunStatus::Applying | RunStatus::Applied
    );
    let refused = Refusal::NotAllowed {
        from: run.status,
        to,
    };
    if !successors(run.status).contains(&to) {
        return Err(refused);
    }
    if run.plan_only && (applies || to == RunStatus::Planned) {
        // Plan-only runs end at planned_and_finished or errored.
        return Err(if to == RunStatus::Confirmed {
            Refusal::PlanOnly
        } else {
            refused
        });
    }
    if to == RunStatus::Confirmed && mover == Mover::Executor && !run.auto_apply {
        return Err(Refusal::AwaitsConfirmation);
    }
    Ok(())
}

/// The `status-timestamps` key set when a run reaches `status` (TFE's names).
pub fn timestamp_key(status: RunStatus) -> &'static str {
    use RunStatus::*;
    match status {
        Pending => "plan-queueable-at",
        PlanQueued => "plan-queued-at",
        Planning => "planning-at",
        Planned => "planned-at",
        Confirmed => "confirmed-at",
        ApplyQueued => "apply-queued-at",
        Applying => "applying-at",
        Applied => "applied-at",
        PlannedAndFinished => "planned-and-finished-at",
        Discarded => "discarded-at",
        Canceled => "canceled-at",
        Errored => "errored-at",
    }
}

/// The run's `actions` (TFE): what a person may do with it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunActions {
    pub is_cancelable: bool,
    pub is_confirmable: bool,
    pub is_discardable: bool,
    pub is_force_cancelable: bool,
}

pub fn actions(run: RunState) -> RunActions {
    let may = |to| check(run, to, Mover::Person).is_ok();
    RunActions {
        is_cancelable: may(RunStatus::Canceled),
        is_confirmable: may(RunStatus::Confirmed),
        is_discardable: may(RunStatus::Discarded),
        // A run is never forced here: an executor that stops reporting is not killed.
        is_force_cancelable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RunStatus::*;

    /// SPEC section 9, transcribed on its own so the table above is checked against
    /// the text, not against itself.
    fn spec_allows(from: RunStatus, to: RunStatus, plan_only: bool) -> bool {
        let pairs: &[(RunStatus, RunStatus)] = &[
            (Pending, PlanQueued),
            (PlanQueued, Planning),
            (Planning, Planned),
            (Planning, PlannedAndFinished),
            (Planning, Errored),
            (Planned, Confirmed),
            (Confirmed, ApplyQueued),
            (ApplyQueued, Applying),
            (Applying, Applied),
            (Applying, Errored),
            (Pending, Canceled),
            (PlanQueued, Canceled),
            (Planned, Canceled),
            (Planned, Discarded),
        ];
        let plan_only_ends = !matches!(to, Planned | Confirmed | ApplyQueued | Applying | Applied);
        pairs.contains(&(from, to)) && (!plan_only || plan_only_ends)
    }

    fn state(status: RunStatus, plan_only: bool, auto_apply: bool) -> RunState {
        RunState {
            status,
            plan_only,
            auto_apply,
        }
    }

    #[test]
    fn every_pair_is_decided_as_the_spec_says() {
        for &from in RunStatus::ALL {
            for &to in RunStatus::ALL {
                for plan_only in [false, true] {
                    let allowed = check(state(from, plan_only, true), to, Mover::Person).is_ok();
                    assert_eq!(
                        allowed,
                        spec_allows(from, to, plan_only),
                        "{from} -> {to} (plan-only {plan_only})"
                    );
                }
            }
        }
    }

    #[test]
    fn executors_confirm_only_auto_apply_runs() {
        let planned = state(Planned, false, false);
        assert_eq!(
            check(planned, Confirmed, Mover::Executor),
            Err(Refusal::AwaitsConfirmation)
        );
        assert!(check(planned, Confirmed, Mover::Person).is_ok());
        assert!(check(state(Planned, false, true), Confirmed, Mover::Executor).is_ok());
        assert_eq!(
            check(state(Planned, true, false), Confirmed, Mover::Person),
            Err(Refusal::PlanOnly)
        );
    }

    #[test]
    fn refusals_name_both_statuses() {
        let refusal = check(state(Planning, false, false), Applied, Mover::Executor).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "a run cannot move from planning to applied"
        );
    }

    #[test]
    fn actions_follow_the_status() {
        let planned = actions(state(Planned, false, false));
        assert!(planned.is_cancelable && planned.is_confirmable && planned.is_discardable);
        let planning = actions(state(Planning, false, false));
        assert!(!planning.is_cancelable && !planning.is_confirmable && !planning.is_discardable);
        assert!(actions(state(Pending, true, false)).is_cancelable);
    }

    fn any_status() -> impl Strategy<Value = RunStatus> {
        proptest::sample::select(RunStatus::ALL.to_vec())
    }

    proptest! {
        /// Whatever anyone asks, in any order, a run only ever takes steps the spec's
        /// table allows, and a finished run stays finished.
        #[test]
        fn no_sequence_of_requests_leaves_the_table(
            plan_only in any::<bool>(),
            auto_apply in any::<bool>(),
            requests in proptest::collection::vec((any_status(), any::<bool>()), 0..40),
        ) {
            let mut run = state(Pending, plan_only, auto_apply && !plan_only);
            for (to, by_executor) in requests {
                let mover = if by_executor { Mover::Executor } else { Mover::Person };
                let before = run.status;
                if check(run, to, mover).is_ok() {
                    prop_assert!(spec_allows(before, to, plan_only), "{} -> {}", before, to);
                    prop_assert!(!is_final(before));
                    run.status = to;
                }
            }
            if plan_only {
                prop_assert!(!matches!(run.status, Planned | Confirmed | ApplyQueued | Applying | Applied));
            }
        }
    }
}
