//! The gateway's pipelined link to a server: HTTP requests and answers as length-prefixed
//! frames over one TCP connection, each tagged with an id, so that many requests share a
//! socket call in each direction instead of one HTTP exchange each (docs/benchmarks.md says
//! why that is where the time goes). The frames carry HTTP itself (method, path and query,
//! headers, body; status, headers, body): the server answers them with the same router as
//! plain HTTP, so the link adds a transport, never a second API.
//!
//! A link opens with [`PREFACE`] from the client, which the server echoes. The preface starts
//! with a NUL byte, which no HTTP request can start with: a server tells the two apart from
//! the first byte, and a server that does not know the link answers it with an HTTP error,
//! which the client recognises ([`Preface::Refused`]) and falls back to HTTP.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! frame    = length:u32 id:u64 body            length counts id and body
//! request  = method:u8 path_len:u16 path headers payload
//! response = status:u16 headers payload
//! headers  = count:u8 (name_len:u8 name value_len:u16 value)*
//! ```
//!
//! A GET may name the largest answer it wants on the link ([`MAX_ANSWER`]); a server with a
//! larger one answers [`use_http`] instead, and the client asks again over plain HTTP, so a
//! large value never holds up the answers behind it on the link.
//!
//! Pure encoding and decoding over byte buffers; the sockets are the server's and the
//! gateway's business.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, StatusCode};

/// What a client sends first and the server echoes.
pub const PREFACE: &[u8; 9] = b"\0KVMUX/1\n";

/// Why bytes off the wire are not a frame. Each is the peer's fault or a version mismatch:
/// the connection is closed, never a frame guessed at.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// A request as it travels: what a handler needs of it, nothing of hyper's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFrame {
    pub id: u64,
    pub method: Method,
    /// Path and query, as they would appear in the request line.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// An answer as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFrame {
    pub id: u64,
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// The id of the server's farewell: the last request id it took, in an answer frame of its
/// own (request ids start at 1).
pub const GOAWAY_ID: u64 = 0;

/// The frame a server sends when it stops reading a link: every request after `last` was
/// never taken and may be sent again elsewhere; those up to `last` are still answered.
pub fn goaway(last: u64) -> ResponseFrame {
    ResponseFrame {
        id: GOAWAY_ID,
        status: StatusCode::SERVICE_UNAVAILABLE,
        headers: Vec::new(),
        body: Bytes::copy_from_slice(&last.to_be_bytes()),
    }
}

/// The last request id a [`goaway`] frame names.
pub fn goaway_last(frame: &ResponseFrame) -> Option<u64> {
    let bytes: [u8; 8] = frame.body.as_ref().try_into().ok()?;
    (frame.id == GOAWAY_ID).then_some(u64::from_be_bytes(bytes))
}

/// Request header of a GET sent over a link: the largest answer body, in bytes, the client
/// wants on the link. A frame is written and read whole, so a large answer holds up every
/// answer behind it on that link; a larger one is refused with [`USE_HTTP`] instead, and the
/// client asks again over HTTP. Only ever on a GET: asking twice must change nothing.
/// A server that does not know the header answers in full, as before.
pub const MAX_ANSWER: HeaderName = HeaderName::from_static("x-kv-link-max-answer");

/// Answer header, only ever in answer to [`MAX_ANSWER`]: the answer was larger, ask over
/// HTTP. Its status is 421 (a request this connection is not the one to answer) and its body
/// empty.
pub const USE_HTTP: HeaderName = HeaderName::from_static("x-kv-link-use-http");

/// The answer that sends a GET over HTTP (see [`USE_HTTP`]).
pub fn use_http(id: u64) -> ResponseFrame {
    ResponseFrame {
        id,
        status: StatusCode::MISDIRECTED_REQUEST,
        headers: vec![(USE_HTTP, HeaderValue::from_static("1"))],
        body: Bytes::new(),
    }
}

/// Whether an answer is [`use_http`]'s.
pub fn is_use_http(frame: &ResponseFrame) -> bool {
    frame.headers.iter().any(|(name, _)| *name == USE_HTTP)
}

/// The methods the link carries, by number; anything else is sent over plain HTTP.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::HEAD,
];

/// Whether [`encode_request`] can carry this method.
pub fn carries(method: &Method) -> bool {
    METHODS.contains(method)
}

/// Appends a request frame to `out`. Fails (before writing anything) on what the layout
/// cannot hold: another method, a path over 64 KiB, more than 255 headers or a header over
/// its field's size. The gateway never builds such a request; the check keeps a bug from
/// becoming a corrupt stream.
pub fn encode_request(out: &mut BytesMut, frame: &RequestFrame) -> Result<(), FrameError> {
    let method = METHODS
        .iter()
        .position(|m| *m == frame.method)
        .ok_or(FrameError::Malformed("method not carried"))?;
    let path_len =
        u16::try_from(frame.path.len()).map_err(|_| FrameError::Malformed("path too long"))?;
    check_headers(&frame.headers)?;
    let length = 8 + 1 + 2 + frame.path.len() + headers_len(&frame.headers) + frame.body.len();
    let length =
        u32::try_from(length).map_err(|_| FrameError::TooLarge(length, u32::MAX as usize))?;
    out.reserve(4 + length as usize);
    out.put_u32(length);
    out.put_u64(frame.id);
    out.put_u8(method as u8);
    out.put_u16(path_len);
    out.put_slice(frame.path.as_bytes());
    put_headers(out, &frame.headers);
    out.put_slice(&frame.body);
    Ok(())
}

/// Appends a response frame to `out`, with the checks of [`encode_request`].
pub fn encode_response(out: &mut BytesMut, frame: &ResponseFrame) -> Result<(), FrameError> {
    check_headers(&frame.headers)?;
    let length = 8 + 2 + headers_len(&frame.headers) + frame.body.len();
    let length =
        u32::try_from(length).map_err(|_| FrameError::TooLarge(length, u32::MAX as usize))?;
    out.reserve(4 + length as usize);
    out.put_u32(length);
    out.put_u64(frame.id);
    out.put_u16(frame.status.as_u16());
    put_headers(out, &frame.headers);
    out.put_slice(&frame.body);
    Ok(())
}

/// Takes one whole frame off the front of `buf`: `Ok(None)` while it is still incomplete.
/// `max` bounds a frame's length, checked as soon as the length is read, so a peer cannot
/// make the reader buffer more.
pub fn decode_request(buf: &mut BytesMut, max: usize) -> Result<Option<RequestFrame>, FrameError> {
    let Some((id, mut body)) = take_frame(buf, max)? else {
        return Ok(None);
    };
    let method = METHODS
        .get(usize::from(get_u8(&mut body)?))
        .cloned()
        .ok_or(FrameError::Malformed("unknown method"))?;
    let path_len = usize::from(get_u16(&mut body)?);
    let path = take(&mut body, path_len)?;
    let path = String::from_utf8(path.to_vec()).map_err(|_| FrameError::Malformed("path"))?;
    let headers = get_headers(&mut body)?;
    Ok(Some(RequestFrame {
        id,
        method,
        path,
        headers,
        body,
    }))
}

/// [`decode_request`] for answers.
pub fn decode_response(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<ResponseFrame>, FrameError> {
    let Some((id, mut body)) = take_frame(buf, max)? else {
        return Ok(None);
    };
    let status =
        StatusCode::from_u16(get_u16(&mut body)?).map_err(|_| FrameError::Malformed("status"))?;
    let headers = get_headers(&mut body)?;
    Ok(Some(ResponseFrame {
        id,
        status,
        headers,
        body,
    }))
}

/// A frame at the front of `buf` over `max` bytes: its id and its whole length on the wire,
/// for a reader that drops it (and fails that one request) instead of the connection.
/// `None` while the header is incomplete or the frame is within the limit.
pub fn oversized(buf: &[u8], max: usize) -> Option<(u64, usize)> {
    let header: &[u8; 12] = buf.get(..12)?.try_into().ok()?;
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let id = u64::from_be_bytes(header[4..12].try_into().ok()?);
    (length > max).then_some((id, 4 + length))
}

fn take_frame(buf: &mut BytesMut, max: usize) -> Result<Option<(u64, Bytes)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if length > max {
        return Err(FrameError::TooLarge(length, max));
    }
    if length < 8 {
        return Err(FrameError::Malformed("frame shorter than its id"));
    }
    if buf.len() < 4 + length {
        // Room for the rest, so the reader's next read can take it in one call.
        buf.reserve(4 + length - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut frame = buf.split_to(length).freeze();
    let id = frame.get_u64();
    Ok(Some((id, frame)))
}

fn check_headers(headers: &[(HeaderName, HeaderValue)]) -> Result<(), FrameError> {
    if headers.len() > usize::from(u8::MAX) {
        return Err(FrameError::Malformed("too many headers"));
    }
    for (name, value) in headers {
        if name.as_str().len() > usize::from(u8::MAX) || value.len() > usize::from(u16::MAX) {
            return Err(FrameError::Malformed("header too long"));
        }
    }
    Ok(())
}

fn headers_len(headers: &[(HeaderName, HeaderValue)]) -> usize {
    1 + headers
        .iter()
        .map(|(n, v)| 1 + n.as_str().len() + 2 + v.len())
        .sum::<usize>()
}

fn put_headers(out: &mut BytesMut, headers: &[(HeaderName, HeaderValue)]) {
    out.put_u8(headers.len() as u8);
    for (name, value) in headers {
        out.put_u8(name.as_str().len() as u8);
        out.put_slice(name.as_str().as_bytes());
        out.put_u16(value.len() as u16);
        out.put_slice(value.as_bytes());
    }
}

/// Names of kvstore's own that travel on many frames: every GET ([`MAX_ANSWER`]), every put
/// (the write quorum), a replicated put's answer. `HeaderName::from_bytes` allocates for any
/// name outside HTTP's standard set; these are matched to static names instead.
const OWN_NAMES: [HeaderName; 4] = [
    MAX_ANSWER,
    USE_HTTP,
    HeaderName::from_static(crate::replication::WRITE_QUORUM_HEADER),
    HeaderName::from_static(crate::replication::ACKED_BY_HEADER),
];

fn header_name(raw: &[u8]) -> Result<HeaderName, FrameError> {
    match OWN_NAMES.iter().find(|own| own.as_str().as_bytes() == raw) {
        Some(own) => Ok(own.clone()),
        None => HeaderName::from_bytes(raw).map_err(|_| FrameError::Malformed("header name")),
    }
}

fn get_headers(body: &mut Bytes) -> Result<Vec<(HeaderName, HeaderValue)>, FrameError> {
    let count = get_u8(body)?;
    let mut headers = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = usize::from(get_u8(body)?);
        let name = header_name(&take(body, len)?)?;
        let len = usize::from(get_u16(body)?);
        let value = HeaderValue::from_maybe_shared(take(body, len)?)
            .map_err(|_| FrameError::Malformed("header value"))?;
        headers.push((name, value));
    }
    Ok(headers)
}

fn get_u8(body: &mut Bytes) -> Result<u8, FrameError> {
    body.try_get_u8()
        .map_err(|_| FrameError::Malformed("truncated"))
}

fn get_u16(body: &mut Bytes) -> Result<u16, FrameError> {
    body.try_get_u16()
        .map_err(|_| FrameError::Malformed("truncated"))
}

fn take(body: &mut Bytes, len: usize) -> Result<Bytes, FrameError> {
    if body.len() < len {
        return Err(FrameError::Malformed("truncated"));
    }
    Ok(body.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestFrame {
        RequestFrame {
            id: 7,
            method: Method::PUT,
            path: "/put/a%2Fb?if_version=3".into(),
            headers: vec![
                (
                    HeaderName::from_static("x-kv-write-quorum"),
                    HeaderValue::from_static("2"),
                ),
                (MAX_ANSWER, HeaderValue::from_static("65536")),
                (
                    HeaderName::from_static("x-custom"),
                    HeaderValue::from_static("kept"),
                ),
            ],
            body: Bytes::from_static(br#"{"value":1}"#),
        }
    }

    #[test]
    fn own_names_decode_as_themselves_and_others_as_any_name() {
        assert_eq!(header_name(b"x-kv-link-max-answer").unwrap(), MAX_ANSWER);
        assert_eq!(header_name(b"x-kv-link-use-http").unwrap(), USE_HTTP);
        assert_eq!(
            header_name(b"X-KV-Write-Quorum").unwrap(),
            HeaderName::from_static("x-kv-write-quorum")
        );
        assert_eq!(
            header_name(b"content-type").unwrap(),
            http::header::CONTENT_TYPE
        );
        assert!(header_name(b"bad name").is_err());
    }

    #[test]
    fn frames_round_trip_whole_and_byte_by_byte() {
        let response = ResponseFrame {
            id: u64::MAX,
            status: StatusCode::PRECONDITION_FAILED,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (http::header::RETRY_AFTER, HeaderValue::from_static("1")),
            ],
            body: Bytes::from_static(b"{}"),
        };
        let mut wire = BytesMut::new();
        encode_request(&mut wire, &request()).unwrap();
        encode_request(
            &mut wire,
            &RequestFrame {
                id: 8,
                body: Bytes::new(),
                ..request()
            },
        )
        .unwrap();
        let mut answers = BytesMut::new();
        encode_response(&mut answers, &response).unwrap();

        // Whole: both requests come off one buffer, in order.
        let mut buf = wire.clone();
        assert_eq!(decode_request(&mut buf, 1 << 20).unwrap(), Some(request()));
        assert_eq!(decode_request(&mut buf, 1 << 20).unwrap().unwrap().id, 8);
        assert_eq!(decode_request(&mut buf, 1 << 20).unwrap(), None);
        assert!(buf.is_empty());

        // Byte by byte: nothing until the last byte of a frame has arrived.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in answers.iter() {
            buf.put_u8(*byte);
            if let Some(frame) = decode_response(&mut buf, 1 << 20).unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, vec![response]);
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors_not_guesses() {
        let mut wire = BytesMut::new();
        encode_request(&mut wire, &request()).unwrap();
        let length = wire.len() - 4;
        assert_eq!(
            decode_request(&mut wire.clone(), length - 1),
            Err(FrameError::TooLarge(length, length - 1))
        );
        assert_eq!(oversized(&wire, length - 1), Some((7, length + 4)));
        assert_eq!(oversized(&wire, length), None);
        assert_eq!(oversized(&wire[..11], 0), None);
        // An unknown method number.
        let mut bad = wire.clone();
        bad[12] = 200;
        assert!(matches!(
            decode_request(&mut bad, 1 << 20),
            Err(FrameError::Malformed(_))
        ));
        // A header count that runs past the end of the frame.
        let mut bad = BytesMut::new();
        bad.put_u32(8 + 2 + 1);
        bad.put_u64(1);
        bad.put_u16(200);
        bad.put_u8(3);
        assert_eq!(
            decode_response(&mut bad, 1 << 20),
            Err(FrameError::Malformed("truncated"))
        );
        // A length too short to hold the id.
        let mut bad = BytesMut::from(&[0u8, 0, 0, 3, 1, 2, 3][..]);
        assert!(decode_response(&mut bad, 1 << 20).is_err());
    }

    #[test]
    fn what_the_layout_cannot_hold_is_refused_before_writing() {
        let mut out = BytesMut::new();
        let patch = RequestFrame {
            method: Method::PATCH,
            ..request()
        };
        assert!(!carries(&Method::PATCH));
        assert!(encode_request(&mut out, &patch).is_err());
        let long = RequestFrame {
            path: "/".repeat(70_000),
            ..request()
        };
        assert!(encode_request(&mut out, &long).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn a_goaway_names_the_last_request_taken() {
        let mut wire = BytesMut::new();
        encode_response(&mut wire, &goaway(41)).unwrap();
        let frame = decode_response(&mut wire, 1 << 10).unwrap().unwrap();
        assert_eq!(goaway_last(&frame), Some(41));
        let ordinary = ResponseFrame {
            id: 3,
            ..goaway(41)
        };
        assert_eq!(goaway_last(&ordinary), None);
    }

    #[test]
    fn the_preface_cannot_be_the_start_of_an_http_request() {
        assert_eq!(PREFACE[0], 0);
    }
}
