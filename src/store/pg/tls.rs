//! TLS to PostgreSQL with rustls (ring), as libpq reads `sslmode` and `sslrootcert`.
//!
//! tokio-postgres itself knows only `sslmode=disable|prefer|require` and no `sslrootcert`, so
//! [`split_url`] takes both out of `store.url` and [`MakeRustls`] does what libpq does:
//! - `disable`: plain TCP;
//! - `prefer` (the default, as in libpq): TLS when the server offers it, plain otherwise;
//!   the certificate is not checked;
//! - `require`: TLS or no connection, the certificate not checked (encryption against a
//!   passive eavesdropper only); with a CA file it behaves as `verify-ca`, as libpq's does;
//! - `verify-ca`: TLS with a certificate chain to the CA file's roots, any host name;
//! - `verify-full`: that, and the certificate names the host of `store.url` (a DNS name or
//!   an IP address in its subject alternative names).
//!
//! The CA is `sslrootcert=/path/ca.pem` in the URL or `store.ca_file` (the URL wins), or
//! `sslrootcert=system` for the machine's trust store (only with `verify-full`, as libpq).
//! Client certificates (`sslcert`, `sslkey`) are not supported. SCRAM channel binding is not
//! offered (`channel_binding=require` fails); SCRAM itself works over TLS as without it.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// `sslmode` as libpq reads it (`allow` is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether TLS is tried, and required.
    pub(crate) fn for_postgres(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// No CA given: the certificate is not checked (`prefer`, `require`).
    Unchecked,
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// The machine's trust store (`sslrootcert=system`).
    System,
}

/// The TLS settings of `store.url` (and `store.ca_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub roots: Roots,
}

/// Takes `sslmode` and `sslrootcert` out of `url` (tokio-postgres would refuse
/// `verify-ca`, `verify-full` and `sslrootcert`), returning the URL left and the settings;
/// `ca_file` is `store.ca_file`. The error says what is wrong, never with the URL.
pub fn split_url(url: &str, ca_file: Option<&Path>) -> Result<(String, TlsSettings), String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = SslMode::Prefer;
    let mut rootcert: Option<String> = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value: String = form_urlencoded::parse(format!("v={v}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        match k {
            "sslmode" => {
                mode = SslMode::parse(&value).ok_or_else(|| {
                    format!(
                        "sslmode={value}: expected disable, prefer, require, verify-ca or verify-full"
                    )
                })?;
            }
            "sslrootcert" => rootcert = Some(value),
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" => {
                return Err(format!(
                    "{k}: client certificates and CRLs are not supported (use a password over \
                     sslmode=verify-full)"
                ));
            }
            _ => kept.push(pair),
        }
    }
    let roots = match rootcert.as_deref() {
        Some("system") => Roots::System,
        Some("") => return Err("sslrootcert is empty: give the path of a CA file".into()),
        Some(path) => Roots::File(PathBuf::from(path)),
        None => match ca_file {
            Some(path) => Roots::File(path.to_path_buf()),
            None => Roots::Unchecked,
        },
    };
    match (&roots, mode) {
        (Roots::System, SslMode::VerifyFull) => {}
        (Roots::System, m) => {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full, not {}: a public CA signs \
                 certificates for anyone, so only the host name check makes it safe",
                m.name()
            ));
        }
        (Roots::Unchecked, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(format!(
                "sslmode={} needs the CA that signed the server's certificate: \
                 sslrootcert=/path/ca.pem in store.url, store.ca_file, or sslrootcert=system \
                 for the machine's trust store",
                mode.name()
            ));
        }
        _ => {}
    }
    // As libpq: `require` with a CA file verifies the chain.
    let mode = match (mode, &roots) {
        (SslMode::Require, Roots::File(_)) => SslMode::VerifyCa,
        (m, _) => m,
    };
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, TlsSettings { mode, roots }))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots of `roots` (`Unchecked` has none); the error names the file.
fn load_roots(roots: &Roots) -> Result<Option<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::Unchecked => return Ok(None),
        Roots::File(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("CA file {}: cannot read it: {e}", path.display()))?;
            let mut any = false;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    format!("CA file {}: not a PEM certificate: {e}", path.display())
                })?;
                store.add(cert).map_err(|e| {
                    format!(
                        "CA file {}: not a usable CA certificate: {e}",
                        path.display()
                    )
                })?;
                any = true;
            }
            if !any {
                return Err(format!(
                    "CA file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                    path.display()
                ));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "sslrootcert=system: no CA certificate found in the machine's \
                            trust store (Debian: apt-get install ca-certificates)"
                        .into(),
                );
            }
        }
    }
    Ok(Some(store))
}

/// Checks the TLS settings of `url` as [`MakeRustls::new`] would use them (for `check`).
pub fn check(url: &str, ca_file: Option<&Path>) -> Result<(), String> {
    let (_, settings) = split_url(url, ca_file)?;
    MakeRustls::new(&settings).map(|_| ())
}

/// tokio-postgres' TLS connector over rustls.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
    /// What the certificate was checked against, for errors.
    checked: Arc<str>,
}

impl MakeRustls {
    /// The connector for `settings` (the CA read now: a bad file fails at start).
    pub fn new(settings: &TlsSettings) -> Result<MakeRustls, String> {
        let provider = provider();
        let roots = load_roots(&settings.roots)?;
        let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => build_webpki(roots, &provider)?,
            (SslMode::VerifyCa, Some(roots)) => Arc::new(AnyName(build_webpki(roots, &provider)?)),
            // `disable` never connects with TLS; `prefer` and `require` do not check.
            _ => Arc::new(Unchecked(provider.signature_verification_algorithms)),
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // PostgreSQL 17's direct TLS (`sslnegotiation=direct`) needs it; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        let checked = match &settings.roots {
            Roots::File(path) => format!(
                "sslmode={}, CA file {}",
                settings.mode.name(),
                path.display()
            ),
            Roots::System => "sslmode=verify-full, the machine's trust store".to_string(),
            Roots::Unchecked => format!("sslmode={}", settings.mode.name()),
        };
        Ok(MakeRustls {
            config: Arc::new(config),
            checked: checked.into(),
        })
    }
}

fn build_webpki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("TLS setup: {e}"))?;
    Ok(v)
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct AnyName(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last: a name error means a good chain.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encrypted, the certificate not checked (the handshake signature
/// still is, so the connection is bound to the key the server showed).
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        // A bad name fails only when TLS is really used (a Unix socket has none).
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| format!("{domain:?} is not a host name TLS can check: {e}"));
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
            checked: self.checked.clone(),
        })
    }
}

/// One connection's handshake.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: Result<ServerName<'static>, String>,
    checked: Arc<str>,
}

type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        Box::pin(async move {
            let name = self.name.map_err(io::Error::other)?;
            let host = name.to_str().into_owned();
            tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map(RustlsStream)
                .map_err(|e| explain(e, &host, &self.checked))
        })
    }
}

/// A handshake error in words an operator acts on.
fn explain(e: io::Error, host: &str, checked: &str) -> io::Error {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => io::Error::other(format!(
            "the server's certificate was not trusted: it is not valid for the host name \
             {host} ({checked}; connect by a name the certificate lists, or use sslmode=verify-ca)"
        )),
        Some(err @ rustls::Error::InvalidCertificate(_)) => io::Error::other(format!(
            "the server's certificate was not trusted ({err}; checked with {checked})"
        )),
        _ => e,
    }
}

/// A TLS connection to the server.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::{Roots, SslMode, split_url};
    use std::path::Path;

    #[test]
    fn the_url_keeps_what_tokio_postgres_reads() {
        let (url, s) = split_url(
            "postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=/etc/ca.pem",
            None,
        )
        .unwrap();
        assert_eq!(url, "postgres://u@h/db?application_name=x");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.roots, Roots::File("/etc/ca.pem".into()));

        let (url, s) = split_url("postgres://u@h/db", None).unwrap();
        assert_eq!(
            (url.as_str(), s.mode),
            ("postgres://u@h/db", SslMode::Prefer)
        );
        // The URL's CA wins over store.ca_file; require with a CA checks the chain (libpq).
        let (_, s) = split_url(
            "postgres://u@h/db?sslmode=require&sslrootcert=%2Fa.pem",
            Some(Path::new("/b.pem")),
        )
        .unwrap();
        assert_eq!(
            (s.mode, s.roots),
            (SslMode::VerifyCa, Roots::File("/a.pem".into()))
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        let e = split_url("postgres://u@h/db?sslmode=verify-full", None).unwrap_err();
        assert!(e.contains("needs the CA"), "{e}");
        let e = split_url("postgres://u@h/db?sslmode=verify", None).unwrap_err();
        assert!(e.contains("expected disable, prefer"), "{e}");
        let e =
            split_url("postgres://u@h/db?sslmode=require&sslrootcert=system", None).unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        let e = split_url("postgres://u@h/db?sslcert=/c.pem", None).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
    }
}
