"""Style detection accuracy on held-out (`test`) items of each style in a data folder.

    python benchmarks/style_detection.py [--data ../shared/data] [--per-style 300] [--space FILE]

Reads every `test` item whose style is one of models.style.STYLES (low-res ones come from the
`lowres` folder, made from test photos), up to --per-style per style, and reports the share whose
most probable style (under the committed style space) is the right one, per style and averaged.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from models.style import STYLES, StyleSpace
from search.config import PROJECT_ROOT
from search.training.style import accuracy, descriptors, style_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(PROJECT_ROOT.parent / "shared" / "data"))
    parser.add_argument("--per-style", type=int, default=300)
    parser.add_argument("--space", default=str(PROJECT_ROOT / "models" / "weights" / "style_space.npz"))
    args = parser.parse_args()
    samples = style_samples(Path(args.data), "test", args.per_style, seed=1)
    desc, ok = descriptors(samples)
    styles = [samples[i][2] for i in ok]
    acc = accuracy(StyleSpace.load(args.space), desc, styles)
    print(f"{'style':<10}{'n':>6}{'accuracy':>10}")
    for s in STYLES:
        if s in acc:
            print(f"{s:<10}{styles.count(s):>6}{acc[s]:>10.3f}")
    print(f"{'mean':<10}{len(styles):>6}{acc['all']:>10.3f}")


if __name__ == "__main__":
    main()
