"""The SMTP stages a milter sees, in the order an MTA presents them."""

from enum import Enum


class Stage(Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's own hash runs Python code
    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    HEADER = "header"
    EOH = "eoh"
    BODY = "body"
    EOM = "eom"
    UNKNOWN = "unknown"

    @property
    def of_message(self) -> bool:
        """Decided for the message as a whole, hence for every accepted recipient."""
        return self in _OF_MESSAGE


_OF_MESSAGE = frozenset({Stage.DATA, Stage.HEADER, Stage.EOH, Stage.BODY, Stage.EOM})
