//! The locator that turns a value's span in a configuration file into a located error.

use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::errors::ConfigError;

/// Turns byte offsets into 1-based line and column.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) file: PathBuf,
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str, file: &Path) -> Self {
        Self {
            text,
            file: file.to_path_buf(),
        }
    }

    pub(super) fn error(&self, offset: usize, message: String) -> ConfigError {
        let before = self.text.get(..offset.min(self.text.len())).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            message,
        }
    }

    pub(super) fn at<T>(&self, spanned: &Spanned<T>, message: String) -> ConfigError {
        self.error(spanned.span().start, message)
    }
}
