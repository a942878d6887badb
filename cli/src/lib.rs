//! The `kvstore` command as a library: argument parsing and dispatch in [`cli`], and the engines
//! behind the subcommands, so tests and other tools can call them without a process:
//! [`cluster`] (`kvstore up`: servers and gateway in-process), [`client`] (the HTTP client of
//! `put`/`get`/...), [`bench`] (the load generator).

pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;

use std::path::PathBuf;
use std::time::Duration;

use cli::exit;

/// Everything that can go wrong in the `kvstore` command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value out of range, or flags that contradict each other.
    #[error("{0}")]
    Config(String),
    #[error("invalid URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// Some keys could not be written before measuring, so reads would get 404s.
    #[error("warm-up failed: {failed} of {keys} key writes failed ({causes})")]
    Warmup {
        failed: u64,
        keys: usize,
        causes: String,
    },
    /// The bench ran but not a single request got a 2xx answer.
    #[error("every request failed ({causes})")]
    AllFailed { causes: String },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),

    // --- client commands ---
    /// Nothing answers at the URL: the message says what to do about it.
    #[error("cannot reach {url} ({cause}): is `kvstore up` running?")]
    Unreachable { url: String, cause: String },
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("request to {url} failed: {cause}")]
    Request { url: String, cause: String },
    /// The service answered with an error status; `detail` and `code` come from its JSON body.
    #[error("{detail} (HTTP {status}{})", if code.is_empty() { String::new() } else { format!(", {code}") })]
    Http {
        status: u16,
        code: String,
        detail: String,
    },
    /// A 2xx answer that is not what the API promises (e.g. `--url` points at something else).
    #[error("unexpected answer from {url}: {why}")]
    Protocol { url: String, why: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    // --- kvstore up ---
    #[error(
        "data directory {} is in use by another process (another `kvstore up`, a kv-server or \
         a clean-up): stop it, or pick another --data-dir",
        path.display()
    )]
    DataDirInUse { path: PathBuf },
    #[error(
        "cannot listen on {addr} (is `kvstore up` already running? --listen and --server-port pick other ports)"
    )]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} failed")]
    Server {
        name: String,
        #[source]
        source: kv_server::Error,
    },
    #[error("the gateway failed")]
    Gateway(#[source] kv_gateway::Error),
    #[error("{0}")]
    Internal(String),
    /// The shutdown signal came before the cluster was up.
    #[error("interrupted while starting")]
    Interrupted,
}

impl Error {
    /// The process exit code for this error: see [`cli::exit`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Url { .. } => exit::USAGE,
            Error::Http {
                status: 404, code, ..
            } if code == "key_not_found" || code == "version_not_found" => exit::NOT_FOUND,
            Error::Http { status: 412, .. } => exit::CONFLICT,
            Error::Http { status, .. } if (400..500).contains(status) && *status != 404 => {
                exit::USAGE
            }
            _ => exit::FAILURE,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
