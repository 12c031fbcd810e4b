"""The admin's tools that decide without an MTA: ``test`` (one session, stage by stage),
``ping``, ``explain`` (a log line back to its rule) and ``replay`` (logged envelopes
against other rules).  They run the same Engine as the milter, with services that leave
no trace (services.py)."""
