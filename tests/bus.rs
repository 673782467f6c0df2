//! The host bus: a flood of publications does not slow the daemon's supervision down.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_shared::bus::{OP_PUB, OP_SUB, frame, put_str};

use crate::support::{Env, fixture_app, wait_until};

/// One timed `chatctl list --json`.
fn list_once(env: &Env) -> Duration {
    let begun = Instant::now();
    env.ok(&["list", "--json"]);
    begun.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn connect(env: &Env) -> UnixStream {
    UnixStream::connect(env.home().join("bus.sock")).expect("the bus answers")
}

/// `list` answers as fast while two subscribers and two publishers flood the bus as while it is
/// idle: the bus's broker does not share the daemon's thread (with it there, a flood queued every
/// request behind the publications: 2.5x slower, in a debug build). Flooded and idle samples
/// alternate, so that the machine's other load weighs on both alike.
#[test]
fn the_daemon_answers_as_fast_while_the_bus_is_flooded() {
    let _heavy = crate::support::heavy_load();
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_app("idle", &[], ""));
    env.ok(&["start"]);

    let stop = Arc::new(AtomicBool::new(false));
    let publishing = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..2 {
        let mut subscriber = connect(&env);
        let mut body = Vec::new();
        put_str(&mut body, "flood");
        subscriber.write_all(&frame(OP_SUB, &body)).expect("subscribe");
        subscriber.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let (stop, received) = (stop.clone(), received.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = subscriber.read(&mut buf) {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut body = Vec::new();
    put_str(&mut body, "flood");
    body.extend_from_slice(&[b'x'; 200]);
    let publication = frame(OP_PUB, &body);
    let batch: Vec<u8> = publication.iter().copied().cycle().take(publication.len() * 64).collect();
    for _ in 0..2 {
        let mut publisher = connect(&env);
        publisher.set_write_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let (stop, publishing, batch) = (stop.clone(), publishing.clone(), batch.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if publishing.load(Ordering::Relaxed) {
                    let _ = publisher.write_all(&batch);
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }));
    }
    // The subscriptions are in once a publication comes back.
    publishing.store(true, Ordering::Relaxed);
    wait_until("the flood flowing", Duration::from_secs(5), || (received.load(Ordering::Relaxed) > 0).then_some(()));
    publishing.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    let (mut idle, mut flooded) = (Vec::new(), Vec::new());
    let (mut flooding, mut delivered) = (Duration::ZERO, 0);
    for _ in 0..11 {
        publishing.store(true, Ordering::Relaxed);
        let (begun, before) = (Instant::now(), received.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(50));
        flooded.push(list_once(&env));
        publishing.store(false, Ordering::Relaxed);
        flooding += begun.elapsed();
        delivered += (received.load(Ordering::Relaxed) - before) / publication.len() as u64;
        // The broker's backlog drains before the idle sample.
        std::thread::sleep(Duration::from_millis(200));
        idle.push(list_once(&env));
    }
    let rate = delivered as f64 / flooding.as_secs_f64();
    let (idle, flooded) = (median(idle), median(flooded));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("flood thread");
    }
    eprintln!("list: {idle:?} idle, {flooded:?} while the bus delivered {rate:.0} publications/s");
    assert!(rate > 1000.0, "the flood flowed ({rate:.0}/s)");
    assert!(flooded < idle * 3 + Duration::from_millis(50), "list took {flooded:?} during the flood, {idle:?} idle");
}

/// The broker's process is started again when it dies, on the same path: a publication reaches
/// a subscriber of the new one.
#[test]
fn a_dead_bus_is_started_again() {
    let env = Env::new();
    env.write("ecosystem.toml", &fixture_app("idle", &[], ""));
    env.ok(&["start"]);
    let bus_pids = || -> Vec<u32> {
        let log = env.daemon_log();
        log.lines()
            .filter(|l| l.contains("bus started"))
            .filter_map(|l| l.rsplit("pid=").next()?.trim().parse().ok())
            .collect()
    };
    let first = crate::support::wait_until("the bus", Duration::from_secs(5), || bus_pids().first().copied());
    env.remember(first);
    crate::support::sigkill(first);
    let second = crate::support::wait_until("another bus", Duration::from_secs(5), || bus_pids().get(1).copied());
    env.remember(second);
    assert_ne!(first, second);
    let mut subscriber = connect(&env);
    let mut body = Vec::new();
    put_str(&mut body, "room");
    subscriber.write_all(&frame(OP_SUB, &body)).expect("subscribe");
    // The subscription and the publication travel two connections: publish until one arrives.
    subscriber.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let mut publisher = connect(&env);
    body.extend_from_slice(b"hello");
    let got = crate::support::wait_until("the publication", Duration::from_secs(5), || {
        publisher.write_all(&frame(OP_PUB, &body)).ok()?;
        let mut buf = [0u8; 64];
        let n = subscriber.read(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    });
    assert!(got.ends_with(b"hello"), "{got:?}");
}
