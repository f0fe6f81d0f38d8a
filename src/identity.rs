//! Who is on the other end of a `/tasks` connection, as read from the
//! vantage6 database after the token was verified.

/// An identified client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A vantage6 node.
    Node(NodeIdentity),
    /// A vantage6 user (the UI).
    User(UserIdentity),
}

impl Identity {
    /// The `authenticatable` id.
    pub fn id(&self) -> i64 {
        match self {
            Identity::Node(n) => n.id,
            Identity::User(u) => u.id,
        }
    }

    /// The name vantage6 uses in its room messages: the node's `name` or the
    /// user's `username`.
    pub fn name(&self) -> &str {
        match self {
            Identity::Node(n) => &n.name,
            Identity::User(u) => &u.username,
        }
    }

    /// `"node"` or `"user"`, the `authenticatable.type` value.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Node(_) => "node",
            Identity::User(_) => "user",
        }
    }

    /// The node, if this is one.
    pub fn as_node(&self) -> Option<&NodeIdentity> {
        match self {
            Identity::Node(n) => Some(n),
            Identity::User(_) => None,
        }
    }
}

/// A node row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// `node.id` (= `authenticatable.id`).
    pub id: i64,
    /// `node.name`.
    pub name: String,
    /// `node.organization_id`.
    pub organization_id: i64,
    /// `node.collaboration_id`.
    pub collaboration_id: i64,
}

/// A user row and what decides its rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentity {
    /// `user.id` (= `authenticatable.id`).
    pub id: i64,
    /// `user.username`.
    pub username: String,
    /// `user.organization_id`.
    pub organization_id: i64,
    /// The widest scope of the user's `event` RECEIVE rules, if any.
    pub event_scope: Option<EventScope>,
    /// The collaborations whose rooms the scope opens: every collaboration
    /// for [`EventScope::Global`], else those of the user's organization.
    pub collaboration_ids: Vec<i64>,
}

/// Scope of an `event` RECEIVE rule (vantage6 `Scope`, stored by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventScope {
    /// `ORGANIZATION` (`org`).
    Organization,
    /// `COLLABORATION` (`col`).
    Collaboration,
    /// `GLOBAL` (`glo`).
    Global,
}

impl EventScope {
    /// Parses the value stored for vantage6's `Scope`: the member name in
    /// 4.x (SQLAlchemy `Enum`), the value in 5.x (a `String` column), and
    /// 4.x's short values.
    pub fn from_db(value: &str) -> Option<Self> {
        match value {
            "GLOBAL" | "glo" | "global" => Some(EventScope::Global),
            "COLLABORATION" | "col" | "collaboration" => Some(EventScope::Collaboration),
            "ORGANIZATION" | "org" | "organization" => Some(EventScope::Organization),
            _ => None,
        }
    }
}
