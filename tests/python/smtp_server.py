"""A local SMTP relay for the mail tests (tests/it/mail.rs), built on aiosmtpd.

Usage: smtp_server.py CERT KEY MODE PORT
  MODE: "starttls" (plain SMTP that requires STARTTLS before MAIL) or "implicit" (TLS from the
  first byte) or "plain" (no TLS offered: a client must refuse it). PORT: the port to listen on, on 127.0.0.1 (0 for any).
Prints "PORT <n>" once it accepts connections, then one "MAIL <json>" line per message it
accepts: {"mail_from", "rcpt_tos", "subject", "body" (decoded), "tls"}. Runs until killed.
"""

import email
import email.policy
import json
import socket
import ssl
import sys
import threading

from aiosmtpd.controller import Controller

CERT, KEY, MODE, PORT = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
LOCK = threading.Lock()


class Relay:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        line = json.dumps(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "subject": message["subject"],
                "body": message.get_content(),
                # STARTTLS sets session.ssl; implicit TLS shows on the transport.
                "tls": session.ssl is not None
                or server.transport.get_extra_info("ssl_object") is not None,
            }
        )
        with LOCK:
            print(f"MAIL {line}", flush=True)
        return "250 OK"


def free_port():
    # aiosmtpd's start-up check connects to the port it was given, so port 0 cannot be passed on.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    port = PORT or free_port()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    if MODE == "implicit":
        controller = Controller(Relay(), hostname="127.0.0.1", port=port, ssl_context=context)
    elif MODE == "starttls":
        controller = Controller(
            Relay(), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True
        )
    elif MODE == "plain":
        controller = Controller(Relay(), hostname="127.0.0.1", port=port)
    else:
        sys.exit(f"unknown mode {MODE!r}")
    controller.start()
    print(f"PORT {port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
