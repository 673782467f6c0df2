use super::*;

fn policy(health: bool) -> Policy {
    Policy {
        autorestart: true,
        restart_delay: Duration::from_millis(100),
        kill_signal: StopSignal::Term,
        kill_timeout: Duration::from_secs(5),
        listen_timeout: Duration::from_secs(10),
        health: health.then_some(HealthPolicy {
            interval: Duration::from_secs(30),
            threshold: 3,
            grace: Duration::from_secs(5),
        }),
    }
}

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

/// Drives an instance through `(at_ms, input, expected phase, expected effects)` rows.
fn run(health: bool, rows: &[(u64, Input, Phase, &[Effect])]) -> Instance {
    let t0 = Instant::now();
    let p = policy(health);
    let mut inst = Instance::new();
    for (i, (at, input, phase, effects)) in rows.iter().enumerate() {
        let got = inst.step(input.clone(), ms(t0, *at), &p);
        assert_eq!((inst.phase(), got.as_slice()), (*phase, *effects), "row {i}: {input:?} at {at} ms");
    }
    inst
}

const PID: u32 = 42;
const TERM: Effect = Effect::Signal { pid: PID, signal: StopSignal::Term };
const KILL: Effect = Effect::KillGroup { pid: PID };
const PROBE: Effect = Effect::Probe { pid: PID };

#[test]
fn start_probe_online_then_stop_cleanly() {
    let inst = run(
        true,
        &[
            (0, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (1, Input::Spawned { pid: PID }, Phase::Starting, &[]),
            (1, Input::Tick, Phase::Starting, &[PROBE]),
            (2, Input::Tick, Phase::Starting, &[]), // one probe in flight at a time
            (3, Input::ProbeFailed("refused".into()), Phase::Starting, &[]),
            (10, Input::Tick, Phase::Starting, &[]), // next readiness probe 20 ms later
            (23, Input::Tick, Phase::Starting, &[PROBE]),
            (24, Input::ProbePassed, Phase::Online, &[]),
            (24, Input::Start, Phase::Online, &[]), // already running: nothing
            (100, Input::Stop, Phase::Stopping, &[TERM]),
            (200, Input::Exited(ExitKind::Code(0)), Phase::Stopped, &[KILL]),
        ],
    );
    assert_eq!((inst.restarts, inst.last_exit), (0, Some(ExitKind::Code(0))));
}

#[test]
fn a_crash_waits_restart_delay_then_respawns() {
    let inst = run(
        true,
        &[
            (0, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (1, Input::Spawned { pid: PID }, Phase::Starting, &[]),
            (5, Input::Exited(ExitKind::Signal(9)), Phase::Waiting, &[KILL]),
            (50, Input::Tick, Phase::Waiting, &[]),
            (105, Input::Tick, Phase::Waiting, &[Effect::Spawn]),
            (106, Input::Spawned { pid: PID }, Phase::Starting, &[]),
        ],
    );
    assert_eq!(inst.restarts, 1);
    assert_eq!(inst.note.as_deref(), Some("exited unexpectedly (signal 9)"));
}

#[test]
fn stop_escalates_to_sigkill_at_kill_timeout() {
    let inst = run(
        false,
        &[
            (0, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (1, Input::Spawned { pid: PID }, Phase::Online, &[]),
            (10, Input::Stop, Phase::Stopping, &[TERM]),
            (4_000, Input::Tick, Phase::Stopping, &[]),
            (5_010, Input::Tick, Phase::Stopping, &[KILL]),
            (5_011, Input::Tick, Phase::Stopping, &[]), // killed once
            (5_020, Input::Exited(ExitKind::Signal(9)), Phase::Stopped, &[KILL]),
        ],
    );
    assert!(inst.note.as_deref().is_some_and(|n| n.contains("kill_timeout")), "{:?}", inst.note);
}

#[test]
fn not_ready_within_listen_timeout_is_restarted() {
    run(
        true,
        &[
            (0, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (0, Input::Spawned { pid: PID }, Phase::Starting, &[]),
            (10_000, Input::Tick, Phase::Stopping, &[TERM]),
            (10_050, Input::Exited(ExitKind::Code(0)), Phase::Waiting, &[KILL, Effect::Spawn]),
        ],
    );
}

#[test]
fn failed_probes_restart_after_threshold_but_not_in_grace() {
    let inst = run(
        true,
        &[
            (0, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (0, Input::Spawned { pid: PID }, Phase::Starting, &[]),
            (0, Input::Tick, Phase::Starting, &[PROBE]),
            (1, Input::ProbePassed, Phase::Online, &[]),
            (2, Input::ProbeFailed("timeout".into()), Phase::Online, &[]), // in grace: not counted
            (30_002, Input::Tick, Phase::Online, &[PROBE]),
            (30_003, Input::ProbeFailed("timeout".into()), Phase::Online, &[]),
            (60_003, Input::Tick, Phase::Online, &[PROBE]),
            (60_004, Input::ProbePassed, Phase::Online, &[]), // a pass resets the count
            (90_004, Input::Tick, Phase::Online, &[PROBE]),
            (90_005, Input::ProbeFailed("timeout".into()), Phase::Online, &[]),
            (120_005, Input::Tick, Phase::Online, &[PROBE]),
            (120_006, Input::ProbeFailed("timeout".into()), Phase::Online, &[]),
            (150_006, Input::Tick, Phase::Online, &[PROBE]),
            (150_007, Input::ProbeFailed("HTTP 500".into()), Phase::Stopping, &[TERM]),
        ],
    );
    assert_eq!(inst.note.as_deref(), Some("3 health checks failed in a row, last: HTTP 500"));
}

#[test]
fn spawn_failure_is_errored_until_asked_again() {
    run(
        false,
        &[
            (0, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (0, Input::SpawnFailed("No such file".into()), Phase::Errored, &[]),
            (1_000, Input::Tick, Phase::Errored, &[]),
            (2_000, Input::Restart, Phase::Waiting, &[Effect::Spawn]),
            (2_000, Input::Spawned { pid: PID }, Phase::Online, &[]),
        ],
    );
}

#[test]
fn restart_and_stop_while_stopping_change_what_follows() {
    run(
        false,
        &[
            (0, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (0, Input::Spawned { pid: PID }, Phase::Online, &[]),
            (1, Input::Restart, Phase::Stopping, &[TERM]),
            (2, Input::Stop, Phase::Stopping, &[]),
            (3, Input::Exited(ExitKind::Code(0)), Phase::Stopped, &[KILL]),
            (4, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (4, Input::Spawned { pid: PID }, Phase::Online, &[]),
            (5, Input::Stop, Phase::Stopping, &[TERM]),
            (6, Input::Start, Phase::Stopping, &[]),
            (7, Input::Exited(ExitKind::Code(0)), Phase::Waiting, &[KILL, Effect::Spawn]),
        ],
    );
}

#[test]
fn no_autorestart_stays_stopped_after_a_crash() {
    let t0 = Instant::now();
    let p = Policy { autorestart: false, ..policy(false) };
    let mut inst = Instance::new();
    inst.step(Input::Start, t0, &p);
    inst.step(Input::Spawned { pid: PID }, t0, &p);
    assert_eq!(inst.step(Input::Exited(ExitKind::Code(1)), t0, &p), vec![KILL]);
    assert_eq!(inst.phase(), Phase::Stopped);
    assert_eq!(inst.next_deadline(), None);
}
