#!/usr/bin/env python3
"""Self-test for smtp.py: makes a self-signed cert (openssl) for 127.0.0.1 and
localhost, starts smtp.py on a free port, checks that mail without STARTTLS is
refused, sends one mail over STARTTLS (verifying the cert), checks the JSON
line, then closes stdin and checks that the server exits. Exits non-zero on
failure.

    python3 smtp-selftest.py
"""

import json
import os
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage

HERE = os.path.dirname(os.path.abspath(__file__))


def make_cert(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2",
            "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return cert, key


def main():
    passed = 0
    with tempfile.TemporaryDirectory() as d:
        cert, key = make_cert(d)
        out = os.path.join(d, "mail.jsonl")
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "smtp.py"), "--port", "0",
             "--cert", cert, "--key", key, "--out", out],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            line = proc.stdout.readline().strip()
            assert line.startswith("ready "), f"unexpected first line {line!r}"
            port = int(line.split()[1])
            assert port > 0

            # Without STARTTLS: MAIL is refused (530).
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo()
                assert s.has_extn("starttls"), "STARTTLS advertised"
                code, _ = s.mail("a@example.test")
                assert code == 530, f"MAIL before STARTTLS gave {code}"
            passed += 1

            # STARTTLS, verifying the certificate for both names.
            for host in ("127.0.0.1", "localhost"):
                ctx = ssl.create_default_context(cafile=cert)
                msg = EmailMessage()
                msg["From"] = "noreply@example.test"
                msg["To"] = "vardnadshavare@example.test"
                msg["Subject"] = f"Test åäö via {host}"
                msg.set_content("Hej!\nDetta är ett test.\n")
                with smtplib.SMTP(host, port, timeout=10) as s:
                    s.starttls(context=ctx)
                    s.send_message(msg, to_addrs=["vardnadshavare@example.test", "cc@example.test"])
                passed += 1

            with open(out, encoding="utf-8") as f:
                records = [json.loads(l) for l in f if l.strip()]
            assert len(records) == 2, records
            r = records[0]
            assert r["mail_from"] == "noreply@example.test", r
            assert r["rcpt_tos"] == ["vardnadshavare@example.test", "cc@example.test"], r
            assert "Subject: Test =?utf-8?" in r["data"], r
            assert "Detta är ett test." in r["data"], r
            assert set(r) == {"mail_from", "rcpt_tos", "data"}, r
            passed += 1

            # Closing stdin stops the server.
            proc.stdin.close()
            proc.wait(timeout=10)
            assert proc.returncode == 0, proc.returncode
            passed += 1
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
    print(f"smtp selftest: {passed} passed, 0 failed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001
        print(f"smtp selftest FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
