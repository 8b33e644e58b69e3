//! `--web-config-file`: TLS and basic auth for the HTTP endpoints
//! (`/metrics`, `/healthz`, `/readyz`), in the format of the Prometheus
//! exporter toolkit that node_exporter and every official exporter read:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/hostprobe/web.crt
//!   key_file: /etc/hostprobe/web.key
//!   client_ca_file: /etc/hostprobe/clients-ca.crt   # optional: require client certificates
//! basic_auth_users:
//!   prometheus: $2y$10$...                          # bcrypt hash (htpasswd -nBC 10 prometheus)
//! ```
//!
//! Basic auth guards `/metrics`; `/healthz` and `/readyz` say nothing
//! secret and stay open to the kubelet's probes (over TLS when it is on).

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

/// What a web config asks for, ready to serve.
#[derive(Clone)]
pub struct Web {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    users: Arc<BTreeMap<String, String>>,
    /// `Authorization` values already checked good: bcrypt is slow on
    /// purpose, and a scrape every few seconds must not pay it each time.
    verified: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").field("tls", &self.tls.is_some()).field("users", &self.users.len()).finish()
    }
}

impl Web {
    /// Reads and checks `path`; every error names the file and what to fix.
    pub fn load(path: &Path) -> anyhow::Result<Web> {
        let text = std::fs::read_to_string(path).with_context(|| format!("--web-config-file {}", path.display()))?;
        let file: File = serde_norway::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "--web-config-file {}: {e} (known keys: tls_server_config.{{cert_file, key_file, client_ca_file}}, \
                 basic_auth_users)",
                path.display()
            )
        })?;
        for (user, hash) in &file.basic_auth_users {
            if !hash.starts_with("$2") || hash.parse::<bcrypt::HashParts>().is_err() {
                bail!(
                    "--web-config-file {}: the password of {user:?} must be a bcrypt hash ($2y$...), e.g. from \
                     `htpasswd -nBC 10 {user}`; never the password itself",
                    path.display()
                );
            }
        }
        let tls = file.tls_server_config.map(|t| tls(&t, path)).transpose()?;
        Ok(Web { tls, users: Arc::new(file.basic_auth_users), verified: Default::default() })
    }

    /// Whether a request with this `Authorization` header may read
    /// `/metrics`.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some(value) = authorization else { return false };
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.contains(value) {
            return true;
        }
        let ok = basic_credentials(value)
            .and_then(|(user, pass)| Some(bcrypt::verify(pass, self.users.get(&user)?).unwrap_or(false)))
            .unwrap_or(false);
        if ok {
            if verified.len() >= 16 {
                verified.clear();
            }
            verified.insert(value.to_string());
        }
        ok
    }
}

/// `(user, password)` of a `Basic` authorization header.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (user, pass) = String::from_utf8(decoded).ok()?.split_once(':').map(|(u, p)| (u.to_string(), p.to_string()))?;
    Some((user, pass))
}

fn tls(t: &TlsFile, config: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    };
    let at = |what: &str, p: &Path| format!("--web-config-file {}: {what} {}", config.display(), p.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert_file)
        .and_then(|i| i.collect::<Result<_, _>>())
        .with_context(|| at("cannot read the certificates (PEM) of cert_file", &t.cert_file))?;
    if certs.is_empty() {
        bail!("{}: no certificate in it", at("cert_file", &t.cert_file));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key_file)
        .with_context(|| at("cannot read a private key (PEM) from key_file", &t.key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = match &t.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .with_context(|| at("cannot read client_ca_file", ca))?
            {
                roots.add(c).with_context(|| at("a certificate of client_ca_file is not usable", ca))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| at("client_ca_file", ca))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .with_context(|| at("key_file does not match cert_file, or is not usable:", &t.key_file))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("hostprobe-web-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let unknown = write("unknown.yml", "tls_server_config:\n  cert_file: a\n  key_fil: b\n");
        let e = Web::load(&unknown).unwrap_err().to_string();
        assert!(e.contains("key_fil") && e.contains("known keys"), "{e}");
        let plain = write("plain.yml", "basic_auth_users:\n  prometheus: secret\n");
        let e = Web::load(&plain).unwrap_err().to_string();
        assert!(e.contains("bcrypt") && e.contains("htpasswd"), "{e}");
        let missing = write("missing.yml", "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /k\n");
        let e = format!("{:#}", Web::load(&missing).unwrap_err());
        assert!(e.contains("/nonexistent.crt"), "{e}");
        for p in [unknown, plain, missing] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn basic_auth_checks_the_bcrypt_hash() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let p = write("auth.yml", &format!("basic_auth_users:\n  prometheus: '{hash}'\n"));
        let web = Web::load(&p).unwrap();
        let header = |u: &str, pw: &str| {
            use base64::Engine as _;
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}")))
        };
        assert!(web.allows(Some(&header("prometheus", "s3cret"))));
        assert!(web.allows(Some(&header("prometheus", "s3cret"))), "from the cache");
        assert!(!web.allows(Some(&header("prometheus", "wrong"))));
        assert!(!web.allows(Some(&header("someone", "s3cret"))));
        assert!(!web.allows(None));
        let _ = std::fs::remove_file(p);
    }
}
