//! The Redfish ports' TLS: a certificate and key from PEM files, re-read when either file
//! changes (a cert-manager renewal rewrites the mounted Secret), else a self-signed one
//! made at start. Files named but both absent (an optional Secret not created yet) mean
//! the self-signed one until they appear. rustls with the ring provider, as the Kubernetes
//! client uses.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the files' modification times are looked at, at most (on a handshake).
const RELOAD_CHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The server configuration for every Redfish port of this agent.
pub fn server_config(
    files: Option<(PathBuf, PathBuf)>,
    names: Vec<String>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver: Arc<dyn ResolvesServerCert> = match files {
        Some((cert, key)) => {
            let stamp = (mtime(&cert), mtime(&key));
            let loaded = if stamp == (None, None) {
                let ck = self_signed(names)?;
                log::warn!(
                    "redfish: neither {} nor {} exists yet: serving a self-signed certificate until they do, SHA-256 {}",
                    cert.display(),
                    key.display(),
                    fingerprint(&ck.cert[0])
                );
                ck
            } else {
                let ck = load(&cert, &key)?;
                log::info!(
                    "redfish: certificate from {} (SHA-256 {})",
                    cert.display(),
                    fingerprint(&ck.cert[0])
                );
                ck
            };
            Arc::new(Reloading {
                cert,
                key,
                state: Mutex::new(State {
                    checked: Instant::now(),
                    stamp,
                    current: Arc::new(loaded),
                }),
            })
        }
        None => {
            let ck = self_signed(names)?;
            log::warn!(
                "redfish: no certificate given (--redfish-cert/--redfish-key): serving a self-signed one, SHA-256 {}",
                fingerprint(&ck.cert[0])
            );
            Arc::new(Fixed(Arc::new(ck)))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `AA:BB:...`, as `openssl x509 -fingerprint -sha256` prints it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(cert.as_ref());
    h.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn self_signed(mut names: Vec<String>) -> Result<CertifiedKey, TlsError> {
    names.push("localhost".into());
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let key = any_supported_type(&key).map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(CertifiedKey::new(vec![made.cert.der().clone()], key))
}

fn load(cert: &PathBuf, key: &PathBuf) -> Result<CertifiedKey, TlsError> {
    let err = |path: &PathBuf, reason: String| TlsError::Load {
        path: path.clone(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err(cert, "no certificate in the file".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e.to_string()))?;
    let signer = any_supported_type(&der).map_err(|e| err(key, e.to_string()))?;
    let ck = CertifiedKey::new(chain, signer);
    // A key that does not match the certificate would fail every handshake.
    ck.keys_match().map_err(|e| err(key, e.to_string()))?;
    Ok(ck)
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[derive(Debug)]
struct State {
    checked: Instant,
    /// The files' modification times when `current` was read.
    stamp: (Option<SystemTime>, Option<SystemTime>),
    current: Arc<CertifiedKey>,
}

#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
}

fn mtime(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(s.checked) >= RELOAD_CHECK {
            s.checked = now;
            let stamp = (mtime(&self.cert), mtime(&self.key));
            if stamp != s.stamp {
                match load(&self.cert, &self.key) {
                    Ok(ck) => {
                        log::info!(
                            "redfish: certificate reloaded from {} (SHA-256 {})",
                            self.cert.display(),
                            fingerprint(&ck.cert[0])
                        );
                        s.current = Arc::new(ck);
                        s.stamp = stamp;
                    }
                    // Half-written files during a rotation: keep serving the old pair.
                    Err(e) => log::warn!("redfish: keeping the previous certificate: {e}"),
                }
            }
        }
        Some(s.current.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_configuration_builds_and_has_a_fingerprint() {
        let ck = self_signed(vec!["vm-a".into()]).unwrap();
        let f = fingerprint(&ck.cert[0]);
        assert_eq!(f.len(), 32 * 3 - 1);
        server_config(None, vec![]).unwrap();
    }

    #[test]
    fn files_are_loaded_and_a_missing_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("virtbmc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&c, made.cert.pem()).unwrap();
        std::fs::write(&k, made.signing_key.serialize_pem()).unwrap();
        assert!(load(&c, &k).is_ok());
        server_config(Some((c.clone(), k.clone())), vec![]).unwrap();
        assert!(matches!(
            load(&dir.join("absent"), &k),
            Err(TlsError::Load { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
