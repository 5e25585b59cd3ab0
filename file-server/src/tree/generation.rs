//! Tree files in a partition directory: their names, which one is current, reading headers.
//!
//! A partition holds `tree-<generation>.ferry` files (generation as at least 8 decimal
//! digits). A new generation is built under `<name>.tmp` and renamed into place only once it
//! is complete and synced, so every `tree-*.ferry` file had a valid header when it appeared.
//! The current file is the highest generation.

use std::io;
use std::sync::Arc;

use super::format::{choose_header, HeaderFault, TreeHeader, HEADER_LEN, PAGE_BYTES};
use crate::backend::{OpenMode, StorageDir, StorageFile};
use crate::error::{Result, StoreError};

const PREFIX: &str = "tree-";
const SUFFIX: &str = ".ferry";
const TMP_SUFFIX: &str = ".tmp";

/// The file name of generation `generation`.
pub fn file_name(generation: u64) -> String {
    format!("{PREFIX}{generation:08}{SUFFIX}")
}

/// The name a generation is built under before it is renamed into place.
pub(crate) fn tmp_name(generation: u64) -> String {
    format!("{}{TMP_SUFFIX}", file_name(generation))
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&g| g > 0)
}

/// What a listing of the directory found: the generations present (ascending) and leftover
/// temporary files of interrupted compactions.
pub(crate) struct Listing {
    pub generations: Vec<u64>,
    pub leftovers: Vec<String>,
}

pub(crate) fn list(dir: &dyn StorageDir) -> Result<Listing> {
    let names = dir.list().map_err(|e| StoreError::io("list", dir.path(), e))?;
    let mut generations: Vec<u64> = names.iter().filter_map(|n| parse_name(n)).collect();
    generations.sort_unstable();
    let leftovers = names
        .into_iter()
        .filter(|n| n.strip_suffix(TMP_SUFFIX).and_then(parse_name).is_some())
        .collect();
    Ok(Listing { generations, leftovers })
}

/// Reads both header slots of `file` into copies.
pub(crate) fn read_slots(file: &dyn StorageFile) -> Result<[[u8; HEADER_LEN]; 2]> {
    let len = file.len().map_err(|e| StoreError::io("stat", file.path(), e))?;
    let mut slots = [[0u8; HEADER_LEN]; 2];
    for (i, slot) in slots.iter_mut().enumerate() {
        let offset = i as u64 * PAGE_BYTES;
        if offset + HEADER_LEN as u64 <= len {
            file.read_exact_at(slot, offset)
                .map_err(|e| StoreError::io("read header of", file.path(), e))?;
        }
    }
    Ok(slots)
}

/// The current header of `file`: the valid slot with the highest txn id.
pub(crate) fn read_header(file: &dyn StorageFile) -> Result<TreeHeader> {
    let slots = read_slots(file)?;
    choose_header(&slots[0], &slots[1]).map_err(|faults| no_header(file, &faults))
}

fn no_header(file: &dyn StorageFile, faults: &[HeaderFault; 2]) -> StoreError {
    let path = file.path().to_path_buf();
    match faults {
        [HeaderFault::Foreign, HeaderFault::Foreign | HeaderFault::Blank] => {
            StoreError::Foreign { file: path, what: "header magic is not FERRYTRE".into() }
        }
        [HeaderFault::Unsupported(what), _] | [_, HeaderFault::Unsupported(what)] => {
            StoreError::Foreign { file: path, what: what.clone() }
        }
        [a, b] => StoreError::corrupt(
            path,
            0,
            format!("neither header slot is valid (slot 0: {a}; slot 1: {b})"),
        ),
    }
}

pub(crate) fn open(
    dir: &dyn StorageDir,
    generation: u64,
    mode: OpenMode,
) -> io::Result<Arc<dyn StorageFile>> {
    dir.open_file(&file_name(generation), mode)
}

/// Opens the newest generation for reading, with its current header.
pub(crate) fn open_latest(dir: &dyn StorageDir) -> Result<(Arc<dyn StorageFile>, TreeHeader)> {
    // A compaction may remove a generation between the listing and the open: list again.
    for _ in 0..8 {
        let listing = list(dir)?;
        let Some(&newest) = listing.generations.last() else {
            return Err(StoreError::NotInitialized { dir: dir.path().to_path_buf() });
        };
        match open(dir, newest, OpenMode::ReadOnly) {
            Ok(file) => {
                let header = read_header(&*file)?;
                return Ok((file, header));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("open", dir.path().join(file_name(newest)), e)),
        }
    }
    Err(StoreError::io(
        "open",
        dir.path(),
        io::Error::other("tree files kept disappearing while opening"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        assert_eq!(file_name(3), "tree-00000003.ferry");
        assert_eq!(parse_name(&file_name(3)), Some(3));
        assert_eq!(parse_name(&file_name(123_456_789)), Some(123_456_789));
        for other in
            ["tree-3.ferry", "tree-0000000x.ferry", "wal-00000001.log", "tree-00000000.ferry"]
        {
            assert_eq!(parse_name(other), None, "{other}");
        }
        assert_eq!(tmp_name(4), "tree-00000004.ferry.tmp");
    }
}
