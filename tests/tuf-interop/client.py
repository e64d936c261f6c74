#!/usr/bin/env python3
"""An independent TUF 1.0 client (python-tuf's ngclient) reading an edgeimg repository
from `edgeimg serve`: it proves the repository is readable by any conformant client, not
only by tough.

    client.py --root keys/root.json --metadata-url http://127.0.0.1:8080/tuf/metadata/ \
        --targets-url http://127.0.0.1:8080/tuf/targets/ --dir /tmp/client TARGET...

Trusts only the given root.json, refreshes (timestamp -> snapshot -> targets, following
delegations such as the `rollout` role for channel files), downloads each named target
(verified by length and hashes) and prints a JSON object: target name -> {path, length,
sha256}, plus the versions of the top-level roles it ended up trusting.

Needs python-tuf: `pip install tuf`.
"""

import argparse
import inspect
import json
import os
import sys

try:
    from tuf.ngclient import Updater
except ImportError:
    sys.exit("python-tuf is not installed: pip install tuf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="trusted root.json (version 1, as baked into images)")
    ap.add_argument("--metadata-url", required=True)
    ap.add_argument("--targets-url", required=True)
    ap.add_argument("--dir", required=True, help="client state: metadata/ and targets/ go here")
    ap.add_argument("targets", nargs="+", help="TUF target names to fetch")
    a = ap.parse_args()

    meta_dir = os.path.join(a.dir, "metadata")
    target_dir = os.path.join(a.dir, "targets")
    os.makedirs(meta_dir, exist_ok=True)
    os.makedirs(target_dir, exist_ok=True)
    with open(a.root, "rb") as f:
        root = f.read()

    kwargs = dict(
        metadata_dir=meta_dir,
        metadata_base_url=a.metadata_url,
        target_dir=target_dir,
        target_base_url=a.targets_url,
    )
    if "bootstrap" in inspect.signature(Updater.__init__).parameters:
        kwargs["bootstrap"] = root  # python-tuf >= 5: the trusted root is handed over
    elif not os.path.exists(os.path.join(meta_dir, "root.json")):
        with open(os.path.join(meta_dir, "root.json"), "wb") as f:
            f.write(root)
    updater = Updater(**kwargs)
    updater.refresh()

    out = {"targets": {}}
    for name in a.targets:
        info = updater.get_targetinfo(name)
        if info is None:
            print(f"target {name} is not in the repository", file=sys.stderr)
            return 2
        path = updater.find_cached_target(info) or updater.download_target(info)
        out["targets"][name] = {"path": path, "length": info.length, "sha256": info.hashes.get("sha256")}

    # The versions of what the client now trusts (read back from its own store).
    for role in ("root", "timestamp", "snapshot", "targets"):
        p = os.path.join(meta_dir, f"{role}.json")
        if os.path.exists(p):
            with open(p, "rb") as f:
                out[f"{role}_version"] = json.load(f)["signed"]["version"]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
