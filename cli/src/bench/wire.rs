//! The load generator's own HTTP/1.1 client connection (`--client raw`, the default): one
//! request at a time on one TCP stream, written and read by the worker's task itself.
//!
//! Why not hyper's client here: hyper runs each connection in a task of its own and hands every
//! request and answer across tasks, which costs the load generator about half again as much
//! CPU per request (docs/benchmarks.md, "The load generator's client and the gateway's
//! layers"). On a
//! 2-core machine with the generator beside the system under test, that CPU is taken from the
//! system being measured. This client does what wrk does instead: one write per request, reads
//! until the answer is complete, and no task switch. It still reads every answer to its end and
//! checks its framing, so a malformed or truncated answer is an error, not a success.
//!
//! Supported framing: `Content-Length`, `Transfer-Encoding: chunked`, and a body that ends when
//! the server closes (HTTP/1.0 style); `Connection: close` is honoured. 1xx answers are errors
//! (the bench never sends `Expect`). The body of an error answer (not 2xx) is kept, up to
//! [`MAX_ERROR_BODY`], for the `code` it names; other bodies are skipped unread.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stats::{Failure, MAX_ERROR_BODY, Op, error_code};

/// Most headers an answer may have; axum and the gateway send fewer than ten.
const MAX_HEADERS: usize = 64;
/// Largest answer head (status line and headers), and longest chunk-size line.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Read size: a cached GET's whole answer fits in one read.
const READ_CHUNK: usize = 16 * 1024;

/// One keep-alive connection. After a failed exchange its state is unknown: drop it.
pub struct Connection {
    stream: TcpStream,
    /// When the last exchange ended (or the connection opened).
    last_used: Instant,
    /// The request being written, reused so that a request allocates nothing.
    out: Vec<u8>,
    input: Input,
}

/// The outcome of a complete exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// False when the server closed or will close the connection after this answer.
    pub reusable: bool,
    /// For an error answer, the `code` its JSON body named.
    pub code: Option<String>,
}

impl Connection {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        // Requests are small and latency is what is measured: don't let Nagle hold them back.
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            last_used: Instant::now(),
            out: Vec::with_capacity(512),
            input: Input {
                buf: vec![0; READ_CHUNK],
                start: 0,
                end: 0,
            },
        })
    }

    /// Sends `GET path` or `PUT path` with `body` (JSON) and reads the whole answer.
    pub async fn exchange(
        &mut self,
        op: Op,
        path: &[u8],
        host: &[u8],
        body: &[u8],
    ) -> Result<Answer, Failure> {
        self.out.clear();
        write_request(&mut self.out, op, path, host, body);
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|_| Failure::Io)?;
        let answer = self.input.read_answer(&mut self.stream).await?;
        // No pipelining: anything after the answer is a framing error.
        if self.input.start != self.input.end {
            return Err(Failure::Io);
        }
        self.last_used = Instant::now();
        Ok(answer)
    }

    /// How long the connection has waited since its last exchange.
    pub fn idle(&self) -> Duration {
        self.last_used.elapsed()
    }

    /// False if the server closed the connection while it waited (or sent bytes nobody
    /// asked for), so that it is replaced before a request is lost on it. Servers close idle
    /// keep-alives; without this check such a close counted as a failed request. One
    /// non-blocking read, so the caller checks only connections that waited a while.
    pub fn still_open(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.try_read(&mut byte) {
            Err(err) => err.kind() == io::ErrorKind::WouldBlock,
            // 0: the server closed it; more: an answer to nothing.
            Ok(_) => false,
        }
    }
}

fn write_request(out: &mut Vec<u8>, op: Op, path: &[u8], host: &[u8], body: &[u8]) {
    out.extend_from_slice(match op {
        Op::Get => b"GET ",
        Op::Put => b"PUT ",
    });
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    if op == Op::Put {
        out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}", body.len());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if op == Op::Put {
        out.extend_from_slice(body);
    }
}

/// How the body of an answer ends.
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Bytes read but not consumed yet: `buf[start..end]`.
struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    /// Reads more bytes after `end`, moving the unconsumed ones to the front first and growing
    /// the buffer up to `limit`. Returns how many were read (0 at end of stream).
    async fn fill(&mut self, stream: &mut TcpStream, limit: usize) -> Result<usize, Failure> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= limit {
                return Err(Failure::Io);
            }
            self.buf.resize((self.buf.len() * 2).min(limit), 0);
        }
        let n = stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|_| Failure::Io)?;
        self.end += n;
        Ok(n)
    }

    async fn read_answer(&mut self, stream: &mut TcpStream) -> Result<Answer, Failure> {
        let (status, framing, mut reusable) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete(head)) => {
                    let parsed = head_of(&response)?;
                    self.start += head;
                    break parsed;
                }
                Ok(httparse::Status::Partial) => {
                    if self.fill(stream, MAX_HEAD_BYTES).await? == 0 {
                        return Err(Failure::Io);
                    }
                }
                Err(_) => return Err(Failure::Io),
            }
        };
        // Errors are few: reading their bodies costs the measured successes nothing.
        let mut kept = (!(200..300).contains(&status)).then(Vec::new);
        match framing {
            Framing::Empty => {}
            Framing::Length(n) => self.skip(stream, n, kept.as_mut()).await?,
            Framing::Chunked => loop {
                let line = self.line(stream).await?;
                let size = chunk_size(&line)?;
                if size == 0 {
                    // Trailer fields, up to the empty line.
                    while !self.line(stream).await?.is_empty() {}
                    break;
                }
                self.skip(stream, size, kept.as_mut()).await?;
                if !self.line(stream).await?.is_empty() {
                    return Err(Failure::Io);
                }
            },
            Framing::UntilClose => {
                reusable = false;
                loop {
                    keep(kept.as_mut(), &self.buf[self.start..self.end]);
                    self.start = self.end;
                    if self.fill(stream, READ_CHUNK).await? == 0 {
                        break;
                    }
                }
            }
        }
        let code = kept.as_deref().and_then(error_code);
        Ok(Answer {
            status,
            reusable,
            code,
        })
    }

    /// Consumes `n` body bytes, reading them as needed, and keeps them in `kept` up to
    /// [`MAX_ERROR_BODY`]; the stream ending first is an error.
    async fn skip(
        &mut self,
        stream: &mut TcpStream,
        mut n: u64,
        mut kept: Option<&mut Vec<u8>>,
    ) -> Result<(), Failure> {
        loop {
            let available = (self.end - self.start) as u64;
            let take = available.min(n);
            let end = self.start + take as usize;
            keep(kept.as_deref_mut(), &self.buf[self.start..end]);
            self.start = end;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            if self.fill(stream, READ_CHUNK).await? == 0 {
                return Err(Failure::Io);
            }
        }
    }

    /// Consumes one CRLF-terminated line and returns it without the CRLF.
    async fn line(&mut self, stream: &mut TcpStream) -> Result<Vec<u8>, Failure> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(at) = pending.windows(2).position(|w| w == b"\r\n") {
                let line = pending[..at].to_vec();
                self.start += at + 2;
                return Ok(line);
            }
            if self.fill(stream, MAX_HEAD_BYTES).await? == 0 {
                return Err(Failure::Io);
            }
        }
    }
}

/// Appends `bytes` to `kept`, up to [`MAX_ERROR_BODY`] in all. A body cut short there is not
/// valid JSON and names no code, as it should: kvstore's error bodies are far shorter.
pub(super) fn keep(kept: Option<&mut Vec<u8>>, bytes: &[u8]) {
    if let Some(kept) = kept {
        let room = MAX_ERROR_BODY.saturating_sub(kept.len());
        kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// Status, body framing and reusability from a parsed answer head (RFC 9112 section 6.3).
fn head_of(response: &httparse::Response<'_, '_>) -> Result<(u16, Framing, bool), Failure> {
    let status = response.code.ok_or(Failure::Io)?;
    let mut reusable = response.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| Failure::Io)?;
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = value.trim().parse::<u64>().map_err(|_| Failure::Io)?;
            // Differing lengths are how request smuggling starts: refuse, as hyper does.
            if length.is_some_and(|m| m != n) {
                return Err(Failure::Io);
            }
            length = Some(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err(Failure::Io);
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    reusable = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && response.version == Some(0) {
                    reusable = true;
                }
            }
        }
    }
    let framing = match status {
        100..=199 => return Err(Failure::Io),
        204 | 304 => Framing::Empty,
        _ if chunked => Framing::Chunked,
        _ => length.map_or(Framing::UntilClose, Framing::Length),
    };
    Ok((status, framing, reusable))
}

/// The size of a chunk from its size line (hex digits, then optional `;extensions`).
fn chunk_size(line: &[u8]) -> Result<u64, Failure> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits).map_err(|_| Failure::Io)?.trim();
    if digits.is_empty() || digits.len() > 15 {
        return Err(Failure::Io);
    }
    u64::from_str_radix(digits, 16).map_err(|_| Failure::Io)
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A server that reads one request, checks it, then writes `reply` in pieces of `piece`
    /// bytes (1 splits every token across reads) and closes if `close`.
    async fn serve(
        reply: &'static [u8],
        piece: usize,
        close: bool,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") && !request.ends_with(b"}") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before sending a request");
                request.extend_from_slice(&buf[..n]);
            }
            for part in reply.chunks(piece) {
                socket.write_all(part).await.unwrap();
                socket.flush().await.unwrap();
                if piece < reply.len() {
                    tokio::task::yield_now().await;
                }
            }
            if !close {
                // Keep the socket open until the client is done reading.
                let _ = socket.read(&mut buf).await;
            }
            request
        });
        (addr, task)
    }

    async fn exchange(reply: &'static [u8], piece: usize, close: bool) -> Result<Answer, Failure> {
        let (addr, _server) = serve(reply, piece, close).await;
        let mut conn = Connection::connect(addr).await.unwrap();
        conn.exchange(Op::Get, b"/get/k", b"h:1", b"").await
    }

    const LENGTH: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\ncontent-type: application/json\r\n\r\n{\"value\":1}";
    const CHUNKED: &[u8] = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nx-trailer: y\r\n\r\n";

    #[tokio::test]
    async fn requests_are_well_formed_http() {
        let (addr, server) = serve(LENGTH, LENGTH.len(), false).await;
        let mut conn = Connection::connect(addr).await.unwrap();
        let body = br#"{"value":"abc"}"#;
        conn.exchange(Op::Put, b"/put/a%20b", b"h:1", body)
            .await
            .unwrap();
        drop(conn);
        let request = server.await.unwrap();
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Request::new(&mut headers);
        let head = match parsed.parse(&request).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial request"),
        };
        assert_eq!(parsed.method, Some("PUT"));
        assert_eq!(parsed.path, Some("/put/a%20b"));
        let header = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.to_vec())
        };
        assert_eq!(header("host").unwrap(), b"h:1");
        assert_eq!(header("content-length").unwrap(), b"15");
        assert_eq!(&request[head..], body);
    }

    #[tokio::test]
    async fn content_length_and_chunked_answers_are_read_whole_even_byte_by_byte() {
        for piece in [1, 7, usize::MAX] {
            let ok = Answer {
                status: 200,
                reusable: true,
                code: None,
            };
            assert_eq!(exchange(LENGTH, piece, false).await, Ok(ok), "{piece}");
            let not_found = Answer {
                status: 404,
                reusable: true,
                code: None,
            };
            assert_eq!(exchange(CHUNKED, piece, false).await, Ok(not_found));
        }
    }

    #[tokio::test]
    async fn an_error_answer_names_its_code_in_any_framing() {
        const LENGTH_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 35\r\n\r\n{\"detail\":\"x\",\"code\":\"rebalancing\"}";
        const CHUNKED_404: &[u8] = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n9\r\n{\"code\":\"\r\nb\r\nnot_found\"}\r\n0\r\n\r\n";
        const CLOSE_503: &[u8] =
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"code\":\"ring_behind\"}";
        // A 2xx body is never read for a code.
        const OK_WITH_CODE: &[u8] =
            b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n{\"code\":\"x\"}";
        for piece in [1, 5, usize::MAX] {
            let code = |answer: Result<Answer, Failure>| answer.unwrap().code;
            assert_eq!(
                code(exchange(LENGTH_503, piece, false).await).as_deref(),
                Some("rebalancing"),
                "{piece}"
            );
            assert_eq!(
                code(exchange(CHUNKED_404, piece, false).await).as_deref(),
                Some("not_found"),
                "{piece}"
            );
            assert_eq!(
                code(exchange(CLOSE_503, piece, true).await).as_deref(),
                Some("ring_behind"),
                "{piece}"
            );
            assert_eq!(code(exchange(OK_WITH_CODE, piece, false).await), None);
        }
        // A long error body is read to its end, but not kept whole: no code, and the
        // connection stays usable.
        let long: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 500 Oops\r\ncontent-length: {}\r\n\r\n{{\"pad\":\"{}\",\"code\":\"x\"}}",
                MAX_ERROR_BODY + 21,
                "p".repeat(MAX_ERROR_BODY),
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let answer = exchange(long, 1000, false).await.unwrap();
        assert_eq!(
            (answer.status, answer.reusable, answer.code),
            (500, true, None)
        );
    }

    #[tokio::test]
    async fn a_connection_is_reused_for_the_next_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0; 1024];
            for reply in [LENGTH, CHUNKED, LENGTH] {
                let _ = socket.read(&mut buf).await.unwrap();
                socket.write_all(reply).await.unwrap();
            }
        });
        let mut conn = Connection::connect(addr).await.unwrap();
        for status in [200, 404, 200] {
            let answer = conn.exchange(Op::Get, b"/", b"h", b"").await.unwrap();
            assert_eq!(answer.status, status);
        }
    }

    /// A keep-alive the server closed while it waited is seen as closed before reuse; one
    /// it keeps open is not.
    #[tokio::test]
    async fn a_keep_alive_closed_by_the_server_is_seen_before_reuse() {
        for server_closes in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
            let server = tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0; 1024];
                let _ = socket.read(&mut buf).await.unwrap();
                socket.write_all(LENGTH).await.unwrap();
                if server_closes {
                    // As a server's idle timeout does.
                    drop(socket);
                    let _ = closed_tx.send(());
                } else {
                    let _ = closed_tx.send(());
                    let _ = socket.read(&mut buf).await;
                }
            });
            let mut conn = Connection::connect(addr).await.unwrap();
            let answer = conn.exchange(Op::Get, b"/", b"h", b"").await.unwrap();
            assert!(answer.reusable);
            closed_rx.await.unwrap();
            // The FIN crosses loopback at once; give the reactor a moment to see it.
            let until = Instant::now() + Duration::from_secs(2);
            while conn.still_open() && server_closes && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(conn.still_open(), !server_closes);
            assert!(conn.idle() < Duration::from_secs(60));
            drop(conn);
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn close_delimited_and_connection_close_answers_are_not_reused() {
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nsome body";
        let answer = exchange(until_close, 3, true).await.unwrap();
        assert_eq!((answer.status, answer.reusable), (200, false));
        let close = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let answer = exchange(close, 100, true).await.unwrap();
        assert_eq!((answer.status, answer.reusable), (503, false));
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(!exchange(old, 100, true).await.unwrap().reusable);
        let old_kept = b"HTTP/1.0 204 No\r\nConnection: keep-alive\r\n\r\n";
        assert!(exchange(old_kept, 100, false).await.unwrap().reusable);
    }

    #[tokio::test]
    async fn truncated_malformed_or_overlong_answers_are_io_errors() {
        let bad: [&'static [u8]; 8] = [
            // The body ends early.
            b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nshort",
            // The head ends early.
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            // More than the announced body: a second, unasked-for answer.
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ];
        for reply in bad {
            let result = exchange(reply, reply.len(), true).await;
            assert_eq!(
                result,
                Err(Failure::Io),
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
        // A head larger than the limit.
        let huge: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
                "a".repeat(MAX_HEAD_BYTES)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        assert_eq!(exchange(huge, 4096, false).await, Err(Failure::Io));
    }
}
