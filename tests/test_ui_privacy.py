"""Private by default, on the app really served on 127.0.0.1: no outbound connection, nothing about
the API before sign-in, exports private and gone once downloaded, sign-in attempts limited, and
names normalised one way everywhere."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("gradio")
from alignment.ui.annotators import (
    AnnotatorRegistry,
    add_annotator,
    load_annotators,
)
from alignment.ui.app import launch
from alignment.ui.exports import ExportFolder
from alignment.ui.signin import SignInLimiter

from alignment.cli import main
from alignment.errors import DataError
from tests.ranking_support import (
    PASSWORDS,
    ApiSession,
    Clock,
    Serve,
    fill_store,
    free_port,
    served_apps,
)

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: object) -> bool:
    if host is None or host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


class OutboundRecorder:
    """Refuses and records every connection or name lookup that would leave the machine."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def check(self, what: str, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if isinstance(address, (str, bytes)):  # an AF_UNIX path stays on this machine
            return
        if not is_loopback(host):
            self.attempts.append(f"{what} {address!r}")
            raise ConnectionRefusedError(f"test forbids leaving 127.0.0.1: {what} {address!r}")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        connect, connect_ex, getaddrinfo = (
            socket.socket.connect,
            socket.socket.connect_ex,
            socket.getaddrinfo,
        )

        def guarded_connect(sock: socket.socket, address: object) -> None:
            self.check("connect", address)
            return connect(sock, address)

        def guarded_connect_ex(sock: socket.socket, address: object) -> int:
            self.check("connect_ex", address)
            return connect_ex(sock, address)

        def guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
            self.check("getaddrinfo", (host.decode() if isinstance(host, bytes) else host, 0))
            return getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", guarded_connect)
        monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    with served_apps(tmp_path) as start:
        yield start


def sign_in(url: str, name: str, password: str) -> httpx.Response:
    return httpx.post(f"{url}login", data={"username": name, "password": password})


def test_the_app_makes_no_outbound_connection(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = OutboundRecorder()
    recorder.install(monkeypatch)
    # The recorder sees a plain connect and a name lookup (so an empty record means something).
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    with pytest.raises(httpx.ConnectError):
        httpx.get("https://api.gradio.app/pkg-version")
    assert len(recorder.attempts) == 2
    recorder.attempts.clear()
    # Whatever the environment says, the app turns Gradio's analytics off itself.
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")

    url, _ = serve()
    assert httpx.get(url).status_code == 200  # the sign-in page
    session = ApiSession(url, "alice", PASSWORDS["alice"])
    lease = session.call("next")
    saved = session.call("submit", lease["token"], [1, 2, 3, 4], False)
    assert saved["next"]["prompt_id"] == 2
    session.close()
    assert recorder.attempts == []


def test_nothing_about_the_api_before_sign_in(
    serve: Serve,
) -> None:
    url, _ = serve()
    page = httpx.get(url)
    assert page.status_code == 200 and "auth_required" in page.text
    for endpoint in ("next", "submit", "skip", "undo", "progress", "admin_stats"):
        assert f"/{endpoint}" not in page.text
    refused = {
        path: httpx.get(f"{url}{path.lstrip('/')}").status_code
        for path in (
            "/config",
            "/gradio_api/info",
            "/gradio_api/info?all_endpoints=true",
            "/gradio_api/openapi.json",
            "/openapi.json",
            "/docs",
            "/redoc",
            "/monitoring",
        )
    }
    assert all(code in (401, 404) for code in refused.values()), refused
    # Signed in, scripts reach the endpoints (they are just not listed anywhere).
    session = ApiSession(url, "bob", PASSWORDS["bob"])
    assert session.call("progress") == {"annotator": "bob", "done_today": 0, "left": 6}
    assert "/next" not in session.http.get("/").text
    session.close()


def test_sign_in_attempts_are_limited_per_name_then_per_client(
    serve: Serve,
) -> None:
    url, _ = serve()
    for attempt in range(5):
        # The same name however it is typed: spaces and case do not make a new name.
        typed = ["alice", " alice", "ALICE", "Alice ", "alice"][attempt]
        assert sign_in(url, typed, "wrong-password").status_code == 400
    refused = sign_in(url, "alice", PASSWORDS["alice"])  # right password, but paused
    assert refused.status_code == 429
    assert refused.json()["detail"] == (
        "Too many failed sign-ins for 'alice'. Wait 15 minutes, then try again, "
        "or ask your admin to reset your password."
    )
    assert sign_in(url, "bob", PASSWORDS["bob"]).status_code == 200  # other names are not
    # One client trying many names: 20 failures from this address pause it for every name.
    for n in range(15):
        assert sign_in(url, f"guess{n}", "wrong-password").status_code == 400
    refused = sign_in(url, "carol", PASSWORDS["carol"])
    assert refused.status_code == 429
    assert refused.json()["detail"].startswith("Too many failed sign-ins from this address.")


def test_sign_in_limiter_window_and_reset() -> None:
    clock = Clock(0.0)
    limiter = SignInLimiter(per_name=2, per_client=3, window_seconds=60, clock=clock)
    limiter.failed("alice", "10.0.0.1")
    clock.now = 10
    limiter.failed(" ALICE", "10.0.0.2")
    assert "for 'alice'" in limiter.refusal("alice", "10.0.0.3")
    clock.now = 60  # the first failure has left the window
    assert limiter.refusal("alice", "10.0.0.3") is None
    limiter.failed("alice", "10.0.0.3")
    limiter.succeeded("Alice")  # her success clears the name...
    assert limiter.refusal("alice", "10.0.0.3") is None
    limiter.failed("bob", "10.0.0.3")
    limiter.failed("carol", "10.0.0.3")  # ...not the client's count (3 from 10.0.0.3 now)
    assert limiter.refusal("dave", "10.0.0.3").startswith("Too many failed sign-ins from this")
    assert limiter.refusal("dave", "10.0.0.4") is None
    assert "Wait 1 minute," in limiter.refusal("dave", "10.0.0.3")


def test_names_are_normalised_the_same_way_everywhere(tmp_path: Path, serve: Serve) -> None:
    file = tmp_path / "people.yaml"
    assert add_annotator(file, "  Erin ", "erin-password").name == "Erin"
    assert add_annotator(file, "ｆｒａｎｋ", "frank-password").name == "frank"  # NFKC
    with pytest.raises(DataError, match="annotator 'Erin' already exists"):
        add_annotator(file, "erin", "other-password")
    assert add_annotator(file, "ERIN", "new-password", replace=True).name == "Erin"
    with pytest.raises(DataError, match="use 1-64 letters"):
        add_annotator(file, "e rin", "erin-password")
    registry = AnnotatorRegistry(file)
    assert registry.authenticate(" erin ", "new-password")
    assert registry.get("eRIN").name == "Erin"
    assert sorted(load_annotators(file)) == ["Erin", "frank"]

    entry = file.read_text().split("  Erin:", 1)[1].split("\n  frank:", 1)[0]
    file.write_text(file.read_text() + "  erin:" + entry)
    with pytest.raises(DataError, match=r"annotator 'erin': listed twice .*as 'Erin'"):
        load_annotators(file)
    file.write_text("annotators:\n  ｇｒｅｇ:\n    password: x\n")
    with pytest.raises(DataError, match=r"people\.yaml:2: .*write it as 'greg'"):
        load_annotators(file)

    # Over HTTP: Gradio strips the spaces, the app ignores case; the store knows one 'alice'.
    url, service = serve()
    for typed in (" alice ", "ALICE"):
        session = ApiSession(url, typed, PASSWORDS["alice"])
        assert session.call("progress")["annotator"] == "alice"
        session.close()
    assert [p.name for p in service.store.annotator_progress()] == ["alice", "bob", "carol"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_export_is_private_and_removed_once_downloaded(serve: Serve, tmp_path: Path) -> None:
    temp_exports_before = set(Path(tempfile.gettempdir()).glob("align-export-*"))
    url, service = serve()
    session = ApiSession(url, "alice", PASSWORDS["alice"])
    session.call("submit", session.call("next")["token"], [1, 2, 3, 4], False)
    result = service.export("admin", "pairs", "none", 1, False)
    out = result.out
    assert result.rows == 6 and out.read_text().count("\n") == 6
    root = tmp_path / "rankings.db-exports"
    assert out.parent.parent == root and out.name == "pairs.jsonl"
    assert (mode(root), mode(out.parent), mode(out)) == (0o700, 0o700, 0o600)

    # Not for anyone who is not signed in (and a refused request removes nothing).
    assert httpx.get(f"{url}gradio_api/file={out}").status_code == 401
    assert out.exists()
    written = out.read_text(encoding="utf-8")
    download = session.http.get(f"/gradio_api/file={out}")
    assert (download.status_code, download.text) == (200, written)
    assert not out.parent.exists()  # gone once downloaded...
    assert session.http.get(f"/gradio_api/file={out}").status_code in (403, 404)
    session.close()
    assert set(Path(tempfile.gettempdir()).glob("align-export-*")) == temp_exports_before


def test_exports_expire_and_go_when_the_app_stops(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    exports = ExportFolder(tmp_path / "r.db-exports", lifetime=600, clock=clock)
    old, new = exports.new_file("pairs.jsonl"), exports.new_file("rankings.jsonl")
    old.write_text("x")
    new.write_text("y")
    os.utime(old.parent, (clock.now - 600, clock.now - 600))  # made ten minutes ago
    os.utime(new.parent, (clock.now - 599, clock.now - 599))
    exports.sweep()
    assert exports.pending() == [new]
    # A killed app's leftovers are swept by the next one; this app's own go when it stops.
    leftover = tmp_path / "r.db-exports" / "from-a-killed-app"
    leftover.mkdir()
    os.utime(leftover, (clock.now - 3600, clock.now - 3600))
    ExportFolder(tmp_path / "r.db-exports", clock=clock).sweep()
    assert not leftover.exists()
    exports.close()
    assert not (tmp_path / "r.db-exports").exists()


def test_the_app_removes_its_export_folder_when_it_stops(tmp_path: Path) -> None:
    fill_store(tmp_path / "rankings.db", [("p1", ["a", "b"])]).close()
    demo, service = launch(
        tmp_path / "rankings.db", single_user="carol", port=free_port(), block=False
    )
    out = service.export("admin", "rankings", "none", 1, False).out
    assert out.exists()
    demo.close()
    assert not (tmp_path / "rankings.db-exports").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_cli_export_keeps_the_users_umask(tmp_path: Path) -> None:
    fill_store(tmp_path / "r.db", [("p1", ["a", "b"])]).close()
    out = tmp_path / "pairs.jsonl"
    main(["export", "--db", str(tmp_path / "r.db"), "--out", str(out)])
    umask = os.umask(0)
    os.umask(umask)
    assert mode(out) == 0o666 & ~umask
