#!/usr/bin/env python3
"""Local SMTP sink for integration tests, with STARTTLS required.

    python3 smtp.py --port 0 --cert cert.pem --key key.pem --out mail.jsonl

Listens on 127.0.0.1 (port 0 = any free port), prints exactly one line
``ready PORT`` to stdout once it accepts connections, and appends every
received message to --out as one JSON line:

    {"mail_from": "...", "rcpt_tos": ["..."], "data": "<full message text>"}

MAIL/RCPT/DATA are refused until the client has done STARTTLS. No AUTH is
needed. Runs until SIGTERM/SIGINT or until stdin reaches EOF (so an abandoned
child dies with its parent); --ignore-stdin turns the stdin watch off.

Needs aiosmtpd (pip install -r requirements.txt).
"""

import argparse
import email
import email.policy
import json
import os
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller

HOST = "127.0.0.1"


class JsonlHandler:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, bytes):
            content = content.decode("utf-8", errors="replace")
        # The decoded subject and text too, so a test can look for what
        # must never be there whatever transfer encoding the sender chose.
        parsed = email.message_from_string(content, policy=email.policy.default)
        body = parsed.get_body(preferencelist=("plain",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data": content,
            "subject": str(parsed.get("subject", "")),
            "text": body.get_content() if body is not None else "",
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return "250 Message accepted for delivery"


class PortZeroController(Controller):
    """Controller that supports port 0: learns the bound port before the
    start-up self-connection (which would otherwise dial port 0)."""

    def _trigger_server(self):
        if self.server is not None and self.server.sockets:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    ap.add_argument("--cert", required=True, help="PEM certificate (chain) for STARTTLS")
    ap.add_argument("--key", required=True, help="PEM private key for STARTTLS")
    ap.add_argument("--out", required=True, help="file to append received messages to (JSON lines)")
    ap.add_argument("--ignore-stdin", action="store_true", help="do not exit when stdin reaches EOF")
    args = ap.parse_args()

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(args.cert, args.key)

    # Make sure the output file exists (and is writable) before announcing readiness.
    open(args.out, "a", encoding="utf-8").close()

    controller = PortZeroController(
        JsonlHandler(args.out),
        hostname=HOST,
        port=args.port,
        server_hostname="localhost",  # EHLO greeting name; avoids a getfqdn() lookup
        tls_context=tls,
        require_starttls=True,
        auth_required=False,
    )
    controller.start()

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if not args.ignore_stdin:
        def watch_stdin():
            try:
                while sys.stdin.buffer.read1(65536):
                    pass
            except Exception:
                pass
            stop.set()

        threading.Thread(target=watch_stdin, daemon=True).start()

    sys.stdout.write(f"ready {controller.port}\n")
    sys.stdout.flush()

    while not stop.wait(0.5):
        pass
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
