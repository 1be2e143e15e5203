"""Faithful resume of ``fitsnap-uq al`` (issue 18, acceptance 3): ``kill -9`` at random moments of a
two-element EMT loop, then the same command until it finishes; the summary, the journal and every
iteration's posterior (bit-identical arrays) and SNAP coefficients must equal an uninterrupted run's.
Then a second ``fitsnap-uq al`` started while one runs on the folder must exit with a message and change
nothing.

    python benchmarks/al_resume.py --kills 8 --seed 1 --outdir /tmp/al_resume

Kill moments: each attempt is killed after a delay drawn uniformly in [0.3 s, 2 T / kills], T the
uninterrupted run's wall time, until ``--kills`` attempts were killed while running; prints each kill's
delay and how far the run had got (QM calls journalled, fits done), then PASS or FAIL.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fitsnap_uq.active.loop import run_state  # noqa: E402

CONFIG = """
[system]
elements = ["Cu", "Au"]
composition = [0.75, 0.25]
lattice = "fcc"
a = 3.75
supercell = [2, 2, 2]
initial = 4
seed = {seed}
[oracle]
name = "emt"
[snap]
twojmax = 4
rcutfac = 4.9
radelem = [0.5, 0.55]
wj = [1.0, 0.9]
[md]
temperatures = [800.0, 1200.0]
md_cells = [2, 2, 2]
md_steps = 100
flag_above = 0.005
max_flags = 2
[loop]
iterations = 3
qm_budget = 20
test_structures = 3
"""


def command(config: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "fitsnap_uq", "al", str(config), "--workdir", str(workdir), "--no-progress"]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


def progress_of(work: Path) -> str:
    journal = work / "journal.jsonl"
    calls = len(journal.read_text().splitlines()) if journal.exists() else 0
    fits = len(list(work.glob("iter*/fit/done.json")))
    mds = len(list(work.glob("iter*/md_*/done.json")))
    return f"{calls} QM calls journalled, {fits} fits, {mds} MD runs done"


def run_with_kills(config: Path, work: Path, kills: int, max_delay: float, seed: int,
                   log=print) -> list[float]:
    """Kill attempts with ``kill -9`` after random delays until ``kills`` were killed while running, then
    run to the end. Returns the delays of the effective kills."""
    import random

    rng = random.Random(seed)
    done: list[float] = []
    while len(done) < kills:
        delay = rng.uniform(0.3, max_delay)
        proc = subprocess.Popen(command(config, work), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=delay)
            log(f"  attempt finished before its kill at {delay:.1f} s (rc {proc.returncode})")
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            break
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            done.append(delay)
            log(f"  kill {len(done)} at {delay:.1f} s: {progress_of(work)}")
    final = subprocess.run(command(config, work), env=env(), capture_output=True, text=True)
    if final.returncode != 0:
        raise RuntimeError(final.stderr[-2000:])
    return done


def tree_digest(work: Path) -> dict[str, str]:
    """Every file below ``work``: its SHA-256 and modification time."""
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mtime_ns}"
            for p in sorted(work.rglob("*")) if p.is_file()}


def second_run_refused(config: Path, work: Path) -> tuple[bool, str]:
    """Start a loop in ``work``; once it holds the lock, freeze it (SIGSTOP) and start a second one: the
    second must exit 2 naming the first, and leave every file as it was (content and mtime); then let
    the first finish (it must succeed)."""
    first = subprocess.Popen(command(config, work), env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (work / ".lock").exists() or not (work / ".lock").read_text().strip():
        if time.time() > deadline:
            raise RuntimeError("the first run did not take the lock")
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # frozen: the folder holds still while the second one tries
    try:
        before = tree_digest(work)
        second = subprocess.run(command(config, work), env=env(), capture_output=True, text=True)
        after = tree_digest(work)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.wait()
    ok = second.returncode == 2 and "another fitsnap-uq al" in second.stderr and before == after \
        and first.returncode == 0
    return ok, second.stderr.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--outdir", default="al_resume_out")
    args = ap.parse_args()
    out = Path(args.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = out / "cuau.toml"
    config.write_text(CONFIG.format(seed=args.seed))
    ref, killed, busy = out / "uninterrupted", out / "killed", out / "busy"
    for folder in (ref, killed, busy):
        if folder.exists():
            raise SystemExit(f"{folder} exists: use a fresh --outdir")
    t0 = time.time()
    proc = subprocess.run(command(config, ref), env=env(), capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        return 1
    print(f"uninterrupted: {wall:.1f} s; {proc.stdout.strip()}")
    print(f"killed run: up to {args.kills} kill -9 at random delays in [0.3, {2 * wall / args.kills:.1f}] s")
    delays = run_with_kills(config, killed, args.kills, 2 * wall / args.kills, args.seed)
    a, b = run_state(ref), run_state(killed)
    same = {part: a[part] == b[part] for part in ("summary", "journal", "fits")}
    print(f"kills: {len(delays)}; equal to the uninterrupted run: {same}")
    for name, state in (("uninterrupted", a), ("resumed", b)):
        points = [(c["iteration"], c["qm_calls"], round(c["force_rmse"], 4))
                  for c in state["summary"]["curve"]]
        print(f"curve of the {name} run (iteration, QM calls, test force RMSE eV/A): {points}")
    arrays = sorted(next(iter(a["fits"].values()))["arrays"])
    print(f"posteriors compared: {len(a['fits'])} fits, arrays {arrays} (SHA-256 of their bytes)")
    refused, message = second_run_refused(config, busy)
    print(f"second concurrent run refused, folder unchanged: {refused}; its message: {message}")
    ok = all(same.values()) and len(delays) >= args.kills and refused
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
