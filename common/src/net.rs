//! TCP settings and process limits every kvstore daemon shares.
//!
//! Keepalive: a peer whose machine died, or that a partition cut off, sends no FIN, and a
//! connection to it that carries no data looks healthy for good (Linux starts probing after
//! two hours, if asked at all). The gateway's links to the servers are such connections: the
//! gateway keeps one open, idle or not, so a server would hold a link (a socket and a task)
//! for every gateway that ever vanished, and a gateway would send its next request into a
//! dead link and wait out its request timeout. With [`keepalive`] on both ends of a link and
//! on every connection a server accepts, and [`keepalive_connector`] on every client pool
//! between kvstore processes, a dead peer is found within [`DEAD_PEER_AFTER`] of its last
//! word. Where [`keepalive`] sets `TCP_USER_TIMEOUT` as well, that holds also when the silence
//! began with data in flight (which keepalive alone leaves to the retransmission timeout,
//! about a quarter of an hour).
//!
//! Open files: each client connection, link, and database file is a file descriptor, and
//! many container runtimes start processes with a soft limit of 1024 under a far higher hard
//! one (Go's runtime raises it by itself; Rust's does not). [`raise_open_files_limit`] lifts
//! the soft limit to the hard one at startup.

use std::io;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Silence after which the first keepalive probe goes out.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection is dropped.
pub const KEEPALIVE_PROBES: u32 = 3;
/// How long after its last word a dead peer is found: the idle time and every probe.
pub const DEAD_PEER_AFTER: Duration = Duration::from_secs(
    KEEPALIVE_IDLE.as_secs() + KEEPALIVE_PROBES as u64 * KEEPALIVE_INTERVAL.as_secs(),
);

fn keepalive_params() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES)
}

/// Turns keepalive probes on for `stream`, and on Linux bounds unacknowledged data by
/// the same time, so that a dead peer is found within [`DEAD_PEER_AFTER`] whether the
/// connection was idle or sending. The connection then fails with an I/O error, as if reset.
pub fn keepalive(stream: &TcpStream) -> io::Result<()> {
    let socket = SockRef::from(stream);
    socket.set_tcp_keepalive(&keepalive_params())?;
    // Set together with keepalive, as tcp(7) advises: the user timeout then also decides
    // when probing gives up, so the two agree.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket.set_tcp_user_timeout(Some(DEAD_PEER_AFTER))?;
    Ok(())
}

/// The same probes on every connection `connector` opens, so that a pooled connection to a
/// peer that vanished is dropped rather than handed to the next request (hyper's connector
/// sets no user timeout; its requests carry their own timeouts).
pub fn keepalive_connector(connector: &mut HttpConnector) {
    connector.set_keepalive(Some(KEEPALIVE_IDLE));
    connector.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    connector.set_keepalive_retries(Some(KEEPALIVE_PROBES));
}

/// The open files limit before and after [`raise_open_files_limit`]; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: Option<u64>,
    pub after: Option<u64>,
}

/// Raises this process's soft limit on open files to its hard limit (or, with no hard limit,
/// to the most the kernel allows one process, `fs.nr_open`). Never lowers it.
#[cfg(unix)]
pub fn raise_open_files_limit() -> io::Result<OpenFiles> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    let target = match limit.maximum {
        Some(maximum) => Some(maximum),
        // Linux refuses an unlimited soft limit on open files.
        None if cfg!(target_os = "linux") => std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok()),
        None => None,
    };
    let raise = match (before, target) {
        (Some(current), Some(target)) => target > current,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !raise {
        return Ok(OpenFiles {
            before,
            after: before,
        });
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: target,
            maximum: limit.maximum,
        },
    )?;
    Ok(OpenFiles {
        before,
        after: getrlimit(Resource::Nofile).current,
    })
}

#[cfg(not(unix))]
pub fn raise_open_files_limit() -> io::Result<OpenFiles> {
    Ok(OpenFiles {
        before: None,
        after: None,
    })
}

/// This process's soft limit on open files; `None` when unlimited (or unknown off Unix).
pub fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Logs what [`raise_open_files_limit`] did, for a daemon's startup.
pub fn raise_open_files_limit_and_log() {
    match raise_open_files_limit() {
        Ok(OpenFiles { before, after }) if before != after => {
            tracing::info!(?before, ?after, "raised the open files limit");
        }
        Ok(OpenFiles { after, .. }) => tracing::debug!(limit = ?after, "open files limit"),
        Err(err) => tracing::warn!(%err, "could not raise the open files limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_sets_the_probes_and_the_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let socket = SockRef::from(&stream);
        assert!(!socket.keepalive().unwrap());

        keepalive(&stream).unwrap();
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        #[cfg(target_os = "linux")]
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(DEAD_PEER_AFTER));
    }

    #[test]
    fn dead_peer_after_is_the_idle_time_and_every_probe() {
        assert_eq!(
            DEAD_PEER_AFTER,
            KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES
        );
    }
}
