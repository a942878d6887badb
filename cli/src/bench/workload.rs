//! What to send: which key, GET or PUT, and which body. Everything that does not change between
//! requests (request paths, JSON bodies, the Host header) is built once before the run, so that a
//! request costs a few reference-count increments and no allocation of its own.

use bytes::{BufMut, Bytes, BytesMut};
use hyper::Uri;
use hyper::header::HeaderValue;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rand::Rng;
use rand::distr::Alphanumeric;

use super::config::Config;
use super::stats::Op;

/// Characters escaped in a key: everything but RFC 3986's unreserved ones, so a key containing
/// `/`, `?`, `%` or spaces still is one path segment.
pub(crate) const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How many different values are written. Several, so that consecutive versions of a key differ;
/// few, so that they stay in the CPU cache whatever `--value-size` is.
const DISTINCT_VALUES: usize = 16;

/// The request paths of every key, `{prefix}/get/{key}` and `{prefix}/put/{key}`.
///
/// All paths of one kind live in a single buffer and a request's URI is a slice of it, which
/// keeps a large key space compact (a `Uri` per key would cost ~100 bytes each).
#[derive(Debug, Clone)]
pub struct KeySpace {
    get_paths: Bytes,
    put_paths: Bytes,
    /// `starts[i]..starts[i + 1]` is key `i`'s path in either buffer (both have the same layout
    /// since `get` and `put` have the same length).
    starts: Vec<u32>,
}

impl KeySpace {
    pub fn new(path_prefix: &str, key_prefix: &str, keys: usize) -> Self {
        let mut get_paths = BytesMut::new();
        let mut put_paths = BytesMut::new();
        let mut starts = Vec::with_capacity(keys + 1);
        let mut key = String::new();
        for i in 0..keys {
            starts.push(u32::try_from(get_paths.len()).expect("key space below 4 GiB"));
            key.clear();
            key.push_str(key_prefix);
            key.push_str(&i.to_string());
            let encoded = utf8_percent_encode(&key, KEY_ESCAPE).to_string();
            for (buf, verb) in [(&mut get_paths, "get"), (&mut put_paths, "put")] {
                buf.put_slice(path_prefix.as_bytes());
                buf.put_u8(b'/');
                buf.put_slice(verb.as_bytes());
                buf.put_u8(b'/');
                buf.put_slice(encoded.as_bytes());
            }
        }
        starts.push(u32::try_from(get_paths.len()).expect("key space below 4 GiB"));
        Self {
            get_paths: get_paths.freeze(),
            put_paths: put_paths.freeze(),
            starts,
        }
    }

    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The origin-form URI (path only) of `op` on key `index`. No allocation: the URI shares the
    /// key space's buffer.
    pub fn uri(&self, op: Op, index: usize) -> Uri {
        let range = self.range(index);
        Uri::from_maybe_shared(self.paths(op).slice(range))
            .expect("percent-encoded paths are valid URIs")
    }

    /// The same path as [`KeySpace::uri`], as bytes.
    pub fn path(&self, op: Op, index: usize) -> &[u8] {
        &self.paths(op)[self.range(index)]
    }

    fn range(&self, index: usize) -> std::ops::Range<usize> {
        self.starts[index] as usize..self.starts[index + 1] as usize
    }

    fn paths(&self, op: Op) -> &Bytes {
        match op {
            Op::Get => &self.get_paths,
            Op::Put => &self.put_paths,
        }
    }
}

/// The request mix and the prebuilt request parts, shared read-only by every worker.
#[derive(Debug, Clone)]
pub struct Workload {
    pub keys: KeySpace,
    /// `Host` header value, as a browser or curl would send it.
    pub host: HeaderValue,
    /// Complete JSON bodies `{"value":"…"}` with `value_size` random alphanumeric characters.
    bodies: Vec<Bytes>,
    read_ratio: f64,
}

impl Workload {
    pub fn new(config: &Config, host: &str, port: u16, path_prefix: &str) -> Self {
        let mut rng = rand::rng();
        let bodies = (0..DISTINCT_VALUES)
            .map(|_| {
                let mut body = Vec::with_capacity(config.value_size + 16);
                body.extend_from_slice(br#"{"value":""#);
                body.extend((&mut rng).sample_iter(Alphanumeric).take(config.value_size));
                body.extend_from_slice(br#""}"#);
                Bytes::from(body)
            })
            .collect();
        let host = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Self {
            keys: KeySpace::new(path_prefix, &config.key_prefix, config.keys),
            host: HeaderValue::from_str(&host).expect("a host from a parsed URI is a valid header"),
            bodies,
            read_ratio: config.read_ratio,
        }
    }

    /// The next measured request: GET with probability `read_ratio`, on a uniformly random key.
    pub fn next(&self, rng: &mut impl Rng) -> (Op, usize) {
        // `random` is in [0, 1): a ratio of 0 never reads and a ratio of 1 always does.
        let op = if rng.random::<f64>() < self.read_ratio {
            Op::Get
        } else {
            Op::Put
        };
        (op, rng.random_range(0..self.keys.len()))
    }

    /// A PUT body (a cheap clone of a shared buffer).
    pub fn body(&self, rng: &mut impl Rng) -> Bytes {
        self.bodies[rng.random_range(0..self.bodies.len())].clone()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn workload(read_ratio: f64) -> Workload {
        let config = Config {
            read_ratio,
            value_size: 20,
            keys: 10,
            ..Config::new("http://h")
        };
        Workload::new(&config, "localhost", 8000, "")
    }

    #[test]
    fn paths_are_percent_encoded_and_share_one_layout() {
        let keys = KeySpace::new("/kv", "a b/é?", 12);
        assert_eq!(keys.len(), 12);
        assert_eq!(keys.uri(Op::Get, 0).path(), "/kv/get/a%20b%2F%C3%A9%3F0");
        assert_eq!(keys.uri(Op::Put, 11).path(), "/kv/put/a%20b%2F%C3%A9%3F11");
        assert_eq!(keys.path(Op::Put, 11), b"/kv/put/a%20b%2F%C3%A9%3F11");
        assert_eq!(
            KeySpace::new("", "bench-", 1).uri(Op::Get, 0),
            "/get/bench-0"
        );
    }

    #[test]
    fn bodies_are_json_with_a_value_of_the_requested_size() {
        let w = workload(0.5);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..50 {
            let body = w.body(&mut rng);
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["value"].as_str().unwrap().len(), 20);
        }
        assert_eq!(w.host, "localhost:8000");
        assert_eq!(
            Workload::new(&Config::new("x"), "::1", 9, "").host,
            "[::1]:9"
        );
    }

    #[test]
    fn read_ratio_sets_the_mix_and_keys_stay_in_range() {
        let mut rng = SmallRng::seed_from_u64(7);
        for (ratio, lo, hi) in [(0.0, 0, 0), (1.0, 10_000, 10_000), (0.25, 2_300, 2_700)] {
            let w = workload(ratio);
            let mut gets = 0;
            for _ in 0..10_000 {
                let (op, key) = w.next(&mut rng);
                assert!(key < 10);
                gets += usize::from(op == Op::Get);
            }
            assert!((lo..=hi).contains(&gets), "ratio {ratio}: {gets} gets");
        }
    }
}
