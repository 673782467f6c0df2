//! Problems found in an `ecosystem.toml`, each pinned to file, line, column and key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, located. `line` and `column` are 1-based; `column` counts characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigIssue {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `apps.chat.health.interval`; empty for a syntax error outside any key.
    pub key: String,
    pub message: String,
    /// The source line the issue points at, for the caret display.
    pub source_line: String,
}

impl ConfigIssue {
    pub(crate) fn at(
        severity: Severity,
        file: &Path,
        text: &str,
        span: Range<usize>,
        key: &str,
        message: String,
    ) -> Self {
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        Self {
            severity,
            file: file.to_owned(),
            line: text[..start].matches('\n').count() + 1,
            column: text[line_start..start].chars().count() + 1,
            key: key.to_owned(),
            message,
            source_line: text[line_start..line_end].trim_end_matches('\r').to_owned(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {level}", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.source_line.is_empty() {
            let gutter = self.line.to_string().len();
            let pad: String = self
                .source_line
                .chars()
                .take(self.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "\n{:gutter$} |\n{} | {}\n{:gutter$} | {pad}^", "", self.line, self.source_line, "")?;
        }
        Ok(())
    }
}

/// Every error found in a file (never just the first), plus the warnings seen on the way.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub struct ConfigErrors {
    pub issues: Vec<ConfigIssue>,
}

impl ConfigErrors {
    pub fn errors(&self) -> impl Iterator<Item = &ConfigIssue> {
        self.issues.iter().filter(|i| i.severity == Severity::Error)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors().count();
        for issue in &self.issues {
            writeln!(f, "{issue}")?;
        }
        write!(
            f,
            "{count} error{} in the ecosystem file; nothing was started or changed",
            if count == 1 { "" } else { "s" }
        )
    }
}
