//! `https://` and `wss://` instances: a **simulated** ComfyUI behind a TLS proxy on loopback whose
//! certificate comes from a private certificate authority made for the test (rcgen). Trusted through
//! `ComfyUiConfig::ca_file`, a job runs end to end (HTTP requests and the websocket over TLS); without
//! it the instance is refused with a reason naming the certificate.

#![allow(clippy::unwrap_used)]

mod provider_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use comfyume_core::{Health, InferenceProvider, JobState};
use comfyume_providers::{ComfyUiConfig, ComfyUiProvider};
use provider_support::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority and a certificate for `localhost` signed by it (PEM).
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "comfyume test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Terminates TLS on a loopback port and forwards each connection to `backend` in the clear, as a
/// reverse proxy in front of a ComfyUI would. Returns its address.
async fn tls_proxy(pki: &Pki, backend: SocketAddr) -> SocketAddr {
    let certs = vec![CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the certificate gives up here; that is the point.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_instance_runs_jobs_when_its_ca_is_trusted() {
    let worker = sim(Duration::from_millis(5)).await;
    let pki = pki();
    let proxy = tls_proxy(&pki, worker.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let url = format!("https://localhost:{}", proxy.port());

    let env = Env::start(ComfyUiConfig {
        ca_file: Some(ca_file),
        ..quick_config(&[(url.clone(), 1)])
    })
    .await;
    let (job, kinds) = env.run("alice", fixture("01_empty_save")).await;
    assert_eq!(job.state, JobState::Succeeded, "{kinds:#?}");
    assert_eq!(job.outputs.len(), 1);
    // Live events came over wss: the job was seen starting and running its nodes.
    let names = names(&kinds);
    for seen in ["started", "executing 2", "output 2", "succeeded"] {
        assert!(names.contains(&seen.to_string()), "{names:?}");
    }
    let stored = env.stored("alice", job.id, "output", "gw", &job.outputs[0].filename);
    let bytes = std::fs::read(&stored).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));

    // The same instance without the CA: not used, and the reason says why.
    let untrusting = ComfyUiProvider::start(quick_config(&[(url, 1)])).await.unwrap();
    match untrusting.health().await {
        Health::Unavailable { reason } => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("an untrusted certificate was accepted: {other:?}"),
    }
}
