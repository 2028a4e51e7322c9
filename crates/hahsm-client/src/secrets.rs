//! Secret files: the SO secret, the partition-owner secret and the cloning-
//! domain secret, the equivalents of the appliance's blue, black and red keys.
//! Each holds 256 random bits as 64 hex digits, in a file with mode 0600.
use hahsm_proto::Secret;
use std::path::Path;
use zeroize::Zeroize;

pub const SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read secret file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("secret file {0} does not hold a 256-bit secret (64 hex digits)")]
    Malformed(String),
    #[error("secret file {path} is readable by others (mode {mode:o}); run chmod 600 on it")]
    Permissions { path: String, mode: u32 },
    #[error("cannot write secret file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("the system random generator failed")]
    Random,
}

/// Reads a secret file, refusing one that others can read.
pub fn read_secret(path: &Path) -> Result<Secret, SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Permissions { path: shown, mode });
    }
    let mut text = std::fs::read_to_string(path).map_err(|source| SecretFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let decoded = hex::decode(text.trim());
    text.zeroize();
    match decoded {
        Ok(bytes) if bytes.len() == SECRET_BYTES => Ok(Secret::new(bytes)),
        Ok(mut bytes) => {
            bytes.zeroize();
            Err(SecretFileError::Malformed(shown))
        }
        Err(_) => Err(SecretFileError::Malformed(shown)),
    }
}

/// Writes `text` to a new file at `path` (mode 0600, synced), refusing to
/// overwrite, and zeroizes `text` whatever happens.
fn write_private_file(path: &Path, mut text: String) -> Result<(), SecretFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
    text.zeroize();
    result.map_err(|source| SecretFileError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Writes a new random secret to `path` (mode 0600), refusing to overwrite.
pub fn generate_secret_file(path: &Path) -> Result<Secret, SecretFileError> {
    let mut bytes = vec![0u8; SECRET_BYTES];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SecretFileError::Random)?;
    let secret = Secret::new(bytes.clone());
    let text = hex::encode(&bytes) + "\n";
    bytes.zeroize();
    write_private_file(path, text)?;
    Ok(secret)
}

/// Reads the secret file if it exists, or makes it: an operator reuses an
/// existing domain secret when initialising a second member.
pub fn read_or_generate(path: &Path) -> Result<(Secret, bool), SecretFileError> {
    if path.exists() {
        Ok((read_secret(path)?, false))
    } else {
        Ok((generate_secret_file(path)?, true))
    }
}

/// Reads a share file written by [`write_share_file`]: a comment line, then
/// the share as hex. Like a secret file, it must not be readable by others.
pub fn read_share(path: &Path) -> Result<Secret, SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let read_err = |source| SecretFileError::Read {
        path: shown.clone(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(read_err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Permissions { path: shown, mode });
    }
    let mut text = std::fs::read_to_string(path).map_err(read_err)?;
    let decoded = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(hex::decode);
    text.zeroize();
    match decoded {
        Some(Ok(bytes)) => Ok(Secret::new(bytes)),
        _ => Err(SecretFileError::Malformed(shown)),
    }
}

/// Writes one share (mode 0600), refusing to overwrite a file.
pub fn write_share_file(path: &Path, comment: &str, share: &[u8]) -> Result<(), SecretFileError> {
    write_private_file(path, format!("# {comment}\n{}\n", hex::encode(share)))
}

/// Overwrites a secret file with zeros, syncs, and removes it. On a journaling
/// or copy-on-write file system, or an SSD, old blocks may survive the
/// overwrite: keep secret files on encrypted storage.
pub fn destroy_secret_file(path: &Path) -> Result<(), SecretFileError> {
    use std::io::Write;
    let shown = path.display().to_string();
    let write_err = |source| SecretFileError::Write {
        path: shown.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(write_err)?.len() as usize;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(write_err)?;
    f.write_all(&vec![0u8; len]).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    std::fs::remove_file(path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_files_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("so.key");
        let written = generate_secret_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_secret(&path).unwrap(), written);
        assert!(generate_secret_file(&path).is_err(), "must not overwrite");
    }

    #[test]
    fn world_readable_or_malformed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        generate_secret_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_secret(&path),
            Err(SecretFileError::Permissions { .. })
        ));
        std::fs::write(&path, "abcd\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(read_secret(&path), Err(SecretFileError::Malformed(_))));
    }
}
