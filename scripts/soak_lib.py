"""The soak of `scripts/soak` (issue 12): an hour of mixed load on the real
binaries with periodic faults, sampled every few seconds, then judged.

Stdlib only (asyncio): a minimal WebSocket client, RESP client and HTTP/1.1
client live here, so the soak needs nothing but python3, redis-server and
nginx next to the Tidings binaries.

  processes   redis-server (AOF, temp dir, free port), gateway gw1 and gw2,
              one publisher, nginx with deploy/nginx/nginx.conf rewritten to
              local ports (the same four lines crates/testkit's Nginx rewrites)
  clients     N WebSocket clients through nginx, each in one workspace, with
              the semantics of crates/client: resume with `since=<last id>`,
              drop ids already seen, 1012 -> reconnect after a 0-1 s jitter,
              otherwise full-jitter backoff (1 s doubling to 30 s),
              `{"type":"ping"}` every 20 s and a reconnect when no pong
              comes within 10 s. Some connect with batch=1, some with an
              event_types filter. A few reconnect on purpose every second
              (churn: people reloading dashboards).
  load        durable events through the publisher's HTTP API (arrays of 1-3),
              durable events by EVALSHA of scripts/publish.lua (extended form
              with a delivery key, so a retry after a timeout is safe),
              live-only bare PUBLISH, Argo CD webhooks (the fixtures, with a
              bearer token; some deliveries sent twice on purpose) and the
              publisher's host metrics
  faults      every few minutes, rotating: SIGTERM a gateway (drain) and
              restart it, SIGKILL a gateway and restart it, CLIENT KILL TYPE
              pubsub, SIGSTOP Redis for a few seconds then SIGCONT, restart
              the publisher (and, with --faults all, restart Redis)
  samples     every --sample-secs: RSS, fds, threads, CPU of every process,
              the gateways' and publisher's /metrics, Redis INFO
  verdicts    delivery accounting (lost, duplicates, recovery times), leak
              slopes, repeating WARN/ERROR lines, summary table and JSON

Verdicts (exit 1 on any):
  delivery    a durable event lost by a client, a duplicate delivered to the
              application (same src/seq under a new id), recovered:false, a
              live-only event lost outside a fault window and outside that
              client's own reconnect, a redelivered webhook published again
  recovery    a fault not healed and caught up (every client holding an event
              published after the heal) within --recovery-limit, or caught up
              more than --max-recovery-secs (15 s) after the heal
  leaks       per process series (a restart starts a new one), over the steady
              samples (after --warmup-secs, outside every fault window):
              RSS   pooled within-segment slope (each steady stretch keeps its
                    own level, so clients moved by a fault, or the Redis pool
                    growing, are level shifts, not trends) > 1 MiB / 10 min;
              fds   beside the clients' sockets and the Redis pool, overall
                    slope > 1 / 10 min; the pool itself above its cap (34)
              threads overall slope > 1 / 10 min
              and in each case the slope at least 3 standard errors above 0.
              Why these: 1 MiB / 10 min is 6 MiB an hour, a third of a
              gateway's ~16-25 MiB here, and would take a 1 GiB pod down
              within a week; the current code measures +0.4-0.8 over its first
              minutes and ~0 after. Descriptors and threads are counts: any
              sustained growth beside the clients is a leak, 1 / 10 min allows
              transient sockets. Fewer than --min-steady-secs of steady samples
              give no verdict (n/a), so short trials mostly say n/a.
  logs        a WARN/ERROR line (or nginx 5xx, or a non-JSON line such as a
              panic) that repeats outside the windows of the faults that reach
              that process; an ERROR outside them even once
  metrics     tidings_broker_reconnects_total rising, or
              tidings_broker_connected 0, outside fault windows; more than 3
              Redis pub/sub clients outside them; events dropped as invalid;
              a process exiting unexpectedly (it is restarted and reported)

Every event the soak publishes carries (src, seq) per workspace, so each
client checks for gaps and duplicates per source in O(1) memory. A publish
whose outcome is unknown (a timeout, a 5xx) is never retried blindly: its
events are marked *uncertain* and count neither as lost when missing nor as
an error when they arrive once. Webhooks and EVALSHA publishes are retried
with the same delivery key until they succeed: they must arrive exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import ctypes
import glob
import hashlib
import hmac
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JWT_SECRET = "soak-jwt-secret"
PUBLISH_TOKEN = "soak-publish-token"
ARGOCD_TOKEN = "soak-argocd-token"
SERVER_TYPES = {
    "connected", "pong", "lagged", "error", "batch", "subscribed", "unsubscribed",
    "filter_updated", "metrics", "history", "authenticated",
}
DURABLE_SOURCES = ("http", "lua", "argo_d", "argo_h")
FAULTS_DEFAULT = ("gw-term", "gw-kill", "pubsub-kill", "redis-stop", "publisher-restart")
FAULTS_ALL = FAULTS_DEFAULT + ("redis-restart",)
# Which processes' log lines a fault may explain, besides nginx's.
FAULT_AFFECTS = {
    "gw-term": lambda f: {f.target},
    "gw-kill": lambda f: {f.target},
    "pubsub-kill": lambda f: {"gw1", "gw2", "publisher"},
    "redis-stop": lambda f: {"gw1", "gw2", "publisher", "redis"},
    "redis-restart": lambda f: {"gw1", "gw2", "publisher", "redis"},
    "publisher-restart": lambda f: {"publisher"},
}


def now() -> float:
    return time.time()


# ---------------------------------------------------------------- small tools

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt_hs256(secret: str, claims: dict) -> str:
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def parse_rfc3339(text: str) -> float | None:
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?Z", text)
    if not m:
        return None
    import calendar
    base = calendar.timegm(tuple(int(x) for x in m.groups()[:6]) + (0, 0, 0))
    return base + (float(m.group(7)) if m.group(7) else 0.0)


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(math.ceil(p / 100.0 * len(v))) - 1))
    return v[k]


def r3(x):
    return None if x is None else round(x, 3)


# ------------------------------------------------------------------ RESP client

class RespError(Exception):
    pass


class Redis:
    """One connection, one command at a time; any failure or timeout closes
    it, so a late reply can never be read as the answer to the next command."""

    def __init__(self, port: int):
        self.port = port
        self.reader = None
        self.writer = None

    def close(self):
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        self.reader = self.writer = None

    @staticmethod
    def encode(args) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    async def _read(self):
        line = await self.reader.readuntil(b"\r\n")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = await self.reader.readexactly(n + 2)
            return data[:-2].decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [await self._read() for _ in range(n)]
        raise RespError(f"bad reply {line!r}")

    async def cmd(self, *args, timeout: float = 3.0):
        try:
            return await asyncio.wait_for(self._cmd(args), timeout)
        except BaseException:
            self.close()
            raise

    async def _cmd(self, args):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(self.encode(args))
        await self.writer.drain()
        reply = await self._read()
        if isinstance(reply, RespError):
            raise reply
        return reply


# ------------------------------------------------------------------ HTTP client

class Http:
    """HTTP/1.1 with keep-alive, one request at a time."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.reader = self.writer = None
        self.last_used = 0.0

    def close(self):
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        self.reader = self.writer = None

    async def request(self, method, path, headers=None, body: bytes = b"", timeout: float = 10.0):
        try:
            return await asyncio.wait_for(self._request(method, path, headers or {}, body), timeout)
        except BaseException:
            self.close()
            raise

    async def _request(self, method, path, headers, body):
        # An idle keep-alive connection may be closed by the peer any moment: start afresh.
        if self.writer is not None and now() - self.last_used > 20:
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        parts = status_line.decode("latin1").split(" ", 2)
        status = int(parts[1])
        hdrs = {}
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            k, _, v = line.decode("latin1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            data = await self.reader.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(chunks)
        else:
            data = await self.reader.read()
            hdrs["connection"] = "close"
        self.last_used = now()
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, data


async def http_get(port, path, timeout=2.0):
    h = Http(port)
    try:
        return await h.request("GET", path, {"Connection": "close"}, timeout=timeout)
    finally:
        h.close()


def parse_metrics(text: str) -> dict:
    """Prometheus text -> {family: summed value over labels} plus {family{labels}: value}."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        try:
            name_labels, value = line.rsplit(" ", 1)
            v = float(value)
        except ValueError:
            continue
        out[name_labels] = v
        family = name_labels.split("{", 1)[0]
        if "{" in name_labels:
            out[family] = out.get(family, 0.0) + v
    return out


# ------------------------------------------------------------------ processes

_libc = None


def _child_setup():
    # New session (a terminal's CTRL-C reaches only the driver, which then
    # stops everything in order) and a parent-death signal, so nothing
    # outlives a driver that was itself killed.
    os.setsid()
    try:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Proc:
    def __init__(self, soak, name, argv, env=None, port=None, ready_path="/readyz", log=None):
        self.soak = soak
        self.name = name
        self.argv = argv
        self.env = env or {}
        self.port = port
        self.ready_path = ready_path
        self.log_path = log or os.path.join(soak.out, f"{name}.log")
        self.popen = None
        self.gen = 0
        self.started_at = 0.0
        self.expected_exit = False
        self.exits = []  # (gen, returncode, expected)
        self.stopped = False  # SIGSTOPped

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def start(self):
        self.gen += 1
        env = dict(os.environ)
        env.update(self.env)
        if self.name.startswith("gw"):
            env["TIDINGS_INSTANCE_ID"] = f"{self.name}-{self.gen}"
        logf = open(self.log_path, "ab")
        logf.write(f"==== soak: start {self.name} generation {self.gen} at {rfc3339(now())}\n".encode())
        logf.flush()
        self.popen = subprocess.Popen(self.argv, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, preexec_fn=_child_setup, cwd=self.soak.out)
        logf.close()
        self.started_at = now()
        self.expected_exit = False
        self.stopped = False
        self.soak.record_pid(self)
        self.soak.timeline("start", proc=self.name, gen=self.gen, pid=self.popen.pid)

    def send(self, sig):
        if self.alive():
            os.kill(self.popen.pid, sig)

    async def wait_exit(self, timeout):
        deadline = now() + timeout
        while now() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                return True
            await asyncio.sleep(0.05)
        return False

    def note_exit(self):
        if self.popen is not None and self.popen.poll() is not None:
            rc = self.popen.returncode
            if not self.exits or self.exits[-1][0] != self.gen:
                self.exits.append((self.gen, rc, self.expected_exit))
                self.soak.timeline("exit", proc=self.name, gen=self.gen, rc=rc, expected=self.expected_exit)

    async def stop(self, sig=signal.SIGTERM, timeout=45.0):
        """Stop, expectedly; SIGKILL only if SIGTERM was not enough (never nginx)."""
        if not self.alive():
            self.note_exit()
            return True
        self.expected_exit = True
        if self.stopped:
            self.send(signal.SIGCONT)
            self.stopped = False
        self.send(sig)
        ok = await self.wait_exit(timeout)
        if not ok and self.name != "nginx":
            self.soak.problem(f"{self.name} did not exit within {timeout:.0f} s of {signal.Signals(sig).name}; SIGKILL")
            self.send(signal.SIGKILL)
            await self.wait_exit(5)
        self.note_exit()
        return ok

    async def wait_ready(self, timeout=30.0):
        deadline = now() + timeout
        while now() < deadline:
            if not self.alive():
                self.note_exit()
                raise RuntimeError(f"{self.name} exited during start-up (see {self.log_path})")
            try:
                if self.name == "redis":
                    r = Redis(self.port)
                    try:
                        if await r.cmd("PING", timeout=1) == "PONG":
                            return now()
                    finally:
                        r.close()
                else:
                    status, _, _ = await http_get(self.port, self.ready_path, timeout=1)
                    if status == 200:
                        return now()
            except (OSError, asyncio.TimeoutError, RespError, asyncio.IncompleteReadError, ValueError):
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s (see {self.log_path})")

    async def ready_now(self) -> bool:
        try:
            status, _, _ = await http_get(self.port, self.ready_path, timeout=1)
            return status == 200
        except Exception:
            return False


def proc_stats(pid):
    """RSS KiB, fds, threads, CPU seconds of one process from /proc (None if gone)."""
    try:
        rss = threads = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rss, fds, threads, cpu
    except (OSError, ValueError, IndexError):
        return None


def tcp_sockets():
    """inode -> (local port, remote port) of every TCP socket (IPv4 and IPv6)."""
    out = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) < 10:
                        continue
                    out[parts[9]] = (int(parts[1].rsplit(":", 1)[1], 16), int(parts[2].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return out


def socket_kinds(pid, own_port, redis_port, socks):
    """(accepted sockets on own_port, sockets to Redis) of one process."""
    accepted = to_redis = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if not link.startswith("socket:["):
                continue
            ports = socks.get(link[8:-1])
            if ports is None:
                continue
            if ports[0] == own_port and ports[1] != 0:
                accepted += 1
            elif ports[1] == redis_port:
                to_redis += 1
    except OSError:
        return None, None
    return accepted, to_redis


def children_of(pid):
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            if ppid == pid:
                kids.append(int(stat.split("/")[2]))
        except (OSError, ValueError):
            pass
    return kids


# ------------------------------------------------------------------ WebSocket client

def mask_frame(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    k = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big") if n else b""
    return head + key + masked


class WSProto(asyncio.Protocol):
    def __init__(self, client, request: bytes):
        self.client = client
        self.request = request
        self.transport = None
        self.buf = bytearray()
        self.upgraded = False
        self.handshake = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code = None
        self.close_sent = False
        self.frag = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def send_text(self, text: str):
        if self.transport and not self.transport.is_closing():
            self.transport.write(mask_frame(1, text.encode()))

    def send_close(self, code=1000):
        if self.transport and not self.transport.is_closing() and not self.close_sent:
            self.close_sent = True
            self.transport.write(mask_frame(8, code.to_bytes(2, "big")))

    def abort(self):
        if self.transport:
            self.transport.abort()

    def data_received(self, data):
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self.abort()
                return
            head = bytes(buf[:end]).decode("latin1").split("\r\n")
            del buf[:end + 4]
            try:
                status = int(head[0].split(" ")[1])
            except (IndexError, ValueError):
                status = 0
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if not self.handshake.done():
                self.handshake.set_result((status, headers))
            if status != 101:
                self.transport.close()
                return
            self.upgraded = True
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            ln = b1 & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 4], "big")
                hl = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hl = 10
            if b1 & 0x80:
                self.client.soak.problem("the server sent a masked frame")
                self.abort()
                return
            if n - pos < hl + ln:
                break
            payload = bytes(buf[pos + hl:pos + hl + ln])
            pos += hl + ln
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == 1 or opcode == 0:
                if opcode == 1 and fin:
                    self.client.on_text(payload)
                elif opcode == 1:
                    self.frag = [payload]
                elif self.frag is not None:
                    self.frag.append(payload)
                    if fin:
                        whole = b"".join(self.frag)
                        self.frag = None
                        self.client.on_text(whole)
            elif opcode == 9:
                if self.transport and not self.transport.is_closing():
                    self.transport.write(mask_frame(10, payload))
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send_close(self.close_code if self.close_code < 5000 else 1000)
                self.transport.close()
            # pong (10) and binary (2) frames are ignored
        if pos:
            del buf[:pos]

    def connection_lost(self, exc):
        if not self.handshake.done():
            self.handshake.set_result((0, {}))
        if not self.closed.done():
            self.closed.set_result(self.close_code)


class SrcTrack:
    __slots__ = ("next", "got_uncertain")

    def __init__(self):
        self.next = 1
        self.got_uncertain = None


class Client:
    def __init__(self, soak, index, workspace, batch, filtered):
        self.soak = soak
        self.index = index
        self.ws = workspace
        self.batch = batch
        self.filtered = filtered
        self.sub = f"soak-user-{index % 250}"
        self.token = jwt_hs256(JWT_SECRET, {
            "sub": self.sub, "workspace_id": workspace,
            "exp": int(now() + soak.args.minutes * 60 + 7200), "iat": int(now()),
        })
        self.last_id = None
        self.last_id_str = soak.baseline[workspace]
        self.track = {}
        self.proto = None
        self.connected = False
        self.server = None
        self.epoch = 0
        self.connected_at = 0.0
        self.down_since = None
        self.down_reason = None
        self.voluntary = False
        self.awaiting_pong = None
        self.last_durable_t = 0.0
        self.last_live_epoch = None
        self.stopping = False
        # figures
        self.received = 0
        self.accepted_durable = 0
        self.wire_dups = 0
        self.app_dups = {}
        self.lost = {}
        self.lagged = 0
        self.recovered_false = 0
        self.errors = 0
        self.connects = 0

    def expects(self, src):
        if self.filtered:
            return src in ("http", "lua", "live")
        return True

    def url_path(self):
        p = f"/ws?token={self.token}&workspace_id={self.ws}"
        if self.last_id_str:
            p += f"&since={self.last_id_str}"
        if self.batch:
            p += "&batch=1"
        if self.filtered:
            p += "&event_types=soak"
        return p

    # --- the hot path: one text frame
    def on_text(self, payload: bytes):
        try:
            obj = json.loads(payload)
        except ValueError:
            self.soak.problem(f"client {self.index}: a frame that is not JSON: {payload[:200]!r}")
            return
        typ = obj.get("type")
        if typ in SERVER_TYPES and "id" not in obj:
            if typ == "batch":
                for e in obj.get("events", ()):
                    self.on_event(e)
            elif typ == "pong":
                self.awaiting_pong = None
            elif typ == "connected":
                self.on_connected(obj)
            elif typ == "lagged":
                self.lagged += 1
                self.soak.note_client_issue("lagged", self, obj)
            elif typ == "error":
                self.errors += 1
                self.soak.note_client_issue("error", self, obj)
            return
        self.on_event(obj)

    def on_connected(self, obj):
        if self.connected:
            return
        self.connected = True
        self.connected_at = now()
        self.epoch += 1  # before any event of this connection is handled
        self.connects += 1
        self.server = obj.get("server")
        if obj.get("recovered") is False:
            self.recovered_false += 1
            self.soak.note_client_issue("recovered_false", self, obj)
        t = now()
        if self.down_since is not None:
            self.soak.reconnects.append((self.down_since, t, self.down_reason, self.index))
            self.down_since = None
        self.soak.connected_count += 1

    def on_event(self, e):
        self.received += 1
        if e.get("workspace_id") != self.ws:
            self.soak.problem(f"client {self.index} of {self.ws} got an event of {e.get('workspace_id')}: {str(e)[:200]}")
            return
        if self.filtered and e.get("type") != "soak":
            self.soak.problem(f"client {self.index} (event_types=soak) got a {e.get('type')}")
        eid = e.get("id")
        if eid is not None:
            ms, _, sq = eid.partition("-")
            key = (int(ms), int(sq))
            if self.last_id is not None and key <= self.last_id:
                self.wire_dups += 1
                return
            self.last_id = key
            self.last_id_str = eid
            self.accepted_durable += 1
        typ = e.get("type")
        if typ == "soak":
            d = e.get("data") or {}
            src = d.get("src")
            seq = d.get("seq")
            if src in ("http", "lua"):
                t = d.get("t", 0.0)
                if t > self.last_durable_t:
                    self.last_durable_t = t
            elif src == "live":
                if eid is not None:
                    self.soak.problem(f"a live-only event arrived with an id: {e}")
                self.check(src, seq, d.get("t", 0.0))
                self.last_live_epoch = self.epoch
                return
            elif src == "base":
                return
            if seq is not None:
                self.check(src, seq, d.get("t", 0.0))
        elif typ in ("deployment_update", "health_update"):
            ref = e.get("entity_ref") or ""
            if ref.startswith("component:default/soak-"):
                try:
                    seq = int(ref.rsplit("-", 1)[1])
                except ValueError:
                    return
                self.check("argo_d" if typ == "deployment_update" else "argo_h", seq, 0.0)
        elif typ == "metrics_update":
            self.soak.host_metrics_received += 1

    def check(self, src, seq, t):
        tr = self.track.get(src)
        if tr is None:
            tr = self.track[src] = SrcTrack()
        unc = self.soak.uncertain[self.ws][src]
        if unc and seq in unc:
            if tr.got_uncertain is None:
                tr.got_uncertain = set()
            if seq in tr.got_uncertain:
                self.app_dups[src] = self.app_dups.get(src, 0) + 1
                self.soak.note_dup(self, src, seq)
            else:
                tr.got_uncertain.add(seq)
            if seq >= tr.next:
                self.gap(src, tr.next, seq, t)
                tr.next = seq + 1
            return
        if seq == tr.next:
            tr.next = seq + 1
        elif seq > tr.next:
            self.gap(src, tr.next, seq, t)
            tr.next = seq + 1
        else:
            if tr.got_uncertain is None or seq not in tr.got_uncertain:
                self.app_dups[src] = self.app_dups.get(src, 0) + 1
                self.soak.note_dup(self, src, seq)

    def gap(self, src, first, upto, t):
        """Events first..upto-1 of `src` never arrived (uncertain ones excepted)."""
        unc = self.soak.uncertain[self.ws][src]
        missing = sum(1 for s in range(first, upto) if s not in unc) if unc else upto - first
        if not missing:
            return
        self.lost[src] = self.lost.get(src, 0) + missing
        explained_by_reconnect = src == "live" and self.last_live_epoch is not None and self.last_live_epoch != self.epoch
        self.soak.gaps.append({
            "client": self.index, "ws": self.ws, "src": src, "first": first, "last": upto - 1,
            "missing": missing, "at": now(), "t_next": t,
            "client_reconnected": explained_by_reconnect,
            "since_connect_s": round(now() - self.connected_at, 3), "server": self.server,
        })

    # --- the connection loop (crates/client semantics)
    async def run(self, start_delay=0.0):
        await asyncio.sleep(start_delay)
        failures = 0
        soak = self.soak
        while not self.stopping:
            ended, was_connected, retry_after = await self.connect_once()
            if self.stopping:
                break
            if was_connected:
                failures = 0
            if ended == "voluntary":
                delay = random.uniform(0.0, 0.3)
            elif ended == 1012:
                delay = random.random()
            elif ended == 4003:
                soak.problem(f"client {self.index} closed 4003 (forbidden): stops")
                break
            elif ended == "refused" and retry_after is not None:
                delay = max(retry_after, random.uniform(0, min(30.0, 2.0 ** failures)))
            else:
                delay = random.uniform(0, min(30.0, 1.0 * 2.0 ** failures))
            failures += 1
            await asyncio.sleep(delay)

    async def connect_once(self):
        soak = self.soak
        loop = asyncio.get_running_loop()
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {self.url_path()} HTTP/1.1\r\nHost: 127.0.0.1:{soak.nginx_port}\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
        was_connected = False
        self.voluntary = False
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: WSProto(self, request), "127.0.0.1", soak.nginx_port), 10)
        except (OSError, asyncio.TimeoutError):
            soak.counters["ws_connect_failed"] += 1
            return None, False, None
        self.proto = proto
        try:
            status, headers = await asyncio.wait_for(asyncio.shield(proto.handshake), 10)
            if status != 101:
                soak.counters[f"ws_refused_{status}"] += 1
                ra = headers.get("retry-after")
                proto.abort()
                return "refused", False, float(ra) if ra and ra.isdigit() else None
            # `connected` is the first message.
            deadline = now() + 10
            while not self.connected and not proto.closed.done() and now() < deadline:
                await asyncio.sleep(0.02)
            if not self.connected:
                proto.abort()
                code = proto.close_code
                soak.counters["ws_no_connected"] += 1
                return code, False, None
            was_connected = True
            # The session: heartbeat pings, until the socket ends.
            while True:
                try:
                    code = await asyncio.wait_for(asyncio.shield(proto.closed), soak.args.ping_secs)
                    break
                except asyncio.TimeoutError:
                    if self.awaiting_pong is not None and now() - self.awaiting_pong > 10:
                        soak.counters["ws_pong_timeout"] += 1
                        proto.abort()
                        code = await proto.closed
                        code = "silent"
                        break
                    if self.awaiting_pong is None:
                        self.awaiting_pong = now()
                        proto.send_text('{"type":"ping"}')
            return ("voluntary" if self.voluntary else code), True, None
        finally:
            if self.connected:
                self.connected = False
                soak.connected_count -= 1
                self.down_since = now()
                self.down_reason = "voluntary" if self.voluntary else (proto.close_code or "dropped")
                if not self.stopping:
                    soak.close_codes[str(self.down_reason)] = soak.close_codes.get(str(self.down_reason), 0) + 1
            self.awaiting_pong = None
            self.proto = None
            if not proto.closed.done():
                proto.abort()

    def recycle(self):
        """Close on purpose (a page reload); the loop reconnects with since."""
        if self.proto is not None and self.connected:
            self.voluntary = True
            self.proto.send_close(1000)
            p = self.proto
            asyncio.get_running_loop().call_later(2.0, p.abort)

    def stop(self):
        self.stopping = True
        if self.proto is not None:
            self.proto.send_close(1000)
            self.proto.abort()


# ------------------------------------------------------------------ faults, samples

@dataclass
class Fault:
    kind: str
    target: str | None
    t0: float
    heal: float | None = None
    ready: float | None = None
    all_back: float | None = None
    caught_up: float | None = None
    settled: float | None = None
    end: float | None = None
    notes: list = field(default_factory=list)
    ok: bool = True

    def window(self):
        """From just before the fault until its settling was over."""
        return (self.t0 - 2.0, (self.end or self.t0 + 60.0) + 5.0)


class Soak:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.problems = []
        self.timeline_f = None
        self.pids_path = os.path.join(self.out, "pids")
        self.procs = {}
        self.clients = []
        self.connected_count = 0
        self.reconnects = []
        self.close_codes = {}
        self.gaps = []
        self.dups = []
        self.client_issues = {}
        self.client_issue_samples = []
        self.counters = _Counter()
        self.faults = []
        self.current_fault = None
        self.uncertain = {}
        self.published = {}
        self.baseline = {}
        self.live_receivers = []
        self.host_metrics_received = 0
        self.webhook_stats = _Counter()
        self.http_stats = _Counter()
        self.lua_stats = _Counter()
        self.live_stats = _Counter()
        self.stop_load = asyncio.Event()
        self.interrupted = False
        self.samples_f = None
        self.samples_w = None
        self.sample_rows = []
        self.started = None
        self.load_started = None
        self.load_stopped = None
        self.tmp = []

    # --- bookkeeping
    def timeline(self, what, **kw):
        rec = {"t": round(now(), 3), "at": rfc3339(now()), "what": what, **kw}
        if self.timeline_f:
            self.timeline_f.write(json.dumps(rec) + "\n")
            self.timeline_f.flush()

    def say(self, msg):
        el = now() - self.started if self.started else 0.0
        print(f"[soak {el:7.1f}s] {msg}", flush=True)

    def problem(self, msg):
        if len(self.problems) < 500:
            self.problems.append({"t": round(now(), 3), "msg": msg})
        self.say(f"PROBLEM: {msg}")
        self.timeline("problem", msg=msg)

    def note_client_issue(self, kind, client, obj):
        self.client_issues[kind] = self.client_issues.get(kind, 0) + 1
        if len(self.client_issue_samples) < 50:
            self.client_issue_samples.append({"kind": kind, "client": client.index, "at": rfc3339(now()), "msg": obj})

    def note_dup(self, client, src, seq):
        if len(self.dups) < 1000:
            self.dups.append({"client": client.index, "ws": client.ws, "src": src, "seq": seq, "at": now()})

    def note_tmp(self, path):
        # for scripts/soak to remove, should the driver die before it does
        with open(os.path.join(self.out, "tmpdirs"), "a") as f:
            f.write(path + "\n")

    def record_pid(self, proc):
        # pid, name and start time (so a reused pid is never mistaken for ours)
        try:
            with open(f"/proc/{proc.pid}/stat") as f:
                st = f.read()
            start = st[st.rindex(")") + 2:].split()[19]
        except (OSError, IndexError):
            start = "?"
        with open(self.pids_path, "a") as f:
            f.write(f"{proc.pid} {proc.name} {start}\n")

    # --- processes
    def setup_processes(self):
        a = self.args
        bindir = os.path.join(self.out, "bin")
        os.makedirs(bindir, exist_ok=True)
        for b in ("tidings-gateway", "tidings-publisher"):
            src = os.path.join(a.bin_dir, b)
            if not os.access(src, os.X_OK):
                raise SystemExit(f"scripts/soak: {src} is missing: cargo build --release -p tidings-gateway -p tidings-publisher")
            # A private copy: a rebuild during the soak must not change what a restart runs.
            shutil.copy2(src, os.path.join(bindir, b))
        self.redis_port = free_port()
        self.redis_dir = tempfile.mkdtemp(prefix="tidings-soak-redis-")
        self.tmp.append(self.redis_dir)
        self.note_tmp(self.redis_dir)
        self.procs["redis"] = Proc(self, "redis", [
            "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", self.redis_dir,
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
            "--loglevel", "notice", "--logfile", "", "--protected-mode", "yes",
        ], port=self.redis_port)
        redis_url = f"redis://127.0.0.1:{self.redis_port}"
        common = {"TIDINGS_REDIS_URL": redis_url, "TIDINGS_LOG_FORMAT": "json",
                  "RUST_LOG": os.environ.get("SOAK_RUST_LOG", "info")}
        for name in ("gw1", "gw2"):
            port = free_port()
            self.procs[name] = Proc(self, name, [os.path.join(bindir, "tidings-gateway")], env={
                **common, "TIDINGS_LISTEN": f"127.0.0.1:{port}", "TIDINGS_JWT_SECRET": JWT_SECRET,
                "TIDINGS_DRAIN_SECS": str(a.drain_secs),
            }, port=port)
        pport = free_port()
        self.procs["publisher"] = Proc(self, "publisher", [os.path.join(bindir, "tidings-publisher")], env={
            **common, "TIDINGS_LISTEN": f"127.0.0.1:{pport}", "TIDINGS_PUBLISH_TOKEN": PUBLISH_TOKEN,
            "TIDINGS_ARGOCD_WEBHOOK_TOKEN": ARGOCD_TOKEN, "TIDINGS_METRICS_WORKSPACE": "soak-0",
        }, port=pport)
        # nginx: the project's config, four lines rewritten (as crates/testkit's Nginx does).
        self.nginx_port = free_port()
        with open(a.nginx_conf) as f:
            conf = f.read()
        for old, new in [
            ("server gateway-1:8080", f"server 127.0.0.1:{self.procs['gw1'].port}"),
            ("server gateway-2:8080", f"server 127.0.0.1:{self.procs['gw2'].port}"),
            ("server publisher:8090", f"server 127.0.0.1:{pport}"),
            ("listen 8080;", f"listen 127.0.0.1:{self.nginx_port};"),
        ]:
            if conf.count(old) != 1:
                raise SystemExit(f"scripts/soak: {a.nginx_conf} should have one `{old}`")
            conf = conf.replace(old, new)
        prefix = tempfile.mkdtemp(prefix="tidings-soak-nginx-")
        os.chmod(prefix, 0o755)  # the workers drop root and need the temp paths
        self.tmp.append(prefix)
        self.note_tmp(prefix)
        conf_path = os.path.join(prefix, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        shutil.copy(conf_path, os.path.join(self.out, "nginx.conf"))
        self.procs["nginx"] = Proc(self, "nginx", ["nginx", "-p", prefix, "-c", conf_path, "-g", "daemon off;"],
                                   port=self.nginx_port)
        if a.canary_leak:
            # A process that really leaks, sampled like the others: the leak check must catch it.
            code = ("import os,time\nkeep=[]\nn=0\nwhile True:\n"
                    f"  keep.append(bytearray({int(a.canary_leak * 1024)}))\n"
                    "  n+=1\n"
                    "  if n%10==0: keep.append(open('/dev/null'))\n"
                    "  time.sleep(1)\n")
            self.procs["canary"] = Proc(self, "canary", [sys.executable, "-c", code], port=None)

    async def start_all(self):
        p = self.procs
        p["redis"].start()
        await p["redis"].wait_ready()
        for name in ("gw1", "gw2", "publisher"):
            p[name].start()
        for name in ("gw1", "gw2", "publisher"):
            await p[name].wait_ready()
        p["nginx"].start()
        await p["nginx"].wait_ready()
        if "canary" in p:
            p["canary"].start()

    async def stop_all(self):
        for c in self.clients:
            c.stop()
        order = ["nginx", "gw1", "gw2", "publisher", "canary", "redis"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None:
                continue
            workers = children_of(proc.pid) if name == "nginx" and proc.alive() else []
            await proc.stop(signal.SIGTERM, timeout=self.args.drain_secs + 15 if name.startswith("gw") else 20)
            for w in workers:
                # nginx's workers go with their master; make sure.
                for _ in range(100):
                    if not os.path.exists(f"/proc/{w}"):
                        break
                    await asyncio.sleep(0.05)
                else:
                    self.problem(f"nginx worker {w} outlived its master; SIGTERM")
                    try:
                        os.kill(w, signal.SIGTERM)
                    except OSError:
                        pass

    # --- workspace setup and load
    async def setup_workspaces(self):
        a = self.args
        r = Redis(self.redis_port)
        self.script_src = open(os.path.join(ROOT, "scripts/publish.lua")).read()
        self.sha = await r.cmd("SCRIPT", "LOAD", self.script_src)
        for w in range(a.workspaces):
            ws = f"soak-{w}"
            self.uncertain[ws] = {s: set() for s in DURABLE_SOURCES + ("live",)}
            self.published[ws] = {s: 0 for s in DURABLE_SOURCES + ("live",)}
            ev = json.dumps({"type": "soak_marker", "workspace_id": ws, "timestamp": rfc3339(now()),
                             "data": {"src": "base"}})
            keys = [f"workspace:{ws}:events", f"workspace:{ws}:latest", f"workspace:{ws}"]
            self.baseline[ws] = await r.cmd("EVALSHA", self.sha, 3, *keys, ev, a.history_size, "", "0")
        r.close()

    def event_json(self, ws, src, seq):
        t = now()
        return json.dumps({"type": "soak", "workspace_id": ws, "timestamp": rfc3339(t),
                           "data": {"src": src, "seq": seq, "t": round(t, 4), "pad": "x" * self.args.pad}},
                          separators=(",", ":"))

    async def pace(self, rate, body):
        """Call body() at `rate` per second; after a stall, resume without a burst."""
        interval = 1.0 / rate
        due = now()
        while not self.stop_load.is_set():
            due += interval
            delay = due - now()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                due = now()
            await body()

    async def http_publisher(self, w):
        ws = f"soak-{w}"
        http = Http(self.nginx_port)
        rate = self.args.rate_http / self.args.workspaces
        await asyncio.sleep(random.random() / max(rate, 0.1))
        st = self.http_stats

        async def one():
            k = random.choice((1, 2, 3))
            seqs = list(range(self.published[ws]["http"] + 1, self.published[ws]["http"] + 1 + k))
            self.published[ws]["http"] = seqs[-1]
            body = "[" + ",".join(self.event_json(ws, "http", s) for s in seqs) + "]"
            try:
                status, _, data = await http.request("POST", f"/v1/workspaces/{ws}/events", {
                    "Authorization": f"Bearer {PUBLISH_TOKEN}", "Content-Type": "application/json"},
                    body.encode(), timeout=15)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                st[f"error_{type(e).__name__}"] += 1
                self.uncertain[ws]["http"].update(seqs)
                st["uncertain_events"] += len(seqs)
                return
            st[f"status_{status}"] += 1
            if status == 202:
                ids = json.loads(data).get("ids", [])
                if len(ids) != len(seqs):
                    self.problem(f"publish of {len(seqs)} answered {len(ids)} ids")
                st["events"] += len(seqs)
            else:
                # 503 lists what was stored before the failure; anything else is unknown.
                stored = 0
                try:
                    stored = len(json.loads(data).get("ids", []) or [])
                except (ValueError, AttributeError):
                    pass
                st["events"] += stored
                self.uncertain[ws]["http"].update(seqs[stored:])
                st["uncertain_events"] += len(seqs) - stored
            await asyncio.sleep(0)

        # k events per request, 2 on average: requests at rate/2.
        await self.pace(rate / 2.0, one)
        http.close()

    async def lua_publisher(self):
        a = self.args
        r = Redis(self.redis_port)
        st = self.lua_stats
        state = {"w": 0}

        async def one():
            ws = f"soak-{state['w'] % a.workspaces}"
            state["w"] += 1
            seq = self.published[ws]["lua"] + 1
            ev = self.event_json(ws, "lua", seq)
            keys = [f"workspace:{ws}:events", f"workspace:{ws}:latest", f"workspace:{ws}",
                    f"tidings:dedup:soak-lua:{ws}:{seq}:{self.run_id}"]
            attempt = 0
            while True:
                try:
                    reply = await r.cmd("EVALSHA", self.sha, 4, *keys, ev, a.history_size, "", "0", 3600, timeout=3)
                    st["published" if reply else "duplicate_answer"] += 1
                    if attempt:
                        st["published_after_retry"] += 1
                    break
                except RespError as e:
                    if "NOSCRIPT" in str(e):
                        try:
                            self.sha = await r.cmd("SCRIPT", "LOAD", self.script_src)
                        except Exception:
                            pass
                    else:
                        st[f"error {str(e)[:40]}"] += 1
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                    st["timeouts_or_errors"] += 1
                attempt += 1
                if self.stop_load.is_set() and attempt > 20:
                    self.uncertain[ws]["lua"].add(seq)
                    break
                await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)))
            self.published[ws]["lua"] = seq

        await self.pace(a.rate_lua, one)
        r.close()

    async def live_publisher(self):
        a = self.args
        r = Redis(self.redis_port)
        st = self.live_stats
        state = {"w": 0}

        async def one():
            ws = f"soak-{state['w'] % a.workspaces}"
            state["w"] += 1
            seq = self.published[ws]["live"] + 1
            self.published[ws]["live"] = seq
            try:
                n = await r.cmd("PUBLISH", f"workspace:{ws}", self.event_json(ws, "live", seq), timeout=2)
                st["published"] += 1
                st[f"receivers_{n}"] += 1
                self.live_receivers.append((now(), ws, n))
                if len(self.live_receivers) > 200000:
                    del self.live_receivers[:100000]
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, RespError):
                st["uncertain"] += 1
                self.uncertain[ws]["live"].add(seq)

        await self.pace(a.rate_live, one)
        r.close()

    async def webhook_publisher(self):
        a = self.args
        http = Http(self.nginx_port)
        st = self.webhook_stats
        fixtures = []
        for path in sorted(glob.glob(os.path.join(ROOT, "crates/publisher/tests/fixtures/argocd/*.json"))):
            with open(path) as f:
                fixtures.append(json.load(f))
        state = {"n": 0}

        async def send(ws, body):
            try:
                status, _, data = await http.request("POST", f"/webhooks/argocd?workspace_id={ws}", {
                    "Authorization": f"Bearer {ARGOCD_TOKEN}", "Content-Type": "application/json"}, body, timeout=15)
                return status, data
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                return type(e).__name__, b""

        async def one():
            n = state["n"]
            state["n"] += 1
            ws = f"soak-{n % a.workspaces}"
            seq = self.published[ws]["argo_d"] + 1
            doc = dict(fixtures[n % len(fixtures)])
            doc["app"] = f"soak-{seq}"
            doc["revision"] = hashlib.sha1(f"{self.run_id}-{ws}-{seq}".encode()).hexdigest()
            doc["url"] = f"https://argocd.example.com/applications/soak-{seq}"
            body = json.dumps(doc).encode()
            attempt = 0
            while True:
                status, data = await send(ws, body)
                st[f"status_{status}"] += 1
                if status == 202:
                    try:
                        published = json.loads(data).get("published")
                    except ValueError:
                        published = None
                    if published != 2:
                        self.problem(f"argocd webhook answered 202 with published={published}: {data[:200]!r}")
                    break
                if status == 200 and b"duplicate" in data:
                    # An earlier attempt was stored after all (its answer was lost).
                    st["duplicate_after_retry"] += 1
                    break
                attempt += 1
                if self.stop_load.is_set() and attempt > 10:
                    self.uncertain[ws]["argo_d"].add(seq)
                    self.uncertain[ws]["argo_h"].add(seq)
                    break
                await asyncio.sleep(min(5.0, 0.25 * 2 ** min(attempt, 5)))
            if attempt:
                st["retried_deliveries"] += 1
            self.published[ws]["argo_d"] = seq
            self.published[ws]["argo_h"] = seq
            st["deliveries"] += 1
            if random.random() < a.redeliver:
                # The source redelivers: must be answered duplicate, published nothing.
                status, data = await send(ws, body)
                st["redeliveries"] += 1
                if status == 200 and b"duplicate" in data:
                    st["redelivery_duplicate"] += 1
                elif status == 202:
                    st["redelivery_published_again"] += 1
                    self.problem(f"a redelivered webhook was published again: {data[:200]!r}")
                else:
                    st[f"redelivery_status_{status}"] += 1

        await self.pace(a.rate_webhooks, one)
        http.close()

    async def churn(self):
        a = self.args
        if a.churn <= 0:
            return
        while not self.stop_load.is_set():
            await asyncio.sleep(random.expovariate(a.churn))
            c = random.choice(self.clients)
            if c.connected:
                c.recycle()
                self.counters["churned"] += 1

    def split(self):
        on = {"gw1": [], "gw2": []}
        for c in self.clients:
            if c.connected and c.server:
                on.setdefault(c.server.split("-")[0], []).append(c)
        return on

    async def rebalance(self):
        """After a gateway restart least_conn has nothing to move: recycle clients of
        the fuller gateway (people reloading pages) until the split is even."""
        before = {k: len(v) for k, v in self.split().items()}
        for _ in range(3):
            on = self.split()
            n1, n2 = len(on["gw1"]), len(on["gw2"])
            excess = abs(n1 - n2) // 2
            if excess <= max(5, len(self.clients) // 50):
                return f"split {before['gw1']}/{before['gw2']} -> {n1}/{n2}"
            fuller = on["gw1"] if n1 > n2 else on["gw2"]
            random.shuffle(fuller)
            for c in fuller[:excess]:
                c.recycle()
                self.counters["rebalanced"] += 1
                await asyncio.sleep(1.0 / self.args.rebalance_rate)
            await self.wait_all_connected(30)
        on = self.split()
        n1, n2 = len(on["gw1"]), len(on["gw2"])
        even = abs(n1 - n2) // 2 <= max(5, len(self.clients) // 50)
        return f"split {before['gw1']}/{before['gw2']} -> {n1}/{n2}{'' if even else ' (still uneven)'}"

    async def wait_all_connected(self, timeout):
        deadline = now() + timeout
        while now() < deadline and not self.interrupted:
            if self.connected_count >= len(self.clients):
                return now()
            await asyncio.sleep(0.05)
        return None

    # --- sampling
    async def sampler(self):
        a = self.args
        r = Redis(self.redis_port)
        cols = ["t", "elapsed", "proc", "gen", "pid", "rss_kib", "fds", "threads", "cpu_s",
                "conns_open", "delivered_total", "dropped_total", "dropped_slow", "dropped_invalid",
                "broker_reconnects", "broker_connected", "subscribed_ws", "published_total", "webhooks_total",
                "redis_used_memory", "redis_rss", "redis_clients", "redis_pubsub_clients", "in_fault",
                "clients_connected", "client_socks", "redis_conns", "fds_other"]
        self.samples_w = csv.DictWriter(self.samples_f, fieldnames=cols)
        self.samples_w.writeheader()
        while True:
            t = now()
            in_fault = self.current_fault.kind if self.current_fault else ""
            rows = []
            socks = tcp_sockets()
            for name, proc in self.procs.items():
                if proc.popen is None:
                    continue
                if not proc.alive():
                    proc.note_exit()
                    if not proc.expected_exit:
                        await self.crashed(proc)
                    continue
                st = proc_stats(proc.pid)
                if st is None:
                    continue
                rss, fds, threads, cpu = st
                if name == "nginx":
                    for w in children_of(proc.pid):
                        ws = proc_stats(w)
                        if ws:
                            rss += ws[0]
                            fds += ws[1]
                            threads += ws[2]
                            cpu += ws[3]
                row = {"t": round(t, 3), "elapsed": round(t - self.started, 1), "proc": name, "gen": proc.gen,
                       "pid": proc.pid, "rss_kib": rss, "fds": fds, "threads": threads, "cpu_s": round(cpu, 2),
                       "in_fault": in_fault, "clients_connected": self.connected_count}
                if name in ("gw1", "gw2", "publisher"):
                    # Descriptors beside the clients' sockets and the (bounded) Redis pool: what a leak would grow.
                    accepted, to_redis = socket_kinds(proc.pid, proc.port, self.redis_port, socks)
                    if accepted is not None:
                        row.update({"client_socks": accepted, "redis_conns": to_redis,
                                    "fds_other": fds - accepted - to_redis})
                if name in ("gw1", "gw2", "publisher") and not proc.stopped:
                    try:
                        status, _, body = await http_get(proc.port, "/metrics", timeout=2)
                        m = parse_metrics(body.decode())
                        row.update({
                            "conns_open": m.get("tidings_connections_open"),
                            "delivered_total": m.get("tidings_messages_delivered_total"),
                            "dropped_total": m.get("tidings_events_dropped_total"),
                            "dropped_slow": m.get('tidings_events_dropped_total{reason="slow_client"}'),
                            "dropped_invalid": m.get('tidings_events_dropped_total{reason="invalid"}'),
                            "broker_reconnects": m.get("tidings_broker_reconnects_total"),
                            "broker_connected": m.get("tidings_broker_connected"),
                            "subscribed_ws": m.get("tidings_subscribed_workspaces"),
                            "published_total": m.get("tidings_events_published_total"),
                            "webhooks_total": m.get("tidings_webhooks_total"),
                        })
                    except Exception:
                        pass
                if name == "redis" and not proc.stopped:
                    try:
                        info = await r.cmd("INFO", "memory", timeout=1)
                        info += await r.cmd("INFO", "clients", timeout=1)
                        kv = dict(l.split(":", 1) for l in info.splitlines() if ":" in l)
                        pubsub = await r.cmd("CLIENT", "LIST", "TYPE", "pubsub", timeout=1)
                        row.update({"redis_used_memory": kv.get("used_memory"), "redis_rss": kv.get("used_memory_rss"),
                                    "redis_clients": kv.get("connected_clients"),
                                    "redis_pubsub_clients": len([l for l in pubsub.splitlines() if l.strip()])})
                    except Exception:
                        pass
                rows.append(row)
            me = proc_stats(os.getpid())
            if me:
                rows.append({"t": round(t, 3), "elapsed": round(t - self.started, 1), "proc": "driver", "gen": 1,
                             "pid": os.getpid(), "rss_kib": me[0], "fds": me[1], "threads": me[2],
                             "cpu_s": round(me[3], 2), "in_fault": in_fault, "clients_connected": self.connected_count})
            for row in rows:
                self.samples_w.writerow(row)
                self.sample_rows.append(row)
            self.samples_f.flush()
            await asyncio.sleep(max(0.1, a.sample_secs - (now() - t)))

    async def crashed(self, proc):
        self.problem(f"{proc.name} (generation {proc.gen}) exited unexpectedly with {proc.popen.returncode}; restarting it")
        self.timeline("crash", proc=proc.name, gen=proc.gen, rc=proc.popen.returncode)
        proc.expected_exit = True  # reported once
        proc.start()
        try:
            await proc.wait_ready()
        except RuntimeError as e:
            self.problem(str(e))

    # --- faults
    async def fault_loop(self):
        a = self.args
        kinds = list(a.faults)
        k = 0
        next_at = self.load_started + a.fault_every
        while True:
            if next_at > self.load_started + a.minutes * 60 - a.fault_every * 0.5:
                return  # leave a quiet tail
            delay = next_at - now()
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stop_load.wait(), delay)
                    return
                except asyncio.TimeoutError:
                    pass
            if self.stop_load.is_set() or self.interrupted:
                return
            kind = kinds[k % len(kinds)]
            cycle = k // len(kinds)
            target = None
            if kind == "gw-term":
                target = ("gw1", "gw2")[cycle % 2]
            elif kind == "gw-kill":
                target = ("gw2", "gw1")[cycle % 2]
            await self.inject(kind, target)
            k += 1
            next_at = max(next_at + a.fault_every, now() + 10)

    async def inject(self, kind, target):
        a = self.args
        p = self.procs
        f = Fault(kind, target, now())
        self.current_fault = f
        self.faults.append(f)
        down_before = sum(1 for c in self.clients if not c.connected)
        self.say(f"fault {len(self.faults)}: {kind}{' ' + target if target else ''}")
        self.timeline("fault", kind=kind, target=target)
        try:
            if kind == "gw-term":
                g = p[target]
                g.expected_exit = True
                g.send(signal.SIGTERM)
                exited = await g.wait_exit(a.drain_secs + 15)
                g.note_exit()
                if not exited:
                    f.ok = False
                    f.notes.append(f"did not exit within drain + 15 s; SIGKILL")
                    g.send(signal.SIGKILL)
                    await g.wait_exit(5)
                elif g.popen.returncode != 0:
                    f.notes.append(f"exit code {g.popen.returncode} after SIGTERM (expected 0)")
                    self.problem(f"{target} exited {g.popen.returncode} after SIGTERM")
                f.heal = now()
                f.notes.append(f"drained and exited in {f.heal - f.t0:.1f} s")
                g.start()
                await g.wait_ready()
            elif kind == "gw-kill":
                g = p[target]
                g.expected_exit = True
                g.send(signal.SIGKILL)
                await g.wait_exit(5)
                g.note_exit()
                f.heal = now()
                await asyncio.sleep(a.restart_delay)
                g.start()
                await g.wait_ready()
            elif kind == "pubsub-kill":
                r = Redis(self.redis_port)
                killed = await r.cmd("CLIENT", "KILL", "TYPE", "pubsub")
                r.close()
                f.notes.append(f"{killed} pub/sub connections killed")
                f.heal = now()
            elif kind == "redis-stop":
                rp = p["redis"]
                rp.send(signal.SIGSTOP)
                rp.stopped = True
                await asyncio.sleep(a.redis_stop_secs)
                rp.send(signal.SIGCONT)
                rp.stopped = False
                f.heal = now()
            elif kind == "redis-restart":
                rp = p["redis"]
                await rp.stop(signal.SIGTERM, timeout=20)
                rp.start()
                await rp.wait_ready()
                f.heal = now()
            elif kind == "publisher-restart":
                pub = p["publisher"]
                ok = await pub.stop(signal.SIGTERM, timeout=15)
                if pub.popen.returncode not in (0,):
                    f.notes.append(f"publisher exit code {pub.popen.returncode} after SIGTERM")
                pub.start()
                await pub.wait_ready()
                f.heal = now()
            # Recovery: every process ready, every client back, every client has an event published after the heal.
            deadline = f.t0 + a.recovery_limit
            while now() < deadline:
                states = [await p[n].ready_now() for n in ("gw1", "gw2", "publisher")]
                if all(states):
                    f.ready = now()
                    break
                await asyncio.sleep(0.2)
            t = await self.wait_all_connected(max(0.0, deadline - now()))
            f.all_back = t
            heal = f.heal or f.t0
            while now() < deadline:
                if all(c.last_durable_t >= heal for c in self.clients):
                    f.caught_up = now()
                    break
                await asyncio.sleep(0.1)
            if f.caught_up is not None and f.caught_up - (f.heal or f.t0) > a.max_recovery_secs:
                f.ok = False
                f.notes.append(f"clients caught up {f.caught_up - (f.heal or f.t0):.1f} s after the fault healed "
                               f"(limit {a.max_recovery_secs:.0f} s)")
            if f.ready is None or f.all_back is None or f.caught_up is None:
                f.ok = False
                f.notes.append(f"not recovered within {a.recovery_limit:.0f} s "
                               f"(ready={f.ready is not None}, all back={f.all_back is not None}, "
                               f"caught up={f.caught_up is not None})")
                self.problem(f"fault {kind} {target or ''}: not recovered within {a.recovery_limit:.0f} s")
            if kind in ("gw-term", "gw-kill") and a.rebalance:
                f.notes.append("rebalance " + await self.rebalance())
                f.settled = now()
        except Exception as e:
            f.ok = False
            f.notes.append(f"fault handling failed: {e!r}")
            self.problem(f"fault {kind}: {e!r}\n{traceback.format_exc()}")
        f.end = max(x for x in (f.t0, f.heal, f.ready, f.all_back, f.caught_up, f.settled) if x) + a.settle_secs
        self.timeline("recovered", kind=kind, target=target, ok=f.ok, notes=f.notes,
                      heal_s=r3((f.heal or f.t0) - f.t0), ready_s=r3(f.ready and f.ready - f.t0),
                      all_back_s=r3(f.all_back and f.all_back - f.t0), caught_up_s=r3(f.caught_up and f.caught_up - f.t0))
        self.say(f"  recovered: ready {fmt_s(f.ready, f.t0)}, clients back {fmt_s(f.all_back, f.t0)}, "
                 f"caught up {fmt_s(f.caught_up, f.t0)}; {'; '.join(f.notes)}")
        # Settle before the next fault; the window ends there.
        wait = f.end - now()
        if wait > 0:
            try:
                await asyncio.wait_for(self.stop_load.wait(), wait)
            except asyncio.TimeoutError:
                pass
        self.current_fault = None

    # --- the run
    async def run(self):
        a = self.args
        os.makedirs(self.out, exist_ok=True)
        for old in glob.glob(os.path.join(self.out, "*.log")) + [os.path.join(self.out, x) for x in (
                "samples.csv", "timeline.jsonl", "summary.json", "pids", "gaps.jsonl", "tmpdirs")]:
            if os.path.exists(old):
                os.remove(old)
        self.run_id = f"{int(now())}-{os.getpid()}"
        self.timeline_f = open(os.path.join(self.out, "timeline.jsonl"), "w")
        self.samples_f = open(os.path.join(self.out, "samples.csv"), "w", newline="")
        self.started = now()
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_signal(signame):
            if not self.interrupted:
                self.interrupted = True
                self.say(f"{signame}: stopping")
                self.stop_load.set()
                stop_requested.set()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, on_signal, sig.name)
        tasks = []
        try:
            self.setup_processes()
            self.say(f"starting redis :{self.redis_port}, gw1 :{self.procs['gw1'].port}, gw2 :{self.procs['gw2'].port}, "
                     f"publisher :{self.procs['publisher'].port}, nginx :{self.nginx_port}; out {self.out}")
            await self.start_all()
            await self.setup_workspaces()
            sampler = asyncio.create_task(self.sampler())
            # Clients: spread over the workspaces; some batch=1, some filtered.
            for i in range(a.conns):
                ws = f"soak-{i % a.workspaces}"
                self.clients.append(Client(self, i, ws, batch=(i % 4 == 1), filtered=(i % 5 == 2)))
            client_tasks = [asyncio.create_task(c.run(start_delay=i / a.connect_rate)) for i, c in enumerate(self.clients)]
            t = await self.wait_all_connected(a.conns / a.connect_rate + 60)
            if t is None:
                raise RuntimeError(f"only {self.connected_count} of {a.conns} clients connected")
            self.say(f"{a.conns} clients connected over {a.workspaces} workspaces "
                     f"({sum(1 for c in self.clients if c.server and c.server.startswith('gw1'))} on gw1)")
            self.load_started = now()
            for c in self.clients:
                c.last_live_epoch = c.epoch  # a live gap after a reconnect is explained, even before the first live event
            self.timeline("load", conns=a.conns)
            load = [asyncio.create_task(self.http_publisher(w)) for w in range(a.workspaces)]
            load += [asyncio.create_task(self.lua_publisher()), asyncio.create_task(self.live_publisher()),
                     asyncio.create_task(self.webhook_publisher()), asyncio.create_task(self.churn())]
            faults = asyncio.create_task(self.fault_loop())
            progress = asyncio.create_task(self.progress())
            tasks = load + [faults, sampler, progress] + client_tasks
            end_at = self.load_started + a.minutes * 60
            try:
                await asyncio.wait_for(stop_requested.wait(), max(0.0, end_at - now()))
            except asyncio.TimeoutError:
                pass
            # The end: let a running fault finish, stop publishing, wait for the clients to catch up.
            if not self.interrupted:
                self.say("load over: waiting for the fault in progress")
                try:
                    await asyncio.wait_for(faults, a.recovery_limit + a.drain_secs + 60)
                except asyncio.TimeoutError:
                    self.problem("the last fault did not finish")
            self.stop_load.set()
            for t_ in load:
                try:
                    await asyncio.wait_for(t_, 30)
                except (asyncio.TimeoutError, Exception):
                    pass
            self.load_stopped = now()
            self.timeline("load_stopped")
            if not self.interrupted:
                done = await self.wait_caught_up(a.final_wait)
                self.say("every client has every published event" if done else
                         f"clients still missing events after {a.final_wait:.0f} s")
            await asyncio.sleep(min(a.sample_secs, 2))
        finally:
            for t_ in tasks:
                t_.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.say("stopping processes")
            await self.stop_all()
            for d in self.tmp:
                shutil.rmtree(d, ignore_errors=True)
            self.timeline("stopped")
            self.samples_f.close()
        return self.analyse()

    async def wait_caught_up(self, timeout):
        deadline = now() + timeout
        while now() < deadline:
            if self.connected_count >= len(self.clients) and all(self.client_complete(c) for c in self.clients):
                return True
            await asyncio.sleep(0.2)
        return False

    def client_complete(self, c):
        for src in DURABLE_SOURCES:
            if not c.expects(src):
                continue
            last = self.published[c.ws][src]
            tr = c.track.get(src)
            nxt = tr.next if tr else 1
            unc = self.uncertain[c.ws][src]
            if any(s not in unc for s in range(nxt, last + 1)):
                return False
        return True

    async def progress(self):
        while True:
            await asyncio.sleep(self.args.progress_secs)
            pub = sum(sum(v.values()) for v in self.published.values())
            rec = sum(c.received for c in self.clients)
            gws = {n: self.procs[n] for n in ("gw1", "gw2")}
            rss = {n: (proc_stats(p.pid) or (0,))[0] // 1024 for n, p in gws.items() if p.alive()}
            on = {k: len(v) for k, v in self.split().items()}
            self.say(f"connected {self.connected_count}/{len(self.clients)} {on}, published {pub}, received {rec}, "
                     f"durable gaps {sum(1 for g in self.gaps if g['src'] != 'live')}, live gaps {sum(1 for g in self.gaps if g['src'] == 'live')}, "
                     f"dups {len(self.dups)}, gateway RSS MiB {rss}")

    # ------------------------------------------------------------- verdicts
    def analyse(self):
        a = self.args
        end = now()
        fails = []
        windows = [(f.window(), f) for f in self.faults]

        # (a) delivery accounting
        acct = {}
        durable_lost = durable_expected = durable_received = 0
        app_dups = 0
        for c in self.clients:
            for src in DURABLE_SOURCES + ("live",):
                if not c.expects(src):
                    continue
                last = self.published[c.ws][src]
                tr = c.track.get(src)
                nxt = tr.next if tr else 1
                unc = self.uncertain[c.ws][src]
                tail = sum(1 for s in range(nxt, last + 1) if s not in unc)
                if tail:
                    c.lost[src] = c.lost.get(src, 0) + tail
                    self.gaps.append({"client": c.index, "ws": c.ws, "src": src, "first": nxt, "last": last,
                                      "missing": tail, "at": end, "t_next": None, "tail": True,
                                      "client_reconnected": (not c.connected) or (
                                          c.last_live_epoch is not None and c.last_live_epoch != c.epoch)})
                confirmed = last - len(unc)
                got_unc = len(tr.got_uncertain) if tr and tr.got_uncertain else 0
                s = acct.setdefault(src, {"published_confirmed": 0, "uncertain": 0, "expected": 0,
                                          "lost": 0, "duplicates_to_app": 0, "uncertain_received": 0})
                s["expected"] += confirmed
                s["lost"] += c.lost.get(src, 0)
                s["duplicates_to_app"] += c.app_dups.get(src, 0)
                s["uncertain_received"] += got_unc
        for src, s in acct.items():
            s["published_confirmed"] = sum(self.published[ws][src] - len(self.uncertain[ws][src]) for ws in self.published)
            s["uncertain"] = sum(len(self.uncertain[ws][src]) for ws in self.published)
            s["received"] = s["expected"] - s["lost"]
            if src in DURABLE_SOURCES:
                durable_expected += s["expected"]
                durable_lost += s["lost"]
                durable_received += s["received"]
                app_dups += s["duplicates_to_app"]
        live_gaps = [g for g in self.gaps if g["src"] == "live"]
        live_unexplained = []
        for g in live_gaps:
            if g["client_reconnected"]:
                continue
            at = g["at"]
            if any(lo <= at <= hi for (lo, hi), _ in windows):
                continue
            if g.get("tail") and (self.interrupted or self.load_stopped is None):
                continue
            live_unexplained.append(g)
        live_unexplained_lost = sum(g["missing"] for g in live_unexplained)
        wire_dups = sum(c.wire_dups for c in self.clients)
        recovered_false = sum(c.recovered_false for c in self.clients)
        if durable_lost:
            fails.append(f"{durable_lost} durable deliveries lost")
        if app_dups:
            fails.append(f"{app_dups} duplicates delivered to the application")
        if recovered_false:
            fails.append(f"{recovered_false} connections answered recovered:false")
        if live_unexplained_lost:
            fails.append(f"{live_unexplained_lost} live-only deliveries lost outside fault windows and client reconnects")
        if self.webhook_stats.get("redelivery_published_again"):
            fails.append("a redelivered webhook was published again")
        lagged = sum(c.lagged for c in self.clients)

        # recovery times
        fault_rows = []
        all_reconnect = []
        for f in self.faults:
            lo, hi = f.window()
            durs = [up - down for (down, up, reason, _) in self.reconnects
                    if lo <= down <= hi and reason != "voluntary"]
            all_reconnect += durs
            fault_rows.append({
                "kind": f.kind, "target": f.target, "at_s": r3(f.t0 - self.load_started), "ok": f.ok,
                "heal_s": r3((f.heal or f.t0) - f.t0), "ready_s": r3(f.ready and f.ready - f.t0),
                "all_back_s": r3(f.all_back and f.all_back - f.t0),
                "caught_up_s": r3(f.caught_up and f.caught_up - f.t0),
                "cut": len(durs), "reconnect_p50_s": r3(percentile(durs, 50)),
                "reconnect_p99_s": r3(percentile(durs, 99)), "reconnect_max_s": r3(max(durs) if durs else None),
                "notes": f.notes,
            })
            if not f.ok:
                fails.append(f"fault {f.kind} {f.target or ''} at {f.t0 - self.load_started:.0f} s: {'; '.join(f.notes)}")

        # (b) leaks
        leaks = analyse_leaks(self.sample_rows, [w for w, _ in windows], a, fails)

        # broker reconnects outside fault windows (the "pub/sub re-opened every 5 s" class of defect)
        outside = broker_reconnects_outside(self.sample_rows, [w for w, _ in windows])
        for name, n in outside.items():
            if n:
                fails.append(f"{name}: {n:.0f} Redis pub/sub reconnects outside fault windows")

        metric_checks = check_metrics(self.sample_rows, [w for w, _ in windows], fails)
        received_total = sum(c.received for c in self.clients)
        metric_checks["clients_received_frames_events"] = received_total

        # unexpected exits
        exits = {}
        for name, proc in self.procs.items():
            proc.note_exit()
            exits[name] = [{"gen": g, "rc": rc, "expected": e} for g, rc, e in proc.exits]
            for g, rc, e in proc.exits:
                if not e:
                    fails.append(f"{name} generation {g} exited unexpectedly ({rc})")
                elif name in ("gw1", "gw2", "publisher") and rc not in (0, -9, -15) and rc is not None:
                    fails.append(f"{name} generation {g} exited {rc}")

        # (c) logs
        logs = analyse_logs(self, windows, fails)

        hard_problems = [p for p in self.problems if "not recovered" not in p["msg"]]
        if hard_problems:
            fails.append(f"{len(hard_problems)} problems noted during the run (see summary.json problems)")

        summary = {
            "result": "FAIL" if fails else "PASS",
            "failures": fails,
            "interrupted": self.interrupted,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()},
            "duration_s": r3((self.load_stopped or end) - (self.load_started or self.started)),
            "delivery": {
                "by_source": acct,
                "durable": {"expected": durable_expected, "received": durable_received, "lost": durable_lost,
                            "duplicates_to_app": app_dups, "duplicates_dropped_by_client": wire_dups},
                "live_only": {"expected": acct.get("live", {}).get("expected", 0),
                              "lost_total": acct.get("live", {}).get("lost", 0),
                              "lost_outside_faults": live_unexplained_lost,
                              "gaps_unexplained": live_unexplained[:50]},
                "recovered_false": recovered_false,
                "lagged": lagged,
                "client_issues": self.client_issues,
                "client_issue_samples": self.client_issue_samples,
                "close_codes": self.close_codes,
                "host_metrics_received": self.host_metrics_received,
                "publish": {"http": dict(self.http_stats), "lua": dict(self.lua_stats), "live": dict(self.live_stats),
                            "webhooks": dict(self.webhook_stats)},
                "counters": dict(self.counters),
                "durable_gaps": [g for g in self.gaps if g["src"] != "live"][:100],
                "duplicates": self.dups[:100],
            },
            "recovery": {
                "faults": fault_rows,
                "reconnect_s": {"n": len(all_reconnect), "p50": r3(percentile(all_reconnect, 50)),
                                "p99": r3(percentile(all_reconnect, 99)),
                                "max": r3(max(all_reconnect) if all_reconnect else None)},
            },
            "leaks": leaks,
            "broker_reconnects_outside_faults": outside,
            "metrics": metric_checks,
            "logs": logs,
            "exits": exits,
            "problems": self.problems,
        }
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=str)
        with open(os.path.join(self.out, "gaps.jsonl"), "w") as f:
            for g in self.gaps:
                f.write(json.dumps(g) + "\n")
        print_summary(summary, self.out)
        return summary


class _Counter(dict):
    def __missing__(self, key):
        return 0


def fmt_s(t, t0):
    return "never" if t is None else f"{t - t0:.1f} s"


# ------------------------------------------------------------------ leak analysis

def ols(points):
    """Least-squares slope of y on t, with its standard error."""
    n = len(points)
    if n < 3:
        return None, None
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((t - mt) ** 2 for t, _ in points)
    if sxx <= 0:
        return None, None
    slope = sum((t - mt) * (y - my) for t, y in points) / sxx
    ssr = sum((y - my - slope * (t - mt)) ** 2 for t, y in points)
    se = math.sqrt(ssr / (n - 2) / sxx) if n > 2 else None
    return slope, se


def pooled_within(segments):
    """One slope shared by every segment, each with its own level (fixed
    effects): a level shift between segments (clients moved by a fault) does
    not count, a growth inside the segments does."""
    sxx = sxy = 0.0
    n = 0
    used = []
    for seg in segments:
        if len(seg) < 3:
            continue
        mt = sum(t for t, _ in seg) / len(seg)
        my = sum(y for _, y in seg) / len(seg)
        sxx += sum((t - mt) ** 2 for t, _ in seg)
        sxy += sum((t - mt) * (y - my) for t, y in seg)
        n += len(seg)
        used.append((seg, mt, my))
    if sxx <= 0 or not used:
        return None, None
    slope = sxy / sxx
    ssr = sum((y - my - slope * (t - mt)) ** 2 for seg, mt, my in used for t, y in seg)
    dof = n - len(used) - 1
    se = math.sqrt(ssr / dof / sxx) if dof > 0 else None
    return slope, se


def steady_segments(rows, windows, warmup, key, split_on=None):
    """Split one process generation's samples into runs outside the warm-up and
    the fault windows (and, with split_on, wherever that column changes)."""
    if not rows:
        return []
    t_start = rows[0]["_start"]
    segs, cur = [], []
    last_split = None
    for row in rows:
        t = row["t"]
        y = key(row)
        excluded = t < t_start + warmup or any(lo <= t <= hi for lo, hi in windows) or y is None
        if split_on is not None:
            v = row.get(split_on)
            if v not in (None, "") and v != last_split:
                if cur:
                    segs.append(cur)
                cur = []
                last_split = v
        if excluded:
            if cur:
                segs.append(cur)
            cur = []
        else:
            cur.append((t, y))
    if cur:
        segs.append(cur)
    return segs


LEAK_METRICS = {
    # name: (unit, per-10-min threshold default attr, how fit, value)
    "rss_mib": "within",
    "fds": "overall",
    "threads": "overall",
}


def judge(segments, threshold, how, min_span, min_samples):
    points = [p for s in segments for p in s]
    span = sum(s[-1][0] - s[0][0] for s in segments if len(s) >= 2)
    res = {"samples": len(points), "segments": len(segments), "steady_s": round(span, 1)}
    if len(points) < min_samples or span < min_span:
        res.update({"slope_per_10min": None, "verdict": "n/a", "why": f"steady data {span:.0f} s < {min_span:.0f} s"})
        return res
    if how == "within":
        slope, se = pooled_within(segments)
    else:
        slope, se = ols(points)
    if slope is None:
        res.update({"slope_per_10min": None, "verdict": "n/a", "why": "no variance in time"})
        return res
    slope10 = slope * 600
    se10 = se * 600 if se is not None else None
    res.update({"slope_per_10min": round(slope10, 4), "se_per_10min": r3(se10), "threshold_per_10min": threshold,
                "fit": how})
    # A leak: above the threshold, and not noise (the slope is at least 3 standard errors from zero).
    significant = se10 is None or se10 == 0 or slope10 > 3 * se10
    if slope10 > threshold and significant:
        res["verdict"] = "LEAK"
    else:
        res["verdict"] = "ok"
    return res


def analyse_leaks(rows, windows, a, fails):
    by = {}
    for row in rows:
        if row["proc"] in ("driver",):
            continue
        by.setdefault((row["proc"], int(row["gen"])), []).append(row)
    out = {}
    judged = ("gw1", "gw2", "publisher", "canary")
    for (proc, gen), rs in sorted(by.items()):
        rs.sort(key=lambda r: r["t"])
        start = rs[0]["t"]
        for r in rs:
            r["_start"] = start
        entry = {"first_s": round(start - rows[0]["t"], 1), "last_s": round(rs[-1]["t"] - rows[0]["t"], 1),
                 "rss_mib_first": round(float(rs[0]["rss_kib"]) / 1024, 1),
                 "rss_mib_last": round(float(rs[-1]["rss_kib"]) / 1024, 1),
                 "rss_mib_max": round(max(float(r["rss_kib"]) for r in rs) / 1024, 1),
                 "fds_last": rs[-1]["fds"], "threads_last": rs[-1]["threads"]}
        metrics = {
            "rss_mib": (lambda r: float(r["rss_kib"]) / 1024.0, a.max_rss_slope, "within"),
            "threads": (lambda r: float(r["threads"]), a.max_thread_slope, "overall"),
        }
        if proc in ("gw1", "gw2", "publisher"):
            # One descriptor per client and per pooled Redis connection (a pool
            # bounded at 32 that grows in reconnect storms and keeps its idle
            # connections): judge what is left beside them.
            metrics["fds_other"] = (
                lambda r: None if r.get("fds_other") in (None, "") else float(r["fds_other"]), a.max_fd_slope, "overall")
            pool = [int(r["redis_conns"]) for r in rs if r.get("redis_conns") not in (None, "")]
            entry["redis_conns_max"] = max(pool) if pool else None
            if pool and max(pool) > a.redis_pool_cap:
                fails.append(f"{proc} generation {gen}: {max(pool)} connections to Redis (pool cap {a.redis_pool_cap} + pub/sub)")
        else:
            metrics["fds"] = (lambda r: float(r["fds"]), a.max_fd_slope, "overall")
        for m, (key, thr, how) in metrics.items():
            # A Redis pool that grew is a new level of memory, not a trend: split there.
            split = "redis_conns" if m == "rss_mib" and proc in ("gw1", "gw2", "publisher") else None
            segs = steady_segments(rs, windows, a.warmup_secs, key, split_on=split)
            res = judge(segs, thr, how, a.min_steady_secs, 6)
            if proc in ("gw1", "gw2"):
                # Informative: RSS growth fitted over the whole generation as well.
                pass
            entry[m] = res
            if res["verdict"] == "LEAK" and proc in judged:
                fails.append(f"{proc} generation {gen}: {m} grows {res['slope_per_10min']:.3f} per 10 min "
                             f"(threshold {thr}, ±{res.get('se_per_10min')}) over {res['steady_s']:.0f} s of steady samples")
        if proc in ("gw1", "gw2", "publisher", "canary"):
            segs = steady_segments(rs, windows, a.warmup_secs, lambda r: float(r["rss_kib"]) / 1024.0)
            pts = [p for s in segs for p in s]
            s_all, _ = ols(pts) if len(pts) >= 3 else (None, None)
            entry["rss_mib_overall_slope_per_10min"] = r3(s_all * 600) if s_all is not None else None
        entry["judged"] = proc in judged
        out[f"{proc}#{gen}"] = entry
    return out


def broker_reconnects_outside(rows, windows):
    out = {}
    prev = {}
    for row in sorted(rows, key=lambda r: r["t"]):
        if row["proc"] not in ("gw1", "gw2"):
            continue
        v = row.get("broker_reconnects")
        if v in (None, ""):
            continue
        key = (row["proc"], row["gen"])
        if key in prev:
            pv, pt = prev[key]
            if float(v) > pv and not any(lo <= row["t"] and hi >= pt for lo, hi in windows):
                out[row["proc"]] = out.get(row["proc"], 0) + float(v) - pv
        prev[key] = (float(v), row["t"])
    for g in ("gw1", "gw2"):
        out.setdefault(g, 0)
    return out


def check_metrics(rows, windows, fails):
    """What /metrics and Redis say outside the fault windows."""
    inside = lambda t: any(lo <= t <= hi for lo, hi in windows)
    out = {"pubsub_clients_outside_faults": {}, "broker_disconnected_samples_outside_faults": {},
           "delivered_by_gateways": 0, "dropped": {}}
    series = {}
    for row in sorted(rows, key=lambda r: r["t"]):
        name = row["proc"]
        if name == "redis" and row.get("redis_pubsub_clients") not in (None, "") and not inside(row["t"]):
            n = int(row["redis_pubsub_clients"])
            out["pubsub_clients_outside_faults"][n] = out["pubsub_clients_outside_faults"].get(n, 0) + 1
        if name in ("gw1", "gw2"):
            if row.get("broker_connected") not in (None, "") and float(row["broker_connected"]) != 1 and not inside(row["t"]):
                d = out["broker_disconnected_samples_outside_faults"]
                d[name] = d.get(name, 0) + 1
            series.setdefault((name, row["gen"]), []).append(row)
    for (name, gen), rs in series.items():
        def inc(col):
            vals = [float(r[col]) for r in rs if r.get(col) not in (None, "")]
            return vals[-1] - vals[0] if len(vals) >= 2 else 0.0
        out["delivered_by_gateways"] += inc("delivered_total")
        for col in ("dropped_slow", "dropped_invalid"):
            out["dropped"][col] = out["dropped"].get(col, 0) + inc(col)
    # 2 gateways + 1 publisher hold one pub/sub connection each.
    extra = sum(v for n, v in out["pubsub_clients_outside_faults"].items() if n > 3)
    if extra >= 2:
        fails.append(f"Redis had more than 3 pub/sub clients in {extra} samples outside fault windows "
                     f"(counts: {out['pubsub_clients_outside_faults']})")
    for name, n in out["broker_disconnected_samples_outside_faults"].items():
        fails.append(f"{name}: tidings_broker_connected was 0 in {n} samples outside fault windows")
    if out["dropped"].get("dropped_invalid"):
        fails.append(f"the gateways dropped {out['dropped']['dropped_invalid']:.0f} events as invalid")
    return out


# ------------------------------------------------------------------ log analysis

_NORMALISE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\b[0-9a-f]{16,}\b"), "<hex>"),
    (re.compile(r"\d+\.\d+\.\d+\.\d+(:\d+)?"), "<addr>"),
    (re.compile(r"\d+"), "#"),
]


def normalise(text: str) -> str:
    for rx, rep in _NORMALISE:
        text = rx.sub(rep, text)
    return text[:240]


def classify_line(proc, line):
    """(timestamp or None, level, key, text) of a WARN/ERROR-like line, or None."""
    line = line.rstrip("\n")
    if not line or line.startswith("==== soak:"):
        return None
    if proc in ("gw1", "gw2", "publisher"):
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                return (None, "ERROR", "unparseable log line", line[:400])
            lvl = d.get("level", "")
            if lvl not in ("WARN", "ERROR"):
                return None
            fields_ = d.get("fields", {})
            msg = fields_.get("message", "")
            extra = " ".join(f"{k}=…" for k in sorted(fields_) if k != "message")
            key = f"{lvl} {d.get('target', '')}: {normalise(msg)} {extra}".strip()
            return (parse_rfc3339(d.get("timestamp", "")), lvl, key, line[:600])
        # A panic message or anything a crash printed.
        return (None, "ERROR", "non-JSON output: " + normalise(line[:120]), line[:600])
    if proc == "nginx":
        m = re.match(r'(\S+) \[([^\]]+)\] "(\S+) (\S+) [^"]*" (\d{3}) .*upstream_status=(.*)$', line)
        if m:
            status = int(m.group(5))
            if status < 500:
                return None
            try:
                t = time.mktime(time.strptime(m.group(2).split(" ")[0], "%d/%b/%Y:%H:%M:%S"))
            except ValueError:
                t = None
            path = re.sub(r"/v1/workspaces/[^/]+/", "/v1/workspaces/<id>/", m.group(4))
            return (t, "WARN", f"HTTP {status} {m.group(3)} {path} upstream_status={normalise(m.group(6))}", line[:400])
        m = re.match(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(\w+)\] (.*)", line)
        if m:
            t = time.mktime(time.strptime(m.group(1), "%Y/%m/%d %H:%M:%S"))
            return (t, m.group(2).upper(), f"nginx [{m.group(2)}] " + normalise(m.group(3)), line[:400])
        return None
    if proc == "redis":
        m = re.match(r"\d+:\w (\d+ \w+ \d{4} \d\d:\d\d:\d\d)\.\d+ # (.*)", line)
        if m:
            try:
                t = time.mktime(time.strptime(m.group(1), "%d %b %Y %H:%M:%S"))
            except ValueError:
                t = None
            return (t, "WARN", "redis # " + normalise(m.group(2)), line[:400])
        return None
    return None


def analyse_logs(soak, windows, fails):
    out = {}
    starts = {}
    for name, proc in soak.procs.items():
        starts[name] = []
    for path in (os.path.join(soak.out, "timeline.jsonl"),):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if rec["what"] in ("start", "exit"):
                    starts.setdefault(rec["proc"], []).append(rec["t"])
    load_stopped = soak.load_stopped or now()
    for name in soak.procs:
        if name == "canary":
            continue
        path = os.path.join(soak.out, f"{name}.log")
        groups = {}
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            for line in f:
                c = classify_line(name, line)
                if c is None:
                    continue
                t, lvl, key, text = c
                reason = None
                if t is not None:
                    for (lo, hi), flt in windows:
                        if lo <= t <= hi + 1 and (name == "nginx" or name in FAULT_AFFECTS[flt.kind](flt)):
                            reason = f"{flt.kind}{' ' + flt.target if flt.target else ''}"
                            break
                    if reason is None and any(abs(t - s) <= 5 for s in starts.get(name, [])):
                        reason = "start/stop"
                    if reason is None and t >= load_stopped:
                        reason = "shutdown"
                g = groups.setdefault(key, {"level": lvl, "count": 0, "unexplained": 0, "explained_by": {},
                                            "example": text})
                g["count"] += 1
                if reason is None:
                    g["unexplained"] += 1
                    g.setdefault("unexplained_example", text)
                else:
                    g["explained_by"][reason] = g["explained_by"].get(reason, 0) + 1
        for key, g in groups.items():
            if g["unexplained"] >= 2 and name != "redis":
                fails.append(f"{name}: {g['unexplained']}× outside fault windows: {key}")
            elif g["unexplained"] == 1 and g["level"] == "ERROR" and name != "redis":
                fails.append(f"{name}: an ERROR outside fault windows: {key}")
        out[name] = dict(sorted(groups.items(), key=lambda kv: -kv[1]["count"]))
    return out


# ------------------------------------------------------------------ printing

def print_summary(s, out):
    p = print
    p("")
    p("=" * 78)
    p(f"soak: {s['result']}   ({s['duration_s']:.0f} s of load{'; INTERRUPTED: partial figures' if s['interrupted'] else ''})")
    p("=" * 78)
    d = s["delivery"]
    p("delivery (per client, after de-duplication by id)")
    p(f"  {'source':<8} {'published':>10} {'uncertain':>9} {'expected':>11} {'received':>11} {'lost':>7} {'dup→app':>7}")
    for src in ("http", "lua", "argo_d", "argo_h", "live"):
        a = d["by_source"].get(src)
        if not a:
            continue
        p(f"  {src:<8} {a['published_confirmed']:>10} {a['uncertain']:>9} {a['expected']:>11} {a['received']:>11} "
          f"{a['lost']:>7} {a['duplicates_to_app']:>7}")
    du = d["durable"]
    p(f"  durable: {du['received']}/{du['expected']} delivered, lost {du['lost']}, duplicates to the app "
      f"{du['duplicates_to_app']}, duplicates dropped by the client {du['duplicates_dropped_by_client']}")
    lv = d["live_only"]
    p(f"  live-only: lost {lv['lost_total']} of {lv['expected']} (outside fault windows and reconnects: {lv['lost_outside_faults']})")
    p(f"  recovered:false {d['recovered_false']}, lagged {d['lagged']}, close codes {d['close_codes']}")
    wh = d["publish"]["webhooks"]
    p(f"  webhooks: {wh.get('deliveries', 0)} deliveries, {wh.get('retried_deliveries', 0)} retried, "
      f"{wh.get('redeliveries', 0)} redelivered on purpose ({wh.get('redelivery_duplicate', 0)} answered duplicate)")
    p("")
    p("faults")
    p(f"  {'#':>2} {'at s':>6} {'fault':<18} {'ready':>6} {'back':>6} {'caught':>7} {'cut':>5} {'rc p50':>7} {'rc p99':>7} {'rc max':>7}  notes")
    for i, f in enumerate(s["recovery"]["faults"], 1):
        name = f["kind"] + (" " + f["target"] if f["target"] else "")
        fmt = lambda v: "-" if v is None else f"{v:.2f}"
        p(f"  {i:>2} {f['at_s']:>6.0f} {name:<18} {fmt(f['ready_s']):>6} {fmt(f['all_back_s']):>6} "
          f"{fmt(f['caught_up_s']):>7} {f['cut']:>5} {fmt(f['reconnect_p50_s']):>7} {fmt(f['reconnect_p99_s']):>7} "
          f"{fmt(f['reconnect_max_s']):>7}  {'OK' if f['ok'] else 'FAILED'} {'; '.join(f['notes'])[:70]}")
    rc = s["recovery"]["reconnect_s"]
    p(f"  client reconnects after faults: n={rc['n']} p50={rc['p50']} s p99={rc['p99']} s max={rc['max']} s")
    p("")
    p("leaks (slope per 10 min over the steady samples; a restarted process is a new series)")
    p(f"  {'series':<13} {'RSS MiB first→last':>19} {'RSS/10min':>10} {'fds/10min':>10} {'thr/10min':>10}  verdicts")
    for name, e in s["leaks"].items():
        if not e.get("judged"):
            continue
        fd = e.get("fds_other") or e.get("fds")
        fmtv = lambda r: "n/a" if r.get("slope_per_10min") is None else f"{r['slope_per_10min']:+.3f}"
        verdicts = "/".join(r["verdict"] for r in (e["rss_mib"], fd, e["threads"]))
        p(f"  {name:<13} {e['rss_mib_first']:>8.1f} → {e['rss_mib_last']:<8.1f} {fmtv(e['rss_mib']):>10} {fmtv(fd):>10} "
          f"{fmtv(e['threads']):>10}  {verdicts}  (steady {e['rss_mib']['steady_s']:.0f} s)")
    p("")
    p("WARN/ERROR lines (explained = inside the window of a fault that reaches that process)")
    for proc, groups in s["logs"].items():
        for key, g in list(groups.items())[:12]:
            tag = "UNEXPLAINED" if g["unexplained"] else "explained"
            p(f"  {proc:<9} {g['count']:>5}× {tag:<11} {key[:90]}")
    out_of = s["broker_reconnects_outside_faults"]
    p(f"  broker reconnects outside fault windows: {out_of}")
    m = s.get("metrics", {})
    p(f"  Redis pub/sub clients outside faults (count: samples): {m.get('pubsub_clients_outside_faults')}; "
      f"broker_connected=0 outside faults: {m.get('broker_disconnected_samples_outside_faults') or 'never'}; "
      f"dropped {m.get('dropped')}")
    p(f"  gateways' messages_delivered_total increase (between first and last sample of each process) "
      f"{m.get('delivered_by_gateways', 0):.0f}; events the clients received {m.get('clients_received_frames_events', 0)}")
    p("")
    if s["failures"]:
        p("FAILURES")
        for f in s["failures"]:
            p(f"  - {f}")
    p(f"files: {out}/summary.json, samples.csv, timeline.jsonl, gaps.jsonl, *.log")
    p(f"soak: {s['result']}")


# ------------------------------------------------------------------ self-test

def self_test() -> int:
    """The checks must bite: synthetic series and logs with a known answer."""

    class A:
        max_rss_slope = 1.0
        max_fd_slope = 1.0
        max_thread_slope = 1.0
        warmup_secs = 60
        min_steady_secs = 120
        redis_pool_cap = 34

    rng = random.Random(12)
    ok = True

    def series(proc, gen, t0, n, rss_fn, fds_fn=lambda i: 40, thr_fn=lambda i: 8, conns_fn=lambda i: 500,
               pool_fn=lambda i: 3):
        rows = []
        for i in range(n):
            t = t0 + i * 5.0
            rows.append({"t": t, "proc": proc, "gen": gen, "rss_kib": rss_fn(i, t) * 1024,
                         "fds": fds_fn(i) + conns_fn(i) + pool_fn(i), "threads": thr_fn(i), "conns_open": conns_fn(i),
                         "client_socks": conns_fn(i), "redis_conns": pool_fn(i), "fds_other": fds_fn(i)})
        return rows

    def verdicts(rows, windows):
        fails = []
        res = analyse_leaks(rows, windows, A, fails)
        return res, fails

    cases = []
    t0 = 1_000_000.0
    # 1 flat with noise over an hour: pass
    cases.append(("flat RSS with noise", series("gw1", 1, t0, 720, lambda i, t: 40 + rng.gauss(0, 0.3)), [], False))
    # 2 a 2 MiB / 10 min growth: fail
    cases.append(("RSS growing 2 MiB/10 min", series("gw1", 1, t0, 720, lambda i, t: 40 + (t - t0) / 600 * 2 + rng.gauss(0, 0.3)), [], True))
    # 3 a slow growth 0.5 MiB / 10 min: under the threshold
    cases.append(("RSS growing 0.5 MiB/10 min", series("gw1", 1, t0, 720, lambda i, t: 40 + (t - t0) / 600 * 0.5 + rng.gauss(0, 0.3)), [], False))
    # 4 level shifts at faults (clients moved over), flat between: pass
    win = [(t0 + k * 240 - 2, t0 + k * 240 + 40) for k in range(1, 15)]
    cases.append(("RSS steps at faults, flat between", series("gw1", 1, t0, 720,
                  lambda i, t: 40 + 8 * (int((t - t0) / 240) % 2) + rng.gauss(0, 0.3)), win, False))
    # 5 growth inside every segment, reset by faults: fail
    cases.append(("RSS growing between faults", series("gw1", 1, t0, 720,
                  lambda i, t: 40 + ((t - t0) % 240) / 600 * 3 + rng.gauss(0, 0.2)), win, True))
    # 6 an fd leaked per 10 s (beside the clients' sockets): fail
    cases.append(("fds leaking 1 per 10 s", series("gw2", 1, t0, 720, lambda i, t: 40 + rng.gauss(0, 0.3),
                  fds_fn=lambda i: 40 + i // 2), [], True))
    # 7 fds following the connections only: pass
    cases.append(("fds follow the connections", series("gw2", 1, t0, 720, lambda i, t: 40 + rng.gauss(0, 0.3),
                  conns_fn=lambda i: 500 + (i % 60) * 3), [], False))
    # 7b the Redis pool grows in steps (bounded): RSS and fds steps at each, flat between: pass
    pool = lambda i: min(32, 3 + 4 * (i // 100))
    cases.append(("Redis pool growing in steps", series("gw2", 1, t0, 720,
                  lambda i, t: 40 + 0.4 * pool(i) + rng.gauss(0, 0.2), pool_fn=pool), [], False))
    # 7c a connection leak to Redis: past the pool's cap: fail
    cases.append(("Redis connections past the cap", series("gw2", 1, t0, 720, lambda i, t: 40 + rng.gauss(0, 0.2),
                  pool_fn=lambda i: 3 + i // 10), [], True))
    # 8 a thread per minute: fail
    cases.append(("threads growing 1/min", series("publisher", 1, t0, 720, lambda i, t: 30 + rng.gauss(0, 0.2),
                  thr_fn=lambda i: 8 + i // 12), [], True))
    # 9 too short to judge: no verdict, no failure
    cases.append(("3 minutes of growth", series("gw1", 1, t0, 36, lambda i, t: 40 + (t - t0) / 600 * 0.3), [], False))
    # 10 two generations: the restart resets RSS; each flat: pass
    rows10 = series("gw1", 1, t0, 360, lambda i, t: 60 + rng.gauss(0, 0.3)) + \
        series("gw1", 2, t0 + 1800, 360, lambda i, t: 20 + rng.gauss(0, 0.3))
    cases.append(("restart = new series", rows10, [], False))
    for name, rows, windows, want_fail in cases:
        res, fails = verdicts(rows, windows)
        got = bool(fails)
        good = got == want_fail
        ok &= good
        slopes = {k: {m: v[m].get("slope_per_10min") for m in v if isinstance(v.get(m), dict)} for k, v in res.items()}
        print(f"  {'ok  ' if good else 'BAD '} {name:<38} expected {'FAIL' if want_fail else 'pass'}, got "
              f"{'FAIL' if got else 'pass'}  {slopes}")
        for f in fails:
            print(f"         {f}")

    # logs: a repeated warning outside any fault fails; inside a fault window it is explained.
    class FakeProc:
        pass

    class FakeSoak:
        pass

    tmp = tempfile.mkdtemp(prefix="tidings-soak-selftest-")
    try:
        fs = FakeSoak()
        fs.out = tmp
        fs.procs = {"gw1": FakeProc()}
        fs.load_stopped = t0 + 10_000
        with open(os.path.join(tmp, "timeline.jsonl"), "w") as f:
            f.write(json.dumps({"t": t0, "what": "start", "proc": "gw1"}) + "\n")
        fault = Fault("redis-stop", None, t0 + 600, end=t0 + 640)

        def line(t, msg, level="WARN"):
            return json.dumps({"timestamp": rfc3339(t), "level": level, "fields": {"message": msg},
                               "target": "tidings_broker::redis"}) + "\n"

        for label, lines, want_fail in [
            ("warning repeated outside faults", [line(t0 + 100, "redis pub/sub probe timed out"),
                                                 line(t0 + 105, "redis pub/sub probe timed out")], True),
            ("warning repeated inside a Redis fault", [line(t0 + 605, "redis pub/sub probe timed out"),
                                                       line(t0 + 610, "redis pub/sub probe timed out")], False),
            ("a panic line", ["thread 'tokio-runtime-worker' panicked at src/hub.rs:1:1\n"], True),
        ]:
            with open(os.path.join(tmp, "gw1.log"), "w") as f:
                f.writelines(lines)
            fails = []
            analyse_logs(fs, [(fault.window(), fault)], fails)
            good = bool(fails) == want_fail
            ok &= good
            print(f"  {'ok  ' if good else 'BAD '} {label:<38} expected {'FAIL' if want_fail else 'pass'}, got "
                  f"{'FAIL' if fails else 'pass'}  {fails}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # accounting: gaps, uncertain publishes, duplicates
    class S2:
        pass

    s2 = S2()
    s2.uncertain = {"w": {"http": {5}, "live": set()}}
    s2.gaps = []
    s2.dups = []
    s2.note_dup = lambda c, src, seq: s2.dups.append(seq)
    c = Client.__new__(Client)
    c.soak, c.ws, c.index, c.track, c.lost, c.app_dups = s2, "w", 0, {}, {}, {}
    c.last_live_epoch, c.epoch, c.connected_at, c.server = None, 0, 0.0, None
    for seq in (1, 2, 3, 4, 6, 7, 9, 8, 10, 5, 5):  # 5 uncertain arrives late and twice; 8 out of order
        c.check("http", seq, 0.0)
    lost, dups = c.lost.get("http", 0), c.app_dups.get("http", 0)
    good = lost == 1 and dups == 2
    ok &= good
    print(f"  {'ok  ' if good else 'BAD '} {'accounting: gap, late uncertain, dup':<38} expected lost 1 dup 2, got lost {lost} dup {dups}")
    print("self-test:", "ok (the checks bite)" if ok else "FAILED")
    return 0 if ok else 1


# ------------------------------------------------------------------ main

def parse_args(argv):
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of load (default 60)")
    p.add_argument("--conns", type=int, default=1000, help="WebSocket clients through nginx (default 1000)")
    p.add_argument("--workspaces", type=int, default=20)
    p.add_argument("--rate-http", type=float, default=100.0, help="durable events/s through the publisher's HTTP API")
    p.add_argument("--rate-lua", type=float, default=50.0, help="durable events/s by EVALSHA of scripts/publish.lua")
    p.add_argument("--rate-live", type=float, default=50.0, help="live-only events/s by bare PUBLISH")
    p.add_argument("--rate-webhooks", type=float, default=0.5, help="Argo CD webhook deliveries/s (2 events each)")
    p.add_argument("--redeliver", type=float, default=0.1, help="fraction of webhook deliveries sent twice on purpose")
    p.add_argument("--churn", type=float, default=1.0, help="clients reconnecting on purpose per second")
    p.add_argument("--pad", type=int, default=150, help="padding bytes per soak event")
    p.add_argument("--fault-every", type=float, default=None, help="seconds between faults (default: 240 for an hour, "
                   "shorter for short runs)")
    p.add_argument("--faults", default=",".join(FAULTS_DEFAULT),
                   help=f"rotation, comma-separated, or 'all' (adds redis-restart); default {','.join(FAULTS_DEFAULT)}")
    p.add_argument("--drain-secs", type=int, default=None, help="TIDINGS_DRAIN_SECS of the gateways (default 30, 8 for runs under 30 min)")
    p.add_argument("--redis-stop-secs", type=float, default=10.0)
    p.add_argument("--restart-delay", type=float, default=2.0, help="seconds between a SIGKILL and the restart")
    p.add_argument("--recovery-limit", type=float, default=120.0, help="a fault not recovered by then fails the soak")
    p.add_argument("--settle-secs", type=float, default=None, help="after a fault's recovery, still its window (default 30, 10 for short runs)")
    p.add_argument("--no-rebalance", dest="rebalance", action="store_false",
                   help="leave the clients where the faults put them")
    p.add_argument("--rebalance-rate", type=float, default=50.0, help="clients moved per second when rebalancing")
    p.add_argument("--sample-secs", type=float, default=5.0)
    p.add_argument("--progress-secs", type=float, default=30.0)
    p.add_argument("--warmup-secs", type=float, default=None, help="start of each process series left out of the leak fit "
                   "(default 120; 60 for runs under 30 min)")
    p.add_argument("--min-steady-secs", type=float, default=None, help="least steady time of a series for a leak verdict, "
                   "else n/a (default 300; 120 for runs under 30 min)")
    p.add_argument("--max-rss-slope", type=float, default=1.0, help="MiB per 10 min (default 1.0)")
    p.add_argument("--max-fd-slope", type=float, default=1.0, help="descriptors per 10 min (default 1.0)")
    p.add_argument("--max-thread-slope", type=float, default=1.0, help="threads per 10 min (default 1.0)")
    p.add_argument("--history-size", type=int, default=10000)
    p.add_argument("--redis-pool-cap", type=int, default=34,
                   help="most Redis connections a gateway or publisher may hold: the command pool's max_size 32 "
                        "(crates/broker/src/redis/mod.rs) + pub/sub + revocations")
    p.add_argument("--connect-rate", type=float, default=200.0, help="initial connections per second")
    p.add_argument("--ping-secs", type=float, default=20.0, help="client {type:ping} period (crates/client: 20)")
    p.add_argument("--final-wait", type=float, default=60.0, help="seconds to wait for the clients after the load")
    p.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    p.add_argument("--nginx-conf", default=os.path.join(ROOT, "deploy/nginx/nginx.conf"),
                   help="the load balancer's config (default deploy/nginx/nginx.conf; its four address lines are rewritten)")
    p.add_argument("--max-recovery-secs", type=float, default=15.0,
                   help="a fault fails when, after it healed, not every client has a new event within this (default 15)")
    p.add_argument("--out", default=os.path.join(ROOT, "target/soak"))
    p.add_argument("--canary-leak", type=float, default=0.0, metavar="KIB_PER_S",
                   help="also run and judge a process that leaks this many KiB/s (and an fd per 10 s): the run must FAIL")
    p.add_argument("--self-test", action="store_true", help="check that the leak and log checks bite, on synthetic data")
    a = p.parse_args(argv)
    short = a.minutes < 30
    if a.fault_every is None:
        a.fault_every = 240.0 if not short else max(30.0, a.minutes * 60 / 6)
    if a.drain_secs is None:
        a.drain_secs = 30 if not short else 8
    if a.settle_secs is None:
        a.settle_secs = 30.0 if not short else 10.0
    # A slope over less than two minutes of steady samples says nothing (allocator
    # warm-up alone moves RSS by MiBs): short trials mostly report n/a.
    if a.warmup_secs is None:
        a.warmup_secs = 120.0 if not short else 60.0
    if a.min_steady_secs is None:
        a.min_steady_secs = 300.0 if not short else 120.0
    a.faults = FAULTS_ALL if a.faults == "all" else tuple(x.strip() for x in a.faults.split(",") if x.strip())
    for f in a.faults:
        if f not in FAULTS_ALL:
            p.error(f"unknown fault {f!r}; known: {', '.join(FAULTS_ALL)}")
    if a.conns < a.workspaces:
        p.error("--conns must be at least --workspaces")
    return a


def main(argv=None):
    global _libc
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.self_test:
        return self_test()
    try:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        _libc = None
    for tool in ("redis-server", "nginx"):
        if shutil.which(tool) is None:
            print(f"scripts/soak: {tool} is missing (apt-get install redis-server nginx)", file=sys.stderr)
            return 2
    soft, hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    need = args.conns + 200
    if soft < need:
        try:
            __import__("resource").setrlimit(__import__("resource").RLIMIT_NOFILE, (min(hard, max(need, 16384)), hard))
        except (ValueError, OSError):
            print(f"scripts/soak: the open-file limit {soft} is below {need}", file=sys.stderr)
            return 2
    soak = Soak(args)
    try:
        summary = asyncio.run(soak.run())
    except SystemExit:
        raise
    except Exception as e:
        traceback.print_exc()
        print(f"scripts/soak: {e}", file=sys.stderr)
        return 2
    if soak.interrupted:
        return 130
    return 0 if summary["result"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
