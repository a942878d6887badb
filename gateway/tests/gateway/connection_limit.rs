//! `--max-connections`: at the limit the gateway accepts no more connections until one closes;
//! a client beyond it waits (its connect succeeds, its answer comes once a connection closes)
//! and the metrics say so.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Cluster, Gateway};

const LIMIT: usize = 3;

/// A kept-alive connection that has been answered once.
async fn connect(gateway: &Gateway) -> TcpStream {
    let mut stream = TcpStream::connect(gateway.url.trim_start_matches("http://"))
        .await
        .unwrap();
    ask(&mut stream).await;
    stream
}

async fn ask(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .unwrap();
}

/// The start of the next answer on `stream`, if one comes within `within`.
async fn answer(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = [0u8; 256];
    let n = tokio::time::timeout(within, stream.read(&mut got))
        .await
        .ok()?
        .unwrap();
    Some(String::from_utf8_lossy(&got[..n]).into_owned())
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

#[tokio::test]
async fn beyond_the_limit_a_client_waits_until_a_connection_closes() {
    let cluster = Cluster::start_with(&["s1"], |c| c.max_connections = Some(LIMIT)).await;
    let gateway = &cluster.gateway;
    // The harness's own client keeps a connection of its own open.
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric(&metrics, "kv_gateway_client_connections_max"),
        LIMIT as f64
    );
    let open = metric(&metrics, "kv_gateway_client_connections") as usize;
    assert!((1..LIMIT).contains(&open), "{open} open before the test's");

    let mut held = Vec::new();
    for _ in open..LIMIT {
        let mut stream = connect(gateway).await;
        let first = answer(&mut stream, Duration::from_secs(5)).await;
        assert!(first.unwrap().starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // One more: the kernel completes its connect, the gateway does not take it yet.
    let mut waiting = connect(gateway).await;
    assert_eq!(answer(&mut waiting, Duration::from_millis(500)).await, None);

    drop(held.pop());
    let late = answer(&mut waiting, Duration::from_secs(5)).await;
    assert!(
        late.expect("answered once a connection closed")
            .starts_with("HTTP/1.1 200")
    );

    let metrics = gateway.metrics().await;
    assert!(metric(&metrics, "kv_gateway_client_connection_limit_waits_total") >= 1.0);
    assert_eq!(
        metric(&metrics, "kv_gateway_client_connections") as usize,
        LIMIT
    );
}
