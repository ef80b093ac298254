//! Which files of a run's artifacts folder are test reports: glob patterns on the path
//! relative to that folder (`/`-separated), by default every `*.xml` at any depth.
//!
//! A pattern can only name paths inside the folder: absolute patterns and `..` components are
//! refused when the pattern is given, and the walk follows no symlink.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Why a results pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid results pattern {pattern:?}: {reason}")]
pub struct GlobError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The compiled patterns of one run.
#[derive(Debug, Clone)]
pub struct ResultGlobs {
    set: GlobSet,
    /// Whether the patterns were given (`results = […]`, `--results`): then every matching
    /// file is expected to be a report, and one that is not is listed as unreadable. The
    /// default patterns skip XML files whose root is not a JUnit element.
    explicit: bool,
}

impl ResultGlobs {
    /// What is read when nothing is configured: every `.xml` file at any depth.
    pub const DEFAULT: &str = "**/*.xml";

    /// Compiles `patterns`; an empty list means [`ResultGlobs::DEFAULT`].
    ///
    /// `*` and `?` never match `/`; `**` matches any number of folders; `{a,b}` and `[ab]`
    /// work as in a shell; `\` escapes.
    ///
    /// # Errors
    /// [`GlobError`] for an empty or absolute pattern, one with a `..` component, or one that
    /// does not compile.
    pub fn new(patterns: &[String]) -> Result<Self, GlobError> {
        let explicit = !patterns.is_empty();
        let default = [Self::DEFAULT.to_owned()];
        let patterns = if explicit { patterns } else { &default[..] };
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            check(pattern)?;
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|error| GlobError {
                    pattern: pattern.clone(),
                    reason: error.kind().to_string(),
                })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|error| GlobError {
            pattern: patterns.join(", "),
            reason: error.to_string(),
        })?;
        Ok(Self { set, explicit })
    }

    /// Whether the relative path `rel` (`/`-separated) is a report.
    pub fn matches(&self, rel: &str) -> bool {
        self.set.is_match(rel)
    }

    /// Whether the patterns were given rather than the default.
    pub fn is_explicit(&self) -> bool {
        self.explicit
    }
}

/// Refuses what could name a path outside the artifacts folder.
fn check(pattern: &str) -> Result<(), GlobError> {
    let refuse = |reason: &str| {
        Err(GlobError {
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if pattern.trim().is_empty() {
        return refuse("it is empty");
    }
    if pattern.starts_with('/') || pattern.starts_with('\\') || pattern.get(1..2) == Some(":") {
        return refuse("it is absolute; patterns are relative to the run's artifacts folder");
    }
    if pattern.split(['/', '\\']).any(|part| part == "..") {
        return refuse("`..` would leave the run's artifacts folder");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(patterns: &[&str]) -> ResultGlobs {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        ResultGlobs::new(&patterns).expect("valid patterns")
    }

    #[test]
    fn the_default_is_every_xml_file_at_any_depth() {
        let default = globs(&[]);
        assert!(!default.is_explicit());
        for (path, expected) in [
            ("junit.xml", true),
            ("reports/unit/junit.xml", true),
            ("junit.xml.bak", false),
            ("junit.XML", false),
            ("report.tap", false),
        ] {
            assert_eq!(default.matches(path), expected, "{path}");
        }
    }

    #[test]
    fn given_patterns_match_relative_paths_with_literal_separators() {
        let given = globs(&["reports/**/*.xml", "top-*.xml"]);
        assert!(given.is_explicit());
        for (path, expected) in [
            ("reports/a.xml", true),
            ("reports/x/y/a.xml", true),
            ("top-1.xml", true),
            ("sub/top-1.xml", false),
            ("other/a.xml", false),
            ("reports.xml", false),
        ] {
            assert_eq!(given.matches(path), expected, "{path}");
        }
    }

    #[test]
    fn patterns_that_could_leave_the_folder_are_refused() {
        for (pattern, fragment) in [
            ("", "empty"),
            ("/etc/*.xml", "absolute"),
            ("C:/x/*.xml", "absolute"),
            ("../*.xml", ".."),
            ("reports/../../x.xml", ".."),
            ("reports/[.xml", "unclosed"),
        ] {
            match ResultGlobs::new(&[pattern.to_owned()]) {
                Err(error) => {
                    assert_eq!(error.pattern, pattern);
                    assert!(error.to_string().contains(fragment), "{error}");
                }
                Ok(_) => panic!("{pattern:?} must be refused"),
            }
        }
    }
}
