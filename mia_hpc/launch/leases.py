"""Shard leases: at most one live worker trains a shard, on one machine or across nodes sharing the store.

A lease is a small JSON file ``STORE.leases/shard-I-of-N.json`` beside the store (never inside it:
the store stays a pure Zarr tree) naming its owner: a random token, host and boot id, pid (and the
pid's start time, so a recycled pid is not mistaken for the owner), when it was taken and the
shadows it covers.

* Taking it is atomic: the record is written completely to a private temporary file, then
  ``os.link``-ed to the lease name, which fails if the name exists. ``link`` is atomic on local
  filesystems and on NFS (unlike ``O_EXCL`` on old NFS clients), so two workers on two nodes can
  never both succeed.
* The owner's heartbeat thread touches the file every :func:`heartbeat_s` seconds. A lease is
  stale when its owner is on this host and its process is gone (taken over at once), or, for an
  owner on another host, when the heartbeat is older than :func:`stale_s` (default 120 s, twelve
  heartbeats: clock skew between nodes and NFS attribute caching stay well inside it).
* A second worker refuses a live owner (:class:`LeaseHeld`, naming it) unless told to wait; an
  owner that has missed three heartbeats but is not stale yet is waited out, then taken over.
* A stale lease with token T is taken over by the one worker that links the marker
  ``.shard-I-of-N.json.after-T`` (a link again, so only one can). Holding it, the worker reads the
  lease once more and renames it to a private name only if it still carries T, then removes the
  marker and competes for the free name like everyone else. A racer that judged T stale earlier
  either fails to link the marker or, once it is free again, finds T gone and leaves the new
  owner's lease alone: a live lease is never moved, so its name is never free while someone holds
  it. Once T is renamed away it never comes back, which is why the marker can go at once. The one
  interleaving left is a stale-judged owner that is alive after all and releases between that read
  and the rename; the record renamed is then not T and is put back. A marker left by a worker that
  died inside this step is judged like a lease (its holder's process, or its age) and removed.
* The heartbeat checks that the file still carries its owner's token; if not, the lease is lost and
  :meth:`ShardLease.check`, called before every write of a shadow, stops the worker with
  :class:`LeaseLost`: a worker whose lease was taken over never writes again.

Torch-free.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from mia_hpc.contract.errors import LeaseHeld, LeaseLost


def heartbeat_s() -> float:
    """Seconds between heartbeats (``MIA_HPC_LEASE_HEARTBEAT_S``, default 10)."""
    return float(os.environ.get("MIA_HPC_LEASE_HEARTBEAT_S", "10"))


def stale_s() -> float:
    """Seconds without a heartbeat after which another host's lease is stale (``MIA_HPC_LEASE_STALE_S``, 120)."""
    return float(os.environ.get("MIA_HPC_LEASE_STALE_S", "120"))


#: Missed heartbeats after which a lease's owner is waited out rather than refused (see ``_silent``).
SILENT_BEATS = 3


def lease_dir(store: str | Path) -> Path:
    """The folder of a store's leases: ``STORE.leases`` beside it."""
    store = Path(store).absolute()
    return store.with_name(store.name + ".leases")


def pid_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot ('' where /proc cannot tell)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may contain spaces


def boot_id() -> str:
    """This machine's boot id ('' where there is none): two nodes misconfigured with one hostname still differ."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_alive(pid: int, start: str) -> bool:
    """Whether process ``pid`` exists and is the one that started at ``start`` (if known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    now = pid_start(pid)
    return not (start and now and now != start)


@dataclass(frozen=True)
class LeaseRecord:
    """What a lease file says about its owner."""

    token: str
    host: str
    pid: int
    pid_start: str
    taken: float
    shard: int
    n_shards: int
    shadows: tuple[int, int]
    boot: str = ""

    def owner(self) -> str:
        return f"pid {self.pid} on {self.host}"


def read_lease(path: Path) -> tuple[LeaseRecord, float] | None:
    """The record and heartbeat time of a lease file, or None if there is none (or it is being replaced)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
            beat = os.fstat(f.fileno()).st_mtime
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    raw["shadows"] = tuple(raw["shadows"])
    return LeaseRecord(**raw), beat


class ShardLease:
    """The lease of shard ``shard`` of ``n_shards`` of a store; use as a context manager."""

    def __init__(self, store: str | Path, shard: int, n_shards: int, shadows: range) -> None:
        self.store = Path(store)
        self.path = lease_dir(store) / f"shard-{shard}-of-{n_shards}.json"
        pid = os.getpid()
        self.record = LeaseRecord(uuid.uuid4().hex, socket.gethostname(), pid, pid_start(pid), time.time(), shard,
                                  n_shards, (shadows.start, shadows.stop), boot_id())
        self._stop = threading.Event()
        self._lost = False
        self._thread: threading.Thread | None = None

    # --- taking and giving back -------------------------------------------------------------
    def acquire(self, wait: float = 0.0) -> None:
        """Take the lease, waiting up to ``wait`` seconds for a live owner; else raise :class:`LeaseHeld`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait
        while True:
            if self._try_take():
                self._thread = threading.Thread(target=self._beat, name=f"lease {self.path.name}", daemon=True)
                self._thread.start()
                return
            held = read_lease(self.path)
            if held is None:
                continue  # released or being replaced between our link and our read: try again
            rec, beat = held
            if self._is_stale(rec, beat):
                self._take_over(rec)
                continue
            if time.monotonic() >= deadline and not self._silent(beat):
                raise LeaseHeld(
                    f"shard {rec.shard} of {rec.n_shards} of {self.store} "
                    f"(shadows {rec.shadows[0]}..{rec.shadows[1] - 1}) "
                    f"is being trained by {rec.owner()} since {time.strftime('%H:%M:%S', time.localtime(rec.taken))} "
                    f"(heartbeat {max(0.0, time.time() - beat):.0f} s ago; lease {self.path}); wait for it to finish "
                    f"(a lease with no heartbeat for {stale_s():.0f} s is taken over)")
            time.sleep(min(1.0, heartbeat_s()))

    def _try_take(self) -> bool:
        return self._link_record(self.path)

    def _link_record(self, name: Path) -> bool:
        """Create ``name`` holding our record, complete, or return False if it exists (atomic, NFS-safe)."""
        tmp = self.path.with_name(f".{self.path.name}.{self.record.token}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self.record), f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, name)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def _is_stale(self, rec: LeaseRecord, beat: float) -> bool:
        if rec.host == socket.gethostname() and rec.boot == boot_id():  # this machine: ask its process table
            return not pid_alive(rec.pid, rec.pid_start)
        return time.time() - beat > stale_s()

    @staticmethod
    def _silent(beat: float) -> bool:
        """Whether an owner has missed SILENT_BEATS heartbeats: probably dead (a node lost, a requeue
        after SIGKILL), so it is waited out until stale instead of refused (a requeued task would fail)."""
        return time.time() - beat > SILENT_BEATS * heartbeat_s()

    def _take_over(self, stale: LeaseRecord) -> None:
        """Remove the stale lease ``stale``, and only it (see the module docstring)."""
        marker = self.path.with_name(f".{self.path.name}.after-{stale.token}")
        if not self._link_record(marker):
            self._expire_marker(marker)
            time.sleep(0.05)  # another worker is taking it over: let it finish before we look again
            return
        try:
            held = read_lease(self.path)
            if held is None or held[0].token != stale.token or not self._is_stale(*held):
                return  # replaced, released or beating again since we judged it: nothing stale to remove
            self._remove_if(self.path, stale.token)
        finally:
            marker.unlink(missing_ok=True)

    def _remove_if(self, path: Path, token: str) -> None:
        """Remove ``path`` if it carries ``token``; a record with another token found there is put back."""
        grave = path.with_name(f".{path.name}.stale-{self.record.token}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return
        got = read_lease(grave)
        if got is not None and got[0].token != token:
            try:
                os.link(grave, path)
            except FileExistsError:
                pass
        grave.unlink(missing_ok=True)

    def _expire_marker(self, marker: Path) -> None:
        """Remove a take-over marker whose holder died inside the take-over (else the shard stays blocked)."""
        held = read_lease(marker)
        if held is not None and self._is_stale(*held):
            self._remove_if(marker, held[0].token)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        held = read_lease(self.path)
        if held is not None and held[0].token == self.record.token:
            self.path.unlink(missing_ok=True)

    # --- while held ---------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(heartbeat_s()):
            held = read_lease(self.path)
            if held is None or held[0].token != self.record.token:
                self._lost = True
                return
            os.utime(self.path)

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another worker has taken the lease over."""
        if self._lost:
            raise LeaseLost(f"shard {self.record.shard} of {self.record.n_shards} of {self.store}: this worker's "
                            f"lease {self.path} was taken over (no heartbeat for {stale_s():.0f} s?); it stops "
                            "without writing; its finished shadows are kept")

    def __enter__(self) -> "ShardLease":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
