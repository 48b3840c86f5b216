"""The ``pdb`` reader: protein structures -> sequence + residue contact map per chain (contact tasks)."""

from __future__ import annotations

import logging
from pathlib import Path

from domainlm.errors import DataError
from domainlm.tasks.readers.base import Example
from domainlm.tasks.spec import TaskSpec

log = logging.getLogger(__name__)


def read_pdb(path: Path, spec: TaskSpec, split: str) -> list[Example]:
    """A folder (or one file) of PDB structures -> sequence + contact map per chain.

    Contacts: C-beta distance under ``contact_threshold`` (C-alpha for glycine), the definition of
    CASP and of Rao et al. 2020. The first model's first protein chain is used.
    """
    import numpy as np
    from Bio.PDB import PDBParser
    from Bio.PDB.Polypeptide import is_aa, protein_letters_3to1

    files = sorted(path.glob("*.pdb")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .pdb files; point files.{split} at a folder of PDB files")
    parser = PDBParser(QUIET=True)
    out = []
    for f in files:
        try:
            structure = parser.get_structure(f.stem, str(f))
        except Exception as exc:  # Bio.PDB raises assorted errors on broken files
            raise DataError(f"{f}: Bio.PDB cannot read it ({exc}); check the file") from None
        chain = next((c for c in next(iter(structure)) if any(is_aa(r, standard=True) for r in c)), None)
        if chain is None:
            raise DataError(f"{f}: no protein chain with standard residues")
        seq, coords, missing_cb = [], [], 0
        for res in chain:
            if not is_aa(res, standard=True) or "CA" not in res:
                continue
            name = res.get_resname()
            seq.append(protein_letters_3to1.get(name, "X"))
            if name == "GLY":
                coords.append(res["CA"].coord)
            elif "CB" in res:
                coords.append(res["CB"].coord)
            else:
                missing_cb += 1
                coords.append(res["CA"].coord)
        if missing_cb:
            log.warning("%s: %d non-glycine residues lack C-beta; their C-alpha was used", f, missing_cb)
        xyz = np.asarray(coords, dtype=np.float32)
        dist = np.linalg.norm(xyz[:, None, :] - xyz[None, :, :], axis=-1)
        out.append(Example(f.stem, str(f), text="".join(seq), label=dist < spec.contact_threshold, group=f.stem))
    return out
