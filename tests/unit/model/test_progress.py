"""Progress of long CLI work: the plain modules count through a callback; the CLI draws a bar only at a terminal.

`scenarios generate`, `scenarios ingest` and `pins run` were silent until done. The bar (tqdm, on stderr)
is for a person watching; piped or captured output (CliRunner, a log file) and --json stay as they were.
"""

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import polars as pl
from click.testing import CliRunner

from modelsmith_cli.cli import main
from modelsmith.pin_runs import pin
from modelsmith.pins import load_pins
from modelsmith.engines.inference import TransformersEngine
from scenario_data.generator import label_requests, write_pack
from scenario_data.ingest import ingest_to_files
from scenario_data.policy import POLICIES_DIR, shipped_policy
from tests.unit.model.test_inference import model_dir, rows  # noqa: F401  (fixtures)

# Our bars' marks (transformers draws its own "Loading weights" bar on every model load, terminal or not).
BAR_MARKS = ("generate:", "ingest:", "decide:", "requests/s", "rows/s")


def test_generate_and_ingest_report_every_request_once(tmp_path):
    told: list[int] = []
    pack = write_pack(tmp_path / "pack.jsonl", 2_500, 7, shipped_policy(1), progress=told.append)
    assert sum(told) == 2_500 and len(told) == 1  # one batch (20 000 a batch) of 2 500
    assert (tmp_path / "pack.jsonl").read_bytes() == write_pack(tmp_path / "again.jsonl", 2_500, 7,
                                                                shipped_policy(1)).read_bytes()  # same bytes

    chunks: list[int] = []
    summary = ingest_to_files([pack], tmp_path / "out", chunk_lines=1_000, progress=chunks.append)
    assert chunks == [1_000, 1_000, 500] and sum(chunks) == summary["requests_in"] == 2_500


def test_pin_counts_rows_in_whole_micro_batches_and_decides_as_one_call(model_dir, rows):  # noqa: F811
    engine = TransformersEngine(model_dir, batch_size=3)
    labelled = pl.concat([rows] * 20)
    told: list[int] = []
    counted = pin(engine, labelled, load_pins(), "v", "s", progress=told.append)
    plain = pin(engine, labelled, load_pins(), "v", "s")
    whole, rest = divmod(labelled.height, 510)  # slices of 510 rows: 170 micro-batches of 3
    assert labelled.height > 510 and told == [510] * whole + ([rest] if rest else [])
    cols = ["row_id", "predicted", *(c for c in plain.predictions.columns if c.startswith("p_"))]
    assert len(cols) > 2 and counted.predictions.select(cols).equals(plain.predictions.select(cols))


def test_no_bar_when_stderr_is_not_a_terminal_or_under_json(model_dir, tmp_path):  # noqa: F811
    runner = CliRunner()
    pack = tmp_path / "p.jsonl"
    gen = runner.invoke(main, ["scenarios", "generate", "--n", "300", "--output", str(pack)])
    ing = runner.invoke(main, ["scenarios", "ingest", str(pack), "--output", str(tmp_path / "o")])
    ing_json = runner.invoke(main, ["scenarios", "ingest", str(pack), "--output", str(tmp_path / "j"), "--json"])
    pinned = runner.invoke(main, ["pins", "run", "--model", str(model_dir), "--policy", str(POLICIES_DIR / "v1.yaml"),
                                  "--scenarios", str(pack), "--batch-size", "32", "--json"])
    for result in (gen, ing, ing_json, pinned):
        assert result.exit_code in (0, 1), result.output  # pins run exits 1 when pins fail (an untrained model)
        assert not any(mark in result.output for mark in BAR_MARKS), result.output
    assert gen.output.startswith("wrote 300 requests")
    assert ing_json.stdout.startswith("{") and pinned.stdout.startswith("{")  # --json: stdout is one object


def test_a_terminal_gets_a_bar_with_counts_and_a_rate(tmp_path):
    """The real CLI in a pseudo-terminal, as a person runs it."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", "from modelsmith_cli.cli import main; main()", "scenarios", "generate",
                             "--n", "45000", "--output", str(tmp_path / "big.jsonl.gz")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(leader)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0 and out.decode().startswith("wrote 45000 requests"), (out, text)
    assert "generate" in text and "45.0k/45.0k" in text and "requests/s" in text, text
