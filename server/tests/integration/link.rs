//! The gateway's pipelined link on a real server: it shares the HTTP port, answers frames
//! through the same router as HTTP, closes on a malformed frame, and on shutdown names the
//! last request it took before closing.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, header};
use kv_common::mux::{self, PREFACE, RequestFrame, ResponseFrame};
use kv_server::ServerConfig;
use kv_server::store::SyncMode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

struct Server {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<kv_server::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    start_with(|_| {}).await
}

async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path());
    config.sync = SyncMode::Normal;
    configure(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(kv_server::run(listener, config, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    while http
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Server {
        port,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

async fn open_link(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    let mut echo = [0u8; PREFACE.len()];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, PREFACE);
    stream
}

fn frame(id: u64, method: Method, path: &str, body: &str) -> RequestFrame {
    RequestFrame {
        id,
        method,
        path: path.into(),
        headers: vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

async fn send(stream: &mut TcpStream, frames: &[RequestFrame]) {
    let mut out = BytesMut::new();
    for frame in frames {
        mux::encode_request(&mut out, frame).unwrap();
    }
    stream.write_all(&out).await.unwrap();
}

/// Answers until `count` have come or the server closes the link.
async fn answers(stream: &mut TcpStream, buf: &mut BytesMut, count: usize) -> Vec<ResponseFrame> {
    let mut got = Vec::new();
    while got.len() < count {
        while let Some(answer) = mux::decode_response(buf, 1 << 20).unwrap() {
            got.push(answer);
        }
        if got.len() < count && stream.read_buf(buf).await.unwrap() == 0 {
            break;
        }
    }
    got
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

async fn text_of(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

fn json(answer: &ResponseFrame) -> Value {
    serde_json::from_slice(&answer.body).unwrap()
}

#[tokio::test]
async fn frames_are_answered_like_http_on_the_same_port() {
    let mut server = start().await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", server.port);
    let stored = json_of(
        http.put(format!("{base}/put/over%20http"))
            .json(&serde_json::json!({"value": "h"})),
    )
    .await;
    assert_eq!(stored["version"], 1);

    let mut link = open_link(server.port).await;
    let mut buf = BytesMut::new();
    // Pipelined: a put, then a read of it in the same write (the read may run first: they
    // are independent requests, as two HTTP clients' would be), an HTTP-written key, an
    // unknown route and a bad body.
    send(
        &mut link,
        &[
            frame(1, Method::PUT, "/put/k%2F1", r#"{"value": {"a": 1}}"#),
            frame(2, Method::GET, "/get/over%20http", ""),
            frame(3, Method::GET, "/nowhere", ""),
            frame(4, Method::POST, "/put/k", "not json"),
        ],
    )
    .await;
    let mut got = answers(&mut link, &mut buf, 4).await;
    got.sort_by_key(|a| a.id);
    assert_eq!(got.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(got[0].status, StatusCode::OK);
    assert_eq!(json(&got[0])["key"], "k/1");
    assert_eq!(json(&got[0])["version"], 1);
    assert_eq!(got[1].status, StatusCode::OK);
    assert_eq!(json(&got[1])["value"], "h");
    assert!(
        got[1]
            .headers
            .iter()
            .any(|(name, value)| name == header::CONTENT_TYPE && value == "application/json")
    );
    assert_eq!(got[2].status, StatusCode::NOT_FOUND);
    assert_eq!(got[3].status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&got[3])["code"], "invalid_json");

    // What the link wrote, HTTP reads.
    let read = json_of(http.get(format!("{base}/get/k%2F1"))).await;
    assert_eq!(read["value"], serde_json::json!({"a": 1}));

    // A malformed frame closes the link (no guessing at the rest of the stream); HTTP and
    // new links are unaffected.
    let mut bad = BytesMut::new();
    mux::encode_request(&mut bad, &frame(5, Method::GET, "/get/k", "")).unwrap();
    bad[12] = 99; // no such method
    link.write_all(&bad).await.unwrap();
    assert!(answers(&mut link, &mut buf, 1).await.is_empty());
    let mut again = open_link(server.port).await;
    send(&mut again, &[frame(1, Method::GET, "/get/k%2F1", "")]).await;
    assert_eq!(
        answers(&mut again, &mut BytesMut::new(), 1).await[0].status,
        StatusCode::OK
    );

    server.stop.take().unwrap().send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

/// Puts and gets take a short way past the router on a link (`http/direct.rs`); every put
/// and get, of the plain shape or not, must get the answer HTTP gives and count the same in
/// the metrics.
#[tokio::test]
async fn puts_and_gets_over_a_link_answer_and_count_exactly_as_over_http() {
    let small = |config: &mut ServerConfig| config.max_value_bytes = 100;
    let mut over_http = start_with(small).await;
    let mut over_link = start_with(small).await;
    let long_key = "k".repeat(1025);
    let over_limit = format!(r#"{{"value": "{}"}}"#, "x".repeat(70 << 10));
    let too_large = format!(r#"{{"value": "{}"}}"#, "x".repeat(200));
    let cases: Vec<(Method, String, String)> = vec![
        (
            Method::PUT,
            "/put/k%2F1".into(),
            r#"{"value": {"a": 1}}"#.into(),
        ),
        (Method::POST, "/put/k%2F1".into(), r#"{"value": 2}"#.into()),
        (
            Method::PUT,
            "/put/%C3%A9t%C3%A9".into(),
            r#"{"value": "e"}"#.into(),
        ),
        (
            Method::PUT,
            "/put/k%2F1?if_version=2".into(),
            r#"{"value": 3}"#.into(),
        ),
        (
            Method::PUT,
            "/put/k%2F1?if_version=1".into(),
            r#"{"value": 4}"#.into(),
        ),
        (
            Method::PUT,
            "/put/k?if_version=x".into(),
            r#"{"value": 5}"#.into(),
        ),
        (Method::PUT, "/put/%FF".into(), r#"{"value": 6}"#.into()),
        (Method::PUT, "/put/".into(), r#"{"value": 7}"#.into()),
        (Method::PUT, "/put/a/b".into(), r#"{"value": 8}"#.into()),
        (
            Method::PUT,
            format!("/put/{long_key}"),
            r#"{"value": 9}"#.into(),
        ),
        (Method::PUT, "/put/k".into(), "not json".into()),
        (Method::PUT, "/put/k".into(), r#"{"other": 1}"#.into()),
        (Method::PUT, "/put/k".into(), too_large),
        (Method::PUT, "/put/k".into(), over_limit),
        (Method::PUT, "/put/k".into(), String::new()),
        (Method::DELETE, "/put/k".into(), r#"{"value": 10}"#.into()),
        (Method::GET, "/get/k%2F1".into(), String::new()),
        (Method::GET, "/get/%C3%A9t%C3%A9".into(), String::new()),
        (Method::GET, "/get/k%2F1?version=1".into(), String::new()),
        (Method::GET, "/get/k%2F1?version=0".into(), String::new()),
        (Method::GET, "/get/k%2F1?version=9".into(), String::new()),
        (Method::GET, "/get/missing".into(), String::new()),
        (Method::GET, "/get/%FF".into(), String::new()),
        (Method::GET, "/get/".into(), String::new()),
        (Method::GET, "/get/a/b".into(), String::new()),
        (Method::GET, format!("/get/{long_key}"), String::new()),
        (Method::POST, "/get/k%2F1".into(), String::new()),
    ];
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", over_http.port);
    let mut link = open_link(over_link.port).await;
    let mut buf = BytesMut::new();
    for (id, (method, path, body)) in cases.iter().enumerate() {
        let answer = http
            .request(method.clone(), format!("{base}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let http_body: Value = answer.json().await.unwrap();
        // One at a time, so both servers see the same order.
        send(
            &mut link,
            &[frame(id as u64 + 1, method.clone(), path, body)],
        )
        .await;
        let got = answers(&mut link, &mut buf, 1).await.remove(0);
        let strip = |mut v: Value| {
            v.as_object_mut().map(|o| o.remove("timestamp"));
            v
        };
        assert_eq!(got.status, status, "{method} {path}");
        assert_eq!(strip(json(&got)), strip(http_body), "{method} {path}");
    }
    let metrics = |port: u16| {
        let http = http.clone();
        async move {
            let text = text_of(http.get(format!("http://127.0.0.1:{port}/metrics"))).await;
            let mut puts: Vec<String> = text
                .lines()
                .filter(|line| line.contains(r#"/put/{key}""#) || line.contains(r#"/get/{key}""#))
                .filter(|line| !line.contains("_bucket"))
                .filter(|line| !line.contains("_sum"))
                .map(str::to_owned)
                .collect();
            puts.sort();
            puts
        }
    };
    let counted = metrics(over_link.port).await;
    // Both routes and methods were counted, not only matched between the two servers.
    for expected in [
        r#"method="POST",status="200""#,
        r#"method="GET",status="404""#,
    ] {
        assert!(
            counted.iter().any(|line| line.contains(expected)),
            "{counted:#?}"
        );
    }
    assert_eq!(counted, metrics(over_http.port).await);

    for server in [&mut over_http, &mut over_link] {
        server.stop.take().unwrap().send(()).unwrap();
    }
    over_http.task.await.unwrap().unwrap();
    over_link.task.await.unwrap().unwrap();
}

/// A GET that names the largest answer it wants on the link gets "ask over HTTP" for a
/// larger one, and the whole answer otherwise; other methods are never refused so.
#[tokio::test]
async fn a_get_answer_over_the_cap_it_names_is_sent_back_to_http() {
    let mut server = start().await;
    let mut link = open_link(server.port).await;
    let mut buf = BytesMut::new();
    let value = "v".repeat(1000);
    let body = format!(r#"{{"value": "{value}"}}"#);
    send(&mut link, &[frame(1, Method::PUT, "/put/big", &body)]).await;
    assert_eq!(
        answers(&mut link, &mut buf, 1).await[0].status,
        StatusCode::OK
    );

    let capped = |id, max: &str| {
        let mut get = frame(id, Method::GET, "/get/big", "");
        get.headers
            .push((mux::MAX_ANSWER, HeaderValue::from_str(max).unwrap()));
        get
    };
    // Over the cap, under it, no cap, an unreadable cap (ignored), and a put under a cap
    // (a put is never asked twice, so it is answered whatever its size).
    let mut put = frame(6, Method::PUT, "/put/big", &body);
    put.headers
        .push((mux::MAX_ANSWER, HeaderValue::from_static("10")));
    send(
        &mut link,
        &[
            capped(2, "100"),
            capped(3, "100000"),
            frame(4, Method::GET, "/get/big", ""),
            capped(5, "lots"),
            put,
        ],
    )
    .await;
    let mut got = answers(&mut link, &mut buf, 5).await;
    got.sort_by_key(|answer| answer.id);
    assert_eq!(got[0], mux::use_http(2));
    assert!(mux::is_use_http(&got[0]));
    assert_eq!(got[0].status, StatusCode::MISDIRECTED_REQUEST);
    for answer in &got[1..4] {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert!(!mux::is_use_http(answer));
        assert_eq!(json(answer)["value"], value.as_str());
    }
    assert_eq!(got[4].status, StatusCode::OK);
    assert_eq!(json(&got[4])["version"], 2);

    server.stop.take().unwrap().send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn on_shutdown_a_link_names_the_last_request_it_took_and_closes() {
    let mut server = start().await;
    let mut link = open_link(server.port).await;
    let mut buf = BytesMut::new();
    send(
        &mut link,
        &[frame(7, Method::PUT, "/put/k", r#"{"value": 1}"#)],
    )
    .await;
    assert_eq!(
        answers(&mut link, &mut buf, 1).await[0].status,
        StatusCode::OK
    );

    server.stop.take().unwrap().send(()).unwrap();
    let got = answers(&mut link, &mut buf, 2).await;
    assert_eq!(
        got.len(),
        1,
        "the farewell, then the end of the stream: {got:?}"
    );
    assert_eq!(mux::goaway_last(&got[0]), Some(7));
    // The server finished: an open link does not hold up its shutdown.
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn connections_that_said_nothing_or_half_a_preface_do_not_hold_up_shutdown() {
    let mut server = start().await;
    let _silent = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let mut half = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    half.write_all(&PREFACE[..3]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

/// With a client timeout of 1 s: a connection that sends nothing, half a link preface, or
/// half an HTTP request head, or that sends a request and then nothing more, is closed; a
/// link idle for far longer stays open and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_http_connections_are_closed_but_an_idle_link_is_not() {
    let server = start_with(|c| c.client_timeout_secs = 1).await;
    let port = server.port;
    let mut link = open_link(port).await;
    let connect = || async move { TcpStream::connect(("127.0.0.1", port)).await.unwrap() };
    let silent = connect().await;
    let mut half_preface = connect().await;
    half_preface.write_all(&PREFACE[..3]).await.unwrap();
    let mut half_head = connect().await;
    half_head
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answered = connect().await;
    answered
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    let started = std::time::Instant::now();
    for (what, mut stream) in [
        ("silent", silent),
        ("half a preface", half_preface),
        ("half a head", half_head),
        ("idle after an answer", answered),
    ] {
        let mut got = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            // A reset counts as closed too.
            let _ = stream.read_to_end(&mut got).await;
        })
        .await;
        assert!(closed.is_ok(), "{what}: still open after 5 s");
        if what == "idle after an answer" {
            assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
        }
    }
    // The link has now been idle for over a second too, and still answers.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed())).await;
    send(&mut link, &[frame(1, Method::GET, "/health", "")]).await;
    let mut buf = BytesMut::new();
    let got = answers(&mut link, &mut buf, 1).await;
    assert_eq!(got.len(), 1, "the idle link was closed");
    assert_eq!(got[0].status, StatusCode::OK);
}

/// With a client timeout of 1 s, a put whose body stops halfway is refused (the handler sees
/// the body fail) and stores nothing, instead of waiting for the rest for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_body_that_stops_halfway_is_refused_and_stores_nothing() {
    let server = start_with(|c| c.client_timeout_secs = 1).await;
    let mut stalled = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    stalled
        .write_all(
            b"PUT /put/stalled HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"value\": \"only part",
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stalled.read_to_end(&mut got).await;
    })
    .await;
    assert!(answered.is_ok(), "still waiting for the body after 5 s");
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_body"), "{answer}");
    let http = reqwest::Client::new();
    let read = http
        .get(format!("http://127.0.0.1:{}/get/stalled", server.port))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::NOT_FOUND);
}

/// `--metrics-listen`: `/metrics` and `/health` only, with the open links and HTTP
/// connections counted, and a connection that says nothing closed after the client timeout,
/// as on the main port (it is open to every scraper).
#[tokio::test]
async fn the_metrics_port_counts_links_and_connections_and_closes_silent_clients() {
    let metrics_port = crate::ports::free_port();
    let server = start_with(|c| {
        c.client_timeout_secs = 1;
        c.metrics_listen = Some(([127, 0, 0, 1], metrics_port).into());
    })
    .await;
    let _link = open_link(server.port).await;
    let http = reqwest::Client::new();
    // One HTTP connection to the main port, kept in the client's pool.
    let health = format!("http://127.0.0.1:{}/health", server.port);
    assert!(http.get(health).send().await.unwrap().status().is_success());
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = text_of(http.get(&metrics_url)).await;
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
        line.unwrap_or_else(|| panic!("no {name}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("kv_server_gateway_links"), 1.0);
    assert_eq!(value("kv_server_http_connections"), 1.0);
    let put = http
        .put(format!("http://127.0.0.1:{metrics_port}/put/k"))
        .body(r#"{"value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::NOT_FOUND);

    let mut silent = TcpStream::connect(("127.0.0.1", metrics_port))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = silent.read_to_end(&mut Vec::new()).await;
    })
    .await;
    assert!(
        closed.is_ok(),
        "a silent connection to the metrics port is still open after 5 s"
    );
}
