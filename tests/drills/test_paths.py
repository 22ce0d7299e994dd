"""Bad-input drill: paths cannot escape their directories (bundles, replay directories, payload names).

Already covered in tests/unit/bundle/test_attest.py and not repeated here: tar members `../evil.txt`
and `/tmp/evil.txt`, one symbolic link, one hard link and a duplicate member (test_unsafe_tars_are_refused);
payload names "", "a/b", "..", and the reserved names (test_bad_payload_names_are_refused); one
symlinked file in a bundle directory (test_missing_and_extra_files_are_detected).

Added here: device files, FIFOs, unknown member types, pax `path`/`linkpath` overrides, GNU long
names climbing out, backslash and NUL names, links aimed through a linked directory, `./` doubles;
in a bundle directory: a symlinked sub-directory, a symlink loop, FIFOs and sockets, a hard link to a
file outside; in a replay directory: symlinks to files and directories outside, to /dev/zero, FIFOs,
loops; and more payload and attestation names. Every case runs with TMPDIR pointed at an empty
directory, and afterwards nothing exists outside it but what the test made.
"""

import io
import os
import socket
import tarfile
import tempfile
from pathlib import Path

import pytest

from modelsmith.attest import write_bundle
from modelsmith.bundle_verify import verify_bundle
from modelsmith.engines.signer import Ed25519Signer
from scenario_data.chunks import IngestError, expand_paths
from scenario_data.ingest import ingest_paths
from tests.drills.input_support import real_requests, write_jsonl

pytestmark = pytest.mark.timeout(60)  # a FIFO or /dev/zero that was read would hang: the timeout says so


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Ed25519Signer:
    return Ed25519Signer(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, keys):
    base = tmp_path_factory.mktemp("bundle")
    adapter = base / "src-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}\n')
    info = write_bundle(base / "cycle-3", {"diagnosis.json": b'{"h": 1}\n', "report.html": b"<html/>\n"}, adapter,
                        [("pins", "https://modelsmith.dev/pins/v1", {"passed": True})], {"cycle": "3"}, keys)
    return info


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """TMPDIR (where the verifier extracts) is an empty directory of its own; `outside` is where escapes would land."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    outside = tmp_path / "outside"
    outside.mkdir()
    return tmp_path, tmpdir, outside


def _everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _tar_with(base: Path, bundle, extras: list[tuple[tarfile.TarInfo, bytes]], fmt=tarfile.GNU_FORMAT) -> Path:
    out = base / "evil.tar"
    with tarfile.open(bundle.tar) as src, tarfile.open(out, "w", format=fmt) as tar:
        for m in src.getmembers():
            tar.addfile(m, src.extractfile(m) if m.isreg() else None)
        for info, data in extras:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", pax: dict | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if pax:
        info.pax_headers = pax
    return info


UNSAFE_MEMBERS = {  # case: (members, tar format, what the refusal says about the member)
    "character device": ([(_member("cycle-3/tty", tarfile.CHRTYPE), b"")], tarfile.GNU_FORMAT, "not a plain file"),
    "block device": ([(_member("cycle-3/sda", tarfile.BLKTYPE), b"")], tarfile.GNU_FORMAT, "not a plain file"),
    "fifo": ([(_member("cycle-3/pipe", tarfile.FIFOTYPE), b"")], tarfile.GNU_FORMAT, "not a plain file"),
    "unknown type": ([(_member("cycle-3/odd", b"Z"), b"x")], tarfile.GNU_FORMAT, "not a plain file"),
    "pax path climbs out": ([(_member("cycle-3/ok.txt", pax={"path": "../../pax-evil.txt"}), b"evil")],
                            tarfile.PAX_FORMAT, "escapes the bundle directory"),
    "pax absolute path": ([(_member("cycle-3/ok.txt", pax={"path": "/tmp/pax-evil.txt"}), b"evil")],
                          tarfile.PAX_FORMAT, "absolute"),
    "pax symlink target": ([(_member("cycle-3/l", tarfile.SYMTYPE, pax={"linkpath": "/etc/passwd"}), b"")],
                           tarfile.PAX_FORMAT, "is a link"),
    "long name climbs out": ([(_member("cycle-3/" + "a/" * 60 + "../" * 70 + "long-evil.txt"), b"evil")],
                             tarfile.GNU_FORMAT, "escapes the bundle directory"),
    "backslashes": ([(_member("cycle-3\\..\\..\\win-evil.txt"), b"evil")], tarfile.GNU_FORMAT, "non-POSIX"),
    "link through a linked directory": ([(_member("cycle-3/up", tarfile.SYMTYPE, linkname=".."), b""),
                                         (_member("cycle-3/up/escaped.txt"), b"evil")], tarfile.GNU_FORMAT,
                                        "is a link"),
    "hard link to a member": ([(_member("cycle-3/copy", tarfile.LNKTYPE, linkname="cycle-3/report.html"), b"")],
                              tarfile.GNU_FORMAT, "is a link"),
    "dot-slash double": ([(_member("./cycle-3/./report.html"), b"<html>other</html>")], tarfile.GNU_FORMAT,
                         "appears twice"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_MEMBERS))
def test_unsafe_tar_members_are_refused_and_nothing_is_extracted(sandbox, bundle, keys, case):
    base, tmpdir, outside = sandbox
    members, fmt, says = UNSAFE_MEMBERS[case]
    tar = _tar_with(base, bundle, members, fmt)
    before = _everything(base)
    report = verify_bundle(tar, keys.public_key_pem())
    assert not report.ok and len(report.errors) == 1, report.errors
    assert report.errors[0].startswith("evil.tar: refused, nothing extracted:") and says in report.errors[0]
    assert _everything(base) == before  # nothing new anywhere under the test's directory
    assert list(tmpdir.iterdir()) == []  # the extraction directory is gone
    assert not Path("/tmp/pax-evil.txt").exists()


def test_a_nul_in_a_member_name_is_refused(sandbox, bundle, keys):
    base, tmpdir, _ = sandbox
    raw = bytearray(_tar_with(base, bundle, [(_member("cycle-3/nulXname"), b"x")]).read_bytes())
    at = raw.index(b"cycle-3/nulXname")
    raw[at + len("cycle-3/nul")] = 0  # tarfile will not write a NUL; a hostile tar has one anyway
    header = at - at % 512
    raw[header + 148:header + 156] = b" " * 8  # the header checksum, recomputed, so tarfile reads the member
    raw[header + 148:header + 156] = b"%06o\0 " % sum(raw[header:header + 512])
    tar = base / "nul.tar"
    tar.write_bytes(bytes(raw))
    with tarfile.open(tar) as t:
        assert "cycle-3/nul" in t.getnames()  # the name ends at the NUL
    report = verify_bundle(tar, keys.public_key_pem())
    assert not report.ok and "nul: not a subject of bundle.dsse.json (extra file)" in report.errors, report.errors
    assert list(tmpdir.iterdir()) == []


# --- the directory form ---

def _copy(bundle, base: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle.path, base / "copy"))


def test_a_symlinked_subdirectory_is_reported_not_followed(sandbox, bundle, keys):
    base, _, outside = sandbox
    root = _copy(bundle, base)
    import shutil

    shutil.move(root / "adapter", outside / "adapter")
    (root / "adapter").symlink_to(outside / "adapter", target_is_directory=True)  # same files, reached by a link
    report = verify_bundle(root, keys.public_key_pem())
    assert not report.ok
    assert "adapter: is a symbolic link, not a file" in report.errors
    assert "adapter/adapter_config.json: missing" in report.errors  # not read through the link


def test_a_symlink_loop_and_special_files_are_reported_without_blocking(sandbox, bundle, keys):
    base, _, _ = sandbox
    root = _copy(bundle, base)
    (root / "attestations" / "loop").symlink_to(root / "attestations" / "loop")
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "sock"))
        report = verify_bundle(root, keys.public_key_pem())
    finally:
        sock.close()
    assert not report.ok
    assert "attestations/loop: is a symbolic link, not a file" in report.errors
    assert "pipe: is not a regular file (a FIFO, socket or device); a bundle holds files only" in report.errors
    assert "sock: is not a regular file (a FIFO, socket or device); a bundle holds files only" in report.errors


def test_a_hard_link_is_just_the_same_bytes(sandbox, bundle, keys):
    """A hard link in a directory is a regular file: it can only be read, and its bytes are checked like any."""
    base, _, outside = sandbox
    root = _copy(bundle, base)
    (outside / "report.html").write_bytes(b"<html>not the signed report</html>\n")
    (root / "report.html").unlink()
    os.link(outside / "report.html", root / "report.html")
    report = verify_bundle(root, keys.public_key_pem())
    assert not report.ok and any(e.startswith("report.html: sha256 mismatch") for e in report.errors)


# --- names given to write_bundle ---

@pytest.mark.parametrize("name", [".", "./x", "a\\b", "/etc/passwd", "x\x00y", "répört.html", " ", "a b", "..\\x",
                                  "~", "x" * 201, "report.html/"])
def test_more_bad_payload_names_are_refused_before_anything_is_written(tmp_path, keys, name):
    with pytest.raises(ValueError, match="name"):
        write_bundle(tmp_path / "b", {name: b"x"}, None, [], {}, keys)
    with pytest.raises(ValueError, match="attestation name"):
        write_bundle(tmp_path / "b", {"ok.txt": b"x"}, None, [(name, "https://x/p/v1", {})], {}, keys)
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary directory


def test_adapter_directory_links_and_fifos(tmp_path, keys):
    """Links to files are copied as files (documented); a FIFO in the adapter directory is refused."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    secret = tmp_path / "outside.txt"
    secret.write_text("outside the adapter directory\n")
    (adapter / "weights.bin").symlink_to(secret)
    info = write_bundle(tmp_path / "b1", {"x.txt": b"x"}, adapter, [], {}, keys)
    copied = info.path / "adapter" / "weights.bin"
    assert not copied.is_symlink() and copied.read_text() == "outside the adapter directory\n"
    assert verify_bundle(info.path, keys.public_key_pem()).ok
    os.mkfifo(adapter / "pipe")
    with pytest.raises(ValueError, match="pipe in the adapter directory is not a regular file"):
        write_bundle(tmp_path / "b2", {"x.txt": b"x"}, adapter, [], {}, keys)
    assert not (tmp_path / "b2").exists()


# --- replay directories ---

@pytest.fixture
def replay(tmp_path, realdata):
    bodies = [b for _, b in real_requests(realdata)]
    root = tmp_path / "replay"
    (root / "day1").mkdir(parents=True)
    write_jsonl(root / "day1" / "a.jsonl", bodies[:10])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write_jsonl(outside / "secret.jsonl", bodies[10:20])
    return root, outside


def test_a_symlink_to_a_file_outside_the_replay_directory_is_refused(replay):
    root, outside = replay
    (root / "linked.jsonl").symlink_to(outside / "secret.jsonl")
    with pytest.raises(IngestError) as e:
        ingest_paths([root])
    assert str(e.value).startswith(f"{root / 'linked.jsonl'}: a symbolic link to {outside / 'secret.jsonl'}")
    assert "outside" in str(e.value)


def test_links_inside_the_directory_are_read_and_linked_directories_are_not_followed(replay):
    root, outside = replay
    (root / "again.jsonl").symlink_to(root / "day1" / "a.jsonl")  # inside: fine (its rows get #file:line ids)
    (root / "linkdir").symlink_to(outside, target_is_directory=True)  # a directory outside: not walked
    (root / "day1" / "loop").symlink_to(root, target_is_directory=True)  # a loop: not walked either
    files = expand_paths([root])
    assert [f.relative_to(root).as_posix() for f in files] == ["again.jsonl", "day1/a.jsonl"]
    result = ingest_paths([root])
    assert result.requests_in == 20 and result.features["row_id"].n_unique() == result.features.height


def test_fifos_devices_and_dangling_links_in_a_replay_directory_are_never_opened(replay):
    root, _ = replay
    os.mkfifo(root / "pipe.jsonl")  # opening it would block forever
    (root / "zero.jsonl").symlink_to("/dev/zero")  # reading it would never end
    (root / "gone.jsonl").symlink_to(root / "deleted.jsonl")
    result = ingest_paths([root])
    assert result.requests_in == 10 and result.files == [str(root / "day1" / "a.jsonl")]
    for path, says in ((root / "pipe.jsonl", "not a regular file"), (root / "zero.jsonl", "not a regular file"),
                       (root / "gone.jsonl", "no such file")):
        with pytest.raises(IngestError) as e:  # named explicitly: refused, still never opened
            ingest_paths([path])
        assert str(e.value) == f"{path}: {says}" + (" or directory" if says != "no such file" else " or directory")
