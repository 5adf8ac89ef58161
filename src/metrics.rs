//! `--metrics ADDR`: a small HTTP/1.1 server (hyper) beside the engine, with `/metrics` in the
//! Prometheus text format and `/status` as JSON, both read from the engine's latest snapshot.
//! The engine does not know it is watched; the server only holds a `watch` receiver.
//!
//! Requests are hostile like every other input: GET and HEAD only, a few connections at once,
//! a connection that sends no request for a few seconds (or stops reading its answer) is
//! closed, and when all are taken the one idle the longest makes room: idle connections
//! cannot starve a scrape. `/status` is written as it is sent, so a client that does not read
//! holds a chunk, not the whole list.

pub mod exposition;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::engine::{NodeView, Snapshot};

/// Connections open at once; Prometheus keeps one open, a script or two may come and go.
/// When all are taken, the one idle the longest is closed for the newcomer.
const MAX_CONNECTIONS: usize = 16;
/// A client must send its request (headers and all) within this long of connecting or of its
/// last answer.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// An answer the client stops reading is given up after this long without progress.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Nodes of `/status` written per chunk.
const NODES_PER_CHUNK: usize = 256;

/// What a response body is: chunks written as the client reads.
type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

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

/// Where one connection stands, and since when: waiting for a request (idle), or answering
/// one (busy, the time of its last progress).
#[derive(Debug, Clone, Copy)]
enum Phase {
    Idle(Instant),
    Busy(Instant),
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An open connection as the accept loop sees it.
struct Open {
    phase: Shared<Phase>,
    task: AbortHandle,
}

/// Room for a new connection among `open`: finished ones are forgotten; when all
/// [`MAX_CONNECTIONS`] are taken, the one idle the longest is closed. False when all are busy.
fn make_room(open: &mut Vec<Open>) -> bool {
    open.retain(|o| !o.task.is_finished());
    if open.len() < MAX_CONNECTIONS {
        return true;
    }
    let longest_idle = open
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match *lock(&o.phase) {
            Phase::Idle(since) => Some((since, i)),
            Phase::Busy(_) => None,
        })
        .min();
    match longest_idle {
        Some((_, i)) => {
            open.swap_remove(i).task.abort();
            true
        }
        None => false,
    }
}

async fn accept_loop(listener: TcpListener, routes: Arc<Routes>) {
    let mut open: Vec<Open> = Vec::with_capacity(MAX_CONNECTIONS);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                crate::engine::log_limited!(warn, "metrics-accept", target: "keysync::metrics",
                    "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if !make_room(&mut open) {
            crate::engine::log_limited!(info, "metrics-full", target: "keysync::metrics",
                "closed a connection from {peer}: {MAX_CONNECTIONS} requests already being answered");
            continue;
        }
        let phase = Arc::new(Mutex::new(Phase::Idle(Instant::now())));
        let task = tokio::spawn(serve_connection(
            stream,
            peer,
            routes.clone(),
            phase.clone(),
        ));
        open.push(Open {
            phase,
            task: task.abort_handle(),
        });
    }
}

/// Serves one connection until it closes, idles past [`IDLE_TIMEOUT`] or stalls an answer past
/// [`STALL_TIMEOUT`].
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    routes: Arc<Routes>,
    phase: Shared<Phase>,
) {
    let on_request = phase.clone();
    let service = hyper::service::service_fn(move |req| {
        *lock(&on_request) = Phase::Busy(Instant::now());
        let body_phase = on_request.clone();
        let routes = routes.clone();
        async move { Ok::<_, Infallible>(routes.respond(&req, body_phase)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = served => {
            if let Err(e) = served {
                log::debug!(target: "keysync::metrics", "connection from {peer}: {e}");
            }
        }
        () = watchdog(&phase) => {
            log::debug!(target: "keysync::metrics", "closed an idle or stalled connection from {peer}");
        }
    }
}

/// Returns when the connection has been idle for [`IDLE_TIMEOUT`] or its answer made no
/// progress for [`STALL_TIMEOUT`].
async fn watchdog(phase: &Mutex<Phase>) {
    loop {
        let deadline = match *lock(phase) {
            Phase::Idle(since) => since + IDLE_TIMEOUT,
            Phase::Busy(progress) => progress + STALL_TIMEOUT,
        };
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// `chunks` as a response body that marks the connection busy while it is written (each chunk
/// is progress) and idle again once it is done or dropped.
fn tracked(chunks: impl Iterator<Item = Bytes> + Send + 'static, phase: Shared<Phase>) -> Body {
    struct Done(Shared<Phase>);
    impl Drop for Done {
        fn drop(&mut self) {
            *lock(&self.0) = Phase::Idle(Instant::now());
        }
    }
    let done = Done(phase);
    let stream = futures::stream::iter(chunks).map(move |bytes| {
        *lock(&done.0) = Phase::Busy(Instant::now());
        Ok(Frame::data(bytes))
    });
    StreamBody::new(stream.boxed())
}

impl Routes {
    fn respond(&self, req: &Request<Incoming>, phase: Shared<Phase>) -> Response<Body> {
        let (code, content_type, chunks): (_, _, Box<dyn Iterator<Item = Bytes> + Send>) =
            self.route(req);
        let mut r = Response::new(tracked(chunks, phase));
        *r.status_mut() = code;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if code == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        r
    }

    fn route(
        &self,
        req: &Request<Incoming>,
    ) -> (
        StatusCode,
        &'static str,
        Box<dyn Iterator<Item = Bytes> + Send>,
    ) {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into());
        }
        match req.uri().path() {
            "/metrics" => match exposition::render(&self.registry) {
                Ok(text) => (
                    StatusCode::OK,
                    exposition::CONTENT_TYPE,
                    Box::new(std::iter::once(text.into())),
                ),
                Err(_) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding failed\n".into(),
                ),
            },
            "/status" => match status::Page::of_query(req.uri().query()) {
                Ok(page) => match self.status(page) {
                    Some(chunks) => (StatusCode::OK, "application/json", chunks),
                    None => plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding failed\n".into(),
                    ),
                },
                Err(why) => plain(StatusCode::BAD_REQUEST, format!("/status: {why}\n")),
            },
            "/" => plain(
                StatusCode::OK,
                "keysync: /metrics (Prometheus), /status (JSON; ?nodes=N&after=NUM lists nodes)\n"
                    .into(),
            ),
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found: try /metrics or /status\n".into(),
            ),
        }
    }

    /// `/status` in chunks: the summary, then the page of nodes asked for, a few hundred at a
    /// time, written only as the client reads.
    fn status(&self, page: Option<status::Page>) -> Option<Box<dyn Iterator<Item = Bytes> + Send>> {
        let snapshot = self.snapshot.borrow().clone();
        let mut summary =
            serde_json::to_value(status::Status::of(&snapshot, SystemTime::now())).ok()?;
        let Some(page) = page else {
            let mut json = serde_json::to_vec(&summary).ok()?;
            json.push(b'\n');
            return Some(Box::new(std::iter::once(json.into())));
        };
        let (range, next) = page.range(&snapshot.nodes);
        summary["next_after"] = next.into();
        let mut head = serde_json::to_vec(&summary).ok()?;
        // The object stays open for the list.
        head.pop();
        head.extend_from_slice(b",\"nodes\":[");
        let list = NodeChunks {
            snapshot: self.snapshot.clone(),
            after: page.after,
            left: range.len(),
            first: true,
        };
        let tail = std::iter::once(Bytes::from_static(b"]}\n"));
        Some(Box::new(
            std::iter::once(head.into()).chain(list).chain(tail),
        ))
    }
}

/// The nodes of a `/status` page, [`NODES_PER_CHUNK`] at a time, each chunk read from the
/// engine's latest node list after the last number written. A client that reads slowly holds
/// no old copy of the list while the engine publishes new ones.
struct NodeChunks {
    snapshot: watch::Receiver<Snapshot>,
    after: Option<u32>,
    left: usize,
    first: bool,
}

impl Iterator for NodeChunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let nodes = self.snapshot.borrow().nodes.clone();
        let start = self
            .after
            .map_or(0, |a| nodes.partition_point(|n| n.record.num <= a));
        let end = start
            .saturating_add(NODES_PER_CHUNK.min(self.left))
            .min(nodes.len());
        if start >= end {
            return None;
        }
        let chunk = node_chunk(&nodes[start..end], self.first);
        self.first = false;
        self.left -= end - start;
        self.after = Some(nodes[end - 1].record.num);
        Some(chunk)
    }
}

/// `nodes` as JSON array elements, with the comma before them unless they are the first.
fn node_chunk(nodes: &[NodeView], first: bool) -> Bytes {
    let mut out = Vec::with_capacity(nodes.len() * 400);
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 || !first {
            out.push(b',');
        }
        // A node of plain strings and numbers always encodes.
        if serde_json::to_writer(&mut out, &status::Node::of(n)).is_err() {
            out.extend_from_slice(b"null");
        }
    }
    out.into()
}

fn plain(
    code: StatusCode,
    text: String,
) -> (
    StatusCode,
    &'static str,
    Box<dyn Iterator<Item = Bytes> + Send>,
) {
    (
        code,
        "text/plain; charset=utf-8",
        Box::new(std::iter::once(text.into())),
    )
}
