//! The HTTP endpoint: `/metrics` (Prometheus text exposition), the JSON API
//! (`/api/v1/namespaces`, `/api/v1/events`) and an index page.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::{api, state::AgentState};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct ListenError {
    addr: SocketAddr,
    reason: String,
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

pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/namespaces", get(namespaces))
        .route("/api/v1/events", get(events))
        .route("/", get(index))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AgentState>>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || state.render()).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body)
}

#[derive(Debug, Deserialize)]
struct NamespacesQuery {
    /// Only the namespace of this process.
    pid: Option<i32>,
}

async fn namespaces(
    State(state): State<Arc<AgentState>>,
    Query(query): Query<NamespacesQuery>,
) -> Result<Json<Vec<api::NamespaceView>>, (StatusCode, String)> {
    let mut views = tokio::task::spawn_blocking({
        let state = Arc::clone(&state);
        move || api::namespaces(&state)
    })
    .await
    .unwrap_or_default();
    if let Some(pid) = query.pid {
        let inum = crate::attribution::process(&state.sources, pid)
            .map(|(inum, _, _)| inum)
            .ok_or((StatusCode::NOT_FOUND, format!("no process {pid}")))?;
        views.retain(|v| v.netns == inum);
    }
    Ok(Json(views))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    netns: Option<u32>,
    since: Option<u64>,
    limit: Option<usize>,
}

async fn events(
    State(state): State<Arc<AgentState>>,
    Query(query): Query<EventsQuery>,
) -> Json<api::EventsView> {
    Json(api::events(&state, query.netns, query.since.unwrap_or(0), query.limit.unwrap_or(1000)))
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><head><title>netns-agent</title></head><body><h1>netns-agent</h1><ul>\
         <li><a href=\"/metrics\">/metrics</a></li>\
         <li><a href=\"/api/v1/namespaces\">/api/v1/namespaces</a></li>\
         <li><a href=\"/api/v1/events\">/api/v1/events</a></li></ul></body></html>",
    )
}
