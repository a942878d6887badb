//! The gateway's end of the pipelined link to each server (`kv_common::mux`): one TCP
//! connection per server (or `--links-per-server`, taken in turn) carries every request to
//! it, tagged with ids, so that under load many requests go out in one socket write and many
//! answers come back in one read, instead of one HTTP exchange each (docs/benchmarks.md, "The
//! pipelined link").
//!
//! A request's own task queues its frame and, when nobody is writing, yields once and
//! writes every frame queued by then in one call (a small task takes over only when the
//! socket is full); one task reads the link's answers and hands each to the request waiting
//! for that id. A request whose link fails
//! gets [`LinkError::Lost`] (it may have been applied, like an HTTP request whose connection
//! broke); one that the server announced it never took (its shutdown frame names the last
//! id it took) gets [`LinkError::NotTaken`] and is sent again on a new link. A server that
//! does not speak the link answers its preface with HTTP: [`LinkError::Refused`], and the
//! caller uses HTTP for that server for a while.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use kv_common::mux::{self, PREFACE, RequestFrame, ResponseFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use crate::membership::BackendUrl;
use crate::metrics::GatewayMetrics;

/// How long a server that refused the link is spoken to over HTTP before the link is tried
/// again (it may have been upgraded meanwhile).
const REFUSED_FOR: Duration = Duration::from_secs(60);
/// How long a request must have waited, with nothing read on its link meanwhile, for its
/// caller giving up to condemn the link (see [`Forget`]).
const SILENT_LINK: Duration = Duration::from_secs(2);
/// How long HTTP is used after a server closed a new link without answering its preface.
const UNANSWERED_FOR: Duration = Duration::from_secs(1);
/// Room in an answer frame beyond its body: status, headers.
const FRAME_OVERHEAD: usize = 64 << 10;

/// Why a request got no answer over a link.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// No connection could be made: the server is down.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server does not speak the link; use HTTP.
    #[error("the server does not speak the link")]
    Refused,
    /// The server closed a new link without answering its preface (only inside this
    /// module: callers see [`LinkError::Refused`] and use HTTP).
    #[error("the server closed the link at its preface")]
    Unanswered,
    /// The link broke with the request sent: it may or may not have been applied.
    #[error("link lost: {0}")]
    Lost(String),
    /// The server closed the link before taking the request: it was not applied.
    #[error("the server closed the link before taking the request")]
    NotTaken,
    /// The answer is larger than the gateway forwards (`--max-response-bytes`).
    #[error("answer too large")]
    TooLarge,
    /// The request does not fit a frame (a bug of the caller's, never sent).
    #[error("{0}")]
    Frame(#[from] mux::FrameError),
}

type Waiter = oneshot::Sender<Result<ResponseFrame, LinkError>>;

/// The links to every server, by address; cheap to share behind an `Arc`.
pub struct Links {
    servers: Mutex<HashMap<String, Arc<Lanes>>>,
    /// Links per server (`--links-per-server`).
    lanes: usize,
    connect_timeout: Duration,
    max_answer: usize,
    metrics: Arc<GatewayMetrics>,
}

/// One server's links, taken in turn. Why more than one: a server serves each link on one
/// task, so the requests of one link are handled on one core at a time; a server with more
/// cores than the gateways in front of it would otherwise leave them idle.
struct Lanes {
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

impl Lanes {
    fn new(lanes: usize) -> Lanes {
        Lanes {
            slots: (0..lanes.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The slot for the next request.
    fn pick(&self) -> &Slot {
        if self.slots.len() == 1 {
            return &self.slots[0];
        }
        &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()]
    }
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Held while connecting, so that a burst of requests opens one link, not one each.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
enum SlotState {
    #[default]
    None,
    Up(Arc<Link>),
    Refused(Instant),
}

struct Link {
    writer: OwnedWriteHalf,
    /// Frames not yet written, and whether someone is writing them.
    outbox: Mutex<Outbox>,
    /// Wakes the link's flusher task when a write would block, and when the link is dropped.
    blocked: Arc<tokio::sync::Notify>,
    /// Requests sent and not answered, by id. `open` is only changed under this lock, so a
    /// request is either registered before the link fails (and failed with it) or sees it
    /// closed and goes elsewhere.
    pending: Mutex<HashMap<u64, Waiter>>,
    open: AtomicBool,
    next_id: AtomicU64,
    /// Reads that brought bytes, for telling a silent link from a busy one.
    heard: AtomicU64,
    /// `heard` and `next_id` when [`Links::mark`] last looked at this link.
    suspected: Mutex<Option<(u64, u64)>>,
}

#[derive(Default)]
struct Outbox {
    frames: BytesMut,
    /// A caller or the flusher task is writing `frames`; others only append.
    writing: bool,
}

impl Links {
    /// `max_answer` bounds an answer's body, as `--max-response-bytes` does over HTTP;
    /// `lanes` links are opened to each server (at least one).
    pub fn new(
        connect_timeout: Duration,
        max_answer: usize,
        lanes: usize,
        metrics: Arc<GatewayMetrics>,
    ) -> Links {
        Links {
            servers: Mutex::default(),
            lanes,
            connect_timeout,
            max_answer,
            metrics,
        }
    }

    /// Sends `request` (its id is the link's to choose) to the server at `url` and waits for
    /// the answer. Dropping the future forgets the request (the caller's timeout).
    pub async fn call(
        &self,
        url: &BackendUrl,
        mut request: RequestFrame,
    ) -> Result<ResponseFrame, LinkError> {
        let lanes = self.lanes_of(url);
        let slot = lanes.pick();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let link = self.link(url, slot).await?;
            request.id = link.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            {
                let mut pending = lock(&link.pending);
                if !link.open.load(Ordering::Acquire) {
                    continue;
                }
                pending.insert(request.id, tx);
            }
            let mut forget = Forget {
                link: &link,
                id: request.id,
                sent: None,
            };
            let flush = link.queue(&request)?;
            forget.sent = Some((Instant::now(), link.heard.load(Ordering::Acquire)));
            if flush {
                // This request's task writes the queue, after letting the other tasks ready
                // on this thread queue theirs: one write then carries them all. The guard
                // writes even if this task is dropped meanwhile (its client went away):
                // the others' frames are in the queue too.
                let flusher = Flusher(&link);
                tokio::task::yield_now().await;
                drop(flusher);
            }
            let answer = rx
                .await
                .unwrap_or_else(|_| Err(LinkError::Lost("link dropped".into())));
            drop(forget);
            match answer {
                Err(LinkError::NotTaken) if attempts < 3 => continue,
                answer => return answer,
            }
        }
    }

    /// Closes the links to the servers `keep` rejects (members that left the ring): a link
    /// ends once the requests still on it are answered, and a server that comes back gets a
    /// new one. Without this, a former member's link would stay open until that server closed
    /// it, holding a connection and a task on both ends.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut servers = lock(&self.servers);
        servers.retain(|address, lanes| {
            let kept = keep(address);
            let up = |slot: &Slot| matches!(*lock(&slot.state), SlotState::Up(_));
            if !kept && lanes.slots.iter().any(up) {
                tracing::info!(server = %address, "closing the link to a former member");
            }
            kept
        });
    }

    /// Notes what each link to the server at `url` has read and sent so far, for
    /// [`Links::suspect`].
    pub fn mark(&self, url: &BackendUrl) {
        for link in self.open_links(url) {
            *lock(&link.suspected) = Some(link.progress());
        }
    }

    /// Called when the server at `url` answered over HTTP, on a connection of its own, while
    /// a request on its link went unanswered: fails each of its links that has read nothing
    /// since [`Links::mark`] although a request was sent on it since, so that the next
    /// request opens a new one; whether it failed any. How else a link hears nothing from a
    /// server that answers: a partition that healed while the link had data in flight, which
    /// TCP sends again only on a backoff that doubles up to two minutes. A server that is
    /// stalled answers neither, and one that is only slow still answers on its link, where
    /// answers go back as they finish (a health check does not wait behind puts).
    pub fn suspect(&self, url: &BackendUrl) -> bool {
        let mut failed = false;
        for link in self.open_links(url) {
            let (heard, sent) = link.progress();
            let Some((heard_then, sent_then)) = *lock(&link.suspected) else {
                continue;
            };
            if heard == heard_then && sent > sent_then {
                self.metrics.link_event("stuck");
                tracing::warn!(server = %url.host_port(),
                    "the server answers over HTTP but nothing on its link: opening a new link");
                link.fail(&LinkError::Lost(
                    "nothing heard on the link while the server answered over HTTP".into(),
                ));
                failed = true;
            }
        }
        failed
    }

    /// The open links to the server at `url`.
    fn open_links(&self, url: &BackendUrl) -> Vec<Arc<Link>> {
        let Some(lanes) = lock(&self.servers).get(url.host_port()).cloned() else {
            return Vec::new();
        };
        lanes
            .slots
            .iter()
            .filter_map(|slot| current(slot).ok().flatten())
            .collect()
    }

    fn lanes_of(&self, url: &BackendUrl) -> Arc<Lanes> {
        let mut servers = lock(&self.servers);
        // Looked up by `&str` first: no allocation on the request path once the entry exists.
        if let Some(lanes) = servers.get(url.host_port()) {
            return lanes.clone();
        }
        servers
            .entry(url.host_port().to_owned())
            .or_insert_with(|| Arc::new(Lanes::new(self.lanes)))
            .clone()
    }

    async fn link(&self, url: &BackendUrl, slot: &Slot) -> Result<Arc<Link>, LinkError> {
        if let Some(link) = current(slot)? {
            return Ok(link);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(link) = current(slot)? {
            return Ok(link);
        }
        match self.open(url).await {
            Ok(link) => {
                *lock(&slot.state) = SlotState::Up(link.clone());
                Ok(link)
            }
            Err(LinkError::Refused) => {
                self.metrics.link_event("refused");
                tracing::info!(server = %url.host_port(), "server does not speak the link; using HTTP");
                *lock(&slot.state) = SlotState::Refused(Instant::now() + REFUSED_FOR);
                Err(LinkError::Refused)
            }
            Err(LinkError::Unanswered) => {
                *lock(&slot.state) = SlotState::Refused(Instant::now() + UNANSWERED_FOR);
                Err(LinkError::Refused)
            }
            Err(err) => Err(err),
        }
    }

    async fn open(&self, url: &BackendUrl) -> Result<Arc<Link>, LinkError> {
        let address = url.host_port().to_owned();
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&address))
            .await
            .map_err(|_| {
                LinkError::Connect(format!("no connection within {:?}", self.connect_timeout))
            })?
            .map_err(|err| LinkError::Connect(err.to_string()))?;
        let _ = stream.set_nodelay(true);
        // A link may sit idle for long: probe it, so that a server that vanished without a
        // word fails it (and the next request connects afresh) instead of eating a request.
        let _ = kv_common::net::keepalive(&stream);
        let (mut reader, mut writer) = stream.into_split();
        let handshake = async {
            writer.write_all(PREFACE).await?;
            let mut echo = [0u8; PREFACE.len()];
            reader.read_exact(&mut echo).await?;
            Ok::<_, std::io::Error>(echo)
        };
        match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(echo)) if &echo == PREFACE => {}
            // An HTTP answer: a server without the link.
            Ok(Ok(_)) => return Err(LinkError::Refused),
            // Closed without a word: a server going away, a proxy with nowhere to forward
            // to, or a server without the link that answers nothing to a bad request. HTTP
            // for this request says which, with HTTP's own errors.
            Ok(Err(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Err(LinkError::Unanswered);
            }
            Ok(Err(err)) => return Err(LinkError::Connect(err.to_string())),
            Err(_) => return Err(LinkError::Connect("no answer to the link's preface".into())),
        }
        let link = Arc::new(Link {
            writer,
            outbox: Mutex::default(),
            blocked: Arc::default(),
            pending: Mutex::default(),
            open: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
            heard: AtomicU64::new(0),
            suspected: Mutex::default(),
        });
        self.metrics.link_event("opened");
        tracing::info!(server = %address, "link opened");
        // Both tasks hold the link weakly: they end with it, or when its socket fails.
        tokio::spawn(flush_blocked(Arc::downgrade(&link), link.blocked.clone()));
        tokio::spawn(read_answers(
            Arc::downgrade(&link),
            reader,
            self.max_answer + FRAME_OVERHEAD,
            address,
            self.metrics.clone(),
        ));
        Ok(link)
    }
}

/// The slot's open link, `None` to open one, or `Refused` while HTTP is in use.
fn current(slot: &Slot) -> Result<Option<Arc<Link>>, LinkError> {
    match &*lock(&slot.state) {
        SlotState::Up(link) if link.open.load(Ordering::Acquire) => Ok(Some(link.clone())),
        SlotState::Refused(until) if Instant::now() < *until => Err(LinkError::Refused),
        _ => Ok(None),
    }
}

/// Writes the link's queue when dropped: whoever set `writing` must flush, come what may.
struct Flusher<'a>(&'a Link);

impl Drop for Flusher<'_> {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// Unregisters a request whose caller stopped waiting (timeout, or its client went away),
/// so that its late answer is dropped and the table does not grow.
struct Forget<'a> {
    link: &'a Link,
    id: u64,
    /// When the frame was queued, and how many reads the link had made by then.
    sent: Option<(Instant, u64)>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let unanswered = lock(&self.link.pending).remove(&self.id).is_some();
        // Given up on after a while over a link that has read nothing since it was sent
        // (health checks alone make it read every second): the server or the way to it is
        // gone without a word, a node lost or an address moved. Drop the link, as HTTP drops
        // a connection whose request timed out, so that the next request connects afresh
        // instead of waiting on a dead socket until TCP gives up.
        if let Some((at, heard)) = self.sent
            && unanswered
            && at.elapsed() >= SILENT_LINK
            && self.link.heard.load(Ordering::Acquire) == heard
        {
            self.link.fail(&LinkError::Lost(
                "nothing heard on the link within the request's wait".into(),
            ));
        }
    }
}

impl Link {
    /// Queues `request`; `true` when the caller is to write the queue ([`Link::flush`]),
    /// nobody else being at it: a request then costs no wake-up of another task, and under
    /// load the frames that queue up meanwhile leave together.
    fn queue(&self, request: &RequestFrame) -> Result<bool, LinkError> {
        let mut outbox = lock(&self.outbox);
        mux::encode_request(&mut outbox.frames, request)?;
        if outbox.writing {
            return Ok(false);
        }
        outbox.writing = true;
        Ok(true)
    }

    /// Writes queued frames until none are left or the socket is full; in the second case
    /// the flusher task takes over. Called only by whoever set `writing`.
    fn flush(&self) {
        loop {
            let mut batch = {
                let mut outbox = lock(&self.outbox);
                if outbox.frames.is_empty() {
                    outbox.writing = false;
                    return;
                }
                outbox.frames.split()
            };
            while !batch.is_empty() {
                match self.writer.try_write(&batch) {
                    Ok(written) => batch.advance(written),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        // Put the rest back in front and let the flusher wait for room.
                        let mut outbox = lock(&self.outbox);
                        batch.unsplit(std::mem::take(&mut outbox.frames));
                        outbox.frames = batch;
                        drop(outbox);
                        self.blocked.notify_one();
                        return;
                    }
                    Err(err) => {
                        lock(&self.outbox).frames.clear();
                        self.fail(&LinkError::Lost(err.to_string()));
                        return;
                    }
                }
            }
        }
    }

    /// Reads that brought bytes, and ids handed out: what the link has heard and sent.
    fn progress(&self) -> (u64, u64) {
        (
            self.heard.load(Ordering::Acquire),
            self.next_id.load(Ordering::Relaxed),
        )
    }

    /// Closes the link for new requests and fails every waiting one with `why`; how many.
    fn fail(&self, why: &LinkError) -> usize {
        let mut pending = lock(&self.pending);
        self.open.store(false, Ordering::Release);
        let failed = pending.len();
        for (_, waiter) in pending.drain() {
            let _ = waiter.send(Err(why.clone()));
        }
        failed
    }

    /// The server's shutdown frame: nothing new is sent, requests after `last` were never
    /// taken; those up to it are still answered.
    fn going_away(&self, last: u64) {
        let mut pending = lock(&self.pending);
        self.open.store(false, Ordering::Release);
        let untaken: Vec<u64> = pending.keys().copied().filter(|id| *id > last).collect();
        for id in untaken {
            if let Some(waiter) = pending.remove(&id) {
                let _ = waiter.send(Err(LinkError::NotTaken));
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Ends the flusher task (its link is gone).
        self.blocked.notify_one();
    }
}

/// Finishes writes that found the socket full.
async fn flush_blocked(link: std::sync::Weak<Link>, blocked: Arc<tokio::sync::Notify>) {
    loop {
        blocked.notified().await;
        let Some(strong) = link.upgrade() else { return };
        if strong.writer.writable().await.is_err() {
            strong.fail(&LinkError::Lost("socket failed".into()));
            return;
        }
        strong.flush();
    }
}

async fn read_answers(
    link: std::sync::Weak<Link>,
    mut reader: OwnedReadHalf,
    max: usize,
    address: String,
    metrics: Arc<GatewayMetrics>,
) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    // Bytes still to drop of an answer over the limit.
    let mut skipping = 0usize;
    let why = 'read: loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) => break "closed by the server".to_owned(),
            Ok(_) => {}
            Err(err) => break err.to_string(),
        }
        let Some(link) = link.upgrade() else { return };
        link.heard.fetch_add(1, Ordering::Release);
        loop {
            if skipping > 0 {
                let dropped = skipping.min(buf.len());
                buf.advance(dropped);
                skipping -= dropped;
                if skipping > 0 {
                    break;
                }
            }
            // Too large an answer fails its own request, as over HTTP, not the link.
            if let Some((id, length)) = mux::oversized(&buf, max) {
                if let Some(waiter) = lock(&link.pending).remove(&id) {
                    let _ = waiter.send(Err(LinkError::TooLarge));
                }
                skipping = length;
                continue;
            }
            match mux::decode_response(&mut buf, max) {
                Ok(Some(frame)) if frame.id == mux::GOAWAY_ID => {
                    let last = mux::goaway_last(&frame).unwrap_or(0);
                    tracing::info!(server = %address, last, "server closing the link");
                    metrics.link_event("goaway");
                    link.going_away(last);
                }
                Ok(Some(frame)) => {
                    if let Some(waiter) = lock(&link.pending).remove(&frame.id) {
                        let _ = waiter.send(Ok(frame));
                    }
                }
                Ok(None) => break,
                Err(err) => break 'read err.to_string(),
            }
        }
    };
    metrics.link_event("closed");
    let failed = link
        .upgrade()
        .map_or(0, |link| link.fail(&LinkError::Lost(why.clone())));
    if failed > 0 {
        tracing::warn!(server = %address, %why, failed, "link closed with requests in flight; their outcome is unknown");
    } else {
        tracing::info!(server = %address, %why, "link closed");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves nothing half-done worth refusing to read.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http::{Method, StatusCode};
    use tokio::net::TcpListener;

    use super::*;

    fn request(path: &str) -> RequestFrame {
        RequestFrame {
            id: 0,
            method: Method::GET,
            path: path.into(),
            headers: vec![],
            body: Bytes::new(),
        }
    }

    /// The link says "use HTTP" for a call to `url`.
    async fn assert_refused(links: &Links, url: &BackendUrl) {
        let call = links.call(url, request("/get/a")).await;
        assert!(matches!(call, Err(LinkError::Refused)), "{call:?}");
    }

    fn links() -> Arc<Links> {
        let metrics =
            GatewayMetrics::register(&mut prometheus_client::registry::Registry::default());
        Arc::new(Links::new(Duration::from_secs(2), 1 << 20, 1, metrics))
    }

    /// A fake server's end of one link: the preface, then frames read until `count`.
    async fn take_frames(
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        count: usize,
    ) -> Vec<RequestFrame> {
        let mut frames = Vec::new();
        while frames.len() < count {
            while let Some(frame) = mux::decode_request(buf, 1 << 20).unwrap() {
                frames.push(frame);
            }
            if frames.len() < count && stream.read_buf(buf).await.unwrap() == 0 {
                break;
            }
        }
        frames
    }

    async fn accept_link(listener: &TcpListener) -> (TcpStream, BytesMut) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; PREFACE.len()];
        stream.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, PREFACE);
        stream.write_all(PREFACE).await.unwrap();
        (stream, BytesMut::new())
    }

    fn answer(out: &mut BytesMut, frame: &RequestFrame) {
        let answer = ResponseFrame {
            id: frame.id,
            status: StatusCode::OK,
            headers: vec![],
            body: Bytes::from(frame.path.clone()),
        };
        mux::encode_response(out, &answer).unwrap();
    }

    async fn fake<F, Fut>(handler: F) -> BackendUrl
    where
        F: FnOnce(TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = BackendUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(handler(listener));
        url
    }

    #[tokio::test]
    async fn answers_go_to_their_callers_whatever_their_order() {
        let url = fake(|listener: TcpListener| async move {
            let (mut stream, mut buf) = accept_link(&listener).await;
            let frames = take_frames(&mut stream, &mut buf, 3).await;
            let mut out = BytesMut::new();
            for frame in frames.iter().rev() {
                answer(&mut out, frame);
            }
            stream.write_all(&out).await.unwrap();
            let _ = stream.read_buf(&mut buf).await;
        })
        .await;
        let links = links();
        let calls = ["/get/a", "/get/b", "/get/c"].map(|path| {
            let (links, url) = (links.clone(), url.clone());
            tokio::spawn(async move { links.call(&url, request(path)).await })
        });
        for (call, path) in calls.into_iter().zip(["/get/a", "/get/b", "/get/c"]) {
            let answer = call.await.unwrap().unwrap();
            assert_eq!(answer.body, path.as_bytes());
        }
    }

    #[tokio::test]
    async fn a_link_silent_through_a_given_up_request_is_dropped_a_busy_one_is_kept() {
        let waited = SILENT_LINK + Duration::from_millis(200);
        // Silent: takes the request, never says a word again (a node gone). The next request
        // must not wait on that socket: it gets a new link.
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let url = fake(move |listener: TcpListener| async move {
            let mut held = Vec::new();
            loop {
                let (mut stream, mut buf) = accept_link(&listener).await;
                counter.fetch_add(1, Ordering::SeqCst);
                take_frames(&mut stream, &mut buf, 1).await;
                held.push(stream);
            }
        })
        .await;
        let silent = links();
        let call = tokio::time::timeout(waited, silent.call(&url, request("/get/a")));
        assert!(call.await.is_err());
        assert!(
            current(&silent.lanes_of(&url).slots[0]).unwrap().is_none(),
            "the silent link is dropped"
        );
        let again = tokio::time::timeout(
            Duration::from_millis(300),
            silent.call(&url, request("/get/b")),
        );
        assert!(again.await.is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new link was opened");

        // Busy: one request is never answered, but others are meanwhile: the server is alive
        // and the link stays.
        let url = fake(|listener: TcpListener| async move {
            let (mut stream, mut buf) = accept_link(&listener).await;
            loop {
                let frames = take_frames(&mut stream, &mut buf, 1).await;
                let Some(frame) = frames.first() else { return };
                if frame.path != "/get/slow" {
                    let mut out = BytesMut::new();
                    answer(&mut out, frame);
                    stream.write_all(&out).await.unwrap();
                }
            }
        })
        .await;
        let busy = links();
        let slow = {
            let (busy, url) = (busy.clone(), url.clone());
            tokio::spawn(async move {
                tokio::time::timeout(waited, busy.call(&url, request("/get/slow"))).await
            })
        };
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                busy.call(&url, request("/get/fast")).await.unwrap().body,
                "/get/fast"
            );
        }
        assert!(slow.await.unwrap().is_err());
        assert!(
            current(&busy.lanes_of(&url).slots[0]).unwrap().is_some(),
            "the busy link is kept"
        );
    }

    #[tokio::test]
    async fn links_to_former_members_close_once_their_requests_are_answered() {
        // Each fake answers every request, and reports when the gateway closed its link.
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        let mut urls = Vec::new();
        for name in ["kept", "former"] {
            let closed_tx = closed_tx.clone();
            urls.push(
                fake(move |listener: TcpListener| async move {
                    let (mut stream, mut buf) = accept_link(&listener).await;
                    loop {
                        let frames = take_frames(&mut stream, &mut buf, 1).await;
                        let Some(frame) = frames.first() else { break };
                        // The slow request is answered only after the retain below.
                        if frame.path == "/get/slow" {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        let mut out = BytesMut::new();
                        answer(&mut out, frame);
                        stream.write_all(&out).await.unwrap();
                    }
                    closed_tx.send(name).unwrap();
                })
                .await,
            );
        }
        let links = links();
        for url in &urls {
            links.call(url, request("/get/a")).await.unwrap();
        }
        let slow = {
            let (links, url) = (links.clone(), urls[1].clone());
            tokio::spawn(async move { links.call(&url, request("/get/slow")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let kept = urls[0].host_port().to_owned();
        links.retain(|address| address == kept);

        // The request in flight on the former member's link still gets its answer, then the
        // link closes; the kept one stays open and usable.
        assert_eq!(slow.await.unwrap().unwrap().body, "/get/slow");
        let first_closed = tokio::time::timeout(Duration::from_secs(5), closed.recv()).await;
        assert_eq!(first_closed.unwrap(), Some("former"));
        assert_eq!(
            links.call(&urls[0], request("/get/b")).await.unwrap().body,
            "/get/b"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(200), closed.recv())
                .await
                .is_err(),
            "the kept link stays open"
        );
        assert_eq!(lock(&links.servers).len(), 1);
    }

    /// `--links-per-server 3`: three links, requests taken in turn, each answered on the
    /// link it came by.
    #[tokio::test]
    async fn requests_are_spread_over_the_links_of_a_server_in_turn() {
        let (served_tx, mut served) = tokio::sync::mpsc::unbounded_channel();
        let url = fake(move |listener: TcpListener| async move {
            for connection in 0.. {
                let (mut stream, mut buf) = accept_link(&listener).await;
                let served_tx = served_tx.clone();
                tokio::spawn(async move {
                    loop {
                        let frames = take_frames(&mut stream, &mut buf, 1).await;
                        let Some(frame) = frames.first() else { break };
                        served_tx.send((connection, frame.path.clone())).unwrap();
                        let mut out = BytesMut::new();
                        answer(&mut out, frame);
                        stream.write_all(&out).await.unwrap();
                    }
                });
            }
        })
        .await;
        let metrics =
            GatewayMetrics::register(&mut prometheus_client::registry::Registry::default());
        let links = Links::new(Duration::from_secs(2), 1 << 20, 3, metrics);
        for n in 0..9 {
            let path = format!("/get/{n}");
            assert_eq!(links.call(&url, request(&path)).await.unwrap().body, path);
        }
        let mut per_link = HashMap::new();
        for _ in 0..9 {
            let (connection, _) = served.recv().await.unwrap();
            *per_link.entry(connection).or_insert(0) += 1;
        }
        assert_eq!(per_link, HashMap::from([(0, 3), (1, 3), (2, 3)]));
        assert_eq!(lock(&links.servers).len(), 1);
    }

    #[tokio::test]
    async fn too_large_an_answer_fails_its_request_not_the_link() {
        let url = fake(|listener: TcpListener| async move {
            let (mut stream, mut buf) = accept_link(&listener).await;
            let frames = take_frames(&mut stream, &mut buf, 2).await;
            let mut out = BytesMut::new();
            let huge = ResponseFrame {
                id: frames[0].id,
                status: StatusCode::OK,
                headers: vec![],
                body: Bytes::from(vec![b'x'; 2 << 20]),
            };
            mux::encode_response(&mut out, &huge).unwrap();
            answer(&mut out, &frames[1]);
            // In small pieces, so the reader drops the big one across several reads.
            for piece in out.chunks(100_000) {
                stream.write_all(piece).await.unwrap();
            }
            let _ = stream.read_buf(&mut buf).await;
        })
        .await;
        let links = links();
        let (big, small) = tokio::join!(
            links.call(&url, request("/get/big")),
            links.call(&url, request("/get/small")),
        );
        assert!(matches!(big, Err(LinkError::TooLarge)));
        assert_eq!(small.unwrap().body, "/get/small");
    }

    #[tokio::test]
    async fn a_server_without_the_link_is_refused_and_remembered() {
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let url = fake(move |listener: TcpListener| async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                // What hyper answers to bytes that are not HTTP.
                let mut first = [0u8; 9];
                let _ = stream.read_exact(&mut first).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        })
        .await;
        let links = links();
        assert_refused(&links, &url).await;
        assert_refused(&links, &url).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the refusal is remembered"
        );
    }

    #[tokio::test]
    async fn a_link_closed_at_its_preface_means_http_for_a_moment_only() {
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let url = fake(move |listener: TcpListener| async move {
            loop {
                // Accepted and closed at once: a forwarder with nowhere to go.
                drop(listener.accept().await.unwrap());
                counter.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await;
        let links = links();
        assert_refused(&links, &url).await;
        assert_refused(&links, &url).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        tokio::time::sleep(UNANSWERED_FOR + Duration::from_millis(100)).await;
        assert_refused(&links, &url).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the link is tried again"
        );
    }

    #[tokio::test]
    async fn requests_the_server_never_took_are_sent_again_on_a_new_link() {
        let url = fake(|listener: TcpListener| async move {
            // First link: two requests arrive, the first is answered, then the server shuts
            // down having taken only that one.
            let (mut stream, mut buf) = accept_link(&listener).await;
            let frames = take_frames(&mut stream, &mut buf, 2).await;
            let mut out = BytesMut::new();
            answer(&mut out, &frames[0]);
            mux::encode_response(&mut out, &mux::goaway(frames[0].id)).unwrap();
            stream.write_all(&out).await.unwrap();
            drop(stream);
            // Second link: answers what comes.
            let (mut stream, mut buf) = accept_link(&listener).await;
            let frames = take_frames(&mut stream, &mut buf, 1).await;
            let mut out = BytesMut::new();
            answer(&mut out, &frames[0]);
            stream.write_all(&out).await.unwrap();
            let _ = stream.read_buf(&mut buf).await;
        })
        .await;
        let links = links();
        let (first, second) = tokio::join!(
            links.call(&url, request("/get/first")),
            links.call(&url, request("/get/second")),
        );
        assert_eq!(first.unwrap().body, "/get/first");
        assert_eq!(second.unwrap().body, "/get/second");
    }

    #[tokio::test]
    async fn a_broken_link_fails_what_it_carried_and_the_next_call_reconnects() {
        let url = fake(|listener: TcpListener| async move {
            let (mut stream, mut buf) = accept_link(&listener).await;
            take_frames(&mut stream, &mut buf, 1).await;
            drop(stream); // crashed with the request taken
            let (mut stream, mut buf) = accept_link(&listener).await;
            let frames = take_frames(&mut stream, &mut buf, 1).await;
            let mut out = BytesMut::new();
            answer(&mut out, &frames[0]);
            stream.write_all(&out).await.unwrap();
            let _ = stream.read_buf(&mut buf).await;
        })
        .await;
        let links = links();
        assert!(matches!(
            links.call(&url, request("/get/a")).await,
            Err(LinkError::Lost(_))
        ));
        assert_eq!(
            links.call(&url, request("/get/b")).await.unwrap().body,
            "/get/b"
        );
    }

    #[tokio::test]
    async fn no_listener_is_a_connect_error_and_a_forgotten_request_leaves_nothing_behind() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = BackendUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        assert!(matches!(
            links().call(&url, request("/get/a")).await,
            Err(LinkError::Connect(_))
        ));

        // A server that never answers: the caller gives up (its timeout), and its entry goes.
        let url = fake(|listener: TcpListener| async move {
            let (mut stream, mut buf) = accept_link(&listener).await;
            take_frames(&mut stream, &mut buf, 1).await;
            std::future::pending::<()>().await;
        })
        .await;
        let links = links();
        let call = tokio::time::timeout(
            Duration::from_millis(200),
            links.call(&url, request("/get/a")),
        );
        assert!(call.await.is_err());
        let lanes = links.lanes_of(&url);
        let Ok(Some(link)) = current(&lanes.slots[0]) else {
            panic!("the link stays open")
        };
        assert!(lock(&link.pending).is_empty());
    }
}
