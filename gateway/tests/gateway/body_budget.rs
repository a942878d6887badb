//! `--max-inflight-body-bytes`: a put whose body would take the gateway past its budget of
//! bodies held at once waits, unread, until an earlier one is answered.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Cluster, TOKEN};

/// Opens a connection and sends a put's head and the first `sent` bytes of its body.
async fn put_started(addr: &str, key: &str, body: &str, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /put/{key} HTTP/1.1\r\nHost: kv\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..sent]).await.unwrap();
    stream
}

/// The status of the answer on `stream`, or `None` if none starts within `within`.
async fn status_within(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut head = [0u8; 12];
    tokio::time::timeout(within, stream.read_exact(&mut head))
        .await
        .ok()?
        .unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().ok()
}

#[tokio::test]
async fn a_put_waits_unread_while_earlier_bodies_fill_the_budget() {
    let cluster = Cluster::start_with(&["kv-0"], |c| {
        c.max_body_bytes = 64 << 10;
        c.max_inflight_body_bytes = 100 << 10;
    })
    .await;
    let addr = cluster.gateway.url.trim_start_matches("http://").to_owned();
    let body = format!(r#"{{"value": "{}"}}"#, "g".repeat(60 << 10));
    // The first holds 60 KiB of the 100 while its body is half sent.
    let mut first = put_started(&addr, "first", &body, body.len() / 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The second is complete, and waits: 120 KiB would not fit.
    let mut second = put_started(&addr, "second", &body, body.len()).await;
    assert_eq!(
        status_within(&mut second, Duration::from_millis(300)).await,
        None
    );
    let metrics = cluster.gateway.metrics().await;
    assert!(
        metrics.contains("kv_gateway_request_body_waits_total 1"),
        "{metrics}"
    );
    // The first ends: it is answered, then the second is read and answered.
    first
        .write_all(&body.as_bytes()[body.len() / 2..])
        .await
        .unwrap();
    let long = Duration::from_secs(5);
    assert_eq!(status_within(&mut first, long).await, Some(200));
    assert_eq!(status_within(&mut second, long).await, Some(200));
}
