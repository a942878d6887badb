//! The load itself: `connections` workers, each a tokio task driving its own HTTP/1.1 connection
//! with one request in flight, through an optional warm-up phase and the measured phase.
//!
//! A worker owns its connection rather than sharing a pooled client: no pool lock per request,
//! and exactly one connection per worker. With `--client raw` (the default) the connection is
//! the bench's own ([`super::wire`]), written and read by the worker's task; with `--client
//! hyper`, a raw `hyper::client::conn::http1` connection, which runs in a task of its own. A
//! connection that breaks or times out is dropped and a new one is made for the next request;
//! connection time is never part of a request's latency.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::TcpStream;

use super::config::{Client, Stop};
use super::stats::{Failure, Op, WorkerStats};
use super::wire;
use super::workload::Workload;

/// Pause after a failed connection attempt, so that a server that is down is not hammered with
/// connection attempts (and the error count means something).
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest a worker sleeps waiting for its next request under `--rate` before it looks at the
/// stop flag again.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// A raw connection that waited this long is checked before reuse, in case the server closed
/// it meanwhile (servers close idle keep-alives after seconds, not milliseconds).
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// State shared read-only (but for the stop flag) by all workers.
pub struct Shared {
    pub addr: SocketAddr,
    pub workload: Workload,
    pub timeout: Duration,
    pub client: Client,
    /// Set on Ctrl-C: workers finish the request in flight and stop.
    pub stop: AtomicBool,
}

/// What the workers of one phase do, and when they stop.
pub enum Phase {
    /// PUT every key once: workers take the next unwritten key until none is left.
    Warmup { next_key: AtomicUsize },
    /// The measured mix, until the deadline or until `left` requests have been sent (only one
    /// of them is set, so a timed run shares no counter between workers).
    Measure {
        deadline: Option<Instant>,
        left: Option<AtomicU64>,
        pace: Option<Pace>,
    },
}

/// When each request of an open-loop run (`--rate`) is due: evenly spaced over all
/// connections, worker `w`'s `k`-th request at `start + (w + k * connections) / rate`, so the
/// workers take turns instead of sending in bursts.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    start: Instant,
    rate: f64,
    connections: usize,
}

impl Pace {
    pub fn new(start: Instant, rate: f64, connections: usize) -> Self {
        Self {
            start,
            rate,
            connections,
        }
    }

    fn due(&self, worker: usize, k: u64) -> Instant {
        let slot = worker as f64 + k as f64 * self.connections as f64;
        self.start + Duration::from_secs_f64(slot / self.rate)
    }
}

impl Phase {
    /// The measured phase from `now`, paced at `rate` requests per second over `connections`
    /// workers if a rate is given.
    pub fn measure(stop: Stop, now: Instant, rate: Option<f64>, connections: usize) -> Self {
        let pace = rate.map(|rate| Pace::new(now, rate, connections));
        match stop {
            Stop::Duration(d) => Phase::Measure {
                deadline: Some(now + d),
                left: None,
                pace,
            },
            Stop::Requests(n) => Phase::Measure {
                deadline: None,
                left: Some(AtomicU64::new(n)),
                pace,
            },
        }
    }

    /// When worker `worker`'s `k`-th request is due, under `--rate`; `None` (send at once)
    /// without it. `Err` when it is due after the phase's end: the worker is done.
    fn due(&self, worker: usize, k: u64) -> Result<Option<Instant>, ()> {
        let Phase::Measure {
            deadline,
            pace: Some(pace),
            ..
        } = self
        else {
            return Ok(None);
        };
        let due = pace.due(worker, k);
        if deadline.is_some_and(|d| due >= d) {
            return Err(());
        }
        Ok(Some(due))
    }

    /// The next request to send, or `None` when the phase is over for this worker.
    fn next(&self, shared: &Shared, rng: &mut SmallRng) -> Option<(Op, usize)> {
        if shared.stop.load(Relaxed) {
            return None;
        }
        match self {
            Phase::Warmup { next_key } => {
                let key = next_key.fetch_add(1, Relaxed);
                (key < shared.workload.keys.len()).then_some((Op::Put, key))
            }
            Phase::Measure { deadline, left, .. } => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
                if let Some(left) = left {
                    left.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                        .ok()?;
                }
                Some(shared.workload.next(rng))
            }
        }
    }
}

/// A worker's connection, kept across phases so the measured phase starts warm.
#[derive(Default)]
pub struct Conn {
    link: Option<Link>,
}

enum Link {
    Raw(wire::Connection),
    Hyper(SendRequest<Full<Bytes>>),
}

impl Conn {
    /// A connection ready for a request: the current one, or a new one if it was closed.
    async fn ready(&mut self, shared: &Shared) -> Option<&mut Link> {
        let alive = match &mut self.link {
            // Busy connections skip the check: it costs a system call per request.
            Some(Link::Raw(connection)) => {
                connection.idle() < IDLE_CHECK || connection.still_open()
            }
            Some(Link::Hyper(sender)) => sender.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            let connect = async {
                match shared.client {
                    Client::Raw => wire::Connection::connect(shared.addr)
                        .await
                        .ok()
                        .map(Link::Raw),
                    Client::Hyper => connect(shared.addr).await.map(Link::Hyper),
                }
            };
            self.link = tokio::time::timeout(shared.timeout, connect)
                .await
                .ok()
                .flatten();
        }
        self.link.as_mut()
    }
}

async fn connect(addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    // Requests are small and latency is what is measured: don't let Nagle hold them back.
    stream.set_nodelay(true).ok()?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    // The connection task ends when the sender is dropped or the server closes.
    tokio::spawn(connection);
    sender.ready().await.ok()?;
    Some(sender)
}

/// Locks a worker's stats. A worker that panicked cannot have left them half-updated in a way
/// that matters for counters, so poisoning is ignored.
pub fn lock(stats: &Mutex<WorkerStats>) -> MutexGuard<'_, WorkerStats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One worker, the `index`-th: sends the phase's requests one after the other on `conn` (each
/// when it is due under `--rate`), counting outcomes in `stats`, and hands the connection back
/// at the end of the phase.
pub async fn work(
    shared: Arc<Shared>,
    phase: Arc<Phase>,
    index: usize,
    mut conn: Conn,
    stats: Arc<Mutex<WorkerStats>>,
) -> Conn {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let json = HeaderValue::from_static("application/json");
    for k in 0.. {
        let Ok(due) = phase.due(index, k) else {
            break;
        };
        // Under `--rate`, when the latency counts from. A worker behind its schedule (a slow
        // answer held it) sends at once, and counts from when the request was due: that wait
        // is the system's. A worker ahead of it sleeps until the request is due and counts from
        // when it woke, since the timer's lateness (up to a millisecond) is the load
        // generator's, not the system's.
        let counted_from = match due {
            Some(due) if Instant::now() < due => {
                // In steps, so that Ctrl-C is seen within one even at a slow rate.
                while let Some(left) = due.checked_duration_since(Instant::now()) {
                    if left.is_zero() || shared.stop.load(Relaxed) {
                        break;
                    }
                    tokio::time::sleep(left.min(STOP_CHECK)).await;
                }
                Some(Instant::now())
            }
            due => due,
        };
        let Some((op, key)) = phase.next(&shared, &mut rng) else {
            break;
        };
        let Some(link) = conn.ready(&shared).await else {
            lock(&stats).op_mut(op).record_failure(Failure::Connect);
            tokio::time::sleep(CONNECT_BACKOFF).await;
            continue;
        };
        let workload = &shared.workload;
        let body = match op {
            Op::Get => Bytes::new(),
            Op::Put => workload.body(&mut rng),
        };

        let started = Instant::now();
        let outcome = match link {
            Link::Raw(connection) => {
                let path = workload.keys.path(op, key);
                let host = workload.host.as_bytes();
                let exchange = connection.exchange(op, path, host, &body);
                tokio::time::timeout(shared.timeout, exchange).await
            }
            Link::Hyper(sender) => {
                let mut request = Request::new(Full::new(body));
                *request.uri_mut() = workload.keys.uri(op, key);
                request.headers_mut().insert(HOST, workload.host.clone());
                if op == Op::Put {
                    *request.method_mut() = Method::PUT;
                    request.headers_mut().insert(CONTENT_TYPE, json.clone());
                }
                let exchange = exchange(sender, request);
                tokio::time::timeout(shared.timeout, exchange).await
            }
        };
        let ended = Instant::now();
        match outcome.unwrap_or(Err(Failure::Timeout)) {
            Ok(answer) => {
                if !answer.reusable {
                    conn.link = None;
                }
                let mut stats = lock(&stats);
                let stats = stats.op_mut(op);
                let latency = ended.duration_since(counted_from.unwrap_or(started));
                stats.record_answer(answer.status, answer.code.as_deref(), latency);
                if counted_from.is_some() && (200..300).contains(&answer.status) {
                    stats.record_service(ended.duration_since(started));
                }
            }
            Err(failure) => {
                // The connection's state is unknown (a half-read answer, a stuck server):
                // start over on a new one.
                conn.link = None;
                lock(&stats).op_mut(op).record_failure(failure);
            }
        }
    }
    conn
}

/// Sends `request` and reads the whole answer, discarding the body without buffering it,
/// except an error's (up to [`super::stats::MAX_ERROR_BODY`]), for its `code`. hyper's
/// connection task closes a connection that is not reusable by itself.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<wire::Answer, Failure> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| Failure::Io)?;
    let status = response.status().as_u16();
    let mut kept = (!response.status().is_success()).then(Vec::new);
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Failure::Io)?;
        if let Some(data) = frame.data_ref() {
            wire::keep(kept.as_mut(), data);
        }
    }
    Ok(wire::Answer {
        status,
        reusable: true,
        code: kept.as_deref().and_then(super::stats::error_code),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_requests_take_turns_across_workers() {
        let start = Instant::now();
        let pace = Pace::new(start, 1000.0, 4);
        let at = |worker, k| pace.due(worker, k).duration_since(start);
        assert_eq!(at(0, 0), Duration::ZERO);
        assert_eq!(at(1, 0), Duration::from_millis(1));
        assert_eq!(at(3, 0), Duration::from_millis(3));
        assert_eq!(at(0, 1), Duration::from_millis(4));
        assert_eq!(at(2, 250), Duration::from_millis(1002));
    }

    #[test]
    fn a_paced_phase_ends_with_the_last_request_due_before_its_deadline() {
        let start = Instant::now();
        let phase = Phase::measure(Stop::Duration(Duration::from_secs(1)), start, Some(10.0), 2);
        // Due every 100 ms in turn: worker 0 at 0, 200, ..., 800 ms; worker 1 at 100 ... 900.
        assert!(matches!(phase.due(0, 4), Ok(Some(_))));
        assert_eq!(phase.due(0, 5), Err(()));
        assert!(matches!(phase.due(1, 4), Ok(Some(_))));
        assert_eq!(phase.due(1, 5), Err(()));
        // Without a rate, nothing is due: send at once.
        let closed = Phase::measure(Stop::Requests(5), start, None, 2);
        assert_eq!(closed.due(0, 1_000_000), Ok(None));
    }
}
