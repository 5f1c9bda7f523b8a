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
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let key = generate(path)?;
            Ok((key, Origin::Generated(path.to_owned())))
        }
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

fn generate(path: &Path) -> io::Result<SecretString> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let key = PlainKey::generate().map_err(io::Error::other)?;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{}", key.expose())?;
    file.sync_all()?;
    Ok(key.expose().into())
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
