//! Developer tasks: `cargo xtask <task>`. Run `cargo xtask help` for the list.

mod bench;
mod container;

use std::env;
use std::process::{Command, ExitCode};

const POSTGRES_URL_VAR: &str = "KEYGATE_TEST_POSTGRES_URL";
const LOCAL_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

const HELP: &str = "\
cargo xtask <task>

tasks:
  ci     the gates CI runs: cargo fmt --check, clippy -D warnings, cargo test --workspace
         (with the PostgreSQL tests; KEYGATE_TEST_POSTGRES_URL defaults to the local server)
  bench  [--seconds N] [--backend sqlite|postgres|both|none]: the release server under wrk
         load, 10,000 keys, 64 connections; prints and writes bench-results/*.json
         --keys N: instead, N imported keys (e.g. 1000000): import rate, start-up, hot
         against mostly-cold keys, memory
  openapi  write the OpenAPI description to openapi.json (a test fails while it is stale)
  container  build the Dockerfile and run it and docker-compose.yml for real on podman
         (base images built here, none pulled), then tear everything down
  dev    run the server for development: debug logs, ./target/dev.db, master key `dev-master-key-0123456789`
  help   this text
";

fn main() -> ExitCode {
    let task = env::args().nth(1).unwrap_or_else(|| "help".to_owned());
    let result = match task.as_str() {
        "ci" => ci(),
        "dev" => dev(),
        "openapi" => openapi(),
        "container" => container::run(),
        "bench" => {
            let args: Vec<String> = env::args().skip(2).collect();
            bench::Options::parse(&args).and_then(|options| bench::run(&options))
        }
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown task {other:?}\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn ci() -> Result<(), String> {
    let postgres = env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| LOCAL_POSTGRES.to_owned());
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(
        &["test", "--workspace"],
        &[(POSTGRES_URL_VAR, &postgres), ("CI", "true")],
    )
}

fn openapi() -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--package",
            "keygate-server",
            "--",
            "openapi",
        ])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "keygate openapi failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.json");
    std::fs::write(&path, &output.stdout)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("xtask: wrote openapi.json");
    Ok(())
}

fn dev() -> Result<(), String> {
    cargo(
        &["run", "--package", "keygate-server", "--", "serve"],
        &[
            ("RUST_LOG", "debug,actix_server=info,h2=info"),
            ("KEYGATE_DATABASE__URL", "sqlite://target/dev.db"),
            ("KEYGATE_SERVER__SECRET_KEY", "dev-master-key-0123456789"),
        ],
    )
}

pub(crate) fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed ({status})", args.join(" ")))
    }
}
