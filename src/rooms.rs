//! Room names and room messages of vantage6's `/tasks` namespace: pure
//! functions of an [`Identity`], testable without a database.

use crate::identity::{EventScope, Identity, NodeIdentity, UserIdentity};

/// The room every node joins. vantage6 never sends a join/leave `message`
/// there, and we do not send `node-online`/`node-offline` there either: it
/// spans collaborations.
pub const ALL_NODES_ROOM: &str = "all_nodes";

/// `collaboration_<cid>`.
pub fn collaboration_room(collaboration_id: i64) -> String {
    format!("collaboration_{collaboration_id}")
}

/// `collaboration_<cid>_organization_<oid>`.
pub fn organization_room(collaboration_id: i64, organization_id: i64) -> String {
    format!("collaboration_{collaboration_id}_organization_{organization_id}")
}

/// The rooms a client joins, in vantage6's order.
pub fn rooms_for(identity: &Identity) -> Vec<String> {
    match identity {
        Identity::Node(node) => node_rooms(node),
        Identity::User(user) => user_rooms(user),
    }
}

/// A node's rooms: `all_nodes`, its collaboration, and its organization
/// within that collaboration.
pub fn node_rooms(node: &NodeIdentity) -> Vec<String> {
    vec![
        ALL_NODES_ROOM.to_owned(),
        collaboration_room(node.collaboration_id),
        organization_room(node.collaboration_id, node.organization_id),
    ]
}

/// A user's rooms, from the widest `event` RECEIVE scope: global and
/// collaboration scope give `collaboration_<id>` rooms, organization scope
/// gives `collaboration_<id>_organization_<own org>` rooms, no rule gives none.
pub fn user_rooms(user: &UserIdentity) -> Vec<String> {
    match user.event_scope {
        None => Vec::new(),
        Some(EventScope::Global | EventScope::Collaboration) => user
            .collaboration_ids
            .iter()
            .map(|&c| collaboration_room(c))
            .collect(),
        Some(EventScope::Organization) => user
            .collaboration_ids
            .iter()
            .map(|&c| organization_room(c, user.organization_id))
            .collect(),
    }
}

/// Whether join/leave messages and node status events go to `room`.
pub fn is_announced(room: &str) -> bool {
    room != ALL_NODES_ROOM
}

/// The `message` text sent to a room a client joins, e.g.
/// `Node <node-a> joined room <collaboration_1>`.
pub fn join_message(identity: &Identity, room: &str) -> String {
    let kind = match identity {
        Identity::Node(_) => "Node",
        Identity::User(_) => "User",
    };
    format!("{kind} <{}> joined room <{room}>", identity.name())
}

/// The `message` text sent to a room a client leaves, e.g.
/// `node-a left room collaboration_1` (vantage6 words it differently from the join).
pub fn leave_message(identity: &Identity, room: &str) -> String {
    format!("{} left room {room}", identity.name())
}
