"""The repository stands alone: a clone is all the tests, scripts and docs need. Nothing names
a folder beside the clone or a path of one particular machine, the data the tests read is
inside the repository, every link of the docs leads to a file of the repository, and the tests
that read the data pass from a copy made alone in an empty directory."""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO, SAMPLES

# Not the project's files: tools' output, the virtualenv, state of `make run`.
NOT_OURS = {"state", "__pycache__", "results", "build", "dist"}
# This file names what it looks for, so it is left out of the scan.
THIS_FILE = Path(__file__).resolve()
# A folder beside the clone (the API contract was once read from a sibling folder), an absolute path
# of the machine the repository was written on, or a document that lived only there (the API is
# described by docs/api.md).
OUTSIDE = re.compile(
    r"\.\./shared|\bshared/(spec|design)\b|/work/"
    r"|\bAPI\.md|compat-cases\.md|seed-api\.txt|\b(ARCHITECTURE|PLATFORM|STYLE)\.md"
)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
# The tests that read data files: the samples of the real service.
READERS = [
    "tests/wire/test_text.py",
    "tests/model/test_server.py",
    "tests/api/test_drives.py::test_the_real_services_create_body_is_accepted",
    "tests/api/test_servers.py::test_the_real_services_create_body_is_accepted",
]


def project_files() -> Iterator[Path]:
    """The repository's files: Git's tracked and not ignored ones, or, in a copy without Git,
    every file outside the folders of tools, caches and state."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    if listed.returncode == 0:
        paths = [REPO / name for name in listed.stdout.decode().split("\0") if name]
    else:
        paths = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in NOT_OURS and not d.startswith(".")]
            paths += [Path(root, name) for name in files]
    yield from (path for path in paths if path.is_file() and path.resolve() != THIS_FILE)


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # binary: no paths to look for


def beside_the_clone() -> re.Pattern[str] | None:
    """The absolute paths of what lies beside the clone (`/work/shared` for a clone in /work):
    a file naming one reads outside the repository. Not the clone's parent as such: a clone in
    /tmp is no reason to refuse the docs' `/tmp/hv1-bundle` (every line naming /tmp failed)."""
    if REPO.parent == Path("/"):
        return None
    entries = [re.escape(str(entry)) for entry in REPO.parent.iterdir() if entry != REPO]
    return re.compile(rf"(?:{'|'.join(entries)})(?![\w.-])") if entries else None


def test_no_file_names_a_folder_beside_the_clone_or_a_path_of_this_machine() -> None:
    beside = beside_the_clone()
    found, scanned = [], set()
    for path in project_files():
        text = text_of(path)
        if text is None:
            continue
        scanned.add(path.relative_to(REPO).as_posix())
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line) or (beside is not None and beside.search(line)):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert {"README.md", "Makefile", "src/openhosting/api/routes.py", "tests/conftest.py"} <= (
        scanned
    )
    assert found == []


def test_the_real_bodies_the_tests_use_are_in_the_repository_with_their_origin() -> None:
    samples = sorted(path.name for path in SAMPLES.glob("*.txt"))
    assert len(samples) == 9
    assert SAMPLES.is_relative_to(REPO)
    readme = (SAMPLES / "README.md").read_text()
    assert "jclouds" in readme and "Apache License 2.0" in readme
    assert [name for name in samples if f"`{name}`" not in readme] == []
    # A body without its final newline is part of what the parser is tested on.
    assert not (SAMPLES / "create_server.txt").read_bytes().endswith(b"\n")


def test_every_link_of_the_docs_leads_to_a_file_of_the_repository() -> None:
    broken = []
    for path in project_files():
        if path.suffix != ".md":
            continue
        for target in MARKDOWN_LINK.findall(path.read_text()):
            if re.match(r"[a-z]+:|#", target):
                continue  # a web address or an anchor of the same page
            linked = (path.parent / target.split("#")[0]).resolve()
            if not linked.is_relative_to(REPO) or not linked.exists():
                broken.append(f"{path.relative_to(REPO)}: {target}")
    assert broken == []


def test_the_readme_leads_to_the_api_reference_and_the_other_docs() -> None:
    links = set(MARKDOWN_LINK.findall((REPO / "README.md").read_text()))
    assert {"docs/api.md", "docs/networking.md", "docs/security.md", "docs/imaging.md"} <= links


def test_the_tests_that_read_data_pass_from_a_copy_alone_in_an_empty_directory(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "repo"  # nothing beside it: no sibling folder, no sibling worktree
    ignore = shutil.ignore_patterns(*NOT_OURS, ".*")
    for name in ("src", "tests", "testbed", "bench"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", copy)
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *READERS],
        cwd=copy, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"\b\d{2,} passed\b", run.stdout), run.stdout[-500:]
