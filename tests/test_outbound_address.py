"""The outbound address policy: which addresses the platform may dial for a tenant, and the form of
the URLs it accepts."""

import re

import pytest

from sansio.outbound_address import AddressRefused, check_addresses, literal_address, parse_url, refusal


@pytest.mark.parametrize("address, why", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fd12::1", "private"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("169.254.10.10", "link-local"),
    ("fe80::1", "link-local"), ("100.64.0.1", "CGNAT"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"), ("::ffff:169.254.169.254", "metadata"), ("240.0.0.1", "reserved"),
    ("192.0.2.1", "private"),
])
def test_an_address_outside_the_public_internet_is_refused_with_its_kind(address, why):
    assert why in refusal(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_a_public_address_is_allowed(address):
    assert refusal(address) is None


def test_a_name_is_refused_when_any_of_its_addresses_is_refused():
    with pytest.raises(AddressRefused, match=re.escape("hooks.example resolves to 10.0.0.7 is a private address")):
        check_addresses("hooks.example", ["93.184.216.34", "10.0.0.7"], allow_private=False)


def test_the_operator_may_allow_private_addresses():
    assert check_addresses("db", ["127.0.0.1"], allow_private=True) == ["127.0.0.1"]


def test_a_name_that_resolved_to_nothing_is_refused():
    with pytest.raises(AddressRefused, match="did not resolve"):
        check_addresses("nothing.example", [], allow_private=True)


def test_an_https_url_becomes_the_target_the_platform_dials():
    target = parse_url("https://Hooks.Example.com:8443/in?x=1", allow_http=False)
    assert target == ("https", "hooks.example.com", 8443, "/in?x=1", "hooks.example.com:8443")


def test_an_ipv6_literal_keeps_its_brackets_in_the_host_header_only():
    target = parse_url("https://[2606:4700::1]/", allow_http=False)
    assert target.host == "2606:4700::1" and target.host_header == "[2606:4700::1]"
    assert literal_address(target.host) == "2606:4700::1"


@pytest.mark.parametrize("url, message", [
    ("http://hooks.example/", "must be an https:// URL (plain http is off"),
    ("ftp://hooks.example/", "must be an https:// URL"),
    ("https://user:pw@hooks.example/", "must not carry credentials"),
    ("https://hooks.example/#x", "must not have a #fragment"),
    ("https:///path", "must name a host"),
    ("https://hooks.example:99999/", "is not a valid URL"),
    ("https://hooks.example/a b", "must not contain spaces"),
    ("", "must be a URL"),
    ("https://h.example/" + "a" * 2000, "at most 2000 characters"),
])
def test_a_malformed_or_plain_http_url_is_refused_saying_why(url, message):
    with pytest.raises(AddressRefused, match=re.escape(message)):
        parse_url(url, allow_http=False)


def test_plain_http_is_accepted_when_the_operator_allows_it():
    assert parse_url("http://127.0.0.1:9000/hook", allow_http=True).port == 9000
