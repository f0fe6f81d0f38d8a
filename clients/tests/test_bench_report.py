"""clients/bench/report.py: the comparison's Markdown table and SVG chart, rendered from a small
literal results file (no servers, no load generator)."""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import report  # noqa: E402

LAT = {"p50": 2.0, "p90": 4.0, "p99": 8.0, "p999": 12.0, "max": 20.0}
RESULTS = [
    {"scenario": "meta", "date": "2026-12-02", "commit": "abc1234", "quick": True,
     "machine": {"cpu": "Test CPU", "cores": 2, "memory": "24 GiB", "kernel": "6.1"},
     "command": "./scripts/bench.sh --quick"},
    {"scenario": "fanout", "label": "a", "topology": "one", "nodes": 1000, "offered_per_s": 10000,
     "expected": 100000, "delivered": 100000, "lost": 0, "duplicated": 0, "deliveries_per_s": 9990.0,
     "latency_ms": LAT, "server_cpu_pct": 20.5, "server_cpu_us_per_delivery": 1.25,
     "loadgen_cpu_pct": 30.0, "loadgen_saturated": False},
    {"scenario": "fanout", "label": "a", "topology": "one", "nodes": 1000, "offered_per_s": 100000,
     "expected": 1000000, "delivered": 1000000, "lost": 0, "deliveries_per_s": 99000.0,
     "latency_ms": dict(LAT, p99=25.0), "server_cpu_pct": 80.0, "loadgen_cpu_pct": 95.0,
     "loadgen_saturated": True},
    {"scenario": "fanout", "label": "b", "topology": "one", "skipped": "no broker to publish on",
     "source": "compare"},
    {"scenario": "fanout", "label": "c", "topology": "one", "nodes": 1000, "offered_per_s": 10000,
     "expected": 100000, "delivered": 100000, "lost": 0, "deliveries_per_s": 9980.0,
     "latency_ms": dict(LAT, p99=100.0), "server_cpu_pct": 130.0, "loadgen_cpu_pct": 30.0},
    {"scenario": "fanout", "label": "c", "topology": "one", "nodes": 1000, "offered_per_s": 100000,
     "expected": 1000000, "delivered": 630000, "lost": 370000, "deliveries_per_s": 63000.0,
     "latency_ms": dict(LAT, p99=2400.0), "server_cpu_pct": 199.0, "loadgen_cpu_pct": 40.0},
    {"scenario": "fanout", "label": "c", "topology": "collabs", "nodes": 1000, "offered_per_s": 10000,
     "errors": ["timeout after 300 s"], "source": "compare"},
    {"scenario": "capacity", "label": "a", "phase": "fresh", "connections": 20000, "connected": 20000,
     "synced": 20000, "failed": 0, "connect_per_s": 2500.0, "connect_s": 8.0,
     "rss_before_kib": 10000, "rss_after_kib": 250000, "kib_per_connection": 12.0},
    {"scenario": "capacity", "label": "c", "phase": "fresh", "connections": 20000, "connected": 1990,
     "synced": 1990, "failed": 18010, "connect_per_s": 60.0, "kib_per_connection": 85.0},
    {"scenario": "capacity", "label": "b", "phase": "fresh", "connections": 19800, "connected": 19800,
     "synced": 19800, "failed": 0, "connect_per_s": 2000.0, "processes": 3, "kib_per_connection": 11.0,
     "note": "capped at 19,800 connections (of 20,000) by the servers' open-files limit 20,000 "
             "(− 200 per server process)"},
    {"scenario": "capacity", "label": "b", "phase": "after_storm", "connections": 19800, "connected": 19800,
     "synced": 19800, "failed": 0, "processes": 3, "kib_per_connection": 11.5,
     "note": "capped at 19,800 connections (of 20,000) by the servers' open-files limit 20,000 "
             "(− 200 per server process)"},
    {"scenario": "restart", "label": "a", "connections": 5000, "synced": 5000, "failed": 0,
     "reconnect_s": 4.5},
]


@pytest.fixture
def results(tmp_path) -> Path:
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in RESULTS) + "\n\n")
    return path


def rows(md: str) -> dict[str, list[str]]:
    """The table rows by their first cell (the figure)."""
    out = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| figure"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_table_has_every_figure_per_deployment_and_the_ratio_to_c(results):
    md = report.markdown(report.load(results))
    header = next(line for line in md.splitlines() if line.startswith("| figure"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "figure", report.DEPLOYMENTS["a"], report.DEPLOYMENTS["b"], report.DEPLOYMENTS["c"],
        "(a) ÷ (c)", "(b) ÷ (c)"]
    r = rows(md.split("### ")[2])  # fanout, one collaboration (after the summary)
    assert r["10k/s offered: deliveries/s"] == ["9,990", "—", "9,980", "1.00×", "—"]
    assert r["10k/s offered: p99 ms"] == ["8.00", "—", "100", "0.0800×", "—"]
    assert r["10k/s offered: server CPU µs/delivery"] == ["1.25", "—", "—", "—", "—"]
    # (c) lost 37 %: its cell says so; its measured figures stay
    assert r["100k/s offered: deliveries/s"][2] == "63,000 (failed: 37.0 % lost)"
    assert r["100k/s offered: p99 ms"] == ["25.0", "—", "2,400", "0.0104×", "—"]
    # the saturated load generator is marked and explained
    assert r["100k/s offered: deliveries/s"][0] == "99,000 †"
    assert "† the load generator was saturated" in md
    assert "Run 2026-12-02; commit abc1234; Test CPU, 2 cores, 24 GiB, 6.1; --quick sizes" in md
    assert "    ./scripts/bench.sh --quick" in md


def test_summary_has_the_headline_figures(results):
    md = report.markdown(report.load(results))
    summary = md.split("### ")[1]
    assert summary.startswith("summary")
    r = rows(summary)
    assert r["fanout p99 ms at 10k/s (one collaboration)"] == ["8.00", "—", "100", "0.0800×", "—"]
    assert r["fanout p99 ms at 100k/s (one collaboration)"][2] == "2,400 (failed: 37.0 % lost)"
    # (c) took 10k/s without loss, not 100k/s
    assert r["fanout: highest offered deliveries/s taken without loss (one collaboration)"] == [
        "100,000 †", "—", "10,000", "10.0×", "—"]
    assert r["capacity: KiB per connection, fresh instance"] == [
        "12.0", "11.0", "85.0 (failed: 18,010 of 20,000 not synced)", "0.141×", "0.129×"]
    assert r["restart: nodes"] == ["5,000", "—", "—", "—", "—"]
    assert r["restart: every node synced again after s"] == ["4.50", "—", "—", "—", "—"]


def test_measurements_that_could_not_be_taken_say_why(results):
    md = report.markdown(report.load(results))
    sections = md.split("### ")
    collabs = next(s for s in sections if s.startswith("fanout: `new_task` to collaborations"))
    assert rows(collabs) == {"10k/s offered: deliveries/s": ["—", "—", "failed: timeout after 300 s", "—", "—"]}
    capacity = next(s for s in sections if s.startswith("capacity"))
    cap = rows(capacity)
    assert cap["fresh instance: synced"] == ["20,000", "19,800", "1,990 (failed: 18,010 of 20,000 not synced)",
                                      "10.1×", "9.95×"]
    assert cap["fresh instance: KiB per connection"] == ["12.0", "11.0", "85.0", "0.141×", "0.129×"]
    restart = rows(next(s for s in sections if s.startswith("restart")))
    assert restart["all synced after s"] == ["4.50", "—", "—", "—", "—"]  # no (c) line, no ratio


def test_failure_reasons():
    assert report.failure({"skipped": "no broker"}) == "n/a: no broker"
    assert report.failure({"expected": 1000, "lost": 370}) == "failed: 37.0 % lost"
    assert report.failure({"expected": 1000, "lost": 0, "duplicated": 3}) == "failed: 3 duplicated"
    assert report.failure({"connections": 10, "synced": 10, "failed": 0}) is None
    assert report.failure({"connections": 10, "synced": 7, "failed": 0}) == "failed: 3 of 10 not synced"
    assert report.failure({"errors": ["loadgen exited 2: boom | bang"]}) == "failed: loadgen exited 2: boom / bang"
    assert report.failure({"expected": 10, "delivered": 10, "lost": 0}) is None
    # restart: failed counts reconnection attempts against a server that is down, not nodes
    assert report.failure({"scenario": "restart", "connections": 300, "synced": 300, "failed": 1280}) is None
    assert report.failure({"scenario": "restart", "connections": 300, "synced": 290, "failed": 9}) == \
        "failed: 10 of 300 not synced"


def test_chart_is_svg_with_a_series_per_deployment_and_topology(results):
    lines = report.load(results)
    root = ET.fromstring(report.svg(lines))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    ns = {"s": "http://www.w3.org/2000/svg"}
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert f"{report.DEPLOYMENTS['a']}, one collaboration" in texts
    assert f"{report.DEPLOYMENTS['c']}, one collaboration" in texts
    assert not any(t and t.startswith(report.DEPLOYMENTS["b"]) for t in texts)  # skipped: no points
    # two panels x two deployments with two rates each: a line per panel and series
    assert len(root.findall("s:polyline", ns)) == 4
    # (c) at 100k/s failed: a cross in each panel; the three good points are dots in each
    assert len(root.findall("s:circle", ns)) == 6
    assert len(root.findall("s:path", ns)) == 2


def test_write_puts_report_and_chart_next_to_the_results(results):
    text, md, chart = report.write(results)
    assert md.parent == chart.parent == results.parent
    assert md.read_text().startswith(text)
    assert chart.read_text().startswith("<svg")


def test_a_broken_line_names_its_number(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"scenario": "meta"}\nnot json\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: not JSON"):
        report.load(path)


def test_a_capped_capacity_says_so_once_under_its_table(results):
    md = report.markdown(report.load(results))
    capacity = next(s for s in md.split("### ") if s.startswith("capacity"))
    assert capacity.startswith("capacity: idle node connections — 19,800, 20,000 nodes")
    note = (f"- {report.DEPLOYMENTS['b']}: capped at 19,800 connections (of 20,000) by the servers' "
            "open-files limit 20,000 (− 200 per server process)")
    assert capacity.count("capped at") == 1
    assert note in capacity.splitlines()
    # a capped run is not a failed one
    assert rows(capacity)["after the connect storm: synced"][1] == "19,800"


def test_compare_splits_large_fleets_and_caps_at_the_servers_open_files():
    import compare

    assert [compare.loadgen_processes(n) for n in (1, 300, 9_000, 9_001, 20_000)] == [1, 1, 1, 2, 3]
    assert all(-(-n // compare.loadgen_processes(n)) <= compare.SOCKETS_PER_LOADGEN_PROCESS
               for n in (5_000, 19_800, 20_000, 50_000))
    # one server with 20,000 open files holds 19,800; two hold 20,000 (10,000 each)
    assert compare.connection_cap([20_000]) == (19_800, 20_000)
    assert compare.capped(20_000, compare.connection_cap([20_000])) == (
        19_800, "capped at 19,800 connections (of 20,000) by the servers' open-files limit 20,000 "
                "(− 200 per server process)")
    assert compare.capped(20_000, compare.connection_cap([20_000, 20_000])) == (20_000, None)
    assert compare.capped(20_000, compare.connection_cap([20_000, None])) == (20_000, None)  # unknown: no cap
    import os
    import resource
    assert compare.open_files_limit(os.getpid()) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert compare.open_files_limit(2**22 + 12345) is None  # no such process


def test_connect_lines_are_a_section_of_their_own_and_a_summary_row(tmp_path):
    connect = [
        {"scenario": "capacity", "variant": "connect", "label": "a", "phase": "fresh", "connections": 1000,
         "connected": 1000, "synced": 1000, "failed": 0, "connect_per_s": 2000.0, "connect_s": 0.5},
        {"scenario": "capacity", "variant": "connect", "label": "a", "phase": "after_storm",
         "connections": 1000, "connected": 1000, "synced": 1000, "failed": 0, "connect_s": 0.6},
        {"scenario": "capacity", "variant": "connect", "label": "c", "phase": "fresh", "connections": 1000,
         "connected": 1000, "synced": 1000, "failed": 0, "connect_per_s": 20.0, "connect_s": 50.0},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in RESULTS + connect) + "\n")
    md = report.markdown(report.load(path))
    summary = rows(md.split("### ")[1])
    assert summary["connect: 1,000 nodes (collaborations of 10) all synced after s"] == [
        "0.500", "—", "50.0", "0.0100×", "—"]
    # the capacity rows keep their own (20,000-connection) lines
    assert summary["capacity: connections/s, fresh instance"][0] == "2,500"
    section = next(s for s in md.split("### ") if s.startswith("connect:"))
    r = rows(section)
    assert r["fresh instance: connect s"] == ["0.500", "—", "50.0", "0.0100×", "—"]
    assert r["after the connect storm: connect s"][0] == "0.600"
