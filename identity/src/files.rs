//! The on-disk layout of an identity directory, as written by
//! `mesh identity init DIR` and read by `mesh-identity --dir DIR`: trust
//! anchors, the anchor key, the issuer certificate and key, and the token key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ca::{self, CaError, Issuer};
use crate::token::{KeyError, TokenKey};

/// Trust anchors (PEM, possibly several), public.
pub const TRUST_ANCHORS: &str = "trust-anchors.pem";
/// The anchor's private key (PEM, mode 0600); only needed to make new issuers.
pub const ANCHOR_KEY: &str = "anchor.key";
/// The issuer certificate (PEM), signed by an anchor.
pub const ISSUER_CERT: &str = "issuer.crt";
/// The issuer's private key (PEM, mode 0600).
pub const ISSUER_KEY: &str = "issuer.key";
/// The HMAC key for local workload tokens (base64, mode 0600).
pub const TOKEN_KEY: &str = "token.key";

/// Errors reading or writing an identity directory.
#[derive(Debug, Error)]
pub enum FilesError {
    /// The directory already holds a trust anchor and `force` was not given.
    #[error("{0} already exists: refusing to replace the trust anchor (use --force)")]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Generating or loading CA material failed.
    #[error("{path}: {error}")]
    Ca {
        /// The certificate concerned.
        path: PathBuf,
        /// What is wrong.
        error: CaError,
    },
    /// The token key could not be created, read or written.
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |error| FilesError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Writes `contents` to `path` via a temporary file and a rename, with `mode`.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), FilesError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Creates `dir` (if needed) and writes a fresh trust anchor, anchor key,
/// issuer, issuer key and token key into it. Keys are mode 0600.
///
/// Refuses to replace an existing anchor (certificate or key) unless `force`.
pub fn init_dir(dir: &Path, trust_domain: &str, force: bool) -> Result<(), FilesError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    for name in [TRUST_ANCHORS, ANCHOR_KEY] {
        let path = dir.join(name);
        if path.exists() && !force {
            return Err(FilesError::Exists(path));
        }
    }
    let ca_err = |name: &str| {
        let path = dir.join(name);
        move |error| FilesError::Ca { path, error }
    };
    let (anchor, anchor_key) =
        ca::generate_trust_anchor(trust_domain).map_err(ca_err(TRUST_ANCHORS))?;
    let (issuer, issuer_key) =
        ca::generate_issuer(&anchor, &anchor_key, trust_domain).map_err(ca_err(ISSUER_CERT))?;
    let token_key = TokenKey::generate()?;

    write_file(&dir.join(ANCHOR_KEY), &anchor_key, 0o600)?;
    write_file(&dir.join(TRUST_ANCHORS), &anchor, 0o644)?;
    write_file(&dir.join(ISSUER_KEY), &issuer_key, 0o600)?;
    write_file(&dir.join(ISSUER_CERT), &issuer, 0o644)?;
    token_key.write(&dir.join(TOKEN_KEY))?;
    Ok(())
}

/// Where the issuer's files are; defaults come from an identity directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerPaths {
    /// Trust anchors PEM.
    pub trust_anchors: PathBuf,
    /// Issuer certificate PEM.
    pub issuer_cert: PathBuf,
    /// Issuer private key PEM.
    pub issuer_key: PathBuf,
}

impl IssuerPaths {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            trust_anchors: dir.join(TRUST_ANCHORS),
            issuer_cert: dir.join(ISSUER_CERT),
            issuer_key: dir.join(ISSUER_KEY),
        }
    }

    /// Reads the three files and loads (and checks) the issuer.
    pub fn load(&self) -> Result<Issuer, FilesError> {
        let read = |p: &Path| fs::read_to_string(p).map_err(io_err(p));
        let anchors = read(&self.trust_anchors)?;
        let cert = read(&self.issuer_cert)?;
        let key = read(&self.issuer_key)?;
        Issuer::load(&cert, &key, &anchors).map_err(|error| FilesError::Ca {
            path: self.issuer_cert.clone(),
            error,
        })
    }
}

/// Loads the issuer from an identity directory.
pub fn load_issuer(dir: &Path) -> Result<Issuer, FilesError> {
    IssuerPaths::in_dir(dir).load()
}

/// Loads the token key from an identity directory.
pub fn load_token_key(dir: &Path) -> Result<TokenKey, FilesError> {
    Ok(TokenKey::load(&dir.join(TOKEN_KEY))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_a_loadable_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("identity");
        init_dir(&dir, "example.org", false).unwrap();
        for key in [ANCHOR_KEY, ISSUER_KEY, TOKEN_KEY] {
            assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
        }
        for name in [TRUST_ANCHORS, ISSUER_CERT] {
            assert!(dir.join(name).is_file(), "{name}");
        }
        let issuer = load_issuer(&dir).unwrap();
        assert!(issuer.trust_anchors_pem().contains("BEGIN CERTIFICATE"));
        load_token_key(&dir).unwrap();
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(names.len(), 5, "no temporary files left behind");
    }

    #[test]
    fn init_refuses_to_replace_an_anchor_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        init_dir(tmp.path(), "cluster.local", false).unwrap();
        let before = fs::read_to_string(tmp.path().join(TRUST_ANCHORS)).unwrap();
        let err = init_dir(tmp.path(), "cluster.local", false).unwrap_err();
        assert!(matches!(err, FilesError::Exists(_)), "{err:?}");
        assert!(err.to_string().contains("--force"));
        assert_eq!(
            before,
            fs::read_to_string(tmp.path().join(TRUST_ANCHORS)).unwrap()
        );
        init_dir(tmp.path(), "cluster.local", true).unwrap();
        assert_ne!(
            before,
            fs::read_to_string(tmp.path().join(TRUST_ANCHORS)).unwrap()
        );
        load_issuer(tmp.path()).unwrap();
    }

    #[test]
    fn missing_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load_issuer(tmp.path()).unwrap_err();
        assert!(err.to_string().contains(TRUST_ANCHORS), "{err}");
        let err = load_token_key(tmp.path()).unwrap_err();
        assert!(err.to_string().contains(TOKEN_KEY), "{err}");
    }
}
