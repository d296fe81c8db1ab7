"""Keep secrets out of logs and step outputs.

Every secret the step obtains (the service-account JWT, the Vault token, cloud keys and
tokens) is registered here; the log formatter and the output writer replace any occurrence
with `***`, so a secret that leaks into an exception message is still never written.
"""

from __future__ import annotations

import logging


class Redactor:
    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: str) -> None:
        # Very short values would redact ordinary words; real secrets are long.
        if len(secret) >= 8:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


REDACTOR = Redactor()


class RedactingFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return REDACTOR(self.inner.format(record))
