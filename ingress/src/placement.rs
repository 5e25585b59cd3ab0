//! `GET /v1/route`: which ingress node a new client should connect to. The original design had
//! one "decision server" for this; here every node answers, from a table of its peers' loads
//! that the distributed mode refreshes (`Ingress::set_peers`, fed from Redis) plus its own
//! live connection count, so that no single process is a point of failure.

use std::sync::RwLock;

use serde::Serialize;

/// One ingress node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeLoad {
    /// Where clients connect: `ws://host:port/v1/ws`.
    pub url: String,
    pub connections: usize,
    /// The node's `max_connections`.
    pub capacity: usize,
}

impl NodeLoad {
    /// Whether the node is under `threshold_percent` of its capacity.
    fn has_room(&self, threshold_percent: u32) -> bool {
        (self.connections as u128) * 100 < (self.capacity as u128) * u128::from(threshold_percent)
    }
}

/// The least loaded node (by share of its capacity; ties by URL, so that every node answers
/// the same) among those under `threshold_percent`, or `None` when all are full.
pub fn choose(nodes: &[NodeLoad], threshold_percent: u32) -> Option<&NodeLoad> {
    nodes.iter().filter(|n| n.capacity > 0 && n.has_room(threshold_percent)).min_by(|a, b| {
        // a.connections / a.capacity vs b.connections / b.capacity, without floats.
        let left = (a.connections as u128) * (b.capacity as u128);
        let right = (b.connections as u128) * (a.capacity as u128);
        left.cmp(&right).then_with(|| a.url.cmp(&b.url))
    })
}

/// The other nodes as last reported.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    nodes: RwLock<Vec<NodeLoad>>,
}

impl Peers {
    pub(crate) fn set(&self, nodes: Vec<NodeLoad>) {
        *self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner) = nodes;
    }

    /// The peers and `this` node.
    pub(crate) fn with(&self, this: NodeLoad) -> Vec<NodeLoad> {
        let mut all = self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        all.retain(|n| n.url != this.url);
        all.push(this);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(url: &str, connections: usize, capacity: usize) -> NodeLoad {
        NodeLoad { url: url.to_owned(), connections, capacity }
    }

    #[test]
    fn the_least_loaded_share_wins_and_ties_go_by_url() {
        let nodes = [node("ws://b", 50, 100), node("ws://a", 400, 1000), node("ws://c", 10, 10)];
        assert_eq!(choose(&nodes, 90).unwrap().url, "ws://a");
        let tied = [node("ws://b", 1, 10), node("ws://a", 1, 10)];
        assert_eq!(choose(&tied, 90).unwrap().url, "ws://a");
    }

    #[test]
    fn nodes_at_the_threshold_are_full_and_all_full_is_none() {
        let nodes = [node("ws://a", 90, 100), node("ws://b", 9, 10), node("ws://z", 0, 0)];
        assert_eq!(choose(&nodes, 90), None);
        assert_eq!(choose(&nodes, 100).unwrap().url, "ws://a");
        assert_eq!(choose(&[], 90), None);
    }

    #[test]
    fn this_node_replaces_a_stale_report_of_itself() {
        let peers = Peers::default();
        peers.set(vec![node("ws://me", 500, 1000), node("ws://other", 3, 1000)]);
        let all = peers.with(node("ws://me", 1, 1000));
        assert_eq!(all.len(), 2);
        assert_eq!(choose(&all, 90).unwrap(), &node("ws://me", 1, 1000));
    }
}
