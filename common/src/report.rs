//! How a kvstore binary reports the error it stops on: one line, the message and then each
//! cause, each said once. Many errors here carry their cause in their own message as well
//! (the services' JSON error details need it there), so a plain walk of the chain, as
//! anyhow's report does, would print the cause twice.

use std::error::Error;
use std::process::ExitCode;

/// `error` and its causes as `message: cause: cause`, leaving out a cause whose text the line
/// already holds.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// The exit of a binary whose `main` ran to `result`: its code, or `error: ...` ([`chain`])
/// on stderr and code 1.
pub fn exit<E>(result: Result<ExitCode, E>) -> ExitCode
where
    E: AsRef<dyn Error + Send + Sync + 'static>,
{
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Failure {
        /// Says its cause, as the servers' errors do.
        #[error("create data directory /x: {source}")]
        Repeats { source: std::io::Error },
        /// Leaves its cause to the chain.
        #[error("cannot start")]
        Wraps {
            #[source]
            source: std::io::Error,
        },
    }

    fn not_found() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn each_cause_is_said_once() {
        let repeats = Failure::Repeats {
            source: not_found(),
        };
        assert_eq!(chain(&repeats), "create data directory /x: no such file");
        let wraps = Failure::Wraps {
            source: not_found(),
        };
        assert_eq!(chain(&wraps), "cannot start: no such file");
        let nested = Failure::Wraps {
            source: std::io::Error::other(Failure::Repeats {
                source: not_found(),
            }),
        };
        assert_eq!(
            chain(&nested),
            "cannot start: create data directory /x: no such file"
        );
    }
}
