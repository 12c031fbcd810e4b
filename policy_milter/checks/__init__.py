"""Check families.  Each check looks at the session and names a catalogue entry; none
formats SMTP text or talks to pymilter."""
