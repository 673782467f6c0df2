use std::time::Duration;

use super::*;

const NAME: &str = "chat";

fn slot(phase: Phase, pid: Option<u32>) -> SlotView {
    SlotView { phase, pid: pid.map(Pid::new), note: None, successor: None, retiring: false }
}

fn online(pid: u32) -> SlotView {
    slot(Phase::Online, Some(pid))
}

fn with_successor(mut slot: SlotView, pid: u32, phase: Phase) -> SlotView {
    slot.successor = Some((Some(Pid::new(pid)), phase));
    slot
}

fn seen(slots: Vec<SlotView>) -> Seen {
    Seen { slots, outcomes: Vec::new(), can_surge: true }
}

/// `outcomes` as (slot, the successor's pid, or why it failed).
fn finished(slots: Vec<SlotView>, outcomes: Vec<(usize, Result<u32, String>)>) -> Seen {
    let outcomes = outcomes.into_iter().map(|(index, result)| (index, result.map(|pid| Some(Pid::new(pid))))).collect();
    Seen { slots, outcomes, can_surge: true }
}

fn in_place(slots: Vec<SlotView>) -> Seen {
    Seen { slots, outcomes: Vec::new(), can_surge: false }
}

fn report(
    index: usize,
    step: ReloadPhase,
    old_pid: Option<u32>,
    new_pid: Option<u32>,
    ready_ms: Option<u64>,
    message: Option<&str>,
) -> Action {
    let (old_pid, new_pid) = (old_pid.map(Pid::new), new_pid.map(Pid::new));
    Action::Report(Report { index, step, old_pid, new_pid, ready_ms, message: message.map(str::to_owned) })
}

fn starting(index: usize, old_pid: u32) -> Action {
    report(index, ReloadPhase::Starting, Some(old_pid), None, None, None)
}

fn finish(replaced: usize, added: usize, removed: usize, duration_ms: u64) -> Action {
    Action::Finish(ReloadSummary { app: NAME.into(), replaced, added, removed, duration_ms })
}

/// A reload's shape: (old count, target count, replace, only this instance, batch).
type Shape = (usize, usize, bool, Option<usize>, usize);

/// Steps a plan of `shape` through `(at_ms, what the app shows, expected actions)` rows.
fn run((old, target, replace, only, batch): Shape, rows: Vec<(u64, Seen, Vec<Action>)>) {
    let t0 = Instant::now();
    let mut plan = Plan::new(NAME.into(), old, target, replace, only, batch, t0);
    for (i, (at, seen, want)) in rows.into_iter().enumerate() {
        let got = plan.step(&seen, t0 + Duration::from_millis(at));
        assert_eq!(got, want, "row {i} at {at} ms: {seen:?}");
    }
}

#[test]
fn a_rolling_reload_replaces_one_instance_at_a_time_each_ready_before_the_next() {
    run(
        (2, 2, true, None, 1),
        vec![
            (0, seen(vec![online(10), online(11)]), vec![starting(0, 10), Action::Replace { index: 0 }]),
            (5, seen(vec![with_successor(online(10), 20, Phase::Starting), online(11)]), vec![]),
            (
                30,
                seen(vec![with_successor(online(10), 20, Phase::Online), online(11)]),
                vec![report(0, ReloadPhase::Ready, Some(10), Some(20), Some(30), Some("old process draining"))],
            ),
            (
                40,
                finished(vec![online(20), online(11)], vec![(0, Ok(20))]),
                vec![
                    report(0, ReloadPhase::Done, Some(10), Some(20), Some(30), None),
                    starting(1, 11),
                    Action::Replace { index: 1 },
                ],
            ),
            (
                50,
                seen(vec![online(20), with_successor(online(11), 21, Phase::Online)]),
                vec![report(1, ReloadPhase::Ready, Some(11), Some(21), Some(10), Some("old process draining"))],
            ),
            (
                60,
                finished(vec![online(20), online(21)], vec![(1, Ok(21))]),
                vec![report(1, ReloadPhase::Done, Some(11), Some(21), Some(10), None), finish(2, 0, 0, 60)],
            ),
        ],
    );
}

#[test]
fn a_batch_starts_that_many_replacements_at_once() {
    run(
        (3, 3, true, None, 2),
        vec![
            (
                0,
                seen(vec![online(10), online(11), online(12)]),
                vec![starting(0, 10), Action::Replace { index: 0 }, starting(1, 11), Action::Replace { index: 1 }],
            ),
            (
                9,
                finished(vec![online(20), online(11), online(12)], vec![(0, Ok(20))]),
                vec![
                    report(0, ReloadPhase::Done, Some(10), Some(20), None, None),
                    starting(2, 12),
                    Action::Replace { index: 2 },
                ],
            ),
        ],
    );
}

#[test]
fn a_failed_successor_stops_the_reload_and_the_others_keep_serving() {
    run(
        (3, 3, true, None, 1),
        vec![
            (0, seen(vec![online(10), online(11), online(12)]), vec![starting(0, 10), Action::Replace { index: 0 }]),
            (3, seen(vec![with_successor(online(10), 20, Phase::Starting), online(11), online(12)]), vec![]),
            (
                8,
                finished(vec![online(10), online(11), online(12)], vec![(0, Err("exit 1".into()))]),
                vec![
                    report(0, ReloadPhase::Failed, Some(10), Some(20), None, Some("exit 1")),
                    Action::Fail { why: "instance 0 of chat: the new process failed: exit 1".into(), replaced: 0 },
                ],
            ),
        ],
    );
}

#[test]
fn without_a_surge_each_instance_is_restarted_in_place() {
    run(
        (2, 2, true, None, 1),
        vec![
            (
                0,
                in_place(vec![online(10), online(11)]),
                vec![starting(0, 10), Action::InPlace { index: 0, restart: true }],
            ),
            (4, in_place(vec![slot(Phase::Starting, Some(30)), online(11)]), vec![]),
            // Still the old pid: not the restarted process yet.
            (5, in_place(vec![online(10), online(11)]), vec![]),
            (
                20,
                in_place(vec![online(30), online(11)]),
                vec![
                    report(0, ReloadPhase::Done, Some(10), Some(30), Some(20), Some("restarted in place")),
                    starting(1, 11),
                    Action::InPlace { index: 1, restart: true },
                ],
            ),
            (
                45,
                in_place(vec![online(30), online(31)]),
                vec![
                    report(1, ReloadPhase::Done, Some(11), Some(31), Some(25), Some("restarted in place")),
                    finish(2, 0, 0, 45),
                ],
            ),
        ],
    );
}

#[test]
fn an_in_place_restart_that_errors_fails_the_reload_with_its_note() {
    let mut errored = slot(Phase::Errored, None);
    errored.note = Some("crashed 3 times".into());
    run(
        (2, 2, true, None, 1),
        vec![
            (
                0,
                in_place(vec![online(10), online(11)]),
                vec![starting(0, 10), Action::InPlace { index: 0, restart: true }],
            ),
            (
                7,
                in_place(vec![errored, online(11)]),
                vec![
                    report(0, ReloadPhase::Failed, Some(10), None, None, Some("crashed 3 times")),
                    Action::Fail { why: "instance 0 of chat: crashed 3 times".into(), replaced: 0 },
                ],
            ),
        ],
    );
}

#[test]
fn an_instance_with_no_process_is_started_not_replaced() {
    let stopped = slot(Phase::Stopped, None);
    run(
        (1, 1, true, None, 1),
        vec![(
            0,
            seen(vec![stopped]),
            vec![
                report(0, ReloadPhase::Starting, None, None, None, None),
                Action::InPlace { index: 0, restart: false },
            ],
        )],
    );
}

#[test]
fn one_instance_is_replaced_alone() {
    run(
        (3, 3, true, Some(1), 1),
        vec![
            (0, seen(vec![online(10), online(11), online(12)]), vec![starting(1, 11), Action::Replace { index: 1 }]),
            (
                9,
                finished(vec![online(10), online(21), online(12)], vec![(1, Ok(21))]),
                vec![report(1, ReloadPhase::Done, Some(11), Some(21), None, None), finish(1, 0, 0, 9)],
            ),
        ],
    );
}

#[test]
fn a_scale_up_adds_instances_and_finishes() {
    run(
        (1, 3, false, None, 1),
        vec![(0, seen(vec![online(10)]), vec![Action::AddSlot, Action::AddSlot, finish(0, 2, 0, 0)])],
    );
}

#[test]
fn a_scale_down_retires_the_last_instances_and_finishes_once_they_are_gone() {
    let mut retiring = online(12);
    retiring.retiring = true;
    run(
        (3, 1, false, None, 1),
        vec![
            (
                0,
                seen(vec![online(10), online(11), online(12)]),
                vec![
                    report(1, ReloadPhase::Scaled, Some(11), None, None, Some("removed")),
                    Action::Retire { index: 1 },
                    report(2, ReloadPhase::Scaled, Some(12), None, None, Some("removed")),
                    Action::Retire { index: 2 },
                ],
            ),
            (5, seen(vec![online(10), retiring.clone(), retiring]), vec![]),
            (30, seen(vec![online(10)]), vec![finish(0, 0, 2, 30)]),
        ],
    );
}

#[test]
fn a_reload_to_fewer_instances_replaces_those_kept_then_retires_the_rest() {
    run(
        (2, 1, true, None, 1),
        vec![
            (0, seen(vec![online(10), online(11)]), vec![starting(0, 10), Action::Replace { index: 0 }]),
            (
                10,
                finished(vec![online(20), online(11)], vec![(0, Ok(20))]),
                vec![
                    report(0, ReloadPhase::Done, Some(10), Some(20), None, None),
                    report(1, ReloadPhase::Scaled, Some(11), None, None, Some("removed")),
                    Action::Retire { index: 1 },
                ],
            ),
            (20, seen(vec![online(20)]), vec![finish(1, 0, 1, 20)]),
        ],
    );
}
