"""Regenerate the materials suite's glass vs non-glass data (deterministic; run from anywhere).

    python benchmarks/materials/data/generate.py

``glass/{train,test}.csv`` in MatSciBERT's layout (``Abstract,Label``; 1 = about glass). Written for
this project from templates; nothing is copied from real abstracts.

The split is a *lexical shift*, so that the task measures what a model knows rather than which
keywords it was shown. The sentences on methods and results are drawn from one pool for both
classes, so only the topic tells the classes apart, and the topic vocabularies of train and test
are disjoint:

* train positives name their topic with the word "glass" (soda-lime glass, metallic glass, ...);
  test positives never use it (vitreous silica, amorphous ribbons, vitrified waste forms, ...);
* train and test negatives come from different materials fields;
* both splits hold hard negatives that use "glass" in another sense (glassy carbon electrodes,
  glass substrates, glass-fibre composites).

A probe over a model without pretraining only sees new, random word vectors on the test topics
and lands near chance; a pretrained model can map "vitreous" and "amorphous solid" onto "glass".
An earlier version shared the keywords between the splits, and every model scored macro-F1 1.000.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (topic phrase, short form) per class and split; the two splits share no topic word.
POS_TRAIN = [("soda-lime silicate glass", "the glass"), ("chalcogenide glass", "the glass"),
             ("Zr-based metallic glass", "the metallic glass"), ("borosilicate glass", "the glass"),
             ("phosphate glass", "the glass"), ("fluoride glass fibre", "the glass"),
             ("lead-free sealing glass", "the glass"), ("glass-ceramic", "the glass-ceramic"),
             ("bioactive glass", "the glass"), ("tellurite glass", "the glass")]
POS_TEST = [("vitreous silica", "the vitreous network"), ("amorphous Pd-Ni-P ribbons", "the amorphous ribbons"),
            ("vitrified nuclear waste form", "the vitrified product"),
            ("melt-quenched non-crystalline oxide", "the non-crystalline solid"),
            ("fused quartz", "the fused quartz"), ("volcanic obsidian", "the obsidian"),
            ("bulk amorphous alloy", "the amorphous alloy"), ("supercooled aluminosilicate liquid", "the undercooled melt"),
            ("vitreous enamel coating", "the enamel"), ("amorphous selenium film", "the vitreous selenium")]
NEG_TRAIN = [("layered oxide cathode for lithium-ion batteries", "the cathode"),
             ("high-strength low-alloy steel weld", "the weld"), ("carbon-fibre epoxy laminate", "the laminate"),
             ("ZSM-5 zeolite catalyst", "the zeolite"), ("methylammonium lead iodide perovskite", "the perovskite"),
             ("nickel-based superalloy single crystal", "the superalloy"), ("graphene oxide membrane", "the membrane"),
             ("yttria-stabilised zirconia electrolyte", "the electrolyte")]
NEG_TEST = [("polycrystalline alumina ceramic", "the ceramic"), ("titanium aluminide turbine blade", "the blade"),
            ("metal-organic framework adsorbent", "the framework"), ("silicon carbide power device", "the device"),
            ("polyethylene terephthalate film", "the film"), ("copper indium gallium selenide absorber", "the absorber"),
            ("cobalt ferrite nanoparticle", "the nanoparticles"), ("cement paste with fly ash", "the paste")]
HARD_NEG = [("glassy carbon electrode", "the electrode"), ("sensor deposited on a glass substrate", "the sensor"),
            ("glass-fibre reinforced polyamide", "the composite"), ("indium tin oxide on cover glass", "the coating"),
            ("organic transistor on a glass slide", "the transistor")]

OPEN = ["{T} is studied for {use}.", "We report on {t} prepared for {use}.", "{T} attracts interest for {use}.",
        "The structure and properties of {t} were investigated for {use}."]
USE = ["optical components", "energy storage", "structural applications", "biomedical implants",
       "high-temperature service", "sensing", "protective coatings", "catalysis", "photonics"]
METHOD = ["Samples were characterised by X-ray diffraction, Raman spectroscopy and differential scanning "
          "calorimetry.", "Microstructure was examined by scanning and transmission electron microscopy.",
          "Mechanical properties were measured by nanoindentation and three-point bending.",
          "Density functional theory calculations complemented the measurements.",
          "Compositions were varied systematically and annealed at {k} K for {h} h.",
          "Thermal stability was followed by thermogravimetric analysis up to {k} K."]
RESULT = ["The hardness of {s} increased by {p}% with {d} content.", "{S} retained {p}% of its strength after "
          "{n} thermal cycles.", "Adding {d} lowered the characteristic temperature of {s} by {n} K.",
          "The elastic modulus of {s} reached {n} GPa.", "{S} showed a refractive index near 1.{n}.",
          "The ionic conductivity of {s} rose by {p}% at {k} K."]
CLOSE = ["These results guide the design of {t}.", "The approach offers a route to durable {t}.",
         "This work links composition to the performance of {t}."]
DOPANT = ["Al2O3", "B2O3", "La2O3", "TiO2", "Ni", "Cu", "ZnO", "Nb", "MgO", "Y2O3"]


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def abstract(topic: tuple[str, str], rng: random.Random) -> str:
    t, s = topic
    fill = dict(t=t, T=cap(t), s=s, S=cap(s), use=rng.choice(USE), d=rng.choice(DOPANT),
                k=rng.randint(500, 1400), h=rng.randint(1, 48), p=rng.randint(5, 80), n=rng.randint(10, 99))
    parts = [rng.choice(OPEN), *rng.sample(METHOD, 2), *rng.sample(RESULT, 2), rng.choice(CLOSE)]
    return " ".join(p.format(**fill) for p in parts)


def split(n: int, pos: list, neg: list, rng: random.Random) -> list[tuple[str, int]]:
    rows = []
    for i in range(n):
        r = i % 20
        if r < 8:       # 40% glass
            rows.append((abstract(rng.choice(pos), rng), 1))
        elif r < 11:    # 15% hard negatives ("glass" in another sense)
            rows.append((abstract(rng.choice(HARD_NEG), rng), 0))
        else:
            rows.append((abstract(rng.choice(neg), rng), 0))
    rng.shuffle(rows)
    return rows


def write(path: Path, rows: list[tuple[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(["Abstract", "Label"])
        w.writerows(rows)


def main() -> None:
    rng = random.Random(20261204)
    write(HERE / "glass" / "train.csv", split(200, POS_TRAIN, NEG_TRAIN, rng))
    write(HERE / "glass" / "test.csv", split(200, POS_TEST, NEG_TEST, rng))
    print(f"wrote {HERE}/glass")


if __name__ == "__main__":
    main()
