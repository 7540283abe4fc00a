"""Convert public dataset releases: ``python -m diffusion_seg.prepare <dataset> ...``.

The converters are :mod:`diffusion_seg.data.convert`; this is their command line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from diffusion_seg.cli.errors import user_errors
from diffusion_seg.data.convert import (
    prepare_ade20k,
    prepare_pascal_context,
    prepare_person_part,
    prepare_voc_aug,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_seg.prepare",
        description="Convert public dataset releases into the layouts the datasets read.",
    )
    sub = parser.add_subparsers(dest="dataset", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-partial", action="store_true",
                       help="accept split sizes that differ from the full release and drop "
                       "ids whose files are missing")
        p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="processes converting labels (default: all cores)")

    p = sub.add_parser("voc_aug", help="VOC 2012 + SBD → SegmentationClassAug + trainaug")
    p.add_argument("--voc", type=Path, required=True, help="VOCdevkit/VOC2012 directory")
    p.add_argument("--sbd", type=Path, required=True,
                   help="SBD benchmark_RELEASE/dataset directory (cls/, train.txt, val.txt)")
    common(p)
    p = sub.add_parser("pascal_context", help="Detail JSON or .mat → SegmentationClassContext")
    p.add_argument("--voc", type=Path, required=True, help="VOCdevkit/VOC2010 directory")
    p.add_argument("--json", type=Path, help="PASCAL in Detail trainval_merged.json")
    p.add_argument("--mat-dir", type=Path, help="directory of per-image .mat (LabelMap)")
    common(p)
    p = sub.add_parser("person_part", help="Person-Part release → JPEGImages/SegmentationPart")
    p.add_argument("--release", type=Path, required=True, help="pascal_person_part directory")
    p.add_argument("--voc", type=Path, required=True, help="VOCdevkit/VOC2010 directory")
    p.add_argument("--out", type=Path, required=True, help="dataset root to write")
    common(p)
    p = sub.add_parser("ade20k", help="unpack ADEChallengeData2016.zip and check it")
    p.add_argument("--zip", type=Path, required=True, help="ADEChallengeData2016.zip")
    p.add_argument("--out", type=Path, required=True, help="dataset root to write")
    common(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with user_errors():
        if args.dataset == "voc_aug":
            prepare_voc_aug(args.voc, args.sbd, args.allow_partial, args.workers)
        elif args.dataset == "pascal_context":
            prepare_pascal_context(args.voc, args.json, args.mat_dir, args.allow_partial,
                                   args.workers)
        elif args.dataset == "person_part":
            prepare_person_part(args.release, args.voc, args.out, args.allow_partial,
                                args.workers)
        else:
            prepare_ade20k(args.zip, args.out, args.allow_partial)
    return 0
