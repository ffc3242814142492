"""The query path's concurrency: micro-batched texts, a query's texts encoded on both cores, a sketch's two late
passes side by side. Each must give exactly what the plain sequential computation gives."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from search.batching import MicroBatcher
from search.pipeline import TextVectors
from tests.conftest import pencil_sketch, photo


def test_concurrent_callers_share_calls_and_each_gets_its_own_values() -> None:
    seen: list[list[int]] = []

    def slow_square(keys: list[int]) -> list[int]:
        seen.append(list(keys))
        time.sleep(0.05)  # while one call runs, the other callers queue up
        return [k * k for k in keys]

    batcher = MicroBatcher(slow_square, max_batch=64)
    results: dict[int, list[int]] = {}
    start = threading.Barrier(16)

    def ask(i: int) -> None:
        start.wait()
        results[i] = batcher([i, 100 + i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: [i * i, (100 + i) ** 2] for i in range(16)}
    assert batcher.calls == len(seen) < 16            # shared calls, not one per caller
    assert sorted(k for call in seen for k in call) == sorted(k for i in range(16) for k in (i, 100 + i))


def test_a_bad_key_fails_only_its_own_caller() -> None:
    def check(keys: list[str]) -> list[str]:
        time.sleep(0.02)
        if "bad" in keys:
            raise ValueError("bad key")
        return [k.upper() for k in keys]

    batcher = MicroBatcher(check)
    out: dict[str, object] = {}

    def ask(key: str) -> None:
        try:
            out[key] = batcher([key])
        except ValueError as e:
            out[key] = e

    threads = [threading.Thread(target=ask, args=(k,)) for k in ("a", "bad", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["a"] == ["A"] and out["b"] == ["B"] and out["c"] == ["C"]
    assert isinstance(out["bad"], ValueError)
    assert batcher(["d"]) == ["D"]  # and the next query still works


def test_text_vectors_split_over_two_cores_equal_one_forward(default_engine) -> None:  # noqa: ANN001
    """TextVectors encodes a query's texts in two halves side by side: the vectors, in the caller's order,
    are the encoder's own (odd counts, repeats and remembered texts included)."""
    encoder = default_engine.encoder
    texts = ["a red cup on a table", "a red cup on a table, a beautiful high-quality photo", "a cat",
             "an astronaut riding a horse on the moon at night", "a cat", "coffee"]
    want = encoder.encode_texts(texts)
    vectors = TextVectors(encoder)
    np.testing.assert_allclose(np.stack(vectors(texts)), want, atol=1e-5)
    np.testing.assert_allclose(np.stack(vectors(texts[::-1] + ["a dog"])),
                               np.concatenate([want[::-1], encoder.encode_texts(["a dog"])]), atol=1e-5)


def test_text_vectors_of_concurrent_queries_equal_sequential_ones(default_engine) -> None:  # noqa: ANN001
    encoder = default_engine.encoder
    queries = [[f"a {c} bicycle", f"a {c} bicycle, a beautiful high-quality photo"]
               for c in ("red", "blue", "green", "old", "small", "wooden", "shiny", "tiny")]
    vectors = TextVectors(encoder)
    got: dict[int, list[np.ndarray]] = {}
    start = threading.Barrier(len(queries))

    def ask(i: int) -> None:
        start.wait()
        got[i] = vectors(queries[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, q in enumerate(queries):
        np.testing.assert_allclose(np.stack(got[i]), encoder.encode_texts(q), atol=1e-5)


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png"])
def test_a_conditioned_query_equals_its_two_late_passes_run_in_turn(default_engine, name: str) -> None:  # noqa: ANN001
    """encode_query_tensors runs the shared blocks on two threads (a lone query) and the frozen and the
    style-adapted late passes side by side; the vector is the one the passes give run one after the other on
    one thread, and the caller's thread setting is left as it was."""
    from models.lite import late_outputs, shallow_maps

    enc = default_engine.encoder
    pixels = enc.preprocess(pencil_sketch(photo(name)))[None]
    threads = torch.get_num_threads()
    got, probs = enc.encode_query_tensors(pixels)
    assert torch.get_num_threads() == threads
    with torch.inference_mode():
        maps = shallow_maps(enc.image_tower, pixels)
        frozen = late_outputs(enc.image_tower, maps[-1])
        adapted = late_outputs(enc.image_tower, maps[-1], enc.adapters, torch.from_numpy(probs))
        emb = enc.heads.embed_image(adapted, enc.heads.learned_part(frozen))
        want = (emb if enc.gate is None else enc.gate.pad_query(emb)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_query_tower_with_batchnorm_folded_gives_the_training_towers_outputs(default_engine) -> None:  # noqa: ANN001
    """The encoder's tower has BatchNorm folded into its convolutions (faster at batch 1); with and without the
    style adapters, on one query and on a batch with different mixtures, it gives the plain tower's outputs."""
    from models.lite import late_outputs, load_image_tower, shallow_maps
    from models.style import STYLES

    enc = default_engine.encoder
    plain, folded = load_image_tower(), enc.image_tower
    assert folded.bn_folded and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    pixels = torch.stack([enc.preprocess(pencil_sketch(photo("coffee.png"))), enc.preprocess(photo("chelsea.png"))])
    mixtures = torch.tensor([[0.0, 0.97, 0.02, 0.01, 0.0, 0.0], [0.1, 0.2, 0.3, 0.2, 0.1, 0.1]])
    assert mixtures.shape[1] == len(STYLES)
    with torch.inference_mode():
        for a, b in zip(shallow_maps(plain, pixels), shallow_maps(folded, pixels)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-3)
        x = shallow_maps(plain, pixels)[-1]
        for rows in (slice(0, 1), slice(0, 2)):
            for adapters, m in ((None, None), (enc.adapters, mixtures[rows])):
                want, got = late_outputs(plain, x[rows], adapters, m), late_outputs(folded, x[rows], adapters, m)
                for name in want:
                    torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)
        # the adapters change the outputs (so the comparison above covers them)
        assert not torch.allclose(late_outputs(folded, x, enc.adapters, mixtures)["pooled"],
                                  late_outputs(folded, x)["pooled"], atol=1e-2)


def test_a_single_style_query_runs_merged_convolutions_equal_to_its_low_rank_adapters(default_engine) -> None:  # noqa: ANN001
    """A query whose mixture is one style (a drawn sketch: ~1.0 "sketch") runs that style's adapters merged into
    the convolutions (W + U V); its outputs are those of the low-rank adapters (the path training takes), on the
    folded tower and the plain one; a mixture of two styles keeps the low-rank path."""
    import copy

    from models.lite import late_outputs, load_image_tower, shallow_maps
    from models.style import STYLES

    enc = default_engine.encoder
    trainable = copy.deepcopy(enc.adapters).requires_grad_(True)   # trainable adapters never merge
    pixels = enc.preprocess(pencil_sketch(photo("coffee.png")))[None]
    sketch = torch.zeros(1, len(STYLES))
    sketch[0, STYLES.index("sketch")] = 0.9995
    for tower in (enc.image_tower, load_image_tower()):
        with torch.inference_mode():
            x = shallow_maps(tower, pixels)[-1]
            got = late_outputs(tower, x, enc.adapters, sketch)
            assert STYLES.index("sketch") in enc.adapters._derived[tower]      # the merged weights were used
            want = late_outputs(tower, x, trainable, sketch)
        for name in want:  # within the 0.0005 of its weight left out
            assert (got[name] - want[name]).norm() < 1e-3 * want[name].norm(), name
        assert not torch.allclose(got["pooled"], late_outputs(tower, x)["pooled"], atol=1e-2)
    two = torch.zeros(1, len(STYLES))
    two[0, STYLES.index("sketch")], two[0, STYLES.index("painting")] = 0.6, 0.4
    with torch.inference_mode():
        tower = enc.image_tower
        x = shallow_maps(tower, pixels)[-1]
        got, want = late_outputs(tower, x, enc.adapters, two), late_outputs(tower, x, trainable, two)
    assert tuple(sorted((STYLES.index("sketch"), STYLES.index("painting")))) in enc.adapters._derived[tower]
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
