"""The pooler's TLS: a certificate authority of the platform's own, and the host's
certificate signed by it, so that clients can check whom they talk to
(`sslmode=verify-full`, node-postgres's default) with the CA the platform hands
out (GET /api/v1/ca.pem). An operator's own certificate (not self-signed, not ours)
in the host's files is kept as it is.
"""

import contextlib
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


class CertificatePending(TlsError):
    """This host has asked the control plane for its certificate and has none yet."""


def ensure_host_certificate(pki: Path, cert: Path, key: Path, public_host: str) -> bool:
    """The host's certificate for `public_host` (and localhost) at `cert`/`key`;
    True if it was (re)made. Kept if it is ours and names the host, or the
    operator's own. Signed here if this machine holds the CA (the control plane's);
    otherwise it is the one the control plane signed for this host's request
    (`host_request` / `install_host_certificate`), and until that has come,
    CertificatePending."""
    ca_cert = pki / "ca.crt"
    if cert.exists() and key.exists() and ca_cert.exists():
        if certificate_fits(cert, ca_cert, public_host):
            return False
        if not _self_signed(cert) and not _verifies(cert, ca_cert):
            return False  # an operator's certificate, from another CA: theirs to renew
    if not (pki / "ca.key").exists():
        if not _issued_fits(pki, public_host):
            raise CertificatePending(f"no certificate for {public_host} from the control plane yet")
        _copy(pki / "host.key", key)
        _copy(pki / "host.crt", cert)
        return True
    new_key = key.with_name(key.name + ".new")
    new_key.unlink(missing_ok=True)
    csr = host_request(new_key, public_host)
    new_cert = cert.with_name(cert.name + ".new")
    new_cert.write_text(sign_request(pki, csr, public_host))
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    return True


def certificate_fits(cert: Path, ca_cert: Path, public_host: str) -> bool:
    """Signed by our CA, and names `public_host`."""
    return _verifies(cert, ca_cert) and public_host in _names(cert)


def _issued_fits(pki: Path, public_host: str) -> bool:
    """The certificate the control plane signed for this host is here and names it."""
    issued, ca_cert = pki / "host.crt", pki / "ca.crt"
    return issued.exists() and ca_cert.exists() and certificate_fits(issued, ca_cert, public_host)


def certificate_request(pki: Path, public_host: str) -> str:
    """What a host asks the control plane for as it registers: a request for its
    certificate, unless this machine holds the CA (it signs its own) or has the
    control plane's for `public_host` already ("": nothing to ask)."""
    if (pki / "ca.key").exists() or _issued_fits(pki, public_host):
        return ""
    pki.mkdir(mode=0o700, parents=True, exist_ok=True)
    return host_request(pki / "host.key", public_host)


def host_request(key: Path, public_host: str) -> str:
    """A certificate request (PEM) for `public_host`, with the key at `key` (made
    now if there is none: it never leaves this machine)."""
    if not key.exists():
        with tempfile.TemporaryDirectory(dir=key.parent) as tmp:
            made = Path(tmp) / "key.pem"
            _openssl(
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                str(made),
            )
            os.chmod(made, 0o600)
            with contextlib.suppress(FileExistsError):  # a racing maker's key wins
                os.link(made, key)
    return _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={public_host}")


def sign_request(pki: Path, request: str, public_host: str) -> str:
    """The host certificate (PEM) for a request, naming `public_host` (whatever
    names the request asks for), signed by the CA."""
    ca_cert, ca_key = ensure_ca(pki)
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "host.csr", Path(tmp) / "ext.cnf"
        csr.write_text(request)
        _openssl("req", "-in", str(csr), "-noout", "-verify")  # signed by its own key
        ext.write_text(
            f"subjectAltName={_san(public_host)}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
        )
        return _openssl(
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
            "-subj",
            f"/CN={public_host}",
            "-extfile",
            str(ext),
        )


def install_host_certificate(pki: Path, certificate: str, ca_certificate: str) -> None:
    """What the control plane sent for this host's request (see ensure_host_certificate)."""
    pki.mkdir(parents=True, exist_ok=True)
    for name, text in (("ca.crt", ca_certificate), ("host.crt", certificate)):
        temporary = pki / f"{name}.new"
        temporary.write_text(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, pki / name)


def _copy(source: Path, target: Path) -> None:
    temporary = target.with_name(target.name + ".new")
    temporary.write_bytes(source.read_bytes())
    os.chmod(temporary, 0o600)
    os.replace(temporary, target)


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
