"""Disk full: writing an evidence bundle where there is no room fails clearly and leaves nothing.

Two ways to run out of room: a real 64 KiB tmpfs mounted for the test (needs root; skipped
otherwise), and RLIMIT_FSIZE in a child process (any user: a file may not grow past the limit, so
a write fails with EFBIG). Either way the error names the errno and the file, the bundle is not
there (no directory, no tar, no temp), and once there is room the same bundle is written with the
digest of a bundle written where room was never short.
"""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from modelsmith.attest import write_bundle
from modelsmith.bundle_verify import verify_bundle
from modelsmith.model_dir import file_sha256
from modelsmith.engines.signer import Ed25519Signer
from tests.drills.fault_support import PYTHON, REPO

SUMMARY = {"cycle": "c1", "candidate": "a" * 64, "champion": "b" * 64, "offer_for_promotion": True}
PREDICATE = ("pins", "https://in-toto.io/attestation/test-result/v0.1", {"result": "PASSED"})


def _adapter(root: Path, size: int) -> Path:
    d = root / "adapter_src"
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text('{"r": 8}')
    (d / "adapter_model.safetensors").write_bytes(bytes(range(256)) * (size // 256))
    return d


def _write(bundles: Path, adapter: Path, keys: Path):
    return write_bundle(bundles / "c1", {"report.html": b"<html>the candidate</html>"}, adapter, [PREDICATE], SUMMARY,
                        Ed25519Signer(keys))


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs at tmp_path/full, unmounted afterwards; skipped where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; test_bundle_past_a_file_size_limit covers disk full "
                    "for any user")
    mnt = tmp_path / "full"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "test_bundle_past_a_file_size_limit covers disk full without it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _nothing_left(bundles: Path) -> None:
    assert sorted(os.listdir(bundles)) == []  # no bundle, no tar, no temp directory or file


def test_bundle_on_a_full_disk_fails_naming_enospc_and_the_path_then_succeeds_with_room(tmp_path, small_fs):
    keys = tmp_path / "keys"
    reference = _write(tmp_path / "roomy", _adapter(tmp_path / "a1", 24 * 1024), keys)
    ref_tar = file_sha256(reference.tar)

    # 1: the adapter alone does not fit: the directory is never published.
    big = _adapter(tmp_path / "a2", 200 * 1024)
    bundles = small_fs / "bundles"
    with pytest.raises(OSError) as failed:
        _write(bundles, big, keys)
    message = str(failed.value)
    assert failed.value.errno == errno.ENOSPC and "ENOSPC" in message and "No space left on device" in message
    assert "adapter_model.safetensors" in message and f"bundle {bundles / 'c1'} not written" in message
    _nothing_left(bundles)

    # 2: the directory fits, its tar does not: the failed call takes the directory back too.
    with pytest.raises(OSError) as failed:
        _write(bundles, _adapter(tmp_path / "a1", 24 * 1024), keys)
    assert failed.value.errno == errno.ENOSPC and "c1.tar" in str(failed.value) and "ENOSPC" in str(failed.value)
    _nothing_left(bundles)

    # With room (the same mount, grown), the same inputs give the reference bundle, byte for byte.
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_fs)], check=True)
    info = _write(bundles, _adapter(tmp_path / "a1", 24 * 1024), keys)
    assert info.digest == reference.digest and file_sha256(info.tar) == ref_tar
    assert verify_bundle(info.tar, (keys / "ed25519.pub").read_text()).ok


def test_bundle_past_a_file_size_limit(tmp_path):
    """RLIMIT_FSIZE in a child (SIGXFSZ ignored, so the write fails with EFBIG instead of killing it)."""
    keys = tmp_path / "keys"
    Ed25519Signer(keys)  # the key exists before the limit applies
    adapter = _adapter(tmp_path / "a", 200 * 1024)
    bundles = tmp_path / "bundles"
    code = f"""
import json, resource, signal
from pathlib import Path
from tests.drills.test_disk_full import _write
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    _write(Path({str(bundles)!r}), Path({str(adapter)!r}), Path({str(keys)!r}))
except OSError as e:
    print(json.dumps({{"errno": e.errno, "message": str(e)}}))
"""
    done = subprocess.run([PYTHON, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["errno"] == errno.EFBIG and "EFBIG" in outcome["message"] and "File too large" in outcome["message"]
    assert "adapter_model.safetensors" in outcome["message"] and "bundle" in outcome["message"]
    _nothing_left(bundles)
