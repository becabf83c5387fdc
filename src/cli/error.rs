//! The one error type of the CLI and the one map from an answer or an error to the process
//! exit code (the README's "Exit codes" table).

use crate::admin::view::BadParam;
use crate::config::ConfigErrors;
use crate::replay::ReplayError;
use crate::serve::StartError;
use crate::store::StoreError;

/// The exit codes of every subcommand (the README's table).
pub mod exit {
    /// Done; the answer is positive (a forward or a skip, all checks and tests passed).
    pub const OK: u8 = 0;
    /// Done; the answer is negative: a reject, a failed test, problems found by `check`, a
    /// record that does not exist.
    pub const NO: u8 = 1;
    /// Usage: an unknown flag, a bad argument value, an unknown source or state.
    pub const USAGE: u8 = 2;
    /// Configuration: the service config or the rules do not load, or the store belongs to
    /// another Scaleo network.
    pub const CONFIG: u8 = 64;
    /// A needed resource is unavailable: the store cannot be opened, a port cannot be bound.
    pub const UNAVAILABLE: u8 = 69;
    /// An internal failure (the runtime cannot start, a task failed).
    pub const INTERNAL: u8 = 70;
}

/// The answer of a command that ran to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Exit 0.
    Yes,
    /// Exit 1: the command printed a negative answer.
    No,
}

impl Verdict {
    /// [`Verdict::Yes`] when `positive`, else [`Verdict::No`].
    pub fn from_bool(positive: bool) -> Self {
        if positive { Verdict::Yes } else { Verdict::No }
    }

    /// The process exit code of this answer.
    pub fn code(self) -> u8 {
        match self {
            Verdict::Yes => exit::OK,
            Verdict::No => exit::NO,
        }
    }
}

/// Why a command could not give its answer; [`CliError::code`] is its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad argument (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The config or the rules do not load (exit 64).
    #[error("{0}")]
    Config(String),
    /// What was asked for does not exist (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// The store or a listener is unavailable (exit 69).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (exit 70).
    #[error("{0}")]
    Internal(String),
}

impl CliError {
    /// The process exit code of this error.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Config(_) => exit::CONFIG,
            CliError::NotFound(_) => exit::NO,
            CliError::Unavailable(_) => exit::UNAVAILABLE,
            CliError::Internal(_) => exit::INTERNAL,
        }
    }

    /// The `error` code of the JSON form (`{"error", "reason"}`) printed with `--json`.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::Usage(_) => "usage",
            CliError::Config(_) => "config",
            CliError::NotFound(_) => "not_found",
            CliError::Unavailable(_) => "unavailable",
            CliError::Internal(_) => "internal",
        }
    }
}

/// What a subcommand returns.
pub type CliResult = Result<Verdict, CliError>;

impl From<StartError> for CliError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Config(_) => CliError::Config(e.to_string()),
            StartError::Unavailable(_) => CliError::Unavailable(e.to_string()),
            StartError::Other(_) => CliError::Internal(e.to_string()),
        }
    }
}

impl From<ConfigErrors> for CliError {
    fn from(e: ConfigErrors) -> Self {
        CliError::Config(e.to_string())
    }
}

impl From<BadParam> for CliError {
    fn from(e: BadParam) -> Self {
        CliError::Usage(e.to_string())
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Unavailable(format!("store: {e}"))
    }
}

impl From<ReplayError> for CliError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::State(_) => CliError::Usage(e.to_string()),
            ReplayError::Store(s) => s.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's exit-code table, row by row.
    #[test]
    fn exit_codes_match_the_readme_table() {
        assert_eq!(Verdict::Yes.code(), 0);
        assert_eq!(Verdict::No.code(), 1);
        assert_eq!(CliError::NotFound(String::new()).code(), 1);
        assert_eq!(CliError::Usage(String::new()).code(), 2);
        assert_eq!(CliError::Config(String::new()).code(), 64);
        assert_eq!(CliError::Unavailable(String::new()).code(), 69);
        assert_eq!(CliError::Internal(String::new()).code(), 70);
    }
}
