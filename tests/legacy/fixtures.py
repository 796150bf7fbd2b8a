"""Load the legacy cache documents ``make_fixtures.mjs`` writes (as the Node.js service stored them).

``generate(out_dir)`` runs the Node script and loads its output; ``shared_fixtures()`` does that once per
process (in a temporary folder). The result holds, per document, the BSON-typed document ready for
``insert_one`` (Int64, Double, Date and ObjectId exactly as the Node driver stored them) and what the
manifest says about it; per user, what Bytemark answers now (the "truth") and which passes a sync must
leave, change, remove and add::

    legacy = shared_fixtures()
    legacy.insert_into(mongo_db[collection_name])            # every document, or users=[...]
    user = legacy.user(71018)                                # ms timestamp + uuid keys + Mongoose extras
    serve_truth(simulator.admin, user)                       # Bytemark now answers user.truth, byte for byte
    seed_token(user.user_id, user.token)                     # then sync, and compare with user.truth.passes

Every user has the same story (uuids differ): at the legacy sync the cache held passes D, A, B, C and the
history E, F; Bytemark now answers D, A unchanged, B changed (activated), C gone from the current list
(it expired and is new in the history), G new; history C, E, F. See ``BytemarkTruth``.
"""

from __future__ import annotations

import copy
import enum
import functools
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from bson import ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

SCRIPT = Path(__file__).resolve().with_name("make_fixtures.mjs")
MANIFEST_FORMAT = "bytemark-legacy-fixtures/1"
NODE_TIMEOUT_SECONDS = 60.0

Pass = dict[str, Any]
ListName = Literal["passes", "passes4"]


class Shape(enum.StrEnum):
    """The legacy shapes a fixture document can carry (the names ``make_fixtures.mjs`` writes)."""

    SPEC_CONTROL = "spec_control"
    TIMESTAMP_MS_INT64 = "timestamp_ms_int64"
    TIMESTAMP_MS_DOUBLE = "timestamp_ms_double"
    TIMESTAMP_DOUBLE_FRACTION = "timestamp_double_fraction"
    TIMESTAMP_DATE = "timestamp_date"
    TIMESTAMP_STRING_ISO = "timestamp_string_iso"
    TIMESTAMP_STRING_NUMERIC = "timestamp_string_numeric"
    TIMESTAMP_MISSING = "timestamp_missing"
    ELEMENT_UUID_KEY = "element_uuid_key"
    ELEMENT_NO_PAYLOAD_HASH = "element_no_payload_hash"
    USER_ID_STRING = "user_id_string"
    DUPLICATE_USER = "duplicate_user"
    MONGOOSE_EXTRAS = "mongoose_extras"
    PASSES_LOG = "passes_log"
    ELEMENT_TIMESTAMP_MS = "element_timestamp_ms"
    ELEMENT_TIMESTAMP_MISSING = "element_timestamp_missing"
    ELEMENT_STATUS_MISSING = "element_status_missing"
    PASSES4_MISSING = "passes4_missing"


class LegacyFixturesError(RuntimeError):
    """Node is missing, the script failed, or its output does not match what the loader expects."""


@dataclass(frozen=True)
class ElementInfo:
    """One stored element of a legacy document, as the manifest describes it."""

    list: ListName
    index: int
    uuid: str
    status: str
    payload_hash: str
    """Node's md5(JSON.stringify(payload)) of the stored payload, also when the element has no hash field."""
    hash_stored: bool
    """Whether the element carries a ``payload_hash`` field."""


@dataclass(frozen=True)
class ListExpectation:
    """Pass uuids of one cache array, by what a sync against the truth must do with them."""

    unchanged: tuple[str, ...]
    changed: tuple[str, ...]
    gone: tuple[str, ...]
    new: tuple[str, ...]


@dataclass(frozen=True)
class LegacyDocument:
    """One document of the legacy collection."""

    index: int
    object_id: ObjectId
    user_id: int
    """The user's numeric id (the manifest's key), whatever type the document stores it as."""
    stored_user_id: int | str
    variant: str | None
    """``"older"`` / ``"newer"`` for the two documents of a duplicated user, else None."""
    shapes: tuple[Shape, ...]
    synced_at: datetime
    """The legacy service's last sync of this document (aware UTC), whatever form ``timestamp`` has."""
    elements: tuple[ElementInfo, ...]
    expected_passes: ListExpectation
    expected_passes4: ListExpectation
    """What a sync of this document alone against the truth must do to each array."""
    document: dict[str, Any]
    """The BSON-typed document. Shared: insert ``fresh()`` copies, never this object."""

    def fresh(self) -> dict[str, Any]:
        """A deep copy of the document to insert or mutate."""
        return copy.deepcopy(self.document)

    def has(self, shape: Shape) -> bool:
        """Whether the document carries ``shape``."""
        return shape in self.shapes


@dataclass(frozen=True)
class BytemarkTruth:
    """What Bytemark answers for the user now: v1 ``current`` and v4 ``expired`` (newest first).

    ``current`` / ``expired`` are ``json.loads`` of the wire texts, i.e. exactly what the Python service
    receives (``"amount": 5.0`` stays a float); ``*_wire`` are the texts themselves, to serve byte for byte.
    ``hashes`` maps each pass uuid to Node's md5(JSON.stringify(JSON.parse(wire))). ``passes`` and
    ``passes4`` say what a sync of the user's newest document must do with each pass uuid.
    """

    current: tuple[Pass, ...]
    expired: tuple[Pass, ...]
    current_wire: tuple[str, ...]
    expired_wire: tuple[str, ...]
    hashes: Mapping[str, str]
    passes: ListExpectation
    passes4: ListExpectation


@dataclass(frozen=True)
class LegacyUser:
    """A user of the fixtures: their documents (two for a duplicated user) and Bytemark's truth."""

    user_id: int
    token: str
    """A made-up Bytemark token for the simulator and MySQL (never in the documents)."""
    shapes: tuple[Shape, ...]
    documents: tuple[LegacyDocument, ...]
    newest: LegacyDocument
    """The document of the latest legacy sync (the only one, unless the user is duplicated)."""
    truth: BytemarkTruth


@dataclass(frozen=True)
class LegacyFixtures:
    """Everything ``make_fixtures.mjs`` wrote, loaded."""

    collection: str
    """The production collection name the documents come from (tests use their own names)."""
    truth_at: datetime
    """The moment the truth describes (aware UTC)."""
    shape_descriptions: Mapping[Shape, str]
    documents: tuple[LegacyDocument, ...]
    users: Mapping[int, LegacyUser]
    manifest: Mapping[str, Any]
    """The raw manifest.json."""

    def user(self, user_id: int) -> LegacyUser:
        """The user with that id (KeyError naming the known ids otherwise)."""
        try:
            return self.users[user_id]
        except KeyError:
            raise KeyError(f"no legacy user {user_id}; known: {sorted(self.users)}") from None

    def with_shape(self, shape: Shape) -> tuple[LegacyDocument, ...]:
        """Every document carrying ``shape`` (alone or in a combination)."""
        return tuple(document for document in self.documents if shape in document.shapes)

    def pure(self, shape: Shape) -> tuple[LegacyDocument, ...]:
        """The documents carrying ``shape`` and no other shape."""
        return tuple(document for document in self.documents if document.shapes == (shape,))

    def bson_documents(self, users: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Fresh copies of the documents (of ``users`` only, if given), in manifest order."""
        wanted = None if users is None else set(users)
        if wanted is not None and not wanted <= self.users.keys():
            raise KeyError(f"no legacy users {sorted(wanted - self.users.keys())}")
        return [doc.fresh() for doc in self.documents if wanted is None or doc.user_id in wanted]

    def insert_into(self, collection: Any, users: Iterable[int] | None = None) -> list[ObjectId]:
        """Insert the documents (of ``users`` only, if given) into a pymongo collection; their ``_id``s."""
        documents = self.bson_documents(users)
        if not documents:
            return []
        result = collection.insert_many(documents, ordered=True)
        return list(result.inserted_ids)


def serve_truth(admin: Any, user: LegacyUser) -> None:
    """Make a Bytemark simulator (its ``AdminClient``) answer ``user.truth`` for ``user.token``.

    The user is (re)created empty, then every pass is put verbatim from its wire text, in truth order.
    """
    admin.seed_user(user.user_id, user.token, current=0, expired=0)
    for wire in user.truth.current_wire:
        admin.put_pass(user.user_id, wire, "current", replace=False)
    for wire in user.truth.expired_wire:
        admin.put_pass(user.user_id, wire, "expired", replace=False)


def typed(value: Any) -> Any:
    """``value`` with every scalar tagged by its exact type and every mapping as its ordered items."""
    if isinstance(value, dict):
        return ("dict", [(key, typed(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("list", [typed(item) for item in value])
    return (type(value).__name__, value)


def node_executable() -> str:
    """The ``node`` on PATH, or LegacyFixturesError saying how to get one."""
    node = shutil.which("node")
    if node is None:
        raise LegacyFixturesError(
            f"`node` is not on PATH: the legacy fixtures are written by Node.js ({SCRIPT.name} needs "
            "Node 18+, no npm packages). Install Node.js or put it on PATH."
        )
    return node


def generate(out_dir: Path) -> LegacyFixtures:
    """Run ``make_fixtures.mjs`` into ``out_dir`` (created if needed) and load what it wrote."""
    command = [node_executable(), str(SCRIPT), str(out_dir)]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=NODE_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LegacyFixturesError(f"`{' '.join(command)}` could not run: {exc}") from exc
    if completed.returncode != 0:
        raise LegacyFixturesError(
            f"`{' '.join(command)}` exited with {completed.returncode}:\n{completed.stderr.strip()}"
        )
    return load(out_dir)


@functools.cache
def shared_fixtures() -> LegacyFixtures:
    """The fixtures generated once per process (in a temporary folder removed after loading)."""
    with tempfile.TemporaryDirectory(prefix="btc-legacy-") as folder:
        return generate(Path(folder))


def load(out_dir: Path) -> LegacyFixtures:
    """Load ``documents.json`` and ``manifest.json`` from ``out_dir`` (written by ``make_fixtures.mjs``)."""
    try:
        documents_text = (out_dir / "documents.json").read_text(encoding="utf-8")
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LegacyFixturesError(f"cannot read the legacy fixtures in {out_dir}: {exc}") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise LegacyFixturesError(f"manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    raw_documents = json_util.loads(documents_text, json_options=CANONICAL_JSON_OPTIONS)
    entries = manifest["documents"]
    if not isinstance(raw_documents, list) or len(raw_documents) != len(entries):
        raise LegacyFixturesError("documents.json and the manifest list different numbers of documents")

    known = {shape.value for shape in Shape}
    unknown = set(manifest["shapes"]) ^ known
    if unknown:
        raise LegacyFixturesError(f"the script and the loader disagree on the shapes: {sorted(unknown)}")

    documents = tuple(_document(entry, raw) for entry, raw in zip(entries, raw_documents, strict=True))
    users: dict[int, LegacyUser] = {}
    for key, user in manifest["users"].items():
        user_id = int(key)
        users[user_id] = LegacyUser(
            user_id=user_id,
            token=user["token"],
            shapes=tuple(Shape(name) for name in user["shapes"]),
            documents=tuple(documents[index] for index in user["documents"]),
            newest=documents[user["newest_document"]],
            truth=_truth(user),
        )
    return LegacyFixtures(
        collection=manifest["collection"],
        truth_at=_instant(manifest["truth_at"]),
        shape_descriptions={Shape(name): text for name, text in manifest["shapes"].items()},
        documents=documents,
        users=users,
        manifest=manifest,
    )


def _document(entry: dict[str, Any], raw: dict[str, Any]) -> LegacyDocument:
    object_id = ObjectId(entry["_id"])
    if raw.get("_id") != object_id:
        raise LegacyFixturesError(f"document {entry['index']} has _id {raw.get('_id')}, manifest {object_id}")
    return LegacyDocument(
        index=entry["index"],
        object_id=object_id,
        user_id=entry["user_id"],
        stored_user_id=entry["stored_user_id"],
        variant=entry["variant"],
        shapes=tuple(Shape(name) for name in entry["shapes"]),
        synced_at=_instant(entry["synced_at"]),
        expected_passes=_expectation(entry["expected"]["passes"]),
        expected_passes4=_expectation(entry["expected"]["passes4"]),
        elements=tuple(
            ElementInfo(
                list=cast(ListName, element["list"]),
                index=element["index"],
                uuid=element["uuid"],
                status=element["status"],
                payload_hash=element["payload_hash"],
                hash_stored=element["hash_stored"],
            )
            for element in entry["elements"]
        ),
        document=raw,
    )


def _truth(user: dict[str, Any]) -> BytemarkTruth:
    wire = user["truth_wire"]
    current = tuple(json.loads(text) for text in wire["current"])
    expired = tuple(json.loads(text) for text in wire["expired"])
    if list(current) != user["truth"]["current"] or list(expired) != user["truth"]["expired"]:
        raise LegacyFixturesError("the manifest's truth and truth_wire disagree")
    return BytemarkTruth(
        current=current,
        expired=expired,
        current_wire=tuple(wire["current"]),
        expired_wire=tuple(wire["expired"]),
        hashes=dict(user["truth_hashes"]),
        passes=_expectation(user["expected"]["passes"]),
        passes4=_expectation(user["expected"]["passes4"]),
    )


def _expectation(lists: dict[str, list[str]]) -> ListExpectation:
    return ListExpectation(
        unchanged=tuple(lists["unchanged"]),
        changed=tuple(lists["changed"]),
        gone=tuple(lists["gone"]),
        new=tuple(lists["new"]),
    )


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
