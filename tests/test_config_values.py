"""Settings' values out of their bounds are refused at load, named as the file writes them;
the defaults, the sample file and the values whose 0 means "off" are taken."""

import os
import socket
import subprocess
from pathlib import Path

import pytest

from openhosting.config import ConfigError, flat_settings, load_config
from openhosting.config_sample import render_sample
from openhosting.config_values import CHOICES, DECIMALS, MAXIMUMS, MINIMUMS, value_problems
from testbed.daemon_process import BIN


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('log_level = "verbose"\n', "Invalid log_level 'verbose': use debug, info"),
        ('[hypervisor]\naccelerator = "kvvm"\n', "Invalid hypervisor.accelerator 'kvvm'"),
        ('[hypervisor]\ndriver = "qemuu"\n', "Invalid hypervisor.driver 'qemuu'"),
        ('[storage]\ndefault_cipher = "aes"\n', "Invalid storage.default_cipher 'aes'"),
        ('[network]\nmode = "brigde"\n', "Invalid network.mode 'brigde'"),
        ("[host]\nheartbeat_seconds = 0\n", "Invalid host.heartbeat_seconds 0: at least 1"),
        ("[storage]\nimaging_concurrency = 0\n", "Invalid storage.imaging_concurrency 0"),
        ("[storage]\nimaging_max_rate = -1\n", "Invalid storage.imaging_max_rate -1: at least 0"),
        ("[api]\nidle_timeout = -5\n", "Invalid api.idle_timeout -5"),
        ("[network]\nlease_seconds = 60\n", "Invalid network.lease_seconds 60: at least 120"),
        ("[network]\nvxlan_port = 70000\n", "Invalid network.vxlan_port 70000: from 1 to 65535"),
        ("[billing]\ninterval = 0\n", "Invalid billing.interval 0"),
        ('[billing]\ncpu_ghz_hour = "cheap"\n', "Invalid billing.cpu_ghz_hour 'cheap'"),
        ('[billing]\nip_hour = "NaN"\n', "Invalid billing.ip_hour 'NaN'"),
        ('[billing]\nvlan_hour = "-0.5"\n', "Invalid billing.vlan_hour '-0.5'"),
    ],
)
def test_a_value_out_of_its_bounds_is_refused_at_load_and_named(
    tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "oh.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert named in str(refused.value)


def test_a_variable_out_of_bounds_is_refused_too() -> None:
    with pytest.raises(ConfigError, match=r"Invalid host\.offline_seconds 0"):
        load_config(env={"OH_HOST_OFFLINE_SECONDS": "0"})


def test_the_defaults_the_sample_and_the_zeros_that_mean_off_are_taken(tmp_path: Path) -> None:
    path = tmp_path / "oh.toml"
    path.write_text(render_sample())
    assert list(value_problems(flat_settings(load_config(path, env={})))) == []
    path.write_text(
        'log_level = "WARNING"\n[api]\nuser_requests_per_second = 0\nmax_transfers = 0\n'
        "[storage]\nimaging_max_rate = 0\njob_retention_days = 0\norphan_grace_seconds = 0\n"
        '[hypervisor]\nmigration_max_bandwidth = 0\naccelerator = "tcg"\n'
        '[billing]\ndrive_gb_hour = "0"\ncpu_ghz_hour = "0.015"\n'
    )
    config = load_config(path, env={})
    assert config.log_level == "WARNING" and config.billing.cpu_ghz_hour == "0.015"


def test_every_bounded_setting_exists() -> None:
    """A rule for a name no setting has (a typo, a setting renamed) would check nothing."""
    names = set(flat_settings(load_config(env={})))
    assert set(CHOICES) | set(MINIMUMS) | set(MAXIMUMS) | DECIMALS <= names


@pytest.mark.parametrize(
    ("text", "stderr"),
    [
        (
            '[hypervisor]\naccelerator = "kvvm"\n',
            "openhostingd: Invalid hypervisor.accelerator 'kvvm': use kvm, tcg, auto\n",
        ),
        (
            '[billing]\nenabled = true\ncpu_ghz_hour = "cheap"\n',
            "openhostingd: Invalid billing.cpu_ghz_hour 'cheap': a price, a decimal number"
            " such as 0.01\n",
        ),
    ],
)
def test_openhostingd_names_the_setting_and_exits_2_without_a_traceback(
    tmp_path: Path, text: str, stderr: str
) -> None:
    """Both ran until the platform opened its hypervisor or its billing, which raised
    ValueError and decimal.InvalidOperation: a traceback and exit status 1."""
    path = tmp_path / "oh.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\nfirst_user = false\n{text}')
    with socket.socket() as taken:  # had it started, it would stop at once, not serve
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = subprocess.run(
            [str(BIN / "openhostingd"), "--config", str(path),
             "--listen", f"127.0.0.1:{taken.getsockname()[1]}"],
            env={**os.environ, "OH_API_METRICS_LISTEN": ""},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert (done.returncode, done.stderr) == (2, stderr)


@pytest.mark.parametrize(
    ("text", "stderr"),
    [
        (
            '[api]\nlisten = "127.0.0.1:99999"\n',
            "openhostingd: Invalid listen address '127.0.0.1:99999': expected HOST:PORT, PORT at"
            " most 65535\n",
        ),
        (
            '[api]\nlisten = "127.0.0.1:1"\ntls_cert = "/nonexistent/cert.pem"\n',
            "openhostingd: Cannot load api.tls_cert '/nonexistent/cert.pem' (api.tls_key ''):"
            " No such file or directory\n",
        ),
    ],
)
def test_openhostingd_names_a_listen_port_or_certificate_it_cannot_use(
    tmp_path: Path, text: str, stderr: str
) -> None:
    """A port past 65535 reached bind() (OverflowError, a traceback); a missing certificate
    stopped the daemon after its platform opened, saying only 'No such file or directory'.
    Both are refused before anything is made."""
    path = tmp_path / "oh.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\nfirst_user = false\n{text}')
    done = subprocess.run(
        [str(BIN / "openhostingd"), "--config", str(path)],
        env={**os.environ, "OH_API_METRICS_LISTEN": ""},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (2, stderr)
    assert not (tmp_path / "state").exists()
