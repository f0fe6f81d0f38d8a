"""Client->server events: ping, algorithm_status_change, algorithm_log,
node_info_update, node_metrics_update, message, error (design doc §4a)."""
from __future__ import annotations

import datetime as dt

import pytest

from compat_support import a1_status_payload as status_payload, log_payload
from node_simulator_payloads import TYPICAL_4X, MIXED, WITH_NULLS
from support import expect_exact, expect_silence, quiesce, utcnow_naive, v6db, wait_until


@pytest.fixture()
def room(connect_quiet):
    """Clients in place: a1, b1 (collab 1), c2 (collab 2), users glob/col (collab rooms),
    org (org_a subrooms), orgb, none."""
    return connect_quiet(("a1", "b1", "c2"), ("glob", "col", "org", "orgb", "none"))


# ---------------------------------------------------------------------------
# ping
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["node", "user"])
def test_ping_sets_online_and_last_seen(who, world, db, connect_node, connect_user):
    ent = world.node_a1 if who == "node" else world.u_glob
    rec = connect_node(ent) if who == "node" else connect_user(ent)
    assert db.auth_row(ent.id) == ("online", None), "connect must set status online, not last_seen"
    db.set_auth(ent.id, status="offline")  # e.g. flipped by the sweeper
    before = utcnow_naive()
    rec.emit("ping")
    status, last_seen = wait_until(
        lambda: (lambda r: r if r[0] == "online" and r[1] is not None else None)(db.auth_row(ent.id)),
        what="ping to set status online and last_seen",
    )
    after = utcnow_naive()
    assert last_seen.tzinfo is None, "last_seen must be stored naive (UTC), like vantage6"
    slack = dt.timedelta(seconds=2)
    assert before - slack <= last_seen <= after + slack, (
        f"last_seen {last_seen} is not the current UTC time ({before} .. {after})"
    )
    expect_silence(rec)  # ping has no reply

    # a second ping moves last_seen forward
    db.set_auth(ent.id, last_seen=dt.datetime(2020, 1, 1))
    rec.emit("ping")
    wait_until(lambda: db.auth_row(ent.id)[1] > dt.datetime(2021, 1, 1), what="second ping to update last_seen")


# ---------------------------------------------------------------------------
# algorithm_status_change
# ---------------------------------------------------------------------------
def test_algorithm_status_change_is_relayed_to_the_collaboration(world, room):
    sent = status_payload(world, status="completed", parent_id=None)
    room["a1"].emit("algorithm_status_change", sent)
    relayed = ("algorithm_status_change", {
        "status": "completed", "run_id": world.r_a.id, "task_id": world.task1.id,
        "job_id": world.task1.extra["job_id"], "collaboration_id": world.c1.id,
        "node_id": world.node_a1.id, "organization_id": world.org_a.id, "parent_id": None,
    })
    expect_exact({
        room["a1"]: [relayed],  # the sender gets its own echo
        room["b1"]: [relayed],
        room["glob"]: [relayed],
        room["col"]: [relayed],
        room["org"]: [],  # organisation subrooms never get task events
        room["orgb"]: [],
        room["none"]: [],
        room["c2"]: [],
    })


def test_algorithm_status_change_missing_fields_are_null(world, room):
    # job_id comes from the run's task; fields missing in the payload are re-emitted as null
    room["b1"].emit("algorithm_status_change", {
        "run_id": world.r_b.id, "collaboration_id": world.c1.id, "status": "failed",
    })
    relayed = ("algorithm_status_change", {
        "status": "failed", "run_id": world.r_b.id, "task_id": None,
        "job_id": world.task1.extra["job_id"], "collaboration_id": world.c1.id,
        "node_id": None, "organization_id": None, "parent_id": None,
    })
    expect_exact({room[k]: [relayed] for k in ("a1", "b1", "glob", "col")}
                 | {room[k]: [] for k in ("org", "orgb", "none", "c2")})


def test_algorithm_status_change_goes_to_the_named_collaboration(world, room):
    # node_c2 reports a run of collaboration 2
    room["c2"].emit("algorithm_status_change", {
        "run_id": world.r_c2.id, "task_id": world.task2.id, "collaboration_id": world.c2.id,
        "status": "active", "node_id": world.node_c2.id, "organization_id": world.org_c.id,
        "parent_id": world.task1.id,
    })
    relayed = ("algorithm_status_change", {
        "status": "active", "run_id": world.r_c2.id, "task_id": world.task2.id,
        "job_id": world.task2.extra["job_id"], "collaboration_id": world.c2.id,
        "node_id": world.node_c2.id, "organization_id": world.org_c.id, "parent_id": world.task1.id,
    })
    expect_exact({room["c2"]: [relayed], room["glob"]: [relayed], room["col"]: [relayed]}
                 | {room[k]: [] for k in ("a1", "b1", "org", "orgb", "none")})


def test_algorithm_status_change_from_user_is_ignored(world, room, srv):
    room["glob"].emit("algorithm_status_change", status_payload(world))
    expect_silence(*room.values())


def test_algorithm_status_change_for_unknown_run_emits_nothing(world, room, srv):
    """Reference: Run.get(run_id) is None -> the handler raises, nothing is emitted."""
    room["a1"].emit("algorithm_status_change", status_payload(world, run_id=987654321))
    expect_silence(*room.values())
    # and the server keeps working
    room["a1"].emit("algorithm_status_change", status_payload(world))
    room["b1"].wait_event("algorithm_status_change")


# ---------------------------------------------------------------------------
# algorithm_log
# ---------------------------------------------------------------------------
def test_algorithm_log_appends_and_is_relayed(world, db, room):
    cases = [
        # (sender: a node of the run's organisation, run, initial log, message, expected log)
        ("a1", world.r_a, None, "first line", "first line"),
        ("b1", world.r_b, "line one", "line two", "line one\nline two"),
        ("a1", world.r_c, "ends with newline\n", "next", "ends with newline\nnext"),
    ]
    for sender, run, initial, message, expected in cases:
        assert db.run_log(run.id) == initial
        room[sender].emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": run.id,
                                            "task_id": world.task1.id, "log": message})
        relayed = ("algorithm_log", {"run_id": run.id, "task_id": world.task1.id, "log": message})
        expect_exact({room[k]: [relayed] for k in ("a1", "b1", "glob", "col")}
                     | {room[k]: [] for k in ("org", "orgb", "none", "c2")})
        wait_until(lambda: db.run_log(run.id) == expected,
                   what=f"run {run.id} log == {expected!r} (is {db.run_log(run.id)!r})")

    # a second line on the run that started empty gets a separating newline
    room["a1"].emit("algorithm_log", log_payload(world, "second line"))
    room["glob"].wait_event("algorithm_log")
    wait_until(lambda: db.run_log(world.r_a.id) == "first line\nsecond line",
               what=f"log append (is {db.run_log(world.r_a.id)!r})")


def test_algorithm_log_on_empty_string_log(world, db, room):
    db.set_run_log(world.r_a.id, "")
    room["a1"].emit("algorithm_log", log_payload(world, "only line"))
    room["a1"].wait_event("algorithm_log")
    wait_until(lambda: db.run_log(world.r_a.id) == "only line",
               what=f"empty log replaced (is {db.run_log(world.r_a.id)!r})")


def test_algorithm_log_from_user_is_ignored(world, db, room):
    room["glob"].emit("algorithm_log", log_payload(world, "from a user", run=world.r_b))
    expect_silence(*room.values())
    assert db.run_log(world.r_b.id) == "line one"


# ---------------------------------------------------------------------------
# runs belong to nodes (README "Differences" 4): a node reports on, and logs
# to, only runs of its own organisation in its own collaboration
# ---------------------------------------------------------------------------
def ignored_count(srv, reason: str) -> float:
    return sum(v for name, labels, v in srv.metrics()
               if name == "v6_socketio_ignored_events_total" and labels.get("reason") == reason)


@pytest.fixture()
def r_a_in_c2(world, db):
    """A run of org_a (node_a1's organisation) in collaboration 2, where node_a1 is not."""
    with db.session() as s:
        run = v6db.Run(task_id=world.task2.id, organization_id=world.org_a.id, status="active",
                       log="org a in collab 2")
        s.add(run)
        s.flush()
        return run.id


def _refused_case(world, case, r_a_in_c2):
    """(run id, payload collaboration id, expected reason) that node a1 must not touch."""
    return {
        # a run of another collaboration (and organisation), the payload naming a1's own
        "other_collaboration_run": (world.r_c2.id, world.c1.id, "foreign_run"),
        # a run of a1's own organisation, but of a collaboration a1 is not in
        "own_organisation_other_collaboration_run": (r_a_in_c2, world.c1.id, "foreign_run"),
        # a run of a1's collaboration, but of another organisation (org_b's)
        "other_organisation_run": (world.r_b.id, world.c1.id, "foreign_run"),
        "no_such_run": (987654321, world.c1.id, "unknown_run"),
        # a1's own run, the payload naming another collaboration: refused, not rerouted
        "own_run_other_collaboration_named": (world.r_a.id, world.c2.id, "foreign_collaboration"),
    }[case]


REFUSED = ["other_collaboration_run", "own_organisation_other_collaboration_run",
           "other_organisation_run", "no_such_run", "own_run_other_collaboration_named"]


@pytest.mark.parametrize("case", REFUSED)
def test_algorithm_status_change_for_a_run_not_of_the_node_is_refused(case, world, db, room, srv,
                                                                      r_a_in_c2):
    run_id, collaboration_id, reason = _refused_case(world, case, r_a_in_c2)
    before = ignored_count(srv, reason)
    room["a1"].emit("algorithm_status_change", status_payload(
        world, run_id=run_id, collaboration_id=collaboration_id))
    expect_silence(*room.values())
    wait_until(lambda: ignored_count(srv, reason) == before + 1,
               what=f"ignored_events_total{{reason={reason!r}}} to count the refusal")
    # the node's own run in its own collaboration is still relayed, with the job id of the database
    room["a1"].emit("algorithm_status_change", status_payload(world, job_id=1, collaboration_id=world.c1.id))
    relayed = ("algorithm_status_change", {
        "status": "active", "run_id": world.r_a.id, "task_id": world.task1.id,
        "job_id": world.task1.extra["job_id"], "collaboration_id": world.c1.id,
        "node_id": world.node_a1.id, "organization_id": world.org_a.id, "parent_id": None,
    })
    expect_exact({room[k]: [relayed] for k in ("a1", "b1", "glob", "col")}
                 | {room[k]: [] for k in ("org", "orgb", "none", "c2")})


@pytest.mark.parametrize("case", REFUSED)
def test_algorithm_log_for_a_run_not_of_the_node_is_refused(case, world, db, room, srv, r_a_in_c2):
    run_id, collaboration_id, reason = _refused_case(world, case, r_a_in_c2)
    runs = [world.r_a.id, world.r_b.id, world.r_c.id, world.r_c2.id, r_a_in_c2]
    logs = {r: db.run_log(r) for r in runs}
    before = ignored_count(srv, reason)
    room["a1"].emit("algorithm_log", {"collaboration_id": collaboration_id, "run_id": run_id,
                                      "task_id": world.task1.id, "log": "must not be stored"})
    expect_silence(*room.values())
    wait_until(lambda: ignored_count(srv, reason) == before + 1,
               what=f"ignored_events_total{{reason={reason!r}}} to count the refusal")
    assert {r: db.run_log(r) for r in runs} == logs, "a refused algorithm_log changed a run's log"
    # the node's own run: appended and relayed
    room["a1"].emit("algorithm_log", {"collaboration_id": world.c1.id, "run_id": world.r_a.id,
                                      "task_id": world.task1.id, "log": "own run"})
    relayed = ("algorithm_log", {"run_id": world.r_a.id, "task_id": world.task1.id, "log": "own run"})
    expect_exact({room[k]: [relayed] for k in ("a1", "b1", "glob", "col")}
                 | {room[k]: [] for k in ("org", "orgb", "none", "c2")})
    wait_until(lambda: db.run_log(world.r_a.id) == "own run", what="the own run's log appended")
    assert {r: db.run_log(r) for r in runs if r != world.r_a.id} == {
        r: v for r, v in logs.items() if r != world.r_a.id}


# ---------------------------------------------------------------------------
# node_info_update
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [TYPICAL_4X, MIXED, WITH_NULLS], ids=["typical-4x", "mixed", "with-nulls"])
def test_node_info_update_stores_what_the_reference_stores(payload, world, db, connect_node):
    expected = db.reference_node_info_update(world.twin.id, payload)
    assert expected, "reference wrote no rows?"
    rec = connect_node(world.node_a1)
    rec.emit("node_info_update", payload)
    db.wait_node_config(world.node_a1.id, expected, what="after node_info_update")
    expect_silence(rec)
    assert db.node_config(world.node_a1.id) == expected


def test_node_info_update_replaces_rows_and_disconnect_deletes_them(world, db, connect_node):
    exp1 = db.reference_node_info_update(world.twin.id, MIXED)
    exp2 = db.reference_node_info_update(world.twin.id, TYPICAL_4X)
    rec = connect_node(world.node_a1)
    rec.emit("node_info_update", MIXED)
    db.wait_node_config(world.node_a1.id, exp1, what="after the first node_info_update")
    rec.emit("node_info_update", TYPICAL_4X)
    db.wait_node_config(world.node_a1.id, exp2, what="after the second node_info_update (must replace)")
    # other nodes' rows are untouched
    assert db.node_config(world.twin.id) == exp2
    rec.disconnect()
    wait_until(lambda: db.node_config_count(world.node_a1.id) == 0, what="rows deleted on disconnect")
    assert db.node_config(world.twin.id) == exp2


def test_node_info_update_from_user_is_ignored(world, db, connect_user):
    rec = connect_user(world.u_glob)
    rec.emit("node_info_update", TYPICAL_4X)
    expect_silence(rec)
    assert db.node_config_count(world.u_glob.id) == 0


# ---------------------------------------------------------------------------
# node_metrics_update
# ---------------------------------------------------------------------------
def _samples(srv, name, node_id):
    return {
        tuple(sorted(lab.items())): value
        for n, lab, value in srv.metrics()
        if n == name and lab.get("node_id") == str(node_id)
    }


def test_node_metrics_update_is_exported(world, srv, connect_node):
    a1 = connect_node(world.node_a1)
    b1 = connect_node(world.node_b1)
    quiesce(a1, b1)
    a1.emit("node_metrics_update", {
        "cpu_percent": 12.5, "memory_percent": 40.25, "num_algorithm_containers": 2,
        "os": "linux", "platform": "x86_64", "cpu_count": 8,
        "memory_total": 16777216000, "memory_available": 8388608000,
        "gpu_count": 2, "gpu_load": [0.5, 75.0], "gpu_memory_used": [1024, 2048],
        "gpu_memory_free": [4096, 3072], "gpu_temperature": [41.0, 63.5],
    })
    # without os/platform the labels are "unknown"; an unknown metric name is ignored
    b1.emit("node_metrics_update", {"cpu_percent": 3.0, "bogus_metric": 1, "num_algorithm_containers": 0})

    nid, bid = str(world.node_a1.id), str(world.node_b1.id)
    base = {"node_id": nid, "os": "linux", "platform": "x86_64"}
    wait_until(lambda: _samples(srv, "cpu_percent", world.node_a1.id)
               and _samples(srv, "cpu_percent", world.node_b1.id), what="cpu_percent of both nodes in /metrics")

    def key(**lab):
        return tuple(sorted(lab.items()))

    for name, value in [("cpu_percent", 12.5), ("memory_percent", 40.25),
                        ("num_algorithm_containers", 2), ("cpu_count", 8),
                        ("memory_total", 16777216000), ("memory_available", 8388608000)]:
        got = _samples(srv, name, nid)
        assert got == {key(**base): value}, f"{name}: {got}"
    for name, values in [("gpu_load", [0.5, 75.0]), ("gpu_memory_used", [1024, 2048]),
                         ("gpu_memory_free", [4096, 3072]), ("gpu_temperature", [41.0, 63.5])]:
        got = _samples(srv, name, nid)
        assert got == {key(**base, gpu_id=str(i)): v for i, v in enumerate(values)}, f"{name}: {got}"

    unknown = {"node_id": bid, "os": "unknown", "platform": "unknown"}
    assert _samples(srv, "cpu_percent", bid) == {key(**unknown): 3.0}
    assert _samples(srv, "num_algorithm_containers", bid) == {key(**unknown): 0}
    assert not [s for s in srv.metrics() if s[0] == "bogus_metric"]

    # a later report overwrites the gauge
    a1.emit("node_metrics_update", {"cpu_percent": 99.5, "os": "linux", "platform": "x86_64"})
    wait_until(lambda: _samples(srv, "cpu_percent", nid) == {key(**base): 99.5}, what="cpu_percent updated")
    expect_silence(a1, b1)


def test_node_metrics_gpu_count_is_a_plain_gauge(world, srv, connect_node):
    """Contract: gpu_count is exported like cpu_count (labels node_id/os/platform,
    no gpu_id).  NOTE: vantage6 4.15.2's Metrics treats every name containing
    "gpu" as a per-GPU list, so the reference rejects the int the real node
    sends (warning "Invalid metric data") and never exports gpu_count."""
    a1 = connect_node(world.node_a1)
    a1.emit("node_metrics_update", {"gpu_count": 2, "cpu_percent": 1.0, "os": "linux", "platform": "x86_64"})
    nid = str(world.node_a1.id)
    wait_until(lambda: _samples(srv, "cpu_percent", nid), what="cpu_percent in /metrics")
    got = _samples(srv, "gpu_count", nid)
    assert got == {(("node_id", nid), ("os", "linux"), ("platform", "x86_64")): 2}, f"gpu_count: {got}"


def test_node_metrics_update_from_user_is_ignored(world, srv, connect_user):
    rec = connect_user(world.u_glob)
    rec.emit("node_metrics_update", {"cpu_percent": 77.0, "os": "linux", "platform": "x86_64"})
    expect_silence(rec)
    assert not [s for s in srv.metrics() if s[1].get("node_id") == str(world.u_glob.id)]


# ---------------------------------------------------------------------------
# message / error
# ---------------------------------------------------------------------------
def test_message_and_error_are_only_logged(world, room, srv):
    for who in ("a1", "glob"):
        room[who].emit("message", f"hello from {who}")
        room[who].emit("error", f"something broke at {who}")
    expect_silence(*room.values())
    # still serving
    room["a1"].emit("algorithm_status_change", status_payload(world))
    room["col"].wait_event("algorithm_status_change")
