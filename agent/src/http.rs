//! The HTTP endpoint: `/metrics` (Prometheus text exposition) and an index page.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use crate::agent::AgentState;

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
    Router::new().route("/metrics", get(metrics)).route("/", get(index)).with_state(state)
}

async fn metrics(axum::extract::State(state): axum::extract::State<Arc<AgentState>>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || state.render()).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body)
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><head><title>netns-agent</title></head><body><h1>netns-agent</h1>\
         <p><a href=\"/metrics\">Metrics</a></p></body></html>",
    )
}
