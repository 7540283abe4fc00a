"""`python -m diffusion_seg.bench gpu --device cpu --quick`: the GPU benchmark's whole path at
test size, so the command cannot rot between the runs on a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch

from diffusion_seg.bench import pdn, train
from diffusion_seg.bench.gpu import HEADER

NUMBER = r"\d+(\.\d+)?"
RATIO = rf"{NUMBER} \[{NUMBER}–{NUMBER}\]"


def test_bench_gpu_quick_on_cpu_writes_one_table_with_every_row(tmp_path):
    # One thread: the smoke run should not depend on how busy the other core is.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_seg.bench", "gpu", "--device", "cpu", "--quick"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = (tmp_path / "benchmarks").glob("gpu_*.md")  # the default path
    assert f"written: {out.relative_to(tmp_path)}" in proc.stdout
    check_document(out.read_text())


def check_document(text: str) -> None:
    assert f"torch {torch.__version__}" in text and "- device: " in text
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == HEADER
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]

    # Every row: PDN Table 3 (each case forward, all but the CRF forward+backward), Table 4's
    # five, the two training rows, the CRF's two backends; for bf16 and fp32.
    args = argparse_namespace()
    expected = []
    for dtype in ("bfloat16", "float32"):
        for name, scope, case, _ in pdn.cases(args):
            expected.append(("PDN Table 3", f"{name} ({scope})", dtype, "fwd"))
            if case["scope"] != "crf":
                expected.append(("PDN Table 3", f"{name} ({scope})", dtype, "fwd+bwd"))
        for part in ("seed", "similarity", "diffusion", "total"):
            expected.append(("DifNet Table 4 (64²)", f"DifNet (test_resnet) {part}", dtype, "fwd"))
        expected.append(("DifNet Table 4 (64²)", "Sim-DeepLab (test_resnet) total", dtype, "fwd"))
        for head in ("deeplabv2", "pdn_2m"):
            expected.append(("training step (64², batch 2, K=4)",
                             f"{train.LABELS[head]} (eager)", dtype, "step"))
        for backend in ("exact", "lattice"):
            expected.append(("dense CRF (32², K=21, 1 it.)", backend, dtype, "fwd"))
    assert [tuple(r[:4]) for r in rows] == expected

    baselines = {"DeepLab-v2 (backbone + ASPP) (network)", "Sim-DeepLab (test_resnet) total",
                 "DeepLab-v2 (eager)", "exact"}
    for section, case, dtype, pass_, ms, ratio, peak, images, paper in rows:
        assert re.fullmatch(NUMBER, ms) and float(ms) > 0, (case, ms)
        assert ratio == "–" if case in baselines else re.fullmatch(RATIO, ratio), (case, ratio)
        table4 = section.startswith("DifNet Table 4")
        assert peak == "–" if table4 else re.fullmatch(NUMBER, peak), (case, peak)
        training = section.startswith("training")
        assert re.fullmatch(NUMBER, images) if training else images == "–", (case, images)
        assert paper
    assert text.count("LG-LSTM / PDNs-24NB-1Module") == 2


def argparse_namespace():
    import argparse

    parser = argparse.ArgumentParser()
    pdn.add_arguments(parser)
    args = parser.parse_args(["--quick"])
    pdn.apply_quick(args)
    args.crf_iterations = 1
    return args
