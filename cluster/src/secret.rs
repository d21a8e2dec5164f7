//! The cluster secret: what the Erlang cookie is to RabbitMQ.
//!
//! Nodes of one cluster share it; a node never talks to a peer that cannot prove it holds the
//! same secret, and the secret itself never crosses the wire and never appears in logs or APIs
//! (its `Debug` prints nothing of it). It comes from `WARREN_ERLANG_COOKIE` /
//! `RABBITMQ_ERLANG_COOKIE`, or from `<data dir>/.erlang.cookie`, which is generated (mode
//! 0600) when missing and refused when others may read it.
//!
//! Proofs are HMAC-SHA256 over both sides' fresh nonces and names, so a recorded handshake
//! cannot be replayed and a proof for one direction is worthless in the other.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The cluster secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why the secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The cookie file may be read by others.
    #[error(
        "cookie file {0} must be accessible by owner only (chmod 600), as the cluster secret is in it"
    )]
    TooOpen(PathBuf),
    /// The cookie is empty.
    #[error("the cluster secret in {0} is empty")]
    Empty(String),
    /// The file could not be read or written.
    #[error("cookie file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Name of the cookie file in the data directory.
pub const COOKIE_FILE: &str = ".erlang.cookie";

impl Secret {
    /// A secret from text (an environment variable's value).
    pub fn from_text(text: &str) -> Result<Secret, SecretError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty("the environment".into()));
        }
        Ok(Secret(trimmed.as_bytes().to_vec()))
    }

    /// The secret from `WARREN_ERLANG_COOKIE` / `RABBITMQ_ERLANG_COOKIE` (`env`), else from the
    /// cookie file in `data_dir`, generated when missing.
    pub fn load(env: Option<String>, data_dir: &Path) -> Result<Secret, SecretError> {
        match env {
            Some(text) => Secret::from_text(&text),
            None => Secret::from_file(&data_dir.join(COOKIE_FILE)),
        }
    }

    /// Reads the cookie file, generating it (mode 0600) if it does not exist.
    pub fn from_file(path: &Path) -> Result<Secret, SecretError> {
        let io = |source| SecretError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(metadata) => {
                if metadata.permissions().mode() & 0o077 != 0 {
                    return Err(SecretError::TooOpen(path.to_path_buf()));
                }
                let text = std::fs::read_to_string(path).map_err(io)?;
                let trimmed = text.trim();
                if trimmed.is_empty() {
                    return Err(SecretError::Empty(path.display().to_string()));
                }
                Ok(Secret(trimmed.as_bytes().to_vec()))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                let cookie = generate();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                file.write_all(cookie.as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                tracing::info!("generated a cluster secret in {}", path.display());
                Ok(Secret(cookie.into_bytes()))
            }
            Err(error) => Err(io(error)),
        }
    }

    /// The proof that `prover` holds the secret, for this handshake.
    pub fn prove(&self, role: &[u8], nonces: (&[u8], &[u8]), names: (&str, &str)) -> [u8; 32] {
        let mut message = Vec::with_capacity(96);
        for part in [
            role,
            nonces.0,
            nonces.1,
            names.0.as_bytes(),
            names.1.as_bytes(),
        ] {
            message.extend_from_slice(&(part.len() as u32).to_be_bytes());
            message.extend_from_slice(part);
        }
        hmac_sha256(&self.0, &message)
    }
}

/// Twenty upper-case letters, as Erlang generates cookies.
fn generate() -> String {
    let mut bytes = [0u8; 20];
    random(&mut bytes);
    bytes
        .iter()
        .map(|byte| char::from(b'A' + byte % 26))
        .collect()
}

/// Fills `buf` from the operating system's random source.
pub fn random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system provides randomness");
}

/// HMAC-SHA256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block_key.map(|byte| byte ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block_key.map(|byte| byte ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares proofs in constant time.
pub fn same_proof(a: &[u8; 32], b: &[u8]) -> bool {
    b.len() == 32 && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn cookie_files_are_generated_private_and_refused_when_open() {
        let dir = std::env::temp_dir().join(format!("warren-cookie-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join(COOKIE_FILE);
        let first = Secret::from_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            Secret::from_file(&path).unwrap(),
            first,
            "read back, not regenerated"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Secret::from_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("must be accessible by owner only"),
            "{error}"
        );
        assert_eq!(format!("{first:?}"), "Secret(..)", "never printed");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn proofs_bind_role_nonces_and_names() {
        let secret = Secret::from_text("SECRET").unwrap();
        let other = Secret::from_text("OTHER").unwrap();
        let proof = secret.prove(b"dialer", (b"n1", b"n2"), ("a@x", "b@x"));
        assert!(same_proof(
            &proof,
            &secret.prove(b"dialer", (b"n1", b"n2"), ("a@x", "b@x"))
        ));
        assert!(!same_proof(
            &proof,
            &other.prove(b"dialer", (b"n1", b"n2"), ("a@x", "b@x"))
        ));
        assert!(!same_proof(
            &proof,
            &secret.prove(b"listener", (b"n1", b"n2"), ("a@x", "b@x"))
        ));
        assert!(!same_proof(
            &proof,
            &secret.prove(b"dialer", (b"n2", b"n1"), ("a@x", "b@x"))
        ));
    }
}
