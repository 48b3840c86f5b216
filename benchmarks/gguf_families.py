"""Which families `domainlm publish --gguf` converts and verifies, and how far each GGUF type is from the model.

For every causal family of the architecture matrix (tests/test_architectures.py, same tiny configs), a random
tiny model with SmolLM2's tokenizer is written as safetensors, converted by llama.cpp's converter to each type,
and reloaded in a fresh process by transformers' GGUF loader; the max |logit difference| on 64 tokens (relative
to max(1, max |logit|), the unit of the tolerances) and the tokenizer round-trip are printed as a Markdown table.
These numbers set domainlm.publish.gguf.DEFAULT_TOLERANCE.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/gguf_families.py [--types f16,bf16,q8_0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

TEXT = ("Phosphorylation of the kinase domain was measured in 12 cell lines after 48 h; the IC50 fell from 3.7 to "
        "1.2 µM when the inhibitor was combined with cisplatin, and the effect persisted in xenografts.")


def main() -> None:
    import torch
    import transformers
    from test_architectures import ARCHS
    from transformers import AutoModelForCausalLM

    from domainlm.errors import DomainLMError
    from domainlm.publish.gguf import FAMILIES, convert, verify_file
    from domainlm.publish.verify import write_reference
    from domainlm.sources import load_tokenizer, materialise, resolve

    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="f16,bf16,q8_0")
    types = ap.parse_args().types.split(",")
    torch.set_num_threads(1)
    tok = load_tokenizer(materialise(resolve("smollm2")))
    rows = []
    for arch in [a for a in ARCHS if a.objective == "causal"]:
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d) / "model"
            config = getattr(transformers, arch.config_class)(
                vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, **({"num_hidden_layers": 2} | arch.config))
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config).eval()
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            ids = tok(TEXT, return_tensors="pt")["input_ids"][:, :64]
            probe = write_reference(model, ids, Path(d) / "probe.safetensors")
            cells = []
            for t in types:
                if config.model_type not in FAMILIES:
                    cells.append("refused before writing (not in FAMILIES)")
                    continue
                out = Path(d) / f"m-{t}.gguf"
                try:
                    convert(folder, out, t, Path(d), timeout=600)
                    v = verify_file(out, probe=probe, reference_tokenizer=folder, gguf_type=t, timeout=600)
                except DomainLMError as exc:
                    cells.append("fails: " + str(exc).splitlines()[-1][:90])
                    continue
                rel = v["max_abs_diff"] / max(1.0, v["ref_max_abs"])
                cells.append(f"{'ok' if v['passed'] else 'FAILS'}: {rel:.2g} of logit scale, top-1 "
                             f"{v['top1_agreement']:.0%}, {out.stat().st_size / 1e6:.1f} MB"
                             + ("" if v["tokenizer_round_trip"] else ", tokenizer differs"))
            rows.append((arch.name, config.model_type, cells))
            print(arch.name, cells, flush=True)
    print("\n| architecture | " + " | ".join(types) + " |\n|---|" + "---|" * len(types))
    for name, _, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
