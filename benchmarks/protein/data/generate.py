"""Regenerate the protein suite's shipped data (deterministic; run from anywhere).

    python benchmarks/protein/data/generate.py

* ``property/{train,test}.fasta``: synthetic sequences whose header label depends on residue
  *order*, not composition: the mean helical hydrophobic moment (Eisenberg et al. 1982; binary
  hydrophobicity, 100 degrees per residue, 11-residue windows) + N(0, 0.02). Every sequence has
  exactly 45% hydrophobic residues (A V I L M F W C), drawn at random within each class, and only
  their placement varies (from periodic, amphipathic-helix-like, to random), so amino-acid counts
  carry no signal. (The first version's label was the hydrophobic fraction itself, which even a
  random-weights model recovered at Spearman 0.98.) Headers follow ESM's DMS files,
  ``>ID|property|LABEL``, so one reader serves both.
* ``structures/{train,test}/*.pdb``: small idealised proteins built with Bio.PDB from generated
  coordinates -- helix bundles (3.8 A C-alpha spacing, 100 degrees and 1.5 A rise per residue,
  helix axes ~10 A apart) and antiparallel beta meanders (3.3 A rise, strands 4.8 A apart) joined by
  loops. C-beta atoms sit 1.53 A from C-alpha on the outward bisector of the neighbouring C-alpha
  bonds; glycines have none (contacts then use C-alpha). Helices and strands are long enough that
  residues far apart in sequence touch, so long-range contacts (separation >= 24) exist.

Nothing here is copied from real structures or sequences; it exercises the code paths and gives a
signal an attention-based contact regression can pick up.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HYDROPHOBIC = "AVILMFWC"
POLAR = "DEKRNQSTHGPY"
AA3 = {"A": "ALA", "C": "CYS", "D": "ASP", "E": "GLU", "F": "PHE", "G": "GLY", "H": "HIS", "I": "ILE", "K": "LYS",
       "L": "LEU", "M": "MET", "N": "ASN", "P": "PRO", "Q": "GLN", "R": "ARG", "S": "SER", "T": "THR", "V": "VAL",
       "W": "TRP", "Y": "TYR"}


# --------------------------------------------------------------------------------------------------
# Property regression
# --------------------------------------------------------------------------------------------------

def composition_records(n: int, rng: random.Random, prefix: str) -> list[tuple[str, str, float]]:
    """The first version's property (hydrophobic fraction + noise): no longer written, but drawn so
    that the random stream of the structures below, and so the shipped PDB files, stay the same."""
    out = []
    for i in range(n):
        length = rng.randint(40, 140)
        p = rng.uniform(0.15, 0.75)
        seq = "".join(rng.choice(HYDROPHOBIC) if rng.random() < p else rng.choice(POLAR) for _ in range(length))
        seq = "M" + seq[1:]
        frac = sum(c in HYDROPHOBIC for c in seq) / len(seq)
        out.append((f"{prefix}{i:04d}", seq, round(frac + rng.gauss(0.0, 0.03), 4)))
    return out


def hydrophobic_moment(seq: str, window: int = 11, angle: float = 100.0) -> float:
    """Mean over windows of |sum_j h_j exp(i j angle)| / window, h = +1 hydrophobic, -1 otherwise."""
    h = np.array([1.0 if c in HYDROPHOBIC else -1.0 for c in seq])
    phase = np.exp(1j * np.deg2rad(angle) * np.arange(len(seq)))
    z = h * phase
    sums = np.convolve(z, np.ones(window), mode="valid")
    return float(np.mean(np.abs(sums)) / window)


def property_records(n: int, rng: random.Random, prefix: str) -> list[tuple[str, str, float]]:
    out = []
    for i in range(n):
        length = rng.randint(60, 140)
        n_h = round(0.45 * length)
        a = rng.random()                      # 0: random placement, 1: ideal amphipathic helix
        phi = rng.uniform(0, 2 * math.pi)
        score = [a * math.cos(math.radians(100.0) * k + phi) + (1 - a) * rng.uniform(-1, 1) for k in range(length)]
        hydro = set(sorted(range(length), key=lambda k: -score[k])[:n_h])
        seq = "".join(rng.choice(HYDROPHOBIC) if k in hydro else rng.choice(POLAR) for k in range(length))
        out.append((f"{prefix}{i:04d}", seq, round(hydrophobic_moment(seq) + rng.gauss(0.0, 0.02), 4)))
    return out


def write_fasta(path: Path, records: list[tuple[str, str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for rid, seq, label in records:
        lines.append(f">{rid}|hydrophobic_moment_noisy|{label}")
        lines.extend(seq[k:k + 60] for k in range(0, len(seq), 60))
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------------------------------

def helix(n: int, axis_xy: tuple[float, float], z0: float, up: bool, phase: float) -> np.ndarray:
    step = math.radians(100.0)
    sign = 1.0 if up else -1.0
    return np.array([[axis_xy[0] + 2.3 * math.cos(phase + k * step), axis_xy[1] + 2.3 * math.sin(phase + k * step),
                      z0 + sign * 1.5 * k] for k in range(n)])


def strand(n: int, x: float, z0: float, up: bool) -> np.ndarray:
    sign = 1.0 if up else -1.0
    return np.array([[x, 1.0 * (-1) ** k, z0 + sign * 3.3 * k] for k in range(n)])


def loop(a: np.ndarray, b: np.ndarray, rng: random.Random) -> np.ndarray:
    """C-alpha positions bridging a -> b, ~3.6 A apart, bulging away from the protein's centre line."""
    dist = float(np.linalg.norm(b - a))
    n = max(2, int(math.ceil(dist / 3.0)) + 1)
    mid = (a + b) / 2
    out_dir = np.array([mid[0], mid[1], 0.0])
    out_dir = out_dir / (np.linalg.norm(out_dir) or 1.0)
    pts = []
    for k in range(1, n):
        t = k / n
        bulge = math.sin(math.pi * t) * (2.5 + rng.random())
        pts.append(a + (b - a) * t + out_dir * bulge + np.array([0.0, 0.0, math.sin(math.pi * t) * 2.0]))
    return np.array(pts)


def assemble(segments: list[tuple[np.ndarray, str]], rng: random.Random) -> tuple[np.ndarray, str]:
    """Join segments with loops; returns C-alpha coordinates and the secondary structure string."""
    coords, ss = [segments[0][0]], segments[0][1] * len(segments[0][0])
    for seg, kind in segments[1:]:
        bridge = loop(coords[-1][-1], seg[0], rng)
        coords += [bridge, seg]
        ss += "L" * len(bridge) + kind * len(seg)
    return np.concatenate(coords), ss


def bundle(rng: random.Random) -> tuple[np.ndarray, str]:
    n_helix = rng.choice([2, 3, 3, 4])
    radius = 5.2 if n_helix > 2 else 5.0
    length = rng.randint(16, 24)
    segs = []
    for h in range(n_helix):
        ang = 2 * math.pi * h / n_helix
        xy = (radius * math.cos(ang), radius * math.sin(ang))
        up = h % 2 == 0
        z0 = 0.0 if up else 1.5 * (length - 1)
        segs.append((helix(length, xy, z0, up, phase=ang + math.pi + rng.uniform(-0.3, 0.3)), "H"))
    return assemble(segs, rng)


def meander(rng: random.Random) -> tuple[np.ndarray, str]:
    """An antiparallel sheet; strands are placed in a shuffled order (Greek-key-like), so some
    neighbours in space are far apart in sequence."""
    n_strand = rng.choice([4, 5])
    length = rng.randint(10, 13)
    slots = rng.choice([[0, 1, 2, 3, 4], [1, 0, 3, 2, 4], [0, 3, 2, 1, 4], [3, 0, 1, 2, 4]])[:n_strand]
    if sorted(slots) != list(range(n_strand)):
        slots = list(range(n_strand))
    segs = []
    for s in range(n_strand):
        up = s % 2 == 0
        x = 4.8 * slots[s] - 2.4 * (n_strand - 1)
        segs.append((strand(length, x, 0.0 if up else 3.3 * (length - 1), up), "E"))
    return assemble(segs, rng)


def beta_positions(ca: np.ndarray) -> np.ndarray:
    """C-beta 1.53 A from C-alpha, on the outward bisector of the two C-alpha bonds."""
    cb = np.empty_like(ca)
    for i in range(len(ca)):
        prev = ca[i - 1] if i > 0 else ca[i] - (ca[i + 1] - ca[i])
        nxt = ca[i + 1] if i + 1 < len(ca) else ca[i] + (ca[i] - ca[i - 1])
        d = (ca[i] - prev) / np.linalg.norm(ca[i] - prev) + (ca[i] - nxt) / np.linalg.norm(ca[i] - nxt)
        cb[i] = ca[i] + 1.53 * d / (np.linalg.norm(d) or 1.0)
    return cb


def sequence_for(ca: np.ndarray, cb: np.ndarray, ss: str, rng: random.Random) -> str:
    """Hydrophobic residues where the side chain points at the core, polar ones outside, G/P/N/D in loops."""
    centre = ca.mean(axis=0)
    seq = []
    for i, kind in enumerate(ss):
        if kind == "L":
            seq.append(rng.choice("GGPNDSG"))
            continue
        inward = np.dot(cb[i] - ca[i], centre - ca[i]) > 0
        seq.append(rng.choice("LIVFAM" if inward else ("EKQRSTD" if kind == "H" else "TKRSEQY")))
    seq[0] = "M"
    return "".join(seq)


def write_pdb(path: Path, name: str, seq: str, ca: np.ndarray, cb: np.ndarray) -> None:
    from Bio.PDB import PDBIO
    from Bio.PDB.StructureBuilder import StructureBuilder

    sb = StructureBuilder()
    sb.init_structure(name)
    sb.init_model(0)
    sb.init_chain("A")
    sb.init_seg("    ")
    serial = 1
    for i, aa in enumerate(seq):
        sb.init_residue(AA3[aa], " ", i + 1, " ")
        sb.init_atom("CA", ca[i].astype("f"), 0.0, 1.0, " ", " CA ", serial, "C")
        serial += 1
        if aa != "G":
            sb.init_atom("CB", cb[i].astype("f"), 0.0, 1.0, " ", " CB ", serial, "C")
            serial += 1
    io = PDBIO()
    io.set_structure(sb.get_structure())
    path.parent.mkdir(parents=True, exist_ok=True)
    io.save(str(path))


def structures(folder: Path, n: int, rng: random.Random, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.pdb"):
        old.unlink()
    for i in range(n):
        ca, ss = (bundle if i % 2 == 0 else meander)(rng)
        ca = ca + np.array([rng.gauss(0, 0.25) for _ in range(ca.size)]).reshape(ca.shape)
        cb = beta_positions(ca)
        seq = sequence_for(ca, cb, ss, rng)
        write_pdb(folder / f"{prefix}{i:02d}.pdb", f"{prefix}{i:02d}", seq, ca, cb)


def main() -> None:
    rng = random.Random(20240601)
    composition_records(280, rng, "")           # keeps the structures' random stream (see its docstring)
    prop_rng = random.Random(20261204)
    write_fasta(HERE / "property" / "train.fasta", property_records(1000, prop_rng, "prop_tr"))
    write_fasta(HERE / "property" / "test.fasta", property_records(400, prop_rng, "prop_te"))
    structures(HERE / "structures" / "train", 14, rng, "syn_tr")
    structures(HERE / "structures" / "test", 6, rng, "syn_te")
    print(f"wrote {HERE}/property and {HERE}/structures")


if __name__ == "__main__":
    main()
