"""Self-describing output folders: atomic writes, manifests, hashes and package versions.

Every folder domainlm writes (prepared corpus, run, checkpoint, bench report, published model)
carries a ``manifest.json``. Writes go to a temporary name first and are renamed into place, so a
crash never leaves a half-written file or folder that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# The keys a manifest reader understands; newer writers may add more (tolerated with a warning).
KNOWN_KEYS = {
    "manifest_version", "kind", "complete", "created", "config", "inputs", "counts", "versions",
    "flops", "wall_time_s", "metrics", "notes",
}

_VERSION_PACKAGES = ("domainlm", "torch", "transformers", "peft", "datasets", "accelerate", "tokenizers")


# Free bytes below which a failed write is taken for a full disk (see _disk_full).
_NEARLY_FULL = 1 << 20


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (raised while writing into ``folder``) came from a full disk.

    Writers that are not Python file objects do not raise ``OSError(ENOSPC)``: safetensors raises
    ``SafetensorError("... No space left on device (os error 28)")`` and ``torch.save`` a ``RuntimeError``
    about an unexpected stream position. So besides the errno, the message is checked and, for a
    ``RuntimeError``, whether the disk is (nearly) full at the moment of the failure.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(exc) or "os error 28" in str(exc):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (and the folders) to disk, so a power loss after the rename cannot
    leave a complete-looking folder with empty files (SIGKILL alone does not need this)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened and synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _disk_error(path: Path, exc: OSError) -> DomainLMError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DomainLMError(f"no space left on the device while writing {path}; free some space and run the "
                             "command again (the previous complete files were left untouched)")
    return DomainLMError(f"could not write {path}: {exc.strerror or exc}")


def _umask() -> int:
    """The process umask (reading it means setting it, so it is restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates files readable by their owner only; give them the usual umask-based mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _disk_error(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# Temporary folders carry their writer (host and pid), so a later run can tell a killed writer's leftovers from a
# folder another live process is still writing.
_OWNER = f"{socket.gethostname().split('.')[0].replace('-', '_')}_{os.getpid()}"
# Temporary folders named without an owner (older domainlm), or by another host, are stale after a day.
_STALE_S = 24 * 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(final: str | Path) -> list[Path]:
    """Remove the ``.NAME.<owner>-<random>.tmp`` folders that a killed writer of ``final`` left (the full weights of
    an interrupted publish, say); returns what was removed. A folder whose writer runs on this host and is still
    alive is kept; one from another host, or named by an older domainlm, only once it is a day old."""
    final = Path(final)
    removed = []
    for tmp in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        if not tmp.is_dir():
            continue
        owner = tmp.name[len(final.name) + 2:].rsplit("-", 1)[0]
        host, _, pid = owner.rpartition("_")
        stale = False
        if host == _OWNER.rpartition("_")[0] and pid.isdigit():
            stale = int(pid) != os.getpid() and not _alive(int(pid))
        else:
            with contextlib.suppress(OSError):
                stale = time.time() - tmp.stat().st_mtime > _STALE_S
        if stale:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    if removed:
        import logging

        logging.getLogger(__name__).info("removed %d stale temporary folder(s) of %s left by an interrupted run",
                                         len(removed), final)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is renamed to ``final`` (replacing it).

    On any error the temporary folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_OWNER}-", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes owner-only folders
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(final, exc) from None
    except DomainLMError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        full = _disk_full(exc, tmp)  # before the clean-up frees the space again
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise _disk_error(final, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def why_not_replace(folder: str | Path, kinds: tuple[str, ...], *, inputs: tuple[str | Path | None, ...] = (),
                    markers: tuple[str, ...] = ()) -> str | None:
    """Why domainlm must not delete ``folder`` to write there again (``--overwrite``), or None when it may.

    The one rule of every verb that replaces a folder: domainlm deletes only what it wrote, so ``folder`` must be
    absent, empty, or hold a ``manifest.json`` whose kind is one of ``kinds`` (or a file matching one of the glob
    patterns ``markers``: what an unfinished domainlm command leaves before its manifest). Never the working directory or one of its parents,
    and never a folder that is or holds one of the command's ``inputs`` (``publish runs/x --out runs``).
    """
    path = Path(folder).absolute()
    here = Path.cwd().absolute()
    if path == here or path in here.parents:
        return (f"{folder} is the working directory or one of its parents; domainlm never replaces it: choose a new "
                "folder")
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        src = Path(item).resolve()
        if src == path.resolve() or path.resolve() in src.parents:
            return f"{folder} holds the input {item}; replacing it would delete that input: choose another folder"
    if not path.is_dir() or not any(path.iterdir()):
        return None
    kind = peek_manifest(path).get("kind")
    if kind in kinds or any(next(path.glob(m), None) is not None for m in markers):
        return None
    what = f"a '{kind}' folder" if kind else "not a folder domainlm wrote"
    return (f"{folder} exists and is {what}; domainlm never deletes folders it did not write: choose a new or empty "
            "folder")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    import platform

    out["python"] = platform.python_version()
    return out


def write_manifest(folder: str | Path, kind: str, *, complete: bool = True, **fields: Any) -> dict[str, Any]:
    """Write ``folder/manifest.json`` atomically and return it.

    ``kind`` names the artifact ("corpus", "run", "checkpoint", "bench", "published").
    """
    import datetime as _dt

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "kind": kind,
        "complete": complete,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
    }
    manifest.update(fields)
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | Path, kind: str | None = None, *, require_complete: bool = True) -> dict[str, Any]:
    """Read a manifest, refusing missing, corrupt, incomplete or wrong-kind ones with a clear message."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        from domainlm.errors import IncompleteArtifactError

        raise IncompleteArtifactError(f"{folder} has no {MANIFEST}: it is not a finished domainlm folder "
                                      "(was the command that writes it interrupted? run it again)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DomainLMError(f"{path} is not valid JSON ({exc}); re-create the folder") from None
    if not isinstance(manifest, dict):
        raise DomainLMError(f"{path} does not hold a JSON object; re-create the folder")
    if kind is not None and manifest.get("kind") != kind:
        raise DomainLMError(f"{folder} is a '{manifest.get('kind')}' folder, expected a '{kind}' folder")
    if require_complete and not manifest.get("complete", False):
        from domainlm.errors import IncompleteArtifactError

        raise IncompleteArtifactError(f"{path} says the folder is incomplete; finish it (e.g. with --resume) or "
                                      "re-create it")
    unknown = set(manifest) - KNOWN_KEYS
    unknown = {k for k in unknown if not k.startswith("x_")}
    if unknown and manifest.get("manifest_version", 1) > MANIFEST_VERSION:
        warnings.warn(f"{path} has keys this domainlm version does not know: {sorted(unknown)}; ignoring them",
                      stacklevel=2)
    return manifest


def peek_manifest(folder: str | Path) -> dict[str, Any]:
    """``folder``'s manifest through :func:`read_manifest`, finished or not, or ``{}`` where it has none or it cannot
    be read: for questions with a safe answer without one (is this a run folder? may a file's hash be reused?)."""
    try:
        return read_manifest(folder, require_complete=False)
    except (DomainLMError, OSError):
        return {}
