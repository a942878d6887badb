//! Partitions among the servers, with one TCP proxy per ordered pair (from, to): server
//! `from` dials `to` through it (its `--peers` URL for `to`), while the gateway dials every
//! server directly. Cutting a link blackholes it, as a dropped network does rather than a
//! closed port: new connections are accepted and held, open ones stop passing bytes, so the
//! dialler sees silence and must time out. Healed, the held connections are closed (the
//! dialler reconnects) and new ones pass.
//!
//! Proxies rather than network namespaces: they need no root, cut one direction alone, and
//! leave the gateway's view of every server untouched, which is the partition worth testing
//! (the gateway cannot tell, and keeps sending a cut-off primary its keys).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One direction of a link between two servers.
pub struct Link {
    pub port: u16,
    cut: watch::Sender<bool>,
    /// Whether the connections held silent by a cut stay silent after it heals.
    keep_held: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    /// Starts passing connections to `127.0.0.1:target`.
    pub fn start(target: u16) -> Link {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let listener = TcpListener::from_std(listener).unwrap();
        let (cut, state) = watch::channel(false);
        let target = SocketAddr::from(([127, 0, 0, 1], target));
        let keep_held = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(accept(listener, target, state, keep_held.clone()));
        Link {
            port,
            cut,
            keep_held,
            task,
        }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Heals for new connections only: those held silent by the cut stay silent and open, as
    /// a TCP connection with data in flight does after a real partition heals, until its next
    /// retransmission (TCP's backoff doubles up to two minutes; here, for good).
    pub fn heal_new_only(&self) {
        self.keep_held.store(true, Ordering::Release);
        self.heal();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    state: watch::Receiver<bool>,
    keep_held: Arc<AtomicBool>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(pass(inbound, target, state.clone(), keep_held.clone()));
    }
}

/// One connection: passed until the link is cut, then held silent until it heals (and
/// after, if `keep_held`).
async fn pass(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<bool>,
    keep_held: Arc<AtomicBool>,
) {
    if !*state.borrow() {
        // A target that is down (killed by a test) refuses: so does the link.
        let Ok(mut outbound) = TcpStream::connect(target).await else {
            return;
        };
        tokio::select! {
            _ = copy_bidirectional(&mut inbound, &mut outbound) => return,
            () = until(&mut state, true) => {}
        }
    }
    until(&mut state, false).await;
    if keep_held.load(Ordering::Acquire) {
        // Until the test ends and aborts the runtime: the socket stays open and silent.
        std::future::pending::<()>().await;
    }
    drop(inbound);
}

async fn until(state: &mut watch::Receiver<bool>, cut: bool) {
    // Only an aborted test drops the sender; then nothing waits any more.
    let _ = state.wait_for(|&now| now == cut).await;
}
