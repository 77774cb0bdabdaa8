"""Write the trained network as a Model artifact that loads without this package.

The artifact holds a `torch.export` program (`model.pt2`), the plain `state_dict` of `Net`
(`weights.pt`, for fine-tuning; it expects normalised input) and `metadata.json` describing
both. TorchScript is not used: it is deprecated in favour of `torch.export`.

The program's input contract (`INPUT_CONTRACT`, recorded in `metadata.json`) is enforced by the
program itself, since its users load it with torch alone (`torch.export.load(path).module()`):

- shape N x 1 x 28 x 28, any N >= 1, checked by torch before the graph runs (the loaded module's
  guards, e.g. `Guard failed: images.size()[1] == 1`);
- integer pixels (uint8, or any other integer dtype) in [0, 255], divided by 255; floating-point
  pixels (float32, float64, float16, bfloat16) in [0, 1], converted to float32; bool and complex
  refused;
- the training normalisation applied by the program, so a consumer cannot forget or repeat it;
- batches above `CHUNK_SIZE` images run `CHUNK_SIZE` at a time, so memory does not grow with N
  (70,000 images at once would otherwise need about 35 GB of activations).

A graph traced by `torch.export` has one dtype per input and no Python left in it: the loaded
module does not check the input's dtype (torch/_export/utils.py,
`_check_input_constraints_for_graph`, checks shapes only) and runs each aten op on whatever
tensor it is given. So the dtype is read at run time from what aten ops do with it: `full_like`
creates a tensor of the input's own dtype (an integer one truncates 0.5 to 0; bool turns 2 into
True; only a complex one has a square root of -1 of magnitude 1), and `_assert_async.msg`
raises our message when its condition is false. Both stay in the exported graph
(`_assert_async.msg` is side-effectful, torch/fx/node.py, so it is never pruned).
"""

from __future__ import annotations

import io
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._higher_order_ops.cond import cond_op
from torch._higher_order_ops.while_loop import while_loop_op

from kfp_lightning.components.common.files import atomic_directory, atomic_write_bytes, write_json
from kfp_lightning.components.train_mnist.data import MNIST_MEAN, MNIST_STD
from kfp_lightning.components.train_mnist.model import Net

PROGRAM_FILE = "model.pt2"
WEIGHTS_FILE = "weights.pt"

# Images per pass through the network inside the program: about 0.5 GB of activations on the
# CPU. A batch larger than this runs in chunks of this size (the last one padded).
CHUNK_SIZE = 1024

# What the program says when it refuses an input (RuntimeError, raised by `_assert_async`).
EMPTY_BATCH = "invalid images: an empty batch; expected N x 1 x 28 x 28 pixels with N >= 1"
_INTEGER_PIXELS = "uint8 (or another integer dtype) pixels in [0, 255]"
_ANY_PIXELS = f"expected {_INTEGER_PIXELS} or floating-point pixels in [0, 1]"
BOOL_PIXELS = f"invalid images: dtype bool; {_ANY_PIXELS}"
COMPLEX_PIXELS = f"invalid images: a complex dtype; {_ANY_PIXELS}"
INTEGER_RANGE = f"invalid images: integer pixels outside [0, 255]; expected {_INTEGER_PIXELS}"
FLOAT_RANGE = (
    "invalid images: floating-point pixels outside [0, 1] or NaN; expected raw pixels in [0, 1] "
    "(not normalised: the program normalises), or uint8 pixels in [0, 255]"
)

# Shapes are checked by torch itself: the loaded module's guards, generated from the exported
# shapes (torch/export/_unlift.py, `_guards_fn`), run before the graph. Their messages:
SHAPE_GUARD = "AssertionError: Guard failed: images.size()[<dimension>] == <size>"

INTEGER_DTYPES = ["uint8", "int8", "int16", "int32", "int64"]
FLOAT_DTYPES = ["float32", "float64", "float16", "bfloat16"]

# The contract as `metadata.json` records it; `ExportedNet` enforces every line of it.
INPUT_CONTRACT: dict[str, Any] = {
    "name": "images",
    "shape": ["batch", 1, 28, 28],
    "batch": {"min": 1, "max": None, "chunk_size": CHUNK_SIZE},
    "integer": {"dtypes": INTEGER_DTYPES, "value_range": [0, 255], "scaled_by": "1/255"},
    "floating": {"dtypes": FLOAT_DTYPES, "value_range": [0.0, 1.0], "converted_to": "float32"},
    "refused": {
        "bool": f"RuntimeError: {BOOL_PIXELS}",
        "complex": f"RuntimeError: {COMPLEX_PIXELS}",
        "empty batch": f"RuntimeError: {EMPTY_BATCH}",
        "integer pixels outside [0, 255]": f"RuntimeError: {INTEGER_RANGE}",
        "floating-point pixels outside [0, 1] or NaN": f"RuntimeError: {FLOAT_RANGE}",
        "other sizes of dimensions 1 to 3": SHAPE_GUARD,
        "fewer than 4 dimensions": f"{SHAPE_GUARD}, or IndexError: tuple index out of range",
        # The first convolution's own message.
        "more than 4 dimensions": (
            "RuntimeError: Expected 3D (unbatched) or 4D (batched) input to conv2d, but got "
            "input of size: <shape>"
        ),
    },
    "device": "cpu",
}


class ExportedNet(nn.Module):
    """`Net` behind the input contract: pixels in, log-probabilities out (see the module doc).

    Args:
        net: The trained network: a float32 copy on the CPU, in eval mode.
    """

    def __init__(self, net: Net) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Maps N x 1 x 28 x 28 pixels (integer in [0, 255] or float in [0, 1]) to N x 10."""
        # A tensor, not a Python comparison: export would decide `N >= 1` once, from the
        # range it was given, and the loaded module lets N = 0 through anyway
        # (torch/_export/utils.py `_check_symint`: "we allow dimensions to be 0/1 at runtime").
        count = torch.scalar_tensor(images.shape[0])
        torch._assert_async(count > 0, EMPTY_BATCH)
        # One pixel, whatever the rank (a 5-D input passes the shape guards and fails in the
        # first convolution, which names the shape it got).
        probe = images[:1, :1, :1, :1].reshape(-1)[:1]
        # Comparisons in the input's own dtype: converting a complex probe would warn.
        torch._assert_async(torch.full_like(probe, 2) == 2, BOOL_PIXELS)
        # A square root of -1 has magnitude 1 only in a complex dtype (i); in a real one it is
        # NaN, and uint8 holds -1 as 255 (bool, which would give 1 too, is refused above).
        root = torch.abs(torch.sqrt(torch.full_like(probe, -1)))
        torch._assert_async(root != 1, COMPLEX_PIXELS)
        integral = torch.full_like(probe, 0.5) == 0
        # The aten conversion itself, recorded as a graph node that converts whatever dtype
        # arrives (`Tensor.to` on an example already float32 may be traced as a no-op).
        pixels = torch.ops.aten._to_copy.default(images, dtype=torch.float32)
        # Division, not a product with 1/255: uint8 input gives exactly `x.float() / 255`.
        pixels = pixels / torch.where(integral, 255.0, 1.0)
        low, high = torch.aminmax(pixels)
        in_range = (low >= 0) & (high <= 1)  # False for NaN
        torch._assert_async(in_range | ~integral, INTEGER_RANGE)
        torch._assert_async(in_range | integral, FLOAT_RANGE)
        normalised = (pixels - MNIST_MEAN) / MNIST_STD
        # The network's parameters go into the branches as operands, not as closures: the
        # branches are traced by calling the operators directly (see `_branches`).
        names, weights = zip(*self.net.named_parameters(), strict=True)
        whole, in_chunks = _branches(self.net, names)
        # Keeps both paths in the graph and picks one per call from N.
        (out,) = cond_op(images.shape[0] <= CHUNK_SIZE, whole, in_chunks, (normalised, *weights))
        return out


def _branches(net: Net, names: tuple[str, ...]) -> tuple[Callable, Callable]:
    """The two paths of the program: the whole batch at once, or `CHUNK_SIZE` at a time.

    `torch.cond` and `while_loop` trace their functions with Dynamo (torch/_higher_order_ops/
    utils.py, `_hop_compile_and_call`), which took about a second of every export on two CPU
    cores. Their operators (`cond_op`,
    `while_loop_op`) trace them as `torch.export` traces the rest of the graph, without
    Dynamo, provided the functions close over no tensor: so the network's weights are passed
    in as operands, and applied with `torch.func.functional_call`. The graph, and so the
    program, is the same: a `cond` whose false branch holds a `while_loop`.

    Args:
        net: The network whose structure the branches run.
        names: Its parameters' names, in the order the operands give their values.

    Returns:
        `(whole, in_chunks)`, each mapping `(normalised images, *weights)` to `(log-probs,)`.
    """

    def whole(x: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.func.functional_call(net, dict(zip(names, weights, strict=True)), (x,)),)

    def more(start: torch.Tensor, out: torch.Tensor, x: torch.Tensor, *weights: torch.Tensor):
        return start < x.shape[0]

    def step(start: torch.Tensor, out: torch.Tensor, x: torch.Tensor, *weights: torch.Tensor):
        # A fixed-size chunk gathered by index keeps every shape in the loop static: the last
        # chunk repeats the last image, and its surplus rows land past N, cut off at the end.
        rows = start + torch.arange(CHUNK_SIZE)
        chunk = x.index_select(0, rows.clamp(max=x.shape[0] - 1))
        return start + CHUNK_SIZE, out.index_copy(0, rows, whole(chunk, *weights)[0])

    def in_chunks(x: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor]:
        start = torch.zeros((), dtype=torch.int64)
        out = x.new_zeros(x.shape[0] + CHUNK_SIZE, 10)
        _, out = while_loop_op(more, step, (start, out), (x, *weights))
        return (out[: x.shape[0]],)

    return whole, in_chunks


def export_model(net: Net, model_dir: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Writes the Model artifact directory atomically.

    The program and the weights are serialised in memory and written with Python's own file
    I/O, whose `OSError` carries the cause: torch's zip writer, writing to a path, hides it (a
    full disk reads "unexpected pos 75840 vs 75728"), and `torch.export.save` to a path aborts
    the whole process on a full disk (its writer's destructor, writing the zip's end, throws
    again while the first error unwinds: `terminate called after throwing an instance of
    'c10::Error'`), so no message at all would reach the user.

    Args:
        net: The trained network (any device; it is copied to the CPU in eval mode).
        model_dir: Directory to create.
        metadata: Run facts to record (accuracy, configuration, dataset checksums...).

    Returns:
        The full metadata written to `metadata.json`.

    Raises:
        WriteError: A file could not be written ("no space left on device writing
            <model_dir>/model.pt2: ..."); `model_dir` is then not created.
    """
    # A float32 copy on the CPU, in eval mode, its parameters frozen.
    cpu_net = Net()
    cpu_net.load_state_dict({k: v.detach().float().cpu() for k, v in net.state_dict().items()})
    # Inference only: without gradients a user's call builds no autograd graph.
    cpu_net.requires_grad_(False).train(False)
    # An example above CHUNK_SIZE: export traces both branches of the cond with it, and the
    # chunked one needs a whole chunk to index. One image expanded: the archive keeps the
    # example's storage (data/sample_inputs), 784 floats rather than 3 MB.
    example = torch.zeros(1, 1, 28, 28).expand(CHUNK_SIZE + 1, 1, 28, 28)
    # No upper bound (a max of 65536 used to refuse a 70,000-image batch): the chunked path
    # makes the program's memory independent of N.
    batch = torch.export.Dim("batch", min=1)
    exported = ExportedNet(cpu_net).train(False)
    program = torch.export.export(exported, (example,), dynamic_shapes=({0: batch},))
    full = {
        "format": "kfp-lightning/mnist-model-v2",
        "program": PROGRAM_FILE,
        "weights": WEIGHTS_FILE,
        "load": f"torch.export.load('{PROGRAM_FILE}').module()",
        "input": INPUT_CONTRACT,
        "output": {
            "dtype": "float32",
            "shape": ["batch", 10],
            "meaning": "log-probabilities of digits 0-9",
        },
        "normalisation": {
            "mean": MNIST_MEAN,
            "std": MNIST_STD,
            "applied_by_program": True,
            "weights_expect_normalised_input": True,
        },
        "framework": {"torch": torch.__version__, "python": platform.python_version()},
        **metadata,
    }
    files = {PROGRAM_FILE: io.BytesIO(), WEIGHTS_FILE: io.BytesIO()}
    torch.export.save(program, files[PROGRAM_FILE])
    torch.save(cpu_net.state_dict(), files[WEIGHTS_FILE])
    with atomic_directory(model_dir) as staging:
        for name, buffer in files.items():
            # fsynced before the directory is renamed into place: a filesystem that allocates
            # late (NFS, for one) may report a full disk only at fsync or close. A fault names
            # the file by its final name (`atomic_directory` maps the staging path back).
            atomic_write_bytes(staging / name, buffer.getvalue())
        write_json(staging / "metadata.json", full)
    return full
