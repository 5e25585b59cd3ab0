//! Pieces of the store benchmark (`benches/store_vs_peers.rs`): the data every engine gets, one
//! adapter per engine behind [`engine::KvEngine`], and the result table.

pub mod data;
pub mod engine;
pub mod ferry;
pub mod lmdb;
pub mod redb_peer;
pub mod sqlite;
pub mod table;
pub mod timing;
