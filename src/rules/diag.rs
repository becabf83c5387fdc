//! Load-time problems of rule files, each printed as `file:line:col: message`.

use std::fmt;
use std::ops::Range;

/// One problem in one rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Collects the problems of one file, turning byte spans into 1-based lines and columns.
pub struct Diagnostics<'a> {
    file: &'a str,
    text: &'a str,
    pub list: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Self {
            file,
            text,
            list: Vec::new(),
        }
    }

    /// The file's text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// Records `message` at the start of `span` (or at the top of the file).
    pub fn at(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.map_or(0, |s| s.start));
        self.list.push(Diagnostic {
            file: self.file.to_string(),
            line,
            col,
            message: message.into(),
        });
    }
}

pub use crate::toml_check::line_col;

/// The closest name among `candidates` when it is close enough to be a likely typo: a
/// Levenshtein distance (over chars) of at most a third of the name's length, between 1
/// and 3.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_field_for_a_typo() {
        assert_eq!(
            did_you_mean("clikc_id", crate::scaleo::fields::FIELDS.iter().copied()),
            Some("click_id")
        );
        assert_eq!(
            did_you_mean("revenu", crate::scaleo::fields::FIELDS.iter().copied()),
            Some("revenue")
        );
        assert_eq!(
            did_you_mean("zzzzzzzz", crate::scaleo::fields::FIELDS.iter().copied()),
            None
        );
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 11), (2, 6));
        assert_eq!(line_col(text, 999), (3, 1));
    }
}
