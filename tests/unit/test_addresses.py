"""Envelope address parsing: exact results for good input, the exact error kind for bad.

Relay decisions rest on these results, so the tables cover the open-relay tester's
repertoire (percent hack, bang paths, quoted '@', source routes, literals, IDN lookalikes)
as well as plain syntax and the RFC 5321 length limits at their boundaries.
"""

import pytest

from policy_milter.addresses import (
    Address,
    AddressError,
    check_balanced,
    declared_size,
    normalize_domain,
    parse_esmtp_params,
    parse_path,
    valid_helo,
)

MAIL, RCPT = True, False  # the null_ok argument for each command


def _domain_of(length: int) -> str:
    """A valid ASCII domain of exactly ``length`` characters, labels of at most 63."""
    labels = []
    while length > 63:
        labels.append("a" * 62)
        length -= 63
    return ".".join([*labels, "b" * length])


def _kind(func, *args, **kwargs) -> str:
    with pytest.raises(AddressError) as caught:
        func(*args, **kwargs)
    return caught.value.kind


# --- parse_path: accepted paths -------------------------------------------------------

VALID_PATHS = [
    ("<User@Example.COM>", RCPT, Address("User", "example.com")),
    ("User@Example.COM", RCPT, Address("User", "example.com")),
    ("<u@example.com.>", RCPT, Address("u", "example.com")),
    ("<u@localhost>", RCPT, Address("u", "localhost")),
    ("<u@mail_1.example>", RCPT, Address("u", "mail_1.example")),
    ("<u@r3---sn.example>", RCPT, Address("u", "r3---sn.example")),
    ("<u@123.example>", RCPT, Address("u", "123.example")),
    ("<first.last@x.example>", MAIL, Address("first.last", "x.example")),
    ("<#$&'*+-/=?^_`{|}~@x.example>", RCPT, Address("#$&'*+-/=?^_`{|}~", "x.example")),
    ('<"john doe"@x.example>', RCPT, Address("john doe", "x.example")),
    ('<"a.b"@x.example>', RCPT, Address("a.b", "x.example")),
    ('<"a\\"b\\\\c"@x.example>', RCPT, Address('a"b\\c', "x.example")),
    ('<"a>b"@x.example>', RCPT, Address("a>b", "x.example")),
    ('<"a(b"@x.example>', RCPT, Address("a(b", "x.example")),
    ('<"a[b]"@x.example>', RCPT, Address("a[b]", "x.example")),
    ('<"..a"@x.example>', RCPT, Address("..a", "x.example")),
    ("<ü.ß@bücher.example>", MAIL, Address("ü.ß", "xn--bcher-kva.example")),
    ('<"jöhn dœ"@x.example>', MAIL, Address("jöhn dœ", "x.example")),
    ("<u@[192.0.2.1]>", RCPT, Address("u", "[192.0.2.1]")),
    ("<u@[IPv6:2001:DB8::1]>", RCPT, Address("u", "[ipv6:2001:db8::1]")),
    ("<u@[ipv6:2001:db8:0:0:0:0:0:1]>", RCPT, Address("u", "[ipv6:2001:db8::1]")),
    ("<u@[IPv6:::ffff:192.0.2.1]>", RCPT, Address("u", "[ipv6:::ffff:192.0.2.1]")),
    ("<u@[IPv6:::FFFF:C000:201]>", RCPT, Address("u", "[ipv6:::ffff:192.0.2.1]")),
    ("<@a.example,@b.example:user@d.example>", RCPT, Address("user", "d.example")),
    ("<@a.example:user@d.example>", MAIL, Address("user", "d.example")),
    ("@a.example:user@d.example", RCPT, Address("user", "d.example")),
    ("<@[192.0.2.1],@[IPv6:2001:db8::1]:u@d.example>", RCPT, Address("u", "d.example")),
    ('<@a.example:"x:y"@d.example>', RCPT, Address("x:y", "d.example")),
    ("<>", MAIL, Address("", "")),
    ("<postmaster>", RCPT, Address("postmaster", "")),
    ("<PostMaster>", RCPT, Address("PostMaster", "")),
    ("POSTMASTER", RCPT, Address("POSTMASTER", "")),
    ("<postmaster@x.example>", MAIL, Address("postmaster", "x.example")),
]


@pytest.mark.parametrize(("arg", "null_ok", "expected"), VALID_PATHS)
def test_parse_path_accepts(arg, null_ok, expected):
    assert parse_path(arg, null_ok=null_ok) == expected


# --- parse_path: rejected paths, with the reply row they select -------------------------

INVALID_PATHS = [
    # null path and empty input
    ("<>", RCPT, "syntax"),
    ("", MAIL, "syntax"),
    ("", RCPT, "syntax"),
    # no domain
    ("<u>", RCPT, "no_domain"),
    ("u", MAIL, "no_domain"),
    ('<"john doe">', RCPT, "no_domain"),
    ("<postmaster>", MAIL, "no_domain"),
    ('<"postmaster">', RCPT, "no_domain"),
    ("<@a.example:postmaster>", RCPT, "no_domain"),
    ("<@a.example:u>", RCPT, "no_domain"),
    # structure
    ("<u@>", RCPT, "syntax"),
    ("<@x.example>", RCPT, "syntax"),
    ("<user@dom@local>", RCPT, "syntax"),
    ("user@dom@local", RCPT, "syntax"),
    ('<"a"@b@c>', RCPT, "syntax"),
    ('<"a"b@c.example>', RCPT, "syntax"),
    ('<a"b"@c.example>', RCPT, "syntax"),
    ('<"a"."b"@c.example>', RCPT, "syntax"),
    ('<""@c.example>', RCPT, "syntax"),
    ('<"a\\é"@c.example>', RCPT, "syntax"),
    ("<a\\b@c.example>", RCPT, "syntax"),
    ("<a@b.example>x", RCPT, "syntax"),
    ("x<a@b.example>", RCPT, "syntax"),
    ("<<a@b.example>>", RCPT, "syntax"),
    ("<a>@<b.example>", RCPT, "syntax"),
    ("<a:b@c.example>", RCPT, "syntax"),
    ("<a,b@c.example>", RCPT, "syntax"),
    ("<a;b@c.example>", RCPT, "syntax"),
    ("<a[b]@c.example>", RCPT, "syntax"),
    # comments (balanced parentheses) are not allowed in a path
    ("<a(c)@b.example>", RCPT, "syntax"),
    ("<(c)a@b.example>", RCPT, "syntax"),
    ("<a@b.example(c)>", RCPT, "syntax"),
    ("<a@b.example>(c)", RCPT, "syntax"),
    # dot-atom rules
    ("<.u@x.example>", RCPT, "syntax"),
    ("<u.@x.example>", RCPT, "syntax"),
    ("<u..v@x.example>", RCPT, "syntax"),
    (".@x.example", RCPT, "syntax"),
    # whitespace inside the path
    ("< u@x.example>", RCPT, "syntax"),
    ("<u @x.example>", RCPT, "syntax"),
    ("<u@ x.example>", RCPT, "syntax"),
    ("<u@x.example >", RCPT, "syntax"),
    (" <u@x.example>", RCPT, "syntax"),
    ("<u\u00a0v@x.example>", RCPT, "syntax"),
    ("<u\u3000v@x.example>", RCPT, "syntax"),
    # domains
    ("<u@-x.example>", RCPT, "syntax"),
    ("<u@x-.example>", RCPT, "syntax"),
    ("<u@x..example>", RCPT, "syntax"),
    ("<u@.x.example>", RCPT, "syntax"),
    ("<u@x.example..>", RCPT, "syntax"),
    ("<u@.>", RCPT, "syntax"),
    ("<u@x!y.example>", RCPT, "syntax"),
    ("<u@ex%ample.com>", RCPT, "syntax"),
    ("<u@192.0.2.1>", RCPT, "syntax"),
    ("<u@example.123>", RCPT, "syntax"),
    ("<u@☃.example>", RCPT, "syntax"),
    ("<u@xn--n3h.example>", RCPT, "syntax"),
    ("<u@xn--zz.example>", RCPT, "syntax"),
    ("<u@xn--.example>", RCPT, "syntax"),
    ("<u@a\u05d0.example>", RCPT, "syntax"),
    # address literals
    ("<u@[localhost]>", RCPT, "syntax"),
    ("<u@[IPv4:192.0.2.1]>", RCPT, "syntax"),
    ("<u@[x-tag:content]>", RCPT, "syntax"),
    ("<u@[192.0.2]>", RCPT, "syntax"),
    ("<u@[256.0.2.1]>", RCPT, "syntax"),
    ("<u@[01.0.2.1]>", RCPT, "syntax"),
    ("<u@[١٩٢.0.2.1]>", RCPT, "syntax"),
    ("<u@[IPv6:192.0.2.1]>", RCPT, "syntax"),
    ("<u@[2001:db8::1]>", RCPT, "syntax"),
    ("<u@[IPv6:2001:db8::1::2]>", RCPT, "syntax"),
    ("<u@[IPv6:fe80::1%eth0]>", RCPT, "syntax"),
    ("<u@[[192.0.2.1]]>", RCPT, "syntax"),
    ("<u@[192.0.2.1].>", RCPT, "syntax"),
    ("<u@[192.0.2.1]x>", RCPT, "syntax"),
    ("<u@x[192.0.2.1]>", RCPT, "syntax"),
    # source routes
    ("<@a.example>", RCPT, "syntax"),
    ("<@a.example:>", RCPT, "syntax"),
    ("<@:u@d.example>", RCPT, "syntax"),
    ("<@a..example:u@d.example>", RCPT, "syntax"),
    ("<@a.example,b.example:u@d.example>", RCPT, "syntax"),
    ("<@a.example,,@b.example:u@d.example>", RCPT, "syntax"),
    ("<@a.example;@b.example:u@d.example>", RCPT, "syntax"),
    ("<@[192.0.2.1:u@d.example]>", RCPT, "syntax"),
]


@pytest.mark.parametrize(("arg", "null_ok", "kind"), INVALID_PATHS)
def test_parse_path_rejects(arg, null_ok, kind):
    assert _kind(parse_path, arg, null_ok=null_ok) == kind


UNBALANCED = [
    "<a@b.example",
    "a@b.example>",
    "<a@b.example>>",
    "<<a@b.example>",
    "<a@[192.0.2.1>",
    "<a@192.0.2.1]>",
    "<a@[[192.0.2.1]>",
    "<a(@b.example>",
    "<a)@b.example>",
    "<a@b.example(>",
    '<"a@b.example>',
    '"a@b.example',
    '<a"@b.example>',
    '<"a\\"@b.example>',
    '<"a\\\\\\"@b.example>',
    "<[>]",
    "<(>)",
    "<a@b.example> <",
    "<a b@c",  # balance is checked before structure
]


@pytest.mark.parametrize("arg", UNBALANCED)
@pytest.mark.parametrize("null_ok", [MAIL, RCPT])
def test_parse_path_unbalanced(arg, null_ok):
    assert _kind(parse_path, arg, null_ok=null_ok) == "unbalanced"


CONTROLS = ["\x00", "\r", "\n", "\r\n", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u2029",
            "\udcff"]
CONTROL_PLACES = [
    "<u{}@x.example>",
    "<u@x{}.example>",
    '<"u{}"@x.example>',
    "<u@x.example>{}",
    "{}<u@x.example>",
    "<u@[192.0.2.1{}]>",
    "<u@x.example{}",  # also unbalanced: control characters are checked first
]


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("template", CONTROL_PLACES)
def test_parse_path_control_characters(control, template):
    assert _kind(parse_path, template.format(control), null_ok=MAIL) == "syntax"


# --- relay tricks: where the local part tries to route ----------------------------------

ROUTES = [
    ("<plain.user@local.example>", ()),
    ("<u%remote.example@local.example>", ("remote.example",)),
    ('<"U%Remote.Example."@local.example>', ("remote.example",)),
    ("<remote!u@local.example>", ("remote",)),
    ('<"u@remote"@local.example>', ("remote",)),
    ('<"u\\@remote"@local.example>', ("remote",)),
    ('<"u%remote"@local.example>', ("remote",)),
    ('<"remote!u"@local.example>', ("remote",)),
    ("<a%b%c@local.example>", ("b", "c")),
    ("<h1!h2!u@local.example>", ("h1", "h2")),
    ("<h1!u%b@local.example>", ("h1", "b")),
    ('<"a%b@c"@local.example>', ("b", "c")),
    ("<u%local.example@local.example>", ("local.example",)),
    ('<"u@Remote.Example."@local.example>', ("remote.example",)),
    ("<u%bücher.example@local.example>", ("xn--bcher-kva.example",)),
    ("<u%XN--BCHER-KVA.example@local.example>", ("xn--bcher-kva.example",)),
    ('<"u@[192.0.2.1]"@local.example>', ("[192.0.2.1]",)),
    ('<"u@[IPv6:2001:DB8::1]"@local.example>', ("[ipv6:2001:db8::1]",)),
    # not normalisable: kept lowercased as written, so the caller fails closed
    ("<u%192.0.2.1@local.example>", ("192.0.2.1",)),
    ('<"u@A..B"@local.example>', ("a..b",)),
    ('<"u@Remote Host"@local.example>', ("remote host",)),
    ('<"u@ＥＸＡＭＰＬＥ.com"@local.example>', ("ｅｘａｍｐｌｅ.com",)),
    ("<u%@local.example>", ("",)),
    ("<!u@local.example>", ("",)),
    ("<u!@local.example>", ("u",)),
    # a source route is ignored, the local part's routing is not
    ("<@relay.example:u%remote.example@local.example>", ("remote.example",)),
]


@pytest.mark.parametrize(("arg", "routes"), ROUTES)
def test_route_domains(arg, routes):
    assert parse_path(arg, null_ok=RCPT).route_domains == routes


@pytest.mark.parametrize("arg", [
    "<u@bücher.example>",
    "<u@BÜCHER.EXAMPLE>",
    "<u@xn--bcher-kva.example>",
    "<u@XN--BCHER-KVA.EXAMPLE.>",
    "u@Bücher.Example.",
])
def test_idn_u_label_and_a_label_are_the_same_domain(arg):
    assert parse_path(arg, null_ok=RCPT).domain == "xn--bcher-kva.example"


LOOKALIKES_REJECTED = [
    "ｅｘａｍｐｌｅ.com",  # full-width letters map to ASCII
    "ｅxample.com",
    "example.ｃｏｍ",
    "example\u3002com",  # ideographic full stop maps to '.'
    "example\uff0ecom",  # full-width full stop
    "example\uff61com",  # half-width ideographic full stop
    "exam\u00adple.com",  # soft hyphen is mapped away
    "exam\u200bple.com",  # zero-width space is mapped away
    "exam\u034fple.com",  # combining grapheme joiner is mapped away
    "exam\u200dple.com",  # zero-width joiner outside its context
    "\u212aelvin.example",  # Kelvin sign lowercases to ASCII 'k'
    "\u212aü.example",
    "𝐞xample.com",  # mathematical bold
    "ℯxample.com",  # script small e
    "ﬁle.example",  # ligature
    "Ⅻ.example",  # roman numeral
    "e\u0301xample.com",  # not NFC
]


@pytest.mark.parametrize("domain", LOOKALIKES_REJECTED)
def test_lookalikes_that_would_normalise_away_are_rejected(domain):
    assert _kind(parse_path, f"<u@{domain}>", null_ok=RCPT) == "syntax"
    assert _kind(normalize_domain, domain) == "syntax"
    assert not valid_helo(domain)


LOOKALIKES_DISTINCT = [
    ("exаmple.com", "xn--exmple-4nf.com"),  # Cyrillic a
    ("ехаmple.com", "xn--mple-43d3a6i.com"),  # Cyrillic e, h, a
    ("gооgle.example", "xn--ggle-55da.example"),  # Cyrillic o
    ("pαypal.example", "xn--pypal-d9d.example"),  # Greek alpha
    ("İstanbul.example", "xn--istanbul-o0e.example"),  # dotted capital I keeps its dot
    ("faß.example", "xn--fa-hia.example"),  # IDNA 2008: not 'fass'
]


@pytest.mark.parametrize(("domain", "alabel"), LOOKALIKES_DISTINCT)
def test_lookalikes_stay_distinct_from_the_ascii_domain(domain, alabel):
    assert parse_path(f"<u@{domain}>", null_ok=RCPT).domain == alabel


# --- length limits (RFC 5321 4.5.3.1) at their boundaries ---------------------------------

LOCAL_64 = "a" * 64
DOMAIN_189 = _domain_of(189)  # with '<', 64-octet local part, '@', '>': 256 octets
LENGTH_CASES = [
    (f"<{LOCAL_64}@x.example>", True),
    (f"<{LOCAL_64}a@x.example>", False),
    (f'<"{"a" * 62}"@x.example>', True),
    (f'<"{"a" * 63}"@x.example>', False),
    (f'<"{"a" * 60}\\\\"@x.example>', True),  # counted as written, escapes included
    (f'<"{"a" * 61}\\\\"@x.example>', False),
    (f"<{'é' * 32}@x.example>", True),  # octets, not characters
    (f"<{'é' * 32}a@x.example>", False),
    (f"<u@{'a' * 63}.example>", True),
    (f"<u@{'a' * 64}.example>", False),
    (f"<{LOCAL_64}@{DOMAIN_189}>", True),
    (f"<{LOCAL_64}@{DOMAIN_189}b>", False),
    (f"{LOCAL_64}@{DOMAIN_189}", True),  # brackets are counted even when absent
    (f"{LOCAL_64}@{DOMAIN_189}b", False),
    (f"<{'é' * 32}@{DOMAIN_189}>", True),
    (f"<@{'r' * 60}:{LOCAL_64}@{_domain_of(127)}>", True),  # the source route counts too
    (f"<@{'r' * 60}:{LOCAL_64}@{_domain_of(128)}>", False),
    ("<u@" + ".".join(["é"] * 84) + ">", False),  # 251 octets written, 671 as A-labels
]


@pytest.mark.parametrize(("arg", "ok"), LENGTH_CASES)
def test_length_limits(arg, ok):
    if ok:
        assert parse_path(arg, null_ok=MAIL).local
    else:
        assert _kind(parse_path, arg, null_ok=MAIL) == "syntax"


def test_longest_path_is_returned_intact():
    assert parse_path(f"<{LOCAL_64}@{DOMAIN_189}>", null_ok=RCPT) == Address(LOCAL_64, DOMAIN_189)


@pytest.mark.parametrize(("name", "ok"), [
    (_domain_of(255), True),
    (_domain_of(255) + ".", True),
    (_domain_of(256), False),
    ("a" * 63, True),
    ("a" * 64, False),
    ("x" * 63 + ".ü", True),
    ("ü" * 57 + ".example", True),  # its A-label has 63 characters
    ("ü" * 58 + ".example", False),  # 64 characters as an A-label
])
def test_normalize_domain_length_limits(name, ok):
    if ok:
        assert normalize_domain(name)
    else:
        assert _kind(normalize_domain, name) == "syntax"


# --- the Address value ------------------------------------------------------------------

@pytest.mark.parametrize(("arg", "null_ok", "key", "text"), [
    ("<>", MAIL, "", "<>"),
    ("<PostMaster>", RCPT, "postmaster", "<PostMaster>"),
    ("<John.Doe@Example.COM>", RCPT, "john.doe@example.com", "<John.Doe@example.com>"),
    ('<"John Doe"@x.example>', RCPT, "john doe@x.example", '<"John Doe"@x.example>'),
    ('<"a.b"@x.example>', RCPT, "a.b@x.example", "<a.b@x.example>"),
    ('<"a\\"b\\\\c"@x.example>', RCPT, 'a"b\\c@x.example', '<"a\\"b\\\\c"@x.example>'),
    ('<"u@remote"@x.example>', RCPT, "u@remote@x.example", '<"u@remote"@x.example>'),
    ("<Ü@Bücher.example>", MAIL, "ü@xn--bcher-kva.example", "<Ü@xn--bcher-kva.example>"),
    ("<@a.example:u@b.example>", RCPT, "u@b.example", "<u@b.example>"),
    ("<u@[IPv6:2001:DB8::1]>", RCPT, "u@[ipv6:2001:db8::1]", "<u@[ipv6:2001:db8::1]>"),
])
def test_key_and_str(arg, null_ok, key, text):
    address = parse_path(arg, null_ok=null_ok)
    assert address.key == key
    assert str(address) == text
    assert parse_path(str(address), null_ok=null_ok) == address


@pytest.mark.parametrize(("arg", "null_ok", "is_null", "is_literal"), [
    ("<>", MAIL, True, False),
    ("<postmaster>", RCPT, False, False),
    ("<u@x.example>", MAIL, False, False),
    ("<u@[192.0.2.1]>", RCPT, False, True),
    ("<u@[IPv6:2001:db8::1]>", RCPT, False, True),
])
def test_is_null_and_is_literal(arg, null_ok, is_null, is_literal):
    address = parse_path(arg, null_ok=null_ok)
    assert (address.is_null, address.is_literal) == (is_null, is_literal)


def test_address_error():
    error = AddressError("no_domain", "address 'u' has no domain")
    assert isinstance(error, ValueError)
    assert (error.kind, str(error)) == ("no_domain", "address 'u' has no domain")
    with pytest.raises(ValueError):
        AddressError("bogus", "x")


# --- check_balanced ---------------------------------------------------------------------

@pytest.mark.parametrize(("text", "ok"), [
    ("", True),
    ("<a@b>", True),
    ("<a@[192.0.2.1]>", True),
    ("(a)[b]<c>", True),
    ("<([])>", True),
    ('"<"', True),
    ('"a\\"b"', True),
    ('"a\\\\"', True),
    ('<"a>b">', True),
    ("a\\<b>", True),  # a backslash only escapes inside quotes
    ("<", False),
    (">", False),
    ("[", False),
    ("]", False),
    ("(", False),
    (")", False),
    ('"', False),
    ("<[>]", False),
    ("([)]", False),
    ("><", False),
    ('"a\\"', False),
    ('"a\\', False),
    ('<">', False),
])
def test_check_balanced(text, ok):
    assert check_balanced(text) is ok


# --- normalize_domain -------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("localhost", "localhost"),
    ("_dmarc.example.com", "_dmarc.example.com"),
    ("192.0.2.1", "192.0.2.1"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("BÜCHER.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("ΟΔΟΣ.example", "xn--pxavbq.example"),
    ("אב.example", "xn--4dbc.example"),
])
def test_normalize_domain(name, expected):
    assert normalize_domain(name) == expected


@pytest.mark.parametrize(("name", "message"), [
    ("a..b", "invalid domain 'a..b': empty label"),
    ("", "invalid domain '': empty name"),
    (".", "invalid domain '.': empty name"),
    ("example.com..", "invalid domain 'example.com..': empty label"),
    (".example.com", "invalid domain '.example.com': empty label"),
    ("a b.example", "invalid domain 'a b.example': label 'a b' must be letters, digits, '-', '_'"
                    " and must not start or end with '-'"),
    ("-a.example", "invalid domain '-a.example': label '-a' must be letters, digits, '-', '_'"
                   " and must not start or end with '-'"),
    ("a\nb", "invalid domain 'a\\nb': control character"),
])
def test_normalize_domain_messages(name, message):
    with pytest.raises(AddressError) as caught:
        normalize_domain(name)
    assert (caught.value.kind, str(caught.value)) == ("syntax", message)


@pytest.mark.parametrize("name", [
    "a!b.example", "a@b.example", "[192.0.2.1]", "a/b", "☃.example", "xn--n3h.example",
    "xn--zz.example", "a\u05d0.example", "\u2028", "exam\u00adple.com",
])
def test_normalize_domain_rejects(name):
    assert _kind(normalize_domain, name) == "syntax"


# --- HELO -------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "ok"), [
    ("mail.example.com", True),
    ("MAIL.Example.COM", True),
    ("mail.example.com.", True),
    ("localhost", True),
    ("mail_1.example", True),
    ("123.example", True),
    ("bücher.example", True),
    ("xn--bcher-kva.example", True),
    ("[192.0.2.1]", True),
    ("[IPv6:2001:db8::1]", True),
    ("[ipv6:::ffff:192.0.2.1]", True),
    ("", False),
    (" ", False),
    ("\t", False),
    ("192.0.2.1", False),
    ("example.123", False),
    ("2001:db8::1", False),
    ("[2001:db8::1]", False),
    ("[192.0.2.256]", False),
    ("[mail.example.com]", False),
    ("[192.0.2.1", False),
    ("mail..example.com", False),
    ("mail.example.com..", False),
    (".", False),
    ("-mail.example.com", False),
    ("mail example.com", False),
    (" mail.example.com", False),
    ("mail.example.com\r\n", False),
    ("user@mail.example.com", False),
    ("<mail.example.com>", False),
    ("ｍａｉｌ.example.com", False),
    ("\u212aelvin.example", False),
    ("☃.example", False),
    ("a" * 64 + ".example", False),
])
def test_valid_helo(name, ok):
    assert valid_helo(name) is ok


# --- ESMTP parameters -------------------------------------------------------------------

@pytest.mark.parametrize(("params", "expected"), [
    ([], {}),
    (["SIZE=1000"], {"SIZE": "1000"}),
    (["size=0"], {"SIZE": "0"}),
    (["SIZE=" + "9" * 20], {"SIZE": "9" * 20}),
    (["BODY=7BIT"], {"BODY": "7BIT"}),
    (["body=8bitmime"], {"BODY": "8bitmime"}),
    (["BODY=BINARYMIME"], {"BODY": "BINARYMIME"}),
    (["RET=FULL", "ENVID=QQ314159"], {"RET": "FULL", "ENVID": "QQ314159"}),
    (["ret=hdrs"], {"RET": "hdrs"}),
    (["NOTIFY=NEVER"], {"NOTIFY": "NEVER"}),
    (["NOTIFY=SUCCESS,FAILURE,DELAY"], {"NOTIFY": "SUCCESS,FAILURE,DELAY"}),
    (["notify=delay"], {"NOTIFY": "delay"}),
    (["SMTPUTF8", "REQUIRETLS"], {"SMTPUTF8": None, "REQUIRETLS": None}),
    (["MT-PRIORITY=-9"], {"MT-PRIORITY": "-9"}),
    (["MT-PRIORITY=9"], {"MT-PRIORITY": "9"}),
    (["MT-PRIORITY=+3"], {"MT-PRIORITY": "+3"}),
    (["MT-PRIORITY=0"], {"MT-PRIORITY": "0"}),
    (["AUTH=<>"], {"AUTH": "<>"}),
    (["ORCPT=rfc822;u+40x.example"], {"ORCPT": "rfc822;u+40x.example"}),
    (["X-Custom"], {"X-CUSTOM": None}),
    (["x-utf8=Grüße"], {"X-UTF8": "Grüße"}),
    (["9X=1"], {"9X": "1"}),
])
def test_parse_esmtp_params(params, expected):
    assert parse_esmtp_params(params) == expected


@pytest.mark.parametrize("params", [
    [""],
    ["=x"],
    ["="],
    ["-X=1"],
    ["X_Y=1"],
    ["X Y=1"],
    ["SİZE=1"],
    ["X=a b"],
    ["X=a\tb"],
    ["X=a\x00"],
    ["X=a\r\n"],
    ["X=a\x7f"],
    ["X=a\u2028"],
    ["X=a\u00a0b"],
    ["X=a\u3000b"],
    ["X="],
    ["SIZE=1", "size=2"],
    ["SMTPUTF8", "SMTPUTF8"],
    ["SIZE"],
    ["SIZE=-1"],
    ["SIZE=1k"],
    ["SIZE=1.5"],
    ["SIZE=" + "9" * 21],
    ["SIZE=١٢"],
    ["SIZE=１２"],
    ["BODY"],
    ["BODY=8BIT"],
    ["BODY=8BITMIME2"],
    ["RET=ALL"],
    ["RET"],
    ["RET=HDRſ"],
    ["NOTIFY=NEVER,SUCCESS"],
    ["NOTIFY=SUCCESS,"],
    ["NOTIFY=,SUCCESS"],
    ["NOTIFY=SUCCESS,,DELAY"],
    ["NOTIFY=ALWAYS"],
    ["NOTIFY"],
    ["SMTPUTF8=yes"],
    ["REQUIRETLS=1"],
    ["MT-PRIORITY=10"],
    ["MT-PRIORITY=-10"],
    ["MT-PRIORITY=++1"],
    ["MT-PRIORITY=one"],
    ["MT-PRIORITY"],
])
def test_parse_esmtp_params_rejects(params):
    assert _kind(parse_esmtp_params, params) == "syntax"


@pytest.mark.parametrize(("params", "size"), [
    ([], None),
    (["BODY=8BITMIME"], None),
    (["SIZE=0"], 0),
    (["size=10485760"], 10485760),
    (["SIZE=00042"], 42),
    (["SIZE=" + "9" * 20], 10**20 - 1),
])
def test_declared_size(params, size):
    assert declared_size(parse_esmtp_params(params)) == size



def test_a_commands_path_is_kept_and_a_refused_one_refused_again() -> None:
    """The paths of MAIL and RCPT are kept (an Address never changes); a refusal is
    answered again every time, never taken from what was kept."""
    from policy_milter.checks.protocol import parse_command
    from policy_milter.decision import Decision

    first = parse_command("<Kept@Example.COM>", [], mail=False)
    again = parse_command("<Kept@Example.COM>", [], mail=False)
    assert isinstance(first, tuple) and isinstance(again, tuple) and first[0] is again[0]
    for _ in range(2):
        assert isinstance(parse_command("<kept@@example.com>", [], mail=False), Decision)
    assert isinstance(parse_command("<>", [], mail=False), Decision)
    null = parse_command("<>", [], mail=True)
    assert isinstance(null, tuple) and null[0].is_null
