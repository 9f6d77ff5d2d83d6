//! Keys kept in the data directory: the token signing key and the REST API key, generated
//! on first use with owner-only permissions.

use std::io::Write;
use std::path::Path;

/// Reads the hex secret in `dir/name`; fails if it is missing or not a hex secret.
pub fn load(dir: &Path, name: &str) -> std::io::Result<String> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)?.trim().to_owned();
    if text.len() < 32 || hex::decode(&text).is_err() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is not a hex secret of at least 16 bytes",
                path.display()
            ),
        ));
    }
    Ok(text)
}

/// Reads a hex secret from `dir/name`, creating it with `bytes` random bytes if absent.
pub fn load_or_create(dir: &Path, name: &str, bytes: usize) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    match load(dir, name) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = hex::encode(
                (0..bytes)
                    .map(|_| rand::random::<u8>())
                    .collect::<Vec<u8>>(),
            );
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(dir.join(name))?;
            writeln!(file, "{secret}")?;
            file.sync_all()?;
            Ok(secret)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_created_once_and_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), "signing.key", 32).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(load_or_create(dir.path(), "signing.key", 32).unwrap(), a);
        std::fs::write(dir.path().join("bad.key"), "short").unwrap();
        assert!(load_or_create(dir.path(), "bad.key", 32).is_err());
        assert!(load(dir.path(), "bad.key").is_err());
        // Loading alone never creates one.
        assert_eq!(
            load(dir.path(), "absent.key").unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        assert!(!dir.path().join("absent.key").exists());
    }
}
