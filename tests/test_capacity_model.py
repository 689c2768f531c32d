"""The arithmetic of the capacity model (bench/capacity.py, docs/cluster.md): statements are
sorted into reads, writes and transactions as PostgreSQL's counters name them, a cost measured
at two sizes splits into a fixed part and a part per object, and each line of the model is its
rate times its measured cost (the measurement itself is `make bench ARGS=capacity`)."""

import pytest
from bench.capacity import (
    FOLD_SECONDS,
    HEARTBEAT_SECONDS,
    METERING_SECONDS,
    NODE_CORE_SHARE,
    Line,
    Scenario,
    Tally,
    Unit,
    api_nodes,
    classify,
    fit,
    model,
)


def test_statements_are_sorted_by_their_verb() -> None:
    assert classify("BEGIN", 3, 0, 0) == Tally(transactions=3)
    assert classify("UPDATE hosts SET heartbeat_at=$1", 2, 2, 150) == Tally(
        writes=2, rows_written=2, wal_bytes=150
    )
    assert classify("  select drives.uuid FROM drives", 1, 300, 0) == Tally(reads=1, rows_read=300)
    assert classify("WITH x AS (SELECT 1) SELECT * FROM x", 1, 1, 0).reads == 1
    # A commit does no work of its own, but its WAL (the commit record) counts.
    assert classify("COMMIT", 5, 0, 200) == Tally(wal_bytes=200)
    assert classify("", 1, 0, 0) == Tally()


def test_a_cost_at_two_sizes_splits_into_fixed_and_per_object() -> None:
    small = Tally(transactions=5, reads=5, rows_read=4)  # 3 objects
    big = Tally(transactions=32, reads=32, rows_read=31)  # 30 objects
    fixed, per_object = fit(small, big, 3, 30)
    assert fixed == Tally(transactions=2, reads=2, rows_read=1)
    assert per_object == Tally(transactions=1, reads=1, rows_read=1)


def unit(tally: Tally, cpu: float = 0.0) -> Unit:
    return Unit("test", "unit", tally, cpu)


COSTS = {
    "heartbeat": unit(Tally(transactions=1, writes=1, rows_written=1, wal_bytes=100)),
    "fold_idle": unit(Tally(transactions=0.1, reads=1, rows_read=1)),
    "fold_busy": unit(Tally(transactions=0.1, reads=1, writes=2, rows_read=1, rows_written=2)),
    "metering_round": unit(Tally(transactions=1, reads=1)),
    "metering_account": unit(Tally(reads=3, writes=2, rows_read=2)),
    "metering_server": unit(Tally(rows_read=1)),
    "servers_fixed": unit(Tally(transactions=2, reads=2, rows_read=1), 0.004),
    "servers_object": unit(Tally(transactions=1, reads=1, rows_read=1), 0.001),
    "drives_fixed": unit(Tally(transactions=3, reads=3), 0.002),
    "drives_object": unit(Tally(rows_read=1), 0.0),
    "server_info": unit(Tally(transactions=3, reads=3, rows_read=2), 0.002),
    "drive_info": unit(Tally(transactions=3, reads=3, rows_read=2), 0.002),
    "imaging_fixed": unit(Tally(transactions=10, writes=15)),
    "imaging_second": unit(Tally(transactions=3, writes=4)),
}


def lines_by_name(scenario: Scenario) -> dict[str, Line]:
    return {line.activity: line for line in model(COSTS, scenario)}


def test_each_line_is_its_rate_times_its_measured_cost() -> None:
    scenario = Scenario(hosts=1000, servers=100_000, servers_per_account=10, busy_share=1.0)
    lines = lines_by_name(scenario)
    beats = lines["host heartbeats"]
    assert beats.rate == pytest.approx(1000 / HEARTBEAT_SECONDS)
    assert beats.load == Tally(transactions=200, writes=200, rows_written=200, wal_bytes=20_000)
    # Folds: every VM's statements, but one transaction per host and round.
    assert lines["guest I/O folds (per VM)"].load.writes == pytest.approx(
        100_000 / FOLD_SECONDS * 2
    )
    assert lines["guest I/O folds (per VM)"].load.transactions == 0
    assert lines["guest I/O folds (per host)"].load.transactions == pytest.approx(
        1000 / FOLD_SECONDS
    )
    # Metering: 10,000 accounts a minute, each reading its 10 servers' rows.
    metering = lines["metering (per account)"].load
    assert metering.rows_read == pytest.approx(10_000 / METERING_SECONDS * (2 + 10))
    assert metering.transactions == 0  # one per round
    assert lines["metering (rounds)"].load == Tally(transactions=1, reads=1).times(
        1 / METERING_SECONDS
    )


def test_an_info_poll_costs_its_fixed_part_and_its_part_per_object() -> None:
    scenario = Scenario(servers=100_000, servers_per_account=10, dashboards_open=0.1,
                        dashboard_poll_seconds=10)  # fmt: skip
    servers_info = lines_by_name(scenario)["dashboards: servers/info"]
    assert servers_info.rate == pytest.approx(100)  # 1,000 dashboards every 10 s
    assert servers_info.per_unit == Tally(transactions=12, reads=12, rows_read=11)
    assert servers_info.cpu_seconds == pytest.approx(0.014)


def test_busy_share_mixes_idle_and_busy_folds() -> None:
    half = lines_by_name(Scenario(servers=3000, busy_share=0.5))["guest I/O folds (per VM)"]
    assert half.per_unit.writes == pytest.approx(1.0)


def test_api_nodes_round_up_the_cores_requests_take() -> None:
    lines = [Line("a", 100, Tally(), cpu_seconds=0.01)]  # one core
    assert api_nodes(lines) == -(-1 // NODE_CORE_SHARE)
    assert api_nodes([Line("idle", 0, Tally())]) == 1
