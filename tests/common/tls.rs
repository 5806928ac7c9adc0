//! A TLS front for a loopback server: terminates TLS with a certificate for `localhost` issued
//! by a throwaway test CA, and forwards the plain bytes to the server behind it.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsFront {
    /// `https://localhost:PORT`
    pub endpoint: String,
    /// The test CA's certificate (PEM), for `SSL_CERT_FILE`.
    pub ca_pem: PathBuf,
    _dir: tempfile::TempDir,
    _thread: std::thread::JoinHandle<()>,
}

impl TlsFront {
    /// Starts a TLS front for `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();

        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let target = upstream.trim_start_matches("http://").to_string();
        let (plain, thread) = crate::s3server::serve_loopback(move |client| {
            let (acceptor, target) = (acceptor.clone(), target.clone());
            async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return; // a client that does not trust the CA hangs up here
                };
                if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                }
            }
        });
        TlsFront {
            endpoint: plain.replace("http://127.0.0.1", "https://localhost"),
            ca_pem,
            _dir: dir,
            _thread: thread,
        }
    }
}
