//! What a volume holds: its size and the space an unprivileged writer may still use, for the
//! servers' metrics (an alert on a filling volume that needs no kubelet, so it works in
//! compose and on bare metal too).

use std::io;
use std::path::Path;

/// A file system's size and free space, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Everything the file system holds.
    pub total: u64,
    /// What a process without root may still write: `df`'s "Avail" (the blocks reserved
    /// for root are not counted, since kv-server runs without it).
    pub available: u64,
}

/// The space of the file system holding `path`.
#[cfg(unix)]
pub fn space(path: &Path) -> io::Result<Space> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(Space {
        total: stat.f_blocks.saturating_mul(stat.f_frsize),
        available: stat.f_bavail.saturating_mul(stat.f_frsize),
    })
}

#[cfg(not(unix))]
pub fn space(_path: &Path) -> io::Result<Space> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "free space is read on unix only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_has_a_size_and_less_available() {
        let space = space(&std::env::temp_dir()).unwrap();
        assert!(space.total > 0, "{space:?}");
        assert!(space.available <= space.total, "{space:?}");
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let err = space(Path::new("/no/such/kvstore/dir")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
