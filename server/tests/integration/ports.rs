//! Ports for servers a test starts later, on 127.0.0.1. Shared with the gateway's suite
//! (`#[path]`), which starts server processes the same way.
//!
//! Why not "bind port 0, note the port, close it": the kernel hands out that same range to
//! every `bind(0)` and every outgoing connection, and the suites hold hundreds of both (links,
//! fake members, clients) in tests that run in parallel. A port given back can be taken again
//! before its server binds it. The server then fails to start, and the test talks to whatever
//! took the port: in CI, a gateway test reached another test's server and got its
//! `421 not_primary`. So ports come from below the ephemeral range, where the kernel never
//! picks, each one once per test process, starting at a place that differs by process.

use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const LOW: u32 = 10_000;

/// A port free now that no other call in this process returns, below the kernel's ephemeral
/// range (read from `/proc`; 32768 when it cannot be read).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().max(LOW + 1_000);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free test port left below {high}");
        let port = u16::try_from(LOW + (start + n) % span).expect("below 65536");
        // Taken by something else on this machine (or in TIME_WAIT): try the next one.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The first port of `net.ipv4.ip_local_port_range`.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|&low: &u32| low <= 65_535)
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        let high = ephemeral_low().max(LOW + 1_000);
        assert!(
            ports
                .iter()
                .all(|&p| u32::from(p) >= LOW && u32::from(p) < high)
        );
    }
}
