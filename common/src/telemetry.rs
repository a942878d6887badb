//! Tracing set-up, done once per process by each binary's `main`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format '{other}' (expected text or json)"
            )),
        }
    }
}

/// The log filters a `KvCluster` accepts (`spec.server.logLevel`, `spec.gateway.logLevel`):
/// a level, or `target=level`, comma-separated (`info,kv_server::replication=debug`). A
/// subset of what [`parse_filter`] takes, written for the API server's validation (the CRD
/// crate keeps its own copy; the operator's tests hold the two equal).
pub const LOG_FILTER_PATTERN: &str = "^(off|error|warn|info|debug|trace|[A-Za-z0-9_:]+=(off|error|warn|info|debug|trace))(,(off|error|warn|info|debug|trace|[A-Za-z0-9_:]+=(off|error|warn|info|debug|trace)))*$";

/// Checks a `--log-level` value (clap's `value_parser`): `EnvFilter` directives, except that
/// a bare word must be a level. To `EnvFilter` a bare word is a target, so a misspelt level
/// (`debg`, `verbose`) would silently turn every log off.
pub fn parse_filter(filter: &str) -> Result<String, String> {
    for directive in filter.split(',').map(str::trim) {
        let bare = !directive.is_empty() && !directive.contains(['=', '[']);
        if bare && directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "'{directive}' is not a level (off, error, warn, info, debug, trace); \
                 to set the level of one target write TARGET=LEVEL"
            ));
        }
    }
    EnvFilter::try_new(filter)
        .map(|_| filter.to_owned())
        .map_err(|e| format!("not a log filter: {e}"))
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `default_level`
/// (e.g. `info`, or `kv_server=debug,tower_http=info`). Calling it twice is harmless, so
/// tests and the all-in-one CLI can call it freely. An invalid filter is an error rather
/// than a silent fallback: a process started with the wrong logs is hard to debug later.
pub fn init(default_level: &str, format: LogFormat) -> Result<(), String> {
    let filter = filter(default_level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(colours(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ));
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // An error only means a subscriber is already installed.
    let _ = result;
    Ok(())
}

/// Whether text logs are coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (no-color.org). Escape codes in a file, a pipe, `docker
/// compose logs` or journald are noise that every search has to step around.
fn colours(stdout_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// `RUST_LOG` when it is set and not empty, else `default_level`.
pub fn filter(default_level: &str) -> Result<EnvFilter, String> {
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(from_env) if !from_env.trim().is_empty() => EnvFilter::try_new(&from_env)
            .map_err(|e| format!("RUST_LOG='{from_env}' is not a log filter: {e}")),
        _ => EnvFilter::try_new(default_level)
            .map_err(|e| format!("'{default_level}' is not a log filter: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(!colours(false, None));
        assert!(!colours(true, Some("1".into())));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(colours(true, Some("".into())));
        assert!(!colours(false, Some("".into())));
    }

    #[test]
    fn levels_and_target_levels_are_filters() {
        for good in [
            "info",
            "WARN",
            "off",
            "kv_server=debug",
            "info,kv_server::replication=trace,tower_http=warn",
            "warn,[request]=debug",
        ] {
            assert_eq!(parse_filter(good), Ok(good.to_owned()), "{good}");
        }
    }

    #[test]
    fn a_misspelt_level_is_refused_not_taken_as_a_target() {
        for bad in ["debg", "verbose", "info,kv_server", "kv_server=loud"] {
            let error = parse_filter(bad).unwrap_err();
            assert!(
                error.contains("level") || error.contains("filter"),
                "{bad}: {error}"
            );
        }
        assert!(
            parse_filter("debg")
                .unwrap_err()
                .contains("'debg' is not a level")
        );
    }

    #[test]
    fn the_crd_pattern_accepts_a_subset_of_what_the_binaries_accept() {
        let pattern = regex::Regex::new(LOG_FILTER_PATTERN).unwrap();
        let accepted = [
            "info",
            "off",
            "trace",
            "info,kv_server::replication=debug",
            "kv_gateway=debug,tower_http=warn",
        ];
        for good in accepted {
            assert!(pattern.is_match(good), "{good}");
            assert!(parse_filter(good).is_ok(), "{good}");
        }
        // Refused by the API server: typos, bare targets, span filters, spaces, empty parts.
        for refused in [
            "",
            "debg",
            "INFO",
            "kv_server",
            "info,",
            "info, warn",
            "[x]=debug",
        ] {
            assert!(!pattern.is_match(refused), "{refused}");
        }
    }
}
