use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No decision could be made (no server answered, or the target is not a valid ring).
    #[error("{0}")]
    Plan(String),
    #[error(
        "the move did not finish within {after:?}: phase {phase}, {message} (waiting for: {})",
        waiting_for.join(", ")
    )]
    Timeout {
        after: Duration,
        phase: &'static str,
        message: String,
        waiting_for: Vec<String>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
