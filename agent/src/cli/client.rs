//! The client of a running agent's JSON API, for `ls`, `show` and `events`.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::model::{
    journal::Filter,
    view::{EventsView, NamespaceView},
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no agent answering at {addr} ({reason}): start one with 'netns-agent run', or point --agent or \
         NETNS_AGENT_ADDR at it"
    )]
    NoAgent { addr: String, reason: String },
    #[error("the agent at {addr} answered {path} with: {reason}")]
    Bad { addr: String, path: String, reason: String },
    #[error("no namespace matches {0:?} (give an inode number, an ip netns name or a pid)")]
    NotFound(String),
}

pub struct Client {
    addr: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(addr: &str) -> Self {
        let config = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build();
        Self { addr: addr.to_owned(), agent: config.into() }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("http://{}{path}", self.addr);
        let bad =
            |reason: String| ClientError::Bad { addr: self.addr.clone(), path: path.to_owned(), reason };
        let mut response = self.agent.get(&url).call().map_err(|err| match err {
            ureq::Error::StatusCode(code) => bad(format!("HTTP {code}")),
            ureq::Error::Io(io) => ClientError::NoAgent { addr: self.addr.clone(), reason: io.to_string() },
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                ClientError::NoAgent { addr: self.addr.clone(), reason: err.to_string() }
            }
            other => bad(other.to_string()),
        })?;
        let body = response.body_mut().read_to_string().map_err(|err| bad(err.to_string()))?;
        serde_json::from_str(&body).map_err(|err| bad(err.to_string()))
    }

    pub fn namespaces(&self) -> Result<Vec<NamespaceView>, ClientError> {
        self.get("/api/v1/namespaces")
    }

    pub fn namespace_of_pid(&self, pid: i32) -> Result<Vec<NamespaceView>, ClientError> {
        self.get(&format!("/api/v1/namespaces?pid={pid}"))
    }

    pub fn events(&self, filter: &Filter, since: u64, limit: usize) -> Result<EventsView, ClientError> {
        let filter = filter.netns.map(|n| format!("&netns={n}")).unwrap_or_default()
            + &filter.cookie.map(|c| format!("&cookie={c}")).unwrap_or_default();
        self.get(&format!("/api/v1/events?since={since}&limit={limit}{filter}"))
    }
}

/// Finds the namespace a `show` argument names: an inode number, a pid, or a name.
pub fn find(client: &Client, what: &str) -> Result<NamespaceView, ClientError> {
    const FIRST_NS_INODE: u64 = 0xF000_0000;
    let found = match what.parse::<u64>() {
        Ok(n) if n >= FIRST_NS_INODE => client.namespaces()?.into_iter().find(|ns| u64::from(ns.netns) == n),
        Ok(pid) => match client.namespace_of_pid(pid as i32) {
            Ok(found) => found.into_iter().next(),
            Err(ClientError::Bad { .. }) => None, // no such process
            Err(err) => return Err(err),
        },
        Err(_) => client.namespaces()?.into_iter().find(|ns| ns.names.iter().any(|n| n == what)),
    };
    found.ok_or_else(|| ClientError::NotFound(what.to_owned()))
}
