"""The training corpus: Python's own documentation topics, as bytes.

``pydoc_data.topics`` ships with every CPython install (about 0.47 MB of English
reference text with code snippets), so an ensemble can be trained on real text with
no download. Tokens are bytes, so the vocabulary has 256 entries. The text changes
between Python releases, even patch releases, so runs record the corpus digest
(:func:`corpus_fingerprint`): the same seed on another corpus is a different run.
"""

from __future__ import annotations

import torch

VOCAB_SIZE = 256


def corpus_bytes() -> bytes:
    """Return the corpus text encoded as UTF-8, topics in sorted key order."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics)).encode("utf-8")


def corpus_fingerprint() -> dict:
    """Return the corpus source, the Python version that supplied it, its size and SHA-256."""
    import hashlib
    import platform

    data = corpus_bytes()
    return {
        "source": "pydoc_data.topics",
        "python": platform.python_version(),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def split_corpus(heldout_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the corpus into a training part and a held-out tail.

    Parameters
    ----------
    heldout_fraction : float
        Fraction of bytes, taken from the end of the corpus, kept for evaluation.

    Returns
    -------
    train, heldout : torch.Tensor
        1-D int64 tensors of byte values.
    """
    if not 0.0 < heldout_fraction < 0.5:
        raise ValueError(
            f"heldout_fraction must be in (0, 0.5), got {heldout_fraction}"
        )
    data = torch.frombuffer(bytearray(corpus_bytes()), dtype=torch.uint8).long()
    cut = int(len(data) * (1.0 - heldout_fraction))
    return data[:cut], data[cut:]


def sample_batch(
    data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``batch_size`` random windows of ``seq_len`` bytes, shape (batch, seq_len)."""
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
    return torch.stack([data[start : start + seq_len] for start in starts.tolist()])
