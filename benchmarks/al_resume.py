"""Faithful resume of ``fitsnap-uq al`` (issue 18, acceptance 3): ``kill -9`` at random moments of a
two-element EMT loop, then the same command until it finishes; the summary, the journal and every
iteration's posterior (bit-identical arrays) and SNAP coefficients must equal an uninterrupted run's.
Then a second ``fitsnap-uq al`` started while one runs on the folder must exit with a message and change
nothing.

    python benchmarks/al_resume.py --kills 8 --seed 1 --outdir /tmp/al_resume

Kill moments: see :func:`run_with_kills` (random milestones of the run plus a random delay); prints
each kill's moment and how far the run had got, then PASS or FAIL.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from _cuau import cuau_toml  # noqa: E402

from fitsnap_uq.active.loop import run_state  # noqa: E402


def command(config: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "fitsnap_uq", "al", str(config), "--workdir", str(workdir), "--no-progress"]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


def milestones(work: Path) -> list[Path]:
    """The files a run leaves as it gets on: journal lines count one each, then every fit's, MD run's and
    test evaluation's record and the summary."""
    return [*work.glob("iter*/fit/done.json"), *work.glob("iter*/md_*/done.json"),
            *work.glob("iter*/fit/test_errors.json"), *work.glob("summary.json")]


def progress_of(work: Path) -> int:
    journal = work / "journal.jsonl"
    calls = len(journal.read_text().splitlines()) if journal.exists() else 0
    return calls + len(milestones(work))


def run_with_kills(config: Path, work: Path, kills: int, total: int, seed: int, log=print) -> list[str]:
    """``kill -9`` the loop ``kills`` times, then run it to the end. Kill i comes at a random moment after
    the run passed milestone m_i (m_1 < m_2 < ... drawn at random from the uninterrupted run's ``total``
    milestones, :func:`progress_of`): once the run reached m_i, after a further delay uniform in
    [0, 3] s, so kills land inside QM calls, fits, MD runs and test evaluations alike. Returns what the
    folder held at each kill."""
    import random

    rng = random.Random(seed)
    targets = sorted(rng.sample(range(total), kills))
    done: list[str] = []
    for target in targets:
        proc = subprocess.Popen(command(config, work), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        while proc.poll() is None and progress_of(work) < target:
            time.sleep(0.02)
        extra = rng.uniform(0.0, 3.0)
        try:
            proc.wait(timeout=extra)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            log(f"  run finished before kill {len(done) + 1} (milestone {target}, +{extra:.1f} s)")
            break
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            done.append(f"milestone {target} + {extra:.1f} s: {progress_of(work)} of {total}")
            log(f"  kill {len(done)} after milestone {target} + {extra:.1f} s: progress {progress_of(work)} "
                f"of {total}")
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
    config.write_text(cuau_toml(system={"seed": args.seed}))
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
    total = progress_of(ref)
    print(f"killed run: {args.kills} kill -9, each at a random moment after a random one of the "
          f"{total} milestones (QM calls, fits, MD runs, test evaluations, summary)")
    delays = run_with_kills(config, killed, args.kills, total, args.seed)
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
