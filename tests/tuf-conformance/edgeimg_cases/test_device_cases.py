"""Device cases beyond the upstream suite: what must never stop a fleet from updating.

Each case is one that tough's client got wrong (it stops updates, never lets a bad
artifact in). python-tuf builds the repositories, as in the upstream suite.
"""

import datetime

from tuf.api.metadata import DelegatedRole, Snapshot, Targets, Timestamp

from tuf_conformance._internal import utils
from tuf_conformance._internal.client_runner import ClientRunner
from tuf_conformance._internal.simulator_server import SimulatorServer


def test_expired_delegated_role_does_not_block_others(
    client: ClientRunner, server: SimulatorServer
) -> None:
    """An expired delegated role searched first ("*") costs only its own targets."""
    init_data, repo = server.new_test(client.test_name)
    assert client.init_client(init_data) == 0
    expired = Targets(expires=utils.get_date_n_days_in_past(1))
    repo.add_delegation(Targets.type, DelegatedRole("stale", [], 1, False, ["*"]), expired)
    apps = Targets(expires=repo.safe_expiry)
    repo.add_delegation(Targets.type, DelegatedRole("apps", [], 1, False, ["apps/*"]), apps)
    repo.add_artifact("stale", b"old", "other/b.txt")
    repo.add_artifact("apps", b"app", "apps/a.txt")
    repo.publish(["stale", "apps", Targets.type, Snapshot.type, Timestamp.type])

    assert client.download_target(init_data, "apps/a.txt") == 0
    assert client.download_target(init_data, "other/b.txt") == 1
    assert client.get_downloaded_target_bytes() == [b"app"]


def test_out_of_scope_entry_is_ignored_not_fatal(
    client: ClientRunner, server: SimulatorServer
) -> None:
    """A role listing a target outside its delegated paths: that entry is ignored, the
    role's other targets and everyone else's still download."""
    init_data, repo = server.new_test(client.test_name)
    assert client.init_client(init_data) == 0
    apps = Targets(expires=repo.safe_expiry)
    repo.add_delegation(Targets.type, DelegatedRole("apps", [], 1, False, ["apps/*"]), apps)
    repo.add_artifact("apps", b"app", "apps/a.txt")
    repo.add_artifact("apps", b"evil", "firmware/x.bin")
    repo.add_artifact(Targets.type, b"fw", "firmware/y.bin")
    repo.publish(["apps", Targets.type, Snapshot.type, Timestamp.type])

    assert client.download_target(init_data, "apps/a.txt") == 0
    assert client.download_target(init_data, "firmware/y.bin") == 0
    assert client.download_target(init_data, "firmware/x.bin") == 1
    assert client.get_downloaded_target_bytes() == [b"app", b"fw"]


def test_equal_version_timestamp_never_replaces_the_trusted_one(
    client: ClientRunner, server: SimulatorServer
) -> None:
    """A timestamp re-signed with the same version but other content is not trusted, so
    the next genuine timestamp is not mistaken for a rollback."""
    init_data, repo = server.new_test(client.test_name)
    assert client.init_client(init_data) == 0
    assert client.refresh(init_data) == 0
    trusted = repo.signed_mds[Timestamp.type][-1]

    repo.timestamp.expires = repo.safe_expiry + datetime.timedelta(days=1)
    repo.timestamp.version -= 1
    repo.publish([Timestamp.type], verify_version=False)  # same version, new bytes
    assert repo.signed_mds[Timestamp.type][-1] != trusted
    assert client.refresh(init_data) == 0
    with open(f"{client.metadata_dir}/timestamp.json", "rb") as f:
        assert f.read() == trusted

    repo.publish([Timestamp.type], verify_version=False)  # the next genuine version
    assert client.refresh(init_data) == 0
    assert client.version(Timestamp.type) == 2


def test_clock_stepped_back_does_not_wedge(
    client: ClientRunner, server: SimulatorServer
) -> None:
    """A device whose clock ran ahead (before NTP corrected it) keeps working once the
    clock is back; expired metadata is still refused while the clock says so."""
    init_data, repo = server.new_test(client.test_name)
    assert client.init_client(init_data) == 0
    ahead = utils.get_date_n_days_in_future(20)
    assert client.refresh(init_data, fake_time=ahead) == 0
    repo.add_artifact(Targets.type, b"fix", "fix.txt")
    repo.publish([Targets.type, Snapshot.type, Timestamp.type])
    assert client.download_target(init_data, "fix.txt") == 0
    assert client.get_downloaded_target_bytes() == [b"fix"]
    # Past every expiry: refused (freeze protection still on).
    assert client.refresh(init_data, fake_time=utils.get_date_n_days_in_future(60)) == 1
