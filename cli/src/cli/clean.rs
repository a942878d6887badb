//! `kvstore clean`: the storage server's clean-up command (`kv-server clean`), the same code
//! with the same flags and exit codes, so a local cluster's `./data` can be emptied without
//! building another binary.

use super::exit;
use crate::{Error, Result};

pub use kv_server::clean::CleanArgs;

/// 0 when cleaned, previewed (`--dry-run`) or cancelled; 1 when a database failed; 2 when a
/// running server holds one of them (nothing is cleaned then).
pub fn command(args: &CleanArgs) -> Result<u8> {
    let stdin = std::io::stdin();
    let outcome = kv_server::clean::run(args, &mut stdin.lock(), &mut std::io::stdout()).map_err(
        |source| Error::Server {
            name: "clean-up".into(),
            source,
        },
    )?;
    Ok(u8::try_from(outcome.exit_code()).unwrap_or(exit::FAILURE))
}
