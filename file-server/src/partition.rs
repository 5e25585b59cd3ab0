//! Which partition a path belongs to.
//!
//! The rule is language-neutral and documented in `docs/FORMAT.md`: FNV-1a 64 over the UTF-8
//! bytes of the path's first `depth` segments, each preceded by `/` (for `/home/alice/x.txt` at
//! depth 2 that is `/home/alice`), modulo the partition count. A path with fewer segments
//! hashes all of them. With depth 2 a directory such as `/home/alice/` lives in one partition.

use crate::path::FilePath;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit.
#[cfg(test)]
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// The part of `path` that decides its partition: its first `depth` segments.
#[cfg(test)]
fn partition_key(path: &FilePath, depth: u32) -> &str {
    let s = path.as_str();
    let mut seen = 0u32;
    for (i, b) in s.bytes().enumerate().skip(1) {
        if b == b'/' {
            seen += 1;
            if seen == depth {
                return &s[..i];
            }
        }
    }
    s
}

/// The partition (in `0..count`) that holds `path`: `fnv1a64(partition_key(path))`, in the
/// one pass over the bytes that every cached read makes.
pub fn partition_of(path: &FilePath, depth: u32, count: u32) -> u32 {
    assert!(count > 0, "a store has at least one partition");
    let bytes = path.as_str().as_bytes();
    // The first byte is the root's `/`, which no segment count includes.
    let mut hash = (FNV_OFFSET ^ u64::from(b'/')).wrapping_mul(FNV_PRIME);
    let mut seen = 0u32;
    for &b in bytes.get(1..).unwrap_or_default() {
        if b == b'/' {
            seen += 1;
            if seen == depth {
                break;
            }
        }
        hash = (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    (hash % u64::from(count)) as u32
}

/// The partition key every path under `prefix` has, if the prefix fixes one: its first
/// `depth` segments are complete, each followed by `/` (`/home/alice/` or `/home/alice/x` at
/// depth 2, but not `/home/alice`, which also matches `/home/alice2/...`).
fn prefix_partition_key(prefix: &str, depth: u32) -> Option<FilePath> {
    let rest = prefix.strip_prefix('/')?;
    let mut seen = 0;
    for (i, b) in rest.bytes().enumerate() {
        if b == b'/' {
            seen += 1;
            if seen == depth {
                // Not a valid path (an empty or `..` segment): no file can match; merging
                // finds that out without special rules here.
                return FilePath::parse(&prefix[..i + 1]).ok();
            }
        }
    }
    None
}

/// The partition that holds every path under `prefix`, if the prefix spells out a complete
/// partition key (`/home/alice/` at depth 2, but not `/home/alice`); `None` when its paths
/// may be anywhere.
pub fn partition_of_prefix(prefix: &str, depth: u32, count: u32) -> Option<u32> {
    prefix_partition_key(prefix, depth).map(|key| partition_of(&key, depth, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> FilePath {
        FilePath::parse(s).unwrap()
    }

    #[test]
    fn fnv1a64_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_one_pass_partition_is_the_hash_of_the_key() {
        for path in ["/home/alice/x.txt", "/home/alice", "/readme", "/a/b/c/d", "/h\u{e9}/b/c"] {
            for depth in 0..4 {
                let key = fnv1a64(partition_key(&p(path), depth).as_bytes());
                for count in [1, 2, 16, 1000] {
                    let want = (key % u64::from(count)) as u32;
                    assert_eq!(partition_of(&p(path), depth, count), want, "{path} {depth}");
                }
            }
        }
    }

    #[test]
    fn the_one_pass_finds_the_key_wherever_it_ends() {
        // Short and long segments, and bytes over 0x7f (`\u{2f2f}` is 0xe2 0xbc 0xaf: no `/`).
        let long = "r".repeat(17);
        let names = ["a", ".bcdefg", "hijklmnopq", "\u{e9}\u{e9}\u{e9}", "\u{2f2f}x", &long];
        for a in names {
            for b in names {
                for c in names {
                    let path = format!("/{a}/{b}/{c}");
                    for depth in 0..5 {
                        let key = fnv1a64(partition_key(&p(&path), depth).as_bytes());
                        for count in [1, 3, 16, 1000] {
                            let want = (key % u64::from(count)) as u32;
                            assert_eq!(
                                partition_of(&p(&path), depth, count),
                                want,
                                "{path} {depth}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn key_is_the_first_segments() {
        assert_eq!(partition_key(&p("/home/alice/x.txt"), 2), "/home/alice");
        assert_eq!(partition_key(&p("/home/alice/x/y"), 1), "/home");
        assert_eq!(partition_key(&p("/readme"), 2), "/readme");
        assert_eq!(partition_key(&p("/home/alice"), 2), "/home/alice");
    }

    #[test]
    fn a_directory_lives_in_one_partition() {
        let a = partition_of(&p("/home/alice/a.txt"), 2, 16);
        for f in ["/home/alice/b", "/home/alice/deep/er/c", "/home/alice"] {
            assert_eq!(partition_of(&p(f), 2, 16), a);
        }
        assert!(a < 16);
    }

    fn key(prefix: &str, depth: u32) -> Option<String> {
        prefix_partition_key(prefix, depth).map(|k| k.as_str().to_owned())
    }

    #[test]
    fn only_a_prefix_with_complete_key_segments_names_a_partition_key() {
        assert_eq!(key("/home/alice/", 2).as_deref(), Some("/home/alice"));
        assert_eq!(key("/home/alice/notes/x", 2).as_deref(), Some("/home/alice"));
        assert_eq!(key("/home/", 1).as_deref(), Some("/home"));
        // `/home/alice` also matches `/home/alice2/...`, elsewhere.
        assert_eq!(key("/home/alice", 2), None);
        assert_eq!(key("/home/", 2), None);
        assert_eq!(key("/", 2), None);
        assert_eq!(key("", 2), None);
        assert_eq!(key("home/alice/", 2), None);
        assert_eq!(key("//alice/", 2), None, "an empty segment is no valid key");
        assert_eq!(key("/home/../", 2), None);
    }

    #[test]
    fn every_path_under_a_routed_prefix_is_in_the_key_partition() {
        let prefix = "/home/alice/";
        let key = prefix_partition_key(prefix, 2).unwrap();
        let p = partition_of(&key, 2, 16);
        for path in ["/home/alice/a", "/home/alice/deep/er/b.txt", "/home/alice/alice"] {
            assert_eq!(partition_of(&FilePath::parse(path).unwrap(), 2, 16), p, "{path}");
        }
    }
}
