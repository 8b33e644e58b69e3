//! gRPC client plumbing shared by every client of ours (the stream to a
//! collector, `query`, and the OTLP exporter): how to reach a server (TLS,
//! client certificates, the bearer token), a status said for a person, and
//! one backoff.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How to reach collectors: shared by `run --collector` and `query`.
#[derive(Debug, Clone, clap::Args, Default)]
#[command(next_help_heading = "Collector connection")]
pub struct ClientArgs {
    /// Collector address, https://host:port. Several (repeat, or separate
    /// with commas): an agent streams to the one its agent id picks and
    /// fails over to the next in turn, so that a fleet given one list
    /// spreads over them; `query` asks each and merges their answers
    /// exactly. http:// only with --plaintext.
    #[arg(long = "collector", value_name = "URL", value_delimiter = ',')]
    pub collectors: Vec<String>,
    /// Allow http:// collector addresses (no TLS: reports and the token
    /// travel in clear).
    #[arg(long)]
    pub plaintext: bool,
    /// CA certificate(s) (PEM) to verify the collector with, instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for collectors that require mTLS; with --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// File holding the bearer token the collector expects (or set HOSTPROBE_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `run`'s export flags.
/// A gRPC channel to `url`, with TLS unless plaintext is allowed and asked
/// for; HTTP/2 keepalive notices a dead peer.
pub async fn channel(url: &str, args: &ClientArgs) -> anyhow::Result<Channel> {
    let mut ep = Endpoint::from_shared(url.to_string()).with_context(|| format!("bad collector address {url:?}"))?;
    match url.split("://").next() {
        Some("https") => {
            let mut tls = ClientTlsConfig::new();
            match &args.ca_file {
                Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read(ca)?)),
                None => tls = tls.with_enabled_roots(),
            }
            if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            ep = ep.tls_config(tls).context("TLS configuration")?;
        }
        Some("http") if args.plaintext => {}
        Some("http") => {
            bail!("{url} is plaintext (http://): use https://, or pass --plaintext to send reports unencrypted")
        }
        _ => bail!("bad collector address {url:?}: expected https://host:port"),
    }
    let ep = ep
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    ep.connect().await.map_err(|e| anyhow::anyhow!("{}", transport_error(url, &e)))
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// An error and its causes on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A transport error's causes on one line, with a hint where one helps.
pub fn transport_error(url: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = chain(e);
    let lower = s.to_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("unknown ca") {
        s.push_str(" (TLS: is --ca-file the CA that signed the collector's certificate, and does the collector accept our --client-cert?)");
    } else if lower.contains("refused") {
        s.push_str(" (is the collector running and listening there?)");
    } else if url.starts_with("http://") {
        s.push_str(" (the collector may require TLS: use https://)");
    }
    s
}

/// The bearer token: --token-file, else HOSTPROBE_TOKEN.
pub fn token(args: &ClientArgs) -> anyhow::Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> {
    let raw = match &args.token_file {
        Some(f) => Some(std::fs::read_to_string(f).with_context(|| format!("reading the token file {}", f.display()))?),
        None => std::env::var("HOSTPROBE_TOKEN").ok(),
    };
    match raw.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        Some(t) => Ok(Some(format!("Bearer {t}").parse().context("the token must be printable ASCII")?)),
        None => Ok(None),
    }
}

/// A gRPC status from the collector, said for a person: what it means and
/// what to do.
pub fn status_message(s: &tonic::Status) -> String {
    use tonic::Code;
    let what = match s.code() {
        Code::Unauthenticated => "the collector refused our credentials; check --token-file or HOSTPROBE_TOKEN",
        Code::PermissionDenied => "the collector does not allow this agent",
        Code::ResourceExhausted => "the collector is over a limit (rate, agents, or size); backing off",
        Code::InvalidArgument => "the collector rejected a report",
        Code::Unavailable => "the collector is unavailable",
        Code::Unimplemented => "that is not a hostprobe collector (no hostprobe.v1.Collector service)",
        _ => "the collector failed the stream",
    };
    let mut detail = s.message().to_string();
    let mut cur = std::error::Error::source(s);
    while let Some(c) = cur {
        detail.push_str(": ");
        detail.push_str(&c.to_string());
        cur = c.source();
    }
    let lower = detail.to_lowercase();
    let hint = if lower.contains("certificate") || lower.contains("alert") || lower.contains("tls") {
        " (TLS: is --ca-file the CA that signed the collector's certificate, and does the collector trust our --client-cert?)"
    } else {
        ""
    };
    format!("{what} ({:?}: {detail}){hint}", s.code())
}

/// How long to wait before the next attempt after `failures` failures in a
/// row: 250 ms doubling to 30 s, with full jitter over the upper half, so
/// that clients that lost the same server do not come back in step.
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1 << failures.min(7)).min(Duration::from_secs(30));
    base.mul_f64(0.5 + fastrand::f64() * 0.5)
}
