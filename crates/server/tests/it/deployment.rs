//! What containers rely on: the health command, the Dockerfile, and the compose file.

use crate::support;
use keygate_storage::test_support::skip_unless_ci;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::process::{Running, free_port};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the repository root")
        .to_owned()
}

#[test]
fn the_health_command_reports_whether_the_service_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let port_text = port.to_string();
    let health = |port: &str| {
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .current_dir(dir.path())
            .env_clear()
            .env("KEYGATE_SERVER__PORT", port)
            .arg("health")
            .output()
            .expect("the binary runs")
    };
    assert!(!health(&port_text).status.success(), "nothing listens yet");
    let server = Running::start(
        dir.path(),
        port,
        &[
            ("KEYGATE_SERVER__PORT", &port_text),
            ("KEYGATE_SERVER__SECRET_KEY", "health-master-key-01"),
        ],
    );
    let answered = health(&port_text);
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    drop(server);
}

#[test]
fn the_image_is_multi_stage_non_root_and_health_checked() {
    let dockerfile =
        std::fs::read_to_string(repository().join("Dockerfile")).expect("a Dockerfile");
    assert_eq!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")),
        2,
        "two stages"
    );
    assert!(
        dockerfile.contains("\nUSER keygate"),
        "runs as a non-root user"
    );
    assert!(
        dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"health\""),
        "health-checked"
    );
    assert!(
        dockerfile.contains("KEYGATE_SERVER__HOST=0.0.0.0"),
        "reachable from outside the container"
    );
}

#[test]
fn the_compose_file_parses_and_holds_no_secret() {
    let root = repository();
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).expect("a compose file");
    assert!(
        compose.contains("condition: service_healthy"),
        "keygate waits for a healthy PostgreSQL"
    );
    assert!(compose.contains("KEYGATE_SERVER__HOST: 0.0.0.0"));
    assert!(
        compose.contains("${KEYGATE_MASTER_KEY:?"),
        "the master key must come from the environment"
    );

    let Ok(version) = Command::new("docker-compose").arg("version").output() else {
        skip_unless_ci(
            "docker-compose config: docker-compose is missing",
            "apt-get install docker-compose",
        );
        return;
    };
    assert!(version.status.success());
    let config = |env: &[(&str, &str)]| {
        Command::new("docker-compose")
            .current_dir(&root)
            .args(["-f", "docker-compose.yml", "config"])
            .env_remove("KEYGATE_MASTER_KEY")
            .env_remove("POSTGRES_PASSWORD")
            .envs(env.iter().copied())
            .output()
            .expect("docker-compose runs")
    };
    let resolved = config(&[
        ("KEYGATE_MASTER_KEY", "k".repeat(44).as_str()),
        ("POSTGRES_PASSWORD", "p"),
    ]);
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    let text = String::from_utf8_lossy(&resolved.stdout);
    assert!(text.contains("postgres-data"), "a named volume: {text}");
    let without_secrets = config(&[]);
    assert!(
        !without_secrets.status.success(),
        "no default master key or password is committed"
    );
    assert!(
        String::from_utf8_lossy(&without_secrets.stderr).contains("set "),
        "and it says what to set"
    );
}
