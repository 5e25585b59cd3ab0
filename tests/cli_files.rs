//! End-to-end tests of the `ferry` command line against a real data directory.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn ferry(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("FERRY_CONFIG")
        .output()
        .expect("run ferry")
}

fn ok(data: &Path, args: &[&str]) -> String {
    let out = ferry(data, args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(data: &Path, args: &[&str]) -> String {
    let out = ferry(data, args);
    assert!(!out.status.success(), "ferry {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

fn put_stdin(data: &Path, path: &str, content: &[u8]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["files", "put", path, "-", "--data"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(content).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn init_put_get_ls_stat_export_verify_stats_compact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(&data, &["init", "--partitions", "4"]);
    assert!(fails(&data, &["init", "--partitions", "8"]).contains("partitions"));

    put_stdin(&data, "/home/alice/notes.txt", b"hello\n");
    put_stdin(&data, "/home/alice/notes.txt", b"hello again\n");
    let src = tmp.path().join("src.bin");
    std::fs::write(&src, vec![7u8; 100_000]).unwrap();
    ok(&data, &["files", "put", "/big.bin", src.to_str().unwrap()]);

    assert_eq!(ok(&data, &["files", "get", "/home/alice/notes.txt"]), "hello again\n");
    let stat = ok(&data, &["files", "stat", "/home/alice/notes.txt"]);
    assert!(stat.contains("rev: 2") && stat.contains("size: 12"), "{stat}");
    let ls = ok(&data, &["files", "ls", "/"]);
    assert_eq!(ls.lines().collect::<Vec<_>>(), ["/big.bin", "/home/alice/notes.txt"]);
    assert_eq!(ok(&data, &["files", "ls", "/home/"]).trim(), "/home/alice/notes.txt");

    let jsonl = ok(&data, &["files", "export", "--format", "jsonl"]);
    let rows: Vec<serde_json::Value> =
        jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["path"], "/home/alice/notes.txt");
    assert_eq!(rows[1]["rev"], 2);
    let csv = ok(&data, &["files", "export", "--format", "csv"]);
    assert!(csv.starts_with("path,rev,size,mtime_ms,author,sha256\n"), "{csv}");
    assert_eq!(csv.lines().count(), 3);

    let verify = ok(&data, &["files", "verify"]);
    assert!(verify.contains("ok"), "{verify}");
    let stats = ok(&data, &["files", "stats"]);
    assert!(stats.contains("files: 2"), "{stats}");
    ok(&data, &["files", "compact"]);
    assert_eq!(ok(&data, &["files", "get", "/big.bin"]).len(), 100_000);
}

#[test]
fn import_turns_a_tree_into_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/c.txt"), "c").unwrap();
    std::fs::write(src.join("top.txt"), "t").unwrap();
    // More than one batch of the import.
    std::fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..1_500 {
        std::fs::write(src.join(format!("many/{i}.txt")), format!("{i}")).unwrap();
    }
    ok(&data, &["init"]);
    ok(&data, &["files", "put", "/top.txt", "/dev/null"]);
    let out = ok(&data, &["files", "import", src.to_str().unwrap()]);
    assert!(out.contains("1502 files"), "{out}");
    assert_eq!(ok(&data, &["files", "get", "/a/b/c.txt"]), "c");
    assert_eq!(ok(&data, &["files", "get", "/top.txt"]), "t");
    assert!(ok(&data, &["files", "stat", "/top.txt"]).contains("rev: 2"), "over the earlier put");
    assert_eq!(ok(&data, &["files", "get", "/many/1499.txt"]), "1499");
    assert_eq!(ok(&data, &["files", "ls", "/many/"]).lines().count(), 1_500);
    assert!(ok(&data, &["files", "verify"]).starts_with("ok: 16 partitions, 1502 files"));
}

#[test]
fn bad_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    assert!(fails(&data, &["files", "ls"]).contains("ferry init"));
    ok(&data, &["init"]);
    assert!(fails(&data, &["files", "get", "relative"]).contains("does not start with '/'"));
    assert!(fails(&data, &["files", "get", "/a/../b"]).contains("'..'"));
    assert!(fails(&data, &["files", "get", "/missing"]).contains("no file /missing"));
    let err = fails(&data, &["files", "put", "/x", "-", "--set", "store.max_file_size=0"]);
    assert!(err.contains("store.max_file_size"), "{err}");
}

#[test]
fn writers_are_refused_while_another_process_holds_the_lock() {
    use ferry_file_server::store::{InitOptions, Store, StoreOptions};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    Store::init(&data, InitOptions::default()).unwrap();
    let store = Store::open(&data, StoreOptions::default()).unwrap();
    let err = fails(&data, &["files", "put", "/x", "/dev/null"]);
    assert!(err.contains(&format!("locked by pid {}", std::process::id())), "{err}");
    drop(store);
    ok(&data, &["files", "put", "/x", "/dev/null"]);
}

#[test]
fn config_show_and_check() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let show = ok(&data, &["config", "show", "--set", "store.flush_interval_ms=5"]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("store.flush_interval_ms = 5") && l.ends_with("# --set")),
        "{show}"
    );
    assert!(
        show.lines().any(|l| l.starts_with("store.partitions = 16") && l.ends_with("# default")),
        "{show}"
    );
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[store]\nwal_synk = \"os\"\n").unwrap();
    let out = ferry(&data, &["config", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean store.wal_sync"), "{err}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/ferry.example.toml");
    assert!(ok(&data, &["config", "check", example]).contains("ok"));
}

#[test]
fn verify_reports_a_damaged_page_with_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(&data, &["init", "--partitions", "1"]);
    put_stdin(&data, "/a.txt", &[b'a'; 3000]);
    assert!(ok(&data, &["files", "verify"]).starts_with("ok"));
    let tree = data.join("p000/tree-00000001.ferry");
    let mut bytes = std::fs::read(&tree).unwrap();
    let page = 2 * 4096;
    bytes[page + 100] ^= 0xff;
    std::fs::write(&tree, bytes).unwrap();
    let out = ferry(&data, &["files", "verify"]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("tree-00000001.ferry") && report.contains("offset 8192"), "{report}");
    assert!(fails(&data, &["files", "get", "/a.txt"]).contains("corrupt"));
}
