"""The agent logs as the daemon does: its INFO event lines reach its standard error, as text
or JSON (`log_level`, `log_format`), and a format it does not know stops it at start."""

import json
import os
import subprocess
from pathlib import Path

from testbed.agent_process import BIN, Cluster, agent_process


def test_an_agents_start_writes_its_info_event_line(cluster: Cluster, tmp_path: Path) -> None:
    with agent_process(tmp_path / "text", cluster.host("hv-a")) as agent:
        pass
    lines = agent.log.read_text().splitlines()
    started = [line for line in lines if "event=agent_started" in line]
    assert len(started) == 1, lines
    assert " INFO openhosting.agent event=agent_started host=hv-a " in started[0]
    assert f"listen={agent.address}" in started[0]


def test_an_agent_logs_json_lines_and_keeps_to_its_level(cluster: Cluster, tmp_path: Path) -> None:
    with agent_process(
        tmp_path / "json", cluster.host("hv-a"), env={"OH_LOG_FORMAT": "json"}
    ) as agent:
        pass
    entries = [json.loads(line) for line in agent.log.read_text().splitlines()]
    started = [entry for entry in entries if entry.get("event") == "agent_started"]
    assert len(started) == 1, entries
    assert (started[0]["level"], started[0]["host"]) == ("info", "hv-a")

    with agent_process(
        tmp_path / "quiet", cluster.host("hv-a"), env={"OH_LOG_LEVEL": "warning"}
    ) as agent:
        pass
    assert "event=agent_started" not in agent.log.read_text()


def test_an_agent_refuses_a_log_format_it_does_not_know(cluster: Cluster, tmp_path: Path) -> None:
    bundle = cluster.host("hv-a")
    command = [
        str(BIN / "openhosting-agent"),
        "--state-dir", str(tmp_path / "state"),
        "--listen", "127.0.0.1:0",
        "--tls-dir", str(bundle.cert.parent),
    ]  # fmt: skip
    ran = subprocess.run(
        command,
        env={**os.environ, "OH_LOG_FORMAT": "xml", "OH_HYPERVISOR_DRIVER": "fake"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert ran.returncode == 2, ran
    assert "Invalid log_format 'xml'" in ran.stderr.decode(), ran
