"""A registry: the named entries of one kind (fine-tuning methods, training objectives, arena strategies), each entry
holding its own facts. A dict of name -> entry, plus registration that refuses a second entry of a name and a lookup
whose failure is one line naming the kind and the choices."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from core.errors import ConfigError


class Named(Protocol):
    name: str


T = TypeVar("T", bound=Named)


class Registry(dict[str, T], Generic[T]):
    """``kind``: what the entries are, as the error messages say it (``method``, ``objective``, ``strategy``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, entry: T) -> T:
        if entry.name in self:
            raise ValueError(f"{self.kind} {entry.name} is registered twice")
        self[entry.name] = entry
        return entry

    def lookup(self, name: object) -> T:
        """The entry ``name``; ConfigError ``"<kind>: unknown <kind> 'x'; choose one of a, b"`` otherwise."""
        try:
            return self[name]  # type: ignore[index]
        except (KeyError, TypeError):
            raise ConfigError(f"{self.kind}: unknown {self.kind} {name!r}; choose one of {', '.join(self)}") from None
