//! The web configuration, in the format of the Prometheus exporter toolkit
//! (`--web.config.file`, as node_exporter reads it): TLS for the endpoint, optionally
//! requiring client certificates, and HTTP basic authentication with bcrypt hashes. It
//! applies to every path the agent serves (`/metrics` and `/api/v1` alike).
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # relative paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
//!   client_ca_file: ca.crt
//! basic_auth_users:
//!   prometheus: $2y$10$...         # htpasswd -nBC 10 "" | tr -d ':\n'
//! ```

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
};
use yaml_rust2::{Yaml, YamlLoader};

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("web config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Who may see the endpoint, and how it is served.
#[derive(Clone, Default)]
pub struct WebConfig {
    /// TLS settings; plain HTTP when `None`.
    pub tls: Option<Arc<ServerConfig>>,
    /// user -> bcrypt hash; no authentication when empty.
    pub users: HashMap<String, String>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

const TLS_KEYS: &[&str] = &[
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
];

impl WebConfig {
    /// Reads and checks a web config file: every problem is one line naming the file and key.
    pub fn read(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| WebConfigError::Read { path: path.to_owned(), source })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).map_err(|reason| WebConfigError::Invalid { path: path.to_owned(), reason })
    }

    /// Parses the text; relative file names are taken relative to `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, String> {
        let docs = YamlLoader::load_from_str(text).map_err(|err| format!("not YAML: {err}"))?;
        let root = match docs.first() {
            None | Some(Yaml::Null) => return Ok(Self::default()),
            Some(Yaml::Hash(_)) => &docs[0],
            Some(_) => return Err("expected a mapping at the top".into()),
        };
        for key in root.as_hash().into_iter().flat_map(|h| h.keys()) {
            match key.as_str() {
                Some("tls_server_config" | "basic_auth_users" | "http_server_config") => {}
                other => {
                    return Err(format!(
                        "unknown key {:?} (expected tls_server_config, basic_auth_users, http_server_config)",
                        other.unwrap_or("?")
                    ));
                }
            }
        }
        let mut config = Self::default();
        if let Yaml::Hash(users) = &root["basic_auth_users"] {
            for (user, hash) in users {
                let (Some(user), Some(hash)) = (user.as_str(), hash.as_str()) else {
                    return Err("basic_auth_users: every entry is user: bcrypt-hash".into());
                };
                if bcrypt::verify("", hash).is_err() {
                    return Err(format!(
                        "basic_auth_users.{user:?}: not a bcrypt hash (make one with htpasswd -nBC 10)"
                    ));
                }
                config.users.insert(user.to_owned(), hash.to_owned());
            }
        } else if !root["basic_auth_users"].is_badvalue() && !root["basic_auth_users"].is_null() {
            return Err("basic_auth_users must be a mapping of user: bcrypt-hash".into());
        }
        let tls = &root["tls_server_config"];
        if let Yaml::Hash(map) = tls {
            for key in map.keys() {
                let key = key.as_str().unwrap_or("?");
                if !TLS_KEYS.contains(&key) {
                    return Err(format!("tls_server_config: unknown key {key:?}"));
                }
            }
            config.tls = Some(Arc::new(tls_config(tls, dir)?));
        } else if !tls.is_badvalue() && !tls.is_null() {
            return Err("tls_server_config must be a mapping".into());
        }
        Ok(config)
    }
}

/// A file name as errors show it: quoted, so that no name can break the one-line error.
fn shown(path: &Path) -> String {
    format!("{:?}", path.to_string_lossy())
}

fn file_of(tls: &Yaml, key: &str, dir: &Path) -> Result<Option<PathBuf>, String> {
    match &tls[key] {
        Yaml::String(name) => Ok(Some(dir.join(name))),
        Yaml::BadValue | Yaml::Null => Ok(None),
        _ => Err(format!("tls_server_config.{key} must be a file name")),
    }
}

fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("tls_server_config.{key} {}: {err}", shown(path)))
}

fn certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path, key)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|err| format!("tls_server_config.{key} {}: {err}", shown(path)))?;
    if certs.is_empty() {
        return Err(format!("tls_server_config.{key} {}: no PEM certificate in it", shown(path)));
    }
    Ok(certs)
}

fn tls_config(tls: &Yaml, dir: &Path) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_file = file_of(tls, "cert_file", dir)?.ok_or("tls_server_config.cert_file is required")?;
    let key_file = file_of(tls, "key_file", dir)?.ok_or("tls_server_config.key_file is required")?;
    let certs = certificates(&cert_file, "cert_file")?;
    let key_pem = read_pem(&key_file, "key_file")?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|err| format!("tls_server_config.key_file {}: {err}", shown(&key_file)))?
        .ok_or_else(|| {
            format!("tls_server_config.key_file {}: no PEM private key in it", shown(&key_file))
        })?;
    let auth_type = tls["client_auth_type"].as_str().unwrap_or("NoClientCert");
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("tls_server_config: {err}"))?;
    let builder = match auth_type {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let ca_file = file_of(tls, "client_ca_file", dir)?
                .ok_or_else(|| format!("tls_server_config.client_ca_file is required with {auth_type}"))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(&ca_file, "client_ca_file")? {
                roots.add(cert).map_err(|err| format!("tls_server_config.client_ca_file: {err}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth_type == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier.build().map_err(|err| format!("tls_server_config.client_ca_file: {err}"))?,
            )
        }
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type {other:?} is not supported (use NoClientCert, \
                 VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
            ));
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| format!("tls_server_config: certificate and key do not fit together: {err}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Basic authentication against the configured users. bcrypt is slow on purpose, so a
/// verified (user, password) pair is remembered, as the exporter toolkit does.
#[derive(Clone)]
pub struct Auth {
    users: Arc<HashMap<String, String>>,
    verified: Arc<Mutex<HashMap<String, String>>>,
}

impl Auth {
    pub fn new(users: HashMap<String, String>) -> Self {
        Self { users: Arc::new(users), verified: Arc::default() }
    }

    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// True if the `Authorization` header names a configured user with the right password.
    fn allows(&self, authorization: Option<&str>) -> bool {
        use base64::Engine as _;
        let Some(encoded) = authorization.and_then(|h| h.strip_prefix("Basic ")) else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else { return false };
        let Some((user, password)) = text.split_once(':') else { return false };
        let Some(hash) = self.users.get(user) else { return false };
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.get(user).is_some_and(|p| p == password) {
            return true;
        }
        if bcrypt::verify(password, hash).unwrap_or(false) {
            verified.insert(user.to_owned(), password.to_owned());
            return true;
        }
        false
    }
}

/// The middleware: 401 with a challenge unless the request authenticates.
pub async fn require_auth(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let header =
        request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let allowed = {
        let auth = auth.clone();
        tokio::task::spawn_blocking(move || auth.allows(header.as_deref())).await.unwrap_or(false)
    };
    if allowed {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"netns-agent\"")],
            "Unauthorized\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_serves_plain_http_without_auth() {
        let c = WebConfig::parse("", Path::new(".")).unwrap();
        assert!(c.tls.is_none() && c.users.is_empty());
    }

    #[test]
    fn malformed_configs_say_what_is_wrong_on_one_line() {
        let cases = [
            ("tls_server_config: 5", "must be a mapping"),
            (
                "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: k",
                "cert_file \"/nonexistent.crt\"",
            ),
            ("tls_server_config:\n  key_file: k", "cert_file is required"),
            ("tls_server_config:\n  cert_fil: x", "unknown key \"cert_fil\""),
            ("basic_auth_users:\n  alice: plaintext", "not a bcrypt hash"),
            ("basic_auth_users:\n  \"a\\nb\": plaintext", "\"a\\nb\""),
            ("basic_auth_user:\n  alice: x", "unknown key \"basic_auth_user\""),
            ("[1, 2]", "expected a mapping"),
            ("a: [", "not YAML"),
        ];
        for (text, want) in cases {
            let err = WebConfig::parse(text, Path::new("/")).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn basic_auth_checks_user_and_password() {
        use base64::Engine as _;
        let hash = bcrypt::hash("secret", 4).unwrap();
        let auth = Auth::new([("alice".to_owned(), hash)].into());
        let header = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert!(auth.allows(Some(&header("alice:secret"))));
        assert!(auth.allows(Some(&header("alice:secret"))), "cached");
        assert!(!auth.allows(Some(&header("alice:wrong"))));
        assert!(!auth.allows(Some(&header("bob:secret"))));
        assert!(!auth.allows(None));
        assert!(!auth.allows(Some("Bearer x")));
    }
}
