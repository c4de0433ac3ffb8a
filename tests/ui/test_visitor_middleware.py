"""ui.visitors: who a request comes from, and the middleware that hands out visitor cookies and keeps Gradio's file
route away from other visitors' files (on a small Starlette app standing in for Gradio's routes)."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from core.engine import Engine
from core.engine.visitors import Visitor, VisitorSettings
from ui.visitors import VISITOR_COOKIE, VisitorMiddleware, file_route_targets, scoped, signed_in_name, visitor_of


@pytest.fixture
def instance(tmp_path) -> Engine:
    return Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True))


def served(instance: Engine, secure: bool = False) -> TestClient:
    """A stand-in for Gradio behind the middleware: its file route answers 200 with the path it was asked for.
    As on a Space with ``hf_oauth: true``, a signed session cookie carries the Hugging Face sign-in (Starlette's
    SessionMiddleware, outside ours, as Gradio adds it), set by ``/sign-in/<name>`` as Gradio's OAuth callback does."""
    async def file(request):
        return PlainTextResponse(request.path_params["path"])

    async def sign_in(request):
        request.session.update(oauth(request.path_params["name"], float(request.query_params.get("expires", 3600))))
        return PlainTextResponse("signed in")

    routes = [Route("/gradio_api/file={path:path}", file), Route("/file={path:path}", file),
              Route("/gradio_api/file/{path:path}", file), Route("/", lambda request: PlainTextResponse("page")),
              Route("/sign-in/{name}", sign_in)]
    app = Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, secret_key="space-secret"),
                                               Middleware(VisitorMiddleware, visitors=instance.visitors,
                                                          secure=secure)])
    return TestClient(app, base_url="https://testserver" if secure else "http://testserver")


def gradio_request(cookie: str | None = None, session: dict | None = None, session_hash: str | None = None):
    """What a handler's ``gr.Request`` holds: the Starlette request (its scope) and the Gradio session id."""
    headers = [(b"cookie", f"{VISITOR_COOKIE}={cookie}".encode())] if cookie else []
    scope = {"headers": headers, **({"session": session} if session is not None else {})}
    return SimpleNamespace(request=SimpleNamespace(scope=scope), username=None, session_hash=session_hash)


def oauth(name: str, expires_in: float = 3600) -> dict:
    return {"oauth_info": {"userinfo": {"preferred_username": name}, "expires_at": time.time() + expires_in}}


def test_a_request_is_a_signed_in_visitor_then_a_cookie_then_a_session():
    assert visitor_of(gradio_request("cookie-secret-1", oauth("ada"), "s" * 10)) == Visitor.signed_in_as("ada")
    assert visitor_of(gradio_request("cookie-secret-1", None, "s" * 10)) == Visitor.anonymous("cookie-secret-1")
    assert visitor_of(gradio_request(None, None, "session-hash-1")) == Visitor.anonymous("session-hash-1")
    assert signed_in_name(oauth("ada", expires_in=-5)) is None  # an expired sign-in is anonymous again
    assert signed_in_name({"oauth_info": "garbage"}) is None and signed_in_name(None) is None


def test_scoped_gives_the_instance_on_a_single_user_app_and_a_view_on_a_shared_one(tmp_path, instance):
    local = Engine(tmp_path / "local")
    assert scoped(local, None) is local and scoped(local, gradio_request("x" * 12)) is local
    alice = scoped(instance, gradio_request("alice-cookie-secret"))
    assert alice is scoped(instance, gradio_request("alice-cookie-secret")) and alice is not instance
    assert alice.workspace.root.parent == instance.workspace.root / "visitors"
    with pytest.raises(ValueError, match="needs a browser session"):
        scoped(instance, None)


def test_every_browser_gets_a_cookie_once(instance):
    client = served(instance)
    first = client.get("/")
    cookie = first.cookies.get(VISITOR_COOKIE)
    assert first.status_code == 200 and cookie and len(cookie) >= 24
    assert "httponly" in first.headers["set-cookie"].lower() and "samesite=lax" in first.headers["set-cookie"].lower()
    assert VISITOR_COOKIE not in client.get("/").headers.get("set-cookie", "")  # it has one now
    space = served(instance, secure=True).get("/").headers["set-cookie"].lower()
    # a Space shows the app in an iframe of huggingface.co: a cookie there must be cross-site and partitioned
    assert "secure" in space and "samesite=none" in space and "partitioned" in space


def test_the_file_route_serves_a_visitor_their_own_files_only(instance, tmp_path):
    alice_cookie, bob_cookie = "alice-cookie-secret", "bob-cookie-secret"
    alice = instance.visitors.engine(Visitor.anonymous(alice_cookie))
    instance.visitors.engine(Visitor.anonymous(bob_cookie))
    secret = alice.workspace.uploads / "documents" / "plans.md"
    secret.parent.mkdir(parents=True)
    secret.write_text("the zorblax launch")
    manifest = instance.workspace.root / "indexes" / "demo" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    link = tmp_path / "innocent.md"
    link.symlink_to(secret)
    bob_folder = instance.workspace.root / "visitors" / Visitor.anonymous(bob_cookie).key
    spellings = [str(secret), f"{instance.workspace.root}//visitors/./{alice.workspace.root.name}/uploads/documents/"
                 "plans.md", f"{bob_folder}/../{alice.workspace.root.name}/uploads/documents/plans.md", str(link),
                 # a second marker inside the path: Gradio's /file/ route reads past it, to Alice's file
                 f"{bob_folder}/file=/../../{alice.workspace.root.name}/uploads/documents/plans.md",
                 f"{bob_folder}/file=/..%2f..%2f{alice.workspace.root.name}/uploads/documents/plans.md"]

    client = served(instance)
    for prefix in ("/gradio_api/file=", "/file=", "/gradio_api/file/"):
        for spelling in spellings:
            for cookie in (bob_cookie, None):
                client.cookies.clear()
                if cookie:
                    client.cookies.set(VISITOR_COOKIE, cookie)
                answer = client.get(prefix + spelling)
                assert answer.status_code == 404 and "zorblax" not in answer.text, (prefix, spelling, cookie)
    client.cookies.clear()
    assert client.get(f"/gradio_api/file={manifest}").status_code == 404  # the instance's files: never by path
    client.cookies.set(VISITOR_COOKIE, alice_cookie)
    assert client.get(f"/gradio_api/file={secret}").status_code == 200  # one's own
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not ours")
    assert client.get(f"/gradio_api/file={outside}").status_code == 200  # Gradio's own rules decide the rest


def test_file_route_targets_are_every_reading_gradio_could_make():
    assert file_route_targets("/gradio_api/file=/ws/a.md") == ["/ws/a.md"]
    assert file_route_targets("/file=ws/a.md") == ["ws/a.md"]
    assert file_route_targets("/gradio_api/file//ws/a.md") == ["/ws/a.md"]
    assert sorted(file_route_targets("/gradio_api/file/x/file=/../b")) == ["/../b", "x/file=/../b"]
    assert sorted(file_route_targets("/gradio_api/file//a/file/b")) == ["/a/file/b", "b"]
    assert file_route_targets("/gradio_api/queue/join") == []


def test_a_signed_in_visitor_reads_their_own_files_in_persistent_storage_only(tmp_path):
    keep = tmp_path / "data" / "tune-arena"
    engine = Engine(tmp_path / "ws", confined=True, visitors=VisitorSettings(enabled=True, persistent=keep))
    ada = engine.visitors.engine(Visitor.signed_in_as("ada"))
    notes = ada.workspace.uploads / "documents" / "ada.md"
    notes.parent.mkdir(parents=True)
    notes.write_text("ada's zorblax plans")
    assert keep in notes.parents
    carol = engine.visitors.engine(Visitor.anonymous("carol-cookie-secret"))
    carol_notes = carol.workspace.root / "notes.md"
    carol_notes.write_text("carol's zorblax plans")
    stray = keep / "stray.md"  # in persistent storage, in no visitor's workspace
    stray.write_text("zorblax")
    spellings = [str(notes), f"{keep}//visitors/./hf-eve/../hf-ada/uploads/documents/ada.md"]

    client = served(engine)
    for cookie in ("carol-cookie-secret", None):  # not signed in: ada's files are no one else's
        client.cookies.clear()
        if cookie:
            client.cookies.set(VISITOR_COOKIE, cookie)
        for spelling in spellings:
            answer = client.get(f"/gradio_api/file={spelling}")
            assert answer.status_code == 404 and "zorblax" not in answer.text, (cookie, spelling)
    client.cookies.clear()
    assert client.get("/sign-in/ada").status_code == 200
    for spelling in spellings:
        assert client.get(f"/gradio_api/file={spelling}").status_code == 200, spelling  # her own, by the session
    for other in (carol_notes, stray):  # an anonymous visitor's, and persistent storage outside her workspace
        assert client.get(f"/gradio_api/file={other}").status_code == 404, other
    client.cookies.set(VISITOR_COOKIE, "carol-cookie-secret")  # signed in, the sign-in decides, not the cookie
    assert client.get(f"/gradio_api/file={carol_notes}").status_code == 404

    eve = served(engine)
    eve.get("/sign-in/eve")  # another signed-in visitor
    assert eve.get(f"/gradio_api/file={notes}").status_code == 404
    expired = served(engine)
    expired.get("/sign-in/ada?expires=-5")  # a sign-in that has expired is no sign-in
    assert expired.get(f"/gradio_api/file={notes}").status_code == 404


def test_the_sign_in_button_shows_on_a_shared_app_of_a_space_with_oauth(tmp_path, monkeypatch):
    import gradio as gr
    import gradio.oauth

    from app import build_app, login_available, visitor_line

    def login_buttons(demo) -> int:
        return sum(isinstance(block, gr.LoginButton) for block in demo.blocks.values())

    for variable in ("OAUTH_CLIENT_ID", "SYSTEM", "SPACE_ID"):
        monkeypatch.delenv(variable, raising=False)
    assert not login_available()  # a local run
    shared = Engine(tmp_path / "shared", confined=True, visitors=VisitorSettings(enabled=True))
    demo = build_app(shared)
    assert login_buttons(demo) == 0 and "Sign in" not in visitor_line(shared, gradio_request("bob-cookie-secret"))
    assert demo.delete_cache == (600, 24 * 3600)  # Gradio's copies of uploads and downloads go with the sweep
    assert build_app(Engine(tmp_path / "local")).delete_cache is None  # a single-user app keeps Gradio's default

    monkeypatch.setenv("OAUTH_CLIENT_ID", "space-oauth-client")
    assert not login_available()  # outside a Space Gradio would fake the sign-in with this machine's HF token
    # a Space with `hf_oauth: true`: Hugging Face sets these (Gradio reads its OAuth settings when imported)
    space = {"SYSTEM": "spaces", "SPACE_ID": "team/tune-arena", "OAUTH_CLIENT_ID": "space-oauth-client",
             "OAUTH_CLIENT_SECRET": "space-oauth-secret", "OAUTH_SCOPES": "openid profile",
             "OPENID_PROVIDER_URL": "https://huggingface.co"}
    for variable, value in space.items():
        monkeypatch.setenv(variable, value)
        if hasattr(gradio.oauth, variable):
            monkeypatch.setattr(gradio.oauth, variable, value)
    assert login_available()
    with monkeypatch.context() as missing:
        missing.setitem(sys.modules, "authlib", None)  # Gradio's OAuth packages not installed: no button
        assert not login_available()
    on_space = build_app(Engine(tmp_path / "space", confined=True, visitors=VisitorSettings(enabled=True)))
    assert login_buttons(on_space) == 1
    assert "/login/huggingface" in {getattr(route, "path", None) for route in on_space.app.routes}
    assert "Sign in with Hugging Face to keep them" in visitor_line(shared, gradio_request("bob-cookie-secret"))
    assert login_buttons(build_app(Engine(tmp_path / "space-local"))) == 0  # single-user: nobody to tell apart
    kept = Engine(tmp_path / "kept", confined=True,
                  visitors=VisitorSettings(enabled=True, persistent=tmp_path / "data" / "tune-arena"))
    line = visitor_line(kept, gradio_request("bob-cookie-secret", oauth("ada")))
    assert line.startswith("Signed in as **@ada**") and "kept across restarts" in line
