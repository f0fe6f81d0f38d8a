//! What vantage6 5.x (HQ 5.0.3, `vantage6/hq/websockets.py`) does beyond
//! 4.x: the pending dataframe deletions sent to a connecting node, the ping
//! that recovers a node the offline sweep marked offline, the dependent
//! tasks announced when a run completes, and `dataframe_deleted`. Each
//! deliberate difference from HQ is said where it is made (and in the
//! README's list).

use serde_json::{json, Map, Value};
use socketioxide::{adapter::Adapter, extract::SocketRef};
use tracing::{debug, info, warn};

use super::{
    announce_node, emit_to_collaboration, emit_to_socket, join_rooms_and_notify, refuse,
    TasksContext,
};
use crate::{
    identity::{Identity, NodeIdentity},
    store::PingRecorded,
};

/// `_send_dataframe_deletion_instructions`: a `delete_dataframe` for each
/// dataframe the node has yet to delete.
///
/// Deliberate difference: HQ emits them to `collaboration_<cid>` before
/// the connecting node has joined its rooms, so the node itself never gets
/// its own (the others do, and delete a dataframe of that name of their
/// own). We send them after the rooms are joined, to the node's socket
/// only: the rows are that node's; the other nodes have rows and replays
/// of their own.
pub(super) async fn send_dataframe_deletion_instructions<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    node: &NodeIdentity,
) {
    let pending = match ctx.store().pending_dataframe_deletions(node.id).await {
        Ok(pending) => pending,
        Err(e) => return ctx.db_failed("read pending dataframe deletions", &e),
    };
    for row in pending {
        let payload = json!({"df_name": row.dataframe_name, "session_id": row.session_id});
        if let Err(e) = s.emit("delete_dataframe", &payload) {
            debug!(sid = %s.id, error = %e, "could not emit delete_dataframe to socket");
        }
    }
}

/// `on_ping` (5.x): `last_seen` now, and if the database said the node was
/// not online (the offline sweep caught it late), the connect sequence
/// again: `sync`, `node-online` to each announced room, the join `message`
/// to each room, the pending dataframe deletions.
///
/// Deliberate differences: HQ appends the node's rooms to the session's
/// room list again on every recovery, so every later announcement,
/// `message` and departure is sent once more per recovery; we keep the
/// room list (the socket never left its rooms) and announce once per room.
/// HQ runs the recovery for a user too, and raises `AttributeError` after
/// `sync`; a user's ping here only records the ping.
pub(super) async fn on_ping<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    identity: &Identity,
    rooms: &[String],
) {
    let now = chrono::Utc::now().naive_utc();
    let Identity::Node(node) = identity else {
        if let Err(e) = ctx.store().record_ping(identity.id(), now).await {
            ctx.db_failed("record ping", &e);
        }
        return;
    };
    match ctx.store().record_node_ping(node.id, now).await {
        Ok(PingRecorded::WasOnline) => {}
        Ok(PingRecorded::WasNotOnline) => {
            emit_to_socket(s, "sync");
            announce_node(s, ctx, node, rooms, "node-online").await;
            join_rooms_and_notify(s, ctx, identity, rooms).await;
            send_dataframe_deletion_instructions(s, ctx, node).await;
            ctx.metrics().ping_recovery();
            if let Some(skipped) = ctx.lifecycle_line("session_recovered") {
                info!(sid = %s.id, node = %node.name, not_logged_before = skipped,
                    "node websocket session recovered through ping");
            }
        }
        Ok(PingRecorded::NoSuchRow) => {
            if let Some(n) = refuse(ctx, "ping", "unknown_subject") {
                warn!(node = %node.name, id = node.id, refused = n,
                    "ping from a node whose authenticatable row is gone");
            }
        }
        Err(e) => ctx.db_failed("record ping", &e),
    }
}

/// The `new_task_update` of `on_algorithm_status_change` (5.x) for a run
/// that reports `completed`: to the collaboration of each task that
/// depends on the run's task (HQ's `run.task.required_by`), before the
/// status change itself is relayed.
///
/// As HQ: each run that reports `completed` triggers it, whether or not the
/// task's other runs, or the dependent's other dependencies, are done (a
/// task over N organisations announces each dependent N times).
pub(super) async fn notify_dependent_tasks<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    task_id: Option<i64>,
) {
    let Some(task_id) = task_id else {
        return;
    };
    let dependents = match ctx.store().dependent_tasks(task_id).await {
        Ok(dependents) => dependents,
        Err(e) => return ctx.db_failed("look up dependent tasks", &e),
    };
    if !dependents.is_empty() {
        debug!(
            task_id,
            dependents = dependents.len(),
            "dependent tasks ready to be executed"
        );
    }
    for task in dependents {
        let Some(collaboration_id) = task.collaboration_id else {
            // HQ would emit to `collaboration_None`, a room nobody is in.
            continue;
        };
        let update = json!({"id": task.id, "parent_id": task.parent_id});
        emit_to_collaboration(s, ctx, collaboration_id, "new_task_update", &update).await;
    }
}

/// `on_dataframe_deleted` (5.x): the node has deleted a dataframe it was
/// told to; its pending-deletion row goes. No emit.
///
/// Deliberate difference: HQ takes this from any socket, even an
/// unidentified one, for any node; here only from a node (the caller
/// checked it is one and the payload an object), and only for itself. A
/// row that is not there is logged and counted (HQ: `NoResultFound`).
pub(super) async fn on_dataframe_deleted(
    ctx: &TasksContext,
    node: &NodeIdentity,
    data: Map<String, Value>,
) {
    const EVENT: &str = "dataframe_deleted";
    let (Some(df_name), Some(session_id), Some(node_id)) = (
        data.get("df_name").and_then(Value::as_str),
        data.get("session_id").and_then(Value::as_i64),
        data.get("node_id").and_then(Value::as_i64),
    ) else {
        if let Some(n) = refuse(ctx, EVENT, "malformed_payload") {
            warn!(node = %node.name, refused = n,
                "{EVENT} needs df_name (string), session_id and node_id (integers)");
        }
        return;
    };
    if node_id != node.id {
        if let Some(n) = refuse(ctx, EVENT, "foreign_node") {
            warn!(node = %node.name, claimed = node_id, own = node.id, refused = n,
                "{EVENT} names a node that is not the sender");
        }
        return;
    }
    match ctx
        .store()
        .delete_dataframe_deletion(df_name, session_id, node.id)
        .await
    {
        Ok(0) => {
            ctx.metrics().ignored_event("unknown_dataframe");
            if let Some(n) = ctx.log_due("unknown_dataframe", 1) {
                warn!(node = %node.name, df_name, session_id, events = n,
                    "{EVENT} for a dataframe the node was not told to delete");
            }
        }
        Ok(_) => info!(node = %node.name, df_name, session_id,
            "instruction to delete dataframe was executed by node"),
        Err(e) => ctx.db_failed("delete pending dataframe deletion", &e),
    }
}
