"""Step lists written as text, such as ``"0,1,2,4,1000:5000:1000"``."""

from __future__ import annotations


def parse_steps(text: str, kind: str = "step", example: str = "0,1,2,4,1000:5000:1000") -> list[int]:
    """Return the sorted, unique steps of comma-separated steps and ``start:stop:stride`` ranges.

    A range includes its stop. ``kind`` and ``example`` go into the error message.

    Raises
    ------
    ValueError
        If an item is neither an integer nor a range with a stride of at least 1.
    """
    steps: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            if ":" in item:
                start, stop, stride = (int(part) for part in item.split(":"))
                if stride < 1:
                    raise ValueError
                steps.update(range(start, stop + 1, stride))
            else:
                steps.add(int(item))
        except ValueError:
            raise ValueError(
                f"invalid {kind} item {item!r} in {text!r}; use steps or start:stop:stride "
                f"ranges, e.g. {example!r}"
            ) from None
    return sorted(steps)
