"""A safe on-disk result cache (seed 000 §3.2): PNG + JSON per entry, no pickle, LRU-bounded.

The key covers everything that changes the image: model id and revision, recipe, prompt, negative
prompt, seed, steps, guidance, size and scheduler. An entry whose files are missing, unreadable or do
not match their key is a miss, and is replaced on the next ``put``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._checks import LabError, read_file_bytes, writable_dir
from .results import Record, atomic_write_bytes

META_LIMIT = 2**20  # bytes of one entry's metadata
IMAGE_LIMIT = 256 * 2**20  # bytes of one cached PNG


@dataclass(frozen=True)
class CacheKey:
    model: str
    prompt: str
    seed: int
    steps: int
    guidance: float
    height: int
    width: int
    scheduler: str
    recipe: str = ""
    negative_prompt: str = ""
    revision: str = ""

    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class CacheStats(Record):
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    evictions: int = 0
    puts: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass
class ResultCache:
    """Images keyed by ``CacheKey`` under ``directory``; at most ``max_entries`` (least recently used out)."""

    directory: str | os.PathLike
    max_entries: int = 1000
    stats: CacheStats = field(default_factory=CacheStats)
    read_only: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_entries, bool) or not isinstance(self.max_entries, int) or self.max_entries < 1:
            raise LabError(f"max_entries must be an integer >= 1, got {self.max_entries!r}")
        try:
            self.directory = writable_dir(self.directory)
        except LabError:
            if not Path(self.directory).is_dir():
                raise
            # an existing folder we cannot write (a read-only mount, a colleague's cache): hits still serve
            self.directory = Path(self.directory)
            self.read_only = True
            warnings.warn(f"cache {str(self.directory)!r} is not writable: cached images are served, new ones are "
                          "not stored", stacklevel=3)

    def _paths(self, key: CacheKey) -> tuple[Path, Path]:
        digest = key.digest()
        return self.directory / f"{digest}.png", self.directory / f"{digest}.json"

    def get(self, key: CacheKey):
        """The cached PIL image, or None (a miss). A malformed entry (metadata that is not the key's object,
        a PNG whose sha256 differs from the one stored, unreadable files) counts as corrupt and as a miss,
        and is removed where the cache is writable."""
        import io

        from PIL import Image

        png, meta = self._paths(key)
        if not png.exists() and not meta.exists():
            self.stats.misses += 1
            return None
        try:
            # bounded reads: a FIFO, a device or an oversized file is a corrupt entry (LabError is a ValueError)
            stored = json.loads(read_file_bytes(meta, "cache metadata", META_LIMIT).decode("utf-8"))
            if not isinstance(stored, dict) or stored.get("key") != asdict(key):
                raise ValueError("metadata does not match the key")
            data = read_file_bytes(png, "cached image", IMAGE_LIMIT)
            # Another entry's valid PNG swapped in would decode fine: only the stored hash tells.
            if stored.get("sha256") != hashlib.sha256(data).hexdigest():
                raise ValueError("image bytes do not match the stored sha256")
            with Image.open(io.BytesIO(data)) as img:
                image = img.convert("RGB")
                image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # SyntaxError: some broken headers
            self.stats.corrupt += 1
            self.stats.misses += 1
            for path in (png, meta) if not self.read_only else ():
                with contextlib.suppress(OSError):  # a read-only cache: count the miss, keep going
                    if path.is_file() or path.is_symlink():
                        path.unlink()
            return None
        with contextlib.suppress(OSError):  # recency for LRU eviction; a read-only cache still serves hits
            os.utime(meta)
        self.stats.hits += 1
        return image

    def put(self, key: CacheKey, image, metadata: dict | None = None) -> None:
        """Store an image atomically (temporary files, then rename), then evict beyond ``max_entries``."""
        import io

        png, meta = self._paths(key)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        record = {**(metadata or {}), "key": asdict(key), "sha256": hashlib.sha256(data).hexdigest()}
        for target in (png, meta):
            if target.is_dir():  # something else took the entry's name: clear it, the entry is ours
                shutil.rmtree(target)
        # PNG first, metadata last: an entry is only valid once both exist and the hash matches.
        atomic_write_bytes(png, data)
        atomic_write_bytes(meta, json.dumps(record, ensure_ascii=False).encode("utf-8"))
        self.stats.puts += 1
        self._evict()

    def _evict(self) -> None:
        def mtime(path: Path) -> float:
            try:
                return path.stat().st_mtime
            except OSError:  # removed meanwhile (another process evicted it)
                return 0.0

        entries = sorted(self.directory.glob("*.json"), key=mtime)
        for meta in entries[: max(0, len(entries) - self.max_entries)]:
            with contextlib.suppress(OSError):
                meta.unlink(missing_ok=True)
                meta.with_suffix(".png").unlink(missing_ok=True)
                self.stats.evictions += 1

    def __len__(self) -> int:
        return len(list(self.directory.glob("*.json")))

    def generate(self, pipe, case, *, recipe: str = "", revision: str = ""):
        """``case``'s image from the cache, or generated by ``pipe`` and stored; returns (image, hit)."""
        import torch

        from .models import default_size

        size = default_size(pipe)
        key = CacheKey(model=getattr(pipe, "lab_model", type(pipe).__name__), prompt=case.prompt, seed=case.seed,
                       steps=case.steps, guidance=float(case.guidance), height=case.height or size,
                       width=case.width or size, scheduler=type(pipe.scheduler).__name__, recipe=recipe,
                       negative_prompt=case.negative_prompt or "", revision=revision)
        image = self.get(key)
        if image is not None:
            return image, True
        image = pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **case.pipeline_kwargs()).images[0]
        if self.read_only:
            warnings.warn(f"image not cached: {str(self.directory)!r} is not writable", stacklevel=2)
            return image, False
        try:
            self.put(key, image)
        except OSError as err:  # a full disk or a read-only remount: the image is still the caller's
            warnings.warn(f"image not cached in {str(self.directory)!r}: {err.strerror or err}", stacklevel=2)
        return image, False
