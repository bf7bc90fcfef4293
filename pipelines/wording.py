"""How sfbatches says a count to a person: the number, then the noun in the right number."""


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """'1 batch', '2 batches', '1,123 pages': the count, then the noun in the right number.

    The plural is made the regular English way unless given (`plural`); in a phrase like
    'ended batch' the last word takes it.
    """
    return f"{count:,} {noun if count == 1 else plural or plural_of(noun)}"


def plural_of(noun: str) -> str:
    """batch -> batches, page -> pages, entry -> entries, day -> days."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u", ""):
        return noun[:-1] + "ies"
    return noun + "s"
