"""Password hashes as GoTrue accepts them in ``password_hash``: the checks of models.NewUserWithPasswordHash.

This module owns the parsers GoTrue runs on an imported hash (argon2i/argon2id
PHC, Firebase scrypt, and Go's ``bcrypt.Cost`` for anything else), with the
Go error messages, so a hash the real server refuses is refused here too.
"""

from __future__ import annotations

import base64
import binascii
import re


class HashError(ValueError):
    """A hash GoTrue would refuse; the message is the Go error's."""


_ARGON2 = re.compile(
    r"^[$](?P<alg>argon2(d|i|id))[$]v=(?P<v>(16|19))[$]m=(?P<m>[0-9]+),t=(?P<t>[0-9]+),p=(?P<p>[0-9]+)"
    r"(,keyid=(?P<keyid>[^,$]+))?(,data=(?P<data>[^$]+))?[$](?P<salt>[^$]*)[$](?P<hash>.*)$",
    re.DOTALL,
)
_FBSCRYPT = re.compile(
    r"^\$fbscrypt\$v=(?P<v>[0-9]+),n=(?P<n>[0-9]+),r=(?P<r>[0-9]+),p=(?P<p>[0-9]+)"
    r"(?:,ss=(?P<ss>[^,]+))?(?:,sk=(?P<sk>[^$]+))?\$(?P<salt>[^$]+)\$(?P<hash>.+)$",
    re.DOTALL,
)


def _raw_b64(text: str, what: str) -> bytes:
    """Go's base64.RawStdEncoding: no padding allowed."""
    if "=" in text or len(text) % 4 == 1:
        raise HashError(f"crypto: argon2 hash has invalid base64 in the {what} section")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as err:
        raise HashError(f"crypto: argon2 hash has invalid base64 in the {what} section") from err


def _go_uint(text: str, bits: int) -> int:
    value = int(text)  # the regex guarantees digits
    if value >= 1 << bits:
        raise ValueError("value out of range")
    return value


def parse_argon2(hash_: str) -> None:
    """crypto.ParseArgon2Hash."""
    m = _ARGON2.match(hash_)
    if m is None:
        raise HashError("crypto: incorrect argon2 hash format")
    if m["alg"] not in ("argon2i", "argon2id"):
        raise HashError(f'crypto: argon2 hash uses unsupported algorithm "{m["alg"]}" only argon2i and '
                        "argon2id supported")
    if m["v"] != "19":
        raise HashError(f'crypto: argon2 hash uses unsupported version "{m["v"]}" only 19 is supported')
    if m["data"]:
        raise HashError("crypto: argon2 hashes with the data parameter not supported")
    if m["keyid"]:
        raise HashError("crypto: argon2 hashes with the keyid parameter not supported")
    for name, bits in (("m", 32), ("t", 32), ("p", 8)):
        try:
            _go_uint(m[name], bits)
        except ValueError as err:
            raise HashError(f'crypto: argon2 hash has invalid {name} parameter "{m[name]}"') from err
    if not _raw_b64(m["hash"], "hash"):
        raise HashError("crypto: argon2 hash is empty")
    if not _raw_b64(m["salt"], "salt"):
        raise HashError("crypto: argon2 salt is empty")


def _std_b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as err:
        raise HashError("crypto: Firebase scrypt hash has invalid base64") from err


def parse_fbscrypt(hash_: str) -> None:
    """crypto.ParseFirebaseScryptHash."""
    m = _FBSCRYPT.match(hash_)
    if m is None:
        raise HashError("crypto: incorrect scrypt hash format")
    if m["v"] != "1":
        raise HashError(f'crypto: Firebase scrypt hash uses unsupported version "{m["v"]}" only version 1 '
                        "is supported")
    for name, bits in (("n", 32), ("r", 64), ("p", 8)):
        try:
            if _go_uint(m[name], bits) == 0:
                raise HashError(f"crypto: Firebase scrypt hash has invalid {name}=0")
        except ValueError as err:
            raise HashError(f'crypto: Firebase scrypt hash has invalid {name} parameter "{m[name]}"') from err
    for part in ("hash", "salt"):
        _std_b64(m[part])
    for part in ("sk", "ss"):
        _std_b64(m[part] or "")


def bcrypt_cost(hash_: str) -> int:
    """golang.org/x/crypto/bcrypt.Cost: what it checks, in its order, with its messages."""
    raw = hash_.encode()
    if len(raw) < 59:
        raise HashError("crypto/bcrypt: hashedSecret too short to be a bcrypted password")
    if raw[0:1] != b"$":
        raise HashError(f"crypto/bcrypt: bcrypt hashes must start with '$', but hashedSecret started with "
                        f"'{chr(raw[0])}'")
    if raw[1] > ord("2"):
        raise HashError(f"crypto/bcrypt: bcrypt algorithm version '{chr(raw[1])}' requested is newer than "
                        "current version '2'")
    n = 3 if raw[2:3] == b"$" else 4
    cost_text = raw[n:n + 2].decode(errors="replace")
    if not re.fullmatch(r"[+-]?[0-9]+", cost_text):
        raise HashError(f'strconv.Atoi: parsing "{cost_text}": invalid syntax')
    cost = int(cost_text)
    if not 4 <= cost <= 31:
        raise HashError(f"crypto/bcrypt: cost {cost} is outside allowed inclusive range 4..31")
    return cost


def check_password_hash(hash_: str) -> None:
    """models.NewUserWithPasswordHash: raise :class:`HashError` for a hash GoTrue refuses."""
    if hash_.startswith("$argon2"):
        parse_argon2(hash_)
    elif hash_.startswith("$fbscrypt"):
        parse_fbscrypt(hash_)
    else:
        bcrypt_cost(hash_)
