//! The master key when none is configured: generated once into a file readable only by
//! its owner, and read from there on every later start.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use keygate_core::PlainKey;
use keygate_storage::DatabaseUrl;
use secrecy::SecretString;

/// The generated key's file name, beside the SQLite database.
pub const FILE_NAME: &str = "keygate-master.key";

/// Where the master key came from.
#[derive(Debug)]
pub enum Origin {
    /// From the configuration.
    Configured,
    /// Read from a file generated on an earlier start.
    File(PathBuf),
    /// Generated on this start and written to this file.
    Generated(PathBuf),
}

/// The default place of a generated master key for a database.
pub fn default_path(database: &DatabaseUrl) -> PathBuf {
    match database {
        DatabaseUrl::Sqlite(path) => path.with_file_name(FILE_NAME),
        DatabaseUrl::Postgres(_) => PathBuf::from(FILE_NAME),
    }
}

/// The configured key, or the key in `path`, created there if the file does not exist.
pub fn resolve(
    configured: Option<SecretString>,
    path: &Path,
) -> io::Result<(SecretString, Origin)> {
    if let Some(key) = configured {
        return Ok((key, Origin::Configured));
    }
    match read(path) {
        Ok(key) => Ok((key, Origin::File(path.to_owned()))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => match generate(path)? {
            Generated::Ours(key) => Ok((key, Origin::Generated(path.to_owned()))),
            Generated::Theirs => Ok((read(path)?, Origin::File(path.to_owned()))),
        },
        Err(error) => Err(error),
    }
}

fn read(path: &Path) -> io::Result<SecretString> {
    let text = fs::read_to_string(path)?;
    let key = text.trim();
    if key.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is empty; delete it to generate a new master key",
                path.display()
            ),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the master key file is readable by others; chmod 600 it");
        }
    }
    Ok(key.into())
}

/// Who generated the key file.
enum Generated {
    /// This start did, and this is the key.
    Ours(SecretString),
    /// Another start sharing the folder got there first; its file is complete.
    Theirs,
}

/// Writes a new key to a file of its own, then links it into place, which fails if the
/// file exists: so the key file appears whole or not at all, and of several starts at
/// once exactly one writes it while the others read it.
fn generate(path: &Path) -> io::Result<Generated> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let key = PlainKey::generate().map_err(io::Error::other)?;
    static DRAFTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let draft = path.with_file_name(format!(
        ".{FILE_NAME}.{}.{}",
        std::process::id(),
        DRAFTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    write_private(&draft, key.expose())?;
    let linked = fs::hard_link(&draft, path);
    let _ = fs::remove_file(&draft);
    match linked {
        Ok(()) => Ok(Generated::Ours(key.expose().into())),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(Generated::Theirs),
        Err(error) => Err(error),
    }
}

/// Creates `path` (which must not exist) readable by its owner only, holding `key`.
fn write_private(path: &Path, key: &str) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{key}")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_key_is_generated_once_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join(FILE_NAME);
        let (first, origin) = resolve(None, &path).expect("generated");
        assert!(matches!(origin, Origin::Generated(_)));
        assert_eq!(first.expose_secret().len(), 44);
        let (second, origin) = resolve(None, &path).expect("read back");
        assert!(matches!(origin, Origin::File(_)));
        assert_eq!(first.expose_secret(), second.expose_secret());
    }

    #[cfg(unix)]
    #[test]
    fn the_generated_file_is_readable_only_by_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        resolve(None, &path).expect("generated");
        let mode = fs::metadata(&path).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_configured_key_wins_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        let (key, origin) = resolve(Some("configured".into()), &path).expect("configured");
        assert!(matches!(origin, Origin::Configured));
        assert_eq!(key.expose_secret(), "configured");
        assert!(!path.exists());
    }

    #[test]
    fn concurrent_first_starts_share_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(FILE_NAME);
            let starts: Vec<_> = (0..4)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || resolve(None, &path).map(|(key, _)| key))
                })
                .collect();
            let keys: Vec<String> = starts
                .into_iter()
                .map(|start| {
                    start
                        .join()
                        .expect("no panic")
                        .expect("every start gets the key")
                        .expose_secret()
                        .to_owned()
                })
                .collect();
            assert!(keys.iter().all(|key| *key == keys[0]), "one key for all");
            let files = fs::read_dir(dir.path()).expect("list").count();
            assert_eq!(files, 1, "no draft is left behind");
        }
    }

    #[test]
    fn an_empty_key_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        fs::write(&path, "\n").expect("write");
        assert!(resolve(None, &path).is_err());
    }

    #[test]
    fn the_default_place_is_beside_the_sqlite_file() {
        let url = DatabaseUrl::parse("sqlite:///var/lib/keygate/keygate.db").expect("valid");
        assert_eq!(
            default_path(&url),
            PathBuf::from("/var/lib/keygate/keygate-master.key")
        );
        let url = DatabaseUrl::parse("sqlite://keygate.db").expect("valid");
        assert_eq!(default_path(&url), PathBuf::from("keygate-master.key"));
    }
}
