"""From a task's files to checked splits: path resolution, carving, label checks, example caps.

Bad input stops here with a :class:`DataError` naming the file, the line and the fix: a missing or
empty split, a label outside the task's label list, an evaluation split with labels the train split
never shows. Labels outside the list may instead be dropped when the task says
``other_labels: drop``; every drop is counted, logged and recorded in the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from domainlm.errors import DataError
from domainlm.tasks.builtin import FORMATS
from domainlm.tasks.readers.base import Example
from domainlm.tasks.spec import TaskSpec

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    """The splits of one task after every check, with the label set used for heads and metrics."""

    splits: dict[str, list[Example]]
    labels: list[str] | None
    files: dict[str, str]
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, dict] = field(default_factory=dict)  # split -> {"counts": {reason: n}, "examples": ...}
    sources: list[dict] = field(default_factory=list)  # real suites: each data file's sha256, pinned sha256, url
    shortened: list[str] = field(default_factory=list)  # how the run departs from the task's protocol (budget flags)

    @property
    def train(self) -> list[Example]:
        return self.splits.get("train", [])

    @property
    def test(self) -> list[Example]:
        return self.splits["test"]


def resolve_path(spec: TaskSpec, split: str, data_root: str | Path | None) -> Path:
    """A split's file: absolute as given, else under ``data_root`` when set, else beside the task file."""
    raw = Path(spec.files[split]).expanduser()
    if raw.is_absolute():
        return raw
    return (Path(data_root).expanduser() / raw) if data_root else (spec.folder / raw)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: the test_ids file was not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [str(k) for k in (data if isinstance(data, list) else data.keys())]


def _label_names(ex: Example, spec: TaskSpec) -> list[tuple[str, str]]:
    """(label, where) pairs a record uses: entity types for tokens, values for classification."""
    if spec.head == "token":
        wheres = ex.tag_where or [ex.where] * len(ex.tags or [])
        return [(t[2:], w) for t, w in zip(ex.tags or [], wheres, strict=True) if t != "O"]
    if spec.head == "multilabel":
        return [(label, ex.where) for label in ex.label]
    if spec.head == "sequence" and ex.label is not None:
        return [(ex.label, ex.where)]
    return []


def _apply_label_list(examples: list[Example], spec: TaskSpec, allowed: set[str], notes: list[str],
                      split: str) -> list[Example]:
    """Refuse (or drop, under other_labels: drop) labels outside the task's list."""
    kept, dropped = [], Counter()
    for ex in examples:
        bad = [(label, w) for label, w in _label_names(ex, spec) if label not in allowed]
        if not bad:
            kept.append(ex)
            continue
        if spec.other_labels == "error":
            label, where = bad[0]
            raise DataError(f"{where}: label {label!r} is not in the label list of task '{spec.task_name}' "
                            f"({', '.join(sorted(allowed))}). Fix: add it to 'labels:' in {spec.source}, correct "
                            "the record, or set other_labels: drop to skip such labels")
        if spec.head == "token":
            dropped.update(t[2:] for t in ex.tags if t.startswith("B-") and t[2:] not in allowed)
        else:
            dropped.update(label for label, _ in bad)
        if spec.head == "token":
            ex.tags = ["O" if t != "O" and t[2:] not in allowed else t for t in ex.tags]
            kept.append(ex)
        elif spec.head == "multilabel":
            ex.label = [x for x in ex.label if x in allowed]
            kept.append(ex)
        # sequence: the record is skipped
    if dropped:
        what = "entity mentions turned to O" if spec.head == "token" else "labels dropped"
        msg = f"{split}: {sum(dropped.values())} {what} (other_labels: drop): " + \
              ", ".join(f"{k} x{v}" for k, v in dropped.most_common())
        log.info("task %s: %s", spec.task_name, msg)
        notes.append(msg)
    return kept


def _carve(test: list[Example], spec: TaskSpec) -> tuple[list[Example], list[Example]]:
    """Move ``carve_train`` of the records into train: whole documents for token tasks, stratified
    by label for single-label tasks, random otherwise. Seeded; order within each split is kept."""
    rng = random.Random(spec.split_seed)
    frac = spec.carve_train
    groups = [ex.group for ex in test]
    if spec.head in ("token", "contacts") and all(groups):
        names = sorted(set(groups))
        rng.shuffle(names)
        k = max(1, min(len(names) - 1, round(frac * len(names)))) if len(names) > 1 else 0
        if k:
            chosen = set(names[:k])
            return [ex for ex in test if ex.group in chosen], [ex for ex in test if ex.group not in chosen]
    if spec.head == "sequence":
        by_label: dict[str, list[int]] = {}
        for i, ex in enumerate(test):
            by_label.setdefault(str(ex.label), []).append(i)
        chosen_idx = set()
        for idx in by_label.values():
            rng.shuffle(idx)
            chosen_idx.update(idx[:round(frac * len(idx))])
    else:
        idx = list(range(len(test)))
        rng.shuffle(idx)
        chosen_idx = set(idx[:round(frac * len(idx))])
    train = [ex for i, ex in enumerate(test) if i in chosen_idx]
    return train, [ex for i, ex in enumerate(test) if i not in chosen_idx]


def _cap(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or len(examples) <= n:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def _read(reader, path: Path, spec: TaskSpec, split: str, skipped: dict[str, dict]) -> list[Example]:
    """Run a reader with a skip log for ``on_error: skip`` (corpora's SkipLog: counts and examples)."""
    from domainlm.documents.readers import SkipLog
    from domainlm.tasks.readers.base import SKIPS

    skips = SkipLog()
    token = SKIPS.set(skips)
    try:
        out = reader(path, spec, split)
    finally:
        SKIPS.reset(token)
    if skips.counts:
        skipped[split] = skips.snapshot()
        log.warning("task %s, %s: skipped %s", spec.task_name, split, dict(skips.counts))
    return out


def _dev_splits(spec: TaskSpec) -> tuple[str, ...]:
    """The files ``split: dev`` reads: never the test file (so choosing on dev cannot see test)."""
    if "dev" in spec.files:
        return tuple(s for s in ("train", "dev") if s in spec.files)
    if "train" in spec.files:
        return ("train",)
    if spec.test_ids:
        return ("test",)  # one file holds both: its test records (test_ids) are dropped at once, unscored
    raise DataError(f"{spec.source}: task '{spec.task_name}' has neither a dev nor a train split, so it cannot be "
                    "scored without its test split. Fix: give it a dev file (files.dev, or --override "
                    f"{spec.task_name}.dev=PATH), or leave the task out")


def load_data(spec: TaskSpec, *, data_root: str | Path | None = None, max_examples: int | None = None,
              needs_train: bool = True, split: str = "test", dev_fraction: float = 0.2,
              max_train_examples: int | None = None) -> TaskData:
    """Read, split and check every split of ``spec``; see the module docstring for the checks.

    ``split="dev"`` scores the dev split in the test split's place (the scored split is ``test`` in the
    returned data), or, without one, a seeded ``dev_fraction`` of the train split held out (the model
    trains on the rest); the test file is never opened. ``max_train_examples`` caps the train split only
    (a shortened protocol, noted in the data's notes).
    """
    reader = FORMATS.get(spec.format).fn
    splits: dict[str, list[Example]] = {}
    files: dict[str, str] = {}
    skipped: dict[str, dict] = {}
    dev_mode = split == "dev"
    for split in _dev_splits(spec) if dev_mode else ("train", "dev", "test"):
        if split not in spec.files:
            continue
        path = resolve_path(spec, split, data_root)
        if not path.exists():
            how = f"--data-root {data_root} is set, so paths resolve under it" if data_root else \
                f"paths resolve beside {spec.source}"
            raise DataError(f"{spec.source}: files.{split} -> {path} does not exist ({how}). Fix: correct the path, "
                            f"or point it elsewhere with --override {spec.task_name}.{split}=PATH")
        splits[split] = _read(reader, path, spec, split, skipped)
        files[split] = str(path)
    dev_note = None
    if dev_mode and "test" in splits:  # train = the file's records outside test_ids (PubMedQA's 500 of 1000)
        ids_path = Path(spec.test_ids).expanduser()
        if not ids_path.is_absolute():
            ids_path = (Path(data_root) / ids_path) if data_root else spec.folder / ids_path
        ids = set(_read_ids(ids_path))
        splits["train"] = [ex for ex in splits.pop("test") if ex.id not in ids]
        files["train"] = f"{files.pop('test')} without the ids in {ids_path}"
    if dev_mode:
        if "dev" in splits:
            splits["test"] = splits.pop("dev")
            dev_note = f"scored on the dev split ({files['dev']}), not test"
        elif not needs_train:
            # A zero-shot or perplexity task trains on nothing, so its whole train split is unseen: score all
            # of it (a fifth of PubMedQA's 500 questions could not see a 5-point loss; issue 29).
            splits["test"] = splits.pop("train")
            files["dev"] = f"all of {files['train']} (this mode trains on nothing)"
            dev_note = (f"no dev split: scored on all {len(splits['test'])} records of the train split, which this "
                        "mode does not train on")
        else:
            held, rest = _carve(splits["train"], dataclasses.replace(spec, carve_train=dev_fraction))
            splits["test"] = held
            splits["train"] = rest
            files["dev"] = f"{dev_fraction:.0%} of {files['train']} held out"
            dev_note = (f"no dev split: scored on {len(held)} records ({dev_fraction:.0%}) of the train split held "
                        f"out (seed {spec.split_seed}); probes train on the other {len(rest)}")
        log.info("task %s: %s", spec.task_name, dev_note)
    elif spec.test_ids:
        ids_path = Path(spec.test_ids).expanduser()
        if not ids_path.is_absolute():
            ids_path = (Path(data_root) / ids_path) if data_root else spec.folder / ids_path
        ids = set(_read_ids(ids_path))
        files["test_ids"] = str(ids_path)
        pool = splits["test"]
        splits["test"] = [ex for ex in pool if ex.id in ids]
        if "train" not in splits:
            splits["train"] = [ex for ex in pool if ex.id not in ids]
        missing = len(ids) - len(splits["test"])
        if missing:
            raise DataError(f"{ids_path}: {missing} of its {len(ids)} ids are not records of {files['test']}. "
                            "Fix: use the ids file that belongs to this data file")
    if spec.carve_train is not None and "train" not in splits and not dev_mode:
        splits["train"], splits["test"] = _carve(splits["test"], spec)
    if not needs_train:
        splits.pop("train", None)
        splits.pop("dev", None)
    notes: list[str] = [dev_note] if dev_note else []
    for split, snap in skipped.items():
        total = sum(snap["counts"].values())
        first = next(iter(snap["examples"].values()))[0]
        notes.append(f"{split}: {total} bad record(s) skipped (on_error: skip): "
                     + ", ".join(f"{k} x{v}" for k, v in snap["counts"].items()) + f"; e.g. {first}")
    # Label list first (so the "differ between splits" check sees the labels actually scored).
    labels = list(spec.labels) if spec.labels is not None else None
    if labels is not None:
        for split in list(splits):
            splits[split] = _apply_label_list(splits[split], spec, set(labels), notes, split)
    for split, examples in splits.items():
        if not examples:
            where = files.get(split, files.get("test", files.get("dev")))
            raise DataError(f"{where}: split '{split}' of task '{spec.task_name}' has no records. Fix: point "
                            f"files.{split} at a file with records (or check the reader format '{spec.format}')")
    if spec.head in ("token", "sequence", "multilabel") and "train" in splits:
        seen_train = {label for ex in splits["train"] for label, _ in _label_names(ex, spec)}
        for split in ("dev", "test"):
            for ex in splits.get(split, []):
                for label, where in _label_names(ex, spec):
                    if label not in seen_train:
                        raise DataError(
                            f"{where}: label {label!r} appears in the {split} split but never in the train split "
                            f"({files.get('train', 'carved from ' + str(files.get('test')))}), so the label sets of the "
                            f"splits differ and no model can learn it. Fix: add train records with {label!r}, "
                            "remove it from the evaluation split, or list the scored labels in 'labels:' with "
                            "other_labels: drop")
        seen_test = {label for ex in splits["test"] for label, _ in _label_names(ex, spec)}
        unused = sorted(seen_train - seen_test)
        if unused:
            notes.append(f"labels in train but not in test (scored as false positives only): {', '.join(unused)}")
            log.warning("task %s: labels in train but not in test: %s", spec.task_name, ", ".join(unused))
        if labels is None:
            labels = sorted(seen_train)
    elif labels is None and spec.head in ("token", "sequence", "multilabel"):
        labels = sorted({label for ex in splits["test"] for label, _ in _label_names(ex, spec)})
    if max_examples is not None:
        # Capped after the checks: the checks are about the files, the cap about run time.
        splits = {k: _cap(v, max_examples, spec.split_seed) for k, v in splits.items()}
    if max_train_examples is not None and len(splits.get("train", [])) > max_train_examples:
        notes.append(f"train split capped at {max_train_examples} of {len(splits['train'])} records "
                     "(--max-train-examples)")
        splits["train"] = _cap(splits["train"], max_train_examples, spec.split_seed)
    if spec.head == "sequence" and labels is not None and len(labels) < 2 and spec.mode != "zeroshot":
        raise DataError(f"{files.get('train', files.get('test'))}: task '{spec.task_name}' has only the label(s) "
                        f"{labels}; a classifier needs at least two. Fix: check label_field and the data")
    return TaskData(splits, labels, files, notes, skipped)
