#!/usr/bin/env python3
"""Reference reader for Ferry's B+tree files, written from docs/FORMAT.md alone.

Python 3 standard library only. Reads a partition directory (holding tree-*.ferry files) or a
data directory (holding partition directories p000, p001, ...):

    ferry_reader.py DIR          list live files: path<TAB>rev<TAB>size, sorted by path
    ferry_reader.py DIR PATH     write the content of PATH to stdout

Every page CRC (zlib.crc32), page id, level, key order and overflow CRC on the way is checked.
Exit status: 0 success, 1 path not found or deleted, 2 corrupt or unreadable store.
"""

import mmap
import os
import re
import struct
import sys
import zlib

PAGE = 4096
MAGIC = b"FERRYTRE"
HEADER_LEN = 128
PAGE_HEADER_LEN = 24
KIND_BRANCH, KIND_LEAF = 1, 2
FLAG_LIVE, FLAG_DELETED, FLAG_OVERFLOW = 0, 1, 2
INLINE_MAX = 1024
TREE_NAME = re.compile(r"^tree-(\d{8,})\.ferry$")
PARTITION_NAME = re.compile(r"^p\d+$")


class Corrupt(Exception):
    """A check failed: the message names the file, the offset and what."""

    def __init__(self, path, offset, what):
        super().__init__(f"{path} is corrupt at offset {offset}: {what}")


def decode_header(slot):
    """The header fields of a 128-byte slot, or None when the slot is not valid."""
    if slot == bytes(HEADER_LEN) or slot[:8] != MAGIC:
        return None
    (crc,) = struct.unpack_from("<I", slot, 124)
    if zlib.crc32(slot[:124]) != crc:
        return None
    (version, page_size, txn, root, end, depth, partition, live, tombstones, lsn, garbage,
     generation, next_generation, partitions, flags) = struct.unpack_from(
        "<IIQQQIIQQQQQQII", slot, 8)
    if version != 1 or page_size != PAGE:
        raise ValueError(f"unsupported format version {version} / page size {page_size}")
    return {
        "txn_id": txn, "root_page": root, "end_page": end, "depth": depth,
        "partition": partition, "partitions": partitions, "live_entries": live,
        "tombstones": tombstones, "checkpoint_lsn": lsn, "garbage_pages": garbage,
        "generation": generation, "next_generation": next_generation, "flags": flags,
    }


class Tree:
    """One tree file at its current commit."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        slots = [bytes(self.data[i * PAGE:i * PAGE + HEADER_LEN]) for i in (0, 1)]
        headers = []
        for slot in slots:
            if len(slot) == HEADER_LEN:
                try:
                    h = decode_header(slot)
                except ValueError as e:
                    raise Corrupt(path, 0, str(e))
                if h is not None:
                    headers.append(h)
        if not headers:
            raise Corrupt(path, 0, "neither header slot is valid")
        self.header = max(headers, key=lambda h: h["txn_id"])
        self.end_page = self.header["end_page"]
        if len(self.data) < self.end_page * PAGE:
            raise Corrupt(path, len(self.data),
                          f"file is {len(self.data)} bytes, the header needs {self.end_page * PAGE}")

    def corrupt(self, offset, what):
        return Corrupt(self.path, offset, what)

    def page(self, n, level):
        """Page n, checked: in range, CRC, page id, kind and level. Returns (kind, cells)."""
        if not 2 <= n < self.end_page:
            raise self.corrupt(n * PAGE, f"reference to page {n} outside 2..{self.end_page}")
        p = self.data[n * PAGE:(n + 1) * PAGE]
        (crc,) = struct.unpack_from("<I", p, 0)
        if zlib.crc32(p[4:]) != crc:
            raise self.corrupt(n * PAGE, f"page {n} crc mismatch")
        kind, page_level, count, page_id, _txn = struct.unpack_from("<BBHQQ", p, 4)
        if page_id != n:
            raise self.corrupt(n * PAGE, f"page {n} claims to be page {page_id}")
        if page_level != level or kind != (KIND_LEAF if level == 0 else KIND_BRANCH):
            raise self.corrupt(n * PAGE, f"page {n}: kind {kind} level {page_level}, expected level {level}")
        if count == 0 or PAGE_HEADER_LEN + 2 * count > PAGE:
            raise self.corrupt(n * PAGE, f"page {n}: bad cell count {count}")
        offsets = struct.unpack_from(f"<{count}H", p, PAGE_HEADER_LEN)
        cells = []
        for i, start in enumerate(offsets):
            end = offsets[i + 1] if i + 1 < count else PAGE
            if start < PAGE_HEADER_LEN + 2 * count or start > end or end > PAGE:
                raise self.corrupt(n * PAGE, f"page {n}: cell {i} spans {start}..{end}")
            cells.append(p[start:end])
        return kind, cells

    def branch_cell(self, n, cell):
        if len(cell) < 10:
            raise self.corrupt(n * PAGE, f"page {n}: truncated branch cell")
        child, key_len = struct.unpack_from("<QH", cell, 0)
        if 10 + key_len > len(cell):
            raise self.corrupt(n * PAGE, f"page {n}: branch key overruns its cell")
        return child, bytes(cell[10:10 + key_len])

    def leaf_cell(self, n, cell):
        if len(cell) < 60:
            raise self.corrupt(n * PAGE, f"page {n}: truncated leaf cell")
        key_len, flags, author_len = struct.unpack_from("<HBB", cell, 0)
        key_end = 4 + key_len
        author_end = key_end + 56 + author_len
        if author_end > len(cell):
            raise self.corrupt(n * PAGE, f"page {n}: key, metadata or author overruns its cell")
        rev, size, mtime = struct.unpack_from("<QQQ", cell, key_end)
        entry = {
            "key": bytes(cell[4:key_end]), "flags": flags, "rev": rev, "size": size,
            "mtime_ms": mtime, "sha256": bytes(cell[key_end + 24:key_end + 56]),
            "author": bytes(cell[author_end - author_len:author_end]), "page": n,
        }
        if flags == FLAG_LIVE:
            if size > INLINE_MAX or author_end + size > len(cell):
                raise self.corrupt(n * PAGE, f"page {n}: inline content overruns its cell")
            entry["inline"] = bytes(cell[author_end:author_end + size])
        elif flags == FLAG_OVERFLOW:
            if size <= INLINE_MAX or author_end + 12 > len(cell):
                raise self.corrupt(n * PAGE, f"page {n}: bad overflow reference")
            entry["first_page"], entry["crc"] = struct.unpack_from("<QI", cell, author_end)
        elif flags != FLAG_DELETED or size != 0:
            raise self.corrupt(n * PAGE, f"page {n}: bad leaf flags {flags} (size {size})")
        return entry

    def entries(self):
        """Every leaf entry (live and tombstones) in key order."""
        h = self.header
        if h["root_page"] == 0:
            return
        stack = [(h["root_page"], h["depth"] - 1)]
        last = None
        while stack:
            n, level = stack.pop()
            kind, cells = self.page(n, level)
            if kind == KIND_BRANCH:
                children = [self.branch_cell(n, c)[0] for c in cells]
                stack.extend((c, level - 1) for c in reversed(children))
                continue
            for cell in cells:
                entry = self.leaf_cell(n, cell)
                if last is not None and entry["key"] <= last:
                    raise self.corrupt(n * PAGE, f"page {n}: keys out of order")
                last = entry["key"]
                yield entry

    def find(self, key):
        """The leaf entry of key, or None."""
        h = self.header
        if h["root_page"] == 0:
            return None
        n, level = h["root_page"], h["depth"] - 1
        while True:
            kind, cells = self.page(n, level)
            if kind == KIND_LEAF:
                for cell in cells:
                    entry = self.leaf_cell(n, cell)
                    if entry["key"] == key:
                        return entry
                return None
            child = self.branch_cell(n, cells[0])[0]
            for cell in cells[1:]:
                c, sep = self.branch_cell(n, cell)
                if sep > key:
                    break
                child = c
            n, level = child, level - 1

    def content(self, entry):
        if entry["flags"] == FLAG_LIVE:
            return entry["inline"]
        first, size = entry["first_page"], entry["size"]
        pages = (size + PAGE - 1) // PAGE
        if first < 2 or first + pages > self.end_page:
            raise self.corrupt(first * PAGE, f"overflow extent at page {first} out of range")
        data = bytes(self.data[first * PAGE:first * PAGE + size])
        if zlib.crc32(data) != entry["crc"]:
            raise self.corrupt(first * PAGE, f"overflow extent at page {first} crc mismatch")
        return data


def open_partition(directory):
    """The current tree of a partition directory: highest generation, following retirement."""
    generations = sorted(
        int(m.group(1)) for m in map(TREE_NAME.match, os.listdir(directory)) if m)
    if not generations:
        raise Corrupt(directory, 0, "no tree-*.ferry file")
    tree = Tree(os.path.join(directory, f"tree-{generations[-1]:08d}.ferry"))
    for _ in range(16):
        nxt = tree.header["next_generation"]
        if nxt == 0:
            return tree
        tree = Tree(os.path.join(directory, f"tree-{nxt:08d}.ferry"))
    raise Corrupt(directory, 0, "generations keep being replaced")


def partitions(directory):
    """A partition directory itself, or the p* partition directories of a data directory."""
    names = os.listdir(directory)
    if any(TREE_NAME.match(n) for n in names):
        return [directory]
    parts = sorted(os.path.join(directory, n) for n in names
                   if PARTITION_NAME.match(n) and os.path.isdir(os.path.join(directory, n)))
    if not parts:
        raise Corrupt(directory, 0, "neither a partition directory nor a data directory")
    return parts


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        trees = [open_partition(p) for p in partitions(argv[1])]
        if len(argv) == 2:
            rows = []
            for tree in trees:
                for e in tree.entries():
                    if e["flags"] != FLAG_DELETED:
                        rows.append((e["key"], e["rev"], e["size"]))
            out = sys.stdout.buffer
            for key, rev, size in sorted(rows):
                out.write(key + b"\t" + str(rev).encode() + b"\t" + str(size).encode() + b"\n")
            return 0
        key = os.fsencode(argv[2])
        for tree in trees:
            entry = tree.find(key)
            if entry is not None and entry["flags"] != FLAG_DELETED:
                sys.stdout.buffer.write(tree.content(entry))
                return 0
        print(f"{argv[2]}: not found", file=sys.stderr)
        return 1
    except Corrupt as e:
        print(f"corrupt: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
