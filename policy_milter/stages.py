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
