use super::*;
use chat_shared::ecosystem::Readiness;

fn policy(health: bool) -> Policy {
    Policy {
        autorestart: true,
        restart_delay: Duration::from_millis(100),
        max_restart_delay: Duration::from_millis(1_000),
        stop_exit_codes: vec![0],
        min_uptime: Duration::from_secs(10),
        max_restarts: 3,
        kill_signal: StopSignal::Term,
        kill_timeout: Duration::from_secs(5),
        listen_timeout: Duration::from_secs(10),
        readiness: health.then_some(Readiness::Probe),
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

const PID: Pid = Pid::new(42);
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
            (130, Input::Tick, Phase::Waiting, &[Effect::Spawn]),
            (131, Input::Spawned { pid: PID }, Phase::Starting, &[]),
        ],
    );
    assert_eq!((inst.restarts, inst.unstable), (1, 1));
    let note = inst.note.as_deref().unwrap_or_default();
    assert!(note.starts_with("exited unexpectedly (signal 9) after 4 ms; restart in "), "{note}");
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
            (10_050, Input::Exited(ExitKind::Code(1)), Phase::Waiting, &[KILL, Effect::Spawn]),
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
            (3, Input::Exited(ExitKind::Code(143)), Phase::Stopped, &[KILL]),
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

/// Crash after `ran_ms`, wait out the backoff, respawn; returns the backoff seen.
fn crash(inst: &mut Instance, p: &Policy, t: &mut Instant, ran_ms: u64) -> Option<Duration> {
    inst.step(Input::Spawned { pid: PID }, *t, p);
    *t += Duration::from_millis(ran_ms);
    inst.step(Input::Exited(ExitKind::Code(1)), *t, p);
    let State::Waiting { until } = inst.state else { return None };
    let delay = until - *t;
    *t = until;
    assert_eq!(inst.step(Input::Tick, *t, p), vec![Effect::Spawn]);
    Some(delay)
}

#[test]
fn unstable_starts_back_off_exponentially_with_jitter_then_error() {
    let p = Policy { max_restarts: 4, ..policy(false) };
    let mut t = Instant::now();
    let mut inst = Instance::new();
    inst.step(Input::Start, t, &p);
    let delays: Vec<Duration> = (0..3).map(|_| crash(&mut inst, &p, &mut t, 50).expect("restarted")).collect();
    // 100, 200, 400 ms, each within ±25 %.
    for (delay, base) in delays.iter().zip([100u64, 200, 400]) {
        let ms = delay.as_millis() as u64;
        assert!((base * 3 / 4..=base * 5 / 4).contains(&ms), "{ms} ms for base {base}");
    }
    // The fourth unstable start reaches max_restarts (4): errored, no more spawns.
    assert_eq!(crash(&mut inst, &p, &mut t, 50), None);
    assert_eq!(inst.phase(), Phase::Errored);
    assert!(inst.note.as_deref().unwrap_or_default().contains("crash loop: 4 consecutive starts"), "{:?}", inst.note);
    assert_eq!(inst.next_deadline(), None);
    // An operator restart gives a fresh budget.
    assert_eq!(inst.step(Input::Restart, t, &p), vec![Effect::Spawn]);
    assert_eq!(inst.unstable, 0);
}

#[test]
fn a_run_longer_than_min_uptime_resets_the_count_and_the_delay_is_capped() {
    let p = Policy { max_restarts: 100, ..policy(false) };
    let mut t = Instant::now();
    let mut inst = Instance::new();
    inst.step(Input::Start, t, &p);
    for _ in 0..8 {
        crash(&mut inst, &p, &mut t, 10);
    }
    assert_eq!(inst.unstable, 8);
    let capped = crash(&mut inst, &p, &mut t, 10).expect("restarted");
    assert!(capped <= Duration::from_millis(1_250), "capped at max_restart_delay ±25 %: {capped:?}");
    let after_long_run = crash(&mut inst, &p, &mut t, 10_000).expect("restarted");
    assert_eq!((inst.unstable, after_long_run), (0, Duration::from_millis(100)));
}

#[test]
fn a_stop_exit_code_means_done() {
    let p = policy(false);
    let t = Instant::now();
    let mut inst = Instance::new();
    inst.step(Input::Start, t, &p);
    inst.step(Input::Spawned { pid: PID }, t, &p);
    assert_eq!(inst.step(Input::Exited(ExitKind::Code(0)), t, &p), vec![KILL]);
    assert_eq!((inst.phase(), inst.incidents), (Phase::Stopped, 0));
}

#[test]
fn never_ready_counts_as_unstable_and_ends_errored() {
    let p = Policy { max_restarts: 2, ..policy(true) };
    let mut t = Instant::now();
    let mut inst = Instance::new();
    inst.step(Input::Start, t, &p);
    for round in 0..2 {
        inst.step(Input::Spawned { pid: PID }, t, &p);
        t += p.listen_timeout;
        assert_eq!(inst.step(Input::Tick, t, &p), vec![TERM], "round {round}");
        let effects = inst.step(Input::Exited(ExitKind::Signal(15)), t, &p);
        let expected: &[Effect] = if round == 0 { &[KILL, Effect::Spawn] } else { &[KILL] };
        assert_eq!(effects, expected, "round {round}");
    }
    assert_eq!(inst.phase(), Phase::Errored);
}

#[test]
fn notify_readiness_waits_for_ready_1_and_probes_only_after() {
    let t0 = Instant::now();
    let p = Policy { readiness: Some(Readiness::Notify), ..policy(true) };
    let mut inst = Instance::new();
    inst.step(Input::Start, t0, &p);
    inst.step(Input::Spawned { pid: PID }, t0, &p);
    assert_eq!(inst.step(Input::Tick, ms(t0, 100), &p), vec![], "no probe before READY=1");
    assert_eq!(inst.step(Input::ProbePassed, ms(t0, 100), &p), vec![], "a probe result does not make it ready");
    assert_eq!(inst.phase(), Phase::Starting);
    inst.step(Input::Ready, ms(t0, 200), &p);
    assert_eq!(inst.phase(), Phase::Online);
    assert_eq!(inst.next_deadline(), Some(ms(t0, 30_200)), "liveness probes start one interval later");
}

#[test]
fn a_program_that_binds_the_port_chatctl_holds_is_errored_at_once_and_a_stop_is_still_a_stop() {
    let bound = || Input::Misconfigured { kind: ExitKind::Code(1), why: "address in use: take fd 3".into() };
    let inst = run(
        true,
        &[
            (0, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (1, Input::Spawned { pid: PID }, Phase::Starting, &[]),
            (300, bound(), Phase::Errored, &[KILL]),
            (400, Input::Tick, Phase::Errored, &[]),
        ],
    );
    assert_eq!(inst.note.as_deref(), Some("exited (exit 1): address in use: take fd 3"));
    // Once it has served, a crash is a crash: restarted as usual.
    run(
        true,
        &[
            (0, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (1, Input::Spawned { pid: PID }, Phase::Starting, &[]),
            (2, Input::ProbePassed, Phase::Online, &[]),
            (20_000, bound(), Phase::Waiting, &[KILL]),
        ],
    );
    run(
        true,
        &[
            (0, Input::Start, Phase::Waiting, &[Effect::Spawn]),
            (1, Input::Spawned { pid: PID }, Phase::Starting, &[]),
            (2, Input::Stop, Phase::Stopping, &[TERM]),
            (3, bound(), Phase::Stopped, &[KILL]),
        ],
    );
}
