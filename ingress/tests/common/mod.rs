//! A real ingress on a loopback port, over the in-process worker, queue and bus and a store in
//! a temporary directory.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_file_server::{InitOptions, Store, StoreOptions, WalSync};
use ferry_ingress::client::{Client, ConnectOptions};
use ferry_ingress::{Authenticator, Ingress, IngressOptions};
use ferry_instruction_worker::{
    LocalBus, LocalBusOptions, LocalQueue, LocalQueueOptions, Worker, WorkerOptions,
};
use ferry_protocol::ChangeBus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Long enough for anything on a loaded 2-core machine; waiting this long means failure.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Node {
    pub addr: SocketAddr,
    pub url: String,
    pub ingress: Arc<Ingress>,
    pub bus: Arc<LocalBus>,
    pub queue: Arc<LocalQueue>,
    pub shutdown: CancellationToken,
    pub served: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

pub async fn start(options: IngressOptions, auth: Authenticator) -> Node {
    start_with_bus(options, auth, LocalBusOptions::default()).await
}

pub async fn start_with_bus(
    options: IngressOptions,
    auth: Authenticator,
    bus_options: LocalBusOptions,
) -> Node {
    start_full(options, auth, bus_options, WorkerOptions::default()).await
}

pub async fn start_full(
    options: IngressOptions,
    auth: Authenticator,
    bus_options: LocalBusOptions,
    worker_options: WorkerOptions,
) -> Node {
    start_seen_through(options, auth, bus_options, worker_options, |bus| bus).await
}

/// A node whose ingress watches the worker's bus through `view` (e.g. a bus that can lose
/// events).
pub async fn start_seen_through(
    options: IngressOptions,
    auth: Authenticator,
    bus_options: LocalBusOptions,
    worker_options: WorkerOptions,
    view: impl FnOnce(Arc<LocalBus>) -> Arc<dyn ChangeBus>,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    Store::init(dir.path(), InitOptions { partitions: 4, partition_depth: 2 }).unwrap();
    let store_options = StoreOptions { wal_sync: WalSync::Os, ..StoreOptions::default() };
    let store = Arc::new(Store::open(dir.path(), store_options).unwrap());
    let bus = Arc::new(LocalBus::new(bus_options));
    let worker = Arc::new(Worker::new(store, bus.clone(), None, worker_options).unwrap());
    let queue = Arc::new(LocalQueue::start(worker, LocalQueueOptions::default()).unwrap());
    let ingress = Arc::new(Ingress::new(options, auth, queue.clone(), view(bus.clone())));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let served = tokio::spawn({
        let ingress = ingress.clone();
        let shutdown = shutdown.clone();
        async move { ingress.serve(listener, shutdown).await }
    });
    Node {
        addr,
        url: format!("ws://{addr}/v1/ws"),
        ingress,
        bus,
        queue,
        shutdown,
        served,
        _dir: dir,
    }
}

impl Node {
    pub async fn client(&self) -> Client {
        Client::connect(&self.url, None).await.unwrap()
    }

    pub async fn client_with(
        &self,
        token: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Client, ferry_ingress::client::ClientError> {
        Client::connect_with(&ConnectOptions {
            url: self.url.clone(),
            token: token.map(str::to_owned),
            origin: origin.map(str::to_owned),
            ..ConnectOptions::default()
        })
        .await
    }

    /// Waits (bounded) until `check` holds of the node's stats.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&ferry_ingress::IngressStats) -> bool) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if check(&self.ingress.stats()) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future).await.expect("timed out")
}
