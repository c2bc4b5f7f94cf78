"""Default usernames: stable, per issuer, case-preserving, safe in URLs."""

from __future__ import annotations

import pytest

from jupyterhub_smart.hub.username import (
    colliding_issuers,
    decode_part,
    default_username,
    encode_part,
    issuer_slug,
)


@pytest.mark.parametrize(
    ("issuer", "fhir_user", "sub", "expected"),
    [
        (
            "https://ehr.example.org/fhir",
            "Practitioner/123",
            None,
            "practitioner-123@ehr.example.org-fhir",
        ),
        (
            "https://ehr.example.org:8443/r4",
            "Patient/abc",
            None,
            "patient-abc@ehr.example.org-8443-r4",
        ),
        ("https://ehr.example.org/fhir", None, "user 1", None),
    ],
)
def test_usernames(
    issuer: str, fhir_user: str | None, sub: str | None, expected: str | None
) -> None:
    name = default_username(issuer, fhir_user, sub)
    if expected:
        assert name == expected
    assert "/" not in name and " " not in name and name == name.lower()
    assert name == default_username(issuer, fhir_user, sub)  # stable


def test_usernames_keep_case_sensitive_ids_apart() -> None:
    a = default_username("https://e.example/fhir", "Practitioner/Abc", None)
    b = default_username("https://e.example/fhir", "Practitioner/abc", None)
    assert a != b and a == a.lower()


def test_usernames_differ_per_issuer() -> None:
    assert default_username("https://a.example/fhir", "Practitioner/1", None) != default_username(
        "https://b.example/fhir", "Practitioner/1", None
    )
    assert issuer_slug("https://a.example/fhir") == "a.example-fhir"


def test_username_needs_an_identity() -> None:
    with pytest.raises(ValueError):
        default_username("https://a.example/fhir", None, None)


@pytest.mark.parametrize(
    ("fhir_user", "sub", "other_fhir_user", "other_sub"),
    [
        (None, "Alice", None, "alice-{hash}"),
        ("Patient/Abc", None, "Patient/abc-{hash}", None),
    ],
)
def test_an_id_spelled_like_anothers_hashed_form_gets_its_own_name(
    fhir_user: str | None, sub: str | None, other_fhir_user: str | None, other_sub: str | None
) -> None:
    iss = "https://ehr.example.org/fhir"
    first = default_username(iss, fhir_user, sub)
    suffix = first.split("@")[0].rsplit("-", 1)[1]  # the 8 hex digits the first one got
    other = default_username(
        iss,
        other_fhir_user.format(hash=suffix) if other_fhir_user else None,
        other_sub.format(hash=suffix) if other_sub else None,
    )
    assert first != other


def test_plain_ids_keep_their_names() -> None:
    """Existing users whose ids were kept as they are keep their usernames."""
    iss = "https://ehr.example.org/fhir"
    assert (
        default_username(iss, "Practitioner/123", None) == "practitioner-123@ehr.example.org-fhir"
    )
    assert default_username(iss, None, "a1b2c3d4-0000-4000-8000-123456789abc").startswith(
        "user-a1b2c3d4-0000-4000-8000-123456789abc@"
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://ehr.example.org/R4", "https://ehr.example.org/r4"),
        ("https://ehr.example.org/fhir/r4", "https://ehr.example.org/fhir-r4"),
    ],
)
def test_issuers_sharing_usernames_are_found(a: str, b: str) -> None:
    assert colliding_issuers([a, b, "https://other.example/fhir"]) == [(a, b)]
    assert colliding_issuers([a, "https://other.example/fhir"]) == []


def test_issuers_equal_in_their_first_120_characters_get_their_own_names() -> None:
    """A long issuer part is shortened with 128 bits of SHA-256, not cut."""
    a = "https://ehr.example.org/" + "x" * 130 + "/a"
    b = "https://ehr.example.org/" + "x" * 130 + "/b"
    assert issuer_slug(a) != issuer_slug(b)
    assert len(issuer_slug(a)) == 120 and "@" not in issuer_slug(a)
    assert colliding_issuers([a, b]) == []


#: Characters of every kind the escape treats differently: kept, the escape character,
#: capitals, characters written as code points (incl. ones outside ASCII), the separators.
ALPHABET = "aZz09-._/ @\u00e9\U0001f600"
TYPES = ["Practitioner", "Patient", "RelatedPerson", "Relatedperson", "User", "UUser", "Us"]


def _corpus(max_length: int) -> list[str]:
    words = [""]
    found = []
    for _ in range(max_length):
        words = [w + c for w in words for c in ALPHABET]
        found += words
    return found


@pytest.mark.slow
def test_default_usernames_are_injective_over_an_exhaustive_corpus() -> None:
    """Every string up to 4 characters over ALPHABET, as an id of several types and as a
    sub, at two issuers, plus ids around the 64-character limit: no two identities share
    a name, and each escaped part reads back as it was."""
    words = _corpus(4)
    long_ids = [c * n for c in "aA_/" for n in range(20, 90)]
    long_ids += [("aB" * 40)[:n] + tail for n in range(28, 70) for tail in ("", "x", "X", "_")]
    seen: dict[str, tuple[str, str | None, str | None]] = {}
    issuers = ["https://ehr.example.org/fhir", "https://ehr.example.org/fhir2"]
    identities: list[tuple[str, str | None, str | None]] = []
    for iss in issuers:
        identities += [(iss, None, w) for w in words + long_ids]
        identities += [(iss, f"{t}/{w}", None) for t in TYPES for w in words[:3000] + long_ids]
    for identity in identities:
        name = default_username(*identity)
        assert seen.setdefault(name, identity) == identity, (name, seen[name], identity)
        assert "/" not in name and name == name.lower() and name.count("@") == 1
        assert len(name) <= 255
    for word in words + long_ids:
        assert decode_part(encode_part(word)) == word


def test_plain_lower_case_ids_read_as_they_are() -> None:
    iss = "https://ehr.example.org/fhir"
    assert (
        default_username(iss, "Practitioner/Abc", None) == "practitioner-_abc@ehr.example.org-fhir"
    )
    assert default_username(iss, "RelatedPerson/r.1", None).startswith("related_person-r.1@")
    assert default_username(iss, "User/x", None).startswith("_user-x@")
    assert default_username(iss, None, "x").startswith("user-x@")
    assert default_username(iss, None, "a_b c") == "user-a__b_32.c@ehr.example.org-fhir"


def test_over_long_parts_carry_128_bits_of_hash() -> None:
    iss = "https://ehr.example.org/fhir"
    whole = default_username(iss, None, "a" * 64).split("@")[0]
    short = default_username(iss, None, "a" * 65).split("@")[0]
    assert whole == "user-" + "a" * 64
    head, digest = short.removeprefix("user-").rsplit("-", 1)
    assert head == "a" * 32 and len(digest) == 32 and int(digest, 16) >= 0


@pytest.mark.parametrize(
    "bad", ["_", "_A", "_95.", "_46.", "_65.", "_065.", "_1", "A", "_1114112."]
)
def test_decoding_refuses_what_encoding_never_writes(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_part(bad)


@pytest.mark.slow
def test_ids_differing_only_in_case_never_share_a_name() -> None:
    """Every upper/lower-case spelling of one 18-letter id: 262,144 users, 262,144 names
    (32 bits of a hash, as before, would give about eight pairs of them one name)."""
    iss = "https://ehr.example.org/fhir"
    letters = "practitionerrecord"
    names = set()
    for bits in range(1 << len(letters)):
        spelled = "".join(c.upper() if bits >> i & 1 else c for i, c in enumerate(letters))
        names.add(default_username(iss, None, spelled))
    assert len(names) == 1 << len(letters)
