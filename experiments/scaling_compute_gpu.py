"""Print what `domainlm compute` measures on a GPU: matmul peaks and training MFU of two model shapes.

Run on a machine with a CUDA GPU (prints numbers, asserts nothing):

    PYTHONPATH=. python experiments/scaling_compute_gpu.py OUT_DIR

Checks the CUDA paths of domainlm.flops (measure_matmul_peak), domainlm.device (bf16_is_fast) and domainlm.compute
(the throughput probe), and how a measured MFU compares with compute's default utilisation of 0.4.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out_dir: str) -> None:
    import torch
    from transformers import LlamaConfig

    from domainlm.compute import compute
    from domainlm.device import bf16_is_fast
    from domainlm.flops import measure_matmul_peak

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for dtype in ("bf16", "fp32"):
        for size in (4096, 8192):
            key = f"matmul_{dtype}_{size}"
            report[key] = measure_matmul_peak(dtype, seconds=1.0, size=size, device="cuda")
            print(f"{key}: {report[key] / 1e12:.1f} TFLOP/s", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    report["matmul_fp32_tf32_8192"] = measure_matmul_peak("fp32", seconds=1.0, size=8192, device="cuda")
    report["bf16_is_fast_cuda"] = bf16_is_fast("cuda")
    print(f"tf32: {report['matmul_fp32_tf32_8192'] / 1e12:.1f} TFLOP/s; bf16_is_fast: {report['bf16_is_fast_cuda']}")

    # SmolLM2-135M's shape (config only: the probe trains random weights, so no checkpoint is needed).
    smol = out / "smollm2-shape"
    LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                max_position_embeddings=8192).save_pretrained(smol)
    runs = [("tiny-llama", 256, 64), (str(smol), 2048, 16), (str(smol), 512, 64)]
    for model, seq_len, batch in runs:
        res = compute(model=model, tokens=10**10, seq_len=seq_len, batch_size=batch, probe_seconds=8,
                      device="cuda", accelerator="h200")
        probe = res["probe"]
        peak = 989e12
        key = f"{Path(model).name}@{seq_len}"
        report[key] = {"tokens_per_s": probe["tokens_per_s"], "micro_batch": probe["micro_batch"],
                       "dtype": probe["dtype"], "mfu_vs_measured_peak": probe["mfu"],
                       "mfu_vs_datasheet_989T": probe["tokens_per_s"] * res["params"]["training_flops_per_token"] / peak,
                       "training_flops_per_token": res["params"]["training_flops_per_token"]}
        print(key, json.dumps(report[key]), flush=True)
    (out / "gpu_report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu_out")
