"""Private, throwaway PostgreSQL and RabbitMQ servers that fault tests may stop, crash and restart.

The machine's own services (PostgreSQL on 5432, RabbitMQ ``rabbit@localhost`` on
5672) are never touched: each server here gets its own ports, its own data
directory under a fresh temporary directory, and (for RabbitMQ) its own node
name and Erlang cookie. ``close()`` stops the server and deletes everything.

The code is plain blocking ``subprocess``; from async tests call it through
``await asyncio.to_thread(server.restart)``.

Both work as root (the usual case on the test machine):

* PostgreSQL refuses to run as root, so ``initdb``/``pg_ctl`` run as the
  ``postgres`` OS user (``runuser``) and the cluster lives in a directory that
  user owns. That directory is a fresh ``mkdtemp()`` under the system temp dir,
  not under ``base_dir``: pytest's ``tmp_path_factory`` directories sit below a
  root-only (0700) ``/tmp/pytest-of-root``, which ``postgres`` cannot enter.
  A ``postgres`` symlink in ``base_dir`` points at it for post-mortems.
* RabbitMQ runs as root straight from ``/usr/lib/rabbitmq/bin`` (the
  ``/usr/sbin`` wrappers would ``su`` to the ``rabbitmq`` user and use its
  cookie). ``HOME`` points at a private directory holding a private
  ``.erlang.cookie``, so neither ``/root`` nor ``/var/lib/rabbitmq`` is read or
  written. ``/etc/rabbitmq/rabbitmq-env.conf`` and ``rabbitmq.conf`` are
  replaced by private files: the system ones name ``rabbit@localhost`` and
  ``listeners.tcp.local = 127.0.0.1:5672``, which would collide with the
  system node. ``epmd`` (port 4369) is shared with the system node; that is
  how Erlang distribution works and is harmless.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

PG_BIN = Path(os.environ.get("FLOWSCRIBE_FAULTS_PG_BIN", "/usr/lib/postgresql/15/bin"))
RABBITMQ_BIN = Path(os.environ.get("FLOWSCRIBE_FAULTS_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))

# Ports are picked below the kernel's ephemeral range (32768-60999 here), so an
# outgoing connection cannot grab a stopped server's port before it restarts,
# and away from the ports RabbitMQ/Erlang use by default.
_PORT_RANGE = (20000, 32000)
_AVOID_PORTS = {25672, 4369, 5432, 5672, 15672}
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nobody listens on (nor lingers on), not handed out before by us."""
    for _ in range(1000):
        port = random.randrange(*_PORT_RANGE)
        if port in _AVOID_PORTS or port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # No SO_REUSEADDR: TIME_WAIT leftovers make the bind fail too.
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class _Timed:
    """Records how long the last start/stop/kill/restart took, in ``server.timings`` (seconds)."""

    timings: dict[str, float]

    @contextlib.contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        began = time.monotonic()
        yield
        self.timings[operation] = round(time.monotonic() - began, 3)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<{path}: {exc}>"


def _processes() -> dict[int, tuple[int, int, str, str, str]]:
    """Every process: pid -> (ppid, pgid, state, start time, command name)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session tty tpgid flags ... starttime(22nd)
        comm_end = stat.rindex(")")
        fields = stat[comm_end + 2 :].split()
        table[int(entry.name)] = (
            int(fields[1]), int(fields[2]), fields[0], fields[19], stat[stat.index("(") + 1 : comm_end]
        )
    return table


Proc = tuple[int, str, str]  # pid, start time, command name


def _family(root_pid: int) -> list[Proc]:
    """Live processes descending from ``root_pid`` or in its process group.

    Both are needed: ``erl_child_setup`` (and the ``inet_gethost`` it spawns)
    call setsid(), leaving beam's process group, while beam.smp itself is
    re-parented to init once the ``rabbitmq-server`` script is gone.
    """
    table = _processes()
    found = {pid for pid, (_, pgid, *_rest) in table.items() if pgid == root_pid}
    if root_pid in table:
        found.add(root_pid)
    frontier = set(found)
    while frontier:
        children = {pid for pid, (ppid, *_rest) in table.items() if ppid in frontier} - found
        found |= children
        frontier = children
    return sorted(
        (pid, table[pid][3], table[pid][4]) for pid in found if not _exited(pid, table[pid][2])
    )


def _alive(procs: list[Proc]) -> list[Proc]:
    """Those of ``procs`` still running (not gone, not a zombie, pid not reused)."""
    table = _processes()
    return [
        (pid, start, name) for pid, start, name in procs
        if pid in table and table[pid][3] == start and not _exited(pid, table[pid][2])
    ]


def _exited(pid: int, state: str) -> bool:
    """A zombie has exited, but a multithreaded one (beam.smp) only once all its threads are gone:

    its main thread turns "Z" first while the others are still tearing down,
    still holding the listening sockets.
    """
    if state not in ("Z", "X"):
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


class PrivatePostgres(_Timed):
    """A throwaway PostgreSQL cluster on its own port and data directory."""

    def __init__(
        self, base_dir: Path, *, startup_timeout: float = 60.0, port: int | None = None,
        settings: dict[str, str] | None = None, name: str = "postgres",
    ) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.name = name  # also the application_name it streams under as a standby
        self.extra_settings = settings or {}
        self.port = port if port is not None else free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.startup_timeout = startup_timeout
        self._as_root = os.geteuid() == 0
        if self._as_root:
            self.root = Path(tempfile.mkdtemp(prefix="flowscribe-fault-pg-"))
            shutil.chown(self.root, "postgres", "postgres")
            with contextlib.suppress(OSError):
                (self.base_dir / name).symlink_to(self.root)
        else:
            self.root = Path(tempfile.mkdtemp(prefix="pg-", dir=self.base_dir))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_file = self.root / "postgres.log"
        self._closed = False
        self.timings = {}
        atexit.register(self.close)

    # -- plumbing -------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(PG_BIN / argv[0]), *argv[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        proc = subprocess.run(
            cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                f"--- {self.log_file} ---\n{_tail(self.log_file)}"
            )
        return proc

    def _initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-instructions",
            # Only initdb's own final fsync of the fresh files is skipped; the
            # server itself runs with fsync on (process crashes are what we simulate).
            "--no-sync",
        )
        self._configure({
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "shared_buffers": "32MB",
            "max_connections": "50",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "logging_collector": "off",
        })

    def _configure(self, settings: dict[str, str]) -> None:
        """This server's own socket directory and settings (later lines win over earlier ones)."""
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if self._as_root:
            shutil.chown(self.socket_dir, "postgres", "postgres")
        settings = {
            **settings, "port": str(self.port), "unix_socket_directories": f"'{self.socket_dir}'",
            **self.extra_settings,
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# flowscribe fault-test server {self.name}\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def clone_as_standby(self, primary: PrivatePostgres) -> None:
        """Replace this server's data with a streaming standby of ``primary`` (pg_basebackup -R), and start it."""
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        with self._timed("clone"):
            self._run(
                "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                "-D", str(self.data_dir), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync",
                # The name the primary's synchronous_standby_names refers to.
                "-d", f"application_name={self.name}",
            )
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            self._configure({})
            # postgresql.auto.conf (where -R wrote it) is read last: name ourselves there.
            with (self.data_dir / "postgresql.auto.conf").open("a") as auto:
                auto.write(f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres"
                           f" application_name={self.name}'\n")
            self.start()

    def promote(self) -> None:
        """Make this standby a primary; returns once it accepts writes."""
        with self._timed("promote"):
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "promote", timeout=90)

    def kill(self) -> None:
        """kill -9 the whole server, as a machine dying takes it: the postmaster and every backend.

        pg_ctl starts the postmaster in a session of its own, so its process
        group is the server's processes and nothing else.
        """
        pid = self.postmaster_pid
        if pid is None:
            return
        with self._timed("kill"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while port_open(self.port) and time.monotonic() < deadline:
                time.sleep(0.02)
            # The killed postmaster may linger as a zombie nobody reaps (pg_ctl left it to
            # init): its pid file would make pg_ctl believe it still runs.
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    @property
    def running(self) -> bool:
        if not self.initialized:
            return False
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    @property
    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- API ------------------------------------------------------------------

    def start(self) -> None:
        """initdb on the first start; returns once the server accepts connections."""
        if self._closed:
            raise RuntimeError("server closed")
        with self._timed("start"):
            if not self.initialized:
                self._initdb()
            elif self.running:
                return
            self._run(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
                "-w", "-t", str(int(self.startup_timeout)), "start",
                timeout=self.startup_timeout + 30,
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop: "fast" (clean shutdown) or "immediate" (crash-like, WAL recovery on next start)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        if not self.running:
            return
        with self._timed(f"stop_{mode}"):
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop", timeout=90)

    def restart(self) -> None:
        """Clean stop ("fast") and start again, same port and data."""
        with self._timed("restart"):
            self.stop("fast")
            self.start()

    def close(self) -> None:
        """Stop if running and delete the data directory."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            if self.initialized and self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.base_dir / self.name).unlink()

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PrivatePostgres port={self.port} root={self.root}>"


# RabbitMQ 3.10.8 (Ra 2.2.0) registers each quorum queue's Ra server in a DETS
# file (mnesia/<node>/quorum/<node>/names.dets) written back only every 500 ms
# (auto_save; checked with `dets:info(ra_directory_reverse, auto_save)`).
# SIGKILL the node less than that after *declaring* a quorum queue and, after
# the restart, the queue is still listed but its Ra server is not found: it
# stays leaderless ("leader not known"; basic.get and consumers hang, 45 s+
# observed) and shows 0 messages. A real broker has the same window; newer Ra
# syncs the file on every registration (rabbitmq/ra#443). Fault tests should
# therefore let this much time pass between declaring topology and kill().
# Messages are not affected: they are in the Ra WAL, fsynced before the
# publisher confirm.
QUORUM_QUEUE_KILL_WINDOW = 0.5


class PrivateRabbitMQ(_Timed):
    """A throwaway RabbitMQ node on its own ports and data directory."""

    def __init__(
        self, base_dir: Path, *, startup_timeout: float = 90.0, cookie: str | None = None,
        extra_conf: str = "",
    ) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="rabbitmq-", dir=self.base_dir))
        self.port = free_port()
        self.dist_port = free_port()
        self.nodename = f"flowscribe-fault-{secrets.token_hex(4)}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.startup_timeout = startup_timeout
        self.log_file = self.root / "log" / "node.log"
        self.console_file = self.root / "console.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self.timings = {}

        home = self.root / "home"
        home.mkdir(mode=0o700)
        # One cookie per node, or one shared by the nodes of a private cluster.
        cookie_file = home / ".erlang.cookie"
        cookie_file.write_text(cookie or secrets.token_hex(20).upper())
        cookie_file.chmod(0o400)
        (self.root / "log").mkdir()
        (self.root / "conf.d").mkdir()
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("# private node: settings come from the environment\n")
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "disk_free_limit.absolute = 50MB\n"
            "log.console = false\n"
            "log.file.level = info\n"
            + extra_conf
        )
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))
        } | {
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(self.root / "conf.d"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),  # absent
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_MNESIA_DIR": str(self.root / "mnesia" / "node"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.root / "plugins-expand"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_LOGS": str(self.log_file),
            "RABBITMQ_PID_FILE": str(self.root / "node.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # Same as the system's rabbitmq-env.conf: epmd on loopback (it is shared).
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        atexit.register(self.close)

    # -- plumbing -------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS...`` against this node."""
        cmd = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, *args]
        proc = subprocess.run(
            cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pids(self) -> list[Proc]:
        """Live processes of the node: the rabbitmq-server script, beam.smp, erl_child_setup, inet_gethost..."""
        return _family(self._proc.pid) if self._proc is not None else []

    def _failure(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"{self.nodename}: {what}\n--- {self.console_file} ---\n{_tail(self.console_file)}\n"
            f"--- {self.log_file} ---\n{_tail(self.log_file)}"
        )

    def _reap(self, family: list[Proc], timeout: float) -> None:
        """Wait until every process in ``family`` is gone (SIGKILL them after ``timeout``)."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        killed = False
        while alive := _alive(family):
            if time.monotonic() > deadline:
                if killed:
                    raise self._failure(f"processes left over after SIGKILL: {alive}")
                for pid, _, _ in alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + 10
            try:
                self._proc.wait(timeout=0.05)  # reap the script (our child) as soon as it exits
            except subprocess.TimeoutExpired:
                pass
            else:
                time.sleep(0.05)  # the script is gone; beam/erl_child_setup are finishing
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        self._proc = None

    # -- API ------------------------------------------------------------------

    def start(self) -> None:
        """Start the node; returns once it accepts AMQP connections and ``await_startup`` succeeds."""
        with self._timed("start"):
            self._start()

    def stop(self) -> None:
        """Graceful stop (``rabbitmqctl stop``); waits until every process of the node is gone."""
        with self._timed("stop"):
            self._stop()

    def kill(self) -> None:
        """Crash: SIGKILL beam.smp and everything around it (script, erl_child_setup, inet_gethost).

        Mind QUORUM_QUEUE_KILL_WINDOW: a quorum queue declared less than ~0.5 s
        before the kill comes back broken.
        """
        with self._timed("kill"):
            self._kill()

    def restart(self) -> None:
        """Graceful stop and start again on the same ports and data directory."""
        with self._timed("restart"):
            self._stop()
            self._start()

    def _start(self) -> None:
        if self._closed:
            raise RuntimeError("server closed")
        if self.running:
            return
        if self._proc is not None:  # died on its own: collect what is left of it first
            self._reap(self.pids, 10)
        if port_open(self.port) or port_open(self.dist_port):
            raise RuntimeError(f"port {self.port} or {self.dist_port} is already taken")
        console = self.console_file.open("ab")
        try:
            self._proc = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,  # own session and process group: kill() takes it all
            )
        finally:
            console.close()
        deadline = time.monotonic() + self.startup_timeout
        while not port_open(self.port, timeout=0.2):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._reap(self.pids, 5)
                raise self._failure(f"rabbitmq-server exited with {code} during startup")
            if time.monotonic() > deadline:
                self._kill()
                raise self._failure(f"AMQP port {self.port} not open after {self.startup_timeout}s")
            time.sleep(0.05)
        remaining = max(5, int(deadline - time.monotonic()))
        proc = self.ctl("await_startup", "--timeout", str(remaining), timeout=remaining + 30, check=False)
        if proc.returncode != 0:
            self._kill()
            raise self._failure(f"await_startup failed: {proc.stdout}\n{proc.stderr}")

    def _stop(self) -> None:
        if self._proc is None:
            return
        family = self.pids
        if self.running:
            proc = self.ctl("stop", timeout=90, check=False)
            if proc.returncode != 0 and self.running:
                # The CLI could not reach the node: ask the start script (it forwards TERM to beam).
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._proc.pid, signal.SIGTERM)
        self._reap(family, 60)

    def _kill(self) -> None:
        if self._proc is None:
            return
        family = self.pids
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        for pid, _, _ in _alive(family):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reap(family, 10)

    def close(self) -> None:
        """Stop (killing: the data is thrown away anyway) and delete the node's directory."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateRabbitMQ:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PrivateRabbitMQ {self.nodename} port={self.port} root={self.root}>"


class PrivateRabbitMQCluster:
    """Three private RabbitMQ nodes joined into one cluster (``rabbitmqctl join_cluster``).

    Each node has its own name, AMQP and distribution ports, data and log
    directories (a PrivateRabbitMQ each); all share one private Erlang cookie,
    which their ``rabbitmqctl`` reads from the same private ``HOME``. Partitions
    are handled with ``pause_minority``, as deploy/ recommends: a node cut off
    from the others stops serving until it sees a majority again.
    """

    def __init__(self, base_dir: Path, *, size: int = 3) -> None:
        cookie = secrets.token_hex(20).upper()
        self.nodes = [
            PrivateRabbitMQ(Path(base_dir) / f"node{i}", cookie=cookie,
                            extra_conf="cluster_partition_handling = pause_minority\n")
            for i in range(size)
        ]
        self.urls = ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        """Start every node (at once), then join the others to the first."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(), self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.nodename)
            node.ctl("start_app")
        for node in self.nodes:
            node.ctl("await_startup", "--timeout", "60", timeout=90)

    def node(self, nodename: str) -> PrivateRabbitMQ:
        return next(node for node in self.nodes if node.nodename == nodename)

    def running_nodes(self) -> list[PrivateRabbitMQ]:
        return [node for node in self.nodes if node.running]

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl ARGS`` on the first node that answers; its output."""
        error: Exception | None = None
        for node in self.running_nodes():
            try:
                return node.ctl(*args, timeout=timeout).stdout
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                error = e
        raise RuntimeError(f"no node answered rabbitmqctl {' '.join(args)}: {error}")

    def connections_per_node(self) -> dict[str, int]:
        """Client connections by node name (``rabbitmqctl list_connections port``: the port they reached)."""
        by_port = {str(node.port): node.nodename for node in self.nodes}
        counts: dict[str, int] = {node.nodename: 0 for node in self.nodes}
        for port in self.ctl("list_connections", "port", "--silent").split():
            if port in by_port:
                counts[by_port[port]] += 1
        return counts

    def quorum_status(self, queue: str, vhost: str = "/") -> dict[str, str]:
        """Raft state by member node of a quorum queue (``rabbitmq-queues quorum_status``)."""
        import json

        for node in self.running_nodes():
            proc = subprocess.run(
                [str(RABBITMQ_BIN / "rabbitmq-queues"), "-n", node.nodename, "quorum_status", queue,
                 "-p", vhost, "--formatter", "json"],
                cwd=node.root, env=node.env, capture_output=True, text=True, timeout=60,
            )
            if proc.returncode == 0:
                return {str(m["Node Name"]): str(m["Raft State"]) for m in json.loads(proc.stdout)}
        raise RuntimeError(f"no node answered quorum_status {queue}")

    def queue_leader(self, queue: str, vhost: str = "/") -> str:
        """The node leading a quorum queue."""
        leaders = [node for node, state in self.quorum_status(queue, vhost).items() if state == "leader"]
        if not leaders:
            raise RuntimeError(f"no leader known for {queue}")
        return leaders[0]

    def move_leader(self, queue: str, nodename: str, vhost: str = "/", timeout: float = 60.0) -> None:
        """Make ``nodename`` the leader of a quorum queue (Ra's own leadership transfer)."""
        code = (
            f"{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"{vhost}\">>, queue, <<\"{queue}\">>)), "
            "{RaName, Leader} = amqqueue:get_pid(Q), "
            f"ra:transfer_leadership({{RaName, Leader}}, {{RaName, '{nodename}'}})."
        )
        deadline = time.monotonic() + timeout
        said = ""
        while True:
            try:
                if self.queue_leader(queue, vhost) == nodename:
                    return
                said = self.ctl("eval", code).strip()
            except RuntimeError as e:
                said = str(e)
            if time.monotonic() > deadline:
                status = self.quorum_status(queue, vhost)
                raise RuntimeError(f"{nodename} did not become the leader of {queue}: {said}; members {status}")
            time.sleep(0.5)

    def wait_until_clustered(self, timeout: float = 90.0) -> None:
        """Until every node runs and sees all the others (after a restart or a partition)."""
        deadline = time.monotonic() + timeout
        expected = {node.nodename for node in self.nodes}
        while True:
            try:
                import json

                status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
                if set(status.get("running_nodes", [])) == expected and not status.get("partitions"):
                    return
            except (RuntimeError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not whole after {timeout}s")
            time.sleep(0.2)

    def partition(self, node: PrivateRabbitMQ, seconds: float) -> None:
        """Cut ``node`` off from the others at the Erlang distribution level for ``seconds``, then heal.

        This machine has neither iptables nor nftables, and a network namespace
        per node would need its own epmd and routes; Erlang's own
        ``net_kernel:allow/1`` refuses distribution connections from and to any
        node not listed, which is what a partition is to the nodes. Listing
        only the node itself and dropping its links cuts it off; a process
        left on it empties the list again after ``seconds`` (it must heal
        itself: while cut off, no CLI can reach it either, the CLI being a node;
        ``allow/1`` can only add to the list, hence the state replaced).
        """
        others = "[" + ",".join(f"'{n.nodename}'" for n in self.nodes if n is not node) + "]"
        code = (
            f"Others = {others}, "
            "net_kernel:allow([node()]), "
            "[erlang:disconnect_node(N) || N <- Others], "
            f"spawn(fun() -> timer:sleep({int(seconds * 1000)}), "
            # Heal: back to no list at all (allow/1 can only add), so CLI nodes get in again.
            "Self = [node()], "
            "sys:replace_state(net_kernel, fun(S) -> list_to_tuple("
            "[case E of Self -> []; _ -> E end || E <- tuple_to_list(S)]) end) end), "
            "ok."
        )
        node.ctl("eval", code)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> PrivateRabbitMQCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class PrivatePostgresPair:
    """A private PostgreSQL primary and a streaming standby of it (synchronous unless told otherwise).

    ``failover()`` is what an operator or Patroni does when the primary dies:
    promote the standby. ``rebuild()`` makes the dead one a standby of the new
    primary, so the pair can fail over again.
    """

    def __init__(self, base_dir: Path) -> None:
        base_dir = Path(base_dir)
        replication = {"wal_level": "replica", "max_wal_senders": "5", "hot_standby": "on",
                       "wal_keep_size": "'64MB'"}
        self.servers = [
            PrivatePostgres(base_dir, name=f"pg{i}", settings=replication) for i in range(2)
        ]
        self.primary, self.standby = self.servers

    def url(self, database: str) -> str:
        """libpq's multi-host URL over both servers, for whichever is the primary."""
        hosts = ",".join(f"127.0.0.1:{server.port}" for server in self.servers)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def start(self, synchronous: bool = True) -> None:
        self.primary.start()
        self.standby.clone_as_standby(self.primary)
        self.set_synchronous(synchronous)

    def set_synchronous(self, synchronous: bool) -> None:
        """Commits wait for the standby (``synchronous_standby_names``), or not."""
        names = self.standby.name if synchronous else ""
        self.primary._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres", "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-c", f"ALTER SYSTEM SET synchronous_standby_names = '{names}'",
            "-c", "SELECT pg_reload_conf()",
        )
        expected = "sync" if synchronous else "async"
        deadline = time.monotonic() + 30
        while self._sync_state() != expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"standby not {expected} after 30 s")
            time.sleep(0.05)

    def _sync_state(self) -> str:
        return self.primary._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres", "-d", "postgres",
            "-Atc", f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{self.standby.name}'",
        ).stdout.strip()

    def failover(self) -> None:
        """kill -9 the primary, promote the standby: the two swap roles."""
        self.primary.kill()
        self.standby.promote()
        self.primary, self.standby = self.standby, self.primary

    def rebuild(self, synchronous: bool = True) -> None:
        """The dead old primary comes back as a standby of the new one."""
        self.standby.clone_as_standby(self.primary)
        self.set_synchronous(synchronous)

    def close(self) -> None:
        for server in self.servers:
            server.close()
