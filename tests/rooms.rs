//! Room computation: pure functions of an identity, as vantage6 4.x chooses rooms.

use v6_socketio::{
    identity::{EventScope, Identity, NodeIdentity, UserIdentity},
    rooms::{is_announced, join_message, leave_message, rooms_for},
};

fn node() -> Identity {
    Identity::Node(NodeIdentity {
        id: 4,
        name: "node-a1".into(),
        organization_id: 2,
        collaboration_id: 1,
    })
}

fn user(scope: Option<EventScope>, collaborations: Vec<i64>) -> Identity {
    Identity::User(UserIdentity {
        id: 9,
        username: "alice".into(),
        organization_id: 3,
        event_scope: scope,
        collaboration_ids: collaborations,
    })
}

#[test]
fn node_rooms_in_vantage6_order() {
    assert_eq!(
        rooms_for(&node()),
        [
            "all_nodes",
            "collaboration_1",
            "collaboration_1_organization_2"
        ]
    );
}

#[test]
fn user_rooms_follow_the_event_receive_scope() {
    assert_eq!(
        rooms_for(&user(Some(EventScope::Global), vec![1, 2, 5])),
        ["collaboration_1", "collaboration_2", "collaboration_5"]
    );
    assert_eq!(
        rooms_for(&user(Some(EventScope::Collaboration), vec![2])),
        ["collaboration_2"]
    );
    assert_eq!(
        rooms_for(&user(Some(EventScope::Organization), vec![1, 2])),
        [
            "collaboration_1_organization_3",
            "collaboration_2_organization_3"
        ]
    );
    assert!(rooms_for(&user(None, vec![1, 2])).is_empty());
}

#[test]
fn widest_scope_wins() {
    assert!(EventScope::Global > EventScope::Collaboration);
    assert!(EventScope::Collaboration > EventScope::Organization);
    assert_eq!(EventScope::from_db("GLOBAL"), Some(EventScope::Global));
    assert_eq!(EventScope::from_db("col"), Some(EventScope::Collaboration));
    assert_eq!(EventScope::from_db("OWN"), None);
}

#[test]
fn messages_use_vantage6_wording() {
    assert_eq!(
        join_message(&node(), "collaboration_1"),
        "Node <node-a1> joined room <collaboration_1>"
    );
    assert_eq!(
        join_message(&user(None, vec![]), "collaboration_1"),
        "User <alice> joined room <collaboration_1>"
    );
    assert_eq!(
        leave_message(&node(), "collaboration_1"),
        "node-a1 left room collaboration_1"
    );
    assert!(!is_announced("all_nodes"));
    assert!(is_announced("collaboration_1"));
}
