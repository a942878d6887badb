//! A budget of request-body bytes a process holds at once. A put's body is read whole into
//! memory (and parsed, and handed on), so without a bound a few dozen clients sending large
//! values at the same moment take gigabytes (measured: 40 puts of 32 MiB peaked at 1.9 GB in
//! the gateway and 2.0 GB in a server). A put is admitted once the bytes its `Content-Length`
//! announces fit in the budget, and holds them until it is answered; the others wait,
//! unread, so TCP slows their clients down instead of the process running out of memory.
//!
//! A body without a length (chunked) counts as the largest a request may carry. The budget
//! always has room for the largest request alone, so every request is admitted eventually.

use std::sync::Arc;

use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Permits count bytes in units of this many, so that a 64 GiB budget still fits the
/// semaphore's permit count and a small put takes one permit.
const UNIT: usize = 1024;

/// Shared by every request of a process: cheap to clone (one `Arc`). Admitting a request
/// borrows it, so a put pays one try-acquire and a gauge update, no reference counting.
#[derive(Clone)]
pub struct BodyBudget(Arc<Inner>);

struct Inner {
    semaphore: Semaphore,
    largest: usize,
    /// Bytes admitted and not yet answered.
    in_use: Gauge,
    /// Requests that had to wait for room.
    waits: Counter,
}

impl BodyBudget {
    /// A budget of `bytes` (raised to `largest` if smaller) for requests of at most
    /// `largest` bytes, counting into `in_use` (bytes held) and `waits` (requests that
    /// waited), which the caller registers.
    pub fn new(bytes: usize, largest: usize, in_use: Gauge, waits: Counter) -> BodyBudget {
        let units = bytes
            .max(largest)
            .div_ceil(UNIT)
            .clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget(Arc::new(Inner {
            semaphore: Semaphore::new(units),
            largest,
            in_use,
            waits,
        }))
    }

    /// Waits until the body `headers` announce fits, and holds its bytes until the returned
    /// guard is dropped. A request without a body takes nothing.
    pub async fn admit(&self, headers: &HeaderMap) -> Admitted<'_> {
        let inner = &*self.0;
        let bytes = match content_length(headers) {
            Some(n) => n.min(inner.largest),
            None => inner.largest,
        };
        let units = bytes.div_ceil(UNIT);
        if units == 0 {
            return Admitted { _held: None };
        }
        // At most the whole semaphore: `new` made it hold at least `largest`.
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        let permit = match inner.semaphore.try_acquire_many(units) {
            Ok(permit) => permit,
            Err(_) => {
                inner.waits.inc();
                inner
                    .semaphore
                    .acquire_many(units)
                    .await
                    .expect("the budget's semaphore is never closed")
            }
        };
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        inner.in_use.inc_by(bytes);
        Admitted {
            _held: Some(Held {
                _permit: permit,
                bytes,
                in_use: &inner.in_use,
            }),
        }
    }
}

/// The bytes of one admitted request, given back when dropped.
pub struct Admitted<'a> {
    _held: Option<Held<'a>>,
}

struct Held<'a> {
    _permit: SemaphorePermit<'a>,
    bytes: i64,
    in_use: &'a Gauge,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.in_use.dec_by(self.bytes);
    }
}

/// The request's `Content-Length`, when it has one that parses. Hyper never reads more
/// body than that, so it bounds what the request can make the process hold.
fn content_length(headers: &HeaderMap) -> Option<usize> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sized(n: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, n.into());
        headers
    }

    /// A budget with metrics of its own, and them.
    fn budget(bytes: usize, largest: usize) -> (BodyBudget, Gauge, Counter) {
        let (in_use, waits) = (Gauge::default(), Counter::default());
        let budget = BodyBudget::new(bytes, largest, in_use.clone(), waits.clone());
        (budget, in_use, waits)
    }

    /// Whether `admit` answers within a short while.
    async fn admitted_soon<'a>(
        budget: &'a BodyBudget,
        headers: &HeaderMap,
    ) -> Option<Admitted<'a>> {
        tokio::time::timeout(Duration::from_millis(100), budget.admit(headers))
            .await
            .ok()
    }

    #[tokio::test]
    async fn requests_wait_while_the_budget_is_taken_and_go_once_room_is_given_back() {
        let (budget, in_use, waits) = budget(8 * UNIT, 4 * UNIT);
        let first = admitted_soon(&budget, &sized(4 * UNIT)).await.unwrap();
        let _second = admitted_soon(&budget, &sized(3 * UNIT + 1)).await.unwrap();
        assert_eq!(in_use.get(), (7 * UNIT + 1) as i64);
        // 4 KiB more does not fit beside 7 KiB and a byte.
        let third = sized(4 * UNIT);
        let waiting = budget.admit(&third);
        tokio::pin!(waiting);
        let soon = tokio::time::timeout(Duration::from_millis(100), &mut waiting).await;
        assert!(soon.is_err());
        assert_eq!(waits.get(), 1);
        drop(first);
        let _third = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("admitted once the first was answered");
        assert_eq!(in_use.get(), (7 * UNIT + 1) as i64);
    }

    #[tokio::test]
    async fn no_length_counts_as_the_largest_and_no_body_as_nothing() {
        let (budget, in_use, _) = budget(4 * UNIT, 4 * UNIT);
        let chunked = admitted_soon(&budget, &HeaderMap::new()).await.unwrap();
        assert_eq!(in_use.get(), (4 * UNIT) as i64);
        // An empty body needs no room, even with the budget taken.
        assert!(admitted_soon(&budget, &sized(0)).await.is_some());
        assert!(admitted_soon(&budget, &sized(1)).await.is_none());
        drop(chunked);
        assert_eq!(in_use.get(), 0);
    }

    #[tokio::test]
    async fn the_largest_request_always_fits_alone() {
        // A budget below the largest request is raised to it, and a claimed length above the
        // largest counts as the largest (the body limit refuses the rest).
        let (budget, in_use, _) = budget(UNIT, 16 * UNIT);
        let held = admitted_soon(&budget, &sized(100 * UNIT)).await.unwrap();
        assert_eq!(in_use.get(), (16 * UNIT) as i64);
        drop(held);
        assert!(admitted_soon(&budget, &sized(16 * UNIT)).await.is_some());
    }
}
