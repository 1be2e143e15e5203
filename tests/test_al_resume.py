"""Faithful resume and the folder lock of ``fitsnap-uq al``, on a two-element (Cu-Au) EMT loop: kill -9 at
random moments, then the same command, gives the uninterrupted run's summary, journal and posteriors
(bit-identical); a second loop on a locked folder exits 2 and changes nothing; a dead run's lock is
taken over."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "benchmarks"))
from _cuau import cuau_toml  # noqa: E402
from al_resume import progress_of, run_with_kills, tree_digest  # noqa: E402

from fitsnap_uq.active.lock import FolderBusy, FolderLock
from fitsnap_uq.active.loop import ALConfig, Loop, run_state
from fitsnap_uq.errors import InputError

SMALL = cuau_toml(system={"seed": 3}, md={"temperatures": [1200.0]},
                  loop={"iterations": 2, "test_structures": 2})


@pytest.mark.slow  # ~2-3 min on 2 quiet cores: an uninterrupted run, 3 killed ones and the last
def test_kill_at_random_moments_gives_the_uninterrupted_run(tmp_path):
    (tmp_path / "cuau.toml").write_text(SMALL)
    ref = run_cli(["al", "cuau.toml", "--workdir", "ref", "--no-progress"], cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    total = progress_of(tmp_path / "ref")
    kills = run_with_kills(tmp_path / "cuau.toml", tmp_path / "killed", kills=3, total=total, seed=5,
                           log=lambda _: None)
    assert len(kills) == 3
    a, b = run_state(tmp_path / "ref"), run_state(tmp_path / "killed")
    assert a["summary"]["elements"] == ["Cu", "Au"]
    curve = a["summary"]["curve"]
    assert [c["qm_calls"] for c in curve] == [4, 6, 8]  # every fit frozen to its own data
    assert a["journal"] == b["journal"]
    assert a["fits"] == b["fits"]  # posterior arrays bit-identical (hashes), coefficient files equal
    assert a["summary"] == b["summary"]
    # each labelled file is tied to the first fit that uses it
    assert {(c["file"].split("/")[2], c["fit"]) for c in a["journal"] if c["set"] == "train"} == {
        ("Initial", 0), ("Flagged0", 1), ("Flagged1", 2)}


def test_second_loop_on_a_locked_folder_exits_2_and_changes_nothing(tmp_path):
    (tmp_path / "cuau.toml").write_text(SMALL)
    work = tmp_path / "work"
    work.mkdir()
    (work / "journal.jsonl").write_text('{"file": "x"}\n')
    with FolderLock(work, "fitsnap-uq al"):
        before = tree_digest(work)
        proc = run_cli(["al", "cuau.toml", "--workdir", "work", "--no-progress"], cwd=tmp_path)
        assert tree_digest(work) == before
    assert proc.returncode == 2
    assert f"another fitsnap-uq al (pid {os.getpid()}) is running on this folder" in proc.stderr
    with pytest.raises(FolderBusy), FolderLock(work), FolderLock(work):
        pass


def test_a_dead_processs_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "import sys; from fitsnap_uq.active.lock import "
                             "FolderLock; FolderLock(sys.argv[1]).acquire(); print('held', flush=True)",
                             str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert dead.stdout.readline().strip() == "held"
    dead.wait()  # it ended holding the lock, as after kill -9: the file names its pid
    assert (tmp_path / ".lock").read_text().strip() == str(dead.pid)
    with FolderLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_two_element_config_and_its_errors(tmp_path):
    path = tmp_path / "cuau.toml"
    path.write_text(SMALL)
    cfg = ALConfig.read(path)
    loop = Loop(cfg, tmp_path / "w", progress=False)
    atoms = loop.structures(1, seed=0)[0]
    assert sorted(set(atoms.get_chemical_symbols())) == ["Au", "Cu"]
    assert atoms.get_chemical_symbols().count("Au") == len(atoms) // 4  # composition 0.75 / 0.25
    text = loop.fitsnap_input(["Initial"])
    assert "type = Cu Au" in text and "radelem = 0.5 0.55" in text and "wj = 1 0.9" in text
    assert "pair_coeff3 = 1 2 zbl 29 79" in text and "twojmax = 4 4" in text
    for bad, key in [('composition = [0.75, 0.25]', "composition = [0.5, 0.6]"),
                     ("radelem = [0.5, 0.55]", "radelem = [0.5]"),
                     ('elements = ["Cu", "Au"]', 'elements = ["Cu", "Xx"]')]:
        path.write_text(SMALL.replace(bad, key))
        name = key.split()[0]
        with pytest.raises(InputError, match=rf"section \[(system|snap)\], key '{name}'"):
            ALConfig.read(path)
    path.write_text(SMALL.replace("[oracle]", '[start]\nstructures = ["nope.xyz"]\n[oracle]'))
    proc = run_cli(["al", "cuau.toml"], cwd=tmp_path)
    assert proc.returncode == 2 and "section [start], key 'structures'" in proc.stderr
    assert "nope.xyz" in proc.stderr
