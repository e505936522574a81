"""The field file: sites of boards, their links, the backhaul, validated with pydantic v2.

``FIELD.yaml`` (docs/field.md describes every key)::

    field: vineyard                   # [a-z][a-z0-9]{0,9}: prefixes every namespace, link, process
    fleet: ../examples/basic-motions.yaml   # the fleet config the boards run (relative to this file)
    subnet: 10.77.0.0/16              # site i: 10.77.<i+1>.0/24, backhaul 10.77.0.0/24
    prefixes: /var/lib/parse-edge/field/vineyard   # board prefix = <prefixes>/<board id>
    hub: north                        # the site every other site's broker bridges to (default: first)
    links:
      default: {rate_kbit: 2000, loss_percent: 0}
      kinds:
        lte: {rate_kbit: 256, loss_percent: 1}
    backhaul: {rate_kbit: 1000}
    sites:
      north:
        boards: [a0, a1, {id: a2, kind: lte}]
      south:
        boards: [a3, {id: a4, link: {outages: [{round: 4, up_round: 6}]}}]
        backhaul: {rate_kbit: 500}

A board's link is the default, overridden by its kind, overridden by its own `link`, key by key;
a site's backhaul is the field's `backhaul` overridden by the site's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

FIELD_NAME = r"^[a-z][a-z0-9]{0,9}$"
SITE_NAME = r"^[a-z][a-z0-9_]{0,31}$"
BOARD_ID = r"^[A-Za-z0-9_-]{1,64}$"  # an agent id (edge.config.schema.SAFE_ID, inventory AgentId)
KIND_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
MAX_SITES = 250      # site i takes the /24 number i+1 of the /16 (0 is the backhaul)
MAX_BOARDS_PER_SITE = 250  # hosts .2 .. .251 of the site /24 (.1 gateway, .254 operator)
MAX_ROUND = 1_000_000

FieldName = Annotated[str, StringConstraints(pattern=FIELD_NAME)]
SiteName = Annotated[str, StringConstraints(pattern=SITE_NAME)]
BoardId = Annotated[str, StringConstraints(pattern=BOARD_ID)]
KindName = Annotated[str, StringConstraints(pattern=KIND_NAME)]
# 8 kbit/s is below any radio people run MQTT over; 10 Gbit/s above any veth we would shape.
RateKbit = Annotated[float, Field(strict=True, ge=8, le=10_000_000, allow_inf_nan=False)]
LossPercent = Annotated[float, Field(strict=True, ge=0, le=100, allow_inf_nan=False)]
Round = Annotated[int, Field(strict=True, ge=0, le=MAX_ROUND)]
AbsolutePath = Annotated[str, StringConstraints(pattern=r"^/[^\x00\n]*$", max_length=4096)]


class FieldSpecError(ValueError):
    """A field file is unusable: ``<file>: <field>: <expected>`` in one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Outage(_Strict):
    """The link is down from the start of `round` to the start of `up_round` (exclusive)."""

    round: Round
    up_round: Round

    @model_validator(mode="after")
    def _ordered(self) -> Outage:
        if self.up_round <= self.round:
            raise ValueError(f"expected up_round greater than round {self.round}, got {self.up_round}")
        return self


class LinkSpec(_Strict):
    """Link settings; a key left out (None) is inherited from the level below."""

    rate_kbit: RateKbit | None = None        # tc tbf rate cap, each direction, 1 kbit = 1000 bit/s
    loss_percent: LossPercent | None = None  # random loss, each direction independently
    outages: tuple[Outage, ...] | None = None

    @field_validator("outages")
    @classmethod
    def _disjoint(cls, value: tuple[Outage, ...] | None) -> tuple[Outage, ...] | None:
        for before, after in itertools.pairwise(value or ()):
            if after.round < before.up_round:
                raise ValueError("expected outages sorted by round, none overlapping the one before")
        return value


class BoardSpec(_Strict):
    """A board written as a mapping: its id, an optional link kind and its own link settings."""

    id: BoardId
    kind: KindName | None = None
    link: LinkSpec = LinkSpec()
    # Rounds on entering which the board "reboots" in a trial: its agent process is killed
    # (SIGKILL) and its supervisor restarts it; the agent resumes from its checkpoint.
    reboots: tuple[Round, ...] = ()

    @field_validator("reboots")
    @classmethod
    def _increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"expected strictly increasing rounds, got {list(value)}")
        return value


class SiteSpec(_Strict):
    """A site: boards on one LAN behind one gateway broker, and its backhaul override."""

    boards: list[BoardSpec] = Field(min_length=1, max_length=MAX_BOARDS_PER_SITE)
    backhaul: LinkSpec = LinkSpec()

    @field_validator("boards", mode="before")
    @classmethod
    def _bare_ids(cls, value: object) -> object:
        # A bare id is a board with no kind and no own link settings.
        if isinstance(value, list):
            return [{"id": b} if isinstance(b, str) else b for b in value]
        return value


class LinksSpec(_Strict):
    """Board link defaults and named kinds (link classes such as lte, wifi, lora)."""

    default: LinkSpec = LinkSpec()
    kinds: dict[KindName, LinkSpec] = {}


class ToolsSpec(_Strict):
    """Executables, when not the Debian ones found on PATH (sshd must be an absolute path)."""

    sshd: AbsolutePath | None = None
    mosquitto: AbsolutePath | None = None
    ssh_keygen: AbsolutePath | None = None


class FieldFile(_Strict):
    """The whole field file."""

    field: FieldName
    fleet: str | None = None
    subnet: str = "10.77.0.0/16"
    prefixes: str | None = None
    hub: SiteName | None = None
    board_python: str | None = Field(default=None, min_length=1, max_length=4096)
    links: LinksSpec = LinksSpec()
    backhaul: LinkSpec = LinkSpec()
    sites: dict[SiteName, SiteSpec] = Field(min_length=1, max_length=MAX_SITES)
    tools: ToolsSpec = ToolsSpec()

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError("expected an IPv4 network such as 10.77.0.0/16") from None
        if net.prefixlen != 16 or not net.is_private:
            raise ValueError("expected a private /16 (RFC 1918), such as 10.77.0.0/16") from None
        return str(net)

    @model_validator(mode="after")
    def _cross(self) -> FieldFile:
        seen: dict[str, str] = {}
        for site_name, site in self.sites.items():
            for board in site.boards:
                if board.id in seen:
                    raise ValueError(f"board {board.id} is in sites {seen[board.id]} and {site_name}")
                seen[board.id] = site_name
                if board.kind is not None and board.kind not in self.links.kinds:
                    raise ValueError(f"board {board.id}: kind {board.kind} is not in links.kinds")
        if self.hub is not None and self.hub not in self.sites:
            raise ValueError(f"hub {self.hub} is not one of the sites")
        return self


class FieldSpec:
    """A validated field file with its paths resolved against the file's folder.

    Attributes
    ----------
    source : str
        The file as given (for error messages).
    doc : FieldFile
        The validated document.
    fleet_path : Path or None
        The referenced fleet config, absolute.
    prefixes : Path
        Where board prefixes live (board prefix = prefixes / board id).
    text_sha256 : str
        sha256 of the canonical JSON of `doc`: `field up` compares it to tell a re-run of the
        same description from a different one.
    """

    def __init__(self, source: str, doc: FieldFile, base: Path) -> None:
        self.source = source
        self.doc = doc
        self.name = doc.field
        # normpath, not resolve: a fleet file reached through a symlink keeps the name it was
        # given (as `parse-edge trial` would print it).
        self.fleet_path = Path(os.path.normpath(base / doc.fleet)) if doc.fleet else None
        self.prefixes = Path(os.path.normpath(base / doc.prefixes)) if doc.prefixes else \
            Path("/var/lib/parse-edge/field") / doc.field
        canonical = doc.model_dump_json().encode() + str(self.prefixes).encode()
        self.text_sha256 = hashlib.sha256(canonical).hexdigest()

    @property
    def board_ids(self) -> list[str]:
        """Every board id, site by site, in file order."""
        return [b.id for site in self.doc.sites.values() for b in site.boards]


# pydantic's error types in the fleet config's wording ("expected ..., got ..."), so a user meets
# one error shape whichever file is wrong (edge.config.typed words the fleet config's).
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
           "less_than": "<"}


def _where(loc: tuple[int | str, ...]) -> str:
    """("sites", "south", "boards", 3, "id") -> "sites.south.boards[3].id"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: Any) -> str:
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "string_pattern_mismatch":
        return f"expected a value matching {ctx['pattern']}, got {shown}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        bound_text = f"{bound:g}" if isinstance(bound, (int, float)) else str(bound)
        return f"expected a number {_BOUNDS[kind]} {bound_text}, got {shown}"
    if kind in ("too_short", "too_long"):
        size = "at least" if kind == "too_short" else "at most"
        return (f"expected {size} {ctx.get('min_length', ctx.get('max_length'))} "
                f"item(s), got {ctx.get('actual_length')}")
    if kind in ("string_too_short", "string_too_long"):
        size = "at least" if kind == "string_too_short" else "at most"
        return f"expected {size} {ctx.get('min_length', ctx.get('max_length'))} character(s)"
    if kind == "literal_error":
        return f"expected one of {ctx['expected']}, got {shown}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {shown}"
    return str(err["msg"]).removeprefix("Value error, ")


def parse_field(raw: object, source: str, base: Path) -> FieldSpec:
    """Validate a parsed YAML document.

    Parameters
    ----------
    raw : object
        The document as `yaml.safe_load` returns it.
    source : str
        The file name for messages.
    base : Path
        The folder relative paths (`fleet`, `prefixes`) are resolved against.

    Raises
    ------
    FieldSpecError
        ``<source>: <field path>: <expected>`` for the first problem found.
    """
    try:
        doc = FieldFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _where(tuple(err["loc"]))
        raise FieldSpecError(f"{source}: {where or '<top level>'}: {_message(err)}") from None
    return FieldSpec(source, doc, base)


def load_field(path: str | Path) -> FieldSpec:
    """Read and validate a field file.

    Raises
    ------
    FieldSpecError
        On an unreadable or oversized file, bad YAML or an invalid field.
    """
    file = Path(path)
    source = str(path)
    try:
        if file.stat().st_size > 1_000_000:
            raise FieldSpecError(f"{source}: <file>: expected a field file under 1 MB")
        raw = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise FieldSpecError(f"{source}: <file>: cannot read the file ({exc.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FieldSpecError(f"{source}: <file>: expected valid YAML ({exc})".splitlines()[0]) \
            from None
    return parse_field(raw, source, file.absolute().parent)
