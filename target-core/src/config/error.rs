//! One error type that names file, line, column and key.

use std::fmt;

/// A configuration error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as given.
    pub file: String,
    /// 1-based line (0: unknown).
    pub line: usize,
    /// 1-based column (0: unknown).
    pub col: usize,
    /// Key path, e.g. `subsystem[0].namespace[1].backend`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column of byte offset `at` in `text`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..text.floor_char_boundary(at)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl ConfigError {
    /// An error at byte span `span` of `text`.
    pub(crate) fn at(
        file: &str,
        text: &str,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        let (line, col) = if span.end == 0 {
            (0, 0)
        } else {
            line_col(text, span.start)
        };
        Self {
            file: file.to_owned(),
            line,
            col,
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn from_toml(file: &str, text: &str, path: &str, e: &toml::de::Error) -> Self {
        let span = e.span().unwrap_or(0..0);
        let reason = e.message().trim().to_owned();
        // Spanned<T> adds an internal segment to the path; drop it.
        let path: String = path
            .split('.')
            .filter(|seg| !seg.starts_with("$__serde_spanned"))
            .collect::<Vec<_>>()
            .join(".");
        // Unknown keys: name the key itself in the path.
        let key = match reason.strip_prefix("unknown field `") {
            Some(rest) => {
                let field = rest.split('`').next().unwrap_or("");
                if path.is_empty() {
                    field.to_owned()
                } else if path == field || path.ends_with(&format!(".{field}")) {
                    path
                } else {
                    format!("{path}.{field}")
                }
            }
            None => path,
        };
        let mut err = Self::at(file, text, span.clone(), key, reason);
        if span.end == 0 && err.line == 0 {
            err.line = 1;
            err.col = 1;
        }
        err
    }
}
