//! TLS from a broker to its backend servers: which certificate authorities the broker's own
//! clients trust, read once at start so that a bad CA file stops the broker instead of every
//! later call.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

/// A `[<backend>.tls]` section: the server's certificate is always verified.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    /// PEM CA certificate(s) to trust for the server's certificate, besides the public roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("reading the CA file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no certificate rustls accepts")]
    Unusable { path: PathBuf },
}

/// What a `BackendTls` section trusts, loaded and checked.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The CA file's text, for clients that take PEM.
    pem: Option<String>,
    roots: Arc<rustls::RootCertStore>,
}

impl BackendTls {
    pub fn load(&self) -> Result<Trust, TrustError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let Some(path) = &self.ca else {
            return Ok(Trust {
                pem: None,
                roots: Arc::new(roots),
            });
        };
        let pem = std::fs::read_to_string(path).map_err(|source| TrustError::Read {
            path: path.clone(),
            source,
        })?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TrustError::Unusable { path: path.clone() });
        }
        Ok(Trust {
            pem: Some(pem),
            roots: Arc::new(roots),
        })
    }
}

impl Trust {
    /// The operator's CA certificates as PEM, when a CA file is set.
    pub fn ca_pem(&self) -> Option<&str> {
        self.pem.as_deref()
    }

    /// A rustls client config (the ring provider, as everywhere in the workspace) that trusts
    /// the public roots and the CA file.
    pub fn client_config(&self) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(self.roots.clone())
        .with_no_client_auth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = BackendTls {
            ca: Some(path.clone()),
        }
        .load()
        .unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let missing = BackendTls {
            ca: Some(dir.path().join("missing.pem")),
        }
        .load()
        .unwrap_err();
        assert!(matches!(missing, TrustError::Read { .. }), "{missing}");
    }

    #[test]
    fn without_a_ca_file_the_public_roots_are_trusted() {
        let trust = BackendTls::default().load().unwrap();
        assert!(trust.ca_pem().is_none());
        assert!(!trust.roots.is_empty());
        trust.client_config();
    }
}
