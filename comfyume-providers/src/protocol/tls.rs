//! TLS for `https://` and `wss://` ComfyUI instances: rustls (no OpenSSL), trusting the public
//! certificate authorities (the Mozilla set of `webpki-roots`) plus, when the configuration names one,
//! a PEM file of private ones (a self-signed ComfyUI behind a TLS proxy, a workshop's internal CA).
//! One configuration serves both the HTTP requests and the websocket of an instance.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, Result};

/// A rustls client configuration trusting the public roots and the certificates in `ca_file` (PEM,
/// one or more `CERTIFICATE` blocks). A file that cannot be read or holds no certificate is an error
/// naming it.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| Error::Config(format!("cannot read the CA file {shown}: {e}")))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Config(format!("the CA file {shown} is not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config(format!(
                "the CA file {shown} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)"
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| Error::Config(format!("the CA file {shown} holds a bad certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_roots_alone_and_bad_ca_files_are_told_apart() {
        assert!(client_config(None).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
    }
}
