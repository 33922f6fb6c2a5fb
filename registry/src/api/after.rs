//! Work held until an answer has been handed to its connection: a fragment write wakes the
//! long-polls it moved only as its own answer goes out, so that answer is not queued behind the
//! thousands of polls it wakes.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};

/// `answer` with a body that holds `held` until the body has been read to its end (or is
/// dropped unread, as when the client hung up), then drops it.
pub fn then<T: Send + Unpin + 'static>(answer: impl IntoResponse, held: T) -> Response {
    let (parts, body) = answer.into_response().into_parts();
    let body = Holding {
        body,
        held: Some(held),
    };
    Response::from_parts(parts, Body::new(body))
}

/// A body and what it holds until its end.
struct Holding<T> {
    body: Body,
    held: Option<T>,
}

impl<T: Unpin> HttpBody for Holding<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            self.held = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use axum::http::header;
    use http_body_util::BodyExt;

    use super::*;

    /// Sets its flag when dropped.
    struct Flag(Arc<AtomicBool>);

    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn what_an_answer_holds_is_dropped_once_its_body_is_read_and_not_before() {
        let dropped = Arc::new(AtomicBool::new(false));
        let resp = then(axum::Json(vec![1, 2, 3]), Flag(dropped.clone()));
        // The answer keeps its length and type.
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.body().size_hint().exact(), Some(7));
        assert!(!dropped.load(Ordering::SeqCst));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"[1,2,3]");
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn an_answer_dropped_unread_drops_what_it_holds() {
        let dropped = Arc::new(AtomicBool::new(false));
        drop(then("gone", Flag(dropped.clone())));
        assert!(dropped.load(Ordering::SeqCst));
    }
}
