"""The web console's TLS certificate: the fleet's (`[web] cert`, `key`), or one warden makes.

warden's own is a self-signed ECDSA P-256 certificate in WARDEN_HOME/keys (web-cert.pem,
web-key.pem, mode 0600 for the key) for the names browsers use: the listen address, the
fleet's url host, and for a loopback listener 127.0.0.1, ::1 and localhost. It is made again
when one of those names is missing from it or when it has less than RENEW_DAYS left; it is
never made for a fleet that names its own. `warden web link` prints its SHA-256 fingerprint,
which the browser shows when it asks whether to trust it.

The `cryptography` package builds and reads it (a dependency already, for the evidence
signatures); nothing here shells out to openssl.
"""

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from warden import statefile
from warden.errors import SpecError
from warden.spec.fleet import Web

CERT = "web-cert.pem"
KEY = "web-key.pem"
VALID_DAYS = 825  # the longest that browsers accept for a certificate
RENEW_DAYS = 30
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the DER certificate, hex pairs joined by ':'
    made_by_warden: bool


def names_for(web: Web) -> list[str]:
    """The DNS names and addresses a certificate for this listener must hold."""
    host, _ = web.host_port
    out: list[str] = []
    ip = ipaddress.ip_address(host)
    if not ip.is_unspecified:
        out.append(str(ip))
    if ip.is_loopback or ip.is_unspecified:
        out += LOOPBACK_NAMES
    if web.url:
        out.append(urlsplit(web.url).hostname or "")
    return list(dict.fromkeys(n.lower() for n in out if n))


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def _held_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    held = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    held |= {d.lower() for d in san.get_values_for_type(x509.DNSName)}
    return held


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def make(keys_dir: Path, names: list[str], now: datetime.datetime | None = None) -> None:
    """A new self-signed certificate for `names` (key first: a crash between the two renames
    leaves a pair that does not match, which `own` replaces at the next start)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "warden"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "warden"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    statefile.write(
        keys_dir / KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    statefile.write(keys_dir / CERT, cert.public_bytes(serialization.Encoding.PEM))


def _matches(cert: x509.Certificate, key_path: Path) -> bool:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        return False
    pub = cert.public_key()
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(key.public_key().public_bytes(*fmt) == pub.public_bytes(*fmt))


def own(keys_dir: Path, web: Web, now: datetime.datetime | None = None) -> Certificate:
    """warden's certificate for this listener, made or made again when needed."""
    now = now or datetime.datetime.now(datetime.UTC)
    names = names_for(web)
    cert_path, key_path = keys_dir / CERT, keys_dir / KEY
    cert: x509.Certificate | None = None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        cert = None
    if (
        cert is None
        or not set(names) <= _held_names(cert)
        or cert.not_valid_after_utc - now < datetime.timedelta(days=RENEW_DAYS)
        or not _matches(cert, key_path)
    ):
        make(keys_dir, names, now)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return Certificate(cert_path, key_path, fingerprint(cert), True)


def given(web: Web) -> Certificate:
    """The fleet's certificate and key, checked: SpecError naming the file and what is wrong."""
    cert_path, key_path = Path(web.cert), Path(web.key)
    try:
        data = cert_path.read_bytes()
    except OSError as e:
        raise SpecError(f"[web] cert = {web.cert!r}: cannot read it: {e.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise SpecError(f"[web] cert = {web.cert!r}: not a PEM certificate") from None
    if not key_path.is_file():
        raise SpecError(f"[web] key = {web.key!r}: no such file")
    if not _matches(cert, key_path):
        raise SpecError(
            f"[web] key = {web.key!r}: not a PEM private key (unencrypted) of the certificate "
            f"{web.cert}"
        )
    return Certificate(cert_path, key_path, fingerprint(cert), False)


def context(c: Certificate) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(c.cert), str(c.key))
    return ctx
