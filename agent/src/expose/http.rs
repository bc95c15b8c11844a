//! The HTTP endpoint: `/metrics` (Prometheus text exposition), the JSON API
//! (`/api/v1/namespaces`, `/api/v1/events`) and an index page. Work that reads the kernel
//! or /proc runs on blocking threads; a failed render is a 500 with a logged reason.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::net::TcpListener;

use super::{
    Source, metrics,
    web::{self, Auth, WebConfig},
};
use crate::{
    errors::error_chain,
    model::{journal::Filter, view::NamespaceView},
};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct ListenError {
    addr: SocketAddr,
    reason: String,
}

impl ListenError {
    pub fn new(addr: SocketAddr, reason: String) -> Self {
        Self { addr, reason }
    }
}

/// Binds the listen address, with an error that says what to do about it.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|err| {
        let reason = match err.kind() {
            std::io::ErrorKind::AddrInUse => {
                "address already in use (another netns-agent or exporter?); pick another with --listen"
                    .to_owned()
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "no such address on this host; use one of its addresses or 0.0.0.0".to_owned()
            }
            std::io::ErrorKind::PermissionDenied => "permission denied; use a port above 1023".to_owned(),
            _ => err.to_string(),
        };
        ListenError { addr, reason }
    })
}

type Shared = Arc<dyn Source>;

/// What the server offers and to whom.
#[derive(Clone, Debug)]
pub struct Options {
    /// TLS and basic authentication (`--web.config.file`).
    pub web: WebConfig,
    /// Serve `/metrics` only, not the JSON API (`--web.disable-api`).
    pub disable_api: bool,
    /// Where the exposition is (`--web.telemetry-path`, default `/metrics`).
    pub telemetry_path: String,
    /// Connections served at once (`limits.http_connections`).
    pub max_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            web: WebConfig::default(),
            disable_api: false,
            telemetry_path: "/metrics".to_owned(),
            max_connections: 128,
        }
    }
}

pub fn router(source: Shared, options: &Options) -> Router {
    let mut router = Router::new().route(&options.telemetry_path, get(metrics)).route("/", get(index));
    if !options.disable_api {
        router = router.route("/api/v1/namespaces", get(namespaces)).route("/api/v1/events", get(events));
    }
    let router = router.with_state(Arc::clone(&source));
    let auth = Auth::new(options.web.users.clone());
    let router = if auth.enabled() {
        router.layer(axum::middleware::from_fn_with_state(auth, web::require_auth))
    } else {
        router
    };
    // Health endpoints say nothing about the host, and a kubelet's probes carry no password:
    // they stay outside basic authentication (they are still served over TLS when it is on).
    router
        .merge(
            Router::new().route("/-/healthy", get(healthy)).route("/-/ready", get(ready)).with_state(source),
        )
        // gzip when the scraper asks for it (Prometheus does): the exposition shrinks ~10x.
        .layer(tower_http::compression::CompressionLayer::new())
}

async fn healthy() -> &'static str {
    "Healthy\n"
}

async fn ready(State(source): State<Shared>) -> Response {
    if source.ready() {
        "Ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Not ready: the first scan of processes and mounts is under way\n")
            .into_response()
    }
}

/// A client that sends no complete request in this long is dropped, so a slow client
/// cannot hold a connection (and the scrapes behind it) for long.
const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A kept-alive connection whose next request has not fully arrived this long after it
/// became idle is closed: a client that vanished (or lingers) gives its slot back. Prometheus
/// reconnects when its scrape interval is longer.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `source` on `listener` until the task is dropped, over TLS when configured, at
/// most `options.max_connections` connections at once.
pub async fn serve(listener: TcpListener, source: Shared, options: &Options) -> std::io::Result<()> {
    let app = router(source, options).into_make_service();
    let listener =
        Limited { listener, slots: Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1))) };
    let mut server =
        axum_server::Server::<Peer>::from_listener(listener).first_request_timeout(FIRST_REQUEST_TIMEOUT);
    server.http_builder().http1().header_read_timeout(IDLE_TIMEOUT);
    match &options.web.tls {
        Some(tls) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::clone(tls));
            server.acceptor(axum_server::tls_rustls::RustlsAcceptor::new(config)).serve(app).await
        }
        None => server.serve(app).await,
    }
}

/// The listener with a bound on open connections: it accepts only while a slot is free, so
/// past the limit new connections wait in the kernel's listen backlog (their connect has
/// completed; their request is read once a connection closes) instead of taking a file
/// descriptor and a task each.
struct Limited {
    listener: TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

/// axum-server's address type for the [`Limited`] listener; nothing reads peers' addresses.
#[derive(Clone, Copy, Debug)]
struct Peer;

impl axum_server::Address for Peer {
    type Stream = Slotted;
    type Listener = Limited;
}

impl axum_server::AddrListener<Slotted, Peer> for Limited {
    async fn bind_to(_: Peer) -> std::io::Result<Self> {
        // Never called: the server is built from a bound listener.
        Err(std::io::ErrorKind::Unsupported.into())
    }

    async fn accept_stream(&self) -> std::io::Result<(Slotted, Peer)> {
        let slot = Arc::clone(&self.slots).acquire_owned().await.map_err(std::io::Error::other)?;
        let (stream, _) = self.listener.accept().await?;
        Ok((Slotted { stream, _slot: slot }, Peer))
    }

    fn get_local_addr(&self) -> std::io::Result<Peer> {
        self.listener.local_addr().map(|_| Peer)
    }
}

/// An accepted connection; its slot is free again when it is dropped (closed).
struct Slotted {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Slotted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Slotted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A 500 whose reason is logged (the body says only that it failed: the log has the cause).
fn internal_error(what: &str, reason: String) -> Response {
    log::error!("{what}: {reason}");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{what}; see the agent's log\n")).into_response()
}

/// Runs blocking work off the async workers; a panic in it becomes an error.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|err| err.to_string())
}

async fn metrics(State(source): State<Shared>) -> Response {
    match blocking(move || metrics::render(&source.snapshot())).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Ok(Err(err)) => internal_error("rendering /metrics failed", error_chain(&err)),
        Err(panic) => internal_error("rendering /metrics failed", panic),
    }
}

#[derive(Debug, Deserialize)]
struct NamespacesQuery {
    /// Only the namespace of this process.
    pid: Option<i32>,
}

async fn namespaces(State(source): State<Shared>, Query(query): Query<NamespacesQuery>) -> Response {
    let result = blocking(move || -> Result<Vec<NamespaceView>, String> {
        let wanted = match query.pid {
            Some(pid) => Some(source.netns_of_pid(pid).ok_or(format!("no process {pid}"))?),
            None => None,
        };
        let mut views = super::namespaces(source.snapshot());
        if let Some(inum) = wanted {
            views.retain(|v| v.netns == inum);
        }
        Ok(views)
    })
    .await;
    match result {
        Ok(Ok(views)) => Json(views).into_response(),
        Ok(Err(not_found)) => (StatusCode::NOT_FOUND, not_found).into_response(),
        Err(panic) => internal_error("listing namespaces failed", panic),
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    netns: Option<u32>,
    cookie: Option<u64>,
    since: Option<u64>,
    limit: Option<usize>,
}

async fn events(State(source): State<Shared>, Query(query): Query<EventsQuery>) -> Response {
    let filter = Filter { netns: query.netns, cookie: query.cookie };
    let view = source.events(&filter, query.since.unwrap_or(0), query.limit.unwrap_or(1000));
    Json(view).into_response()
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><head><title>netns-agent</title></head><body><h1>netns-agent</h1><ul>\
         <li><a href=\"/metrics\">/metrics</a></li>\
         <li><a href=\"/api/v1/namespaces\">/api/v1/namespaces</a></li>\
         <li><a href=\"/api/v1/events\">/api/v1/events</a></li>\
         <li><a href=\"/-/healthy\">/-/healthy</a>, <a href=\"/-/ready\">/-/ready</a></li></ul></body></html>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{snapshot::Snapshot, view::EventsView};

    /// A source whose snapshot panics, as a bug in a collector would.
    struct Broken;

    impl Source for Broken {
        fn snapshot(&self) -> Snapshot {
            panic!("collector bug")
        }
        fn events(&self, _: &Filter, _: u64, _: usize) -> EventsView {
            EventsView::default()
        }
        fn netns_of_pid(&self, _: i32) -> Option<u32> {
            None
        }
        fn ready(&self) -> bool {
            false
        }
    }

    struct Empty;

    impl Source for Empty {
        fn snapshot(&self) -> Snapshot {
            Snapshot::default()
        }
        fn events(&self, _: &Filter, _: u64, _: usize) -> EventsView {
            EventsView::default()
        }
        fn netns_of_pid(&self, _: i32) -> Option<u32> {
            None
        }
        fn ready(&self) -> bool {
            false
        }
    }

    async fn get(source: Shared, path: &str) -> (StatusCode, String) {
        use tower::ServiceExt as _;
        let request = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let response = router(source, &Options::default()).oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_failed_render_is_a_500_not_an_empty_200() {
        let (status, body) = get(Arc::new(Broken), "/metrics").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        let (status, _) = get(Arc::new(Broken), "/api/v1/namespaces").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn a_good_render_is_a_200_and_an_unknown_pid_a_404() {
        let (status, body) = get(Arc::new(Empty), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("netns_alive 0"), "{body}");
        let (status, _) = get(Arc::new(Empty), "/api/v1/namespaces?pid=1").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(get(Arc::new(Empty), "/-/healthy").await.0, StatusCode::OK);
        // gzip when asked for.
        use tower::ServiceExt as _;
        let request = axum::http::Request::get("/metrics")
            .header("accept-encoding", "gzip")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router(Arc::new(Empty), &Options::default()).oneshot(request).await.unwrap();
        assert_eq!(response.headers().get("content-encoding").map(|v| v.to_str().unwrap()), Some("gzip"));
        assert_eq!(
            get(Arc::new(Empty), "/-/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "not scanned yet"
        );
    }
}
