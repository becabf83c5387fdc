//! The `postback-relay` binary: parse the command line and hand it to the library.

use clap::Parser;

/// mimalloc: the request path allocates many small strings on several threads at once, where
/// glibc's allocator measured about a tenth of the worker threads' time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    postback_relay::cli::run(postback_relay::cli::Cli::parse())
}
