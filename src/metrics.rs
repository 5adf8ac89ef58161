//! `--metrics ADDR`: a small HTTP/1.1 server (hyper) beside the engine, with `/metrics` in the
//! Prometheus text format and `/status` as JSON, both read from the engine's latest snapshot.
//! The engine does not know it is watched; the server only holds a `watch` receiver.
//!
//! Requests are hostile like every other input: GET and HEAD only, a few connections at once
//! (more are closed at accept), and headers must arrive within a few seconds.

pub mod exposition;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::engine::Snapshot;

/// Connections served at once; Prometheus keeps one open, a script or two may come and go.
const MAX_CONNECTIONS: usize = 8;
/// A client must send its request headers within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics address, bound (so that a taken port fails before the radio is dialled) but
/// not served yet.
#[derive(Debug)]
pub struct Bound {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

/// Binds `addr`; the error names it.
pub fn bind(addr: SocketAddr) -> anyhow::Result<Bound> {
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot serve metrics on {addr}: {e}");
    let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    let addr = listener.local_addr().map_err(fail)?;
    Ok(Bound { listener, addr })
}

impl Bound {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `/metrics` and `/status` from `snapshot` until the returned server is dropped.
    pub fn serve(self, snapshot: watch::Receiver<Snapshot>) -> anyhow::Result<MetricsServer> {
        let listener = TcpListener::from_std(self.listener)
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {}: {e}", self.addr))?;
        let routes = Arc::new(Routes {
            registry: exposition::registry(snapshot.clone()),
            snapshot,
        });
        log::info!(target: "keysync::metrics",
            "metrics on http://{}/metrics, status on http://{}/status", self.addr, self.addr);
        Ok(MetricsServer {
            addr: self.addr,
            task: tokio::spawn(accept_loop(listener, routes)),
        })
    }
}

/// The running server; dropping it stops it.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds and serves in one step, for callers that already run the engine.
pub fn serve(
    addr: SocketAddr,
    snapshot: watch::Receiver<Snapshot>,
) -> anyhow::Result<MetricsServer> {
    bind(addr)?.serve(snapshot)
}

#[derive(Debug)]
struct Routes {
    registry: Registry,
    snapshot: watch::Receiver<Snapshot>,
}

async fn accept_loop(listener: TcpListener, routes: Arc<Routes>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                log::warn!(target: "keysync::metrics", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::debug!(target: "keysync::metrics",
                "closed a connection from {peer}: {MAX_CONNECTIONS} already open");
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(routes.respond(&req)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                log::debug!(target: "keysync::metrics", "connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
}

impl Routes {
    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match req.uri().path() {
            "/metrics" => match exposition::render(&self.registry) {
                Ok(text) => body(StatusCode::OK, exposition::CONTENT_TYPE, text.into()),
                Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            },
            "/status" => {
                // A copy, so that the engine is not held up while ten thousand nodes are written.
                let snapshot = self.snapshot.borrow().clone();
                let status = status::Status::of(&snapshot, SystemTime::now());
                match serde_json::to_vec(&status) {
                    Ok(json) => body(StatusCode::OK, "application/json", json.into()),
                    Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
                }
            }
            "/" => plain(
                StatusCode::OK,
                "keysync: /metrics (Prometheus), /status (JSON)\n",
            ),
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found: try /metrics or /status\n",
            ),
        }
    }
}

fn plain(code: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    body(
        code,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

fn body(code: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(bytes));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
