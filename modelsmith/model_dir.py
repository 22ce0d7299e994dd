"""Model versions: directories named by the digest of their files, and a registry of them.

A model version is a base model directory or a LoRA adapter directory (on one base). Its name is
the SHA-256 of a manifest of its files (relative path and SHA-256 of each; the model card and the
model-signing signature aside),
so the same weights have the same name wherever they were produced. The registry records, per digest, where the
directory is and what it is. Which version is the champion is `modelsmith.champion`'s record.
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from modelsmith.atomic import write_text


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MODEL_CARD = "README.md"  # documentation, filled after training (pins before/after): not part of the name
# The OpenSSF model-signing signature (modelsmith.model_signature): a statement about the files, written
# after them, so not one of them; signing (or re-signing with another key) never renames a version.
SIGNATURE_FILE = "model.sig"
NOT_CONTENT = (MODEL_CARD, SIGNATURE_FILE)


def manifest(directory: Path) -> list[tuple[str, str]]:
    """(relative path, sha256) of every regular file, sorted; hidden files and folders, the model card and
    the signature are not content."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    out = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts) and rel.as_posix() not in NOT_CONTENT:
            out.append((rel.as_posix(), file_sha256(path)))
    if not out:
        raise FileNotFoundError(f"model directory {directory} has no files")
    return out


def directory_digest(directory: Path) -> str:
    lines = "".join(f"{sha}  {rel}\n" for rel, sha in manifest(directory))
    return hashlib.sha256(lines.encode()).hexdigest()


class ModelDirError(ValueError):
    """A model directory that cannot be loaded; the message names the file and the fix."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def check_model_dir(path: str | Path) -> Path:
    """Refuse, in one line, a directory `from_pretrained` would fail on with a long traceback."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelDirError(f"{path}: no such directory; give a Hugging Face model directory "
                            "(config.json, weights, tokenizer files)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelDirError(f"{config_file} not found: not a Hugging Face model directory; "
                            "write one with model.save_pretrained(DIR)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{config_file} is not valid JSON ({e}); restore it from the model's original files") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ModelDirError(f"{config_file} names no model_type; restore it from the model's original files")
    if not (any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))):
        raise ModelDirError(f"{path}: no weights (model.safetensors or pytorch_model.bin); "
                            "write them with model.save_pretrained(DIR)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelDirError(f"{path}: no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); save the model's tokenizer "
                            "beside its weights with tokenizer.save_pretrained(DIR)")
    return path


def short(digest: str) -> str:
    """The name a partition key and a UI show: 16 hex digits are plenty to tell versions apart."""
    return digest[:16]


@dataclass(frozen=True)
class ModelVersion:
    digest: str
    kind: str  # "base" or "adapter"
    path: str
    base: str | None = None  # the base model's digest, for an adapter
    created: str = ""

    @property
    def key(self) -> str:
        return short(self.digest)


class Registry:
    """Model versions known to this Modelsmith home, looked up by full digest or partition key."""

    def __init__(self, home: Path):
        self.root = Path(home) / "registry"

    def register(self, path: Path, kind: str, base: str | None = None, digest: str | None = None) -> ModelVersion:
        if kind not in ("base", "adapter"):
            raise ValueError(f"kind must be 'base' or 'adapter', not {kind!r}")
        path = Path(path).resolve()
        digest = digest or directory_digest(path)
        existing = self.find(digest)
        if existing and Path(existing.path).is_dir():
            return existing
        version = ModelVersion(digest, kind, str(path), base, datetime.now(UTC).isoformat(timespec="seconds"))
        write_text(self.root / f"{digest}.json", json.dumps(asdict(version), indent=2))
        return version

    def find(self, key: str) -> ModelVersion | None:
        if not self.root.is_dir():
            return None
        exact = self.root / f"{key}.json"
        matches = [exact] if exact.exists() else sorted(self.root.glob(f"{key}*.json"))
        if len(matches) > 1:
            raise ValueError(f"model version key {key!r} is ambiguous: {[m.stem for m in matches]}")
        return ModelVersion(**json.loads(matches[0].read_text())) if matches else None

    def get(self, key: str) -> ModelVersion:
        version = self.find(key)
        if version is None:
            raise KeyError(f"no model version {key!r} in {self.root}; materialise base_model (or an adapter) first")
        return version

    def all(self) -> list[ModelVersion]:
        if not self.root.is_dir():
            return []
        return [ModelVersion(**json.loads(p.read_text())) for p in sorted(self.root.glob("*.json"))]
