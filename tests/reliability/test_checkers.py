"""The checkers of `make reliability` catch what they are for: each is fed a tampered history
or state (a write acknowledged but not on the drive, a destroyed drive back, a claim left
behind, a VM doubled or orphaned, a damaged database) and must object, while the honest one
passes. The campaigns themselves run real daemons and are not part of `make test`."""

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.reliability.checkers import (
    ClaimState,
    Ledger,
    check_adoption,
    check_answer,
    check_attack,
    check_claims,
    check_daemon_resources,
    check_foreign_ids,
    check_integrity,
    check_presence,
    check_rss_levels,
    is_write_past_end,
    process_fate,
    qemu_processes,
)
from bench.reliability.model import DriveModel, pattern
from bench.reliability.table import CampaignResult, render_table

D1, D2, D3 = (f"{n}" * 8 + "-0000-4000-8000-000000000000" for n in "123")


def written_drive() -> tuple[DriveModel, bytearray]:
    """A model with two acknowledged writes and the drive's bytes that honour them."""
    model = DriveModel(D1, 8192)
    for offset, seq in ((100, 1), (4000, 2)):
        model.acknowledged_write(offset, pattern(D1, offset, seq, 1000))
    return model, bytearray(model.expected)


def test_a_drive_holding_every_acknowledged_write_passes() -> None:
    model, actual = written_drive()
    assert model.mismatches(bytes(actual)) == []


def test_a_lost_acknowledged_write_is_caught() -> None:
    model, actual = written_drive()
    actual[4500] ^= 0xFF  # one byte of the second write never reached the disk
    assert any("offset 4500" in problem for problem in model.mismatches(bytes(actual)))


def test_a_write_acknowledged_but_written_elsewhere_or_older_is_caught() -> None:
    model, _ = written_drive()
    stale = bytearray(8192)  # the drive as it was before the writes
    assert model.mismatches(bytes(stale))


def test_an_unanswered_write_may_or_may_not_have_landed() -> None:
    model, actual = written_drive()
    model.uncertain(100, 1000)
    actual[100:1100] = pattern(D1, 100, 3, 1000)
    assert model.mismatches(bytes(actual)) == []


def test_resizes_keep_what_lies_below_the_new_end_and_read_zeros_beyond() -> None:
    model, actual = written_drive()
    model.acknowledged_resize(4500)
    assert model.mismatches(bytes(actual[:4500])) == []
    model.acknowledged_resize(6000)
    assert model.mismatches(bytes(actual[:4500]) + bytes(1500)) == []
    assert model.mismatches(bytes(actual[:6000]))  # the old tail came back after a shrink
    assert model.mismatches(bytes(actual[:4500]))  # the size is not the acknowledged one


def test_an_unanswered_resize_adopts_the_size_the_drive_shows() -> None:
    model, actual = written_drive()
    model.adopt_size(3000)
    assert model.mismatches(bytes(actual[:3000])) == []


def test_acknowledged_creates_present_and_destroys_absent_pass() -> None:
    ledger = Ledger.empty("drive")
    ledger.created(D1)
    ledger.created(D2)
    ledger.destroyed(D2)
    assert check_presence(ledger, {D1}) == []


def test_a_missing_acknowledged_create_is_caught() -> None:
    ledger = Ledger.empty("drive")
    ledger.created(D1)
    assert check_presence(ledger, set()) == [f"drive {D1}: acknowledged created, missing"]


def test_an_acknowledged_destroy_come_back_is_caught() -> None:
    ledger = Ledger.empty("drive")
    ledger.destroyed(D2)
    assert check_presence(ledger, {D2}) == [f"drive {D2}: acknowledged destroyed, back"]


def test_objects_nobody_created_are_allowed_only_for_creates_that_lost_their_answer() -> None:
    ledger = Ledger.empty("server")
    assert check_presence(ledger, {D3}, unanswered_creates=1) == []
    assert check_presence(ledger, {D3}, unanswered_creates=0)


def test_an_object_a_lost_create_explains_is_known_after_the_check() -> None:
    # Seen in the crash campaign: an IP whose create lost its answer to a kill passed its
    # first check, then was "unacknowledged" at every later one.
    ledger = Ledger.empty("resource")
    assert check_presence(ledger, {D3}, unanswered_creates=1) == []
    ledger.settle({D3}, unanswered_creates=1)
    assert check_presence(ledger, {D3}, unanswered_creates=0) == []
    assert ledger.present == {D3}
    # More than the lost creates explain stay unknown, and are caught again.
    other = Ledger.empty("resource")
    other.settle({D1, D2}, unanswered_creates=1)
    assert check_presence(other, {D1, D2}, unanswered_creates=0)


def test_a_reused_address_that_a_lost_create_explains_is_not_a_destroy_come_back() -> None:
    # Seen in the crash campaign (seed 3007, 14 false violations): IP 192.0.2.11 was
    # destroyed (204), then a create whose answer was lost to a kill took the same address
    # from the pool again; it was "acknowledged destroyed, back" at every later check.
    address = "192.0.2.11"
    ledger = Ledger.empty("resource", reuses_ids=True)
    ledger.created(address)
    ledger.destroyed(address)
    assert check_presence(ledger, {address}, unanswered_creates=1) == []
    ledger.settle({address}, unanswered_creates=1)
    assert ledger.present == {address}
    assert check_presence(ledger, {address}, unanswered_creates=0) == []
    # Without a lost create to explain it, it is caught still.
    again = Ledger.empty("resource", reuses_ids=True)
    again.destroyed(address)
    assert check_presence(again, {address}, unanswered_creates=0)
    # A UUID is never handed out again: a destroyed drive back is caught whatever was lost.
    drives = Ledger.empty("drive")
    drives.destroyed(D2)
    assert check_presence(drives, {D2}, unanswered_creates=1) == [
        f"drive {D2}: acknowledged destroyed, back"
    ]


def test_an_object_in_doubt_may_be_there_or_not_and_is_then_settled() -> None:
    ledger = Ledger.empty("drive")
    ledger.created(D1)
    ledger.doubt(D1)  # its destroy lost its answer
    assert check_presence(ledger, set()) == []
    ledger.settle(set())
    assert ledger.absent == {D1}
    assert check_presence(ledger, {D1})


def test_claims_and_imaging_marks_with_their_job_or_server_pass() -> None:
    state = ClaimState(
        imaging_drives={D1: "42%"},
        claims=[(D1, "imaging", "7"), (D2, "guest", D3)],
        pending_jobs={"7": D1},
        active_servers={D3},
    )
    assert check_claims(state) == []


def test_a_drive_imaging_without_a_job_is_caught() -> None:
    state = ClaimState({D1: "queued"}, [], {}, set())
    assert check_claims(state) == [f"drive {D1}: imaging 'queued' without a pending job"]


def test_a_claim_release_skipped_is_caught() -> None:
    state = ClaimState({}, [(D1, "imaging", "7"), (D2, "guest", D3)], {}, set())
    assert len(check_claims(state)) == 2


def test_every_active_server_with_one_vm_passes() -> None:
    assert check_adoption({D1}, {D1: [10]}) == []


def test_a_vm_not_adopted_doubled_or_orphaned_is_caught() -> None:
    assert check_adoption({D1}, {}) == [f"server {D1}: active with 0 QEMU processes"]
    assert check_adoption({D1}, {D1: [10, 11]})
    assert check_adoption(set(), {D2: [12]}) == [
        f"server {D2}: QEMU [12] runs but the server is not active"
    ]


def test_qemu_processes_are_found_by_the_guest_name_on_their_command_line() -> None:
    named = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"guest={D1}"])
    try:
        deadline = time.monotonic() + 10
        while not (found := qemu_processes([D1, D2])) and time.monotonic() < deadline:
            time.sleep(0.05)  # the child may not have exec'd yet
        assert found == {D1: [named.pid]}
    finally:
        named.kill()
        named.wait(10)
    assert qemu_processes([D1]) == {}


def test_a_sound_database_passes_and_a_damaged_one_is_caught(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
        connection.execute("CREATE INDEX t_b ON t (b)")
        connection.executemany(
            "INSERT INTO t (b) VALUES (?)", [(str(i) * 50,) for i in range(2000)]
        )
    connection.close()
    assert check_integrity(database) == []
    data = bytearray(database.read_bytes())
    page = 4096
    data[2 * page : 3 * page] = bytes(page)  # a torn write: page 3, a b-tree's, zeroed
    database.write_bytes(bytes(data))
    assert check_integrity(database)


def test_the_table_has_one_row_per_campaign_and_names_each_violation() -> None:
    table = render_table([
        CampaignResult("crash", 12, 3),
        CampaignResult("load", 500, 0, ["GET /x: 500"]),
    ])  # fmt: skip
    lines = table.splitlines()
    assert lines[0].split() == ["campaign", "operations", "faults", "injected", "invariant",
                                "violations"]  # fmt: skip
    assert lines[2].split() == ["crash", "12", "3", "0"]
    assert lines[3].split() == ["load", "500", "0", "1"]
    assert "load: VIOLATION GET /x: 500" in lines


def test_an_attack_answered_as_for_a_missing_object_passes() -> None:
    assert check_attack("info", 404, 404) == []


def test_an_attack_that_succeeds_or_betrays_the_object_is_caught() -> None:
    assert check_attack("write", 204, 404)  # wrote into another user's drive
    assert check_attack("destroy", 409, 404)  # `busy`: the object exists
    assert check_attack("set", 200, 200)  # never a success, even if a missing one were


def test_another_users_id_in_a_list_or_event_stream_is_caught() -> None:
    assert check_foreign_ids("/drives/list", f"{D1}\n", {D2}) == []
    assert check_foreign_ids("/events", f'data: {{"drive": "{D2}"}}', {D2}) == [
        f"/events names another user's ['{D2}']"
    ]


def test_rss_past_its_bound_and_leaked_descriptors_are_caught() -> None:
    assert check_daemon_resources((100 << 20, 120 << 20), (13, 13), 64 << 20) == []
    assert check_daemon_resources((100 << 20, 120 << 20), (20, 13), 64 << 20) == []
    assert check_daemon_resources((100 << 20, 200 << 20), (13, 13), 64 << 20)
    assert check_daemon_resources((100 << 20, 100 << 20), (13, 14), 64 << 20)


def test_rss_that_keeps_growing_is_caught_and_rss_that_levels_off_is_not() -> None:
    mib = 1 << 20
    levelling = [m * mib for m in (103, 116, 125, 135, 143, 148, 150, 152, 153, 155)]
    assert check_rss_levels(levelling, 24 * mib) == []
    leaking = [(100 + 10 * n) * mib for n in range(10)]  # 10 MiB per sample, late as early
    assert check_rss_levels(leaking, 24 * mib)
    assert check_rss_levels(leaking[:3], 24 * mib) == []  # too short to tell


def test_only_the_contracts_507_for_a_write_past_the_end_is_told_apart() -> None:
    past = (
        b"HTTP/1.1 507 Insufficient Storage\r\nX-Elastic-Error: full\r\n\r\n"
        b"Offset 2560622592 is past the end of drive d8 (1048576 bytes)\n"
    )
    assert is_write_past_end(past)
    full_disk = past.split(b"\r\n\r\n")[0] + b"\r\n\r\nThe platform's storage is full\n"
    assert not is_write_past_end(full_disk)
    assert not is_write_past_end(past.replace(b"507 Insufficient Storage", b"500 Internal"))


def test_a_5xx_or_an_answer_past_the_idle_timeout_is_caught() -> None:
    assert check_answer("x", 400, 0.1, 8) == []
    assert check_answer("x", None, 3.2, 8) == []  # closed at the idle timeout
    assert check_answer("x", 500, 0.1, 8)
    assert check_answer("x", None, float("inf"), 8)


def test_process_fate_names_the_signal_of_a_process_that_is_dying() -> None:
    """A daemon killed by a signal refuses connections (its sockets are closed) a moment
    before it can be reaped: asked then, it is dying, not alive (the campaign said "its
    process still runs" of a daemon that died of SIGBUS)."""
    dying = subprocess.Popen(
        [sys.executable, "-c", "import os, signal, time; time.sleep(0.5);"
         " os.kill(os.getpid(), signal.SIGBUS)"],
    )  # fmt: skip
    assert process_fate(dying) == "was killed by SIGBUS"
    exiting = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert process_fate(exiting) == "exited with status 3"
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_fate(running, wait=0.2) == "still runs after 0.2 s"
    finally:
        running.kill()
        running.wait()
