//! TLS for the registry client: the rustls configuration (web PKI roots plus a CA file, or a
//! pinned certificate sha256), the pin verifier, and finding rustls errors in a failure.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

use super::{ClientError, TlsMode, TlsOptions};

/// Parses a pin: 64 hex digits, colons and whitespace ignored, any case.
pub(super) fn parse_pin(pin: &str) -> Result<[u8; 32], ClientError> {
    let cleaned: String = pin
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(cleaned.to_ascii_lowercase(), &mut out).map_err(|_| {
        ClientError::TlsConfig(format!(
            "pin_sha256 {pin:?} is not a sha256: expected 64 hex digits (colons allowed), the \
             sha256 of the registry certificate's DER"
        ))
    })?;
    Ok(out)
}

/// The pin of the first certificate in `pem`: lower-case hex sha256 of its DER.
pub fn cert_sha256_pem(pem: &str) -> Result<String, ClientError> {
    let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| ClientError::TlsConfig("no CERTIFICATE block in the PEM text".into()))?
        .map_err(|e| ClientError::TlsConfig(format!("cannot read the PEM certificate: {e}")))?;
    Ok(hex::encode(Sha256::digest(cert.as_ref())))
}

/// The rustls configuration for `tls`, with ALPN for HTTP/2 and HTTP/1.1.
pub(super) fn tls_config(
    provider: Arc<CryptoProvider>,
    tls: &TlsOptions,
) -> Result<(rustls::ClientConfig, TlsMode), ClientError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::TlsConfig(format!("TLS protocol versions: {e}")))?;
    let (mut config, mode) = if let Some(pin) = &tls.pin_sha256 {
        let pin = parse_pin(pin)?;
        let verifier = PinVerifier { pin, provider };
        (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth(),
            TlsMode::Pinned {
                pin: hex::encode(pin),
            },
        )
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &tls.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                ClientError::TlsConfig(format!("cannot read ca_file {}: {e}", path.display()))
            })?;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    ClientError::TlsConfig(format!("ca_file {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    ClientError::TlsConfig(format!(
                        "ca_file {}: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
                added += 1;
            }
            if added == 0 {
                return Err(ClientError::TlsConfig(format!(
                    "ca_file {} holds no PEM CERTIFICATE block",
                    path.display()
                )));
            }
        }
        (
            builder.with_root_certificates(roots).with_no_client_auth(),
            TlsMode::Roots {
                ca_file: tls.ca_file.clone(),
            },
        )
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, mode))
}

/// Accepts exactly the server certificate whose DER hashes to the pin.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

/// Carried inside the rustls error so the client can report both hashes.
#[derive(Debug, thiserror::Error)]
#[error("the certificate's sha256 {actual} did not match the pin")]
pub(super) struct PinMismatchError {
    pub(super) actual: String,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatchError {
                    actual: hex::encode(got),
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

/// The rustls error somewhere in `err`'s chain (looking inside `io::Error`s too).
pub(super) fn find_rustls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = find_rustls_error(inner) {
                return Some(r);
            }
        }
        cur = e.source();
    }
    None
}
