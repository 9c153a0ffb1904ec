"""Extensible vocabularies of string ids (units, sessions).

Row 0 of every vocabulary is reserved (``"<blank>"``): for units it is the blank token that an
empty chunk carries, for sessions it is unused. Ids are strings such as ``"session/unit"``; a
vocabulary maps each to a stable row of an embedding table. Extending appends rows and never moves
existing ones, so embeddings stay attached to their ids; subsetting and loading remap rows by id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from possm_plugin.errors import ConfigError, UnknownUnitError

__all__ = ["Vocabulary", "BLANK"]

BLANK = "<blank>"


class Vocabulary:
    """An ordered mapping ``id -> row``; row 0 is :data:`BLANK`.

    Args:
        ids: the ids for rows 1, 2, ... in order (the blank row is added).
        kind: what the ids name ("unit" or "session"), used in error messages.
    """

    def __init__(self, ids: Iterable[str] = (), *, kind: str = "unit") -> None:
        self.kind = kind
        self._ids: list[str] = [BLANK]
        self._index: dict[str, int] = {BLANK: 0}
        self.extend(ids)

    # -- queries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __iter__(self):
        return iter(self._ids[1:])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._ids == other._ids

    def __repr__(self) -> str:
        return f"Vocabulary(kind={self.kind!r}, size={len(self) - 1})"

    @property
    def ids(self) -> list[str]:
        """The ids in row order, without the blank row."""
        return list(self._ids[1:])

    def index(self, key: str) -> int:
        """The row of ``key``; raises :class:`UnknownUnitError` if it is unknown."""
        try:
            return self._index[key]
        except KeyError:
            raise UnknownUnitError(
                f"{self.kind} id {key!r} is not in the vocabulary ({len(self) - 1} known); "
                f"extend the vocabulary (fine-tune with `possm finetune --mode ui`) to add it",
                [key],
            ) from None

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Rows of many ids at once (int64). Unknown ids raise one error that lists them all."""
        out = np.empty(len(keys), dtype=np.int64)
        unknown = []
        for i, k in enumerate(keys):
            row = self._index.get(k)
            if row is None:
                unknown.append(k)
                row = -1
            out[i] = row
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:8])
            more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
            raise UnknownUnitError(
                f"{len(unknown)} {self.kind} id(s) not in the vocabulary: {shown}{more}; "
                f"calibrate them by unit identification (`possm finetune --mode ui`, or "
                f"`possm-lsl --calibrate SECONDS --labels STREAM`)",
                unknown,
            )
        return out

    # -- changes ---------------------------------------------------------------------------
    def extend(self, ids: Iterable[str]) -> list[str]:
        """Append the ids not yet known, in order; returns the ids that were added."""
        added = []
        for key in ids:
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{self.kind} ids must be non-empty strings, got {key!r}")
            if key in self._index:
                continue
            self._index[key] = len(self._ids)
            self._ids.append(key)
            added.append(key)
        return added

    def subset(self, ids: Iterable[str]) -> tuple["Vocabulary", np.ndarray]:
        """A new vocabulary with only ``ids`` (in the given order) and the old rows they came from.

        The returned row array includes row 0 (the blank) first, so ``new_table = old_table[rows]``.
        """
        ids = list(ids)
        rows = self.lookup(ids)
        return Vocabulary(ids, kind=self.kind), np.concatenate([[0], rows]).astype(np.int64)

    def to_list(self) -> list[str]:
        return self.ids

    @classmethod
    def from_list(cls, ids: Sequence[str], *, kind: str = "unit") -> "Vocabulary":
        ids = list(ids)
        if ids and ids[0] == BLANK:
            ids = ids[1:]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{kind} vocabulary has duplicated ids")
        return cls(ids, kind=kind)
