//! The `kvstore` command as a library: argument parsing and dispatch in [`cli`], one module per
//! subcommand's engine (for now [`bench`], the load generator), so tests and other tools can call
//! them without a process.

pub mod bench;
pub mod cli;

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
