"""data_recipes.files.atomic_dir, the one way a directory is written whole (data builds, training states,
tiny and base models, the generated I-RAVEN set): filled under a hidden sibling name, renamed into place
once complete, removed on an error; an existing target deleted, swapped out through `.NAME.old`, or kept
when another writer's complete copy is already there."""

from __future__ import annotations

import fnmatch
import re
import threading
from pathlib import Path

import pytest

from data_recipes.files import atomic_dir


def _fill(d: Path, text: str) -> None:
    (d / "sub").mkdir()
    (d / "a.txt").write_text(text)
    (d / "sub" / "b.txt").write_text(text * 2)


def _content(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file()}


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("tmp_name", [None, ".out.building"])
def test_a_completed_block_is_renamed_into_place(tmp_path, tmp_name):
    out = tmp_path / "deep" / "er" / "out"  # missing parents are made
    with atomic_dir(out, tmp_name=tmp_name) as tmp:
        assert tmp.is_dir() and tmp.parent == out.parent and not any(tmp.iterdir())
        assert not out.exists()  # nothing under the real name until the block ends
        _fill(tmp, "new")
    assert _content(out) == {"a.txt": "new", "sub/b.txt": "newnew"}
    assert _hidden(out.parent) == []


def test_the_temporary_names(tmp_path):
    """Unique `.NAME.XXXXXXXX` beside the target, or exactly `tmp_name`; never `.*.tmp-*`, the pattern of
    atomic_path's temporary files that evalsuite.outputs unlinks as files."""
    out = tmp_path / "out"
    with atomic_dir(out) as a, atomic_dir(out) as b:
        assert a != b
        for t in (a, b):
            assert re.fullmatch(r"\.out\.[0-9a-f]{8}", t.name), t.name
            assert not fnmatch.fnmatch(t.name, ".*.tmp-*")
    with atomic_dir(tmp_path / "step-4", tmp_name=".step-4.tmp") as t:
        assert t == tmp_path / ".step-4.tmp"


def test_the_directory_gets_the_permissions_of_a_plain_mkdir(tmp_path):
    (tmp_path / "plain").mkdir()
    with atomic_dir(tmp_path / "out"):
        pass
    assert (tmp_path / "out").stat().st_mode == (tmp_path / "plain").stat().st_mode


@pytest.mark.parametrize("existing, tmp_name", [("delete", None), ("delete", ".out.tmp"), ("swap", None),
                                                ("swap", ".out.building"), ("keep", None)])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_leaves_the_target_as_it_was_and_removes_the_temporary(tmp_path, existing, tmp_name, error):
    out = tmp_path / "out"
    out.mkdir()
    _fill(out, "old")
    with pytest.raises(error), atomic_dir(out, existing=existing, tmp_name=tmp_name) as tmp:
        _fill(tmp, "new")
        raise error("killed half way")
    assert _content(out) == {"a.txt": "old", "sub/b.txt": "oldold"}
    assert _hidden(tmp_path) == []


def test_an_error_with_no_target_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="bad sample"), atomic_dir(tmp_path / "out") as tmp:
        _fill(tmp, "new")
        raise ValueError("bad sample")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", ["delete", "swap"])
def test_an_existing_target_is_replaced(tmp_path, existing):
    out = tmp_path / "out"
    out.mkdir()
    _fill(out, "old")
    (out / "only_in_old.txt").write_text("x")
    with atomic_dir(out, existing=existing) as tmp:
        _fill(tmp, "new")
        assert _content(out)["a.txt"] == "old"  # the old one stays whole while the new one is written
    assert _content(out) == {"a.txt": "new", "sub/b.txt": "newnew"}
    assert _hidden(tmp_path) == []


def test_swap_puts_the_old_one_aside_until_the_new_one_is_in(tmp_path, monkeypatch):
    """Killed between the two renames: `out` is absent, the complete old build waits in `.out.old`, and
    the next swap clears it (a build's `.NAME.old`)."""
    out = tmp_path / "out"
    out.mkdir()
    _fill(out, "old")
    real_rename = Path.rename

    def rename(self, target):
        if Path(target) == out:
            raise OSError("killed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="killed"), atomic_dir(out, existing="swap") as tmp:
        _fill(tmp, "new")
    monkeypatch.undo()
    assert not out.exists()
    assert _content(tmp_path / ".out.old") == {"a.txt": "old", "sub/b.txt": "oldold"}
    with atomic_dir(out, existing="swap") as tmp:
        _fill(tmp, "newer")
    assert _content(out)["a.txt"] == "newer"
    assert _hidden(tmp_path) == []


def test_a_fixed_temporary_left_by_a_killed_run_is_cleared_first(tmp_path):
    """A training state's `.step-N.tmp` or a build's `.NAME.building` from a killed run: the next write
    starts from an empty directory, so nothing of the killed run reaches the target."""
    stale = tmp_path / ".step-6.tmp"
    stale.mkdir()
    (stale / "trainer_state.json").write_text("{}")
    (stale / "half.bin").write_text("half")
    with atomic_dir(tmp_path / "step-6", tmp_name=".step-6.tmp") as tmp:
        assert tmp == stale and not any(tmp.iterdir())
        (tmp / "trainer_state.json").write_text('{"step": 6}')
    assert _content(tmp_path / "step-6") == {"trainer_state.json": '{"step": 6}'}
    assert _hidden(tmp_path) == []


def test_a_unique_temporary_left_by_a_killed_run_is_ignored(tmp_path):
    """`.NAME.XXXXXXXX` of a killed process is never reused nor read; it is left where it is."""
    stale = tmp_path / ".out.0badc0de"
    stale.mkdir()
    (stale / "a.txt").write_text("half")
    with atomic_dir(tmp_path / "out") as tmp:
        assert tmp != stale
        _fill(tmp, "new")
    assert _content(tmp_path / "out")["a.txt"] == "new"
    assert _content(stale) == {"a.txt": "half"}


def test_a_state_being_written_is_never_a_checkpoint(tmp_path):
    """Checkpoint discovery skips `.step-N.tmp`, complete or not, until it is renamed to `step-N`."""
    from train.checkpointing import STATE_FILE, valid_states

    root = tmp_path / "checkpoints"
    with atomic_dir(root / "step-2", tmp_name=".step-2.tmp") as tmp:
        (tmp / STATE_FILE).write_text("{}")
        assert valid_states(tmp_path) == []
    assert valid_states(tmp_path) == [root / "step-2"]


def test_keep_the_first_complete_copy(tmp_path):
    """Two writers at once: the one that finishes first is renamed in; the later one's copy is dropped."""
    out = tmp_path / "out"
    with atomic_dir(out, existing="keep") as slow:
        _fill(slow, "slow")
        with atomic_dir(out, existing="keep") as fast:
            _fill(fast, "fast")
        assert _content(out)["a.txt"] == "fast"
    assert _content(out) == {"a.txt": "fast", "sub/b.txt": "fastfast"}
    assert _hidden(tmp_path) == []


def test_keep_with_many_concurrent_writers(tmp_path):
    """Ranks each write an identical copy, all finishing together: one rename wins, none fails, no copy
    is left behind, and every writer sees the complete directory afterwards."""
    out, n = tmp_path / "iraven" / "seed0_n2", 6
    start, errors, seen = threading.Barrier(n), [], []

    def rank():
        try:
            with atomic_dir(out, existing="keep") as tmp:
                _fill(tmp, "same")
                start.wait(timeout=30)  # every rank holds a complete copy before any rename
            seen.append(_content(out))
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)

    threads = [threading.Thread(target=rank) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen == [{"a.txt": "same", "sub/b.txt": "samesame"}] * n
    assert _hidden(out.parent) == []


def test_keep_raises_when_the_rename_fails_for_another_reason(tmp_path):
    """A file, not another writer's directory, in the way: the error is raised, the temporary removed."""
    out = tmp_path / "out"
    out.write_text("not a directory")
    with pytest.raises(OSError), atomic_dir(out, existing="keep") as tmp:
        _fill(tmp, "new")
    assert out.read_text() == "not a directory"
    assert _hidden(tmp_path) == []


def test_bad_options_are_refused_before_anything_is_made(tmp_path):
    with pytest.raises(ValueError, match=r"existing='replace', expected 'delete', 'swap' or 'keep'"):
        with atomic_dir(tmp_path / "out", existing="replace"):
            pass
    with pytest.raises(ValueError, match=r"existing='keep' .* unique temporary directories"):
        with atomic_dir(tmp_path / "out", existing="keep", tmp_name=".out.tmp"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_shareable_path_drops_the_machine_layout_under_the_working_directory(tmp_path, monkeypatch):
    from data_recipes.files import shareable_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt" / "video_demo").mkdir(parents=True)
    assert shareable_path(tmp_path / "ckpt" / "video_demo") == "ckpt/video_demo"
    assert shareable_path("ckpt/video_demo") == "ckpt/video_demo"
    elsewhere = tmp_path.parent / "shared-models" / "llava-next-7b"
    assert shareable_path(elsewhere) == str(elsewhere)  # outside the project: its path is its name
    assert shareable_path(elsewhere, tmp_path, outside="name") == "llava-next-7b"
    assert shareable_path(tmp_path / "ckpt" / "video_demo", tmp_path / "ckpt") == "video_demo"
