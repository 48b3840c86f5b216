"""Regenerate the biomed suite's `relation`, `doccls` and `pubmedqa` samples (deterministic; run from anywhere).

    python benchmarks/biomed/data/generate.py

Written for this project from templates, in the real formats (ChemProt-style entity-marked JSONL,
Hallmarks-of-Cancer-style multi-label JSONL, PubMedQA's ``ori_pqal.json`` layout); nothing is copied
from a real corpus or from ../shared/realdata.

Each split is a *lexical shift*, as in ``benchmarks/materials/data/generate.py``: what decides the
label (the verb of a relation, the phrase naming a hallmark, the wording of a trial's result) comes
from one vocabulary in train and from a disjoint one, with the same meaning, in test, while everything
else (entity names, cancers, background and methods sentences) is drawn from one pool for every label
and both splits. A probe over a model without pretraining sees new, random word vectors where the
label is decided and lands near chance; a pretrained model can carry "inhibited" to "suppressed",
"apoptosis" to "programmed cell death", "did not differ" to "was similar in both arms". The first
versions shared the wording between the splits, and MiniLM with random weights matched or beat the
pretrained MiniLM on all three (benchmarks/biomed/README.md, "Minimum detectable effect").
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------- relation (ChemProt style)

CHEMICALS = ["captopril", "nicotine", "curcumin", "forskolin", "tunicamycin", "cisplatin", "dexamethasone",
             "indomethacin", "resveratrol", "quercetin", "metformin", "rapamycin", "genistein", "celecoxib",
             "tamoxifen", "verapamil", "ketoconazole", "haloperidol", "clozapine", "sildenafil", "warfarin",
             "bortezomib", "imatinib", "fluoxetine", "propranolol", "atorvastatin", "berberine", "baicalein",
             "lovastatin", "melatonin", "naloxone", "olanzapine", "piroxicam", "ritonavir", "troglitazone"]
PROTEINS = ["CYP3A4", "COX-2", "AMPK", "PPAR-gamma", "mTOR", "HDAC1", "PDE5", "CYP2D6", "MAO-B", "ERK1/2",
            "protein kinase C", "aldose reductase", "thrombin", "JAK2", "SIRT1", "GSK-3beta", "c-KIT", "CDK4",
            "UGT1A1", "P-glycoprotein", "dopamine D2 receptor", "5-HT2A receptor", "beta2-adrenergic receptor",
            "NMDA receptor", "mu-opioid receptor", "estrogen receptor alpha", "angiotensin-converting enzyme",
            "acetylcholinesterase", "xanthine oxidase", "tyrosinase", "sulfotransferase 1A1", "MMP-9"]

# The verb decides the label; train and test share none of the deciding words.
RELATION = {
    "INHIBITOR": {
        "train": ["{C} inhibited {P} activity{where}.", "{C} is a potent inhibitor of {P}{where}.",
                  "{P} was inhibited by {C} with an IC50 of {n} nM{where}.",
                  "Treatment with {c} inhibited {P} in a dose-dependent manner{where}.",
                  "We identified {c} as a selective {P} inhibitor{where}."],
        "test": ["{C} suppressed the catalytic function of {P}{where}.",
                 "{P} activity fell by {p}% after exposure to {c}{where}.",
                 "Exposure to {c} diminished the enzymatic output of {P}{where}.",
                 "{C} abolished {P} activity at nanomolar concentrations{where}.",
                 "{P} was rendered inactive when {c} was added{where}."],
    },
    "ACTIVATOR": {
        "train": ["{C} increased {P} activity{where}.", "{C} is a direct activator of {P}{where}.",
                  "{P} was activated by {c} within minutes{where}.",
                  "Treatment with {c} activated {P} in a dose-dependent manner{where}.",
                  "We identified {c} as a selective {P} activator{where}."],
        "test": ["{C} stimulated the catalytic function of {P}{where}.",
                 "{P} activity rose {k}-fold after exposure to {c}{where}.",
                 "Exposure to {c} boosted the enzymatic output of {P}{where}.",
                 "{C} enhanced {P} signalling at nanomolar concentrations{where}.",
                 "{P} was switched on when {c} was added{where}."],
    },
    "SUBSTRATE": {
        "train": ["{C} is a substrate of {P}{where}.", "{C} was metabolized by {P} to a hydroxylated product{where}.",
                  "{P} catalyzes the metabolism of {c}{where}.",
                  "{C} serves as a substrate for {P}{where}.",
                  "We identified {c} as a {P} substrate{where}."],
        "test": ["{P} converts {c} into an inactive compound{where}.",
                 "{C} is oxidized by {P} before it is excreted{where}.",
                 "The clearance of {c} depends on breakdown by {P}{where}.",
                 "{C} undergoes conjugation by {P} to a polar derivative{where}.",
                 "{P} transforms {c} into its main circulating derivative{where}."],
    },
    "ANTAGONIST": {
        "train": ["{C} is an antagonist of {P}{where}.", "{C} antagonized {P}-mediated responses{where}.",
                  "The {P} antagonist {c} was used to confirm receptor involvement{where}.",
                  "{C} acted as a competitive {P} antagonist{where}.",
                  "We identified {c} as a selective {P} antagonist{where}."],
        "test": ["{C} occupied {P} without switching it on and prevented the agonist's effect{where}.",
                 "Agonist-evoked signals through {P} were reversed by the blocker {c}{where}.",
                 "{C} bound {P} and competed with its natural ligand, leaving it silent{where}.",
                 "{C} behaved as a {P} blocker{where}.",
                 "{C} displaced the endogenous ligand from {P} and stopped its signalling{where}."],
    },
    "NONE": {
        "train": ["{C} and {P} were both measured in the same serum samples{where}.",
                  "Levels of {P} were unrelated to {c} exposure{where}.",
                  "{C} was given to patients in whom {P} expression had been recorded{where}.",
                  "{C} and an antibody against {P} were purchased from commercial suppliers.",
                  "The cohort was genotyped for {P}, and {c} use was taken from pharmacy records."],
        "test": ["{P} genotype was determined before {c} dosing began{where}.",
                 "The survey logged {c} intake and {P} concentrations in separate cohorts.",
                 "{C} was dissolved in DMSO, while {P} was detected with a ready-made kit{where}.",
                 "Reviewers listed {c} and {P} among the topics of the symposium.",
                 "Blood for {P} assays was drawn on the day the {c} prescription was renewed{where}."],
    },
}
WHERE = ["", "", " in HEK293 cells", " in rat liver microsomes", " in human platelets", " in vitro",
         " in mouse striatal slices", " in cultured hepatocytes", " in a cell-free assay", " in vivo"]


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def relation_rows(split: str, n: int, rng: random.Random) -> list[dict]:
    labels = list(RELATION)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        c, p = rng.choice(CHEMICALS), rng.choice(PROTEINS)
        text = rng.choice(RELATION[label][split]).format(
            C=cap(c), c=c, P=p, where=rng.choice(WHERE), n=rng.randint(5, 900), p=rng.randint(40, 95),
            k=rng.randint(2, 9))
        # mark the entities the way ChemProt's entity-marked release does
        first = cap(c) if text.startswith(cap(c)) else c
        text = text.replace(first, f"<< {first} >>", 1).replace(p, f"[[ {p} ]]", 1)
        rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------- doccls (Hallmarks of Cancer style)

GENES = ["ZNF703", "USP22", "Mcl-1", "FOXM1", "SOX2", "KLF5", "TRIM24", "YAP1", "LIN28B", "PRMT5", "CHD1L",
         "MACC1", "ANXA2", "HMGA2", "RUNX1", "NEK2", "FOXC1", "SPP1", "CUL4A", "EZH2", "TWIST1", "PAK4"]
CANCERS = ["gastric cancer", "non-small cell lung cancer", "hepatocellular carcinoma", "colorectal cancer",
           "breast cancer", "glioblastoma", "pancreatic cancer", "prostate cancer", "ovarian cancer", "melanoma"]

HALLMARKS = {
    "sustaining proliferative signaling": {
        "train": ["Overexpression of {g} drove the proliferation of {x} cells through EGFR signalling.",
                  "{G} increased cell proliferation and colony formation in {x} lines.",
                  "Knockdown of {g} reduced proliferation of {x} cells by {p}%."],
        "test": ["{G} amplification made {x} cells divide faster in culture.",
                 "Mitogenic stimulation through {g} kept {x} cells multiplying without added serum.",
                 "Silencing {g} slowed the doubling time of {x} cells by {p}%."]},
    "evading growth suppressors": {
        "train": ["Loss of {g} released {x} cells from RB-mediated growth suppression.",
                  "{G} inactivated p53 and p21 and allowed {x} cells to escape cell-cycle arrest.",
                  "{G} bypassed growth suppressor signalling in {x}."],
        "test": ["{X} cells lacking {g} ignored antiproliferative cues and passed the G1 checkpoint.",
                 "Deletion of {g} abolished contact inhibition in {x} cultures.",
                 "{G} silenced CDKN2A so that {x} cells no longer halted at confluence."]},
    "resisting cell death": {
        "train": ["{G} protected {x} cells from apoptosis induced by cisplatin.",
                  "Depletion of {g} increased caspase-3 cleavage and apoptosis in {x} cells.",
                  "{G} conferred resistance to apoptosis in {x}."],
        "test": ["{G} let {x} cells survive programmed death after chemotherapy.",
                 "Without {g}, {x} cells fragmented their nuclei and died within {n} hours of treatment.",
                 "{G} kept {x} cells alive after detachment from the matrix."]},
    "inducing angiogenesis": {
        "train": ["{G} induced angiogenesis in {x} xenografts through VEGF secretion.",
                  "Knockdown of {g} reduced tumour neovascularization in {x}.",
                  "{G} promoted angiogenesis and microvessel density in {x}."],
        "test": ["{G} attracted new blood vessels into {x} grafts in mice.",
                 "Endothelial sprouting toward {x} spheroids fell when {g} was silenced.",
                 "Tumours of {x} overexpressing {g} were richer in capillaries and perfused better."]},
    "activating invasion and metastasis": {
        "train": ["{G} promoted invasion and metastasis of {x} cells.",
                  "High {g} expression was associated with lymph node metastasis in {n} patients with {x}.",
                  "{G} enhanced the invasive and metastatic capacity of {x}."],
        "test": ["{G} helped {x} cells cross Matrigel and seed distant organs in mice.",
                 "{X} cells lost E-cadherin and gained a mesenchymal, migratory shape when {g} was raised.",
                 "{G} allowed {x} cells to spread from the primary site to the liver and lungs."]},
    "genomic instability and mutation": {
        "train": ["{G} deficiency caused genomic instability in {x} cells.",
                  "Loss of {g} impaired DNA repair and increased the mutation burden of {x}.",
                  "{G} maintained genome stability in {x}."],
        "test": ["Chromosomal aberrations and aneuploidy accumulated in {g}-null {x} cells.",
                 "Without {g}, double-strand breaks persisted and {x} genomes gathered copy-number changes.",
                 "{G} kept chromosome segregation faithful; its loss left {x} cells with scrambled karyotypes."]},
    "tumor promoting inflammation": {
        "train": ["{G} triggered inflammation that promoted {x} progression.",
                  "IL-6 from tumour-associated macrophages induced {g} and inflammation in {x}.",
                  "{G} linked NF-kB driven inflammation to {x} growth."],
        "test": ["Cytokines released by infiltrating myeloid cells raised {g} and fuelled {x} growth.",
                 "{G} kept TNF-alpha and interleukin release high in the {x} microenvironment, and tumours grew.",
                 "A smouldering innate immune response around {x} lesions depended on {g}."]},
    "avoiding immune destruction": {
        "train": ["{G} helped {x} evade immune surveillance.",
                  "{G} induced PD-L1 and immune evasion in {x}.",
                  "Knockdown of {g} restored immune attack on {x} cells."],
        "test": ["{G} protected {x} cells from being killed by cytotoxic T lymphocytes.",
                 "Natural killer cells lysed {x} cells only after {g} was silenced.",
                 "{G} kept lymphocytes out of {x} tumours, which then escaped rejection in mice."]},
}
NEUTRAL = ["The median follow-up time was {m} months.", "Radiotherapy planning used intensity-modulated techniques.",
           "Patient-reported fatigue decreased after a {m}-week supervised exercise programme.",
           "We conducted a population-based study of {x} incidence using regional registry data.",
           "Most participants reported that the decision aid was easy to understand.",
           "Age-standardised incidence of {x} increased slightly over the study period.",
           "Tissue samples from {n} patients with {x} were collected at two centres.",
           "Costs were estimated from the perspective of the health-care payer.",
           "{G} expression was measured by quantitative PCR in {n} {x} specimens.",
           "Survey response rates were similar across regions."]


def doccls_rows(split: str, n: int, rng: random.Random, start: int) -> list[dict]:
    names = list(HALLMARKS)
    rows = []
    for i in range(n):
        k = rng.choice([0, 1, 1, 1, 2])  # hallmarks in this document
        chosen = rng.sample(names, k)
        g, x = rng.choice(GENES), rng.choice(CANCERS)
        fill = dict(g=g, G=g, x=x, X=cap(x), n=rng.randint(12, 400), m=rng.randint(6, 60), p=rng.randint(20, 80))
        sents = [rng.choice(HALLMARKS[h][split]).format(**fill) for h in chosen]
        sents += [rng.choice(NEUTRAL).format(**fill) for _ in range(3 - k)]
        rng.shuffle(sents)
        rows.append({"id": f"HOC{start + i:05d}", "text": " ".join(sents), "labels": sorted(chosen, key=names.index)})
    return rows


# ---------------------------------------------------------------- pubmedqa (PQA-L layout)

TRIALS = [("perioperative music", "adults undergoing cataract surgery", "severe preoperative anxiety"),
          ("preoperative carbohydrate loading", "patients undergoing elective colorectal surgery",
           "postoperative hyperglycaemia"),
          ("early mobilisation", "older adults after hip fracture surgery", "postoperative delirium"),
          ("nurse-led telephone follow-up", "patients discharged after heart failure admission", "readmission"),
          ("vitamin D supplementation", "children with moderate asthma", "severe exacerbations"),
          ("chlorhexidine bathing", "patients in intensive care units", "bloodstream infection"),
          ("a low-sodium diet", "adults with resistant hypertension", "uncontrolled blood pressure"),
          ("prophylactic antiemetics", "women undergoing caesarean delivery", "postoperative vomiting"),
          ("topical tranexamic acid", "patients undergoing knee arthroplasty", "transfusion"),
          ("mindfulness training", "nurses working night shifts", "burnout"),
          ("intermittent pneumatic compression", "stroke survivors unable to walk", "deep vein thrombosis"),
          ("text-message reminders", "adults starting antiretroviral therapy", "missed doses"),
          ("probiotic supplementation", "preterm infants", "necrotising enterocolitis"),
          ("warm humidified insufflation", "patients having laparoscopic cholecystectomy", "shoulder-tip pain"),
          ("a structured exercise programme", "survivors of breast cancer", "persistent fatigue"),
          ("routine ultrasound guidance", "patients needing central venous catheters", "arterial puncture")]
DESIGNS = ["a randomized controlled trial", "a pragmatic cluster-randomized trial", "a prospective cohort study",
           "a multicentre randomized trial", "a retrospective matched cohort study"]
BACKGROUND = ["Guidelines differ on the use of {i} for {pop}, largely because robust data on {o} are lacking.",
              "Whether {i} prevents {o} in {pop} remains debated.",
              "{O} is common in {pop}, and {i} has been proposed to reduce it."]
METHODS = "We conducted {d} in which {n} {pop} were allocated to {i} or usual care. The primary outcome was {o}."
# The result sentence decides the answer; the train and test wordings share no deciding word, and only
# train results quote p-values, so the numbers cannot carry the answer across the splits.
RESULTS = {
    "yes": {"train": ["Compared with usual care, {i} significantly reduced {o} ({a}% vs {b}%; p={sig}).",
                      "{O} occurred significantly less often with {i} ({a}% vs {b}%; p={sig})."],
            "test": ["{I} roughly halved the rate of {o}, from {b}% to {a}%, a clear and consistent benefit.",
                     "Patients who received {i} were far less likely to develop {o} ({a}% against {b}%)."]},
    "no": {"train": ["{O} did not differ significantly between groups ({b}% vs {b2}%; p={ns}).",
                     "Compared with usual care, {i} did not reduce {o} ({b}% vs {b2}%; p={ns})."],
           "test": ["Rates of {o} were similar in both arms ({b}% and {b2}%), and {i} conferred no benefit.",
                    "{O} was just as frequent with {i} as with usual care ({b}% against {b2}%)."]},
    "maybe": {"train": ["{I} showed a non-significant trend toward less {o} ({a}% vs {b}%; p={tr}); a benefit "
                        "was seen only in a subgroup.",
                        "Results for {o} were inconsistent across centres (p={tr}), and the effect of {i} remains "
                        "unclear."],
              "test": ["Fewer cases of {o} arose with {i} ({a}% against {b}%), but the trial was too small "
                       "to be sure, and the signal may be chance.",
                       "Whether {i} helps is uncertain: {o} fell at two sites and rose at the third."]},
}
CONCLUSION = {"yes": "In {pop}, {i} was effective in lowering {o}.",
              "no": "In {pop}, {i} did not lower {o}.",
              "maybe": "In {pop}, the effect of {i} on {o} remains uncertain."}
QUESTION = ["Does {i} reduce {o} in {pop}?", "Can {i} lower the risk of {o} in {pop}?",
            "Is {i} effective against {o} in {pop}?"]


def pubmedqa_rows(split: str, n: int, rng: random.Random, start: int) -> dict[str, dict]:
    answers = ["yes", "yes", "no", "no", "maybe"]  # PQA-L test: 55% yes, 34% no, 11% maybe
    out = {}
    for j in range(n):
        answer = answers[j % len(answers)]
        i, pop, o = rng.choice(TRIALS)
        b = rng.randint(14, 40)
        fill = dict(i=i, I=cap(i), pop=pop, o=o, O=cap(o), d=rng.choice(DESIGNS), n=rng.randint(60, 900),
                    a=max(2, b // 2 + rng.randint(-3, 3)), b=b, b2=b + rng.randint(-2, 2),
                    sig=f"0.00{rng.randint(1, 9)}", ns=f"0.{rng.randint(41, 93)}", tr=f"0.0{rng.randint(6, 9)}")
        contexts = [rng.choice(BACKGROUND).format(**fill), METHODS.format(**fill),
                    rng.choice(RESULTS[answer][split]).format(**fill)]
        out[str(start + j)] = {
            "QUESTION": rng.choice(QUESTION).format(**fill), "CONTEXTS": contexts,
            "LABELS": ["BACKGROUND", "METHODS", "RESULTS"], "MESHES": ["Humans"], "YEAR": str(rng.randint(2015, 2024)),
            "reasoning_required_pred": answer, "reasoning_free_pred": answer, "final_decision": answer,
            "LONG_ANSWER": CONCLUSION[answer].format(**fill)}
    keys = list(out)
    rng.shuffle(keys)
    return {k: out[k] for k in keys}


HARNESS_FIELDS = ("QUESTION", "CONTEXTS", "LABELS", "MESHES", "final_decision", "LONG_ANSWER")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE), help="folder to write relation/, doccls/, pubmedqa/ into")
    ap.add_argument("--harness-out", default=str(HERE.parent.parent / "harness" / "data"),
                    help="folder for the same PubMedQA items in lm-eval's layout (benchmarks/harness/pubmedqa_local)")
    args = ap.parse_args()
    out, harness_out = Path(args.out), Path(args.harness_out)
    rng = random.Random(20261204)
    write_jsonl(out / "relation" / "train.jsonl", relation_rows("train", 250, rng))
    write_jsonl(out / "relation" / "test.jsonl", relation_rows("test", 150, rng))
    write_jsonl(out / "doccls" / "train.jsonl", doccls_rows("train", 240, rng, 1))
    write_jsonl(out / "doccls" / "test.jsonl", doccls_rows("test", 150, rng, 241))
    for split, n, start in (("train", 200, 39000001), ("test", 100, 39100001)):
        path = out / "pubmedqa" / f"{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = pubmedqa_rows(split, n, rng, start)
        path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        # the harness task pubmedqa_local scores the same items, one JSON line each with lm-eval's fields
        write_jsonl(harness_out / f"pubmedqa_local_{split}.jsonl",
                    [{**{k: r[k] for k in HARNESS_FIELDS}, "pubid": pid} for pid, r in rows.items()])
    # PubMedQA's dev split: other items in the test wording, so a choice made on dev (merge --select's
    # zero-shot guard) sees what test will see; train's wording differs from test's by design (above), and
    # on it the merged quickstart model looked better (+0.03) while it was worse on test (-0.09), 2026-12-06.
    # Written last so that every earlier file stays byte-identical.
    dev = pubmedqa_rows("test", 100, rng, 39200001)
    (out / "pubmedqa" / "dev.json").write_text(json.dumps(dev, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    print(f"wrote {out}/relation, doccls, pubmedqa and {harness_out}/pubmedqa_local_*.jsonl")


if __name__ == "__main__":
    main()
