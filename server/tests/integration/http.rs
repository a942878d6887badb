//! Every route and every error, through the router.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures::StreamExt;
use tower::ServiceExt;

use crate::support::{TestApp, test_app, test_app_with};

#[tokio::test]
async fn put_creates_then_updates_with_the_seed_response_shape_and_its_bugs_fixed() {
    let app = test_app();
    let first = app.put("mykey", r#""hello""#).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let json = first.json();
    assert_eq!(json["operation"], "create");
    assert_eq!(json["key"], "mykey");
    assert_eq!(json["version"], 1, "the seed answered null here");
    assert_eq!(json["new_version"], 1);
    assert!(json["previous_version"].is_null());
    assert_eq!(json["total_versions"], 1);
    assert!(json["timestamp"].as_f64().unwrap() > 1.7e9);

    // POST is the seed's method; PUT is what its README showed. Both work.
    let second = app
        .call(
            Method::POST,
            "/put/mykey",
            Some(r#"{"value": {"a": [1, 2.5]}}"#),
        )
        .await
        .json();
    assert_eq!(second["operation"], "update");
    assert_eq!(second["version"], 2);
    assert_eq!(second["previous_version"], 1);
    assert_eq!(second["total_versions"], 2);
}

#[tokio::test]
async fn total_versions_counts_the_database_not_the_cache() {
    // A cache of one key: "a" is evicted by "b", and the seed then answered total_versions 1.
    let app = test_app_with(|c| c.cache_size = 1);
    app.put("a", "1").await;
    app.put("b", "1").await;
    let json = app.put("a", "2").await.json();
    assert_eq!(json["total_versions"], 2);
}

#[tokio::test]
async fn get_returns_latest_or_exact_version_with_the_write_timestamp() {
    let app = test_app_with(|c| c.cache_size = 0);
    let put1 = app.put("k", r#""one""#).await.json();
    let put2 = app.put("k", r#""two""#).await.json();
    let latest = app.get("/get/k").await.json();
    assert_eq!(latest["value"], "two");
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["source"], "database");
    assert_eq!(latest["timestamp"], put2["timestamp"]);
    let v1 = app.get("/get/k?version=1").await.json();
    assert_eq!(v1["value"], "one");
    assert_eq!(v1["timestamp"], put1["timestamp"]);
    // The seed's `+1` and `01` still mean version 1.
    assert_eq!(app.get("/get/k?version=%2B1").await.json()["version"], 1);
    assert_eq!(app.get("/get/k?version=01").await.json()["version"], 1);
}

#[tokio::test]
async fn cache_hits_keep_the_write_timestamp_and_never_serve_an_old_latest() {
    let app = test_app();
    let put2 = {
        app.put("k2", "null").await;
        app.put("k2", "42").await.json()
    };
    let from_cache = app.get("/get/k2").await.json();
    assert_eq!(from_cache["source"], "cache");
    assert_eq!(from_cache["timestamp"], put2["timestamp"]);
    // The seed's stale-read bug: after reading version 1, "latest" answered version 1.
    let v1 = app.get("/get/k2?version=1").await.json();
    assert_eq!(v1["version"], 1);
    let latest = app.get("/get/k2").await.json();
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["value"], 42);
    let again = app.get("/get/k2?version=1").await.json();
    assert_eq!(again["source"], "cache");
}

#[tokio::test]
async fn values_come_back_exactly_as_sent() {
    let app = test_app();
    for (i, value) in [
        "12345678901234567890123",
        "1.0",
        r#""été ✓ \u00e9""#,
        r#"{"nested": {"list": [1, null, true, "x"]}}"#,
        "null",
        "-0.5e-3",
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("v{i}");
        assert_eq!(app.put(&key, value).await.status, StatusCode::OK);
        let text = app.get(&format!("/get/{key}")).await.text;
        assert!(
            text.starts_with(&format!(r#"{{"value":{value},"#)),
            "{text}"
        );
    }
}

#[tokio::test]
async fn keys_are_percent_decoded_path_segments() {
    let app = test_app();
    for (path, key) in [
        ("with%20space", "with space"),
        ("a%2Fb", "a/b"),
        ("%C3%A9t%C3%A9", "été"),
        ("user:1", "user:1"),
        ("%F0%9F%94%91", "🔑"),
    ] {
        let put = app.put(path, r#""x""#).await;
        assert_eq!(put.status, StatusCode::OK, "{path}: {}", put.text);
        assert_eq!(put.json()["key"], key);
        let got = app.get(&format!("/get/{path}")).await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
    }
    // Two keys that differ only by encoding are the same key.
    assert_eq!(app.get("/get/user%3A1").await.json()["value"], "x");
}

#[tokio::test]
async fn missing_keys_and_versions_are_404_with_the_seed_messages() {
    let app = test_app();
    let e = app
        .get("/get/nosuchkey")
        .await
        .assert_error(StatusCode::NOT_FOUND, "key_not_found");
    assert_eq!(e["detail"], "Key 'nosuchkey' not found");
    app.put("mykey", "1").await;
    let e = app
        .get("/get/mykey?version=3")
        .await
        .assert_error(StatusCode::NOT_FOUND, "version_not_found");
    assert_eq!(e["detail"], "Key 'mykey' version 3 not found");
    let e = app
        .get("/get/nosuchkey?version=1")
        .await
        .assert_error(StatusCode::NOT_FOUND, "version_not_found");
    assert_eq!(e["detail"], "Key 'nosuchkey' version 1 not found");
}

#[tokio::test]
async fn bad_versions_are_400_never_500() {
    let app = test_app();
    app.put("k", "1").await;
    for bad in [
        "0",
        "-1",
        "abc",
        "1.5",
        "",
        "%201",
        "99999999999999999999",
        "9223372036854775808",
    ] {
        app.get(&format!("/get/k?version={bad}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_version");
    }
    // The largest valid version is simply not there.
    app.get("/get/k?version=9223372036854775807")
        .await
        .assert_error(StatusCode::NOT_FOUND, "version_not_found");
}

#[tokio::test]
async fn bad_bodies_get_clear_errors() {
    let app = test_app_with(|c| c.max_value_bytes = 100);
    let put = |body: &'static str| app.call(Method::PUT, "/put/k", Some(body));
    put(r#"{"val": 1}"#)
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    put("[1, 2]")
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    put("")
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    put("not json")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    put(r#"{"value": 1e400}"#)
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "non_finite_number");
    let big = format!(r#"{{"value": "{}"}}"#, "x".repeat(200));
    app.call(Method::PUT, "/put/k", Some(&big))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large");
    // Far over the body limit: refused while reading, same answer.
    let huge = format!(r#"{{"value": "{}"}}"#, "x".repeat(200_000));
    app.call(Method::PUT, "/put/k", Some(&huge))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large");
    // A compressed body is refused for what it is, not as the JSON it is not; a body sent
    // as it is (`identity`) is read.
    let gzip = [("content-encoding", "gzip")];
    let refused = app
        .call_with(Method::PUT, "/put/k", &gzip, Some(r#"{"value": 1}"#))
        .await;
    let json = refused.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding");
    assert!(
        json["detail"].as_str().unwrap().contains("\"gzip\""),
        "{json}"
    );
    assert_eq!(refused.headers["accept-encoding"], "identity");
    // Nothing above was stored.
    app.get("/get/k")
        .await
        .assert_error(StatusCode::NOT_FOUND, "key_not_found");
    app.call_with(
        Method::PUT,
        "/put/k",
        &[("content-encoding", "identity")],
        Some(r#"{"value": 1}"#),
    )
    .await
    .json();
    assert_eq!(app.get("/get/k").await.json()["value"], 1);
}

/// A value is refused when storing it would make every read of it fail; whatever is
/// accepted reads back, from the cache and from the database, as it was sent.
#[tokio::test]
async fn values_are_refused_if_no_read_could_serve_them() {
    let app = test_app();
    for lone in [r#""\ud800""#, r#""x\udc00""#, r#"{"a": ["\ud83d"]}"#] {
        app.put("k", lone)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    }
    let deep = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    for depth in [101, 129, 10_000] {
        let answer = app.put("k", &deep(depth)).await;
        let json = answer.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
        assert!(
            json["detail"]
                .as_str()
                .unwrap()
                .contains("nested deeper than 100")
        );
    }
    app.get("/get/k")
        .await
        .assert_error(StatusCode::NOT_FOUND, "key_not_found");

    let accepted = [r#""\ud83d\ude00 \u00e9t\u00e9""#.to_owned(), deep(100)];
    for (i, value) in accepted.iter().enumerate() {
        assert_eq!(app.put("k", value).await.status, StatusCode::OK);
        let version = i + 1;
        for uri in ["/get/k".to_owned(), format!("/get/k?version={version}")] {
            let answer = app.get(&uri).await;
            assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.text);
            assert_eq!(
                answer.json()["value"],
                serde_json::from_str::<serde_json::Value>(value).unwrap(),
                "{uri}"
            );
        }
    }
    // Version 1 is no longer the latest: read from the database, through its read check.
    let answer = app.get("/get/k?version=1").await;
    assert_eq!(answer.json()["source"], "database", "{}", answer.text);
    assert_eq!(answer.json()["value"], "\u{1f600} été");
}

#[tokio::test]
async fn bad_keys_and_paths_and_methods_are_json_errors() {
    let app = test_app();
    app.put("", "1")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "empty_key");
    app.get("/get/")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "empty_key");
    app.get("/versions/")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "empty_key");
    let long = "k".repeat(1025);
    app.put(&long, "1")
        .await
        .assert_error(StatusCode::URI_TOO_LONG, "key_too_long");
    app.get(&format!("/get/{long}"))
        .await
        .assert_error(StatusCode::URI_TOO_LONG, "key_too_long");
    assert_eq!(app.put(&"k".repeat(1024), "1").await.status, StatusCode::OK);
    app.get("/get/%FF")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_key");
    app.get("/nonexistent")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.get("/get/a/b")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.call(Method::DELETE, "/get/k", None)
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    app.call(Method::GET, "/put/k", None)
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn conditional_puts_store_only_on_the_expected_version() {
    let app = test_app();
    let cas = async |v: &str| {
        let uri = format!("/put/c?if_version={v}");
        app.call(Method::PUT, &uri, Some(r#"{"value": 1}"#)).await
    };
    assert_eq!(cas("0").await.json()["version"], 1, "0 = only if absent");
    let e = cas("0")
        .await
        .assert_error(StatusCode::PRECONDITION_FAILED, "version_conflict");
    assert_eq!(e["detail"], "Key 'c' is at version 1, not 0");
    assert_eq!(cas("1").await.json()["version"], 2);
    cas("1")
        .await
        .assert_error(StatusCode::PRECONDITION_FAILED, "version_conflict");
    cas("x")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    assert_eq!(app.get("/get/c").await.json()["version"], 2);
}

/// The version numbers of a `/versions` page, in its order.
fn version_numbers(page: &serde_json::Value) -> Vec<u64> {
    page["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn versions_are_listed_oldest_first_in_pages() {
    let app = test_app();
    for i in 1..=5 {
        app.put("p", &i.to_string()).await;
    }
    let page = app.get("/versions/p?limit=2").await.json();
    assert_eq!(page["latest_version"], 5);
    let versions = version_numbers(&page);
    assert_eq!(versions, [1, 2]);
    assert_eq!(page["versions"][1]["value"], 2);
    assert_eq!(page["next_after"], 2);
    let last = app.get("/versions/p?after=4&limit=2").await.json();
    assert_eq!(last["versions"].as_array().unwrap().len(), 1);
    assert!(last["next_after"].is_null());
    app.get("/versions/p?limit=0")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.get("/versions/p?limit=1001")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.get("/versions/p?after=-1")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.get("/versions/none")
        .await
        .assert_error(StatusCode::NOT_FOUND, "key_not_found");
}

#[tokio::test]
async fn a_page_of_large_versions_stops_at_its_byte_budget() {
    // VERSIONS_PAGE_BYTES is 8 MiB: two values of 3 MiB fit, a third would not; a value
    // larger than the budget comes alone.
    let app = test_app_with(|c| c.max_value_bytes = 10 << 20);
    let text = |mib: usize, c: char| format!("\"{}\"", c.to_string().repeat((mib << 20) - 2));
    for c in ['a', 'b', 'c', 'd', 'e'] {
        assert_eq!(app.put("big", &text(3, c)).await.status, StatusCode::OK);
    }
    assert_eq!(app.put("big", &text(9, 'f')).await.status, StatusCode::OK);
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .get(&format!("/versions/big?after={after}&limit=100"))
            .await
            .json();
        pages.push(version_numbers(&page));
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(pages, [vec![1, 2], vec![3, 4], vec![5], vec![6]]);
}

#[tokio::test]
async fn stats_report_the_seed_fields_and_more() {
    let app = test_app_with(|c| c.cache_size = 2);
    for key in ["a", "b", "c"] {
        app.put(key, "1").await;
    }
    app.put("a", "2").await;
    app.get("/get/a").await;
    let cache = app.get("/cache/stats").await.json();
    assert_eq!(cache["current_size"], 2);
    assert_eq!(cache["max_size"], 2);
    assert_eq!(cache["is_full"], true);
    assert_eq!(cache["expiration_minutes"], 30.0);
    assert_eq!(cache["hits"], 1);
    assert!(cache["evictions"].as_u64().unwrap() >= 1);
    assert_eq!(cache["node_name"], "test-node");
    let db = app.get("/db/stats").await.json();
    assert_eq!(db["total_keys"], 3);
    assert_eq!(db["total_versions"], 4);
    assert!(db["database_size_bytes"].as_u64().unwrap() > 0);
    assert!(db["wal_size_bytes"].as_u64().is_some());
}

#[tokio::test]
async fn the_cache_byte_budget_keeps_large_values_out_and_says_so() {
    // 4 KiB of cache: small values are cached, a 10 KB value is served from the database
    // every time, and the stats show the budget and what is held.
    let app = test_app_with(|c| c.cache_max_bytes = 4096);
    app.put("small", r#""s""#).await;
    let big = format!(r#""{}""#, "x".repeat(10_000));
    app.put("big", &big).await;
    assert_eq!(app.get("/get/small").await.json()["source"], "cache");
    for _ in 0..2 {
        let read = app.get("/get/big").await.json();
        assert_eq!(read["source"], "database");
        assert_eq!(read["value"].as_str().unwrap().len(), 10_000);
    }
    let cache = app.get("/cache/stats").await.json();
    assert_eq!(cache["current_size"], 1);
    assert_eq!(cache["max_bytes"], 4096);
    let held = cache["current_bytes"].as_u64().unwrap();
    assert!(held > 0 && held < 1024, "{cache}");
    assert_eq!(cache["is_full"], false);
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics.contains(&format!("kv_server_cache_bytes {held}")),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_ready_metrics_and_docs_answer() {
    let app = test_app();
    assert_eq!(app.get("/health").await.json()["status"], "ok");
    assert_eq!(app.get("/ready").await.json()["status"], "ready");
    app.put("m", "1").await;
    app.get("/get/m").await;
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    for needle in [
        r#"kv_server_http_requests_total{route="/get/{key}",method="GET",status="200"} 1"#,
        "kv_server_write_batch_size_count",
        "kv_server_sqlite_commit_seconds_bucket",
        "kv_server_cache_hit_ratio",
    ] {
        assert!(
            metrics.text.contains(needle),
            "missing {needle} in\n{}",
            metrics.text
        );
    }
    let spec = app.get("/openapi.json").await.json();
    for path in [
        "/put/{key}",
        "/get/{key}",
        "/versions/{key}",
        "/cache/stats",
        "/db/stats",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(
        docs.text.contains("swagger"),
        "{}",
        &docs.text[..docs.text.len().min(300)]
    );
}

/// The value of the unlabelled gauge `name` in a metrics text.
fn gauge(metrics: &str, name: &str) -> u64 {
    let line = metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
    line.trim().parse().unwrap()
}

#[tokio::test]
async fn metrics_show_the_database_files_and_the_volume_they_are_on() {
    let app = test_app();
    app.put("sized", &format!(r#""{}""#, "v".repeat(100_000)))
        .await;
    let metrics = app.get("/metrics").await.text;
    // The same figures `/db/stats` reads, from the same files.
    let stats = app.get("/db/stats").await.json();
    assert_eq!(
        gauge(&metrics, "kv_server_database_bytes"),
        stats["database_size_bytes"].as_u64().unwrap()
    );
    let wal = gauge(&metrics, "kv_server_wal_bytes");
    assert!(wal > 100_000, "the put is in the WAL: {wal}");
    // And the volume, as `df` would say it for the data directory.
    let space = kv_common::disk::space(app.dir.path()).unwrap();
    assert_eq!(gauge(&metrics, "kv_server_volume_size_bytes"), space.total);
    let available = gauge(&metrics, "kv_server_volume_available_bytes");
    assert!(available > 0 && available <= space.total, "{available}");
    // Other writers on this disk move the free space between two reads; not by a gigabyte.
    assert!(
        available.abs_diff(space.available) < 1 << 30,
        "{available} vs {space:?}"
    );
    // `/db/stats` says the same of the volume.
    assert_eq!(
        stats["volume_size_bytes"].as_u64(),
        Some(space.total),
        "{stats}"
    );
    let said = stats["volume_available_bytes"].as_u64().unwrap();
    assert!(
        said <= space.total && said.abs_diff(available) < 1 << 30,
        "{stats}"
    );
}

/// Starts a put of a `len`-byte value whose body stops halfway until `go` is sent (or
/// dropped); resolves to its status.
fn put_in_two_halves(
    app: &TestApp,
    key: &str,
    len: usize,
) -> (
    tokio::task::JoinHandle<StatusCode>,
    tokio::sync::oneshot::Sender<()>,
) {
    let body = format!(r#"{{"value": "{}"}}"#, "h".repeat(len));
    let (first, rest) = body.split_at(body.len() / 2);
    let (first, rest) = (
        bytes::Bytes::from(first.to_owned()),
        bytes::Bytes::from(rest.to_owned()),
    );
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let chunks = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
        futures::stream::once(async move {
            let _ = wait.await;
            Ok(rest)
        }),
    );
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!("/put/{key}"))
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Body::from_stream(chunks))
        .unwrap();
    let router = app.router.clone();
    let answer = tokio::spawn(async move { router.oneshot(request).await.unwrap().status() });
    (answer, go)
}

#[tokio::test]
async fn puts_wait_unread_while_their_bodies_would_pass_the_in_flight_budget() {
    // Values up to 64 KiB (bodies up to 128 KiB), 150 KiB of bodies at once: two puts of
    // 60 KiB fit, a third waits until one of them is answered.
    let app = test_app_with(|c| {
        c.max_value_bytes = 64 << 10;
        c.max_inflight_body_bytes = 150 << 10;
    });
    let value = 60 << 10;
    let (first, go_first) = put_in_two_halves(&app, "a", value);
    let (second, go_second) = put_in_two_halves(&app, "b", value);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = app.get("/metrics").await.text;
    let held = gauge(&metrics, "kv_server_request_body_bytes");
    assert!(held > 2 * value as u64, "{held}");
    // The third has its whole body ready, and still waits.
    let (third, go_third) = put_in_two_halves(&app, "c", value);
    go_third.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third body fit beside two");
    let metrics = app.get("/metrics").await.text;
    assert_eq!(gauge(&metrics, "kv_server_request_body_waits_total"), 1);
    go_first.send(()).unwrap();
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(third.await.unwrap(), StatusCode::OK);
    go_second.send(()).unwrap();
    assert_eq!(second.await.unwrap(), StatusCode::OK);
    let metrics = app.get("/metrics").await.text;
    assert_eq!(gauge(&metrics, "kv_server_request_body_bytes"), 0);
    assert_eq!(app.get("/get/c").await.json()["version"], 1);
}

#[tokio::test]
async fn a_closed_store_answers_503_with_retry_after() {
    let app = test_app();
    app.state.store.close().await;
    let answer = app.put("k", "1").await;
    answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(answer.headers["retry-after"], "1");
    app.get("/ready")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
}

#[tokio::test]
async fn the_metrics_port_serves_metrics_and_health_and_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_url, metrics_url) = (
        format!("http://{}", api.local_addr().unwrap()),
        format!("http://{}", metrics.local_addr().unwrap()),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kv_server::serve(
        api,
        Some(metrics),
        crate::support::config(dir.path()),
        async {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{api_url}/put/k"))
        .json(&serde_json::json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);

    let scrape = http
        .get(format!("{metrics_url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    let text = scrape.text().await.unwrap();
    assert!(
        text.contains(
            r#"kv_server_http_requests_total{route="/put/{key}",method="PUT",status="200"} 1"#
        ),
        "{text}"
    );
    let health = http
        .get(format!("{metrics_url}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Nothing of the data API answers there.
    for path in [
        "/get/k",
        "/versions/k",
        "/cache/stats",
        "/internal/status",
        "/admin/snapshot",
    ] {
        let r = http
            .get(format!("{metrics_url}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = http
        .put(format!("{metrics_url}/put/k"))
        .json(&serde_json::json!({"value": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // /metrics stays on the API port too.
    let r = http.get(format!("{api_url}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        http.get(format!("{metrics_url}/metrics"))
            .send()
            .await
            .is_err(),
        "the metrics listener closes with the server"
    );
}

#[tokio::test]
async fn a_standalone_server_takes_requests_meant_for_any_name() {
    // Its name is a label: a gateway may know it as `host:port` (the seed's static list).
    let app = test_app();
    let to = |method: Method, uri: &str, body: Option<&str>| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("x-kv-to", "server-1:8080")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap()
    };
    let put = to(Method::PUT, "/put/k", Some(r#"{"value": 1}"#));
    let response = app.router.clone().oneshot(put).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let get = to(Method::GET, "/get/k", None);
    let response = app.router.clone().oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
