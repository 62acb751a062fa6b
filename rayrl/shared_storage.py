"""Every worker of a run must see the checkpoint directory the coordinator writes: a node with a disk of its
own at that path would train, then fail the first save (and leave its shards there). Checked whenever
workers are brought up, before they train."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from rayrl.checkpoint.storage_check import remove_marker, write_marker
from rayrl.config import ConfigError

if TYPE_CHECKING:
    from rayrl.workers.fleet import Fleet


def check_shared(fleet: Fleet, roles: set[str], cfg: Any, checkpoint_dir: str, emit: Callable[..., Any]) -> None:
    """A marker with a fresh nonce, read back by each worker of ``roles``, then removed; a worker that cannot
    is a config error (exit 2, and a ``storage_not_shared`` event) naming its node, the path and the fix."""
    options = cfg.runner.checkpoint.storage_options
    path, nonce = write_marker(checkpoint_dir, options)
    try:
        answers = fleet.read_storage_marker(path, nonce, roles)
    finally:
        remove_marker(path, options)
    blind = {wid: a for wid, a in sorted(answers.items(), key=lambda item: item[0].sort_key()) if a["problem"]}
    if not blind:
        return
    nodes: dict[str, dict[str, Any]] = {}
    for wid, a in blind.items():
        nodes.setdefault(a["node"], {"ip": a["ip"], "workers": []})["workers"].append(str(wid))
    where = "; ".join(f"{', '.join(n['workers'])} on node {n['ip']} (Ray node id {node})"
                      for node, n in nodes.items())
    first = next(iter(blind.values()))
    key = "runner.checkpoint.dir" if cfg.runner.checkpoint.dir else "runner.output_dir"
    message = (f"{key}: the checkpoint directory {checkpoint_dir} is not the same storage on "
               f"every node: {where} cannot read the marker this run wrote there ({first['problem']}). "
               "Mount one shared filesystem at the same path on every node (NFS, Lustre, a cloud file "
               "store), or keep the checkpoints on object storage")
    emit("storage_not_shared", message, path=checkpoint_dir, node=first["node"], ip=first["ip"],
         workers={str(w): a for w, a in blind.items()})
    raise ConfigError(message)
