//! TLS for the `mysql` check (`[health] tls`): the client configuration the checkers share.
//!
//! With `tls_ca_file` the server's certificate must chain to one of its certificates and name
//! the backend's host (or IP). Without it the check encrypts but takes any certificate: a
//! server that requires TLS (`require_secure_transport = ON`) refuses a plain login, and what the
//! check sends over the encrypted session is a password scramble, never the password (a server
//! that asks for the password in clear is refused, [`super::mysql::AuthError::NeedsTls`]), so an
//! impostor learns nothing it could replay. The handshake's signatures are verified either way.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What the checkers connect with when they use TLS.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    /// The server's certificate is verified (a CA was given).
    pub verifies: bool,
}

impl TlsClient {
    /// A client trusting `ca` (DER certificates), or any server when `None`.
    pub fn new(ca: Option<&[Vec<u8>]>) -> Result<TlsClient, String> {
        let provider = Arc::new(crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let (config, verifies) = match ca {
            Some(certificates) => {
                let mut roots = RootCertStore::empty();
                for der in certificates {
                    roots
                        .add(CertificateDer::from(der.clone()))
                        .map_err(|e| format!("TLS CA certificate: {e}"))?;
                }
                (builder.with_root_certificates(roots).with_no_client_auth(), true)
            }
            None => {
                let verifier = Arc::new(AnyCertificate { provider });
                let config = builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
                (config, false)
            }
        };
        Ok(TlsClient {
            config: Arc::new(config),
            verifies,
        })
    }

    /// The name the server's certificate is checked against: the host of the backend as
    /// configured ("db-01:3306" gives "db-01"), or its IP.
    pub fn server_name(&self, configured: &str, ip: std::net::IpAddr) -> ServerName<'static> {
        let host = match configured.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => configured,
        };
        match ServerName::try_from(host.to_string()) {
            Ok(name) if self.verifies => name,
            _ => ServerName::IpAddress(ip.into()),
        }
    }
}

/// Takes any certificate, but checks the handshake's signatures with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
