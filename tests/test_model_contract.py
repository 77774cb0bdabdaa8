"""The exported model's input contract, as a consumer with torch alone meets it.

`model.pt2` of a tiny trained model is loaded in a new interpreter that imports torch and
nothing of this package (`tests.helpers.run_with_torch_only`); what it accepts, how it reads
each dtype and the exact message of each refusal are the contract that `metadata.json` records
and the README states.
"""

from __future__ import annotations

import json

import pytest
import torch

from kfp_lightning.components.common.dataset import load_dataset
from kfp_lightning.components.common.errors import UserInputError
from kfp_lightning.components.common.training import TrainConfig
from kfp_lightning.components.train_mnist.train import TrainingOutputs, run_training
from tests.helpers import run_with_torch_only

TINY = {"validation": "200", "gpus": "0", "log_every_n_steps": 5}

DTYPE_ACCEPTED = "expected uint8 (or another integer dtype) pixels in [0, 255] or floating-point"
REFUSALS = {
    "bool": f"invalid images: dtype bool; {DTYPE_ACCEPTED} pixels in [0, 1]",
    "complex": f"invalid images: a complex dtype; {DTYPE_ACCEPTED} pixels in [0, 1]",
    "empty": "invalid images: an empty batch; expected N x 1 x 28 x 28 pixels with N >= 1",
    "integer above 255": "invalid images: integer pixels outside [0, 255]; expected uint8 "
    "(or another integer dtype) pixels in [0, 255]",
    "negative integer": "invalid images: integer pixels outside [0, 255]; expected uint8 "
    "(or another integer dtype) pixels in [0, 255]",
}
FLOAT_RANGE = (
    "invalid images: floating-point pixels outside [0, 1] or NaN; expected raw pixels in [0, 1] "
    "(not normalised: the program normalises), or uint8 pixels in [0, 255]"
)
REFUSALS |= {name: FLOAT_RANGE for name in ("float 0-255", "normalised", "NaN")}
# Shapes torch's own guards refuse, before the graph runs: (documented case, placeholders).
SHAPE_REFUSALS = {
    "N x 28 x 28": ("fewer than 4 dimensions", {"dimension": 1, "size": 1}),
    "1 x 28 x 28": ("fewer than 4 dimensions", {"dimension": 1, "size": 1}),
    "28 x 28": ("fewer than 4 dimensions", {"dimension": 1, "size": 1}),
    "784": ("fewer than 4 dimensions", {}),
    "N x 3 x 28 x 28": ("other sizes of dimensions 1 to 3", {"dimension": 1, "size": 1}),
    "N x 1 x 32 x 32": ("other sizes of dimensions 1 to 3", {"dimension": 2, "size": 28}),
    "N x 1 x 28 x 28 x 3": ("more than 4 dimensions", {"shape": "[3, 1, 28, 28, 3]"}),
}

# Feeds the program every kind of input; prints, per case, its predictions or its refusal.
_CONTRACT = """
program = torch.export.load(sys.argv[1]).module()
images = torch.load(sys.argv[2])  # uint8 N x 1 x 28 x 28
pixels = images.float() / 255


def run(x):
    try:
        out = program(x)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}
    return {"shape": list(out.shape), "predicted": out.argmax(1).tolist(),
            "same_as_float32": torch.equal(out, program(pixels)) if len(x) == len(pixels) else None}


ints = images.long()
cases = {
    "uint8": images, "float32": pixels, "float64": pixels.double(), "float16": pixels.half(),
    "bfloat16": pixels.bfloat16(), "int64": ints, "int32": ints.int(), "int16": ints.short(),
    "one image": pixels[:1],
    "bool": images > 127, "complex": pixels.to(torch.complex64), "empty": pixels[:0],
    "integer above 255": ints + 1, "negative integer": ints - 1,
    "float 0-255": images.float(), "normalised": (pixels - 0.1307) / 0.3081,
    "NaN": pixels.clone().fill_(float("nan")),
    "N x 28 x 28": pixels[:, 0], "1 x 28 x 28": pixels[0], "28 x 28": pixels[0, 0],
    "N x 3 x 28 x 28": pixels[:3].expand(3, 3, 28, 28),
    "784": pixels[0].reshape(-1), "N x 1 x 32 x 32": torch.zeros(3, 1, 32, 32),
    "N x 1 x 28 x 28 x 3": pixels[:3, ..., None].expand(3, 1, 28, 28, 3),
}
results = {name: run(x) for name, x in cases.items()}
assert "kfp_lightning" not in sys.modules and "lightning" not in sys.modules
print(json.dumps(results))
"""

# A batch of 70,000 images in one call, and the peak memory it took.
_LARGE_BATCH = """
import resource
program = torch.export.load(sys.argv[1]).module()
images = torch.load(sys.argv[2])
large = images.repeat(-(-70_000 // len(images)), 1, 1, 1)[:70_000]
out = program(large)
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
# Per image as in a small batch (chunks batch differently: equal up to rounding).
alone = torch.cat([program(large[:5]), program(large[-5:])])
assert "kfp_lightning" not in sys.modules and "lightning" not in sys.modules
print(json.dumps({
    "shape": list(out.shape), "finite": bool(out.isfinite().all()), "peak_mb": peak_mb,
    "max_difference": (torch.cat([out[:5], out[-5:]]) - alone).abs().max().item(),
    "same_predictions": torch.equal(torch.cat([out[:5], out[-5:]]).argmax(1), alone.argmax(1)),
    "repeats_agree": torch.equal(out[:300].argmax(1), out[300:600].argmax(1)),
}))
"""


@pytest.fixture(scope="module")
def tiny_model(dataset, tmp_path_factory):
    """A model trained one epoch on the synthetic set; its test images (uint8) and labels."""
    root = tmp_path_factory.mktemp("contract")
    config = TrainConfig(epochs=1, **TINY)
    result = run_training(dataset, TrainingOutputs(root / "model", root / "logs"), config)
    test = load_dataset(dataset)
    torch.save(torch.from_numpy(test["test_images"]).unsqueeze(1), root / "images.pt")
    return root / "model", root / "images.pt", result, test["test_labels"].tolist()


@pytest.fixture(scope="module")
def contract(tiny_model):
    model_dir, images, _, _ = tiny_model
    return run_with_torch_only(_CONTRACT, model_dir / "model.pt2", images)


def test_uint8_pixels_are_scaled_like_float_pixels(contract, tiny_model):
    _, _, result, labels = tiny_model
    assert contract["uint8"]["shape"] == [300, 10]
    # Bit for bit what uint8 / 255 as float32 gives, not raw 0-255 values normalised.
    assert contract["uint8"]["same_as_float32"] is True
    assert contract["uint8"]["predicted"] == contract["float32"]["predicted"]
    accuracy = sum(
        p == label for p, label in zip(contract["uint8"]["predicted"], labels, strict=True)
    )
    assert accuracy / 300 == pytest.approx(result.metrics["test_accuracy"], abs=1e-6)
    # One image is a batch of one.
    assert contract["one image"]["shape"] == [1, 10]
    assert contract["one image"]["predicted"] == contract["float32"]["predicted"][:1]


@pytest.mark.parametrize("dtype", ["int64", "int32", "int16"])
def test_other_integer_dtypes_read_as_0_to_255(contract, dtype):
    assert contract[dtype]["same_as_float32"] is True


def test_float64_is_converted_exactly(contract):
    assert contract["float64"]["same_as_float32"] is True


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_converted(contract, dtype):
    predicted, reference = contract[dtype]["predicted"], contract["float32"]["predicted"]
    assert contract[dtype]["shape"] == [300, 10]
    # Rounded pixels: a borderline image may flip, nearly all may not.
    assert sum(a == b for a, b in zip(predicted, reference, strict=True)) >= 297


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_inputs_say_what_is_accepted(contract, case):
    assert contract[case] == {"error": f"RuntimeError: {REFUSALS[case]}"}


@pytest.mark.parametrize("case", sorted(SHAPE_REFUSALS))
def test_other_shapes_are_refused_as_the_metadata_says(contract, tiny_model, case):
    documented, values = SHAPE_REFUSALS[case]
    metadata = json.loads((tiny_model[0] / "metadata.json").read_text())
    alternatives = metadata["input"]["refused"][documented].split(", or ")
    for name, value in (values or {}).items():
        alternatives = [a.replace(f"<{name}>", str(value)) for a in alternatives]
    assert contract[case]["error"] in alternatives


def test_a_batch_of_70000_runs_in_bounded_memory(tiny_model):
    model_dir, images, _, _ = tiny_model
    result = run_with_torch_only(_LARGE_BATCH, model_dir / "model.pt2", images)
    assert result["shape"] == [70_000, 10]
    assert result["finite"] is True
    assert result["same_predictions"] is True
    assert result["repeats_agree"] is True
    assert result["max_difference"] < 1e-4
    # In one pass, 70,000 images need about 35 GB of activations; in chunks of 1024, < 1 GB.
    assert result["peak_mb"] < 3000


GUARD = "AssertionError: Guard failed: images.size()[<dimension>] == <size>"


def test_metadata_states_the_contract(tiny_model):
    model_dir, _, result, _ = tiny_model
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata == result.model_metadata
    assert metadata["format"] == "kfp-lightning/mnist-model-v2"
    assert metadata["input"] == {
        "name": "images",
        "shape": ["batch", 1, 28, 28],
        "batch": {"min": 1, "max": None, "chunk_size": 1024},
        "integer": {
            "dtypes": ["uint8", "int8", "int16", "int32", "int64"],
            "value_range": [0, 255],
            "scaled_by": "1/255",
        },
        "floating": {
            "dtypes": ["float32", "float64", "float16", "bfloat16"],
            "value_range": [0.0, 1.0],
            "converted_to": "float32",
        },
        "refused": {
            "bool": f"RuntimeError: {REFUSALS['bool']}",
            "complex": f"RuntimeError: {REFUSALS['complex']}",
            "empty batch": f"RuntimeError: {REFUSALS['empty']}",
            "integer pixels outside [0, 255]": f"RuntimeError: {REFUSALS['integer above 255']}",
            "floating-point pixels outside [0, 1] or NaN": f"RuntimeError: {FLOAT_RANGE}",
            "other sizes of dimensions 1 to 3": GUARD,
            "fewer than 4 dimensions": f"{GUARD}, or IndexError: tuple index out of range",
            "more than 4 dimensions": "RuntimeError: Expected 3D (unbatched) or 4D (batched) "
            "input to conv2d, but got input of size: <shape>",
        },
        "device": "cpu",
    }


def test_batch_size_above_the_training_set_is_refused_before_training(dataset, tmp_path):
    # 1200 synthetic training images, 200 held out: 1000 to train on.
    config = TrainConfig(epochs=1, batch_size=1001, **TINY)
    expected = r"^invalid batch_size=1001: expected at most the 1000 training images that "
    expected += r"validation=200 leaves$"
    with pytest.raises(UserInputError, match=expected):
        run_training(dataset, TrainingOutputs(tmp_path / "model", tmp_path / "logs"), config)
    assert list(tmp_path.iterdir()) == []
    # The whole set in one batch is full-batch training: one step per epoch, as asked.
    config = TrainConfig(epochs=1, batch_size=1000, **TINY)
    result = run_training(dataset, TrainingOutputs(tmp_path / "model", tmp_path / "logs"), config)
    assert result.metrics["steps"] == 1


def test_batch_size_is_checked_against_each_process_share():
    from kfp_lightning.components.train_mnist.data import check_batch_size

    check_batch_size(500, 1000, processes=2)
    with pytest.raises(
        UserInputError,
        match=r"^invalid batch_size=501: expected at most the 500 training images of each of 2 "
        r"processes$",
    ):
        check_batch_size(501, 1000, processes=2)
