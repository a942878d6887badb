//! An HTTP body made of a few byte chunks sent one after the other, with its exact length
//! known (so it goes out with `Content-Length`, as a single buffer would). It lets a large
//! answer be built around a value without copying the value: the server's GET answer is
//! `{"value":` + the stored value + the rest, the gateway's is the member's answer + its
//! `server_used` field. Hyper writes the chunks with one vectored write where it can.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Answers at least this large are built from chunks; smaller ones are copied into one
/// buffer, which costs less than the extra chunks (and is what the pipelined link, which
/// carries answers up to 64 KiB, reads in one piece anyway).
pub const CHUNKED_ANSWER_MIN: usize = 64 << 10;

#[derive(Debug, Default)]
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    pub fn new(chunks: impl IntoIterator<Item = Bytes>) -> Chunks {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Chunks { chunks, remaining }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.chunks.pop_front().map(|chunk| {
            this.remaining -= chunk.len() as u64;
            Ok(Frame::data(chunk))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A value's text as [`Bytes`] without copying it: the chunk keeps the `Arc` alive.
pub fn shared_text(text: std::sync::Arc<str>) -> Bytes {
    struct Text(std::sync::Arc<str>);
    impl AsRef<[u8]> for Text {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    Bytes::from_owner(Text(text))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn chunks_come_out_in_order_with_their_exact_length() {
        let value: Arc<str> = Arc::from("\"big\"");
        let body = Chunks::new([
            Bytes::from_static(b"{\"value\":"),
            shared_text(value.clone()),
            Bytes::new(),
            Bytes::from_static(b"}"),
        ]);
        assert_eq!(body.size_hint().exact(), Some(15));
        assert!(!body.is_end_stream());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"value\":\"big\"}");
        assert!(Chunks::new([]).is_end_stream());
        assert_eq!(Chunks::new([]).size_hint().exact(), Some(0));
    }

    #[test]
    fn shared_text_does_not_copy() {
        let value: Arc<str> = Arc::from("x".repeat(1000));
        let bytes = shared_text(value.clone());
        assert_eq!(bytes.as_ptr(), value.as_ptr());
        assert_eq!(Arc::strong_count(&value), 2);
        drop(bytes);
        assert_eq!(Arc::strong_count(&value), 1);
    }
}
