"""Email addresses as SendGrid will take them: syntax only, by email-validator.

One rule for every address the project handles: recipients before any request (the
outbox), and the sender and contact addresses when the settings load.
"""

import functools
import re
import unicodedata

import idna
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

# The plain shape nearly every real address has (ASCII, dot-separated atoms, a domain of
# hostname labels and an alphabetic top level). email-validator accepts every address of
# this shape that is short enough and not in a special-use domain (tested with generated
# addresses in tests/platform/test_email_promise.py), so these skip its ~0.1 ms of checks: 100,000
# digests would otherwise spend 10 s here.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


# email-validator refuses these domains and every domain under them; an address whose top
# level is the last label of one of them takes the slow path, which decides.
_SPECIAL_TOP_LEVELS = frozenset(
    name.rpartition(".")[2].lower() for name in SPECIAL_USE_DOMAIN_NAMES
)


def plainly_valid(address: str) -> bool:
    local, _, domain = address.rpartition("@")
    if len(address) > 254 or len(local) > 64 or not _PLAIN_ADDRESS.fullmatch(address):
        return False
    # A label with hyphens in its third and fourth places is an IDNA A-label (`xn--`) or
    # reserved for one (`ab--cd`): IDNA decides those, on the slow path.
    if "--" in domain and any(label[2:4] == "--" for label in domain.split(".")):
        return False
    return domain.rpartition(".")[2].lower() not in _SPECIAL_TOP_LEVELS


@functools.lru_cache(maxsize=100_000)
def address_problem(address: str | None) -> str | None:
    """Why SendGrid would refuse `address`, or None when it is a valid address.

    Syntax only (email-validator, no DNS lookups: a lookup per recipient would make the
    digest wait on DNS, and SendGrid's bounce handling covers dead domains).
    """
    if not address or not address.strip():
        return "the address is empty"
    address = address.strip()  # what is sent: surrounding spaces are a paste, not the address
    if plainly_valid(address):
        return None
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def _ascii_domain(domain: str) -> str | None:
    """An internationalised domain in its ASCII form (IDNA UTS #46: `Bücher.example` is
    `xn--bcher-kva.example`), the domain itself when ASCII; None when IDNA refuses it."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return None


def sendable_address(address: str) -> str:
    """`address` as it is sent: surrounding spaces dropped, and an internationalised domain
    in its ASCII form (`olivia@xn--bcher-kva.example`), which every mail system takes; the
    local part as written."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    ascii_domain = _ascii_domain(domain) if at else None
    return f"{local}@{ascii_domain}" if ascii_domain else address


def canonical_address(address: str) -> str:
    """One spelling per mailbox, for comparing addresses (suppressions): surrounding spaces
    dropped, the local part case-folded (Unicode-aware, whatever the database's locale),
    the domain in its ASCII form (`_ascii_domain`), lower case.

    Case-folding the local part follows every mailbox provider SendGrid delivers to
    (RFC 5321 allows case-sensitive local parts; no provider we know uses them)."""
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return address.strip().casefold()
    domain = domain.rstrip(".")
    folded = (_ascii_domain(domain) or unicodedata.normalize("NFC", domain)).casefold()
    return f"{unicodedata.normalize('NFC', local).casefold()}@{folded}"


def domain_of(address: str) -> str | None:
    """The domain of `address` (lower case) when it is one valid address, else None:
    `a@evil.example@x.com` is no address at all, so it belongs to no domain."""
    address = address.strip()
    if address_problem(address) is not None:
        return None
    if plainly_valid(address):
        return address.rpartition("@")[2].lower()
    try:
        return validate_email(address, check_deliverability=False).ascii_domain.lower()
    except EmailNotValidError:
        return None
