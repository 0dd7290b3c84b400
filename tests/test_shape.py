import json
import random

import pytest

from amoebasearch.errors import UsageError
from amoebasearch.ordering import Ordering
from amoebasearch.shape import ModelDims, Shape, ShapeSpace, saved_ffn_step, width_options

SMOL = ModelDims(num_layers=30, num_heads=9, num_kv_heads=3, ffn=1536, hidden=576, head_dim=64)


def test_shape_is_frozen_hashable_and_round_trips_json():
    shape = Shape((0, 3, 7), 6, 512)
    assert hash(shape) == hash(Shape([0, 3, 7], 6, 512))
    assert Shape.from_dict(json.loads(json.dumps(shape.to_dict()))) == shape
    with pytest.raises(AttributeError):
        shape.heads = 3


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (Shape((), 9, 1536), "keeps no layers"),
        (Shape((0, 30), 9, 1536), "out of range"),
        (Shape((-1, 2), 9, 1536), "out of range"),
        (Shape((3, 1), 9, 1536), "unique and ascending"),
        (Shape((1, 1), 9, 1536), "unique and ascending"),
        (Shape((0,), 5, 1536), "does not divide evenly"),
        (Shape((0,), 12, 1536), "between 1 and"),
        (Shape((0,), 9, 2048), "FFN size 1536"),
        (Shape((0,), 9, 0), "between 1 and"),
    ],
)
def test_invalid_shapes_name_the_violation(shape, message):
    with pytest.raises(UsageError, match=message):
        shape.validate(SMOL)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "JSON object"),
        ({"layers": [0], "heads": 9}, "lacks key"),
        ({"layers": "0,1", "heads": 9, "ffn": 64}, "list of integer"),
        ({"layers": [0], "heads": "9", "ffn": 64}, "must be integers"),
    ],
)
def test_malformed_shape_json(data, message):
    with pytest.raises(UsageError, match=message):
        Shape.from_dict(data)


def test_shape_load_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        Shape.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{layers: [0]")
    with pytest.raises(UsageError, match="not valid JSON"):
        Shape.load(bad)


def test_shape_space_of_smollm2():
    space = ShapeSpace(SMOL)
    assert space.head_options == (3, 6, 9)
    assert space.ffn_options == tuple(range(64, 1537, 64))
    assert len(space) == 30 * 3 * 24 == len(list(space))
    assert space.largest() == Shape.full(SMOL)
    assert space.smallest() == Shape((0,), 3, 64)
    assert width_options(100, 64) == (64, 100)
    assert ShapeSpace(SMOL, ffn_step=1536).ffn_options == (1536,)
    with pytest.raises(UsageError, match="--ffn-step 5000 is wider than the model's FFN"):
        ShapeSpace(SMOL, ffn_step=5000)
    assert saved_ffn_step("5000", SMOL) == 1536 and saved_ffn_step(64, SMOL) == 64  # older files still load


def test_shape_space_sampling_is_seeded_and_covers_the_space():
    space = ShapeSpace(SMOL)
    first = [space.sample(random.Random(7)) for _ in range(3)]
    again = [space.sample(random.Random(7)) for _ in range(3)]
    assert first == again
    rng = random.Random(0)
    samples = [space.sample(rng) for _ in range(3000)]
    assert all(s in space for s in samples)
    assert {s.heads for s in samples} == set(space.head_options)
    assert {s.depth for s in samples} == set(space.depths)


def test_shape_space_follows_the_ordering_layer_sets():
    ordering = Ordering.identity(SMOL)
    ordering.layer_sets[2] = (0, 29)
    space = ShapeSpace(SMOL, ordering)
    assert space.shape(2, 9, 1536).layers == (0, 29)
    assert Shape((0, 1), 9, 1536) not in space
    with pytest.raises(UsageError, match="not in this shape space"):
        space.shape(31, 9, 1536)


def test_ordering_keeps_nested_prefixes_and_round_trips():
    dims = ModelDims(num_layers=2, num_heads=4, num_kv_heads=2, ffn=8, hidden=16, head_dim=4)
    ordering = Ordering(
        layer_sets={1: (1,), 2: (0, 1)},
        head_order=(((1, 0), (0, 1)), ((0, 1), (1, 0))),
        ffn_order=((7, 3, 5, 0, 1, 2, 4, 6), tuple(range(8))),
    ).validate(dims)
    assert ordering.query_heads(0, 1) == [1, 2]  # group 0 keeps local head 1, group 1 keeps local head 0
    assert ordering.query_rows(0, 1, 4).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert set(ordering.ffn_channels(0, 2)) <= set(ordering.ffn_channels(0, 5))
    assert ordering.ffn_channels(0, 3) == [3, 5, 7]
    assert Ordering.from_dict(json.loads(json.dumps(ordering.to_dict()))) == ordering
    with pytest.raises(UsageError, match="not a permutation"):
        Ordering(ordering.layer_sets, ordering.head_order, ((0,) * 8, tuple(range(8)))).validate(dims)
