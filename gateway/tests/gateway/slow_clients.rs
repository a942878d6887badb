//! Clients that stall cannot hold the gateway's connections: a connection that sends nothing,
//! half a request head, or nothing more after an answer is closed after the client timeout,
//! a put whose body stops halfway is answered `408 body_timeout`, stores nothing, and closes
//! its connection, and a client that stops reading its answers is disconnected. Raw TCP, since no HTTP client sends half a request on purpose.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Cluster;

/// The client timeout of these tests.
const TIMEOUT: Duration = Duration::from_secs(1);

async fn cluster() -> Cluster {
    Cluster::start_with(&["s1"], |c| c.client_timeout_secs = TIMEOUT.as_secs()).await
}

async fn connect(cluster: &Cluster) -> TcpStream {
    let addr = cluster.gateway.url.trim_start_matches("http://");
    TcpStream::connect(addr).await.unwrap()
}

/// Reads until the gateway closes the connection; returns what it sent and when it closed.
/// Fails if it is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "still open after {within:?}; got {:?}",
        String::from_utf8_lossy(&got)
    );
    // A reset counts as closed too.
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_half_sent_head_and_an_idle_keep_alive_are_closed() {
    let cluster = cluster().await;
    // Sends nothing at all.
    let mut silent = connect(&cluster).await;
    // Half a request head.
    let mut half = connect(&cluster).await;
    half.write_all(b"GET /get/k HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A complete request, answered, then nothing more on the kept-alive connection.
    let mut idle = connect(&cluster).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    let within = TIMEOUT * 5;
    let (nothing, _) = read_until_closed(&mut silent, within).await;
    assert_eq!(nothing, "");
    let (nothing, _) = read_until_closed(&mut half, within).await;
    assert!(!nothing.contains("200 OK"), "{nothing}");
    let (answered, _) = read_until_closed(&mut idle, within).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // A connection in steady use is not cut: requests spaced below the timeout keep it.
    let mut busy = connect(&cluster).await;
    for _ in 0..4 {
        busy.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = busy.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        tokio::time::sleep(TIMEOUT / 2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_body_stalls_is_answered_408_and_stores_nothing() {
    let cluster = cluster().await;
    let mut stalled = connect(&cluster).await;
    stalled
        .write_all(
            b"PUT /put/stalled HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"value\": \"only part",
        )
        .await
        .unwrap();
    let (answer, after) = read_until_closed(&mut stalled, TIMEOUT * 5).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(after >= TIMEOUT - Duration::from_millis(100), "{after:?}");

    let read = cluster.gateway.get("/get/stalled").send().await.unwrap();
    assert_eq!(read.status(), 404);

    // A body that comes whole, even in pieces, is stored as usual.
    let mut slow = connect(&cluster).await;
    let body = br#"{"value": "in pieces"}"#;
    let head = format!(
        "PUT /put/pieces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(8) {
        tokio::time::sleep(TIMEOUT / 5).await;
        slow.write_all(piece).await.unwrap();
    }
    let (answer, _) = read_until_closed(&mut slow, TIMEOUT * 5).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let stored: serde_json::Value = cluster.gateway.get_json("/get/pieces").await;
    assert_eq!(stored["value"], "in pieces");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answers_is_disconnected() {
    let cluster = cluster().await;
    let value = "v".repeat(900_000);
    let stored = cluster
        .gateway
        .put("/put/big", value.clone().into())
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);

    // 64 GETs of 900 KB in one write, then nothing read: far more than the socket buffers
    // hold, so the gateway's writes stall.
    const ASKED: usize = 64;
    let mut reader = connect(&cluster).await;
    let requests = "GET /get/big HTTP/1.1\r\nHost: x\r\n\r\n".repeat(ASKED);
    reader.write_all(requests.as_bytes()).await.unwrap();
    tokio::time::sleep(TIMEOUT * 3).await;

    // Now read whatever comes: the gateway gave up on this client, so the stream ends (or is
    // reset) well before 64 answers.
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(TIMEOUT * 10, async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "still open after reading {received} bytes");
    assert!(
        received < ASKED * value.len() / 2,
        "{received} bytes: the gateway kept writing to a client that did not read"
    );

    // A client that reads slowly but steadily gets everything.
    let mut slow = connect(&cluster).await;
    slow.write_all(b"GET /get/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = 0usize;
    let mut small = vec![0u8; 64 << 10];
    loop {
        match slow.read(&mut small).await.unwrap() {
            0 => break,
            n => received += n,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(received > value.len(), "{received}");
}
