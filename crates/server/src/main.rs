//! The `keygate` binary: `keygate serve` (or plain `keygate`) runs the service;
//! `keygate --help` lists the rest.

fn main() -> std::process::ExitCode {
    keygate_server::cli::main()
}
