"""Adapters signed in the OpenSSF model-signing format: checked with the model-signing library's own command line.

Real parts only: a tiny adapter trained with trl, a real P-256 key, the library's `model_signing` CLI
in a subprocess (the tool a registry or an admission controller would run, with no Modelsmith code).
"""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

try:
    import model_signing  # noqa: F401
except ModuleNotFoundError as e:  # 1.1.1 imports pyOpenSSL without declaring it
    pytest.skip(f"the model-signing library cannot be imported ({e}): pip install 'model-signing==1.1.1' pyopenssl",
                allow_module_level=True)

from modelsmith.adapter_training import train_adapter
from modelsmith_cli.cli import main
from modelsmith.model_dir import directory_digest
from modelsmith.model_signature import (
    PRIVATE_KEY,
    PUBLIC_KEY,
    KeyPermissionError,
    ModelSignatureError,
    ModelSigningKey,
    verify,
)
from tests.unit.model.test_inference import model_dir, rows  # noqa: F401  (fixtures)
from tests.unit.repair.test_adapter_training import _recipe, training_rows  # noqa: F401  (fixtures)

CLI = Path(sys.executable).with_name("model_signing")


def _library_verify(model: Path, public_key: Path) -> subprocess.CompletedProcess:
    """The library's own command, exactly as its README gives it for key-signed models."""
    return subprocess.run([str(CLI), "verify", "key", "--signature", str(model / "model.sig"),
                           "--public_key", str(public_key), str(model)],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())


@pytest.fixture(scope="module")
def signed_adapter(tmp_path_factory, model_dir, training_rows):  # noqa: F811
    out = tmp_path_factory.mktemp("signed") / "adapter"
    key = ModelSigningKey(tmp_path_factory.mktemp("keys"))
    summary = train_adapter(model_dir, training_rows, out, _recipe(epochs=1), log=lambda _: None, sign=key.sign)
    return out, key, summary


def test_a_trained_adapter_verifies_with_the_librarys_own_cli_and_one_flipped_byte_fails_it(signed_adapter, tmp_path):
    adapter, key, _ = signed_adapter
    assert (adapter / "model.sig").is_file()
    ok = _library_verify(adapter, key.public_path)
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stdout + ok.stderr

    tampered = tmp_path / "tampered"
    shutil.copytree(adapter, tampered)
    weights = tampered / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    bad = _library_verify(tampered, key.public_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Hash mismatch for 'adapter_model.safetensors'" in bad.stderr

    other = ModelSigningKey(tmp_path / "other-keys")  # another P-256 key: not the signer
    assert _library_verify(adapter, other.public_path).returncode == 1


def test_the_signature_covers_every_file_but_the_card_and_leaves_the_digest_as_it_was(signed_adapter, tmp_path):
    adapter, key, summary = signed_adapter
    unsigned = tmp_path / "unsigned"
    shutil.copytree(adapter, unsigned)
    (unsigned / "model.sig").unlink()
    assert directory_digest(adapter) == directory_digest(unsigned) == summary["digest"]

    signature = verify(adapter, key.public_path)
    content = {p.name for p in adapter.iterdir() if p.name not in ("model.sig", "README.md")}
    assert signature.files == len(content) >= 2 and signature.key_id == key.key_id

    rewritten = tmp_path / "card"  # the benchmark delta rewrites the card after signing
    shutil.copytree(adapter, rewritten)
    (rewritten / "README.md").write_text("# a new card\n")
    assert _library_verify(rewritten, key.public_path).returncode == 0
    extra = tmp_path / "extra"  # a file slipped in after signing is not covered: refused
    shutil.copytree(adapter, extra)
    (extra / "payload.py").write_text("print('hi')\n")
    result = _library_verify(extra, key.public_path)
    assert result.returncode == 1 and "Extra files" in result.stderr


def test_modelsmith_model_verify_agrees_with_the_library(signed_adapter, tmp_path):
    adapter, key, _ = signed_adapter
    ok = CliRunner().invoke(main, ["model", "verify", str(adapter), "--public-key", str(key.public_path)])
    assert ok.exit_code == 0 and ok.output.startswith(f"OK {adapter}"), ok.output
    tampered = tmp_path / "t"
    shutil.copytree(adapter, tampered)
    (tampered / "adapter_config.json").write_text((tampered / "adapter_config.json").read_text() + " ")
    bad = CliRunner().invoke(main, ["model", "verify", str(tampered), "--public-key", str(key.public_path), "--json"])
    assert bad.exit_code == 1 and '"ok": false' in bad.output and "adapter_config.json" in bad.output


def test_the_p256_key_is_created_once_owner_only_and_refused_when_exposed(tmp_path):
    first = ModelSigningKey(tmp_path / "keys")
    private = tmp_path / "keys" / PRIVATE_KEY
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys" / PUBLIC_KEY).stat().st_mode) == 0o644
    assert ModelSigningKey(tmp_path / "keys").key_id == first.key_id  # loaded, not replaced
    private.chmod(0o640)
    with pytest.raises(KeyPermissionError, match="chmod 600"):
        ModelSigningKey(tmp_path / "keys")


def test_ensure_signed_re_signs_a_directory_another_key_signed(signed_adapter, tmp_path):
    adapter, _, _ = signed_adapter
    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    mine = ModelSigningKey(tmp_path / "mine")
    with pytest.raises(ModelSignatureError, match="does not verify"):
        verify(copy, mine.public_path)
    assert mine.ensure_signed(copy).key_id == mine.key_id
    assert _library_verify(copy, mine.public_path).returncode == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary signature left


def test_a_default_base_build_is_signed_after_its_card_and_keeps_its_digest(model_dir, tmp_path):  # noqa: F811
    """A complete build found under its build key (here the tiny model, recorded as that build) is reused,
    and signed when it has no signature yet (built before signing); its digest, the record's, is unchanged."""
    import json

    from modelsmith.base_model import PretrainConfig, build_default, build_key
    from modelsmith.pins import load_pins
    from scenario_data.policy import shipped_policy

    cfg, models = PretrainConfig(), tmp_path / "models" / "base"
    key = build_key(cfg, 10_000, shipped_policy(1).digest, load_pins().digest)
    built = models / key[:16]
    shutil.copytree(model_dir, built)
    (built / "README.md").write_text("# the base model's card\n")
    digest = directory_digest(built)
    (models / f"{key[:16]}.json").write_text(json.dumps({"digest": digest}))
    signer = ModelSigningKey(tmp_path / "keys")
    path, info = build_default(models, cfg, log=lambda _: None, sign=signer.ensure_signed)
    assert path == built and info["reused"] and directory_digest(path) == digest
    ok = _library_verify(path, signer.public_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
