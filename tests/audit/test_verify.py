"""`jupyterhub-smart audit verify`: intact logs pass, every kind of tampering fails at the right seq."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from peak_memory import PEAK_KB

from jupyterhub_smart.audit import AuditLog
from jupyterhub_smart.cli import main

from .helpers import event, lines


def make_log(directory: Path, n: int = 10, max_bytes: int = 64 * 1024 * 1024) -> Path:
    path = directory / "audit.jsonl"
    with AuditLog(path, max_bytes=max_bytes) as log:
        for i in range(n):
            log.record_sync(event(i))
    return path


def run_verify(capsys: pytest.CaptureFixture[str], *paths: Path) -> tuple[int, str]:
    code = main(["audit", "verify", *map(str, paths)])
    out = capsys.readouterr()
    return code, out.out + out.err


def rewrite(path: Path, new_lines: list[bytes]) -> None:
    path.write_bytes(b"".join(new_lines))


def test_intact_log_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path)
    code, out = run_verify(capsys, path)
    assert code == 0, out
    assert "OK: 10 records, seq 1..10" in out


def test_console_script_exit_codes(tmp_path: Path) -> None:
    path = make_log(tmp_path, 3)
    ok = subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    data = lines(path)
    rewrite(path, [data[0], data[2]])
    bad = subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "FAILED at seq 2: missing" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "audit", "verify", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no such audit log" in missing.stderr


def test_edited_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path)
    data = lines(path)
    data[4] = data[4].replace(b'"user4"', b'"mallory"')
    rewrite(path, data)
    code, out = run_verify(capsys, path)
    assert code == 1
    assert "FAILED at seq 5: hash does not match" in out


def test_edited_line_with_recomputed_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An editor who recomputes the line's own hash still breaks the next prev."""
    from jupyterhub_smart.audit.chain import parse_line, seal

    path = make_log(tmp_path)
    data = lines(path)
    record = parse_line(data[4].rstrip(b"\n"))
    record.pop("hash")
    record["agent"][0]["altId"] = "mallory"
    data[4] = seal(record)[1] + b"\n"
    rewrite(path, data)
    code, out = run_verify(capsys, path)
    assert code == 1
    assert "FAILED at seq 6: prev does not match" in out


def test_whitespace_edit_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path)
    data = lines(path)
    data[9] = data[9].replace(b'"action":', b'"action": ', 1)  # same JSON meaning
    rewrite(path, data)
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 10: line is not in canonical form" in out


def test_deleted_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path)
    data = lines(path)
    del data[6]
    rewrite(path, data)
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 7: missing: seq 8 follows seq 6" in out


def test_deleted_first_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path)
    rewrite(path, lines(path)[1:])
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 1: the log starts at seq 2" in out


def test_swapped_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path)
    data = lines(path)
    data[2], data[3] = data[3], data[2]
    rewrite(path, data)
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 3: missing: seq 4 follows seq 2" in out


def test_swapped_lines_renumbered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Swapping two lines' content but keeping seq order breaks the prev links."""
    from jupyterhub_smart.audit.chain import parse_line, seal

    path = make_log(tmp_path)
    data = lines(path)
    a, b = (parse_line(data[i].rstrip(b"\n")) for i in (2, 3))
    for r in (a, b):
        r.pop("hash")
    a["seq"], b["seq"] = 4, 3
    data[2], data[3] = seal(b)[1] + b"\n", seal(a)[1] + b"\n"
    rewrite(path, data)
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 3: prev does not match" in out


def test_duplicated_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path)
    data = lines(path)
    data.insert(5, data[4])
    rewrite(path, data)
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 6: out of order: found seq 5 after seq 5" in out


def test_truncated_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path)
    data = lines(path)
    data[-1] = data[-1][:40]
    rewrite(path, data)
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 10: truncated line" in out


def test_truncated_line_in_the_middle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path)
    data = lines(path)
    data[3] = data[3][:100] + b"\n"
    rewrite(path, data)
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 4: not valid JSON" in out


def test_missing_rotated_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path, 40, max_bytes=4096)
    rotated = sorted(tmp_path.glob("audit.jsonl.*[0-9]"))
    assert len(rotated) >= 3
    code, out = run_verify(capsys, path)
    assert code == 0, out
    gone = lines(rotated[1])
    rotated[1].unlink()
    first_missing = int(rotated[1].name.rsplit(".", 1)[1])
    code, out = run_verify(capsys, path)
    assert code == 1
    assert f"FAILED at seq {first_missing}: missing" in out and "rotated file missing" in out
    assert len(gone) > 0


def test_missing_first_rotated_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path, 40, max_bytes=4096)
    sorted(tmp_path.glob("audit.jsonl.*[0-9]"))[0].unlink()
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 1: the log starts at seq" in out


def test_file_from_another_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = make_log(tmp_path / "one", 20, max_bytes=4096)
    other = make_log(tmp_path / "two", 20, max_bytes=4096)
    # Replace a rotated file of one log by the same-named file of the other log:
    # same seq numbers, valid lines, but another chain.
    victim = sorted(one.parent.glob("audit.jsonl.*[0-9]"))[1]
    shutil.copy(other.parent / victim.name, victim)
    first = int(victim.name.rsplit(".", 1)[1])
    code, out = run_verify(capsys, one)
    assert code == 1 and f"FAILED at seq {first}: line belongs to another log" in out


def test_line_from_another_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = make_log(tmp_path / "one")
    other = make_log(tmp_path / "two")
    data = lines(one)
    data[5] = lines(other)[5]
    rewrite(one, data)
    code, out = run_verify(capsys, one)
    assert code == 1 and "FAILED at seq 6: line belongs to another log" in out


def test_every_single_byte_edit_fails_at_its_seq(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flip one byte anywhere (sampled positions on every line): verify names that line's seq."""
    path = make_log(tmp_path, 6)
    pristine = lines(path)
    rng = random.Random(5)
    for index, line in enumerate(pristine):
        positions = {0, len(line) - 2, len(line) - 1, *rng.sample(range(len(line)), 25)}
        for pos in sorted(positions):
            data = list(pristine)
            original = line[pos]
            replacement = b"X"[0] if original != ord("X") else b"Y"[0]
            data[index] = line[:pos] + bytes([replacement]) + line[pos + 1 :]
            rewrite(path, data)
            code, out = run_verify(capsys, path)
            assert code == 1, (index, pos)
            assert f"FAILED at seq {index + 1}:" in out, (index, pos, out)


def test_empty_or_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    code, out = run_verify(capsys, empty)
    assert code == 1 and "no audit records" in out
    code, out = run_verify(capsys, tmp_path / "missing.jsonl")
    assert code == 2 and "no such audit log" in out


def test_directory_and_torn_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_log(tmp_path, 3)
    with path.open("ab") as out:
        out.write(b'{"half a line')
    with AuditLog(path) as log:  # recovery sets the torn tail aside
        log.record_sync(event(9))
    code, out = run_verify(capsys, tmp_path)
    assert code == 0, out
    assert "OK: 5 records" in out and "torn tail was set aside" in out


def test_audit_without_an_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit"]) == 2
    assert "verify" in capsys.readouterr().out


def _plant_huge_line(path: Path, size: int) -> None:
    """Append one ``size``-byte line (a sparse run of zero bytes: written in no time)."""
    with path.open("r+b") as handle:
        handle.seek(0, 2)
        handle.seek(size - 1, 1)
        handle.write(b"\n")


def test_oversized_line_is_refused_naming_seq_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_log(tmp_path, 4)
    _plant_huge_line(path, 300 * 1024 * 1024)
    code, out = run_verify(capsys, path)
    assert code == 1
    assert "FAILED at seq 5: line 5 is longer than 1,048,576 bytes" in out
    assert "(audit.jsonl, line 5)" in out


def test_oversized_first_line_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """300 MB in one line: ``audit verify`` in a fresh interpreter stays far below that."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    _plant_huge_line(path, 300 * 1024 * 1024)
    script = (
        f"import sys\n{PEAK_KB}"
        "from jupyterhub_smart.cli import main\n"
        "code = main(['audit', 'verify', sys.argv[1]])\n"
        "print('exit', code, 'peak_kb', peak_kb())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120
    )
    assert "FAILED at seq 1: line 1 is longer than 1,048,576 bytes" in done.stderr
    exit_code, peak_kb = done.stdout.split()[1], int(done.stdout.split()[3])
    assert exit_code == "1"
    assert peak_kb / 1024 < 100, f"peak memory {peak_kb / 1024:.0f} MB for one 300 MB line"


@pytest.mark.parametrize("block", [1, 97, 1000])
def test_lines_split_across_read_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Lines straddling the verifier's read blocks: the same verdicts at the same seq."""
    from jupyterhub_smart.audit import verify as verify_module

    monkeypatch.setattr(verify_module, "_BLOCK", block)
    path = make_log(tmp_path, 5)
    pristine = lines(path)
    code, out = run_verify(capsys, path)
    assert code == 0 and "OK: 5 records, seq 1..5" in out, out
    data = list(pristine)
    data[2] = data[2].replace(b'"user2"', b'"mallory"')
    rewrite(path, data)
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 3: hash does not match" in out, out
    rewrite(path, [*pristine, pristine[0][:-1]])
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 6: truncated line" in out, out
    rewrite(path, pristine)
    monkeypatch.setattr(verify_module, "MAX_LINE_BYTES", min(map(len, pristine)) - 2)
    code, out = run_verify(capsys, path)
    assert code == 1 and "FAILED at seq 1: line 1 is longer than" in out, out


def test_parallel_verify_gives_the_sequential_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines checked by worker processes in small batches: the same report, the same first fault."""
    from jupyterhub_smart.audit import verify as verify_module

    monkeypatch.setattr(verify_module, "_BATCH_LINES", 2)
    path = make_log(tmp_path / "a", 9)
    other = make_log(tmp_path / "b", 9)
    pristine, foreign = lines(path), lines(other)

    def verdict(workers: int) -> tuple[object, ...]:
        try:
            r = verify_module.verify([path], workers=workers)
        except verify_module.ChainBroken as exc:
            return ("broken", exc.seq, exc.reason, exc.line)
        return ("ok", r.records, r.head_seq, r.head_hash, r.log_id, r.deferred)

    edited = list(pristine)
    edited[4] = edited[4].replace(b'"user4"', b'"mallory"')
    cases = {
        "intact": pristine,
        "edited": edited,
        "deleted": pristine[:3] + pristine[4:],
        "swapped": [*pristine[:5], pristine[6], pristine[5], *pristine[7:]],
        "spliced": [*pristine[:6], foreign[6], *pristine[7:]],
        "torn": [*pristine, pristine[0][:-1]],
        "not json": [*pristine[:7], b"{not json\n", *pristine[8:]],
    }
    for name, data in cases.items():
        rewrite(path, data)
        sequential = verdict(1)
        assert verdict(2) == sequential, name
        assert sequential[0] == ("ok" if name == "intact" else "broken"), (name, sequential)
