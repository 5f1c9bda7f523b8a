//! The `keygate` binary: `keygate serve` (or plain `keygate`) runs the service;
//! `keygate --help` lists the rest.

/// mimalloc rather than the system's allocator: a request allocates a few small,
/// short-lived buffers, which mimalloc serves from the worker's own heap without the
/// locks and cross-thread frees that glibc's arenas pay for.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keygate_server::cli::main()
}
