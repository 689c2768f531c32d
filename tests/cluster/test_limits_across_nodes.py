"""Limits checked on create hold when two API daemons create for one user at once: the
check and the insert are one transaction holding the user's row (`SELECT … FOR UPDATE`)."""

from tests.cluster.nodes import Cluster, at_once

ATTEMPTS = 16  # per kind, half through each daemon


def _created(cluster: Cluster, path: str, body: bytes) -> list[int]:
    """The statuses of ATTEMPTS creates `path` with `body`, sent at once to both daemons."""
    apis = [cluster.api_a, cluster.api_b] * (ATTEMPTS // 2)
    answers = at_once([lambda api=api: api.call(path, body) for api in apis])
    return [answer.status for answer in answers]


def test_concurrent_creates_through_two_daemons_never_pass_the_users_limits(
    cluster: Cluster,
) -> None:
    user = cluster.account.user
    cluster.admin("user", "set", user, "--max-servers", "3", "--max-ips", "2",
                  "--max-drive-bytes", "4M")  # fmt: skip
    statuses = {
        "servers": _created(cluster, "/servers/create/stopped", b"name s\ncpu 500\nmem 64\n"),
        "ips": _created(cluster, "/resources/ip/create", b""),
        "drives": _created(cluster, "/drives/create", b"name d\nsize 1M\n"),
    }
    for kind, limit in (("servers", 3), ("ips", 2), ("drives", 4)):
        assert sorted(set(statuses[kind])) == [200, 402], (kind, statuses[kind])
        assert statuses[kind].count(200) == limit, (kind, statuses[kind])
    shown = cluster.api_b.properties("/account/info")
    assert shown["usage:servers"] == "3" and shown["usage:ips"] == "2"
    assert shown["usage:drive:bytes"] == str(4 << 20)
