//! A bounded HTTP load on 127.0.0.1: `GET /health` on a new connection each time, counting
//! answers, refused connections and other failures.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Requests per thread at most: the load stops by itself.
const MAX_REQUESTS: u64 = 200_000;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

pub(crate) struct Load {
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(addr: SocketAddr, threads: usize) -> Load {
        let counts = Arc::new(Counts::default());
        let threads = (0..threads)
            .map(|_| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    for _ in 0..MAX_REQUESTS {
                        if counts.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let counter = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => &counts.refused,
                            Err(_) => &counts.failed,
                            Ok(stream) => {
                                if request(stream) {
                                    &counts.ok
                                } else {
                                    &counts.failed
                                }
                            }
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load { counts, threads }
    }

    /// Waits until `more` further requests have been answered.
    #[track_caller]
    pub(crate) fn wait_for(&self, more: u64) {
        let target = self.counts.ok.load(Ordering::Relaxed) + more;
        crate::support::wait_until(&format!("{more} more answered requests"), Duration::from_secs(30), || {
            (self.counts.ok.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Stops the load; returns (answered, refused, failed).
    pub(crate) fn stop(self) -> (u64, u64, u64) {
        self.counts.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        let c = &self.counts;
        (c.ok.load(Ordering::Relaxed), c.refused.load(Ordering::Relaxed), c.failed.load(Ordering::Relaxed))
    }
}

fn request(mut stream: TcpStream) -> bool {
    use std::io::{Read, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).is_ok() && response.starts_with(b"HTTP/1.1 200")
}
