"""The cluster CA and its nodes' certificates, made by the real admin tool in a real state
directory and checked with the `cryptography` package's own X.509 path validation."""

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from openhosting.admin.tool import main
from openhosting.agent.pki import CONTROL, HOST, cluster_dir, control_bundle, host_bundle, role_of


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify_server(ca: Path, cert: Path, name: str) -> None:
    builder = PolicyBuilder().store(Store([_load(ca)]))
    builder = builder.time(datetime.datetime.now(datetime.UTC))
    builder.build_server_verifier(x509.DNSName(name)).verify(_load(cert), [])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cluster_init_makes_a_private_ca_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "cluster", "init"]) == 0
    directory = cluster_dir(state)
    control = control_bundle(state)
    files = sorted(path.name for path in directory.iterdir())
    assert files == ["ca-cert.pem", "ca-key.pem", "control-cert.pem", "control-key.pem"]
    assert _mode(directory) == 0o700
    assert {_mode(path) for path in directory.iterdir()} == {0o600}
    assert role_of(_load(control.cert)) == (CONTROL, "control")
    before = {path.name: path.read_bytes() for path in directory.iterdir()}
    capsys.readouterr()

    # A second CA would cut every agent off: refused, nothing replaced.
    assert main(["--state-dir", str(state), "cluster", "init"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in directory.iterdir()} == before


def test_a_host_certificate_names_its_host_and_chains_to_the_cluster_ca(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "cluster", "init"]) == 0
    out = tmp_path / "hv-a-bundle"
    assert main(["--state-dir", str(state), "host", "add", "hv-a", "--out", str(out)]) == 0
    bundle = host_bundle(out)
    assert bundle.ca_cert.read_bytes() == (cluster_dir(state) / "ca-cert.pem").read_bytes()
    assert {_mode(path) for path in (bundle.ca_cert, bundle.cert, bundle.key)} == {0o600}
    assert _mode(out) == 0o700

    _verify_server(bundle.ca_cert, bundle.cert, "hv-a")
    with pytest.raises(VerificationError):  # host A's certificate is not host B's
        _verify_server(bundle.ca_cert, bundle.cert, "hv-b")
    # Its role is host: it cannot pass as the control plane, nor the control plane as a host.
    assert role_of(_load(bundle.cert)) == (HOST, "hv-a")
    with pytest.raises(VerificationError):
        _verify_server(bundle.ca_cert, control_bundle(state).cert, "control")

    # A certificate of another cluster's CA does not chain to this one.
    other = tmp_path / "other"
    assert main(["--state-dir", str(other), "cluster", "init"]) == 0
    assert (
        main(["--state-dir", str(other), "host", "add", "hv-a", "--out", str(tmp_path / "o")]) == 0
    )
    with pytest.raises(VerificationError):
        _verify_server(bundle.ca_cert, host_bundle(tmp_path / "o").cert, "hv-a")


@pytest.mark.parametrize(
    "name", ["", "HV-A", "hv_a", "-hv", "hv-", "a..b", "a" * 64, "control", "hv a", "é"]
)
def test_host_add_refuses_a_name_that_cannot_name_a_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "cluster", "init"]) == 0
    capsys.readouterr()
    out = tmp_path / "bundle"
    assert main(["--state-dir", str(state), "host", "add", "--out", str(out), "--", name]) == 1
    assert "Invalid host name" in capsys.readouterr().err
    assert not out.exists()


def test_host_add_needs_the_ca_and_never_overwrites_a_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, out = tmp_path / "state", tmp_path / "bundle"
    assert main(["--state-dir", str(state), "host", "add", "hv-a", "--out", str(out)]) == 1
    assert "cluster init" in capsys.readouterr().err
    assert main(["--state-dir", str(state), "cluster", "init"]) == 0
    assert main(["--state-dir", str(state), "host", "add", "hv-a", "--out", str(out)]) == 0
    key = host_bundle(out).key.read_bytes()
    capsys.readouterr()
    assert main(["--state-dir", str(state), "host", "add", "hv-b", "--out", str(out)]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert host_bundle(out).key.read_bytes() == key


def test_host_add_refuses_an_out_that_is_no_directory_it_can_make_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "cluster", "init"]) == 0
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    monkeypatch.chdir(tmp_path)  # an empty --out wrote the host's key where the tool ran
    shared = tmp_path / "shared"  # a directory others use, such as /tmp
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    (shared / "theirs").write_text("")
    tmp_path.chmod(0o755)  # the directory the tool runs in
    for out in (a_file, a_file / "sub", "", ".", shared):
        capsys.readouterr()
        # Before: a traceback (FileExistsError, NotADirectoryError), or the bundle written
        # into the directory, made 0700 for it: `--out ''` or `--out .` run in /tmp shut
        # every other user of the machine out of /tmp.
        assert main(["--state-dir", str(state), "host", "add", "hv-a", "--out", str(out)]) == 1
        assert capsys.readouterr().err.startswith("openhosting-admin: Cannot write the bundle")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "shared", "state"]
    assert (_mode(shared), _mode(tmp_path)) == (0o1777, 0o755)
    assert [path.name for path in shared.iterdir()] == ["theirs"]
