"""The web console's certificate: warden's own (made, kept, made again when the names it must
hold change) or the fleet's (checked, with errors that name the file)."""

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509

from warden.errors import SpecError
from warden.spec.fleet import Web
from warden.web import tls


def names(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def test_warden_makes_one_for_the_names_browsers_use(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    c = tls.own(keys, Web(listen="127.0.0.1:8443"))
    assert c.made_by_warden and c.cert == keys / tls.CERT
    assert names(c.cert) == {"127.0.0.1", "::1", "localhost"}
    assert stat.S_IMODE((keys / tls.KEY).stat().st_mode) == 0o600
    assert len(c.fingerprint.split(":")) == 32
    again = tls.own(keys, Web(listen="127.0.0.1:9443"))  # same names: kept
    assert again.fingerprint == c.fingerprint
    moved = tls.own(keys, Web(listen="0.0.0.0:8443", url="https://Warden.Example:8443"))
    assert moved.fingerprint != c.fingerprint
    assert "warden.example" in names(moved.cert) and "127.0.0.1" in names(moved.cert)
    tls.context(moved)  # loads as a server's certificate


def test_it_is_made_again_before_it_expires_or_when_the_key_does_not_match(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    web = Web(listen="10.1.2.3:443")
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=tls.VALID_DAYS - 10)
    tls.make(keys, tls.names_for(web), now=old)
    first = x509.load_pem_x509_certificate((keys / tls.CERT).read_bytes()).fingerprint
    c = tls.own(keys, web)
    assert x509.load_pem_x509_certificate(c.cert.read_bytes()).fingerprint != first
    (keys / tls.KEY).write_bytes(b"not a key")
    c2 = tls.own(keys, web)
    assert c2.fingerprint != c.fingerprint
    tls.context(c2)


def test_the_fleets_own_is_checked_with_errors_that_name_the_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    mine = tls.own(keys, Web(listen="127.0.0.1:1"))
    web = Web(listen="127.0.0.1:8443", cert=str(mine.cert), key=str(mine.key))
    got = tls.given(web)
    assert not got.made_by_warden and got.fingerprint == mine.fingerprint
    with pytest.raises(SpecError, match=r"\[web\] cert = '/nope.pem': cannot read it"):
        tls.given(Web(listen="127.0.0.1:8443", cert="/nope.pem", key=str(mine.key)))
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(SpecError, match="not a PEM certificate"):
        tls.given(Web(listen="127.0.0.1:8443", cert=str(junk), key=str(mine.key)))
    other = tls.own(tmp_path / "other", Web(listen="127.0.0.2:1"))
    with pytest.raises(SpecError, match="not a PEM private key .* of the certificate"):
        tls.given(Web(listen="127.0.0.1:8443", cert=str(mine.cert), key=str(other.key)))
    with pytest.raises(SpecError, match=r"\[web\] key = '/no-key.pem': no such file"):
        tls.given(Web(listen="127.0.0.1:8443", cert=str(mine.cert), key="/no-key.pem"))
