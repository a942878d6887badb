//! `kvstore check`: the storage server's damage report (`kv-server check`), the same code
//! with the same flags and exit codes, so a local cluster's `./data` can be checked without
//! building another binary.

use super::exit;
use crate::{Error, Result};

pub use kv_server::check::CheckArgs;

/// 0 when every database is sound, 1 when one is damaged.
pub fn command(args: &CheckArgs) -> Result<u8> {
    let reports =
        kv_server::check::run(args, &mut std::io::stdout()).map_err(|source| Error::Server {
            name: "check".into(),
            source,
        })?;
    Ok(u8::try_from(kv_server::check::exit_code(&reports)).unwrap_or(exit::FAILURE))
}
