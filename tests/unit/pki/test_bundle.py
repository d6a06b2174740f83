"""certctl.pki.bundle: the certutil-style HTTP zip, opened and checked file by file."""

from __future__ import annotations

import io
import ipaddress
import zipfile
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from certctl.errors import InvalidRequest
from certctl.pki import (
    CertificateAuthority,
    KeyType,
    SubjectAltNames,
    common_name_dn,
    keys_match,
    load_csr,
    load_material,
    verify_certificate,
)
from certctl.pki.bundle import build_http_bundle
from certctl.pki.bundle_plan import (
    HttpBundlePlan,
    NodeSpec,
    plan_certificates,
    validate_node_name,
)

PASSWORD = b"correct horse"


def _zip(data: bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(data))


def _mode(archive: zipfile.ZipFile, name: str) -> int:
    return archive.getinfo(name).external_attr >> 16


def _sans(cert: x509.Certificate) -> SubjectAltNames:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return SubjectAltNames.from_extension(ext.value)


def _plan(**kwargs: object) -> HttpBundlePlan:
    defaults: dict[str, object] = {
        "mode": "new-ca",
        "nodes": (
            NodeSpec("es1", dns=("es1.example.com",), ip=("10.0.0.1",)),
            NodeSpec("es2", ip=("10.0.0.2",)),
        ),
        "password": PASSWORD,
    }
    defaults.update(kwargs)
    return HttpBundlePlan(**defaults)  # type: ignore[arg-type]


def test_new_ca_p12_bundle(now: datetime) -> None:
    result = build_http_bundle(_plan(), now=now)
    archive = _zip(result.data)
    names = set(archive.namelist())
    assert {
        "ca/README.txt",
        "ca/ca.crt",
        "ca/ca.key",
        "elasticsearch/es1/http.p12",
        "elasticsearch/es1/README.txt",
        "elasticsearch/es1/sample-elasticsearch.yml",
        "elasticsearch/es2/http.p12",
        "kibana/elasticsearch-ca.pem",
        "kibana/README.txt",
        "kibana/sample-kibana.yml",
    } <= names
    assert not any(n.endswith((".crt", ".key")) for n in names if n.startswith("elasticsearch/"))
    assert result.warnings == ()
    assert result.ca_folder == "ca/"
    assert [n.folder for n in result.nodes] == ["elasticsearch/es1/", "elasticsearch/es2/"]
    # Secrets are 0600 inside the zip; the rest 0644.
    assert _mode(archive, "elasticsearch/es1/http.p12") == 0o100600
    assert _mode(archive, "ca/ca.key") == 0o100600
    assert _mode(archive, "kibana/elasticsearch-ca.pem") == 0o100644

    ca_cert = x509.load_pem_x509_certificate(archive.read("ca/ca.crt"))
    assert archive.read("kibana/elasticsearch-ca.pem") == archive.read("ca/ca.crt")
    assert ca_cert.subject == common_name_dn("Elasticsearch HTTP CA")
    ca_key = load_material(archive.read("ca/ca.key")).private_key
    assert ca_key is not None
    assert keys_match(ca_key, ca_cert)

    expected = {
        "es1": (["es1.example.com"], ["10.0.0.1"]),
        # No DNS name given: only the IP, no name taken from the node.
        "es2": ([], ["10.0.0.2"]),
    }
    for node, (dns, ips) in expected.items():
        key, cert, extra = pkcs12.load_key_and_certificates(
            archive.read(f"elasticsearch/{node}/http.p12"), PASSWORD
        )
        assert key is not None
        assert cert is not None
        assert keys_match(key, cert)  # type: ignore[arg-type]
        assert [c.subject for c in extra] == [ca_cert.subject]
        sans = _sans(cert)
        assert list(sans.dns) == dns
        assert sans.ip == tuple(ipaddress.ip_address(a) for a in ips)
        assert cert.not_valid_after_utc == now + timedelta(days=90)
        for host in [*dns, *ips]:
            verify_certificate(cert, trust=[ca_cert], hostname=host, now=now)
        readme = " ".join(archive.read(f"elasticsearch/{node}/README.txt").decode().split())
        assert PASSWORD.decode() not in readme
        assert "the password chosen when the bundle was created" in readme
        assert f"{cert.not_valid_after_utc:%Y-%m-%d}" in readme
        assert "elasticsearch-keystore add xpack.security.http.ssl.keystore.secure_password" in (
            readme
        )
        # Elasticsearch 8's auto-configuration block holds the same settings: adding ours
        # beside it repeats keys, and the node refuses to start.
        assert "replacing any xpack.security.http.ssl settings already there" in readme
        assert "overwrite the auto-configured one if asked" in readme
    sample = archive.read("elasticsearch/es1/sample-elasticsearch.yml").decode()
    assert "xpack.security.http.ssl.enabled: true" in sample
    assert "xpack.security.http.ssl.keystore.path: http.p12" in sample
    assert "replace that block with these lines;" in sample
    kibana = archive.read("kibana/sample-kibana.yml").decode()
    assert '"https://es1.example.com:9200", "https://10.0.0.2:9200"' in kibana
    assert "elasticsearch.ssl.certificateAuthorities" in kibana


def test_wrong_ca_does_not_verify(now: datetime, root_ca: CertificateAuthority) -> None:
    archive = _zip(build_http_bundle(_plan(output_format="pem", password=None), now=now).data)
    leaf = x509.load_pem_x509_certificate(archive.read("elasticsearch/es1/http.crt"))
    with pytest.raises(InvalidRequest, match="verification failed"):
        verify_certificate(leaf, trust=[root_ca.certificate], now=now)


def test_pem_generic_profile(now: datetime) -> None:
    plan = _plan(
        output_format="pem",
        password=None,
        profile="generic",
        nodes=(NodeSpec("web1", dns=("web1.example.com",)),),
    )
    result = build_http_bundle(plan, now=now)
    archive = _zip(result.data)
    names = set(archive.namelist())
    assert {
        "web1/http.crt",
        "web1/http.key",
        "web1/README.txt",
        "web1/sample-nginx.conf",
        "client/ca.crt",
        "client/README.txt",
        "client/sample-curl.sh",
        "ca/ca.crt",
    } <= names
    assert not any(n.startswith(("elasticsearch/", "kibana/")) for n in names)
    assert _mode(archive, "web1/http.key") == 0o100600
    assert _mode(archive, "web1/http.crt") == 0o100644
    assert _mode(archive, "client/sample-curl.sh") == 0o100755
    nginx = archive.read("web1/sample-nginx.conf").decode()
    assert "ssl_certificate     /etc/nginx/tls/http.crt;" in nginx
    assert "ssl_certificate_key /etc/nginx/tls/http.key;" in nginx
    assert "# ssl_client_certificate /etc/nginx/tls/client-ca.crt;" in nginx
    assert "# ssl_verify_client on;" in nginx
    assert "server_name web1.example.com;" in nginx
    curl = archive.read("client/sample-curl.sh").decode()
    assert "curl --cacert ca.crt https://web1.example.com:443/" in curl
    material = load_material(archive.read("web1/http.crt") + archive.read("web1/http.key"))
    assert material.private_key is not None
    assert len(material.certificates) == 1  # a root CA: no intermediates to send
    assert keys_match(material.private_key, material.certificates[0])
    ca_cert = x509.load_pem_x509_certificate(archive.read("client/ca.crt"))
    assert ca_cert.subject == common_name_dn("certctl HTTP CA")
    verify_certificate(
        material.certificates[0], trust=[ca_cert], hostname="web1.example.com", now=now
    )


def test_generic_p12_sample_explains_extraction(now: datetime) -> None:
    plan = _plan(profile="generic", p12_legacy=True, nodes=(NodeSpec("web1"),))
    archive = _zip(build_http_bundle(plan, now=now).data)
    nginx = archive.read("web1/sample-nginx.conf").decode()
    assert "openssl pkcs12 -in http.p12 -nokeys -out http.crt" in nginx
    _, cert, _ = pkcs12.load_key_and_certificates(archive.read("web1/http.p12"), PASSWORD)
    assert cert is not None
    assert list(_sans(cert).dns) == ["web1"]  # the node name, as no name was given


def test_existing_intermediate_ca(now: datetime, intermediate_ca: CertificateAuthority) -> None:
    plan = _plan(
        mode="existing-ca",
        ca=intermediate_ca,
        output_format="pem",
        password=None,
        nodes=(NodeSpec("es1", dns=("es1.example.com",)),),
    )
    result = build_http_bundle(plan, now=now)
    archive = _zip(result.data)
    assert not any(n.startswith("ca/") for n in archive.namelist())
    assert result.ca_folder is None
    chain = load_material(archive.read("elasticsearch/es1/http.crt")).certificates
    assert [c.subject for c in chain[1:]] == [intermediate_ca.certificate.subject]
    assert chain[0].issuer == intermediate_ca.certificate.subject
    root = x509.load_pem_x509_certificate(archive.read("kibana/elasticsearch-ca.pem"))
    assert root == intermediate_ca.root
    # The README says which CA that file is: the root, not the intermediate that signed.
    readme = " ".join(archive.read("kibana/README.txt").decode().split())
    assert "elasticsearch-ca.pem is the root CA certificate above the intermediate CA" in readme
    verified = verify_certificate(
        chain[0], trust=[root], untrusted=chain[1:], hostname="es1.example.com", now=now
    )
    assert len(verified.chain) == 3


def test_existing_ca_p12_holds_the_chain(
    now: datetime, intermediate_ca: CertificateAuthority
) -> None:
    plan = _plan(mode="existing-ca", ca=intermediate_ca, nodes=(NodeSpec("es1"),))
    archive = _zip(build_http_bundle(plan, now=now).data)
    _, cert, extra = pkcs12.load_key_and_certificates(
        archive.read("elasticsearch/es1/http.p12"), PASSWORD
    )
    assert cert is not None
    assert extra == [intermediate_ca.certificate, intermediate_ca.root]


def test_csr_mode(now: datetime) -> None:
    plan = _plan(mode="csr", password=None)
    result = build_http_bundle(plan, now=now)
    archive = _zip(result.data)
    names = set(archive.namelist())
    assert not any(n.startswith("ca/") for n in names)
    assert "kibana/elasticsearch-ca.pem" not in names
    assert {"kibana/README.txt", "kibana/sample-kibana.yml"} <= names
    assert result.ca_certificate is None
    for node in ("es1", "es2"):
        csr = load_csr(archive.read(f"elasticsearch/{node}/http.csr"))  # verifies the signature
        assert csr.is_signature_valid
        assert csr.subject == common_name_dn(node)
        key = load_material(archive.read(f"elasticsearch/{node}/http.key")).private_key
        assert key is not None
        assert key.public_key() == csr.public_key()
        assert _mode(archive, f"elasticsearch/{node}/http.key") == 0o100600
        readme = archive.read(f"elasticsearch/{node}/README.txt").decode()
        assert "certctl csr sign" in readme
        assert "replacing any xpack.security.http.ssl settings already there" in " ".join(
            readme.split()
        )
        sample = archive.read(f"elasticsearch/{node}/sample-elasticsearch.yml").decode()
        assert "xpack.security.http.ssl.certificate: http.crt" in sample
    ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert SubjectAltNames.from_extension(ext.value).ip == (ipaddress.ip_address("10.0.0.2"),)
    assert "save its certificate" in archive.read("kibana/README.txt").decode()


def test_shared_certificate(now: datetime) -> None:
    plan = _plan(
        shared=True,
        nodes=(NodeSpec("es1"), NodeSpec("es2", ip=("10.0.0.2",))),
        common_dns=("es.example.com",),
    )
    result = build_http_bundle(plan, now=now)
    archive = _zip(result.data)
    assert [n.folder for n in result.nodes] == ["elasticsearch/http/"]
    assert not any("/es1/" in n or "/es2/" in n for n in archive.namelist())
    _, cert, _ = pkcs12.load_key_and_certificates(
        archive.read("elasticsearch/http/http.p12"), PASSWORD
    )
    assert cert is not None
    assert cert.subject == common_name_dn("http")
    sans = _sans(cert)
    assert list(sans.dns) == ["es1", "es.example.com"]
    assert sans.ip == (ipaddress.ip_address("10.0.0.2"),)
    kibana = archive.read("kibana/sample-kibana.yml").decode()
    assert '"https://es1:9200", "https://10.0.0.2:9200"' in kibana


def test_shared_name_and_common_names_only(now: datetime) -> None:
    plan = _plan(
        shared=True,
        shared_name="front",
        nodes=(),
        profile="generic",
        output_format="pem",
        password=None,
        common_dns=("www.example.com",),
        common_ip=("2001:db8::1",),
    )
    archive = _zip(build_http_bundle(plan, now=now).data)
    cert = x509.load_pem_x509_certificate(archive.read("front/http.crt"))
    assert list(_sans(cert).dns) == ["www.example.com"]
    curl = archive.read("client/sample-curl.sh").decode()
    assert "https://www.example.com:443/" in curl


def test_common_names_go_to_every_node(now: datetime) -> None:
    plan = _plan(
        nodes=(NodeSpec("es1"), NodeSpec("es2", dns=("two.example.com",))),
        common_dns=("lb.example.com",),
    )
    targets = plan_certificates(plan)
    assert [list(t.sans.dns) for t in targets] == [
        ["es1", "lb.example.com"],
        ["two.example.com", "lb.example.com"],
    ]
    assert [t.hosts for t in targets] == [("es1",), ("two.example.com",)]


def test_short_validity_warnings(now: datetime) -> None:
    plan = _plan(validity=timedelta(days=30), ca_validity=timedelta(days=60))
    result = build_http_bundle(plan, now=now)
    assert "CA lifetime 60D is under 90 days; plan its renewal" in result.warnings
    assert "certificate lifetime 30D is under 60 days; plan its renewal" in result.warnings
    # One warning per condition, not one per node.
    assert len(result.warnings) == len(set(result.warnings)) == 2


def test_ed25519_warning(now: datetime) -> None:
    plan = _plan(key_type=KeyType.ED25519, output_format="pem", password=None)
    result = build_http_bundle(plan, now=now)
    assert any("ed25519" in w for w in result.warnings)


def test_a_password_java_cannot_read_draws_one_warning(now: datetime) -> None:
    # Java's PBE keys take printable ASCII only: Elasticsearch could not open http.p12.
    plan = _plan(password="pässwörd".encode())
    warnings = build_http_bundle(plan, now=now).warnings
    assert [w for w in warnings if "outside printable ASCII" in w] == [
        "the PKCS#12 password has characters outside printable ASCII: OpenSSL opens the "
        "file, but Java (keytool, Elasticsearch, Tomcat …) cannot"
    ]
    assert not build_http_bundle(_plan(), now=now).warnings


def test_ca_password_encrypts_ca_key_and_adds_ca_p12(now: datetime) -> None:
    plan = _plan(output_format="pem", password=None, ca_password=b"ca pw", ca_password_hint="X")
    result = build_http_bundle(plan, now=now)
    assert result.warnings == ()
    archive = _zip(result.data)
    ca_cert = x509.load_pem_x509_certificate(archive.read("ca/ca.crt"))
    key_pem = archive.read("ca/ca.key")
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    ca_key = load_material(key_pem, b"ca pw").private_key
    assert ca_key is not None
    assert keys_match(ca_key, ca_cert)
    assert _mode(archive, "ca/ca.p12") == 0o100600
    store = pkcs12.load_pkcs12(archive.read("ca/ca.p12"), b"ca pw")
    assert store.cert is not None
    assert store.cert.friendly_name == b"ca"  # certutil's alias
    assert store.cert.certificate == ca_cert
    assert store.key is not None
    assert keys_match(store.key, ca_cert)
    assert store.additional_certs == []
    assert "The password is X;" in " ".join(archive.read("ca/README.txt").decode().split())
    # Without a CA password: as before, an unencrypted ca.key and no ca.p12.
    archive = _zip(build_http_bundle(_plan(output_format="pem", password=None), now=now).data)
    assert "ca/ca.p12" not in archive.namelist()
    assert archive.read("ca/ca.key").startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_ca_password_java_cannot_read_draws_a_warning(now: datetime) -> None:
    plan = _plan(ca_password="cä".encode())
    assert [w for w in build_http_bundle(plan, now=now).warnings] == [
        "the CA password has characters outside printable ASCII: ca/ca.key opens with it, "
        "but Java (keytool, elasticsearch-certutil …) cannot open ca/ca.p12"
    ]


def test_sample_urls_never_hold_a_wildcard(now: datetime) -> None:
    # "https://*.example.com" is no URL: samples name a host the certificate covers.
    nodes = (
        NodeSpec("es1", dns=("*.es.example.com",)),
        NodeSpec("es2", dns=("*.es.example.com", "es2.example.com")),
        NodeSpec("es3", dns=("*.es.example.com",), ip=("::1",)),
    )
    archive = _zip(build_http_bundle(_plan(nodes=nodes), now=now).data)
    kibana = archive.read("kibana/sample-kibana.yml").decode()
    assert (
        'elasticsearch.hosts: [ "https://es1.es.example.com:9200", '
        '"https://es2.example.com:9200", "https://[::1]:9200" ]'
    ) in kibana
    generic = _plan(
        profile="generic", output_format="pem", password=None, nodes=(), shared=True,
        shared_name="web_1", common_dns=("*.example.com",),
    )  # fmt: skip
    script = _zip(build_http_bundle(generic, now=now).data).read("client/sample-curl.sh")
    assert b"curl --cacert ca.crt https://node-1.example.com:443/" in script
    assert b"*" not in script


def test_entry_timestamps_and_readme_lifetime(now: datetime) -> None:
    archive = _zip(build_http_bundle(_plan(), now=now).data)
    info = archive.getinfo("ca/ca.crt")
    assert info.date_time == now.timetuple()[:6]
    assert "(90D)" in archive.read("elasticsearch/es1/README.txt").decode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"password": None}, "PKCS#12 output needs a non-empty password"),
        ({"password": b""}, "PKCS#12 output needs a non-empty password"),
        ({"mode": "existing-ca"}, "existing-ca mode needs a CA"),
        ({"mode": "sideways"}, "sideways: unknown bundle mode"),
        ({"profile": "apache"}, "apache: unknown bundle profile"),
        ({"output_format": "jks"}, "jks: unknown output format"),
        ({"nodes": ()}, "no nodes"),
        ({"nodes": (NodeSpec("a/b"),)}, "'a/b': invalid node name"),
        ({"nodes": (NodeSpec(".."),)}, "'..': invalid node name"),
        ({"nodes": (NodeSpec("es1"), NodeSpec("ES1"))}, "ES1: node given twice"),
        ({"nodes": (NodeSpec("es1", ip=("10.0.0.300",)),)}, "node es1: 10.0.0.300: not a valid"),
        ({"nodes": (NodeSpec("es1", dns=("bad_name",)),)}, "node es1: bad_name: invalid DNS"),
        ({"nodes": (NodeSpec("node_1"),)}, "node_1: node name is not a DNS name"),
        ({"common_ip": ("nope",)}, "nope: not a valid IPv4 or IPv6 address"),
        ({"validity": timedelta(0)}, "validity must be positive"),
        (
            {"validity": timedelta(days=400), "ca_validity": timedelta(days=365)},
            "CA validity 365D is shorter than the certificate validity 400D",
        ),
        ({"shared": True, "nodes": ()}, "shared certificate needs at least one DNS name"),
        ({"shared": True, "shared_name": "a b"}, "'a b': invalid node name"),
        ({"mode": "csr", "ca_password": b"pw"}, "csr mode creates no CA key to encrypt"),
    ],
)
def test_refused_plans(now: datetime, changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
        build_http_bundle(_plan(**changes), now=now)


def test_reserved_names_for_generic_profile(now: datetime) -> None:
    plan = _plan(profile="generic", nodes=(NodeSpec("client", dns=("c.example.com",)),))
    with pytest.raises(InvalidRequest, match="client: node name is reserved"):
        build_http_bundle(plan, now=now)
    # Under elasticsearch/ the same name is fine.
    build_http_bundle(_plan(nodes=(NodeSpec("client", dns=("c.example.com",)),)), now=now)


def test_new_ca_mode_refuses_a_given_ca(now: datetime, root_ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidRequest, match="new-ca mode takes no existing CA"):
        build_http_bundle(_plan(ca=root_ca), now=now)


def test_expired_existing_ca_is_refused(now: datetime, root_ca: CertificateAuthority) -> None:
    later = root_ca.certificate.not_valid_after_utc + timedelta(days=1)
    with pytest.raises(InvalidRequest, match="issuing CA expired"):
        build_http_bundle(_plan(mode="existing-ca", ca=root_ca), now=later)


@pytest.mark.parametrize("name", ["es1", "node-1", "a.b_c", "X" * 63])
def test_valid_node_names(name: str) -> None:
    assert validate_node_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".hidden", "a/b", "a\\b", "X" * 64, "ä"])
def test_invalid_node_names(name: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid node name"):
        validate_node_name(name)
