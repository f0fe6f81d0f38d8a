"""node_info_update payloads used by the suite."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node_simulator import DEFAULT_NODE_INFO  # noqa: E402

# what vantage6-node 4.15.2's share_node_details() sends (encryption off, a
# policy, a csv database with known columns and a sql database)
TYPICAL_4X = DEFAULT_NODE_INFO

# every value shape the reference flattening handles
MIXED = {
    "encryption": True,
    "allowed_algorithms": "all",
    "allowed_users": [3, 4],
    "allowed_orgs": [],
    "threshold": 0.25,
    "max_tasks": 7,
    "flag_off": False,
    "tags": ["a", 1, 2.5, True, False, "b"],
    "database_labels": ["default", "second", "default"],
    "database_types": {"db_type_default": "csv", "db_type_second": "excel"},
    "database_columns": {"columns_default": ["age", "weight"], "columns_second": []},
    "nested_scalars": {"inner_int": 5, "inner_bool": True, "inner_float": 1.5, "inner_str": "x y"},
    "unicode": "Zürich ✓",
}

# None at top level, inside a list and as an inner dict value (stored as NULL)
WITH_NULLS = {
    "encryption": False,
    "allowed_algorithms": "all",
    "database_labels": ["default", "unconfigured"],
    "database_types": {"db_type_default": "csv", "db_type_unconfigured": None},
    "note": None,
    "maybe": [None, "x"],
}
