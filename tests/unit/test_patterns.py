"""Pattern sets: what each way of writing a pattern matches, and what it must not match."""

from __future__ import annotations

import ipaddress

import pytest

from policy_milter.addresses import Address, parse_path
from policy_milter.patterns import (
    AddressPatterns,
    DomainPatterns,
    NetworkPatterns,
    PatternError,
    PatternSet,
    contains,
    domain_name,
    parents,
)


def addr(text: str) -> Address:
    return parse_path(text, null_ok=True)


def single(cls: type[PatternSet[int]], pattern: str) -> PatternSet[int]:
    patterns = cls()
    patterns.add(pattern, 7)
    return patterns


# --- NetworkPatterns -----------------------------------------------------------------

NETWORK_CASES = [
    # single addresses
    ("192.0.2.7", "192.0.2.7", True),
    ("192.0.2.7", "192.0.2.8", False),
    ("192.0.2.1/32", "192.0.2.1", True),
    ("192.0.2.1/32", "192.0.2.0", False),
    # CIDR boundaries
    ("192.0.2.0/24", "192.0.2.0", True),
    ("192.0.2.0/24", "192.0.2.255", True),
    ("192.0.2.0/24", "192.0.1.255", False),
    ("192.0.2.0/24", "192.0.3.0", False),
    ("198.51.100.128/25", "198.51.100.127", False),
    ("198.51.100.128/25", "198.51.100.128", True),
    ("198.51.100.128/25", "198.51.100.255", True),
    ("10.0.0.0/8", "10.255.255.255", True),
    ("10.0.0.0/8", "11.0.0.0", False),
    ("192.0.2.77/24", "192.0.2.200", True),  # host bits set: taken as its network
    ("0.0.0.0/0", "203.0.113.9", True),
    ("0.0.0.0/0", "2001:db8::1", False),
    # IPv6
    ("2001:db8::1", "2001:db8::1", True),
    ("2001:db8::1", "2001:db8::2", False),
    ("2001:DB8::1", "2001:db8:0:0:0:0:0:1", True),
    ("2001:db8::/32", "2001:db8::", True),
    ("2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("2001:db8::/32", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", False),
    ("2001:db8::/32", "2001:db9::", False),
    ("2001:db8:0:1::/64", "2001:db8:0:1:ffff::1", True),
    ("2001:db8:0:1::/64", "2001:db8:0:2::", False),
    ("::1/128", "::1", True),
    ("::/0", "2001:db8::1", True),
    ("::/0", "192.0.2.1", False),
    # IPv4-mapped IPv6 is IPv4, on either side; other IPv6 forms of an IPv4 are not
    ("192.0.2.0/24", "::ffff:192.0.2.5", True),
    ("192.0.2.0/24", "::ffff:192.0.3.5", False),
    ("192.0.2.5", "::FFFF:c000:205", True),
    ("::ffff:192.0.2.0/120", "192.0.2.77", True),
    ("::ffff:192.0.2.0/120", "192.0.3.1", False),
    ("::ffff:192.0.2.1", "192.0.2.1", True),
    ("::ffff:192.0.2.0/120", "::ffff:192.0.2.9", True),
    ("192.0.2.0/24", "::192.0.2.5", False),  # IPv4-compatible, not mapped
    ("192.0.2.0/24", "2002:c000:205::1", False),  # 6to4
    # bracketed forms, as in logs and address literals
    ("[192.0.2.1]", "192.0.2.1", True),
    ("[2001:db8::1]", "2001:db8::1", True),
    ("192.0.2.1", "[192.0.2.1]", True),
    ("2001:db8::1", "[IPv6:2001:db8::1]", True),
    ("2001:db8::/32", "[ipv6:2001:db8::5]", True),
    ("192.0.2.0/24", "[IPv6:::ffff:192.0.2.1]", True),
    ("192.0.2.1", "[192.0.2.2]", False),
]


@pytest.mark.parametrize("pattern, client, expected", NETWORK_CASES)
def test_network_patterns(pattern: str, client: str, expected: bool) -> None:
    assert list(single(NetworkPatterns, pattern).find(client)) == ([7] if expected else [])


@pytest.mark.parametrize("pattern, client, expected", [
    ("192.0.2.0/24", ipaddress.ip_address("192.0.2.9"), True),
    ("192.0.2.0/24", ipaddress.ip_address("192.0.3.9"), False),
    ("2001:db8::/32", ipaddress.ip_address("2001:db8::9"), True),
    ("192.0.2.0/24", ipaddress.ip_address("::ffff:192.0.2.9"), True),
    ("::ffff:192.0.2.0/120", ipaddress.ip_address("::ffff:192.0.2.9"), True),
])
def test_network_patterns_take_address_objects(
        pattern: str, client: ipaddress.IPv4Address | ipaddress.IPv6Address,
        expected: bool) -> None:
    assert list(single(NetworkPatterns, pattern).find(client)) == ([7] if expected else [])


@pytest.mark.parametrize("client", [None, "", "unknown", "mx.example.net", "[unknown]"])
def test_network_patterns_unknown_client_matches_nothing(client: str | None) -> None:
    patterns = NetworkPatterns[int]()
    patterns.add("0.0.0.0/0", 1)
    patterns.add("::/0", 2)
    assert list(patterns.find(client)) == []


def test_network_patterns_yield_every_matching_block() -> None:
    patterns = NetworkPatterns[str]()
    for text in ("192.0.2.1", "192.0.2.0/24", "192.0.0.0/16", "198.51.100.0/24",
                 "0.0.0.0/0", "::/0", "192.0.2.0/24"):
        patterns.add(text, text)
    assert sorted(patterns.find("192.0.2.1")) == sorted(
        ["192.0.2.1", "192.0.2.0/24", "192.0.2.0/24", "192.0.0.0/16", "0.0.0.0/0"])
    assert sorted(patterns.find("192.0.3.1")) == ["0.0.0.0/0", "192.0.0.0/16"]


@pytest.mark.parametrize("pattern", [
    "192.0.2.300", "192.0.2.0/33", "2001:db8::/129", "2001:db8:::1", "example.com", "",
    "192.0.2.0/24/8",
])
def test_network_pattern_errors(pattern: str) -> None:
    with pytest.raises(PatternError) as err:
        NetworkPatterns[int]().add(pattern, 1)
    assert str(err.value) == f"'{pattern}' is not an IP address or CIDR block"


def test_network_patterns_bool_and_hashable() -> None:
    patterns = NetworkPatterns[int]()
    assert not patterns
    patterns.add("192.0.2.0/24", 1)
    assert patterns
    assert patterns.hashable()


# --- DomainPatterns ------------------------------------------------------------------

DOMAIN_CASES = [
    # exact
    ("example.com", "example.com", True),
    ("example.com", "mail.example.com", False),
    ("example.com", "example.org", False),
    ("example.com", "notexample.com", False),
    ("example.com", "com", False),
    # case and trailing dot, on either side
    ("Example.COM", "example.com", True),
    ("example.com", "EXAMPLE.Com", True),
    ("example.com.", "example.com", True),
    ("example.com", "example.com.", True),
    # parents: subdomains only, never the domain itself
    (".example.com", "mail.example.com", True),
    (".example.com", "a.b.example.com", True),
    (".example.com", "example.com", False),
    (".example.com", "badexample.com", False),
    (".example.com", "example.com.evil.test", False),
    ("*.example.com", "mail.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "badexample.com", False),
    (".Example.COM.", "MX.example.com.", True),
    # globs
    ("mail*.example.net", "mail1.example.net", True),
    ("mail*.example.net", "mail.example.net", True),
    ("mail*.example.net", "smtp.example.net", False),
    ("mail*.example.net", "mail1.example.net.evil.test", False),
    ("mail?.example.net", "mail12.example.net", False),
    ("mail?.example.net", "mail1.example.net", True),
    ("MAIL*.Example.net", "mail7.EXAMPLE.net.", True),
    ("mx[12].example.net", "mx2.example.net", True),
    ("mx[12].example.net", "mx3.example.net", False),
    ("*dynamic*", "host-1.dynamic.example", True),
    # IDN: U-labels and A-labels are the same name
    ("bücher.example", "xn--bcher-kva.example", True),
    ("xn--bcher-kva.example", "bücher.example", True),
    ("BÜCHER.example", "bücher.example", True),
    ("bücher.example", "bucher.example", False),
    (".bücher.example", "shop.xn--bcher-kva.example", True),
    ("*.xn--bcher-kva.example", "shop.bücher.example", True),
    (".bücher.example", "xn--bcher-kva.example", False),
]


@pytest.mark.parametrize("pattern, name, expected", DOMAIN_CASES)
def test_domain_patterns(pattern: str, name: str, expected: bool) -> None:
    assert list(single(DomainPatterns, pattern).find(name)) == ([7] if expected else [])


@pytest.mark.parametrize("name", ["", "[192.0.2.1]", "exa..mple", "-bad-.example"])
def test_domain_patterns_odd_values_do_not_raise(name: str) -> None:
    patterns = DomainPatterns[int]()
    patterns.add("example.com", 1)
    patterns.add(".example.com", 2)
    assert list(patterns.find(name)) == []


def test_domain_patterns_most_specific_first() -> None:
    """Tables.domain takes the first payload: exact, then the nearest parent, then globs."""
    patterns = DomainPatterns[str]()
    patterns.add("*mail*", "glob")
    patterns.add(".example.com", "far")
    patterns.add(".mail.example.com", "near")
    patterns.add("a.mail.example.com", "exact")
    assert list(patterns.find("A.Mail.Example.com")) == ["exact", "near", "far", "glob"]
    assert list(patterns.find("b.mail.example.com")) == ["near", "far", "glob"]


@pytest.mark.parametrize("pattern, message", [
    ("exa..mple", "invalid domain 'exa..mple': empty label"),
    (".exa..mple", "invalid domain 'exa..mple': empty label"),
    ("-bad.example", "invalid domain '-bad.example': label '-bad' must be letters, digits, "
                     "'-', '_' and must not start or end with '-'"),
])
def test_domain_pattern_errors(pattern: str, message: str) -> None:
    with pytest.raises(PatternError) as err:
        DomainPatterns[int]().add(pattern, 1)
    assert str(err.value) == message


@pytest.mark.parametrize("pattern", [".", "*.", "ｅxample.com", "exam ple.com"])
def test_domain_pattern_refused(pattern: str) -> None:
    with pytest.raises(PatternError):
        DomainPatterns[int]().add(pattern, 1)


@pytest.mark.parametrize("patterns, hashable", [
    (["example.com", ".example.net", "*.example.org"], True),
    (["example.com", "mail*.example.net"], False),
])
def test_domain_patterns_hashable(patterns: list[str], hashable: bool) -> None:
    ps = DomainPatterns[int]()
    assert not ps
    for p in patterns:
        ps.add(p, 1)
    assert ps
    assert ps.hashable() is hashable


def test_parents_and_domain_name() -> None:
    assert list(parents("a.b.example")) == ["b.example", "example"]
    assert list(parents("example")) == []
    assert domain_name("Bücher.Example.") == "xn--bcher-kva.example"
    with pytest.raises(PatternError):
        domain_name("")


# --- AddressPatterns -----------------------------------------------------------------

ADDRESS_CASES = [
    # user@domain
    ("user@example.com", "user@example.com", True),
    ("user@example.com", "<user@example.com>", True),
    ("user@example.com", "other@example.com", False),
    ("user@example.com", "user@mail.example.com", False),
    ("user@example.com", "user@example.org", False),
    ("user@example.com", "user.x@example.com", False),
    ("User@Example.COM", "user@example.com", True),
    ("user@example.com", "USER@EXAMPLE.COM", True),
    ("user@example.com.", "user@example.com", True),
    # @domain: the whole domain, not its subdomains
    ("@example.com", "anyone@example.com", True),
    ("@example.com", "a@mail.example.com", False),
    ("@example.com", "a@example.org", False),
    ("@Example.COM", "X@EXAMPLE.com", True),
    ("*@example.com", "x@example.com", True),
    ("*@example.com", "x@a.example.com", False),
    # @.domain: subdomains only
    ("@.example.com", "a@mail.example.com", True),
    ("@.example.com", "a@x.y.example.com", True),
    ("@.example.com", "a@example.com", False),
    ("@*.example.com", "a@mail.example.com", True),
    ("@*.example.com", "a@example.com", False),
    ("*@.example.com", "a@mail.example.com", True),
    # user@: that local part in any domain
    ("user@", "user@example.com", True),
    ("user@", "user@other.example", True),
    ("user@", "users@example.com", False),
    ("user@", "xuser@example.com", False),
    ("USER@", "User@x.example", True),
    # <>: the null sender only
    ("<>", "<>", True),
    ("<>", "user@example.com", False),
    ("@example.com", "<>", False),
    ("user@", "<>", False),
    ("*@*", "<>", False),
    ("*@", "<>", False),
    # globs
    ("news*@example.com", "newsletter@example.com", True),
    ("news*@example.com", "news@example.com", True),
    ("news*@example.com", "info@example.com", False),
    ("news*@example.com", "newsletter@example.org", False),
    ("NEWS*@Example.com", "Newsletter@EXAMPLE.COM", True),
    ("user@*.example.com", "user@a.example.com", True),
    ("user@*.example.com", "user@example.com", False),
    ("user@*.example.com", "other@a.example.com", False),
    ("@mx*.example.com", "a@mx1.example.com", True),
    ("@mx*.example.com", "a@smtp.example.com", False),
    ("@mx*.example.com", "a@example.com", False),
    ("*@mx?.example.com", "a@mx1.example.com", True),
    ("abuse*@", "abuse-team@example.org", True),
    ("abuse*@", "Abuse@Example.org", True),
    ("abuse*@", "info@example.org", False),
    ("*@", "a@b.example", True),
    ("*@*", "a@b.example", True),
    ("*-list@example.com", "staff-list@example.com", True),
    ("*-list@example.com", "staff@example.com", False),
    # IDN domains
    ("user@bücher.example", "user@xn--bcher-kva.example", True),
    ("user@xn--bcher-kva.example", "user@bücher.example", True),
    ("@xn--bcher-kva.example", "a@BÜCHER.example", True),
    ("@.bücher.example", "a@shop.xn--bcher-kva.example", True),
]


@pytest.mark.parametrize("pattern, address, expected", ADDRESS_CASES)
def test_address_patterns(pattern: str, address: str, expected: bool) -> None:
    assert list(single(AddressPatterns, pattern).find(addr(address))) == ([7] if expected else [])


def test_address_patterns_bare_postmaster() -> None:
    """RCPT TO:<postmaster> has no domain; ``postmaster@`` still names it."""
    postmaster = parse_path("<Postmaster>", null_ok=False)
    assert list(single(AddressPatterns, "postmaster@").find(postmaster)) == [7]
    assert list(single(AddressPatterns, "postmaster@example.com").find(postmaster)) == []


def test_address_patterns_yield_every_match() -> None:
    patterns = AddressPatterns[str]()
    for text in ("alice@example.com", "@example.com", "alice@", "al*@example.com",
                 "@.com", "bob@example.com", "<>"):
        patterns.add(text, text)
    assert sorted(patterns.find(addr("Alice@Example.com"))) == sorted(
        ["alice@example.com", "@example.com", "alice@", "al*@example.com", "@.com"])
    assert list(patterns.find(addr("<>"))) == ["<>"]


@pytest.mark.parametrize("pattern, message", [
    ("user", "'user' is not an address pattern (use user@domain, @domain, user@ or <>)"),
    ("example.com", "'example.com' is not an address pattern "
                    "(use user@domain, @domain, user@ or <>)"),
    ("@", "'@' is not an address pattern (use user@domain, @domain, user@ or <>)"),
    ("user@exa..mple", "invalid domain 'exa..mple': empty label"),
    ("@exa..mple", "invalid domain 'exa..mple': empty label"),
    ("@.exa..mple", "invalid domain 'exa..mple': empty label"),
])
def test_address_pattern_errors(pattern: str, message: str) -> None:
    with pytest.raises(PatternError) as err:
        AddressPatterns[int]().add(pattern, 1)
    assert str(err.value) == message


@pytest.mark.parametrize("patterns, hashable", [
    (["user@example.com", "@example.org", "@.example.net", "user@", "<>"], True),
    (["user@example.com", "news*@example.com"], False),
    (["user@example.com", "@mx*.example.com"], False),
    (["abuse*@"], False),
])
def test_address_patterns_hashable(patterns: list[str], hashable: bool) -> None:
    ps = AddressPatterns[int]()
    assert not ps
    for p in patterns:
        ps.add(p, 1)
    assert ps
    assert ps.hashable() is hashable


@pytest.mark.parametrize("pattern", ["user@example.com", "@example.com", "@.example.com",
                                     "user@", "<>", "u*@example.com"])
def test_address_patterns_bool(pattern: str) -> None:
    assert single(AddressPatterns, pattern)


# --- PatternSet (words: listener names) ----------------------------------------------

@pytest.mark.parametrize("pattern, word, expected", [
    ("submission", "submission", True),
    ("Submission", "SUBMISSION", True),
    ("submission", "submissions", False),
    ("submission", "sub", False),
    ("smtpd", "", False),
    ("sub*", "submission", True),
    ("sub*", "SMTPD", False),
    ("smtp?", "smtpd", True),
    ("smtp?", "smtp", False),
    ("[ab]mx", "bmx", True),
])
def test_word_patterns(pattern: str, word: str, expected: bool) -> None:
    assert list(single(PatternSet, pattern).find(word)) == ([7] if expected else [])


def test_word_patterns_hashable_bool_and_payloads() -> None:
    words = PatternSet[int]()
    assert not words
    words.add("smtpd", 1)
    words.add("SMTPD", 2)
    assert words and words.hashable()
    assert list(words.find("smtpd")) == [1, 2]
    words.add("sub*", 3)
    assert not words.hashable()
    assert list(words.find("Submission")) == [3]


def test_contains() -> None:
    nets = NetworkPatterns[None]()
    nets.add("192.0.2.0/24", None)  # a None payload still counts as a match
    assert contains(nets, "192.0.2.1")
    assert not contains(nets, "198.51.100.1")
    assert not contains(nets, None)
    senders = AddressPatterns[None]()
    senders.add("@example.com", None)
    assert contains(senders, addr("a@example.com"))
    assert not contains(senders, addr("<>"))


# --- what `check` proves: covers, disjoint, example -----------------------------------

def patterns(cls: type[PatternSet[None]], *texts: str) -> PatternSet[None]:
    found = cls()
    for text in texts:
        found.add(text, None)
    return found


COVERS = [
    # (class, the wider set, the narrower set, covers)
    (NetworkPatterns, ["10.0.0.0/8"], ["10.1.0.0/16", "10.2.3.4"], True),
    (NetworkPatterns, ["10.0.0.0/8"], ["10.0.0.0/7"], False),
    (NetworkPatterns, ["10.0.0.0/9", "10.128.0.0/9"], ["10.0.0.0/8"], False),  # not by halves
    (NetworkPatterns, ["::/0"], ["192.0.2.1"], False),
    (NetworkPatterns, ["192.0.2.0/24"], ["::ffff:192.0.2.7"], True),
    (DomainPatterns, [".example.com"], ["a.example.com", ".b.example.com"], True),
    (DomainPatterns, [".example.com"], ["example.com"], False),
    (DomainPatterns, ["*.example.com"], ["mx.Example.COM."], True),
    (DomainPatterns, ["example.com"], ["bücher.example"], False),
    (DomainPatterns, ["xn--bcher-kva.example"], ["bücher.example"], True),
    (DomainPatterns, ["*"], ["mx*.example.com", ".example.com", "a.b"], True),
    (DomainPatterns, ["mx*.example.com"], ["mx1.example.com"], True),
    (DomainPatterns, ["mx*.example.com"], ["mx?.example.com"], False),
    (AddressPatterns, ["@example.com"], ["a@example.com", "B@EXAMPLE.COM"], True),
    (AddressPatterns, ["a@example.com"], ["@example.com"], False),
    (AddressPatterns, ["@.example.com"], ["a@x.example.com", "@.y.example.com"], True),
    (AddressPatterns, ["@.example.com"], ["a@example.com"], False),
    (AddressPatterns, ["abuse@"], ["abuse@example.com"], True),
    (AddressPatterns, ["abuse@example.com"], ["abuse@"], False),
    (AddressPatterns, ["*@example.com"], ["a@example.com"], True),
    (AddressPatterns, ["a*@example.com"], ["ab@example.com"], True),
    (AddressPatterns, ["a*@example.com"], ["a*@example.com"], True),
    (AddressPatterns, ["a*@example.com"], ["ab*@example.com"], False),
    (AddressPatterns, ["<>"], ["<>"], True),
    (AddressPatterns, ["@example.com"], ["<>"], False),
    (PatternSet, ["smtpd"], ["SMTPD"], True),
    (PatternSet, ["sub*"], ["submission"], True),
    (PatternSet, ["submission"], ["sub*"], False),
]


@pytest.mark.parametrize("cls, wide, narrow, expected", COVERS)
def test_covers(cls: type[PatternSet[None]], wide: list[str], narrow: list[str],
                expected: bool) -> None:
    assert patterns(cls, *wide).covers(patterns(cls, *narrow)) is expected


def test_covers_is_checked_against_the_values_themselves() -> None:
    """Whenever a set is said to cover another, every value the other matches, it
    matches: the proof agrees with the lookups."""
    for cls, wide, narrow, expected in COVERS:
        if expected and cls is AddressPatterns:
            values = [addr(a) for a in ("a@example.com", "b@example.com", "a@x.example.com",
                                        "abuse@example.com", "ab@example.com", "<>",
                                        "a+tag@example.com", "a@y.example.com")]
            one, two = patterns(cls, *wide), patterns(cls, *narrow)
            assert all(contains(one, v) for v in values if contains(two, v))


@pytest.mark.parametrize("cls, one, two, expected", [
    (NetworkPatterns, ["10.0.0.0/8"], ["192.168.0.0/16", "::1"], True),
    (NetworkPatterns, ["10.0.0.0/8"], ["192.168.0.0/16", "10.9.9.9"], False),
    (DomainPatterns, ["a.example"], ["b.example"], True),
    (DomainPatterns, [".example"], ["a.example"], False),
    (DomainPatterns, [".a.example"], [".b.example"], True),
    (DomainPatterns, [".example"], [".b.example"], False),
    (DomainPatterns, ["mx*.example"], ["smtp.example"], True),
    (DomainPatterns, ["mx*.example"], [".example"], False),  # not provable
    (AddressPatterns, ["<>"], ["@example.com", "abuse@"], True),
    (AddressPatterns, ["<>"], ["<>", "a@b.example"], False),
    (AddressPatterns, ["a@x.example"], ["a@y.example", "@z.example"], True),
    (AddressPatterns, ["a@x.example"], ["a+tag@x.example"], False),  # one mailbox
    (AddressPatterns, ["a@x.example"], ["@.example"], False),
    (AddressPatterns, ["abuse@"], ["a@x.example"], False),
    (PatternSet, ["smtpd"], ["submission"], True),
    (PatternSet, ["smtpd"], ["SMTPD"], False),
    (PatternSet, ["sm*"], ["sub*"], False),
])
def test_disjoint(cls: type[PatternSet[None]], one: list[str], two: list[str],
                  expected: bool) -> None:
    assert patterns(cls, *one).disjoint(patterns(cls, *two)) is expected
    assert patterns(cls, *two).disjoint(patterns(cls, *one)) is expected


@pytest.mark.parametrize("cls, texts", [
    (NetworkPatterns, ["2001:db8::/32"]),
    (DomainPatterns, [".example.com"]),
    (DomainPatterns, ["mx.example.com"]),
    (AddressPatterns, ["@.example.com"]),
    (AddressPatterns, ["abuse@"]),
    (AddressPatterns, ["<>"]),
    (PatternSet, ["smtpd"]),
])
def test_example_is_matched(cls: type[PatternSet[None]], texts: list[str]) -> None:
    found = patterns(cls, *texts)
    assert contains(found, found.example())


def test_no_example_of_globs_alone() -> None:
    assert patterns(DomainPatterns, "mx*.example").example() is None
    assert patterns(AddressPatterns, "spam*@*").example() is None


def test_the_domains_of_address_patterns() -> None:
    assert patterns(AddressPatterns, "a@x.example", "@Y.example").domains() == {
        "x.example", "y.example"}
    for text in ("@.x.example", "abuse@", "a*@x.example", "<>", "@mx*.example"):
        assert patterns(AddressPatterns, "a@x.example", text).domains() is None


def test_network_patterns_remember_host_bits() -> None:
    nets = patterns(NetworkPatterns, "192.0.2.1/24", "198.51.100.0/24", "192.0.2.9",
                    "::ffff:192.0.2.5/120", "2001:db8::1/64")
    assert isinstance(nets, NetworkPatterns)
    assert [(text, str(net)) for text, net in nets.masked] == [
        ("192.0.2.1/24", "192.0.2.0/24"), ("::ffff:192.0.2.5/120", "192.0.2.0/24"),
        ("2001:db8::1/64", "2001:db8::/64")]
    assert contains(nets, "192.0.2.200")  # read as the network, as before
