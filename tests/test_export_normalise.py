"""Identifier normalisation against the platforms' published examples (sources in gpuseg/export/normalise.py)."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from gpuseg.export.normalise import (
    calling_code_length,
    e164_digits,
    is_calling_code,
    normalise_country,
    normalise_email,
    normalise_name,
    normalise_phone,
    normalise_place,
    normalise_postcode,
    normalise_values,
    sha256_hex,
)
from gpuseg.export.writer import identifier_columns


def test_sha256_matches_a_published_hash():
    # TikTok's customer-file help publishes this digest of the normalised janedoe@gmail.com
    assert sha256_hex("janedoe@gmail.com") == "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"
    assert sha256_hex("zoë") == hashlib.sha256("zoë".encode()).hexdigest()


@pytest.mark.parametrize("platform", ["generic", "google", "meta"])
def test_email_trimmed_and_lower_cased_everywhere(platform):
    assert normalise_email("  Dana@Example.COM ", platform) == "dana@example.com"
    assert normalise_email("not an e-mail", platform) is None
    assert normalise_email("a@b@c.com", platform) is None
    assert normalise_email("user@localhost", platform) is None


def test_google_removes_gmail_dots_only_for_gmail_domains():
    # Google's enhanced conversions / CM360 rule and its client-library samples
    assert normalise_email("Jane.Doe@Gmail.com", "google") == "janedoe@gmail.com"
    assert normalise_email("jane.doe@googlemail.com", "google") == "janedoe@googlemail.com"
    assert normalise_email("alex.2@example.com", "google") == "alex.2@example.com"  # google-ads-python sample
    assert sha256_hex(normalise_email(" Jane.Doe@GMAIL.com", "google")) == (
        "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69")
    # Meta and the generic rule keep the dots: Meta's own example address is your.name@gmail.com
    assert normalise_email("your.name@gmail.com", "meta") == "your.name@gmail.com"
    assert normalise_email("your.name@gmail.com", "generic") == "your.name@gmail.com"


def test_meta_email_pattern_refuses_non_ascii_addresses():
    # Meta's SDK pattern ^[a-z0-9_.+-]+@[a-z0-9-]+\.[a-z0-9-.]+$
    assert normalise_email("stanisław.wójcik@wp.pl", "meta") is None
    assert normalise_email("stanisław.wójcik@wp.pl", "generic") == "stanisław.wójcik@wp.pl"


def test_phone_examples_of_google_and_meta():
    # google-ads-python add_customer_match_user_list.py: "+1 800 5550101" -> +18005550101
    assert normalise_phone("+1 800 5550101", "google") == "+18005550101"
    # Meta's customer-list help: +44 844 412 4653 and 1-234-567-8910 carry their country codes
    assert normalise_phone("+44 844 412 4653", "meta") == "448444124653"
    assert normalise_phone("1-234-567-8910", "meta", default_country_code="1") == "12345678910"
    assert normalise_phone("12345678910", "meta", default_country_code="1") == "12345678910"
    # Google's Customer Match template lists 1-800-888-8888 and 1(800)888-8888
    assert normalise_phone("1(800)888-8888", "google", default_country_code="1") == "+18008888888"
    assert normalise_phone("+1 800 5550101", "generic") == "+18005550101"


def test_trunk_zero_after_the_country_code_is_dropped_but_italy_keeps_it():
    assert e164_digits("+49 0711 2842222") == "497112842222"
    assert e164_digits("+44 (0)20 7946 0958") == "442079460958"
    assert e164_digits("+54 (0)11 4311 4333") == "541143114333"
    assert e164_digits("0044 20 7946 0958") == "442079460958"
    assert e164_digits("+39 06 39733434") == "390639733434"
    assert e164_digits("+420 2 4172 5555") == "420241725555"


def test_national_numbers_need_the_default_country_code():
    assert e164_digits("(514) 721-4711") is None
    assert e164_digits("(514) 721-4711", "1") == "15147214711"
    assert e164_digits("020 7946 0958", "44") == "442079460958"
    assert normalise_phone("06 39733434", "google", default_country_code="39") == "+390639733434"


@pytest.mark.parametrize("bad", ["n/a", "555-CALL-NOW", "+1 555", "+123456789012345678", "ext. 12"])
def test_unusable_phones_are_none(bad):
    assert normalise_phone(bad, "generic", default_country_code="1") is None


def test_calling_codes_are_prefix_free():
    assert [calling_code_length(d) for d in ("15551234", "74951234", "4420", "4202", "35312", "2712")] == [
        1, 1, 2, 3, 3, 2]
    assert is_calling_code("44") and is_calling_code("1") and is_calling_code("420")
    assert not is_calling_code("4") and not is_calling_code("4420") and not is_calling_code("x1")


def test_names_places_postcodes_countries():
    assert normalise_name("  Zoë ", "google") == "zoë"  # Google's template keeps accents
    assert normalise_name(" O'Brien-Smith ", "meta") == "obriensmith"  # Meta: no punctuation
    assert normalise_name(" O'Brien ", "generic") == "o'brien"
    assert normalise_place(" New York ", "generic") == "new york"
    assert normalise_place(" New York ", "meta") == "newyork"  # Meta SDK: no spaces, dots, digits
    assert normalise_place("St. Louis", "meta") == "stlouis"
    assert normalise_postcode(" 94025-1234 ", "meta") == "94025"  # Meta: US zip, five digits
    assert normalise_postcode(" WC2H 8LG ", "google") == "WC2H 8LG"  # Google's template example
    assert normalise_postcode(" WC2H 8LG ", "meta") == "wc2h8lg"
    assert normalise_postcode(" H2G 1A7 ", "generic") == "h2g 1a7"
    assert normalise_country(" US ", "meta") == "us"
    assert normalise_country("Brazil", "generic") is None


def test_unusable_values_are_counted_and_never_hashed():
    values = ["a@b.com", None, "  ", "broken", "B@C.org"]
    out, counts = normalise_values(values, "email", "generic", hash_values=True)
    assert counts == {"missing": 2, "unusable": 1}
    assert out == [sha256_hex("a@b.com"), None, None, None, sha256_hex("b@c.org")]
    plain, _ = normalise_values(values, "email", "generic", hash_values=False)
    assert plain == ["a@b.com", None, None, None, "b@c.org"]


def test_identifier_columns_follow_each_platform():
    pii = pa.table({"Mail": ["Jane.Doe@Gmail.com"], "Tel": ["+1 (514) 721-4711"], "fname": ["Zoë"],
                    "zip": ["H2G 1A7"], "town": ["Montréal"], "street": ["1 Main St"]})
    kinds = {"Mail": "email", "Tel": "phone", "fname": "first_name", "zip": "postcode", "town": "city",
             "street": "other"}
    google, report = identifier_columns(pii, kinds, "google", hash_values=True)
    assert google.column_names == ["Email", "Phone", "First Name", "Zip"]
    assert google["Email"][0].as_py() == sha256_hex("janedoe@gmail.com")
    assert google["Phone"][0].as_py() == sha256_hex("+15147214711")
    assert google["Zip"][0].as_py() == "H2G 1A7"  # Google: zip and country unhashed
    assert report["columns"]["Zip"]["hashed"] is False
    assert set(report["not_exported"]) == {"town", "street"}
    meta, _ = identifier_columns(pii, kinds, "meta", hash_values=True)
    assert meta.column_names == ["email", "phone", "fn", "ct", "zip"]
    assert meta["phone"][0].as_py() == sha256_hex("15147214711")
    assert meta["ct"][0].as_py() == sha256_hex("montréal")
    generic, _ = identifier_columns(pii, kinds, "generic", hash_values=True)
    assert generic.column_names == ["email_sha256", "phone_sha256", "first_name_sha256", "city_sha256",
                                    "postcode_sha256"]
    clear, _ = identifier_columns(pii, kinds, "generic", hash_values=False)
    assert clear["email"][0].as_py() == "jane.doe@gmail.com"
