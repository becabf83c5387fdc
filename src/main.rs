//! The `postback-relay` binary: parse the command line and hand it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    postback_relay::cli::run(postback_relay::cli::Cli::parse())
}
