"""A 5.x fleet in the middle of a migration: HQ 5.0.3's own Flask-SocketIO
keeps one node of collaboration M (h0), v6-socketio instances serve the others
(r0 on instance 0, r1 on instance 1); all on the same RabbitMQ exchange and
database. Collaboration X is the bystander, one node on each side (x0 on HQ,
x1 on instance 1).

HQ keeps its 5.0.3 behaviour here and the assertions say so: it announces
node-online / node-offline to every room of the node, `all_nodes` included, so
every node of the fleet hears about HQ-served nodes (twice when it is also in
the collaboration room); v6-socketio announces to the collaboration room only.
HQ relays an `algorithm_status_change` to whatever collaboration its payload
names; v6-socketio refuses one for a foreign collaboration or run (README,
"Differences"). HQ replays a returning node's pending `delete_dataframe` to the
collaboration before the node has joined, so our nodes get it and the HQ node
does not.
"""
from __future__ import annotations

import os

from fleet import Expect, joined, left, node_status
from harness5 import wait_until
from rest5 import create_dataframe, create_session, create_task


def org_room(collab, org_id: int) -> str:
    return f"collaboration_{collab.id}_organization_{org_id}"


def own_joins(node, collab):
    return [("sync", None), joined(node, collab.room),
            joined(node, org_room(collab, node.account.organization_id))]


def test_mixed_fleet_with_hq_flask_socketio(fleet):
    admin = fleet.admin
    orgs = [admin.organization("org-m") for _ in range(3)]
    m = admin.collaboration(orgs, "collab-m")
    orgs_x = [admin.organization("org-x") for _ in range(2)]
    x = admin.collaboration(orgs_x, "collab-x")
    researcher = admin.researcher(orgs[0])
    session = create_session(researcher, m)

    # the bystanders: x1 on v6-socketio, then x0 on HQ
    x1 = fleet.node(x, orgs_x[1], 1, "x1")
    marks = Expect.mark([x1])
    x0 = fleet.node(x, orgs_x[0], "hq", "x0", start=False)
    marks[x0] = 0
    x0.start()
    online_x0 = ("node-online", node_status(x0))
    Expect.exactly(marks, {x0: own_joins(x0, x),
                           # HQ: all_nodes and collaboration_X
                           x1: [online_x0, online_x0, joined(x0, x.room)]})
    bystanders = [x0, x1]

    # h0 on HQ: every node of the fleet hears of it through all_nodes
    marks = Expect.mark(bystanders)
    h0 = fleet.node(m, orgs[0], "hq", "h0", start=False)
    marks[h0] = 0
    h0.start()
    online_h0 = ("node-online", node_status(h0))
    Expect.exactly(marks, {h0: own_joins(h0, m), x0: [online_h0], x1: [online_h0]})

    # r0 on instance 0: HQ-served h0 hears it through the exchange, once
    marks = Expect.mark([*bystanders, h0])
    r0 = fleet.node(m, orgs[1], 0, "r0", start=False)
    marks[r0] = 0
    r0.start()
    Expect.exactly(marks, {r0: own_joins(r0, m),
                           h0: [("node-online", node_status(r0)), joined(r0, m.room)]})

    # r1 on instance 1
    marks = Expect.mark([*bystanders, h0, r0])
    r1 = fleet.node(m, orgs[2], 1, "r1", start=False)
    marks[r1] = 0
    r1.start()
    Expect.exactly(marks, {r1: own_joins(r1, m),
                           **{n: [("node-online", node_status(r1)), joined(r1, m.room)]
                              for n in (h0, r0)}})
    members = [h0, r0, r1]
    everyone = [*members, *bystanders]
    for n in members:  # node_info_update written by HQ's handler and by ours
        wait_until(lambda n=n: len(fleet.nodeconfig(n.account.id)) == 3,
                   what=f"{n.label}'s nodeconfig rows")

    # HQ's REST event reaches both sides
    marks = Expect.mark(everyone)
    task = create_task(researcher, m, session, orgs)
    Expect.exactly(marks, {n: [("new_task_update", {"id": task["id"], "parent_id": None})]
                           for n in members})
    runs = {n: n.queued_run(task["id"]) for n in members}

    def relayed(sender, run, status, **over):
        body = {"status": status, "run_id": run["id"], "task_id": task["id"],
                "job_id": task["job_id"], "collaboration_id": m.id,
                "node_id": sender.account.id, "organization_id": sender.account.organization_id,
                "parent_id": None}
        return ("algorithm_status_change", {**body, **over})

    # algorithm_status_change: HQ's handler relays to ours, ours to HQ's
    for sender in (h0, r0):
        marks = Expect.mark(everyone)
        sender.status_change(runs[sender], "active")
        Expect.exactly(marks, {n: [relayed(sender, runs[sender], "active")] for n in members})

    # a completed run announces the dependent task: HQ's handler and ours
    t2 = create_task(researcher, m, session, orgs, depends_on_ids=[task["id"]])
    announce_t2 = ("new_task_update", {"id": t2["id"], "parent_id": None})
    wait_until(lambda: all(f"get_task_and_add_to_queue({t2['id']})" in n.calls for n in members),
               what="dependent task fetched")
    for sender in (h0, r0):
        marks = Expect.mark(everyone)
        sender.status_change(runs[sender], "completed")
        Expect.exactly(marks, {n: [announce_t2, relayed(sender, runs[sender], "completed")]
                               for n in members})

    # a dataframe deleted through HQ's REST: every node deletes its file and
    # answers dataframe_deleted to its own server, which removes its row
    df = create_dataframe(researcher, session, orgs)
    wait_until(lambda: all(f"get_task_and_add_to_queue({df['last_session_task']['id']})"
                           in n.calls for n in members), what="extraction task fetched")
    files = [n.write_dataframe(session, df["name"]) for n in members]
    marks = Expect.mark(everyone)
    researcher.call("DELETE", f"session/dataframe/{df['id']}")
    Expect.exactly(marks, {n: [("delete_dataframe", {"df_name": df["name"], "session_id": session})]
                           for n in members})
    wait_until(lambda: not any(os.path.exists(f) for f in files), what="files deleted")
    wait_until(lambda: fleet.db.query(
        "SELECT node_id FROM dataframetobedeletedatnode WHERE dataframe_name = ?",
        (df["name"],)) == [], what="pending deletions removed on both sides")

    # HQ 5.0.3's replay of a pending deletion (docs §3.12): h0 is away during
    # the DELETE; when it comes back to HQ, HQ emits its instruction to the
    # collaboration before h0 has joined: the v6-socketio-served nodes get
    # it, h0 does not, and its row stays
    df2 = create_dataframe(researcher, session, orgs)
    wait_until(lambda: all(f"get_task_and_add_to_queue({df2['last_session_task']['id']})"
                           in n.calls for n in members), what="extraction task fetched")
    files = {n: n.write_dataframe(session, df2["name"]) for n in members}
    marks = Expect.mark(everyone)
    h0.close()
    offline_h0 = ("node-offline", node_status(h0))
    Expect.exactly(marks, {r0: [offline_h0, offline_h0, left(h0, m.room)],
                           r1: [offline_h0, offline_h0, left(h0, m.room)],
                           x0: [offline_h0], x1: [offline_h0]})
    marks = Expect.mark(everyone)
    researcher.call("DELETE", f"session/dataframe/{df2['id']}")
    instruction = ("delete_dataframe", {"df_name": df2["name"], "session_id": session})
    Expect.exactly(marks, {r0: [instruction], r1: [instruction]})
    pending = "SELECT node_id FROM dataframetobedeletedatnode WHERE dataframe_name = ?"
    wait_until(lambda: fleet.db.query(pending, (df2["name"],)) == [(h0.account.id,)],
               what="only h0's deletion pending")
    h0.client.obtain_new_token()
    marks = Expect.mark(everyone)
    h0.connect_to_socket()
    Expect.exactly(marks, {
        h0: own_joins(h0, m),
        **{n: [online_h0, online_h0, instruction, joined(h0, m.room)] for n in (r0, r1)},
        x0: [online_h0], x1: [online_h0],
    })
    assert os.path.exists(files[h0])
    assert fleet.db.query(pending, (df2["name"],)) == [(h0.account.id,)]

    # a foreign collaboration's node naming M: HQ relays it, v6-socketio refuses
    refused = ("v6_socketio_ignored_events_total", {"reason": "foreign_collaboration"})
    refused_before = fleet.instances[1].metric(*refused)
    for sender, reaches in ((x0, True), (x1, False)):
        marks = Expect.mark(everyone)
        sender.socketIO.emit("algorithm_status_change", data={
            "node_id": sender.account.id, "status": "failed", "run_id": runs[r1]["id"],
            "task_id": task["id"], "collaboration_id": m.id,
            "organization_id": sender.account.organization_id, "parent_id": None,
        }, namespace="/tasks")
        foreign = relayed(sender, runs[r1], "failed")
        Expect.exactly(marks, {n: [foreign] for n in members} if reaches else {})
    # x1's instance refused it (counted), not lost it
    assert fleet.instances[1].metric(*refused) == refused_before + 1

    # algorithm_log from each side reaches both, appended once to the run
    for sender in (h0, r1):
        run = runs[sender]
        marks = Expect.mark(everyone)
        sender.log_line(run, f"hello from {sender.label}")
        Expect.exactly(marks, {n: [("algorithm_log", {"run_id": run["id"], "task_id": task["id"],
                                                      "log": f"hello from {sender.label}"})]
                               for n in members})
        assert fleet.db.query("SELECT log FROM run WHERE id = ?", (run["id"],)) == [
            (f"hello from {sender.label}",)]

    # r1 leaves v6-socketio: HQ-served h0 is told once, like r0
    marks = Expect.mark([h0, r0, *bystanders])
    r1.close()
    Expect.exactly(marks, {n: [("node-offline", node_status(r1)), left(r1, m.room)]
                           for n in (h0, r0)})
    wait_until(lambda: fleet.node_db_status(r1.account.id) == "offline", what="r1 offline")
    wait_until(lambda: fleet.nodeconfig(r1.account.id) == [], what="r1's nodeconfig removed")

    # h0 leaves HQ: HQ tells every room of the node, all_nodes included
    marks = Expect.mark([r0, *bystanders])
    h0.close()
    offline_h0 = ("node-offline", node_status(h0))
    Expect.exactly(marks, {r0: [offline_h0, offline_h0, left(h0, m.room)],
                           x0: [offline_h0], x1: [offline_h0]})
    wait_until(lambda: fleet.node_db_status(h0.account.id) == "offline", what="h0 offline")
    wait_until(lambda: fleet.nodeconfig(h0.account.id) == [], what="h0's nodeconfig removed")
    for n in (r0, x0, x1):
        n.close()
