"""5.x node events and their database writes (docs/vantage6-5x-socket.md §3.6-§3.9):
`node_info_update` rows, `algorithm_log` appends and its relay, `algorithm_status_change` relay
with `job_id`, the dependent-task `new_task_update` of a completed run, and the refusals of ours
(a foreign collaboration or run; a user or an unidentified socket)."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from sio_testkit import SETTLE, expect_exact, expect_silence, pretty, quiesce
from support_v5 import CountsRefusals, wait_db


@pytest.fixture()
def c1_members(connect_quiet):
    """node_a1 (the sender), node_b1, a global user (collaboration_<c1>), node_c2 of the other
    collaboration and an organisation-scope user of org_b: connected and quiet."""
    return connect_quiet(("a1", "b1", "c2"), ("glob", "orgb"))


def status_payload(world, run, status, **over):
    body = {"run_id": run.id, "task_id": run.extra["task_id"], "collaboration_id": run.collab_id,
            "status": status, "node_id": world.node_a1.id, "organization_id": run.org_id,
            "parent_id": None}
    body.update(over)
    return body


def relayed(world, run, status, job_id, **over):
    body = status_payload(world, run, status, **over)
    body["job_id"] = job_id
    return ("algorithm_status_change", body)


# -- node_info_update -----------------------------------------------------------------------
def test_node_info_update_rows(world, db, connect_node):
    """The rows HQ 5.0.3's on_node_info_update writes for what vantage6-node 5.0.3's
    share_node_details sends; a second update replaces them."""
    a1 = world.node_a1
    rec = connect_node(a1)
    rec.emit("node_info_update", {
        "encryption": "False",
        "allowed_algorithms": ["harbor2.vantage6.ai/demo/*", "^harbor2.vantage6.ai/x$"],
        "allowed_orgs": [world.org_b.id],
        "database_labels": ["default", "extra"],
        "database_types": {"db_type_default": "csv", "db_type_extra": "parquet"},
    })
    expected = Counter({
        ("encryption", "False"): 1,
        ("allowed_algorithms", "harbor2.vantage6.ai/demo/*"): 1,
        ("allowed_algorithms", "^harbor2.vantage6.ai/x$"): 1,
        ("allowed_orgs", str(world.org_b.id)): 1,
        ("database_labels", "default"): 1,
        ("database_labels", "extra"): 1,
        ("db_type_default", "csv"): 1,
        ("db_type_extra", "parquet"): 1,
    })
    wait_db(lambda: db.node_config(a1.id) == expected, "the node_config rows",
            show=lambda: f"got {dict(db.node_config(a1.id))}")
    rec.emit("node_info_update", {"encryption": "True", "allowed_algorithms": "all"})
    expected = Counter({("encryption", "True"): 1, ("allowed_algorithms", "all"): 1})
    wait_db(lambda: db.node_config(a1.id) == expected, "the replaced node_config rows",
            show=lambda: f"got {dict(db.node_config(a1.id))}")
    expect_silence(rec)


def test_node_info_update_from_a_user_is_ignored(world, db, connect_user, connect_node):
    glob = connect_user(world.u_glob)
    a1 = connect_node(world.node_a1)
    quiesce(glob, a1)
    glob.emit("node_info_update", {"encryption": "False"})
    a1.emit("node_info_update", {"allowed_algorithms": "all"})  # processed after the user's
    wait_db(lambda: db.node_config(world.node_a1.id) == Counter({("allowed_algorithms", "all"): 1}),
            "a1's own row", show=lambda: dict(db.node_config(world.node_a1.id)))
    expect_silence(glob, a1)


# -- algorithm_log --------------------------------------------------------------------------
@pytest.mark.parametrize("sender,run_name,expected_log", [
    ("a1", "r_a", "first"),                       # NULL log: the line itself
    ("b1", "r_b", "line one\nfirst"),             # no trailing newline: one is added
    ("a1", "r_c", "ends with newline\nfirst"),    # trailing newline: not doubled
])
def test_algorithm_log_appends_and_relays(world, db, c1_members, sender, run_name, expected_log):
    run = getattr(world, run_name)
    node = c1_members[sender]
    node.emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": run.id,
                                "task_id": run.extra["task_id"], "log": "first"})
    ev = ("algorithm_log", {"run_id": run.id, "task_id": run.extra["task_id"], "log": "first"})
    expect_exact({c1_members["a1"]: [ev], c1_members["b1"]: [ev], c1_members["glob"]: [ev],
                  c1_members["c2"]: [], c1_members["orgb"]: []})
    wait_db(lambda: db.run_log(run.id) == expected_log, f"run {run.id}'s log",
            show=lambda: repr(db.run_log(run.id)))
    node.emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": run.id,
                                "task_id": run.extra["task_id"], "log": "second\n"})
    wait_db(lambda: db.run_log(run.id) == expected_log + "\nsecond\n", f"run {run.id}'s log",
            show=lambda: repr(db.run_log(run.id)))


@pytest.mark.parametrize("case", ["foreign_run", "other_organisation", "foreign_collaboration"])
def test_algorithm_log_refused_for_foreign_run_or_collaboration(world, db, srv, c1_members, case):
    """Ours: a node appends only to a run of its own (its organisation's, in its collaboration)
    and relays only to its collaboration (HQ appends to any run and relays to whatever
    collaboration the payload names)."""
    a1 = c1_members["a1"]
    if case == "foreign_run":  # run of collaboration 2, claimed for collaboration 1
        payload = {"collaboration_id": world.c1.id, "run_id": world.r_c2.id,
                   "task_id": world.task2.id, "log": "intruder"}
    elif case == "other_organisation":  # org_b's run in the same collaboration
        payload = {"collaboration_id": world.c1.id, "run_id": world.r_b.id,
                   "task_id": world.task1.id, "log": "intruder"}
    else:  # own run, relayed to collaboration 2
        payload = {"collaboration_id": world.c2.id, "run_id": world.r_a.id,
                   "task_id": world.task1.id, "log": "intruder"}
    with CountsRefusals(srv, "foreign_collaboration" if case == "foreign_collaboration"
                        else "foreign_run"):
        a1.emit("algorithm_log", payload)
    # a legitimate line after it: once that is stored the refused one was handled
    a1.emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": world.r_c.id,
                              "task_id": world.task1.id, "log": "mine"})
    ok = ("algorithm_log", {"run_id": world.r_c.id, "task_id": world.task1.id, "log": "mine"})
    expect_exact({a1: [ok], c1_members["b1"]: [ok], c1_members["glob"]: [ok],
                  c1_members["c2"]: [], c1_members["orgb"]: []})
    wait_db(lambda: db.run_log(world.r_c.id) == "ends with newline\nmine", "r_c's log",
            show=lambda: repr(db.run_log(world.r_c.id)))
    assert db.run_log(world.r_c2.id) is None
    assert db.run_log(world.r_a.id) is None
    assert db.run_log(world.r_b.id) == "line one"


# -- algorithm_status_change ----------------------------------------------------------------
@pytest.mark.parametrize("status", ["active", "killed by user"])
def test_algorithm_status_change_relay_with_job_id(world, db, c1_members, status):
    a1 = c1_members["a1"]
    a1.emit("algorithm_status_change", status_payload(world, world.r_a, status))
    ev = relayed(world, world.r_a, status, world.task1.extra["job_id"])
    expect_exact({a1: [ev], c1_members["b1"]: [ev], c1_members["glob"]: [ev],
                  c1_members["c2"]: [], c1_members["orgb"]: []})


def test_algorithm_status_change_missing_keys_are_null(world, db, c1_members):
    a1 = c1_members["a1"]
    a1.emit("algorithm_status_change", {"run_id": world.r_c.id, "collaboration_id": world.c1.id,
                                        "status": "active"})
    ev = ("algorithm_status_change", {
        "status": "active", "run_id": world.r_c.id, "task_id": None,
        "job_id": world.task1.extra["job_id"], "collaboration_id": world.c1.id, "node_id": None,
        "organization_id": None, "parent_id": None})
    expect_exact({a1: [ev], c1_members["b1"]: [ev], c1_members["glob"]: [ev], c1_members["c2"]: []})


@pytest.mark.parametrize("case", ["foreign_collaboration", "foreign_run", "other_organisation",
                                  "unknown_run"])
def test_algorithm_status_change_refused(world, db, srv, c1_members, case):
    a1 = c1_members["a1"]
    if case == "foreign_collaboration":
        payload = status_payload(world, world.r_a, "crashed", collaboration_id=world.c2.id)
    elif case == "foreign_run":
        payload = status_payload(world, world.r_c2, "completed", collaboration_id=world.c1.id)
    elif case == "other_organisation":  # org_b's run of task1, which others depend on
        payload = status_payload(world, world.r_b, "completed")
    else:
        payload = status_payload(world, world.r_a, "completed", run_id=2_000_000_000)
    reason = {"other_organisation": "foreign_run"}.get(case, case)
    with CountsRefusals(srv, reason):
        a1.emit("algorithm_status_change", payload)
    expect_silence(*c1_members.values())


def test_completed_run_with_dependents_announces_them_first(world, db, c1_members):
    """HQ 5.0.3: a run reporting `completed` whose task others depend on (task_depends_on) makes
    `new_task_update {"id", "parent_id"}` go to each dependent's collaboration, before the
    status change itself is relayed; the DB run status is not touched."""
    a1 = c1_members["a1"]
    a1.emit("algorithm_status_change", status_payload(world, world.r_a, "completed"))
    updates = sorted([("new_task_update", {"id": world.dep.id, "parent_id": world.task1.id}),
                      ("new_task_update", {"id": world.dep2.id, "parent_id": None})], key=repr)
    ev = relayed(world, world.r_a, "completed", world.task1.extra["job_id"])
    for name in ("a1", "b1", "glob"):
        c1_members[name].wait_count(3)
    time.sleep(SETTLE)  # nothing more may follow
    for name in ("a1", "b1", "glob"):
        got = c1_members[name].snapshot()
        # the dependents in any order (HQ iterates an unordered relationship), then the relay
        assert sorted(got[:2], key=repr) == updates and got[2:] == [ev], f"{name}: {pretty(got)}"
    expect_exact({c1_members[n]: [] for n in ("c2", "orgb")})
    quiesce(*c1_members.values())
    with db.session() as s:
        from support_v5 import m

        assert s.get(m.Run, world.r_a.id).status == "active"


@pytest.mark.parametrize("case", ["not_completed", "no_dependents"])
def test_no_new_task_update_otherwise(world, db, connect_node, connect_user, case):
    if case == "not_completed":  # task1 has dependents, but the run failed
        node, run, status, job = world.node_a1, world.r_a, "failed", world.task1.extra["job_id"]
    else:  # nothing depends on task2
        node, run, status, job = world.node_c2, world.r_c2, "completed", world.task2.extra["job_id"]
    sender = connect_node(node)
    other = connect_node(world.node_b1 if node is world.node_a1 else world.node_a1)
    quiesce(sender, other)
    sender.emit("algorithm_status_change", status_payload(world, run, status, node_id=node.id))
    ev = relayed(world, run, status, job, node_id=node.id)
    # node_b1 shares collaboration 1 with node_a1; node_a1 is not in collaboration 2
    expect_exact({sender: [ev], other: [ev] if node is world.node_a1 else []})


def test_events_from_users_and_unidentified_sockets_are_ignored(world, db, srv, c1_members, clients):
    """Only nodes send algorithm updates (HQ: `_is_node`); an unidentified socket's events
    change nothing and do not break the server (HQ raises AttributeError)."""
    glob = c1_members["glob"]
    anon = clients(None, label="anonymous")
    for rec, reason in ((glob, "not_a_node"), (anon, "unidentified")):
        # the four node events are dropped and counted (a user's ping is its own, see test_ping_v5)
        with CountsRefusals(srv, reason, 4):
            rec.emit("algorithm_status_change", status_payload(world, world.r_a, "completed"))
            rec.emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": world.r_a.id,
                                       "task_id": world.task1.id, "log": "not a node"})
            rec.emit("node_info_update", {"encryption": "False"})
            rec.emit("node_metrics_update", {"cpu_percent": 1.0, "os": "linux",
                                             "platform": "x86_64"})
    anon.emit("ping")
    expect_silence(anon, *c1_members.values())
    assert db.run_log(world.r_a.id) is None
    assert not db.node_config(world.node_a1.id)


# -- node_metrics_update, message -----------------------------------------------------------
def test_node_metrics_update_is_exported(world, srv, connect_node):
    """HQ 5.0.3 feeds node_metrics_update into Prometheus gauges labelled node_id, os, platform;
    no DB write, no emit."""
    from sio_testkit import wait_until

    a1 = connect_node(world.node_a1)
    a1.emit("node_metrics_update", {"cpu_percent": 12.5, "memory_percent": 40.25,
                                    "num_algorithm_containers": 2, "os": "linux",
                                    "platform": "x86_64", "gpu_load": [0.5, 75.0]})
    nid = str(world.node_a1.id)

    def samples(name):
        return {tuple(sorted(lab.items())): v for n, lab, v in srv.metrics()
                if n == name and lab.get("node_id") == nid}

    wait_until(lambda: samples("cpu_percent"), what="cpu_percent of node_a1 in /metrics")
    base = {"node_id": nid, "os": "linux", "platform": "x86_64"}
    key = lambda **lab: tuple(sorted(lab.items()))  # noqa: E731
    assert samples("cpu_percent") == {key(**base): 12.5}
    assert samples("memory_percent") == {key(**base): 40.25}
    assert samples("num_algorithm_containers") == {key(**base): 2}
    assert samples("gpu_load") == {key(**base, gpu_id="0"): 0.5, key(**base, gpu_id="1"): 75.0}
    expect_silence(a1)


def test_message_and_unknown_events_are_only_logged(world, db, srv, c1_members):
    a1 = c1_members["a1"]
    a1.emit("message", "hello from a 5.x node")
    a1.emit("message", {"not": "a string"})  # HQ raises TypeError; nothing is sent either way
    a1.emit("error", "something failed")
    a1.emit("no_such_event", {"x": 1})
    expect_silence(*c1_members.values())
    # and the socket is still served
    a1.emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": world.r_a.id,
                              "task_id": world.task1.id, "log": "still here"})
    wait_db(lambda: db.run_log(world.r_a.id) == "still here", "r_a's log",
            show=lambda: repr(db.run_log(world.r_a.id)))
