"""Fault trials: SIGKILLed ``adapt`` and ``corpus prepare`` runs resumed and compared with an uninterrupted
run, and full disks during checkpoints and publication.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .procs import Proc, Trial, last_line, no_traceback, resumed_step, train_losses, weights_diff

# ====================================================================================================
# Killed `domainlm adapt`
# ====================================================================================================

KILL_MODES = ("random", "checkpoint", "hook")


class AdaptTrials:
    """Kill ``domainlm adapt`` and resume it; compare with one uninterrupted run of the same settings.

    Every trial is seeded. Its first kill is one of: SIGKILL at a random time (uniform over 10-90 % of the
    uninterrupted run's duration), SIGKILL as soon as the k-th checkpoint's temporary folder appears (k
    random), or the engine's own fault point ``DOMAINLM_FAULT=step:N`` / ``ckpt:N`` (N random). About a third
    of the trials kill the resumed run once more at a random time before the last, unkilled resume.
    """

    def __init__(self, work: Path, launcher: str = "fork", steps: int = 12, save_every: int = 3):
        self.work, self.launcher = work, launcher
        self.steps, self.save_every = steps, save_every
        self.ckpt_steps = [s for s in range(save_every, steps, save_every)]
        self.corpus = work / "corpus-pubmed-tiny-llama"
        self.ref = work / "adapt-reference"
        self.logs = work / "logs"
        self.ref_seconds = 0.0

    def args(self, out: Path, *extra: str) -> list[str]:
        return ["adapt", "--model", "tiny-llama", "--corpus", str(self.corpus), "--out", str(out),
                "--max-steps", str(self.steps), "--save-every", str(self.save_every), "--batch-size", "2",
                "--eval-batches", "1", "--eval-every", "0", "--log-every", "1", "--bf16", "off",
                "--keep-last", "1000", "--lr", "0.003", *extra]

    def launch(self, argv: list[str], name: str, **kw: Any) -> Proc:
        return Proc(argv, self.logs, name, launcher=self.launcher, **kw)

    def setup(self) -> None:
        """Prepare the corpus once and make the uninterrupted reference run (keeping every checkpoint)."""
        if not (self.corpus / "manifest.json").is_file():
            p = self.launch(["corpus", "prepare", "--card", "pubmed-sample", "--model", "tiny-llama", "--block-size",
                             "64", "--out", str(self.corpus)], "adapt-corpus")
            if p.wait() != 0:
                raise RuntimeError(f"corpus prepare failed: {p.stderr[-2000:]}")
        if not (self.ref / "final" / "model.safetensors").is_file():
            shutil.rmtree(self.ref, ignore_errors=True)
            p = self.launch(self.args(self.ref), "adapt-reference")
            if p.wait() != 0:
                raise RuntimeError(f"the reference adapt run failed: {p.stderr[-2000:]}")
            self.ref_seconds = p.seconds
        elif not self.ref_seconds:
            self.ref_seconds = float(json.loads((self.ref / "manifest.json").read_text())["wall_time_s"]) + 2.0

    def complete_steps(self, run: Path) -> list[int]:
        from domainlm.adapt.checkpoint import complete_checkpoints

        return [int(p.name.split("-")[1]) for p in complete_checkpoints(run)] if run.is_dir() else []

    def inspect(self, run: Path) -> tuple[str, list[str]]:
        """Describe the run folder after a kill; problems if a checkpoint listed as complete is not the same as
        the reference's checkpoint of that step, or does not load."""
        import torch

        problems: list[str] = []
        folder = run / "checkpoints"
        names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        complete = self.complete_steps(run)
        partial = [n for n in names if n not in {f"step-{s:08d}" for s in complete}]
        for s in complete:
            ck = folder / f"step-{s:08d}"
            equal, diff = weights_diff(ck, self.ref / "checkpoints" / ck.name)
            if not equal:
                problems.append(f"{ck.name} is listed as complete but differs from the reference (max diff {diff:.3g})")
            try:
                torch.load(ck / "rng-00000.pt", weights_only=True)  # weights and optimizer: DCP, read above
                state = json.loads((ck / "state.json").read_text())
                if state.get("step") != s:
                    problems.append(f"{ck.name}/state.json says step {state.get('step')}")
            except Exception as exc:  # any failure here means a partial checkpoint passed for a complete one
                problems.append(f"{ck.name} is listed as complete but does not load: {type(exc).__name__}: {exc}")
        losses = train_losses(run)
        last = losses[-1][0] if losses else 0
        desc = (f"metrics log at step {last}; complete checkpoints: {', '.join(map(str, complete)) or 'none'}"
                + (f"; partial folders left: {', '.join(partial)} (not listed as complete)" if partial else ""))
        return desc, problems

    def _kill(self, proc: Proc, mode: str, rng: random.Random, run: Path, fault: str | None,
              first_attempt: bool) -> str:
        if mode == "hook":
            return f"DOMAINLM_FAULT={fault}"
        if mode == "random":
            delay = rng.uniform(0.1, 0.9 if first_attempt else 0.6) * self.ref_seconds
            if not proc.sleep(delay):
                return f"random SIGKILL planned at {delay:.1f} s, but the run had finished"
            proc.kill()
            return f"SIGKILL at {delay:.1f} s (random)"
        want = rng.randint(1, len(self.ckpt_steps))
        folder, seen = run / "checkpoints", []

        def kth_tmp() -> bool:
            if folder.is_dir():
                for p in folder.glob(".step-*.tmp"):
                    if p.name not in seen:
                        seen.append(p.name)
            return len(seen) >= want

        if not proc.wait_for(kth_tmp, interval=0.003):
            return f"SIGKILL planned during checkpoint write #{want}, but the run had finished"
        proc.kill()
        tmp = folder / seen[want - 1]
        step = int(seen[want - 1].split(".")[1].split("-")[1])
        return (f"SIGKILL while checkpoint {step} was being written (its temporary folder "
                f"{'was still there' if tmp.exists() else 'had just been renamed'} after the kill)")

    def trial(self, seed: int, *, mode: str | None = None, fault: str | None = None,
              kills: int | None = None) -> Trial:
        """One seeded trial; ``mode``, ``fault`` and ``kills`` override what the seed would choose."""
        rng = random.Random(seed)
        mode = mode or KILL_MODES[seed % len(KILL_MODES)]
        run = self.work / f"adapt-kill-{self.launcher}-{seed}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.monotonic()
        notes: list[str] = []
        problems: list[str] = []
        n_kills = 2 if rng.random() < 0.34 else 1
        kills = kills or n_kills
        chosen_fault = fault
        for k in range(kills):
            attempt_mode = mode if k == 0 else "random"
            fault = None
            if attempt_mode == "hook":
                fault = chosen_fault or (f"ckpt:{rng.choice(self.ckpt_steps)}" if rng.random() < 0.5
                                         else f"step:{rng.randint(1, self.steps - 1)}")
            before = self.complete_steps(run)
            proc = self.launch(self.args(run, *(["--resume"] if k else [])), f"kill-{seed}-{k}",
                               env={"DOMAINLM_FAULT": fault} if fault else None)
            how = self._kill(proc, attempt_mode, rng, run, fault, k == 0)
            rc = proc.wait()
            if k:
                got = resumed_step(proc.stderr)
                want = before[-1] if before else 0
                if got is not None and got != want:  # None: killed before it said where it resumed
                    problems.append(f"attempt {k + 1} resumed from step {got}, not the newest complete one ({want})")
            if rc == 0:
                notes.append(f"{how}: the run had finished")
                continue
            if rc != -signal.SIGKILL:
                problems.append(f"attempt {k + 1} exited with {rc}, expected SIGKILL: {last_line(proc.stderr)}")
            desc, bad = self.inspect(run)
            problems += bad
            notes.append(f"{how} -> {desc}")
        before = self.complete_steps(run)
        fresh = not (run.is_dir() and any(run.iterdir()))  # killed before it wrote anything: nothing to resume
        final = self.launch(self.args(run, "--resume"), f"kill-{seed}-resume")
        rc = final.wait()
        if rc != 0:
            problems.append(f"the resumed run failed ({rc}): {last_line(final.stderr)}")
        else:
            got = resumed_step(final.stderr)
            if got is None and fresh:
                got = 0  # the killed run had not written anything yet, so the resume started a fresh run
            want = before[-1] if before else 0
            if got != want:
                problems.append(f"the last resume continued from step {got}, not from the newest complete "
                                f"checkpoint ({want})")
            equal, diff = weights_diff(self.ref / "final" / "model.safetensors", run / "final" / "model.safetensors")
            same_losses = train_losses(run) == train_losses(self.ref)
            notes.append(f"resumed from step {got}; final weights "
                         + ("bitwise equal" if equal else f"max |diff| {diff:.3g}")
                         + ("; train losses equal" if same_losses else "; TRAIN LOSSES DIFFER"))
            if not (equal or diff <= 1e-6):
                problems.append(f"final weights differ from the uninterrupted run (max |diff| {diff:.3g})")
            if not same_losses:
                problems.append("train losses differ from the uninterrupted run")
        shutil.rmtree(run, ignore_errors=True)
        name = f"adapt kill {seed}" + (" (python -m domainlm)" if self.launcher == "exec" else "")
        return Trial("adapt-kill", name, seed, f"{mode} kill" + (" + a second kill" if kills > 1 else ""),
                     "; ".join(notes + problems), not problems, time.monotonic() - t0)

    def exec_reference(self, fork_ref: Path) -> str:
        """Time an uninterrupted run in this (exec) launcher and check it equals the forked reference ``fork_ref``,
        which the trials are then compared with."""
        out = self.work / "adapt-reference-exec"
        shutil.rmtree(out, ignore_errors=True)
        p = self.launch(self.args(out), "adapt-reference-exec")
        if p.wait() != 0:
            raise RuntimeError(f"the exec reference run failed: {p.stderr[-2000:]}")
        self.ref_seconds, self.ref = p.seconds, fork_ref
        equal, diff = weights_diff(fork_ref / "final" / "model.safetensors", out / "final" / "model.safetensors")
        shutil.rmtree(out, ignore_errors=True)
        return "bitwise equal" if equal else f"max |diff| {diff:.3g}"


# ====================================================================================================
# Killed `domainlm corpus prepare`
# ====================================================================================================

def _completions(out: Path) -> int:
    """How many datatrove tasks of an interrupted prepare in ``out`` have written their completion marker."""
    return len(list((out / ".work" / "logs").glob("*/completions/*")))


class PrepareTrials:
    """Kill ``domainlm corpus prepare`` (PubMed sample, baseline + update file, 16 documents a shard) and run it
    again; the finished folder must equal an uninterrupted run's: manifest counts, splits, drops, fingerprint,
    every block and the document table."""

    MODES = ("random", "shard", "hook")

    def __init__(self, work: Path, launcher: str = "fork"):
        self.work, self.launcher = work, launcher
        self.logs = work / "logs"
        self.ref = work / "prepare-reference"
        self.ref_seconds = 0.0

    def args(self, out: Path) -> list[str]:
        return ["corpus", "prepare", "--card", "pubmed-sample", "--model", "tiny-llama", "--block-size", "64",
                "--shard-size", "16", "--out", str(out)]

    def setup(self) -> None:
        shutil.rmtree(self.ref, ignore_errors=True)
        p = Proc(self.args(self.ref), self.logs, "prepare-reference", launcher=self.launcher)
        if p.wait() != 0:
            raise RuntimeError(f"the reference prepare failed: {p.stderr[-2000:]}")
        self.ref_seconds = p.seconds
        self.shards = len(list((self.ref / "documents").glob("shard-*.arrow")))

    @staticmethod
    def summary(out: Path) -> dict[str, Any]:
        """What must not depend on interruptions: the manifest minus times and paths, blocks and documents."""
        import numpy as np

        from domainlm.corpora.pack import load_documents, load_prepared

        m = json.loads((out / "manifest.json").read_text())
        keep = {k: m.get(k) for k in ("counts", "splits", "tokenizer", "block_size", "fingerprint", "content")}
        keep["inputs"] = [i["sha256"] for i in m.get("inputs", [])]
        for split in ("train", "validation"):
            ds = load_prepared(out, split).with_format("numpy")
            keep[split] = (np.asarray(ds["input_ids"]).tobytes(), np.asarray(ds["doc_ids"]).tobytes())
        keep["documents"] = load_documents(out).to_dict()
        return keep

    def _equals_reference(self, out: Path) -> bool:
        try:
            a, b = self.summary(out), self.summary(self.ref)
        except Exception:  # anything unreadable is not a finished corpus
            return False
        return all(a[k] == b[k] for k in b) and a.keys() == b.keys()

    def trial(self, seed: int, *, mode: str | None = None, kills: int | None = None) -> Trial:
        """One seeded trial; ``mode`` and ``kills`` override what the seed would choose."""
        from domainlm.corpora.pack import load_prepared
        from domainlm.errors import IncompleteArtifactError

        rng = random.Random(seed)
        mode = mode or self.MODES[seed % len(self.MODES)]
        if mode == "hook" and self.launcher != "fork":
            mode = "shard"
        out = self.work / f"prepare-kill-{seed}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.monotonic()
        notes: list[str] = []
        problems: list[str] = []
        n_kills = 2 if rng.random() < 0.5 else 1
        kills = kills or n_kills
        for k in range(kills):
            m = mode if k == 0 else "random"
            hook = None
            shard = rng.randrange(self.shards - 1)
            if m == "hook":
                def hook(shard=shard):  # SIGKILL right after shard `shard`'s progress record is written
                    from domainlm.corpora import run as prepare_mod

                    def die(s: int) -> None:
                        if s == shard:
                            os.kill(os.getpid(), signal.SIGKILL)

                    prepare_mod._after_shard = die
            proc = Proc(self.args(out), self.logs, f"prepare-{seed}-{k}", launcher=self.launcher, hook=hook)
            if m == "random":
                delay = rng.uniform(0.05, 0.95) * self.ref_seconds
                how = f"SIGKILL at {delay:.1f} s (random)" if proc.sleep(delay) else "random kill came too late"
                proc.kill()
            elif m == "shard":
                # datatrove writes a completion marker per finished task of each stage (OUT/.work/logs/<stage>/
                # completions/<rank>); kill shortly after the n-th one appears.
                extra, nth = rng.uniform(0.0, 0.15), rng.randrange(1, 4)
                proc.wait_for(lambda nth=nth: _completions(out) >= nth)
                proc.sleep(extra)
                proc.kill()
                how = f"SIGKILL {extra * 1000:.0f} ms after the stage completion marker {nth} appeared"
            else:
                how = f"SIGKILL at the end of shard {shard} (in-process hook)"
            rc = proc.wait()
            if rc == 0:
                notes.append(f"{how}: the run had finished")
                continue
            done = _completions(out)
            looks_complete = (out / "manifest.json").is_file()
            if looks_complete and self._equals_reference(out):
                # the kill landed after the run committed its manifest (the last write; cleanup follows it): the
                # corpus is complete and equal to the uninterrupted one, which is what the commit point promises
                notes.append(f"{how}: landed after the manifest was committed; the corpus equals the uninterrupted one")
                continue
            try:
                load_prepared(out)
                problems.append("the killed folder loads as a complete corpus")
            except IncompleteArtifactError:
                pass
            except Exception as exc:  # anything but the documented refusal is a problem
                problems.append(f"loading the killed folder raised {type(exc).__name__}: {exc}")
            if looks_complete:
                problems.append("a manifest.json exists after the kill")
            notes.append(f"{how} -> {done} task(s) recorded complete, no manifest" if not looks_complete else how)
        final = Proc(self.args(out), self.logs, f"prepare-{seed}-final", launcher=self.launcher)
        rc = final.wait()
        if rc != 0:
            problems.append(f"the re-run failed ({rc}): {last_line(final.stderr)}")
        else:
            m = re.search(r"resuming .* after (\d+) finished shard", final.stderr)
            a, b = self.summary(out), self.summary(self.ref)
            diff = sorted(k for k in a if a[k] != b[k])
            notes.append(f"re-run resumed after {m.group(1) if m else 0} shard(s); "
                         + ("manifest counts, blocks and documents equal" if not diff else f"DIFFER in {diff}"))
            if diff:
                problems.append(f"the finished corpus differs from the uninterrupted one in {diff}")
        shutil.rmtree(out, ignore_errors=True)
        return Trial("prepare-kill", f"prepare kill {seed}", seed, f"{mode} kill" + (" + a second kill" if kills > 1
                                                                                     else ""),
                     "; ".join(notes + problems), not problems, time.monotonic() - t0)


# ====================================================================================================
# Full disk
# ====================================================================================================

class DiskUnavailable(Exception):
    """No small filesystem can be mounted here (not root)."""


@contextlib.contextmanager
def small_disk(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes at ``path`` (needs root); unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise DiskUnavailable((r.stderr or r.stdout).strip() or "mount failed")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> int:
    """Write a ballast file under ``path`` so that about ``leave`` bytes stay free; return the free bytes."""
    size = free_bytes(path) - leave
    with open(path / "ballast", "wb") as fh:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            n = min(size, len(chunk))
            fh.write(chunk[:n])
            size -= n
    return free_bytes(path)


def disk_full_checkpoint(bench: AdaptTrials, free_kib: int) -> Trial:
    """Fill the disk after the first checkpoint, leaving ``free_kib`` for the second (which needs ~2.9 MiB)."""
    t0 = time.monotonic()
    first = f"step-{bench.ckpt_steps[0]:08d}"
    notes: list[str] = []
    problems: list[str] = []
    with small_disk(bench.work / "disk-adapt", 64 << 20) as mnt:
        run = mnt / "run"
        proc = bench.launch(bench.args(run), f"disk-adapt-{free_kib}")
        if not proc.wait_for(lambda: (run / "checkpoints" / first / "manifest.json").is_file()):
            return Trial("disk-full", f"checkpoint, {free_kib} KiB free", None, "", "the run ended before checkpoint "
                         f"{first}: {last_line(proc.stderr)}", False, time.monotonic() - t0)
        os.kill(proc.pid, signal.SIGSTOP)  # hold training while the ballast is written (steps take ~0.1 s)
        try:
            free = fill(mnt, free_kib << 10)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        rc = proc.wait()
        err = proc.stderr
        msg = last_line(err)
        notes.append(f"{free >> 10} KiB free when checkpoint {bench.ckpt_steps[1]} was written; exit {rc}: {msg!r}")
        if rc != 1 or "no space left" not in last_line(err, None) or not no_traceback(err):
            problems.append("expected exit 1 with a one-line 'no space left' message and no traceback")
        complete = bench.complete_steps(run)
        leftovers = [p.name for p in (run / "checkpoints").glob(".*")]
        if complete != [bench.ckpt_steps[0]]:
            problems.append(f"complete checkpoints after the failure: {complete}, expected [{bench.ckpt_steps[0]}]")
        else:
            equal, _ = weights_diff(run / "checkpoints" / first, bench.ref / "checkpoints" / first)
            notes.append(f"{first} intact ({'equal to the reference' if equal else 'DIFFERS'})")
            if not equal:
                problems.append(f"{first} changed")
        if leftovers:
            problems.append(f"temporary folders left behind: {leftovers}")
        (mnt / "ballast").unlink()
        resumed = bench.launch(bench.args(run, "--resume"), f"disk-adapt-{free_kib}-resume")
        if resumed.wait() != 0:
            problems.append(f"resume after freeing space failed: {last_line(resumed.stderr)}")
        else:
            equal, diff = weights_diff(bench.ref / "final" / "model.safetensors", run / "final" / "model.safetensors")
            notes.append(f"after freeing space, resumed from step {resumed_step(resumed.stderr)}: final weights "
                         + ("bitwise equal to the uninterrupted run" if equal else f"max |diff| {diff:.3g}"))
            if not (equal or diff <= 1e-6):
                problems.append("the resumed run's final weights differ")
    return Trial("disk-full", f"checkpoint write, {free_kib} KiB free", None,
                 f"full disk during `adapt` checkpoint {bench.ckpt_steps[1]} ({free_kib} KiB left)",
                 "; ".join(notes + problems), not problems, time.monotonic() - t0)


def disk_full_publish(bench: AdaptTrials, free_kib: int = 256) -> Trial:
    """Publish once, fill the disk, publish again with --overwrite and to a new folder: both must fail cleanly
    and the first publication must stay intact and loadable."""
    from domainlm.artifacts import read_manifest, sha256_file

    t0 = time.monotonic()
    notes: list[str] = []
    problems: list[str] = []
    with small_disk(bench.work / "disk-publish", 64 << 20) as mnt:
        out = mnt / "published"
        first = bench.launch(["publish", str(bench.ref), "--out", str(out)], "disk-publish-first")
        if first.wait() != 0:
            return Trial("disk-full", "publish", None, "", f"the first publish failed: {last_line(first.stderr)}",
                         False, time.monotonic() - t0)
        free = fill(mnt, free_kib << 10)
        again = bench.launch(["publish", str(bench.ref), "--out", str(out), "--overwrite"], "disk-publish-overwrite")
        rc = again.wait()
        msg = last_line(again.stderr)
        notes.append(f"publish --overwrite with {free >> 10} KiB free: exit {rc}: {msg!r}")
        if rc != 1 or "no space left" not in last_line(again.stderr, None) or not no_traceback(again.stderr):
            problems.append("expected exit 1 with a one-line 'no space left' message and no traceback")
        try:
            manifest = read_manifest(out, "published")
            bad = [f["path"] for f in manifest["files"] if sha256_file(out / f["path"]) != f["sha256"]]
            if bad:
                problems.append(f"files of the earlier publication changed: {bad}")
            from transformers import AutoModelForCausalLM, AutoTokenizer

            AutoTokenizer.from_pretrained(out)
            model = AutoModelForCausalLM.from_pretrained(out)
            notes.append(f"earlier publication intact: manifest complete, {len(manifest['files'])} file hashes match, "
                         f"reloads with transformers ({sum(p.numel() for p in model.parameters()):,} parameters)")
        except Exception as exc:  # the earlier publication must survive whatever happened
            problems.append(f"the earlier publication is damaged: {type(exc).__name__}: {exc}")
        second = bench.launch(["publish", str(bench.ref), "--out", str(mnt / "second")], "disk-publish-new")
        rc2 = second.wait()
        msg2 = last_line(second.stderr)
        left = sorted(p.name for p in mnt.iterdir() if p.name not in ("published", "ballast"))
        notes.append(f"publish to a new folder: exit {rc2}: {msg2!r}; left on the disk: {left or 'nothing'}")
        if rc2 != 1 or "no space left" not in last_line(second.stderr, None) or not no_traceback(second.stderr):
            problems.append("publish to a new folder: expected exit 1 with a clear message")
        if left:
            problems.append(f"a failed publish left {left}")
    return Trial("disk-full", "publish", None, f"full disk during `publish` ({free_kib} KiB left)",
                 "; ".join(notes + problems), not problems, time.monotonic() - t0)
