"""Normalise customer identifiers the way ad platforms match customer lists, then SHA-256 them.

A platform hashes its own users' identifiers after normalising them; an uploaded hash matches
only when the upload was normalised the same way, byte for byte. The rules, per platform:

generic (a CRM, or a platform that documents only the common core)
    e-mail trimmed and lower-cased; phone E.164 (``+`` country code, national number); names,
    city, state, postcode trimmed and lower-cased; country an ISO 3166-1 alpha-2 code, lower-case.
google (Customer Match)
    As generic, and: white space removed anywhere in an e-mail; in ``gmail.com`` and
    ``googlemail.com`` addresses the dots before the ``@`` removed; phone E.164 with its ``+``;
    Country and Zip are sent unhashed ("do not hash country and zip"); no city or state column.
    Sources: https://support.google.com/google-ads/answer/7659867 (headers Email, Phone,
    First Name, Last Name, Country, Zip; "Lowercase all characters and remove all extra spaces",
    "Phone numbers must be formatted as E.164 prior to hashing");
    https://developers.google.com/google-ads/api/docs/conversions/enhance-conversions and
    https://developers.google.cn/doubleclick-advertisers/guides/conversions_ec ("remove all
    periods (.) that precede the domain name in gmail.com and googlemail.com email addresses");
    googleads/google-ads-python examples/remarketing/add_customer_match_user_list.py
    (``"+1 800 5550101"`` -> ``+18005550101``; names stripped and lower-cased).
meta (Custom Audiences customer file)
    e-mail trimmed and lower-cased, and it must match Meta's pattern
    ``^[a-z0-9_.+-]+@[a-z0-9-]+\\.[a-z0-9-.]+$``; phone digits only with the country code, no
    ``+`` and no leading zeros (``+44 844 412 4653`` -> ``448444124653``); fn/ln lower-cased
    without punctuation (letters with accents kept, UTF-8); ct/st lower-cased without digits,
    dots, spaces, hyphens or brackets; zip lower-cased without spaces, only the part before a
    ``-`` (US: the five digits); country two lower-case letters. Headers email, phone, fn, ln,
    ct, st, zip, country. Sources: https://www.facebook.com/business/help/2082575038703844
    (how to format a customer list), https://developers.facebook.com/docs/marketing-api/audiences/guides/custom-audiences
    ("Hashing and Normalizing Data"), facebook/facebook-python-business-sdk
    ``facebook_business/adobjects/serverside/normalize.py`` (the SDK's own rules).

Phones: a number written with ``+`` or ``00`` carries its country calling code; any other number
is national and takes ``default_country_code`` (without one it is unusable). Calling codes are
prefix-free (ITU-T E.164 assignments): 1 and 7 are one digit, the two-digit codes are listed in
:data:`TWO_DIGIT_CODES`, every other code has three. A trunk ``0`` written after the country code
(``+49 0711 ...``, ``+44 (0)20 ...``) is not part of the E.164 number and is dropped, except for
Italy, San Marino and the Vatican, whose numbers keep their leading 0. E.164 numbers have at most
15 digits.

A value that cannot be normalised (no ``@``, letters in a phone, a national number without a
default country code, a country that is not two letters) is unusable: it becomes empty (None),
is counted, and is never hashed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable

PLATFORMS = ("generic", "google", "meta")

#: kinds of personal data a platform takes, and the column header it expects for each
HEADERS: dict[str, dict[str, str]] = {
    "generic": {"email": "email", "phone": "phone", "first_name": "first_name", "last_name": "last_name",
                "city": "city", "state": "state", "postcode": "postcode", "country": "country"},
    "google": {"email": "Email", "phone": "Phone", "first_name": "First Name", "last_name": "Last Name",
               "country": "Country", "postcode": "Zip"},
    "meta": {"email": "email", "phone": "phone", "first_name": "fn", "last_name": "ln", "city": "ct",
             "state": "st", "postcode": "zip", "country": "country"},
}

#: kinds a platform wants unhashed even in a hashed list (Google: "do not hash country and zip")
NEVER_HASHED: dict[str, frozenset[str]] = {"generic": frozenset(), "google": frozenset({"country", "postcode"}),
                                           "meta": frozenset()}

#: the two-digit country calling codes; 1 and 7 have one digit, all others three
TWO_DIGIT_CODES = frozenset({
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48", "49",
    "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81", "82", "84",
    "86", "90", "91", "92", "93", "94", "95", "98",
})

#: countries whose national numbers keep their leading 0 in E.164 (Italy, San Marino, Vatican)
_KEEP_LEADING_ZERO = frozenset({"39", "378", "379"})

_MAX_E164_DIGITS = 15
_MIN_E164_DIGITS = 7
_PHONE_SEPARATORS = re.compile(r"[\s\-().\/]")
_GENERIC_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
_META_EMAIL = re.compile(r"^[a-z0-9_.+-]+@[a-z0-9-]+\.[a-z0-9-.]+$")
_META_LOCATION = re.compile(r"[0-9.\s\-()]")
_GOOGLE_MAIL = ("gmail.com", "googlemail.com")


def sha256_hex(value: str) -> str:
    """Lower-case hex SHA-256 of a normalised value's UTF-8 bytes (what every platform expects)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def calling_code_length(digits: str) -> int:
    """How many leading digits of an international number are its country calling code (1 to 3)."""
    if digits[:1] in ("1", "7"):
        return 1
    return 2 if digits[:2] in TWO_DIGIT_CODES else 3


def is_calling_code(code: str) -> bool:
    """Whether ``code`` (digits) has the length of the calling code it starts, e.g. ``44``, ``1``, ``420``."""
    return code.isdigit() and len(code) == calling_code_length(code)


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def normalise_email(value: str, platform: str = "generic") -> str | None:
    """Trimmed, lower-cased e-mail address (Google: no white space, no dots in a Gmail user name)."""
    email = value.strip().lower()
    if platform == "google":
        email = "".join(email.split())
        user, _, domain = email.rpartition("@")
        if domain in _GOOGLE_MAIL:
            email = f"{user.replace('.', '')}@{domain}"
    pattern = _META_EMAIL if platform == "meta" else _GENERIC_EMAIL
    return email if pattern.match(email) else None


def e164_digits(value: str, default_country_code: str | None = None) -> str | None:
    """The E.164 digits of a phone number (country code + national number, no ``+``), or None.

    Parameters
    ----------
    value : str
        The number as written, e.g. ``+49 0711 2842222``, ``(514) 721-4711``, ``0044 20 7946 0958``.
    default_country_code : str, optional
        Calling code of national numbers (written without ``+`` or ``00``), e.g. ``"1"`` or ``"44"``.
    """
    text = _PHONE_SEPARATORS.sub("", value.strip())
    international = text.startswith("+") or text.startswith("00")
    digits = text[1:] if text.startswith("+") else text[2:] if text.startswith("00") else text
    if not digits.isdigit() or not digits.isascii():
        return None
    if international:
        code_length = calling_code_length(digits)
        code, national = digits[:code_length], digits[code_length:]
    elif default_country_code is None:
        return None
    elif default_country_code == "1" and len(digits) == 11 and digits.startswith("1"):
        code, national = "1", digits[1:]  # North American numbers are often written with their leading 1
    else:
        code, national = default_country_code, digits
    keeps_zero = code in _KEEP_LEADING_ZERO
    if national.startswith("0") and not keeps_zero:
        national = national[1:]  # the trunk prefix is dialled at home, not part of the E.164 number
    number = code + national
    if not _MIN_E164_DIGITS <= len(number) <= _MAX_E164_DIGITS or (national.startswith("0") and not keeps_zero):
        return None
    return number


def normalise_phone(value: str, platform: str = "generic", default_country_code: str | None = None) -> str | None:
    """E.164 with ``+`` (generic, Google) or its digits without ``+`` (Meta)."""
    digits = e164_digits(value, default_country_code)
    if digits is None:
        return None
    return digits if platform == "meta" else f"+{digits}"


def _no_punctuation(text: str) -> str:
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))


def normalise_name(value: str, platform: str = "generic") -> str | None:
    """First or last name: trimmed, lower-cased (Meta: without punctuation too)."""
    name = value.strip().lower()
    if platform == "meta":
        name = " ".join(_no_punctuation(name).split())
    return name or None


def normalise_place(value: str, platform: str = "generic") -> str | None:
    """City or state: trimmed, lower-cased (Meta: without digits, dots, spaces, hyphens, brackets)."""
    place = value.strip().lower()
    if platform == "meta":
        place = _META_LOCATION.sub("", place)
    return place or None


def normalise_postcode(value: str, platform: str = "generic") -> str | None:
    """Postcode: trimmed, lower-cased (Meta: no spaces, only the part before a '-'; Google: as written)."""
    code = value.strip()
    if platform == "google":
        return " ".join(code.split()) or None
    code = code.lower()
    if platform == "meta":
        code = re.sub(r"\s", "", code).split("-")[0]
    return code or None


def normalise_country(value: str, platform: str = "generic") -> str | None:
    """ISO 3166-1 alpha-2 country code, lower-case; anything else (a country's name) is unusable."""
    code = re.sub(r"[^a-z]", "", value.strip().lower())
    return code if len(code) == 2 else None


def normaliser(kind: str, platform: str, default_country_code: str | None = None) -> Callable[[str], str | None]:
    """The function that normalises one value of ``kind`` for ``platform``."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
    rules: dict[str, Callable[[str], str | None]] = {
        "email": lambda v: normalise_email(v, platform),
        "phone": lambda v: normalise_phone(v, platform, default_country_code),
        "first_name": lambda v: normalise_name(v, platform),
        "last_name": lambda v: normalise_name(v, platform),
        "city": lambda v: normalise_place(v, platform),
        "state": lambda v: normalise_place(v, platform),
        "postcode": lambda v: normalise_postcode(v, platform),
        "country": lambda v: normalise_country(v, platform),
    }
    if kind not in rules:
        raise ValueError(f"no normalisation for personal data of kind {kind!r}; kinds: {sorted(rules)}")
    return rules[kind]


def normalise_values(values: Iterable[str | None], kind: str, platform: str, *, hash_values: bool,
                     default_country_code: str | None = None) -> tuple[list[str | None], dict[str, int]]:
    """Normalise (and hash) one column of identifiers.

    Parameters
    ----------
    values : iterable of str or None
        The raw values; None or blank is missing.
    kind : str
        Personal data kind (``email``, ``phone``, ``first_name``, ...).
    platform : {'generic', 'google', 'meta'}
        Whose rules to follow.
    hash_values : bool
        SHA-256 the normalised values (kinds the platform wants unhashed are never hashed).
    default_country_code : str, optional
        Calling code of national phone numbers.

    Returns
    -------
    (list, dict)
        One value per input (None where missing or unusable, never a hash of an unusable value)
        and the counts ``{"missing": n, "unusable": n}``.
    """
    rule = normaliser(kind, platform, default_country_code)
    hashed = hash_values and kind not in NEVER_HASHED[platform]
    out: list[str | None] = []
    counts = {"missing": 0, "unusable": 0}
    for value in values:
        if _blank(value):
            counts["missing"] += 1
            out.append(None)
            continue
        normal = rule(value)
        if normal is None:
            counts["unusable"] += 1
            out.append(None)
            continue
        out.append(sha256_hex(normal) if hashed else normal)
    return out, counts


def header(kind: str, platform: str, *, hashed: bool) -> str:
    """The column name a platform expects for ``kind`` (generic hashed columns end in ``_sha256``)."""
    name = HEADERS[platform][kind]
    if platform == "generic" and hashed:
        return f"{name}_sha256"
    return name
