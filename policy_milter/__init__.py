"""policy-milter: a milter that decides SMTP sessions from admin-written rule files."""

__version__ = "0.1.0"
