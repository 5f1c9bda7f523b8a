//! Resources beyond Blnk's: names and path aliases added by configuration, so keygate
//! can guard APIs other than Blnk's. The catalogue is installed once, at start-up, and
//! is the same for every request and every parse from then on.

use std::sync::OnceLock;

use thiserror::Error;

use crate::scope::Resource;

/// Configured additions to the built-in catalogue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Additions {
    resources: Vec<&'static str>,
    aliases: Vec<(&'static str, Resource)>,
}

static ADDITIONS: OnceLock<Additions> = OnceLock::new();

/// Why a catalogue cannot be installed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CatalogueError {
    /// A name is not lowercase letters, digits and dashes, or is too long.
    #[error("resource name {0:?} must be 1-64 lowercase letters, digits or dashes")]
    BadName(String),
    /// A name is already a built-in resource.
    #[error("resource {0:?} is built in already")]
    BuiltIn(String),
    /// An alias names a resource that does not exist.
    #[error("alias {0:?} points at unknown resource {1:?}")]
    UnknownTarget(String, String),
    /// An alias is named like a resource or a built-in alias, whose paths it would take.
    #[error("alias {0:?} is already a resource or a built-in alias")]
    Shadows(String),
    /// Another, different catalogue was installed earlier in this process.
    #[error("a different resource catalogue is installed already")]
    AlreadyInstalled,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Adds `resources` (new resource names) and `aliases` (path segment -> resource name)
/// to the catalogue. Installing the same catalogue again is harmless.
pub fn install(resources: &[String], aliases: &[(String, String)]) -> Result<(), CatalogueError> {
    let mut additions = Additions::default();
    for name in resources {
        if !valid_name(name) {
            return Err(CatalogueError::BadName(name.clone()));
        }
        if Resource::ALL.iter().any(|r| r.as_str() == name) {
            return Err(CatalogueError::BuiltIn(name.clone()));
        }
        if !additions.resources.contains(&name.as_str()) {
            additions
                .resources
                .push(Box::leak(name.clone().into_boxed_str()));
        }
    }
    for (alias, target) in aliases {
        if !valid_name(alias) {
            return Err(CatalogueError::BadName(alias.clone()));
        }
        // An alias named like a resource would take its paths from it: `api-keys` as an
        // alias of `reports` would let `reports:*` keys manage keys.
        let shadows = Resource::ALL.iter().any(|r| r.as_str() == alias)
            || additions.resources.contains(&alias.as_str())
            || crate::route::is_builtin_alias(alias);
        if shadows {
            return Err(CatalogueError::Shadows(alias.clone()));
        }
        let resource = Resource::ALL
            .into_iter()
            .filter(|r| *r != Resource::All)
            .find(|r| r.as_str() == target)
            .or_else(|| {
                additions
                    .resources
                    .iter()
                    .find(|r| **r == target)
                    .map(|r| Resource::Custom(r))
            })
            .ok_or_else(|| CatalogueError::UnknownTarget(alias.clone(), target.clone()))?;
        additions
            .aliases
            .push((Box::leak(alias.clone().into_boxed_str()), resource));
    }
    if *ADDITIONS.get_or_init(|| additions.clone()) == additions {
        Ok(())
    } else {
        Err(CatalogueError::AlreadyInstalled)
    }
}

/// The configured resource named `name`, if any.
pub(crate) fn custom_resource(name: &str) -> Option<Resource> {
    ADDITIONS
        .get()?
        .resources
        .iter()
        .find(|r| **r == name)
        .map(|r| Resource::Custom(r))
}

/// The resource a configured path alias stands for, if any.
pub(crate) fn alias(segment: &str) -> Option<Resource> {
    ADDITIONS
        .get()?
        .aliases
        .iter()
        .find(|(alias, _)| *alias == segment)
        .map(|(_, resource)| *resource)
}
