//! `grpc.health.v1.Health` over h2c without a gRPC framework: one length-prefixed protobuf message each way and
//! the `grpc-status` trailer. Check answers SERVING (1) while ready, NOT_SERVING (2) otherwise; Watch streams the
//! status whenever it changes (for at most an hour).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State as Ext;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::StreamBody;
use hyper::body::Frame;

use crate::state::State;

const SERVING: u8 = 1;
const NOT_SERVING: u8 = 2;

fn status_of(state: &State) -> u8 {
    if state.ready() { SERVING } else { NOT_SERVING }
}

/// One gRPC message frame holding `HealthCheckResponse { status }`.
fn response_frame(status: u8) -> Bytes {
    Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status])
}

/// The `service` field of a framed `HealthCheckRequest`, if the frame is well formed.
pub fn requested_service(body: &[u8]) -> Option<String> {
    let (prefix, msg) = body.split_at_checked(5)?;
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let msg = msg.get(..len)?;
    if msg.is_empty() {
        return Some(String::new());
    }
    if msg[0] != 0x0a {
        return None;
    }
    let n = *msg.get(1)? as usize;
    if n >= 0x80 {
        return None;
    }
    String::from_utf8(msg.get(2..2 + n)?.to_vec()).ok()
}

fn trailers(code: u32, message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message) {
        t.insert("grpc-message", v);
    }
    t
}

fn grpc_response(body: Body) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/grpc")], body).into_response()
}

/// `Health/Check`.
pub async fn check(Ext(state): Ext<Arc<State>>, body: Bytes) -> Response {
    let Some(service) = requested_service(&body) else {
        let frames = vec![Ok::<_, Infallible>(Frame::trailers(trailers(13, "malformed HealthCheckRequest")))];
        return grpc_response(Body::new(StreamBody::new(futures::stream::iter(frames))));
    };
    let status = status_of(&state);
    println!("grpc health check service={service:?} -> {status}");
    let frames = vec![Ok::<_, Infallible>(Frame::data(response_frame(status))), Ok(Frame::trailers(trailers(0, "")))];
    grpc_response(Body::new(StreamBody::new(futures::stream::iter(frames))))
}

/// `Health/Watch`: the current status, then every change.
pub async fn watch(Ext(state): Ext<Arc<State>>) -> Response {
    let stream = futures::stream::unfold((state, None::<u8>, 0u32), |(state, last, ticks)| async move {
        let mut ticks = ticks;
        loop {
            if ticks > 7_200 {
                return None;
            }
            let now = status_of(&state);
            if last != Some(now) {
                return Some((Ok::<_, Infallible>(Frame::data(response_frame(now))), (state, Some(now), ticks)));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            ticks += 1;
        }
    });
    grpc_response(Body::new(StreamBody::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_name_is_read_from_a_framed_request() {
        assert_eq!(requested_service(&[0, 0, 0, 0, 0]), Some(String::new()));
        assert_eq!(requested_service(&[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'b', b'c']), Some("abc".into()));
        assert_eq!(requested_service(&[0, 0, 0]), None);
        assert_eq!(requested_service(&[0, 0, 0, 0, 5, 0x12, 3, b'a', b'b', b'c']), None);
    }
}
