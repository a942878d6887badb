//! GETs whose last answer was too large for the link, so that the next one goes straight
//! over HTTP. Without this, every read of a large value cost its server two answers: one
//! built whole and thrown away for "ask over HTTP" (`mux::USE_HTTP`), then the real one. With
//! 256 KiB values that was about a quarter of the servers' CPU per read (docs/benchmarks.md).
//!
//! Only a routing hint, bounded: a GET remembered here whose answer has become small again
//! is forgotten at that answer, and a GET not remembered (never seen, or pushed out by newer
//! ones) costs one thrown-away answer, as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// GETs remembered at most; the least recently marked go first.
pub const CAPACITY: usize = 4096;

#[derive(Default)]
pub struct LargeAnswers {
    inner: Mutex<Inner>,
    /// Entries held, so that a gateway whose values all fit the link takes no lock.
    len: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    /// Member name -> path and query of the GET -> when it was last marked.
    by_member: HashMap<String, HashMap<String, u64>>,
    len: usize,
    clock: u64,
}

impl LargeAnswers {
    /// Whether the last answer of this GET from `member` was too large for the link.
    pub fn contains(&self, member: &str, path: &str) -> bool {
        self.len.load(Ordering::Relaxed) > 0
            && self
                .lock()
                .by_member
                .get(member)
                .is_some_and(|paths| paths.contains_key(path))
    }

    /// This GET's answer from `member` was too large for the link.
    pub fn mark(&self, member: &str, path: &str) {
        let mut inner = self.lock();
        inner.clock += 1;
        let stamp = inner.clock;
        let paths = inner.by_member.entry(member.to_owned()).or_default();
        if paths.insert(path.to_owned(), stamp).is_none() {
            inner.len += 1;
        }
        if inner.len > CAPACITY {
            inner.evict_oldest();
        }
        self.len.store(inner.len, Ordering::Relaxed);
    }

    /// This GET's answer from `member` fits the link again.
    pub fn forget(&self, member: &str, path: &str) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut inner = self.lock();
        let Some(paths) = inner.by_member.get_mut(member) else {
            return;
        };
        if paths.remove(path).is_some() {
            if paths.is_empty() {
                inner.by_member.remove(member);
            }
            inner.len -= 1;
            self.len.store(inner.len, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// A scan of every entry: only when full, and only on the way to answers of 64 KiB or
    /// more, which cost far more than it.
    fn evict_oldest(&mut self) {
        let oldest = self
            .by_member
            .iter()
            .flat_map(|(member, paths)| paths.iter().map(move |(path, at)| (*at, member, path)))
            .min()
            .map(|(_, member, path)| (member.clone(), path.clone()));
        if let Some((member, path)) = oldest
            && let Some(paths) = self.by_member.get_mut(&member)
        {
            paths.remove(&path);
            if paths.is_empty() {
                self.by_member.remove(&member);
            }
            self.len -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_member_and_path_until_forgotten() {
        let large = LargeAnswers::default();
        assert!(!large.contains("a", "/get/k"));
        large.mark("a", "/get/k");
        large.mark("a", "/get/k");
        assert!(large.contains("a", "/get/k"));
        assert!(!large.contains("b", "/get/k"), "another member");
        assert!(!large.contains("a", "/get/k?version=1"), "another GET");
        assert_eq!(large.len.load(Ordering::Relaxed), 1);
        large.forget("b", "/get/k");
        assert!(large.contains("a", "/get/k"));
        large.forget("a", "/get/k");
        assert!(!large.contains("a", "/get/k"));
        assert_eq!(large.len.load(Ordering::Relaxed), 0);
        assert!(large.lock().by_member.is_empty());
    }

    #[test]
    fn holds_at_most_its_capacity_and_lets_the_oldest_go() {
        let large = LargeAnswers::default();
        for i in 0..CAPACITY {
            large.mark(if i % 2 == 0 { "a" } else { "b" }, &format!("/get/{i}"));
        }
        // Marking the first again makes it the newest: the second is now the oldest.
        large.mark("a", "/get/0");
        large.mark("c", "/get/new");
        assert_eq!(large.len.load(Ordering::Relaxed), CAPACITY);
        assert!(large.contains("a", "/get/0"));
        assert!(!large.contains("b", "/get/1"));
        assert!(large.contains("a", "/get/2"));
        assert!(large.contains("c", "/get/new"));
    }
}
