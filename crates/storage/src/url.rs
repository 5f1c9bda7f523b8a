//! Database URLs: which backend they name, and how to reach it.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// The database engines keygate can store keys in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file, embedded in the process.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// A parsed database URL.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://PATH` (relative) or `sqlite:///PATH` (absolute).
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`, passed to libpq as it is.
    Postgres(String),
}

/// A URL keygate cannot use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    /// The scheme is neither sqlite nor postgres.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedScheme(String),
    /// `sqlite://` without a path.
    #[error("the sqlite URL names no file: use sqlite://PATH")]
    MissingPath,
}

impl DatabaseUrl {
    /// Parses `sqlite://`, `postgres://` and `postgresql://` URLs.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        match url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Some("") => Err(UrlError::MissingPath),
            Some(path) => Ok(DatabaseUrl::Sqlite(PathBuf::from(path))),
            // Without a scheme, treat the string as the path of an SQLite file only when it
            // plainly looks like one; anything else is more likely a typo'd URL.
            None if !url.contains("://") && (url.ends_with(".db") || url.ends_with(".sqlite")) => {
                Ok(DatabaseUrl::Sqlite(PathBuf::from(url)))
            }
            None => Err(UrlError::UnsupportedScheme(redact(url))),
        }
    }

    /// The backend this URL names.
    pub fn backend(&self) -> Backend {
        match self {
            DatabaseUrl::Sqlite(_) => Backend::Sqlite,
            DatabaseUrl::Postgres(_) => Backend::Postgres,
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    /// Never prints a PostgreSQL password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The URL with any `user:password@` password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_select_their_backend() {
        let cases = [
            (
                "sqlite://keygate.db",
                Ok(DatabaseUrl::Sqlite("keygate.db".into())),
            ),
            (
                "sqlite:///var/lib/keygate/k.db",
                Ok(DatabaseUrl::Sqlite("/var/lib/keygate/k.db".into())),
            ),
            (
                "sqlite:keygate.db",
                Ok(DatabaseUrl::Sqlite("keygate.db".into())),
            ),
            (
                "data/keygate.db",
                Ok(DatabaseUrl::Sqlite("data/keygate.db".into())),
            ),
            (
                "postgres://u@h/db",
                Ok(DatabaseUrl::Postgres("postgres://u@h/db".into())),
            ),
            (
                "postgresql://u@h/db",
                Ok(DatabaseUrl::Postgres("postgresql://u@h/db".into())),
            ),
            ("sqlite://", Err(UrlError::MissingPath)),
            (
                "mysql://u:pw@h/db",
                Err(UrlError::UnsupportedScheme("mysql://u:***@h/db".into())),
            ),
            (
                "keygate",
                Err(UrlError::UnsupportedScheme("keygate".into())),
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(DatabaseUrl::parse(url), expected, "{url}");
        }
    }

    #[test]
    fn passwords_never_print() {
        let url = DatabaseUrl::parse("postgres://keygate:s3cret@db:5432/keygate").expect("valid");
        assert_eq!(url.to_string(), "postgres://keygate:***@db:5432/keygate");
        assert_eq!(format!("{url:?}"), "postgres://keygate:***@db:5432/keygate");
    }
}
