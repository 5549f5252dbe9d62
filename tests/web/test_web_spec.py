"""The fleet's [web] table: off when absent, and every wrong setting named with what is right."""

import pytest

from warden.errors import SpecError
from warden.spec import fleet

HEAD = '[[owner]]\nname = "alice"\n'


def parse(text: str) -> fleet.Fleet:
    return fleet.parse(HEAD + text, "f.toml")


def error(text: str) -> str:
    with pytest.raises(SpecError) as e:
        parse(text)
    return str(e.value)


def test_off_when_absent_and_defaults() -> None:
    assert parse("").web.listen == ""
    w = parse('[web]\nlisten = "127.0.0.1:8443"\n').web
    assert w.host_port == ("127.0.0.1", 8443)
    assert w.scheme == "https" and w.idle_timeout == 900 and not w.cert and not w.insecure_http


def test_the_example_fleet_serves_it_on_loopback() -> None:
    w = fleet.load("examples/fleet.toml").web
    assert w.listen and w.host_port[0] == "127.0.0.1" and w.scheme == "https"


def test_plain_http_only_on_loopback() -> None:
    assert parse('[web]\nlisten = "127.0.0.1:8080"\ninsecure_http = true\n').web.scheme == "http"
    assert parse('[web]\nlisten = "[::1]:8080"\ninsecure_http = true\n').web.scheme == "http"
    msg = error('[web]\nlisten = "10.0.0.1:8080"\ninsecure_http = true\n')
    assert (
        "f.toml: [web]: insecure_http = true with listen = '10.0.0.1:8080': plain HTTP is " in msg
    )
    assert "only served on a loopback address" in msg


def test_cert_and_key_go_together_and_are_absolute() -> None:
    msg = error('[web]\nlisten = "127.0.0.1:8443"\ncert = "/etc/ssl/w.pem"\n')
    assert "f.toml: [web]: cert and key go together" in msg
    msg = error('[web]\nlisten = "127.0.0.1:8443"\ncert = "w.pem"\nkey = "/k.pem"\n')
    assert "f.toml: [web]: cert = 'w.pem': expected an absolute path to a PEM file" in msg
    msg = error(
        '[web]\nlisten = "127.0.0.1:8443"\ninsecure_http = true\ncert = "/c.pem"\nkey = "/k.pem"\n'
    )
    assert "insecure_http = true and cert/key: choose HTTPS or plain HTTP" in msg


def test_every_address_needs_the_url_browsers_use() -> None:
    msg = error('[web]\nlisten = "0.0.0.0:8443"\n')
    assert "f.toml: [web]: listen = '0.0.0.0:8443' serves every address: set url = " in msg
    w = parse('[web]\nlisten = "0.0.0.0:8443"\nurl = "https://warden.example:8443"\n').web
    assert w.url == "https://warden.example:8443"


def test_url_is_an_origin_of_the_scheme_served() -> None:
    msg = error('[web]\nlisten = "127.0.0.1:8443"\nurl = "https://h.example/console"\n')
    assert "url = 'https://h.example/console': expected \"https://HOST[:PORT]\" (no path)" in msg
    msg = error('[web]\nlisten = "127.0.0.1:8443"\nurl = "http://h.example"\n')
    assert "url = 'http://h.example' does not match the scheme served (https" in msg


def test_settings_without_listen_are_refused() -> None:
    msg = error("[web]\ninsecure_http = true\n")
    assert "f.toml: [web]: insecure_http is set but listen is not: the web console is off" in msg


def test_bad_listen_and_idle_timeout() -> None:
    assert "[web]: listen = 'localhost:8443': expected a numeric address" in error(
        '[web]\nlisten = "localhost:8443"\n'
    )
    assert "[web]: idle_timeout = 5: expected a whole number from 60 to 604800" in error(
        '[web]\nlisten = "127.0.0.1:8443"\nidle_timeout = 5\n'
    )
    assert "[web]: key 'lisen' is unknown (did you mean 'listen'?)" in error('[web]\nlisen = "x"\n')
