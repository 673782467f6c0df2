//! Temporary file sharing over HTTP on a 2-instance cluster: upload with a guest's token, download
//! from any instance (the host's data directory is shared), types from the bytes, ranges, every
//! limit's status, nothing half-written left behind, expiry; and the same across hosts sharing a
//! Redis, where the bytes are kept.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::{Env, Worker, chat_app, free_port, node, wait_until};

/// One HTTP/1.1 request with `Connection: close`: status, head, body.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("head");
    // The server may answer (413) and close before all of a large body is written.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), answer[split + 4..].to_vec())
}

fn token(port: u16, name: &str) -> String {
    let out = node("token.mjs", &[&format!("http://127.0.0.1:{port}"), name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn upload(addr: SocketAddr, token: &str, name: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let bearer = format!("Bearer {token}");
    let (status, _, body) =
        http(addr, "POST", "/api/files", &[("Authorization", &bearer), ("X-File-Name", name)], body);
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[test]
fn files_upload_download_limits_and_expiry() {
    let env = Env::new();
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let limits = "env = { FILE_MAX_SIZE = \"1M\", FILE_QUOTA = \"2M\", FILE_STORE_MAX = \"3M\", FILE_RETENTION = \"3s\", FILE_UPLOAD_RATE = \"off\" }";
    env.write("ecosystem.toml", &chat_app(port, "cluster", 2, limits));
    env.ok(&["start"]);
    env.online_pids("chat", 2);
    let (ann, bob) = (token(port, "ann"), token(port, "bob"));

    // A PNG by its bytes, whatever it is called; downloaded whole and by range, shown inline.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend((0..100_000u32).map(|i| (i * 7 % 251) as u8));
    let (status, file) = upload(addr, &ann, "holiday.txt", &png);
    assert_eq!(status, 200, "{file}");
    assert_eq!((file["type"].as_str(), file["size"].as_u64()), (Some("image/png"), Some(png.len() as u64)), "{file}");
    let url = file["url"].as_str().expect("url").to_owned();
    for _ in 0..4 {
        // Any instance serves it (the connections land on both).
        let (status, head, body) = http(addr, "GET", &url, &[], b"");
        assert_eq!(status, 200);
        assert!(body == png, "the same bytes");
        assert!(head.contains("content-type: image/png") && head.contains("content-disposition: inline"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff") && head.contains("sandbox"), "{head}");
    }
    let (status, head, body) = http(addr, "GET", &url, &[("Range", "bytes=10-19")], b"");
    assert_eq!((status, body.as_slice()), (206, &png[10..20]), "{head}");

    // Script is never served inline.
    let (status, file) = upload(addr, &ann, "page.html", b"<html><script>alert(1)</script></html>");
    assert_eq!(status, 200, "{file}");
    let (_, head, _) = http(addr, "GET", file["url"].as_str().expect("url"), &[], b"");
    assert!(head.contains("content-disposition: attachment"), "{head}");

    // SVG can carry script: never inline, whatever its name says.
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>";
    let (status, file) = upload(addr, &ann, "logo.png", svg);
    assert_eq!(status, 200, "{file}");
    assert_ne!(file["type"], "image/png", "the type is the bytes', not the name's: {file}");
    let (_, head, _) = http(addr, "GET", file["url"].as_str().expect("url"), &[], b"");
    assert!(head.contains("content-disposition: attachment"), "{head}");

    // An upload cut half-way (the client goes away) leaves nothing behind.
    {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let bearer = format!("Bearer {ann}");
        write!(
            stream,
            "POST /api/files HTTP/1.1\r\nHost: t\r\nAuthorization: {bearer}\r\nContent-Length: 500000\r\n\r\n"
        )
        .expect("head");
        stream.write_all(&[7u8; 100_000]).expect("half a body");
    }

    // Limits: no token 401, too large 413 (nothing half-written left), quota 429, store 507.
    assert_eq!(upload(addr, "nope", "x", b"x").0, 401);
    assert_eq!(upload(addr, &ann, "big.bin", &vec![1u8; 1_200_000]).0, 413);
    let dir = env.home().join("data/chat/files");
    let leftovers = || {
        std::fs::read_dir(&dir)
            .expect("data dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
            .count()
    };
    wait_until("aborted uploads cleaned up", Duration::from_secs(10), || (leftovers() == 0).then_some(()));
    // ann has 0.1 MB; 1 MB more fits her 2 MiB, another does not.
    let mb = vec![2u8; 1_000_000];
    assert_eq!(upload(addr, &ann, "a.bin", &mb).0, 200);
    assert_eq!(upload(addr, &ann, "b.bin", &mb).0, 429, "ann's quota of 2M");
    // The store holds 1.1 MB; bob's 1.04 MB fits, a second would pass the store's 3 MiB.
    let most = vec![3u8; 1_040_000];
    assert_eq!(upload(addr, &bob, "c.bin", &most).0, 200);
    assert_eq!(upload(addr, &bob, "d.bin", &most).0, 507, "the store's 3M");

    // Expiry: gone from the answer and from the disk.
    assert_eq!(http(addr, "GET", "/api/files/unknown", &[], b"").0, 404);
    wait_until("the files expired", Duration::from_secs(15), || {
        let status = http(addr, "GET", &url, &[], b"").0;
        matches!(status, 404 | 410).then_some(())
    });
    wait_until("the store swept", Duration::from_secs(15), || {
        (std::fs::read_dir(&dir).expect("data dir").count() == 0).then_some(())
    });
}

/// Two hosts (a worker each, with directories and secrets of their own) sharing one Redis: a file
/// uploaded on one is served by the other, whole and by ranges across its chunks; the quota and
/// the store's cap count every host's files; an upload cut half-way leaves no chunk in Redis; an
/// expired file answers 410 on both and its keys and index entries go.
#[test]
fn files_are_shared_across_hosts_through_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let host = |dir: &tempfile::TempDir, secret: &str| {
        let dir = dir.path().to_string_lossy().into_owned();
        Worker::start(&[
            ("REDIS_URL", url.as_str()),
            ("FILE_DIR", dir.as_str()),
            ("CHAT_SESSION_SECRET", secret),
            ("FILE_MAX_SIZE", "1M"),
            ("FILE_QUOTA", "2M"),
            ("FILE_STORE_MAX", "3M"),
            ("FILE_RETENTION", "10s"),
            ("FILE_UPLOAD_RATE", "off"),
        ])
    };
    let (a, b) = (host(&dir_a, "secret of host a"), host(&dir_b, "secret of host b"));
    let (ann, bob) = (token(a.addr.port(), "ann"), token(b.addr.port(), "bob"));

    // 600 kB: three chunks in Redis.
    let bytes: Vec<u8> = (0..600_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let (status, file) = upload(a.addr, &ann, "notes.bin", &bytes);
    assert_eq!(status, 200, "{file}");
    let url = file["url"].as_str().expect("url").to_owned();
    let (status, head, body) = http(b.addr, "GET", &url, &[], b"");
    assert_eq!(status, 200, "{head}");
    assert!(body == bytes, "host b serves host a's bytes ({} of {})", body.len(), bytes.len());
    for (range, first, last) in [("bytes=262000-262200", 262_000, 262_200), ("bytes=-70000", 530_000, 599_999)] {
        let (status, head, body) = http(b.addr, "GET", &url, &[("Range", range)], b"");
        assert_eq!((status, body.as_slice()), (206, &bytes[first..=last]), "{range}: {head}");
    }
    assert!(std::fs::read_dir(dir_a.path()).map_or(true, |d| d.count() == 0), "nothing on host a's disk");
    // An empty file: no chunk at all, still served.
    let (status, empty) = upload(b.addr, &bob, "empty.txt", b"");
    assert_eq!(status, 200, "{empty}");
    let (status, _, body) = http(a.addr, "GET", empty["url"].as_str().expect("url"), &[], b"");
    assert_eq!((status, body.len()), (200, 0));

    // The quota and the cap count both hosts: ann has 0.6 MB (on a), 1 MB more fits her 2 MiB on
    // b, then nothing more on either host.
    let mb = vec![5u8; 1_000_000];
    assert_eq!(upload(b.addr, &ann, "a.bin", &mb).0, 200, "ann's second file, on b");
    assert_eq!(upload(a.addr, &ann, "b.bin", &mb).0, 429, "ann's quota, counted over both hosts");
    assert_eq!(upload(a.addr, &bob, "c.bin", &mb).0, 200, "bob's first, on a: 2.6 MB stored");
    assert_eq!(upload(b.addr, &bob, "d.bin", &mb).0, 507, "the store's 3M, counted over both hosts");

    // An upload cut half-way (within every limit: it is taken, then cut) leaves no chunk behind.
    let chunk_keys = || {
        let keys = redis.command(&["KEYS", "chat:chat:file:*:*"]);
        keys.lines().filter(|l| l.starts_with("chat:")).count()
    };
    let stored = chunk_keys();
    assert_eq!(stored, 3 + 4 + 4, "the three files' chunks");
    {
        let mut stream = TcpStream::connect(b.addr).expect("connect");
        write!(
            stream,
            "POST /api/files HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {bob}\r\nContent-Length: 400000\r\n\r\n"
        )
        .expect("head");
        stream.write_all(&[7u8; 300_000]).expect("most of a body");
        wait_until("the upload's first chunk in Redis", Duration::from_secs(10), || {
            (chunk_keys() == stored + 1).then_some(())
        });
    }
    wait_until("the cut upload's chunks deleted", Duration::from_secs(10), || (chunk_keys() == stored).then_some(()));

    // Expiry: 410 (then 404 once swept) on both hosts, every key gone, the index back to zero.
    wait_until("the files expired", Duration::from_secs(25), || {
        matches!(http(a.addr, "GET", &url, &[], b"").0, 404 | 410).then_some(())
    });
    assert!(matches!(http(b.addr, "GET", &url, &[], b"").0, 404 | 410));
    let mut last = String::new();
    let swept = (0..100).any(|_| {
        let left = redis.command(&["KEYS", "*file*"]);
        let usage = redis.command(&["HGET", "{chat:chat:files}:usage", "*"]);
        last = format!("keys {left:?}, usage {usage:?}");
        let done = !left.lines().any(|l| l.starts_with("chat:") || l.starts_with("{chat:chat:files}:expiry"))
            && (usage.starts_with(":0") || usage.starts_with("$1\r\n0") || usage.starts_with("$-1"));
        done || {
            std::thread::sleep(Duration::from_millis(200));
            false
        }
    });
    assert!(swept, "every file key expired and the index swept: {last}");
}

/// Two uploads under way at once that each fit a guest's quota but not together: one is refused
/// (429) when it is counted, atomically in Redis, although both passed the check made before their
/// bodies.
#[test]
fn two_uploads_at_once_cannot_pass_the_quota_together_through_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let worker = Worker::start(&[("REDIS_URL", url.as_str()), ("FILE_QUOTA", "1M"), ("FILE_UPLOAD_RATE", "off")]);
    let ann = token(worker.addr.port(), "ann");
    let body = vec![9u8; 700_000];
    // Both heads and half of both bodies first: both are past the early check.
    let mut streams: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(worker.addr).expect("connect");
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            write!(
                stream,
                "POST /api/files HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {ann}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .expect("head");
            stream.write_all(&body[..350_000]).expect("half a body");
            stream
        })
        .collect();
    let mut statuses: Vec<u16> = streams
        .iter_mut()
        .map(|stream| {
            stream.write_all(&body[350_000..]).expect("the rest");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            let head = String::from_utf8_lossy(&answer);
            head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
        })
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429], "one file fits ann's 1 MiB, not two");
}
