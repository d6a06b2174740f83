"""Distinguished names and subject alternative names."""

from __future__ import annotations

import ipaddress
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import example, given, settings
from hypothesis import strategies as st

from certctl.errors import InvalidRequest
from certctl.pki.names import (
    DNPattern,
    SubjectAltNames,
    common_name_dn,
    display_dn,
    display_dn_text,
    format_dn,
    parse_dn,
    san_search_forms,
    validate_dns_name,
)

FAST = settings(max_examples=200, deadline=None)
_KEY = ec.generate_private_key(ec.SECP256R1())


# --- distinguished names ---------------------------------------------------------------


def test_parse_dn_most_specific_first() -> None:
    name = parse_dn("CN=node-1,OU=ops,O=Example,C=DE")
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-1"
    # RFC 4514 strings list the most specific RDN first; x509.Name stores it last.
    assert [a.oid for a in name] == [
        NameOID.COUNTRY_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATIONAL_UNIT_NAME,
        NameOID.COMMON_NAME,
    ]
    assert format_dn(name) == "CN=node-1,OU=ops,O=Example,C=DE"


def test_parse_dn_multi_valued_rdn_and_escapes() -> None:
    name = parse_dn("CN=a+OU=b,O=b\\,c")
    assert len(name.rdns) == 2
    assert len(name.rdns[1]) == 2
    assert name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "b,c"
    assert parse_dn(format_dn(name)) == name


@pytest.mark.parametrize(
    "text",
    [
        "cn=web,ou=ops,o=Example,c=DE",
        "Cn=web,Ou=ops,O=Example,C=DE",
        "CN=web,OU=ops,o=Example,c=DE",
    ],
)
def test_parse_dn_takes_attribute_types_in_any_case(text: str) -> None:
    # RFC 4514 3: type names are case-insensitive; LDAP tools, Java's X500Principal (and so
    # elasticsearch-certutil --dn) and certctl's own DN patterns take "cn=". Before: "not a
    # valid RFC 4514 distinguished name".
    assert parse_dn(text) == parse_dn("CN=web,OU=ops,O=Example,C=DE")


def test_parse_dn_domain_components() -> None:
    name = parse_dn("DC=example,DC=com")
    assert [a.value for a in name] == ["com", "example"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty distinguished name"),
        ("   ", "empty distinguished name"),
        ("CN", "CN: not a valid RFC 4514 distinguished name"),
        ("=x", "=x: not a valid RFC 4514 distinguished name"),
        # Which attribute type: before, only "XX=1: not a valid RFC 4514 distinguished name".
        ("XX=1", "XX=1: unknown attribute type 'XX' (use CN, OU, O, ... or a dotted OID)"),
        ("CN=a,Organisation=b", "unknown attribute type 'Organisation'"),
        ("CN=a,,O=b", "not a valid RFC 4514 distinguished name"),
        ("CN=a\\", "not a valid RFC 4514 distinguished name"),
        ("CN=", "not a valid RFC 4514 distinguished name"),
        ("C=USA", "not a valid RFC 4514 distinguished name"),
        ("CN=" + "a" * 65, "not a valid RFC 4514 distinguished name"),
        # OpenSSL's -subj form and openssl/Java display forms, pasted: shown how to write them.
        (
            "/C=US/O=Example/CN=Ops CA",
            "/C=US/O=Example/CN=Ops CA: not a valid RFC 4514 distinguished name (OpenSSL's "
            "-subj form; RFC 4514 writes the most specific first: CN=Ops CA,O=Example,C=US)",
        ),
        (
            "CN=Ops CA, O=Example",
            "CN=Ops CA, O=Example: not a valid RFC 4514 distinguished name (no spaces around "
            "',' and '=': CN=Ops CA,O=Example)",
        ),
        (
            "CN = Ops CA, O = Example",
            "not a valid RFC 4514 distinguished name (no spaces around ',' and '=': "
            "CN=Ops CA,O=Example)",
        ),
        ("L=" + "a" * 129, "L is longer than 128 characters"),
        ("ST=" + "a" * 129, "ST is longer than 128 characters"),
    ],
)
def test_parse_dn_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        parse_dn(text)


@pytest.mark.parametrize("value", ["a\u00a0b", "soft\u00adhyphen", "line\u2028sep", "Caf\u00e9 01"])
def test_common_name_dn_keeps_unprintable_non_controls(value: str) -> None:
    """Only category Cc is refused; other characters ``isprintable`` rejects stay allowed."""
    assert [a.value for a in common_name_dn(value)] == [value]


def test_common_name_dn_is_literal() -> None:
    name = common_name_dn("a,b+c=d")
    assert [a.value for a in name] == ["a,b+c=d"]
    assert parse_dn(format_dn(name)) == name


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty common name"),
        ("a" * 65, "common name is longer than 64 characters"),
        ("web\n01", "control characters are not allowed"),
        ("\x00evil.example", "control characters are not allowed"),
        ("x\x7f", "control characters are not allowed"),
        ("caf\u00e9 \u0085", "control characters are not allowed"),
        # Displays as "google.com" where bidi is rendered (Trojan Source).
        ("moc.elgoog\u202e", "bidirectional control characters are not allowed"),
        ("web\u2066-01\u2069", "bidirectional control characters are not allowed"),
    ],
)
def test_common_name_dn_refuses(value: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        common_name_dn(value)


def test_right_to_left_names_without_bidi_controls_are_accepted() -> None:
    # Twin of the bidi refusals: scripts written right to left are names like any other.
    for value in ("\u05e9\u05e8\u05ea-01", "\u0645\u062e\u062f\u0645", "M\u00fcller \u00e9"):
        assert [a.value for a in common_name_dn(value)] == [value]
        parsed = parse_dn(f"CN={value},O=Example")
        assert parsed.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == value


def test_parsed_and_csr_names_refuse_bidi_controls_escaped_in_the_message() -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_dn("CN=moc.elgoog\u202e,O=Example")
    # The message shows the character as an escape, so it does not reorder the message itself.
    assert raised.value.detail == (
        "CN=moc.elgoog\\u202e,O=Example: bidirectional control characters are not supported "
        "(they make a name display as another)"
    )


_SPECIALS = ',+="\\<>#; '
# cryptography measures the RFC 5280 upper bounds in UTF-8 bytes (not characters), so values
# are drawn short enough that even 4-byte characters stay inside the bound.
_value_chars = st.characters(
    categories=("L", "M", "N", "P", "S", "Zs"), include_characters=_SPECIALS, max_codepoint=0xFFFF
)


def _values(max_size: int) -> st.SearchStrategy[str]:
    return st.text(_value_chars, min_size=1, max_size=max_size)


_ATTRIBUTES = st.one_of(
    _values(16).map(lambda v: x509.NameAttribute(NameOID.COMMON_NAME, v)),
    _values(16).map(lambda v: x509.NameAttribute(NameOID.ORGANIZATION_NAME, v)),
    _values(16).map(lambda v: x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, v)),
    _values(32).map(lambda v: x509.NameAttribute(NameOID.LOCALITY_NAME, v)),
    _values(32).map(lambda v: x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, v)),
    _values(15).map(lambda v: x509.NameAttribute(NameOID.DOMAIN_COMPONENT, v)),
    st.text(
        st.characters(min_codepoint=ord("A"), max_codepoint=ord("Z")), min_size=2, max_size=2
    ).map(lambda v: x509.NameAttribute(NameOID.COUNTRY_NAME, v)),
)


def _rdn(attributes: list[x509.NameAttribute[str]]) -> x509.RelativeDistinguishedName:
    # A multi-valued RDN is a SET: one attribute per type and value.
    unique = {(a.oid, a.value): a for a in attributes}
    return x509.RelativeDistinguishedName(list(unique.values()))


_NAMES = st.lists(
    st.lists(_ATTRIBUTES, min_size=1, max_size=3).map(_rdn), min_size=1, max_size=5
).map(x509.Name)


def _cn(value: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])


@FAST
@given(_NAMES)
@example(_cn(_SPECIALS.strip()))
@example(_cn(" leading and trailing "))
@example(_cn("#hash-first"))
@example(_cn('a,b+c="d"\\<e>;f'))
@example(_cn("  "))
@example(_cn("Zürich 東京 🔒"))
@example(
    x509.Name(
        [
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "x+y"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "=z"),
                ]
            )
        ]
    )
)
def test_dn_round_trip(name: x509.Name) -> None:
    assert parse_dn(format_dn(name)) == name


# --- DN patterns (auth.client-cert-mappings) --------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("CN=*,OU=ops,O=Example", "CN=alice,OU=ops,O=Example", True),
        ("CN=*,OU=ops,O=Example", "CN=alice,OU=dev,O=Example", False),
        # A comma inside a value is that value's: it never makes an OU (the old split did).
        ("CN=*,OU=ops,O=Example", r"CN=x\,OU=ops,O=Example", False),
        ("CN=*,O=Example", r"CN=x\,OU=ops,O=Example", True),
        (r"CN=Smith\, John,O=Example", r"CN=Smith\, John,O=Example", True),
        (r"CN=Smith\, John,O=Example", "CN=Smith,CN=John,O=Example", False),
        # '=' needs no escape in a value; it does not start a new attribute either.
        ("CN=*,O=Example", "CN=a=b,O=Example", True),
        ("CN=a,O=Example", "CN=a=b,O=Example", False),
        # RDN order as written, most specific first; the count must match.
        ("CN=*,OU=ops,O=Example", "O=Example,OU=ops,CN=alice", False),
        ("CN=*,OU=ops,O=Example", "CN=alice,OU=ops,O=Example,C=DE", False),
        ("CN=*,OU=ops,O=Example", "CN=alice+UID=1,OU=ops,O=Example", False),
        # Multi-valued RDNs are sets.
        ("CN=*,OU=dev+OU=ops,O=Example", "CN=m,OU=ops+OU=dev,O=Example", True),
        ("CN=*+UID=*,O=Example", "CN=m+UID=7,O=Example", True),
        ("CN=*+UID=8,O=Example", "CN=m+UID=7,O=Example", False),
        # Attribute types by OID and case-insensitively; values exactly.
        ("cn=*, ou=ops , o=Example", "CN=alice,OU=ops,O=Example", True),
        ("emailAddress=a@example.com,CN=*", "1.2.840.113549.1.9.1=a@example.com,CN=x", True),
        ("CN=*,O=example", "CN=alice,O=Example", False),
        # Escapes: hex pairs (UTF-8), a literal star.
        (r"CN=J\C3\BCrgen,O=E", "CN=Jürgen,O=E", True),
        (r"CN=\2A,O=E", "CN=*,O=E", True),
        (r"CN=\2A,O=E", "CN=bob,O=E", False),
        (r"CN=\ lead,O=E", r"CN=\ lead,O=E", True),
        ("CN=lead,O=E", r"CN=\ lead,O=E", False),
        # A subject that is no RFC 4514 string matches nothing.
        ("CN=*", "CN=a;b", False),
    ],
)
def test_dn_pattern_matches(pattern: str, subject: str, expected: bool) -> None:
    assert DNPattern(pattern).matches(subject) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "empty distinguished name"),
        ("CN", "'CN' is not TYPE=value"),
        ("CN=a,", "'' is not TYPE=value"),
        ("foo=bar", "unknown attribute type 'foo'"),
        (r"CN=a\x", "invalid escape at position 5"),
        ("CN=a;b", r"';' in a value must be escaped (\;)"),
        (r"CN=\FF,O=E", "escaped bytes are not UTF-8"),
    ],
)
def test_dn_pattern_refuses(pattern: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        DNPattern(pattern)


def _wildcards(name: x509.Name) -> str:
    return ",".join(
        "+".join(f"{a.rfc4514_attribute_name}=*" for a in rdn) for rdn in reversed(name.rdns)
    )


@FAST
@given(_NAMES)
@example(_cn(r'x\,OU=ops "q" ; <a> + #'))
@example(_cn("*"))
def test_dn_pattern_matches_what_cryptography_formats(name: x509.Name) -> None:
    subject = format_dn(name)
    pattern = DNPattern(subject)
    assert pattern.matches(subject)
    # Every attribute resolves to its own value: no RDN more or less than the certificate has.
    expected = [sorted((a.oid.dotted_string, a.value) for a in rdn) for rdn in reversed(name.rdns)]
    # (A value "*", unescaped by cryptography, is the pattern's wildcard: None.)
    got = [sorted((o, "*" if v is None else v) for o, v in rdn) for rdn in pattern.rdns]
    assert got == expected
    assert DNPattern(_wildcards(name)).matches(subject)


# --- DNS names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Example.COM.", "example.com"),
        (" host.example ", "host.example"),
        ("*.Example.com", "*.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        # IDNA 2008 (UTS 46 nontransitional), as browsers and curl look names up: IDNA 2003
        # turned these into strasse.example and fass.example, other hosts.
        ("straße.example", "xn--strae-oqa.example"),
        ("Faß.Example", "xn--fa-hia.example"),
        ("*.Bücher.example", "*.xn--bcher-kva.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("localhost", "localhost"),
    ],
)
def test_validate_dns_name_normalises(value: str, expected: str) -> None:
    assert validate_dns_name(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty DNS name"),
        (".", "empty DNS name"),
        ("-bad-.example", "-bad-.example: invalid DNS name"),
        ("bad-.example", "invalid DNS name"),
        ("a.*.example.com", "a.*.example.com: invalid DNS name"),
        ("*x.example.com", "invalid DNS name"),
        ("foo_bar.example", "invalid DNS name"),
        ("a..b", "invalid DNS name"),
        ("a" * 64 + ".example", "invalid DNS name"),
        ("*.com", "*.com: a wildcard needs at least two labels after '*.'"),
        ("*", "a wildcard needs at least two labels"),
        ("1.2.3.4", "1.2.3.4: looks like an IP address; use an IP SAN"),
        (("a" * 63 + ".") * 4 + "com", "DNS name longer than 253 characters"),
        ("a" * 64 + "ü.example", "not a valid internationalised DNS name"),
        # Symbols are not IDNA 2008 code points (IDNA 2003 encoded them).
        ("i❤.example", "i❤.example: not a valid internationalised DNS name"),
    ],
)
def test_validate_dns_name_refuses(value: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate_dns_name(value)


def test_validate_dns_name_refuses_wildcard_when_not_allowed() -> None:
    with pytest.raises(InvalidRequest, match=r"\*\.example\.com: wildcards are not allowed here"):
        validate_dns_name("*.example.com", allow_wildcard=False)


# --- subject alternative names -----------------------------------------------------------


def test_san_parse_normalises_and_dedupes() -> None:
    sans = SubjectAltNames.parse(
        dns=["B.example", "b.example.", "a.example"],
        ip=["10.0.0.1", " 10.0.0.1 ", "::1"],
        email=["ops@Example.com", "ops@example.com"],
        uri=["spiffe://td/ns/x", "spiffe://td/ns/x"],
    )
    assert sans.dns == ("b.example", "a.example")
    assert sans.ip == (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1"))
    assert sans.email == ("ops@example.com",)
    assert sans.uri == ("spiffe://td/ns/x",)
    assert sans
    assert not SubjectAltNames()
    assert sans.as_dict() == {
        "dns": ["b.example", "a.example"],
        "ip": ["10.0.0.1", "::1"],
        "email": ["ops@example.com"],
        "uri": ["spiffe://td/ns/x"],
    }


def test_an_ipv4_mapped_address_is_issued_as_ipv4() -> None:
    # OpenSSL compares the SAN's octets with the 4 of the address a client connected to: the
    # 16-octet ::ffff:10.0.0.5 matched no client of 10.0.0.5. From a CSR too.
    parsed = SubjectAltNames.parse(ip=["::ffff:10.0.0.5", "10.0.0.5", "::1", "64:ff9b::a00:5"])
    assert parsed.ip == (ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1"),
                         ipaddress.ip_address("64:ff9b::a00:5"))  # fmt: skip
    mapped = x509.IPAddress(ipaddress.ip_address("::ffff:192.0.2.1"))
    assert SubjectAltNames.validated([mapped]).ip == (ipaddress.ip_address("192.0.2.1"),)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ip": ["1.2.3.999"]}, "1.2.3.999: not a valid IPv4 or IPv6 address"),
        ({"ip": ["example.com"]}, "example.com: not a valid IPv4 or IPv6 address"),
        ({"ip": ["10.0.0.0/8"]}, "not a valid IPv4 or IPv6 address"),
        ({"ip": ["fe80::1%eth0"]}, "fe80::1%eth0: IPv6 zone"),
        ({"ip": [""]}, "'': empty IP address"),
        ({"ip": [" "]}, "' ': empty IP address"),
        ({"email": [""]}, "'': empty e-mail address"),
        ({"uri": [""]}, "'': empty URI"),
        ({"dns": ["-bad-.example"]}, "-bad-.example: invalid DNS name"),
        ({"dns": ["a.*.example.com"]}, "invalid DNS name"),
        ({"email": ["no-at-sign"]}, "no-at-sign: not a valid e-mail address"),
        ({"email": ["@example.com"]}, "not a valid e-mail address"),
        ({"email": ["user@"]}, "not a valid e-mail address"),
        ({"email": ["ü@example.com"]}, "not a valid e-mail address"),
        ({"email": ["a b@example.com"]}, "not a valid e-mail address"),
        # The address is named, not its domain alone ("-x-.example: invalid DNS name" left
        # the reader to guess which of the SANs given it was).
        (
            {"email": ["user@*.example.com"]},
            "user@*.example.com: not a valid e-mail address: *.example.com: wildcards are not",
        ),
        (
            {"email": ["user@-x-.example"]},
            "user@-x-.example: not a valid e-mail address: -x-.example: invalid DNS name",
        ),
        ({"uri": ["no-scheme"]}, "no-scheme: URI needs a scheme"),
        ({"uri": ["1http://x"]}, "URI needs a scheme"),
        ({"uri": ["https:"]}, "https:: URI has nothing after the scheme"),
        ({"uri": ["http://a b"]}, "URIs must be ASCII without spaces"),
        ({"uri": ["https://bücher.example/"]}, "URIs must be ASCII without spaces"),
        # RFC 3986 2: what a URI cannot hold unencoded. Signed as given, such a name reached
        # every tool that shows or parses the certificate (HTML, quotes, escapes).
        ({"uri": ['urn:x:"uri"']}, 'urn:x:"uri": not a valid URI: \'"\' must be percent-encoded'),
        ({"uri": ["https://x.example/<a>"]}, "not a valid URI: '<' must be percent-encoded"),
        ({"uri": ["urn:x:a\\b"]}, "not a valid URI: '\\\\' must be percent-encoded"),
        ({"uri": ["https://x.example/{a}|^`"]}, "not a valid URI: '{' must be percent-encoded"),
        ({"uri": ["urn:x:\x01"]}, "not a valid URI: '\\x01' must be percent-encoded"),
        ({"uri": ["https://x.example/100%"]}, "not a valid URI: '%' not followed by two hex"),
        ({"uri": ["https://x.example/%zz"]}, "not a valid URI: '%' not followed by two hex"),
        # A dot-atom (RFC 5322 3.4.1) of at most 64 octets (RFC 5321 4.5.3.1.1).
        ({"email": [".a@example.com"]}, ".a@example.com: not a valid e-mail address"),
        ({"email": ["a.@example.com"]}, "not a valid e-mail address"),
        ({"email": ["a..b@example.com"]}, "not a valid e-mail address"),
        ({"email": [f"{'a' * 65}@example.com"]}, "not a valid e-mail address"),
        # SPIFFE's limit on an ID; nothing longer belongs in a certificate.
        ({"uri": [f"urn:x:{'a' * 2043}"]}, "not a valid URI: longer than 2048 characters"),
    ],
)
def test_san_parse_refuses(kwargs: dict[str, list[str]], message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        SubjectAltNames.parse(**kwargs)


def test_to_general_names_order() -> None:
    sans = SubjectAltNames.parse(
        dns=["a.example"], ip=["10.0.0.1"], email=["a@a.example"], uri=["urn:x:y"]
    )
    kinds = [type(g) for g in sans.to_general_names()]
    assert kinds == [
        x509.DNSName,
        x509.IPAddress,
        x509.RFC822Name,
        x509.UniformResourceIdentifier,
    ]


def test_from_extension_ignores_other_name_types() -> None:
    ext = x509.SubjectAlternativeName(
        [x509.DNSName("a.example"), x509.DirectoryName(common_name_dn("x"))]
    )
    assert SubjectAltNames.from_extension(ext) == SubjectAltNames(dns=("a.example",))


def _through_der(sans: SubjectAltNames) -> SubjectAltNames:
    """Encode the extension in a real CSR, re-read it from DER."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(sans.to_extension(), critical=True)
        .sign(_KEY, hashes.SHA256())
    )
    loaded = x509.load_der_x509_csr(csr.public_bytes(serialization.Encoding.DER))
    ext = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return SubjectAltNames.from_extension(ext.value)


_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_label = st.from_regex(r"\A[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?\Z")
_tld = st.text(_LETTERS, min_size=2, max_size=6)
_hostname = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(_label, min_size=1, max_size=4),
    _tld,
)
_dns = st.one_of(_hostname, _hostname.map(lambda h: "*." + h))
_ip = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
_email = st.builds(
    lambda local, host: f"{local}@{host}",
    st.from_regex(r"\A[a-zA-Z0-9_%+-]{1,10}(\.[a-zA-Z0-9_%+-]{1,9})?\Z"),  # a dot-atom
    _hostname,
)
_uri = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["https", "spiffe", "ldap", "urn+x"]),
    _hostname,
    st.from_regex(r"\A[a-zA-Z0-9._~/-]{0,20}\Z"),
)


@FAST
@given(
    dns=st.lists(_dns, max_size=4),
    ip=st.lists(_ip, max_size=4),
    email=st.lists(_email, max_size=3),
    uri=st.lists(_uri, max_size=3),
)
@example(dns=["*.Example.COM."], ip=[], email=[], uri=[])
@example(dns=["bücher.example"], ip=[], email=[], uri=[])
@example(dns=[], ip=["::ffff:1.2.3.4", "0.0.0.0", "::"], email=[], uri=[])
@example(dns=[], ip=[], email=["ops@Example.com"], uri=["urn:uuid:0"])
@example(dns=["a.example", "A.example"], ip=["10.0.0.1", "10.0.0.1"], email=[], uri=[])
def test_san_round_trip(dns: list[str], ip: list[str], email: list[str], uri: list[str]) -> None:
    sans = SubjectAltNames.parse(dns=dns, ip=ip, email=email, uri=uri)
    assert SubjectAltNames.from_extension(sans.to_extension()) == sans
    assert SubjectAltNames.validated(sans.to_extension()) == sans
    if sans:
        assert _through_der(sans) == sans
    # Parsing what came back is a fixed point.
    again = SubjectAltNames.parse(
        dns=sans.dns, ip=[str(a) for a in sans.ip], email=sans.email, uri=sans.uri
    )
    assert again == sans


@FAST
@given(
    dns=st.lists(_dns.map(str.upper) | _dns, max_size=4),
    ip=st.lists(_ip, max_size=4),
    email=st.lists(_email, max_size=3),
    uri=st.lists(_uri, max_size=3),
)
@example(dns=["Node-1.Example.COM.", "node-1.example.com"], ip=[], email=[], uri=[])
def test_validated_is_parse_in_one_pass(
    dns: list[str], ip: list[str], email: list[str], uri: list[str]
) -> None:
    """What a CSR asks for, unvalidated, comes out of ``validated`` as ``parse`` makes it."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uri]
    names += [x509.RFC822Name(e) for e in email]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip]
    names += [x509.DNSName(d) for d in dns]
    names.append(x509.DirectoryName(common_name_dn("ignored")))
    names.append(x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")))
    assert SubjectAltNames.validated(names) == SubjectAltNames.parse(
        dns=dns, ip=ip, email=email, uri=uri
    )


@pytest.mark.parametrize(
    "name",
    [
        x509.DNSName("under_score.example"),
        x509.DNSName("*.example"),
        x509.DNSName("10.0.0.1"),
        x509.RFC822Name("no-at-sign"),
        x509.UniformResourceIdentifier("no scheme"),
    ],
)
def test_validated_refuses_as_parse_does(name: x509.GeneralName) -> None:
    field = {
        x509.DNSName: "dns",
        x509.RFC822Name: "email",
        x509.UniformResourceIdentifier: "uri",
    }[type(name)]
    with pytest.raises(InvalidRequest) as parsed:
        SubjectAltNames.parse(**{field: [name.value]})
    with pytest.raises(InvalidRequest, match=re.escape(str(parsed.value))):
        SubjectAltNames.validated([x509.DNSName("ok.example"), name])


@pytest.mark.parametrize("name", ["xn--strae-oqa.de", "xn--fuball-cta.de", "XN--BCHER-KVA.example"])
def test_idna_2008_a_labels_are_accepted(name: str) -> None:
    # straße and fußball are A-labels under IDNA 2008 (what registries use) that the
    # standard library's IDNA 2003 codec refuses: the check decodes the Punycode instead.
    assert validate_dns_name(name) == name.lower()


@pytest.mark.parametrize(
    "label",
    [
        "xn--zz",
        "xn--99999999999",
        # Punycode that decodes, but to what no name may hold: accepted before. A control
        # character (U+0080), a right-to-left override before "abc" (shown as "cba"), a
        # zero-width space, a soft hyphen, and full stops that show one label as two.
        "xn--a",
        "xn--abc-4q0a",
        "xn--ab-g1t",
        "xn--ab-6da",
        "xn--ab-yu3n",
        "xn--ab-r13a",
    ],
)
def test_a_labels_that_decode_to_nothing_valid_are_refused(label: str) -> None:
    with pytest.raises(InvalidRequest, match="not a valid IDNA A-label"):
        validate_dns_name(f"{label}.example")


@pytest.mark.parametrize(
    "label",
    [
        "xn--mgbn2ecje63gr19l",  # Persian with a zero-width non-joiner, which IDNA 2008 allows
        "xn--ls8h",  # an emoji (IDNA 2003 only): accepted so far, and still
    ],
)
def test_a_labels_with_joiners_or_symbols_stay_accepted(label: str) -> None:
    assert validate_dns_name(f"{label}.example") == f"{label}.example"


@pytest.mark.parametrize(
    ("pattern", "reversed_"),
    [
        ("O=Example,OU=ops,CN=alice", True),  # as `openssl x509 -subject` prints it
        ("C=DE,CN=*", True),
        ("DC=com,DC=example,CN=*", True),
        ("CN=alice,OU=ops,O=Example", False),  # RFC 4514 order: what certctl compares
        ("CN=*", False),
        ("O=Example", False),
        ("OU=ops,CN=*", False),  # no broad attribute first: nothing to say
    ],
)
def test_a_pattern_written_broadest_first_is_recognised(pattern: str, reversed_: bool) -> None:
    # The server logs a warning for these at start: they would silently match nothing.
    assert DNPattern(pattern).looks_reversed is reversed_


@pytest.mark.parametrize(
    ("text", "forms"),
    [
        ("API2.Example.com", ("api2.example.com",)),
        ("Bücher.example", ("xn--bcher-kva.example",)),
        ("BÜCHER", ("xn--bcher-kva",)),
        ("jane@Bücher.example", ("jane@xn--bcher-kva.example",)),
        ("2001:DB8:0:0::7", ("2001:db8:0:0::7", "2001:db8::7")),
        ("::ffff:10.0.0.5", ("::ffff:10.0.0.5", "10.0.0.5")),
        ("fe80::1%eth0", ("fe80::1%eth0",)),  # a zone is never stored: no address form
        ("ÖBB Gateway", ()),  # no host name: no stored SAN can contain it
        ("jö@example.com", ()),  # a local part is ASCII
    ],
)
def test_san_search_forms_are_spelled_as_sans_are_stored(text: str, forms: tuple[str, ...]) -> None:
    assert san_search_forms(text) == forms


def test_san_parse_keeps_rfc_3986_uris_as_given() -> None:
    uris = [
        "https://x.example/a%20b?q=1&r=[2]#frag",
        "spiffe://example.org/ns/a-b_c.d~e/sa/f",
        "urn:uuid:0b9e8c5e-3b7a-4c1e-9d5e-4b1a2c3d4e5f",
        "ldap://[2001:db8::7]/cn=x,dc=example;x=!$'()*+",
    ]
    assert SubjectAltNames.parse(uri=uris).uri == tuple(uris)


def test_parse_dn_reads_back_what_display_dn_prints() -> None:
    # The CLI prints emailAddress= (display_dn, as OpenSSL does): --subject must take it back,
    # as it takes the dotted OID.
    name = parse_dn("CN=ops,1.2.840.113549.1.9.1=ops@example.com")
    assert display_dn(name) == "CN=ops,emailAddress=ops@example.com"
    assert parse_dn(display_dn(name)) == name


# Attribute types cryptography's rfc4514_string() writes as dotted OIDs and OpenSSL names
# (`openssl x509 -subject -nameopt RFC2253`), one value each.
_OPENSSL_NAMED = (
    (NameOID.EMAIL_ADDRESS, "emailAddress", "ops@example.com"),
    (NameOID.SERIAL_NUMBER, "serialNumber", "12345"),
    (NameOID.SURNAME, "SN", "Surname"),
    (NameOID.GIVEN_NAME, "GN", "Given"),
    (NameOID.TITLE, "title", "Dr"),
    (NameOID.INITIALS, "initials", "GX"),
    (NameOID.PSEUDONYM, "pseudonym", "Psd"),
    (NameOID.GENERATION_QUALIFIER, "generationQualifier", "III"),
    (NameOID.DN_QUALIFIER, "dnQualifier", "dq1"),
    (NameOID.POSTAL_CODE, "postalCode", "10115"),
    (NameOID.STREET_ADDRESS, "street", "Main St 1"),
    (NameOID.BUSINESS_CATEGORY, "businessCategory", "Private Organization"),
    (NameOID.JURISDICTION_COUNTRY_NAME, "jurisdictionC", "DE"),
    (NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME, "jurisdictionST", "Berlin"),
    (NameOID.JURISDICTION_LOCALITY_NAME, "jurisdictionL", "Berlin"),
    (NameOID.ORGANIZATION_IDENTIFIER, "organizationIdentifier", "VATDE-123"),
    (x509.ObjectIdentifier("2.5.4.13"), "description", "desc"),
    (x509.ObjectIdentifier("2.5.4.41"), "name", "Name"),
)


def test_display_dn_names_the_attributes_openssl_names() -> None:
    # inspect --json and the API printed "1.2.840.113549.1.9.1=ops@example.com,2.5.4.5=12345"
    # where openssl prints "emailAddress=ops@example.com,serialNumber=12345".
    name = x509.Name(
        [x509.NameAttribute(oid, value) for oid, _, value in _OPENSSL_NAMED]
        + [x509.NameAttribute(NameOID.COMMON_NAME, "web")]
    )
    expected = ",".join(["CN=web", *(f"{n}={v}" for _, n, v in reversed(_OPENSSL_NAMED))])
    assert display_dn(name) == expected
    # What is printed can be given back (--subject, client-certificate mappings).
    assert parse_dn(display_dn(name)) == name


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from([NameOID.COMMON_NAME, NameOID.EMAIL_ADDRESS, NameOID.SERIAL_NUMBER]),
            st.text(st.sampled_from('a ,+\\=#"<>;1.2.840.113549.1.9.1'), min_size=1, max_size=30),
        ),
        min_size=0,
        max_size=4,
    )
)
@example([(NameOID.COMMON_NAME, "x,1.2.840.113549.1.9.1=y\\"), (NameOID.EMAIL_ADDRESS, "+")])
def test_display_dn_text_renames_stored_subjects_as_display_dn(
    attributes: list[tuple[x509.ObjectIdentifier, str]],
) -> None:
    # Stored subjects are rfc4514_string()'s; the API shows them as display_dn would.
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    assert display_dn_text(format_dn(name)) == display_dn(name)


def test_name_match_key_is_equal_exactly_when_names_match() -> None:
    # A lookup key for many names (client trust warnings fold each name once): it must
    # agree with names_match, string types, case, spacing and RDN order included.
    from cryptography.x509.name import _ASN1Type

    from certctl.pki.names import name_match_key, names_match

    def name(*attrs: tuple[x509.ObjectIdentifier, str, _ASN1Type]) -> x509.Name:
        return x509.Name([x509.NameAttribute(oid, value, kind) for oid, value, kind in attrs])

    cn, o, sn = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.SERIAL_NUMBER
    utf8, printable, numeric = (
        _ASN1Type.UTF8String,
        _ASN1Type.PrintableString,
        _ASN1Type.NumericString,
    )
    names = [
        name((cn, "Clients CA", utf8)),
        name((cn, "Clients CA", printable)),
        name((cn, "  clients   ca ", utf8)),
        name((cn, "Clients CB", utf8)),
        name((o, "Clients CA", utf8)),
        name((cn, "Clients CA", utf8), (o, "Org", utf8)),
        name((o, "Org", utf8), (cn, "Clients CA", utf8)),
        name((sn, "42", printable)),
        name((sn, "42", numeric)),
        x509.Name(
            [
                x509.RelativeDistinguishedName(
                    [x509.NameAttribute(cn, "A"), x509.NameAttribute(o, "B")]
                )
            ]
        ),
        x509.Name(
            [
                x509.RelativeDistinguishedName(
                    [x509.NameAttribute(o, "b"), x509.NameAttribute(cn, "a")]
                )
            ]
        ),
    ]
    pairs = [(a, b) for a in names for b in names]
    assert sum(names_match(a, b) for a, b in pairs) > len(names)  # some fold together
    for a, b in pairs:
        assert (name_match_key(a) == name_match_key(b)) == names_match(a, b), (a, b)
