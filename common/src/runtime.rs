//! The tokio runtime every kvstore daemon runs on, built in one place so that its one knob,
//! the number of worker threads, means the same in the server and the gateway.
//!
//! Why a knob at all: tokio starts one worker per CPU the process may use, and that is
//! right for a daemon with the machine (or its cgroup's CPU quota) to itself. Processes that
//! share a few cores are another matter: several multi-threaded runtimes wake each other's
//! idle workers to steal work, and on the 2-core machine of `docs/benchmarks.md`, with three
//! servers, a gateway and the load generator, one worker per process cut the gateway's CPU
//! per proxied GET by about a third.

use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// A multi-threaded runtime with `workers` worker threads, or tokio's default (one per
/// CPU the process may use; `TOKIO_WORKER_THREADS` is still honoured) when `None`.
pub fn build(workers: Option<NonZeroUsize>) -> std::io::Result<Runtime> {
    let mut builder = Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = workers {
        builder.worker_threads(workers.get());
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_has_the_workers_asked_for() {
        let runtime = build(NonZeroUsize::new(3)).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 3);
        let runtime = build(NonZeroUsize::new(1)).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 1);
        assert_eq!(runtime.block_on(async { 40 + 2 }), 42);
    }
}
