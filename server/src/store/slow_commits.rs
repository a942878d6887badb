//! Tells the operator when commits are slow: a disk that stalls (a cloud volume out of burst
//! credits, a failing device, a host under memory pressure) shows first as puts that wait, and
//! the metrics only say so to someone who looks. The writer logs a warning for a commit that
//! takes [`SLOW_COMMIT`] or more, at most once per [`REPORT_EVERY`], with the count and the
//! worst since the last line, so a disk that stays slow gives a line every half minute, not
//! one per commit. Slow commits held back are reported with the first commit after the half
//! minute, slow or not.

use std::time::{Duration, Instant};

/// A commit that takes this long has made its puts wait far past any latency target (a
/// commit is about half a millisecond on a healthy disk).
pub const SLOW_COMMIT: Duration = Duration::from_secs(1);

/// Least time between two warnings.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// What one warning says: slow commits since the last one, and the slowest of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub commits: u64,
    pub worst: Duration,
    /// Writes (puts and replicated versions) those commits carried.
    pub writes: u64,
}

/// Slow commits not reported yet.
#[derive(Debug, Default)]
pub struct SlowCommits {
    last_report: Option<Instant>,
    pending: Option<Report>,
}

impl SlowCommits {
    /// Notes a commit of `writes` that took `took`, ended at `now`; returns what to warn about,
    /// if a warning is due.
    pub fn note(&mut self, took: Duration, writes: usize, now: Instant) -> Option<Report> {
        if took >= SLOW_COMMIT {
            let pending = self.pending.get_or_insert(Report {
                commits: 0,
                worst: Duration::ZERO,
                writes: 0,
            });
            pending.commits += 1;
            pending.worst = pending.worst.max(took);
            pending.writes += writes as u64;
        }
        self.pending?;
        let due = self
            .last_report
            .is_none_or(|at| now.duration_since(at) >= REPORT_EVERY);
        if !due {
            return None;
        }
        self.last_report = Some(now);
        self.pending.take()
    }
}

/// Logs `report` as a warning.
pub fn warn(report: Report) {
    tracing::warn!(
        slow_commits = report.commits,
        slowest_ms = report.worst.as_millis() as u64,
        writes = report.writes,
        "commits are slow: one took {:.1} s, and every write in it waited as long (a slow or stalled disk, \
         or the database locked by another program; see kv_server_sqlite_commit_seconds)",
        report.worst.as_secs_f64(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(2);
    const SLOW: Duration = Duration::from_millis(1500);

    fn report(commits: u64, worst: Duration, writes: u64) -> Report {
        Report {
            commits,
            worst,
            writes,
        }
    }

    #[test]
    fn fast_commits_are_never_reported() {
        let mut slow = SlowCommits::default();
        let now = Instant::now();
        for i in 0..1000 {
            assert_eq!(slow.note(FAST, 4, now + Duration::from_secs(i)), None);
        }
    }

    #[test]
    fn the_first_slow_commit_is_reported_at_once_then_at_most_every_half_minute() {
        let mut slow = SlowCommits::default();
        let t0 = Instant::now();
        assert_eq!(slow.note(SLOW, 3, t0), Some(report(1, SLOW, 3)));
        // Within the half minute: counted, not reported.
        assert_eq!(slow.note(SLOW, 2, t0 + Duration::from_secs(1)), None);
        let worse = Duration::from_secs(4);
        assert_eq!(slow.note(worse, 5, t0 + Duration::from_secs(10)), None);
        assert_eq!(slow.note(FAST, 9, t0 + Duration::from_secs(29)), None);
        // The next slow one after it reports everything since the last line.
        assert_eq!(
            slow.note(SLOW, 1, t0 + Duration::from_secs(31)),
            Some(report(3, worse, 8))
        );
        // Held back, then reported by a fast commit once the half minute is over: a disk
        // that recovered still gets its slow spell told.
        assert_eq!(slow.note(SLOW, 2, t0 + Duration::from_secs(40)), None);
        assert_eq!(slow.note(FAST, 2, t0 + Duration::from_secs(50)), None);
        assert_eq!(
            slow.note(FAST, 2, t0 + Duration::from_secs(61)),
            Some(report(1, SLOW, 2))
        );
        assert_eq!(slow.note(FAST, 2, t0 + Duration::from_secs(99)), None);
        // A slow one long after starts a new count.
        assert_eq!(
            slow.note(SLOW, 7, t0 + Duration::from_secs(200)),
            Some(report(1, SLOW, 7))
        );
    }

    #[test]
    fn exactly_the_threshold_counts_as_slow() {
        let mut slow = SlowCommits::default();
        assert!(slow.note(SLOW_COMMIT, 1, Instant::now()).is_some());
        assert!(
            SlowCommits::default()
                .note(SLOW_COMMIT - Duration::from_nanos(1), 1, Instant::now())
                .is_none()
        );
    }
}
