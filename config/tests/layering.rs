use std::io::Write;

use ferry_config::{load, ConfigError, ConfigSources, WalSyncPolicy};

fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn sources(file: Option<&tempfile::NamedTempFile>, sets: &[&str]) -> ConfigSources {
    ConfigSources {
        file: file.map(|f| f.path().to_path_buf()),
        env: false,
        sets: sets.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn later_layers_win_and_origins_are_reported() {
    let f = file_with("[store]\npartitions = 8\nflush_interval_ms = 50\n");
    let loaded =
        load(&sources(Some(&f), &["store.flush_interval_ms=7", "store.wal_sync=os"])).unwrap();
    assert_eq!(loaded.config.store.partitions, 8);
    assert_eq!(loaded.config.store.flush_interval_ms, 7);
    assert_eq!(loaded.config.store.wal_sync, WalSyncPolicy::Os);
    assert_eq!(loaded.config.store.partition_depth, 2);
    let origins = loaded.origins();
    let source = |key: &str| origins.iter().find(|o| o.key == key).unwrap().source.clone();
    assert_eq!(source("store.partitions"), f.path().display().to_string());
    assert_eq!(source("store.flush_interval_ms"), "--set");
    assert_eq!(source("store.partition_depth"), "default");
}

#[test]
fn environment_overrides_the_file() {
    // The only test that sets FERRY_ variables, so parallel tests are unaffected.
    std::env::set_var("FERRY_STORE__CACHE_BYTES", "1234");
    let f = file_with("[store]\ncache_bytes = 99\n");
    let mut s = sources(Some(&f), &[]);
    s.env = true;
    let loaded = load(&s).unwrap();
    std::env::remove_var("FERRY_STORE__CACHE_BYTES");
    assert_eq!(loaded.config.store.cache_bytes, 1234);
    let origin = loaded.origins().into_iter().find(|o| o.key == "store.cache_bytes").unwrap();
    assert_eq!(origin.source, "FERRY_STORE__CACHE_BYTES");
}

#[test]
fn unknown_key_names_the_key_and_suggests_the_close_one() {
    let f = file_with("[store]\nflush_intrval_ms = 5\n");
    let err = load(&sources(Some(&f), &[])).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{msg}");
    assert!(msg.contains("store.flush_intrval_ms"), "{msg}");
    assert!(msg.contains("did you mean store.flush_interval_ms"), "{msg}");
    let err = load(&sources(None, &["stor.partitions=3"])).err().unwrap().to_string();
    assert!(err.contains("unknown key stor") && err.contains("did you mean store"), "{err}");
}

#[test]
fn bad_values_name_key_value_and_what_is_allowed() {
    let f = file_with("[store]\nwal_sync = \"sometimes\"\n");
    let msg = load(&sources(Some(&f), &[])).err().unwrap().to_string();
    assert!(msg.contains("store.wal_sync") && msg.contains("sometimes"), "{msg}");
    assert!(msg.contains("always, interval, os"), "{msg}");

    let msg = load(&sources(None, &["store.partitions=0"])).err().unwrap().to_string();
    assert!(msg.contains("store.partitions = 0"), "{msg}");
    assert!(msg.contains("from 1 to 4096") && msg.contains("--set"), "{msg}");

    let msg = load(&sources(None, &["store.cache_bytes=lots"])).err().unwrap().to_string();
    assert!(msg.contains("store.cache_bytes") && msg.contains("lots"), "{msg}");
}

#[test]
fn malformed_inputs_are_typed_errors() {
    let f = file_with("[store\npartitions = ");
    assert!(matches!(load(&sources(Some(&f), &[])), Err(ConfigError::File { .. })));
    assert!(matches!(load(&sources(None, &["nodot=1"])), Err(ConfigError::BadSetFlag { .. })));
    let missing =
        ConfigSources { file: Some("/nonexistent/ferry.toml".into()), ..Default::default() };
    assert!(matches!(load(&missing), Err(ConfigError::File { .. })));
}

#[test]
fn example_file_documents_every_key_with_its_default() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../ferry.example.toml");
    let loaded = load(&ConfigSources { file: Some(example.into()), ..Default::default() }).unwrap();
    assert_eq!(loaded.config, ferry_config::FerryConfig::default());
    let text = std::fs::read_to_string(example).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    for origin in loaded.origins() {
        let (section, key) = origin.key.split_once('.').unwrap();
        let present = table.get(section).and_then(|s| s.as_table()).is_some_and(|s| {
            let mut t = s;
            let parts: Vec<&str> = key.split('.').collect();
            for p in &parts[..parts.len() - 1] {
                match t.get(*p).and_then(|v| v.as_table()) {
                    Some(inner) => t = inner,
                    None => return false,
                }
            }
            t.contains_key(*parts.last().unwrap())
        });
        assert!(present, "ferry.example.toml does not document {}", origin.key);
    }
}
