//! The one error type for bad user input.

/// A bad argument, job file or job parameter. Its message is ONE line that
/// says what is wrong and where (option, or file:line and key), so `main`
/// can print it as is and exit with status 2, like clap does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    /// Builds an error from anything printable; newlines are folded so the
    /// message stays on one line.
    pub fn new(msg: impl std::fmt::Display) -> Self {
        let s = msg.to_string();
        if s.contains('\n') {
            Self(
                s.split('\n')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        } else {
            Self(s)
        }
    }
}
