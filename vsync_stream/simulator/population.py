"""Deterministic generator of realistic DICT entries for the simulator, tests and benchmarks.

Key types follow BCB's published stock of Pix keys (EVP ≈ 48 %, PHONE ≈ 18 %, CPF ≈ 17 %,
EMAIL ≈ 10 %, CNPJ ≈ 6 %, the last percent spread evenly). Every entry passes the project's event
validation (``vsync_stream.domain.events``): CPF/CNPJ keys and tax ids have correct check digits,
phones are Brazilian mobiles in E.164, e-mails are lower case and at most 77 chars, EVPs are
lower-case UUID v4; CPF keys belong to natural persons with that CPF, CNPJ keys to legal persons
with that CNPJ. Names are Brazilian, with accents, in Unicode NFC. The same seed gives the same
entries (UUIDs included: they are drawn from the seeded generator, not from ``uuid.uuid4``).
"""

from __future__ import annotations

import random
import re
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from vsync_stream.domain.entry import AccountType, Entry, OwnerType
from vsync_stream.domain.keys import EMAIL_MAX_LENGTH, KeyType, is_ispb

# BCB, "Estatísticas do Pix: estoque de chaves por tipo" (rounded), plus 1 % spread evenly.
KEY_TYPE_WEIGHTS: dict[KeyType, float] = {
    KeyType.EVP: 48.2,
    KeyType.PHONE: 18.2,
    KeyType.CPF: 17.2,
    KeyType.EMAIL: 10.2,
    KeyType.CNPJ: 6.2,
}
ACCOUNT_TYPE_WEIGHTS: dict[AccountType, float] = {
    AccountType.CACC: 70, AccountType.SVGS: 20, AccountType.TRAN: 6, AccountType.SLRY: 4,
}
# Anatel's area codes (DDD) in use.
DDDS = (
    11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 24, 27, 28, 31, 32, 33, 34, 35, 37, 38, 41, 42, 43,
    44, 45, 46, 47, 48, 49, 51, 53, 54, 55, 61, 62, 63, 64, 65, 66, 67, 68, 69, 71, 73, 74, 75, 77,
    79, 81, 82, 83, 84, 85, 86, 87, 88, 89, 91, 92, 93, 94, 95, 96, 97, 98, 99,
)
MALE_NAMES = (
    "João", "José", "Antônio", "Francisco", "Carlos", "Paulo", "Pedro", "Lucas", "Luís", "Marcos",
    "Sebastião", "Raimundo", "Fábio", "Márcio", "André", "Cauã", "Caio", "Estêvão", "Vinícius",
)
FEMALE_NAMES = (
    "Maria", "Ana", "Francisca", "Antônia", "Adriana", "Juliana", "Márcia", "Fernanda", "Patrícia",
    "Aline", "Conceição", "Júlia", "Letícia", "Cecília", "Beatriz", "Lúcia", "Helena", "Inês",
    "Thaís", "Vitória",
)
SURNAMES = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira", "Lima",
    "Gomes", "Ribeiro", "Carvalho", "Araújo", "Conceição", "Gonçalves", "Simões", "Magalhães",
    "Assunção", "Falcão", "Brandão", "Damião", "Romão", "Estêvão", "Guimarães", "Sá", "Câmara",
    "Nóbrega", "Patrício", "Luís", "Antunes",
)
PARTICLES = ("", "", "", "", "", "", "da ", "de ", "dos ")
BUSINESSES = (
    "Padaria", "Mercearia", "Açougue", "Farmácia", "Oficina Mecânica", "Papelaria", "Construtora",
    "Distribuidora de Bebidas", "Comércio de Alimentos", "Serviços de Informática", "Confecções",
    "Transportes", "Sorveteria", "Café", "Materiais de Construção",
)
TRADE_WORDS = (
    "Pão de Açúcar", "São Jorge", "Bom Preço", "Estrela", "Ipê", "Sabiá", "Jacarandá", "Maré Alta",
    "Coração", "União", "Três Irmãos", "Nossa Senhora Aparecida", "Cidade", "Açaí", "Tucano",
)
LEGAL_SUFFIXES = ("Ltda", "Ltda", "S.A.", "ME", "EIRELI", "Ltda - ME")
EMAIL_DOMAINS = (
    "gmail.com", "hotmail.com", "outlook.com", "yahoo.com.br", "uol.com.br", "bol.com.br",
    "terra.com.br", "icloud.com", "globo.com", "ig.com.br",
)
_NOT_EMAIL_SAFE = re.compile(r"[^a-z0-9]+")
_OPENING_START = datetime(1990, 1, 1, 3, tzinfo=UTC)
_OPENING_DAYS = (datetime(2025, 12, 31, 3, tzinfo=UTC) - _OPENING_START).days
_OWNER_RING = 1000  # recent owners that may hold another key (one person, several keys)


def _check_digit(digits: str, weights: Sequence[int]) -> str:
    rest = sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    return "0" if rest < 2 else str(11 - rest)


def make_cpf(rng: random.Random) -> str:
    """A random CPF with valid check digits (Receita Federal modulo-11 rule): 11 ASCII digits."""
    while True:
        base = "".join(rng.choice("0123456789") for _ in range(9))
        if base != base[0] * 9:
            break
    base += _check_digit(base, range(10, 1, -1))
    return base + _check_digit(base, range(11, 1, -1))


def make_cnpj(rng: random.Random) -> str:
    """A random CNPJ with valid check digits: 8-digit root, branch ``0001`` mostly, 14 digits."""
    while True:
        root = "".join(rng.choice("0123456789") for _ in range(8))
        if root != root[0] * 8:
            break
    base = root + (f"{rng.randint(2, 20):04d}" if rng.random() < 0.1 else "0001")
    base += _check_digit(base, (5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2))
    return base + _check_digit(base, (6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2))


def make_uuid4(rng: random.Random) -> str:
    """A lower-case UUID version 4 drawn from ``rng`` (deterministic, unlike ``uuid.uuid4``)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_phone(rng: random.Random) -> str:
    """A Brazilian mobile in E.164: ``+55``, a 2-digit DDD, ``9`` and 8 digits (14 chars)."""
    return f"+55{rng.choice(DDDS)}9{rng.randrange(10**8):08d}"


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return _NOT_EMAIL_SAFE.sub("", folded)


def make_person_name(rng: random.Random) -> str:
    """A Brazilian natural person's name with accents, NFC, e.g. ``Júlia dos Santos Araújo``."""
    first_names = MALE_NAMES if rng.random() < 0.5 else FEMALE_NAMES
    parts = [rng.choice(first_names)]
    if rng.random() < 0.3:
        parts.append(rng.choice(first_names))
    for _ in range(rng.randint(1, 3)):
        parts.append(rng.choice(PARTICLES) + rng.choice(SURNAMES))
    return _nfc(" ".join(parts))


def make_company_names(rng: random.Random) -> tuple[str, str | None]:
    """A legal person's name and, for about 60 %, a trade name (both NFC; names may hold ``&``)."""
    surname = rng.choice(SURNAMES)
    if rng.random() < 0.3:
        name = f"{surname} & {rng.choice(SURNAMES)} {rng.choice(BUSINESSES)} {rng.choice(LEGAL_SUFFIXES)}"
    else:
        name = f"{rng.choice(BUSINESSES)} {surname} {rng.choice(LEGAL_SUFFIXES)}"
    trade = f"{rng.choice(BUSINESSES)} {rng.choice(TRADE_WORDS)}" if rng.random() < 0.6 else None
    return _nfc(name), _nfc(trade) if trade else None


def make_account_number(rng: random.Random) -> str:
    """1-20 digits; mostly 5-10, a fifth zero-padded to 10 or 12 digits as many banks do."""
    length = rng.choices((rng.randint(1, 4), rng.randint(5, 10), rng.randint(11, 20)), (3, 90, 7))[0]
    number = str(rng.randrange(1, 10**length))
    if rng.random() < 0.2:
        number = number.zfill(rng.choice((10, 12)))
    return number[-20:]


def make_branch(rng: random.Random) -> str | None:
    """A 4-digit branch (leading zeros kept), or None for about 8 % (accounts without a branch)."""
    return None if rng.random() < 0.08 else f"{rng.randint(1, 9999):04d}"


def make_opening_date(rng: random.Random) -> str:
    """An opening date between 1990 and 2025 at 03:00 UTC (midnight in Brasília), RFC 3339 ``Z``."""
    moment = _OPENING_START + timedelta(days=rng.randrange(_OPENING_DAYS + 1))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class _KeyTaken(Exception):
    """Internal: the drawn key is already taken; draw again."""


class PopulationGenerator:
    """A seeded source of unique, valid, realistic entries; keeps the keys it has handed out.

    Use one generator per population, so keys stay unique across calls (e.g. the homologation
    drill inserting new keys into a model filled from the same generator).

    Args:
        participants: ISPBs (8-digit strings, leading zeros kept) the entries are spread over.
        seed: any int; the same seed and call sequence give the same entries.
        participant_weights: relative share of each participant; uniform when None.

    Raises:
        ValueError: no participants, a participant is not 8 digits, or weights do not match.
    """

    def __init__(self, participants: Sequence[str], seed: int = 0,
                 participant_weights: Sequence[float] | None = None) -> None:
        if not participants:
            raise ValueError("at least one participant ISPB is needed")
        for ispb in participants:
            if not isinstance(ispb, str) or not is_ispb(ispb):
                raise ValueError("a participant ISPB is 8 digits as a string, e.g. '00000208'")
        if participant_weights is not None and len(participant_weights) != len(participants):
            raise ValueError("give one weight per participant")
        self.rng = random.Random(seed)
        self._participants = tuple(participants)
        self._participant_weights = tuple(participant_weights) if participant_weights else None
        self._used: set[str] = set()
        self._owners: list[tuple[str, str, str, str | None]] = []  # (type, tax id, name, trade name)

    def __len__(self) -> int:
        """How many keys this generator has handed out."""
        return len(self._used)

    def entry(self, key_type: str | None = None, participant: str | None = None) -> Entry:
        """A new entry with a key never handed out before by this generator.

        Args:
            key_type: force a key type; drawn with :data:`KEY_TYPE_WEIGHTS` when None.
            participant: force the ISPB; drawn from the participants when None.

        Returns:
            The entry, with a fresh RequestId (UUID v4).
        """
        rng = self.rng
        kind = KeyType(key_type) if key_type else rng.choices(
            tuple(KEY_TYPE_WEIGHTS), tuple(KEY_TYPE_WEIGHTS.values()))[0]
        if participant is None:
            participant = rng.choices(self._participants, self._participant_weights)[0]
        while True:
            owner = self._owner_for(kind)
            try:
                key = self._unique_key(kind, owner)
                break
            except _KeyTaken:
                continue
        account_type = rng.choices(tuple(ACCOUNT_TYPE_WEIGHTS), tuple(ACCOUNT_TYPE_WEIGHTS.values()))[0]
        return Entry(
            key=key,
            key_type=kind.value,
            request_id=make_uuid4(rng),
            participant=participant,
            branch=make_branch(rng),
            account_number=make_account_number(rng),
            account_type=account_type.value,
            owner_type=owner[0],
            owner_tax_id=owner[1],
            owner_name=owner[2],
            owner_trade_name=owner[3],
            opening_date=make_opening_date(rng),
        )

    def _owner_for(self, kind: KeyType) -> tuple[str, str, str, str | None]:
        rng = self.rng
        if kind is KeyType.CPF or kind is KeyType.CNPJ:
            owner = self._new_owner(legal=kind is KeyType.CNPJ)
        elif self._owners and rng.random() < 0.25:
            owner = rng.choice(self._owners)
        else:
            owner = self._new_owner(legal=rng.random() < 0.15)
        if len(self._owners) < _OWNER_RING:
            self._owners.append(owner)
        else:
            self._owners[rng.randrange(_OWNER_RING)] = owner
        return owner

    def _new_owner(self, legal: bool) -> tuple[str, str, str, str | None]:
        if legal:
            name, trade = make_company_names(self.rng)
            return OwnerType.LEGAL_PERSON.value, make_cnpj(self.rng), name, trade
        return OwnerType.NATURAL_PERSON.value, make_cpf(self.rng), make_person_name(self.rng), None

    def _unique_key(self, kind: KeyType, owner: tuple[str, str, str, str | None]) -> str:
        # CPF/CNPJ keys are the owner's own tax id: _owner_for drew a fresh owner for them, and a
        # repeat (astronomically rare) is redrawn in entry().
        for attempt in range(1000):
            if kind is KeyType.CPF or kind is KeyType.CNPJ:
                key = owner[1]
            elif kind is KeyType.PHONE:
                key = make_phone(self.rng)
            elif kind is KeyType.EMAIL:
                key = self._email(owner, attempt)
            else:
                key = make_uuid4(self.rng)
            if key not in self._used:
                self._used.add(key)
                return key
            if kind is KeyType.CPF or kind is KeyType.CNPJ:
                break
        raise _KeyTaken

    def _email(self, owner: tuple[str, str, str, str | None], attempt: int) -> str:
        rng = self.rng
        if owner[0] == OwnerType.LEGAL_PERSON:
            local = rng.choice(("contato", "financeiro", "pix", "vendas"))
            domain = (_ascii_slug(owner[3] or owner[2])[:30] or "empresa") + ".com.br"
        else:
            words = [_ascii_slug(w) for w in owner[2].split() if len(w) > 3]
            local = rng.choice(".-_").join(words[:2]) or "cliente"
            domain = rng.choice(EMAIL_DOMAINS)
        if attempt or rng.random() < 0.4:
            local += str(rng.randrange(10 ** rng.randint(2, 6)))
        room = EMAIL_MAX_LENGTH - len(domain) - 1
        return f"{local[:room]}@{domain}"


def generate_entries(n: int, participants: Sequence[str], seed: int = 0) -> Iterator[Entry]:
    """Yield ``n`` unique, valid, realistic entries spread uniformly over ``participants``.

    Args:
        n: how many entries.
        participants: ISPBs, 8-digit strings.
        seed: the same seed gives the same entries.

    Yields:
        Entries with unique keys and fresh RequestIds.

    Raises:
        ValueError: see :class:`PopulationGenerator`.
    """
    generator = PopulationGenerator(participants, seed)
    for _ in range(n):
        yield generator.entry()


def random_update_changes(entry: Entry, rng: random.Random) -> dict[str, Any]:
    """Draw a realistic update of an entry, as keyword arguments for ``DictModel.update``.

    About 60 % move the account (new number, sometimes new branch and type), 25 % change the
    owner's name (natural person: a new surname; legal person: a new trade name), 15 % change only
    the opening date (an update that keeps the CID, DESIGN 2.3).

    Args:
        entry: the entry as the DICT holds it now.
        rng: the random source (seed it for a reproducible stream).

    Returns:
        A non-empty dict of ``Entry`` field names to new values, all valid for the event contract.
    """
    draw = rng.random()
    if draw < 0.6:
        changes: dict[str, Any] = {"account_number": make_account_number(rng)}
        if rng.random() < 0.4:
            changes["branch"] = make_branch(rng)
        if rng.random() < 0.2:
            changes["account_type"] = rng.choice(tuple(AccountType)).value
        return changes
    if draw < 0.85:
        if entry.owner_type == OwnerType.LEGAL_PERSON:
            return {"owner_trade_name": make_company_names(rng)[1]}
        first = entry.owner_name.split()[0]
        return {"owner_name": _nfc(f"{first} {rng.choice(PARTICLES)}{rng.choice(SURNAMES)} {rng.choice(SURNAMES)}")}
    return {"opening_date": make_opening_date(rng)}
