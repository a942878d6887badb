//! The server's end of the gateway's pipelined link (`kv_common::mux`), on the same port as
//! HTTP: every accepted connection is sniffed by its first byte, a link's preface starts
//! with NUL, which no HTTP request does. HTTP connections go on to axum as before; a link is
//! served here, each request frame through the same router as HTTP (same routes, limits,
//! metrics), but for plain puts and gets, which go straight to the same handlers
//! (`http/direct.rs`), its answers written back as they finish, several per socket call when
//! several are ready.
//!
//! On shutdown a link stops reading, tells the gateway the last request it took (a frame
//! with id 0), answers those, and closes: the gateway knows that every later request was
//! never seen, so it can say so instead of reporting an indeterminate outcome.

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, HttpBody as _};
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use kv_common::mux::{self, PREFACE, RequestFrame, ResponseFrame};
use kv_common::{ErrorBody, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use super::AppState;
use super::direct::{self, Direct};

/// The largest request frame a link takes: a put of the largest value with room for its
/// JSON envelope, or a replication batch (the router's own limits apply after this).
const MAX_REQUEST_FRAME: usize = 80 << 20;
/// The largest answer sent over a link; a larger one becomes a 502 frame. The gateway's
/// default `--max-response-bytes` is 65 MiB, `/versions` pages stop before 8 MiB of values.
const MAX_RESPONSE_BODY: usize = 72 << 20;
/// Answers gathered into one socket write at most.
const WRITE_BATCH: usize = 256 << 10;

/// What axum serves: the HTTP connections, once the sniffer has let them through.
pub struct HttpListener {
    connections: mpsc::Receiver<(TcpStream, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for HttpListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The acceptor stops only on shutdown, after which axum stops asking.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// What a link's frames are served by: the router, and for plain puts and gets their
/// handlers alone, which need the state the router holds.
#[derive(Clone)]
struct Service {
    router: Router,
    state: AppState,
}

/// Resolves once every link has answered what it took and closed.
pub struct Links {
    alive: mpsc::Receiver<()>,
}

impl Links {
    pub async fn closed(mut self) {
        // Each link holds a sender; `recv` gives `None` when the last one is dropped.
        let _ = self.alive.recv().await;
    }
}

/// Splits `listener` into HTTP connections for axum and links served here with `app`.
/// Both stop taking connections when `stop` turns true.
pub fn split(
    listener: TcpListener,
    app: Router,
    state: AppState,
    stop: watch::Receiver<bool>,
    first_byte_timeout: std::time::Duration,
) -> std::io::Result<(HttpListener, Links)> {
    let addr = listener.local_addr()?;
    let (http_tx, http_rx) = mpsc::channel(64);
    let (alive_tx, alive_rx) = mpsc::channel(1);
    let service = Service { router: app, state };
    tokio::spawn(accept_loop(
        listener,
        service,
        stop,
        http_tx,
        alive_tx,
        first_byte_timeout,
    ));
    Ok((
        HttpListener {
            connections: http_rx,
            addr,
        },
        Links { alive: alive_rx },
    ))
}

async fn accept_loop(
    listener: TcpListener,
    service: Service,
    mut stop: watch::Receiver<bool>,
    http: mpsc::Sender<(TcpStream, SocketAddr)>,
    alive: mpsc::Sender<()>,
    first_byte_timeout: std::time::Duration,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: axum's own loop also waits and
                // retries rather than giving up the listener.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (service, mut stop, http, alive) =
            (service.clone(), stop.clone(), http.clone(), alive.clone());
        tokio::spawn(async move {
            // A connection that has not said a word by shutdown is closed, as axum closes
            // idle ones: it must not hold the server's shutdown up (this task holds `alive`).
            // One that says nothing at all for the client timeout is closed too, as an HTTP
            // connection that sends no request head is.
            let mut first = [0u8; 1];
            let peeked = tokio::select! {
                peeked = tokio::time::timeout(first_byte_timeout, stream.peek(&mut first)) => {
                    match peeked {
                        Ok(peeked) => peeked,
                        Err(_) => return,
                    }
                }
                _ = stop.wait_for(|stop| *stop) => return,
            };
            // Links and HTTP alike write answers whole: never hold one back for Nagle.
            let _ = stream.set_nodelay(true);
            // A gateway keeps its link open, idle or not: probe it, so that the link of a
            // gateway that vanished without a FIN is closed, not held for good.
            let _ = kv_common::net::keepalive(&stream);
            match peeked {
                Ok(1) if first[0] == PREFACE[0] => {
                    match serve_link(stream, service, stop, alive, first_byte_timeout).await {
                        Ok(()) => tracing::info!(%peer, "gateway link closed"),
                        Err(err) => tracing::info!(%peer, %err, "gateway link closed"),
                    }
                }
                Ok(1) => {
                    // Fails once axum has stopped and dropped its end.
                    let _ = http.send((stream, peer)).await;
                }
                _ => {}
            }
        });
    }
}

async fn serve_link(
    stream: TcpStream,
    service: Service,
    mut stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    preface_timeout: std::time::Duration,
) -> std::io::Result<()> {
    let _open = kv_common::serve::Open::new(service.state.metrics.links.clone());
    let (mut reader, mut writer) = stream.into_split();
    let mut preface = [0u8; PREFACE.len()];
    // The whole preface within the client timeout; once open, a link may stay idle: the
    // gateway keeps it for its next requests.
    tokio::select! {
        read = tokio::time::timeout(preface_timeout, reader.read_exact(&mut preface)) => {
            read.map_err(|_| std::io::Error::other("no whole link preface in time"))??
        }
        _ = stop.wait_for(|stop| *stop) => return Ok(()),
    };
    if &preface != PREFACE {
        return Err(std::io::Error::other("not a kvstore link"));
    }
    writer.write_all(PREFACE).await?;
    tracing::info!(peer = ?reader.peer_addr().ok(), "gateway link opened");
    // One task per link runs its requests side by side (a put waiting for its commit does
    // not hold up the gets behind it): a cached read is answered in the same wake-up that
    // read it, and all answers ready then leave in one write.
    let mut in_flight = FuturesUnordered::new();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut out = BytesMut::with_capacity(64 << 10);
    let mut last_taken = 0;
    let mut reading = true;
    loop {
        if reading {
            loop {
                match mux::decode_request(&mut buf, MAX_REQUEST_FRAME) {
                    Ok(Some(frame)) => {
                        last_taken = frame.id;
                        in_flight.push(answer(service.clone(), frame));
                    }
                    Ok(None) => break,
                    Err(err) => return Err(std::io::Error::other(err)),
                }
            }
        }
        while let Some(Some(answer)) = in_flight.next().now_or_never() {
            out.extend_from_slice(&answer);
            if out.len() >= WRITE_BATCH {
                break;
            }
        }
        if !out.is_empty() {
            writer.write_all(&out).await?;
            out.clear();
            continue;
        }
        if !reading && in_flight.is_empty() {
            // Shut down, and every request taken has been answered.
            return writer.shutdown().await;
        }
        tokio::select! {
            read = reader.read_buf(&mut buf), if reading => match read {
                Ok(0) => reading = false,
                Ok(_) => {}
                Err(err) => return Err(err),
            },
            Some(answer) = in_flight.next() => out.extend_from_slice(&answer),
            _ = stop.wait_for(|stop| *stop), if reading => {
                // Tell the gateway which requests were taken; later ones it may send again.
                reading = false;
                // No headers, an 8-byte body: it always fits a frame.
                let _ = mux::encode_response(&mut out, &mux::goaway(last_taken));
            }
        }
    }
}

/// Runs one request through the router (a plain put or get through its handler alone); its
/// answer as an encoded frame.
async fn answer(service: Service, mut frame: RequestFrame) -> Bytes {
    let Service { router, state } = service;
    let id = frame.id;
    // The gateway's cap on this answer's size (a GET only: it will ask again over HTTP).
    let max_answer = (frame.method == Method::GET)
        .then(|| max_answer(&mut frame.headers))
        .flatten();
    let response = if let Some(direct) = Direct::of(&frame, direct::body_limit(&state)) {
        direct.serve(state, frame).await
    } else if let Some(request) = to_request(frame) {
        match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    } else {
        return encoded(plain(
            id,
            StatusCode::BAD_REQUEST,
            "malformed request frame",
        ));
    };
    let (parts, body) = response.into_parts();
    // A body that says its length (a large GET answer does) is not gathered only to be found
    // too large.
    if let (Some(max), Some(len)) = (max_answer, body.size_hint().exact())
        && len > max as u64
    {
        return encoded(mux::use_http(id));
    }
    let answer = match Limited::new(body, MAX_RESPONSE_BODY).collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            if max_answer.is_some_and(|max| body.len() > max) {
                mux::use_http(id)
            } else {
                ResponseFrame {
                    id,
                    status: parts.status,
                    headers: parts
                        .headers
                        .iter()
                        .map(|(name, value)| (name.clone(), value.clone()))
                        .collect(),
                    body,
                }
            }
        }
        Err(err) => plain(id, StatusCode::BAD_GATEWAY, &err.to_string()),
    };
    encoded(answer)
}

/// An answer as the bytes of its frame.
fn encoded(response: ResponseFrame) -> Bytes {
    let id = response.id;
    let mut out = BytesMut::new();
    if mux::encode_response(&mut out, &response).is_err() {
        // A header the frame layout cannot hold: say so rather than drop the request.
        out.clear();
        let refusal = plain(
            id,
            StatusCode::BAD_GATEWAY,
            "answer does not fit a link frame",
        );
        let _ = mux::encode_response(&mut out, &refusal);
    }
    out.freeze()
}

/// Takes [`mux::MAX_ANSWER`] out of a request's headers (it is the link's business, not the
/// router's) and reads it; a malformed value counts as absent (answer in full, as before).
fn max_answer(headers: &mut Vec<(http::HeaderName, HeaderValue)>) -> Option<usize> {
    let at = headers
        .iter()
        .position(|(name, _)| *name == mux::MAX_ANSWER)?;
    let (_, value) = headers.swap_remove(at);
    value.to_str().ok()?.parse().ok()
}

fn to_request(frame: RequestFrame) -> Option<Request<Body>> {
    let mut request = Request::builder()
        .method(frame.method)
        .uri(frame.path)
        .body(Body::from(frame.body))
        .ok()?;
    let headers = request.headers_mut();
    for (name, value) in frame.headers {
        headers.append(name, value);
    }
    Some(request)
}

fn plain(id: u64, status: StatusCode, message: &str) -> ResponseFrame {
    let body = ErrorBody {
        detail: message.to_owned(),
        code: ErrorCode::BadGateway,
    };
    ResponseFrame {
        id,
        status,
        headers: vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    }
}
