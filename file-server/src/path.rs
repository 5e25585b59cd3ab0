//! File paths as Ferry stores them: absolute, normalized, UTF-8.

use std::fmt;
use std::sync::Arc;

/// The longest path Ferry accepts, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Why a string is not a valid Ferry path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {path:?} does not start with '/'")]
    NotAbsolute { path: String },
    #[error("path is {len} bytes long, the limit is {MAX_PATH_BYTES}")]
    TooLong { len: usize },
    #[error("path {path:?} contains a NUL byte")]
    Nul { path: String },
    #[error("path {path:?} has an empty segment (a '//' or a trailing '/')")]
    EmptySegment { path: String },
    #[error("path {path:?} has a '.' or '..' segment")]
    DotSegment { path: String },
}

/// A validated file path such as `/home/alice/notes.txt`.
///
/// Invariants: starts with `/`; at most [`MAX_PATH_BYTES`] bytes; no NUL; every segment is
/// non-empty and neither `.` nor `..`. Paths are compared bytewise, which is also the B+tree's
/// key order.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilePath(Arc<str>);

impl FilePath {
    /// Validates `raw` as a path. Nothing is rewritten: a path that is not already normal is
    /// refused with the reason, so that two spellings never name one file.
    pub fn parse(raw: &str) -> Result<FilePath, PathError> {
        FilePath::check(raw)?;
        Ok(FilePath(Arc::from(raw)))
    }

    /// Checks `raw` against the invariants of a path without allocating.
    pub(crate) fn check(raw: &str) -> Result<(), PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong { len: raw.len() });
        }
        if !raw.starts_with('/') {
            return Err(PathError::NotAbsolute { path: raw.to_owned() });
        }
        if raw.contains('\0') {
            return Err(PathError::Nul { path: raw.to_owned() });
        }
        for segment in raw[1..].split('/') {
            match segment {
                "" => return Err(PathError::EmptySegment { path: raw.to_owned() }),
                "." | ".." => return Err(PathError::DotSegment { path: raw.to_owned() }),
                _ => {}
            }
        }
        Ok(())
    }

    /// A path read from a tree page whose keys were all checked with [`FilePath::check`]
    /// when the page was first verified: scans make one per row, and checking again would
    /// be most of their cost.
    pub(crate) fn from_stored(raw: &str) -> FilePath {
        debug_assert!(FilePath::check(raw).is_ok(), "stored path {raw:?} was not checked");
        FilePath(Arc::from(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The segments between the slashes, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/')
    }
}

impl fmt::Debug for FilePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for FilePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for FilePath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FilePath::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        for p in ["/a", "/a/b/c.txt", "/home/alice/ünïcode", "/x..y/.hidden"] {
            assert_eq!(FilePath::parse(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn refuses_each_kind_of_bad_path() {
        assert_eq!(FilePath::parse(""), Err(PathError::Empty));
        assert!(matches!(FilePath::parse("a/b"), Err(PathError::NotAbsolute { .. })));
        assert!(matches!(FilePath::parse("/"), Err(PathError::EmptySegment { .. })));
        assert!(matches!(FilePath::parse("/a//b"), Err(PathError::EmptySegment { .. })));
        assert!(matches!(FilePath::parse("/a/"), Err(PathError::EmptySegment { .. })));
        assert!(matches!(FilePath::parse("/a/./b"), Err(PathError::DotSegment { .. })));
        assert!(matches!(FilePath::parse("/a/.."), Err(PathError::DotSegment { .. })));
        assert!(matches!(FilePath::parse("/a\0b"), Err(PathError::Nul { .. })));
        let long = format!("/{}", "x".repeat(MAX_PATH_BYTES));
        assert_eq!(FilePath::parse(&long), Err(PathError::TooLong { len: MAX_PATH_BYTES + 1 }));
        let exact = format!("/{}", "x".repeat(MAX_PATH_BYTES - 1));
        assert!(FilePath::parse(&exact).is_ok());
    }

    #[test]
    fn segments_are_split_on_slashes() {
        let p = FilePath::parse("/home/alice/notes.txt").unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), ["home", "alice", "notes.txt"]);
    }
}
