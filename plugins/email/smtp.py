"""The SMTP side: one blocking stdlib ``smtplib`` session per message, in a worker thread.

What a failure means for the outbox depends on how far the session got: anything before the
message data was sent cannot have delivered it (retry, or give up on a 5xx); a broken connection
while the server was taking the data, or before it answered, may have delivered it (uncertain:
the core does not resend, at-most-once). A refusal after the data (4xx/5xx to DATA) did not.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
from email.message import EmailMessage

from gateway.errors import PluginError, SendError

from .config import EmailConfig


class SmtpSession:
    """Send one message; ``abort`` (from another thread) breaks a blocked exchange."""

    def __init__(self, config: EmailConfig, where: str) -> None:
        self.config = config
        self.where = where
        self.smtp: smtplib.SMTP | None = None

    def _open(self) -> smtplib.SMTP:
        config = self.config
        host, port = config.smtp_host, config.port("smtp")
        smtp: smtplib.SMTP
        if config.smtp_tls == "implicit":
            smtp = smtplib.SMTP_SSL(
                host, port, timeout=config.timeout, context=config.ssl_context()
            )
        else:
            smtp = smtplib.SMTP(host, port, timeout=config.timeout)
        self.smtp = smtp
        smtp.ehlo()
        if config.smtp_tls == "starttls":
            smtp.starttls(context=config.ssl_context())
            smtp.ehlo()
        smtp.login(config.smtp_login, config.smtp_secret.reveal())
        return smtp

    def send(self, message: EmailMessage, sender: str, recipient: str) -> None:
        """Deliver ``message`` to ``recipient``; SendError saying whether it may have gone."""
        host = f"{self.config.smtp_host}:{self.config.port('smtp')}"
        in_data = False
        try:
            smtp = self._open()
            code, answer = smtp.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, answer, sender)
            code, answer = smtp.rcpt(recipient)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({recipient: (code, answer)})
            in_data = True
            smtp.data(message.as_bytes())  # built with policy.SMTP: CRLF line ends
        except smtplib.SMTPRecipientsRefused as exc:
            code, reason = next(iter(exc.recipients.values()), (550, b"refused"))
            raise SendError(
                f"{host} refused the recipient <{recipient}>: {code} {_text(reason)}",
                permanent=code >= 500,
            ) from exc
        except smtplib.SMTPAuthenticationError as exc:
            raise SendError(
                f"{host} refused the login of {self.config.smtp_login!r} ({exc.smtp_code} "
                f"{_text(exc.smtp_error)}): check smtp_username and smtp_password"
            ) from exc
        except smtplib.SMTPResponseException as exc:
            # A definite answer (to MAIL, RCPT or the end of DATA): the message was not taken.
            raise SendError(
                f"{host} answered {exc.smtp_code} {_text(exc.smtp_error)}",
                permanent=exc.smtp_code >= 500,
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise SendError(
                f"the certificate of {host} is not trusted ({exc.verify_message}): set ca_file "
                "to the PEM of the CA that issued it",
                permanent=True,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            # Broken while the server was taking the message or about to answer: it may have
            # queued it, so the core must not send it again (at-most-once).
            raise SendError(
                f"{host}: {type(exc).__name__}: {exc}"
                + (" (during DATA: the message may have been delivered)" if in_data else ""),
                uncertain=in_data,
            ) from exc
        finally:
            self.close()

    def check(self) -> str:
        """Log in and say goodbye; PluginError naming what to fix."""
        host = f"{self.config.smtp_host}:{self.config.port('smtp')}"
        try:
            smtp = self._open()
            smtp.noop()
        except smtplib.SMTPAuthenticationError as exc:
            raise PluginError(
                f"{host} refused the SMTP login of {self.config.smtp_login!r} ({exc.smtp_code} "
                f"{_text(exc.smtp_error)}): check smtp_username and smtp_password"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise PluginError(
                f"the certificate of {host} is not trusted ({exc.verify_message}): set ca_file"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise PluginError(
                f"SMTP {host}: {type(exc).__name__}: {exc} (check smtp_host, smtp_port, smtp_tls)"
            ) from exc
        finally:
            self.close()
        return f"SMTP {host} ({self.config.smtp_tls}, logged in as {self.config.smtp_login})"

    def abort(self) -> None:
        smtp = self.smtp
        sock = getattr(smtp, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        with contextlib.suppress(Exception):
            if smtp.sock is not None:
                smtp.sock.settimeout(2.0)
            smtp.quit()
        with contextlib.suppress(Exception):
            smtp.close()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
