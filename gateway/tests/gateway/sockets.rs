//! What the daemons ask of the operating system: keepalive probes on every connection between
//! a gateway and a server (read back from the kernel's own table, `/proc/net/tcp`, where an
//! established socket shows timer 2 while its keepalive timer runs, and 0 without one), and
//! the open files limit raised to the hard limit at startup (read from `/proc/PID/limits`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Cluster, wait_until};
use crate::procs::server_binary;

/// An established IPv4 TCP socket of this machine, from `/proc/net/tcp`.
#[derive(Debug)]
struct Socket {
    local_port: u16,
    remote_port: u16,
    /// 0 none, 1 retransmission, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe.
    timer: u8,
    /// Until the timer fires.
    timer_left: Duration,
}

fn established() -> Vec<Socket> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next().unwrap(), 16);
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // State 01 is ESTABLISHED.
            if fields.get(3) != Some(&"01") {
                return None;
            }
            let (timer, left) = fields[5].split_once(':')?;
            Some(Socket {
                local_port: port(fields[1]).ok()?,
                remote_port: port(fields[2]).ok()?,
                timer: u8::from_str_radix(timer, 16).ok()?,
                // In clock ticks, which Linux reports at 100 a second (USER_HZ).
                timer_left: Duration::from_millis(u64::from_str_radix(left, 16).ok()? * 10),
            })
        })
        .collect()
}

#[tokio::test]
async fn every_connection_between_the_gateway_and_a_server_is_probed_at_both_ends() {
    let cluster = Cluster::start(&["s1"]).await;
    // A put and a get over the gateway's link to the server (its health checks use it too),
    // and a put over its HTTP pool: a body over 64 KiB does not go over the link.
    let response = cluster.gateway.put("/put/probed", "v".into()).send().await;
    assert!(response.unwrap().status().is_success());
    let response = cluster.gateway.get("/get/probed").send().await;
    assert!(response.unwrap().status().is_success());
    let large = "x".repeat(100 << 10);
    let response = cluster.gateway.put("/put/large", large.into()).send().await;
    assert!(response.unwrap().status().is_success());

    let server_port: u16 = cluster.servers[0]
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let of_server = || {
        established()
            .into_iter()
            .filter(|s| s.local_port == server_port || s.remote_port == server_port)
            .collect::<Vec<_>>()
    };
    // The server's end (local port its own) and the gateway's (remote port the server's) of
    // the link, and of any pooled HTTP connection. Polled, since a socket with data in flight
    // shows its retransmission timer instead for a moment.
    wait_until(
        "every socket to or from the server has a keepalive timer",
        || async {
            let sockets = of_server();
            // The link and the pooled connection, at both ends.
            let gateway_ends = sockets.iter().filter(|s| s.remote_port == server_port);
            let server_ends = sockets.iter().filter(|s| s.local_port == server_port);
            gateway_ends.count() >= 2
                && server_ends.count() >= 2
                && sockets.iter().all(|s| s.timer == 2)
        },
    )
    .await;
    for socket in of_server() {
        assert!(
            socket.timer_left <= kv_common::net::KEEPALIVE_IDLE,
            "{socket:?}: the first probe is due within {:?}",
            kv_common::net::KEEPALIVE_IDLE
        );
    }
}

/// Starts `program args` under a soft limit of 256 open files.
fn under_a_low_limit(program: &std::path::Path, args: &[&str]) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -S -n 256 && exec "$0" "$@""#)
        .arg(program)
        .args(args)
        .env("KV_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start a daemon under sh")
}

/// `(soft, hard)` from the "Max open files" line of `/proc/PID/limits`.
fn open_files_limit(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..].split_whitespace();
    Some((values.next()?.to_owned(), values.next()?.to_owned()))
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_daemons_raise_their_soft_open_files_limit_to_the_hard_one() {
    let (_, hard) = open_files_limit(std::process::id()).unwrap();
    assert!(
        hard == "unlimited" || hard.parse::<u64>().unwrap() > 256,
        "this test needs a hard limit above 256, not {hard}"
    );
    let dir = tempfile::tempdir().unwrap();
    let server_port = crate::procs::free_port();
    let server = Killed(under_a_low_limit(
        server_binary(),
        &[
            "--listen",
            &format!("127.0.0.1:{server_port}"),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
    ));
    let gateway = Killed(under_a_low_limit(
        std::path::Path::new(env!("CARGO_BIN_EXE_kv-gateway")),
        &[
            "--listen",
            &format!("127.0.0.1:{}", crate::procs::free_port()),
            "--backend",
            &format!("s1=http://127.0.0.1:{server_port}"),
        ],
    ));
    for (name, child) in [("kv-server", &server), ("kv-gateway", &gateway)] {
        let pid = child.0.id();
        // The shell sets the limit, then becomes the daemon, which raises it as it starts.
        wait_until(&format!("{name} raises its limit"), || async {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let limit = open_files_limit(pid);
            exe.file_name().is_some_and(|f| f == name)
                && limit.is_some_and(|(soft, hard)| soft == hard)
        })
        .await;
    }
}
