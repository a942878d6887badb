//! The HTTP/1.1 server loop of the gateway and the servers: what `axum::serve` does, plus a
//! bound on how long a client may keep a connection without sending a request or reading
//! its answers.
//!
//! Why not `axum::serve`: it builds hyper's connections without a timer, so hyper's header read
//! timeout never runs, and a client that opens a connection and sends nothing, or half a
//! request head, or that keeps an idle keep-alive forever, holds a socket and a task for good
//! (slowloris). Here every connection gets a timer and `header_read_timeout`: hyper starts it
//! when it waits for a request head, on a new connection and after each answer, so it bounds
//! both a stalled head and an idle keep-alive. A client that stops reading its answers is
//! bounded by [`Guarded`]: a write that cannot go on for as long fails and ends the
//! connection. A request body that stops coming is bounded by [`DeadlineBody`] on the
//! servers, and by the gateway's `proxy::put` itself (which answers `408`). On a server this
//! also ends the connections a peer left half-open (it died, or a partition cut it without
//! a FIN), which nothing else would ever close. And how many connections are open at once
//! may be bounded ([`Limits::max_connections`], the gateway's `--max-connections`).
//!
//! HTTP/1.1 only: hyper-util's HTTP/1-or-2 connection reads the protocol preface with no timer
//! at all, which would leave the first bytes unbounded again, and no kvstore client or peer
//! speaks HTTP/2 in clear text.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::serve::Listener;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, watch};
use tokio::time::Sleep;
use tower::Service;

/// Seconds a client may take to send a request head, or to read its answers, unless
/// configured otherwise. Above the 60 s idle timeout most load balancers use, so one in front
/// closes a kept-alive connection before the service does, and never sends a request on a
/// connection being closed; and above the 60 s the gateway's and the servers' own client pools
/// keep an idle connection.
pub const DEFAULT_CLIENT_TIMEOUT_SECS: u64 = 75;

/// The largest request head (request line and headers) read: a larger one is answered `431`
/// (`414` for a URI over 64 KiB) with an empty body by hyper itself, and the connection
/// closed. Without it hyper reads on to its read buffer's limit, about 400 KiB (measured: a
/// 500 KB header was taken), which a few thousand connections sending large heads slowly
/// would turn into gigabytes held; a kvstore request head is a few KiB at most (a key is at
/// most 1024 bytes, three times that percent-encoded).
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// How [`serve`] bounds its clients.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a client may take to send a request head, or to read its answer.
    pub client_timeout: Duration,
    /// If given, how long a request body may keep the handler waiting for its next bytes
    /// ([`DeadlineBody`]: the handler then sees a body error). The gateway bounds its put
    /// bodies itself, to answer them `408`.
    pub body_timeout: Option<Duration>,
    /// If given, the most connections open at once: at the limit no more are accepted until
    /// one closes, so new clients wait in the listener's backlog (their connect succeeds, their
    /// first answer waits) instead of taking the file descriptors the process needs for the
    /// connections it has, its links and its files.
    pub max_connections: Option<usize>,
}

impl Limits {
    /// `client_timeout` alone: no body timeout, no connection limit.
    pub fn new(client_timeout: Duration) -> Self {
        Self {
            client_timeout,
            body_timeout: None,
            max_connections: None,
        }
    }
}

/// What [`serve`] reports of its connections, into metrics the caller registered.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    /// Connections open.
    pub open: Gauge,
    /// Times the connection limit held an accept back.
    pub limit_waits: Counter,
}

/// Warnings that the connection limit was reached: at most one per this.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// connection finish the request it is on (an idle one closes at once), and returns when all
/// have closed. `limits` bound each connection and how many are open at once.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: Listener,
    L::Io: Unpin,
{
    let Limits {
        client_timeout,
        body_timeout,
        max_connections,
    } = limits;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .keep_alive(true);
    // Dropped on shutdown: every connection task sees it and closes gracefully.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = tokio::task::JoinSet::new();
    let permits = max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let mut last_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // Taken before the accept: at the limit, the next client stays in the backlog.
        let permit = match &permits {
            None => None,
            Some(permits) => match Arc::clone(permits).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics.limit_waits.inc();
                    if last_warning.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_EVERY) {
                        last_warning = Some(Instant::now());
                        tracing::warn!(
                            limit = max_connections,
                            "client connections at the limit: new ones wait to be accepted \
                             until one closes"
                        );
                    }
                    tokio::select! {
                        permit = Arc::clone(permits).acquire_owned() => permit.ok(),
                        () = &mut shutdown => break,
                    }
                }
            },
        };
        let (io, _remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        // Reap the connections that ended, so the set holds only the open ones.
        while connections.try_join_next().is_some() {}
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut app = app.clone();
            async move {
                let request = match body_timeout {
                    // A request without a body needs no wrapper; a body that comes at once
                    // never starts the timer (it starts at the first wait).
                    Some(timeout) if !request.body().is_end_stream() => {
                        request.map(|body| Body::new(DeadlineBody::new(body, timeout)))
                    }
                    _ => request.map(Body::new),
                };
                let response = app.call(request).await;
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let io = Guarded::new(io, client_timeout);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut stop = stop_rx.clone();
        let open = Open::new(metrics.open.clone());
        connections.spawn(async move {
            // Held until the connection closes; the gauge goes down before the permit is
            // given back, so it never shows more than the limit.
            let (_open, _permit) = (open, permit);
            tokio::pin!(connection);
            tokio::select! {
                // A failed connection (reset, a timed-out head) concerns that client only.
                _ = connection.as_mut() => return,
                _ = stop.changed() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    drop(stop_tx);
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// One open connection counted in `gauge` (such as [`ConnectionMetrics::open`]), from its
/// accept until this is dropped.
pub struct Open(Gauge);

impl Open {
    pub fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A client connection whose writes may not stall for longer than `timeout`: a client that
/// stops reading (its receive window full, the socket's buffer full) gets a write error,
/// which ends the connection, instead of holding it and its task for good. Reads pass
/// through. The timer exists only while a write waits, so a flowing connection pays nothing.
pub struct Guarded<IO> {
    io: IO,
    stalled: StallTimer,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        Self {
            io,
            stalled: StallTimer::new(timeout),
        }
    }

    /// Passes `progress` through, arming the stall timer when it is pending and failing with
    /// `TimedOut` once the timer runs out.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        progress: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if progress.is_ready() {
            self.stalled.progressed();
            return progress;
        }
        if self.stalled.expired(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading its answers",
            )));
        }
        Poll::Pending
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let progress = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, progress)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let progress = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, progress)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let progress = Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, progress)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let progress = Pin::new(&mut self.io).poll_shutdown(cx);
        self.guard(cx, progress)
    }
}

/// A request body that may not keep its reader waiting for more than `timeout` at a time: a
/// client (a peer that died, one a partition cut off) that stops sending halfway makes the
/// read fail with [`BodyTimedOut`] instead of holding the handler for good. The timer starts
/// only when a read has to wait, and restarts with every frame that comes.
pub struct DeadlineBody {
    inner: Incoming,
    waiting: StallTimer,
}

impl DeadlineBody {
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            waiting: StallTimer::new(timeout),
        }
    }
}

/// What a [`DeadlineBody`] fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving for {0:?}")]
pub struct BodyTimedOut(Duration);

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            self.waiting.progressed();
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.waiting.expired(cx) {
            let timeout = self.waiting.timeout;
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long an I/O operation has waited without progress: armed at the first wait (so a
/// flowing stream never creates a timer), disarmed by progress.
struct StallTimer {
    timeout: Duration,
    waiting: Option<Pin<Box<Sleep>>>,
}

impl StallTimer {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            waiting: None,
        }
    }

    fn progressed(&mut self) {
        self.waiting = None;
    }

    /// Called when the operation is pending: true once it has waited `timeout`, after which
    /// the timer starts over.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if waiting.as_mut().poll(cx).is_ready() {
            self.waiting = None;
            return true;
        }
        false
    }
}
