"""The pooler's TLS: a certificate authority of the platform's own, and the host's
certificate signed by it, so that clients can check whom they talk to
(`sslmode=verify-full`, node-postgres's default) with the CA the platform hands
out (GET /api/v1/ca.pem). An operator's own certificate (not self-signed, not ours)
in the host's files is kept as it is.
"""

import ipaddress
import os
import subprocess
import tempfile
from pathlib import Path

CA_DAYS = 3650
HOST_DAYS = 825  # what browsers and most clients accept for a leaf certificate


class TlsError(Exception):
    pass


def ensure_ca(pki: Path) -> tuple[Path, Path]:
    """The platform's CA (certificate, key), made once."""
    cert, key = pki / "ca.crt", pki / "ca.key"
    if cert.exists() and key.exists():
        return cert, key
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        str(CA_DAYS),
        "-subj",
        f"/CN=dbaas CA {os.uname().nodename}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return cert, key


def ensure_host_certificate(pki: Path, cert: Path, key: Path, public_host: str) -> bool:
    """The host's certificate for `public_host` (and localhost), signed by the CA;
    True if it was (re)made. Kept if it is ours and names the host, or the
    operator's own."""
    ca_cert, ca_key = ensure_ca(pki)
    if cert.exists() and key.exists():
        if _verifies(cert, ca_cert) and public_host in _names(cert):
            return False
        if not _self_signed(cert) and not _verifies(cert, ca_cert):
            return False  # an operator's certificate, from another CA: theirs to renew
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "host.csr", Path(tmp) / "ext.cnf"
        ext.write_text(
            f"subjectAltName={_san(public_host)}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
        )
        new_key = key.with_name(key.name + ".new")
        _openssl(
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            f"/CN={public_host}",
            "-keyout",
            str(new_key),
            "-out",
            str(csr),
        )
        new_cert = cert.with_name(cert.name + ".new")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_cert),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            str(HOST_DAYS),
            "-extfile",
            str(ext),
            "-out",
            str(new_cert),
        )
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    return True


def _san(public_host: str) -> str:
    names = {f"DNS:{public_host}", "DNS:localhost", "IP:127.0.0.1", "IP:::1"}
    try:
        ipaddress.ip_address(public_host)
        names = (names - {f"DNS:{public_host}"}) | {f"IP:{public_host}"}
    except ValueError:
        pass
    return ",".join(sorted(names))


def _names(cert: Path) -> str:
    return _openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName")


def _verifies(cert: Path, ca_cert: Path) -> bool:
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_cert), str(cert)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode == 0


def _self_signed(cert: Path) -> bool:
    subject = _openssl("x509", "-in", str(cert), "-noout", "-subject").split("=", 1)[-1]
    issuer = _openssl("x509", "-in", str(cert), "-noout", "-issuer").split("=", 1)[-1]
    return subject.strip() == issuer.strip()


def _openssl(*args: str) -> str:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise TlsError(f"openssl {args[0]} failed: {proc.stderr.strip()[-1000:]}")
    return proc.stdout
