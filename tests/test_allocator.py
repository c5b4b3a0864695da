"""The training workers' malloc: found where installed, preloaded for real, refused clearly where missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from curation.errors import InputError
from pipelines.allocator import Allocator, resolve_allocator

REPO = Path(__file__).resolve().parent.parent


def _touch(directory: Path, *names: str) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"")
    return [str(directory)]


def test_auto_prefers_tcmalloc_then_jemalloc_then_the_system_malloc(tmp_path: Path) -> None:
    both = _touch(tmp_path / "both", "libjemalloc.so.2", "libtcmalloc_minimal.so.4")
    assert resolve_allocator("auto", both) == Allocator("tcmalloc", str(tmp_path / "both/libtcmalloc_minimal.so.4"))
    only_je = _touch(tmp_path / "je", "libjemalloc.so.2")
    assert resolve_allocator("auto", only_je).name == "jemalloc"
    assert resolve_allocator("auto", [str(tmp_path / "none")]) == Allocator("system")
    assert resolve_allocator("system", both).env == {}  # the user's choice wins over what is installed


def test_a_named_allocator_that_is_missing_is_an_error_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"train\.allocator: jemalloc was not found.*apt-get install libjemalloc2"):
        resolve_allocator("jemalloc", [str(tmp_path)])


def test_the_environment_preloads_the_library_into_a_new_process() -> None:
    allocator = resolve_allocator("auto")
    if allocator.library is None:
        pytest.skip("neither tcmalloc nor jemalloc is installed here (apt-get install libtcmalloc-minimal4)")
    probe = "from pipelines.allocator import allocator_in_use; print(allocator_in_use())"
    run = lambda env: subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,  # noqa: E731
                                     text=True, check=True).stdout.strip()
    import os

    assert run({**os.environ, **allocator.env}) == allocator.name
    assert run({k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}) == "system"
