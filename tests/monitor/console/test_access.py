"""The console's security rules against a running console: binding, the token, cross-site requests,
host names, escaping and snapshot routes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from model.config import ConfigError
from monitor import wire
from monitor.cli import main
from monitor.console.access import TOKEN_ENV, check_bind, load_token
from monitor.kafka_client import KafkaSettings
from tests.monitor.console.conftest import (
    MODEL,
    ConsoleFactory,
    Http,
    alert,
    jpeg,
    publish,
    score,
    thumbnail,
    wait_for,
)

TOKEN = "s3cret-console-token-for-tests"


def test_a_non_loopback_address_needs_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        check_bind("0.0.0.0", None)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        check_bind(host, None)
    check_bind("0.0.0.0", TOKEN)

    assert main(["console", "--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "c.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "--host 0.0.0.0" in err and TOKEN_ENV in err and "--token-file" in err
    )

    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 16"):
        load_token(short)
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert load_token(good) == TOKEN
    assert load_token(None, {TOKEN_ENV: TOKEN}) == TOKEN


def test_with_a_token_every_route_but_healthz_needs_it(
    start_console: ConsoleFactory, console_topics: wire.Topics, kafka_settings: KafkaSettings
) -> None:
    console = start_console(token=TOKEN)
    a = uuid.uuid4()
    publish(kafka_settings, console_topics.alerts, [wire.encode(alert("cam-1", a, snapshot=jpeg()))])
    publish(kafka_settings, console_topics.thumbnails, [wire.encode(thumbnail("cam-1", 0))])
    anonymous = Http(console.url)
    assert anonymous.request("/healthz")[0] == 200
    for path in ("/", "/alerts", f"/alerts/{a}"):
        status, headers, _ = anonymous.request(path)
        assert status == 303 and headers["location"].startswith("/login?next="), path
    guarded = (
        "/api/cameras", "/api/alerts", f"/api/alerts/{a}", f"/api/alerts/{a}/snapshot",
        "/api/cameras/cam-1/thumbnail", "/api/openapi.json", "/events", "/metrics", "/readyz",
    )  # fmt: skip
    for path in guarded:
        assert anonymous.request(path)[0] == 401, path
    post = anonymous.request(
        f"/api/alerts/{a}/feedback", "POST", b'{"verdict": "real"}', {"Origin": console.url}
    )
    assert post[0] == 401

    # The login form: a wrong token is refused, the right one sets an HttpOnly session cookie.
    anonymous.request("/login")
    csrf = anonymous.cookie("anomon_console_csrf")
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": console.url}
    wrong = anonymous.request("/login", "POST", f"token=nope&csrf_token={csrf}&next=/".encode(), form)
    assert wrong[0] == 401 and b"wrong token" in wrong[2]
    status, headers, _ = anonymous.request(
        "/login", "POST", f"token={TOKEN}&csrf_token={csrf}&next=//evil.example/".encode(), form
    )
    assert status == 303 and headers["location"] == "/", "no redirect off the console"
    assert "httponly" in headers["set-cookie"].lower() and TOKEN not in headers["set-cookie"]
    wait_for(lambda: anonymous.request("/api/cameras/cam-1/thumbnail")[0] == 200, what="the thumbnail")
    for path in (*guarded[:-3], "/metrics", "/readyz"):
        assert anonymous.request(path)[0] == 200, path

    # Scripts and Prometheus send the token as a bearer token; it needs no CSRF token.
    script = Http(console.url)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert script.request("/metrics", headers=bearer)[0] == 200
    assert script.request("/metrics", headers={"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
    status, _, body = script.request(
        f"/api/alerts/{a}/feedback",
        "POST",
        b'{"verdict": "real"}',
        {**bearer, "Content-Type": "application/json"},
    )
    assert status == 200 and json.loads(body)["verdict"] == "real"


def test_feedback_posts_need_this_origin_and_the_page_csrf_token(
    start_console: ConsoleFactory, console_topics: wire.Topics, kafka_settings: KafkaSettings
) -> None:
    console = start_console()
    a = uuid.uuid4()
    publish(kafka_settings, console_topics.alerts, [wire.encode(alert("cam-1", a))])
    browser = Http(console.url)
    wait_for(lambda: browser.request(f"/api/alerts/{a}")[0] == 200, what="the alert")
    browser.request("/")
    csrf = browser.cookie("anomon_console_csrf")
    assert csrf
    body, json_type = b'{"verdict": "false_alarm"}', {"Content-Type": "application/json"}
    path = f"/api/alerts/{a}/feedback"
    refused = {
        "no origin": {**json_type, "X-CSRF-Token": csrf},
        "another site": {**json_type, "X-CSRF-Token": csrf, "Origin": "http://evil.example"},
        "another site's referer": {**json_type, "X-CSRF-Token": csrf, "Referer": "http://evil.example/x"},
        "no CSRF token": {**json_type, "Origin": console.url},
        "a wrong CSRF token": {**json_type, "Origin": console.url, "X-CSRF-Token": "x" + csrf[1:]},
    }
    for case, headers in refused.items():
        status, _, answer = browser.request(path, "POST", body, headers)
        assert status == 403 and (b"refused" in answer or b"CSRF" in answer), case
    assert json.loads(browser.request(f"/api/alerts/{a}")[2])["feedback"] == []
    status, _, answer = browser.request(
        path, "POST", body, {**json_type, "Origin": console.url, "X-CSRF-Token": csrf}
    )
    assert status == 200 and json.loads(answer)["verdict"] == "false_alarm"
    bad = browser.request(
        path, "POST", b'{"verdict": "maybe"}', {**json_type, "Origin": console.url, "X-CSRF-Token": csrf}
    )
    assert bad[0] == 422 and b"verdict" in bad[2]


def test_a_loopback_console_answers_only_to_loopback_host_names(start_console: ConsoleFactory) -> None:
    console = start_console()
    http = Http(console.url)
    port = console.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert http.request("/api/cameras", headers={"Host": host})[0] == 200
    status, _, body = http.request("/api/cameras", headers={"Host": f"rebound.evil.example:{port}"})
    assert status == 421 and b"127.0.0.1" in body


def test_kafka_text_is_escaped_and_snapshot_routes_reach_no_file(
    start_console: ConsoleFactory, console_topics: wire.Topics, kafka_settings: KafkaSettings
) -> None:
    console = start_console()
    hostile = MODEL.model_copy(
        update={"version": "<script>alert(1)</script>", "name": '"><img src=x onerror=1>'}
    )
    a = uuid.uuid4()
    publish(
        kafka_settings, console_topics.scores, [wire.encode(score("cam-x", 0, 0.9, model=hostile))], b"cam-x"
    )
    publish(kafka_settings, console_topics.alerts, [wire.encode(alert("cam-x", a, model=hostile))], b"cam-x")
    http = Http(console.url)
    wait_for(lambda: http.request(f"/api/alerts/{a}")[0] == 200, what="the alert")
    for path in ("/", "/alerts", f"/alerts/{a}"):
        status, headers, page = http.request(path)
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
        text = page.decode()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path
        assert "<script>alert" not in text and "<img src=x" not in text, path

    for path in (
        "/api/alerts/..%2F..%2F..%2Fetc%2Fpasswd/snapshot",
        "/api/alerts/../../../etc/passwd/snapshot",
        "/api/cameras/..%2F..%2Fetc%2Fpasswd/thumbnail",
        "/api/cameras/%2Fetc%2Fpasswd/thumbnail",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/../store.py",
    ):
        status, _, body = http.request(path)
        assert status in (404, 422), path
        assert b"root:" not in body and b"sqlite3" not in body, path
    assert http.request(f"/api/alerts/{uuid.uuid4()}/snapshot")[0] == 404
    assert http.request("/static/console.js")[0] == 200
