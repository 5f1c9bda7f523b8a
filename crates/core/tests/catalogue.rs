//! A configured catalogue: its resources parse and guard like built-in ones. (Its own
//! test binary, since the catalogue is installed once per process.)

use keygate_core::catalogue::{CatalogueError, install};
use keygate_core::route::resource_for_path;
use keygate_core::{Action, Resource, Scope, ScopeSet};

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn configured_resources_parse_route_and_permit_like_built_in_ones() {
    let aliases = vec![
        ("report-exports".to_owned(), "reports".to_owned()),
        ("books".to_owned(), "ledgers".to_owned()),
    ];
    assert_eq!(
        install(&strings(&["bad name"]), &[]),
        Err(CatalogueError::BadName("bad name".into()))
    );
    assert_eq!(
        install(&strings(&["ledgers"]), &[]),
        Err(CatalogueError::BuiltIn("ledgers".into()))
    );
    assert_eq!(
        install(&strings(&["reports"]), &[("x".into(), "nowhere".into())]),
        Err(CatalogueError::UnknownTarget("x".into(), "nowhere".into()))
    );
    for shadowing in ["api-keys", "ledgers", "reports", "multi-search"] {
        assert_eq!(
            install(
                &strings(&["reports"]),
                &[(shadowing.into(), "reports".into())]
            ),
            Err(CatalogueError::Shadows(shadowing.into())),
            "an alias may not take a resource's paths"
        );
    }
    assert_eq!(
        Scope::try_from("reports:read").ok(),
        None,
        "nothing is known before installing"
    );

    install(&strings(&["reports", "widgets"]), &aliases).expect("installs");
    install(&strings(&["reports", "widgets"]), &aliases)
        .expect("installing the same again is harmless");
    assert_eq!(
        install(&strings(&["other"]), &[]),
        Err(CatalogueError::AlreadyInstalled)
    );

    let reports = Resource::try_from("reports").expect("a configured resource");
    assert_eq!(reports, Resource::Custom("reports"));
    assert_eq!(
        Scope::try_from("reports:read").map(|s| s.to_string()),
        Ok("reports:read".to_owned())
    );
    assert!(Scope::try_from("report:read").is_err());
    assert_eq!(resource_for_path("/reports/r1"), Some(reports));
    assert_eq!(resource_for_path("/report-exports/e1"), Some(reports));
    assert_eq!(resource_for_path("/books/b1"), Some(Resource::Ledgers));
    assert_eq!(
        resource_for_path("/widgets"),
        Some(Resource::Custom("widgets"))
    );

    let scopes = ScopeSet::parse(&["reports:read", "ledgers:*"]).expect("parses");
    assert!(scopes.permits(reports, Action::Read));
    assert!(!scopes.permits(reports, Action::Write));
    assert!(!scopes.permits(Resource::Custom("widgets"), Action::Read));
    assert!(
        ScopeSet::parse(&["*:read"])
            .expect("parses")
            .permits(reports, Action::Read)
    );
    assert!(Scope::EVERYTHING.covers(Scope::new(reports, Action::Delete)));
}
