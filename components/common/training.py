"""Training configuration: the typed, validated form of every training parameter.

Both training components (one pod, or several nodes) read the same parameters, and the
multi-node step hands them to every node. Kept free of torch at import time so the pipeline
compiles, and the run form can be checked, without it. A preset is a named set of parameter
values, expanded where parameters are chosen (the CLI, or the defaults baked into a compiled
pipeline), so the run form and the run record always show the concrete numbers a run used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field, StringConstraints

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.kubernetes_syntax import digest
from kfp_lightning.components.common.run_form import COMPONENT, Switch, run_config, run_parameter

# GPUs one training pod may use (DDP, one process each): the most a GPU node has today.
MAX_GPUS = 16
TEST_SET = "test-set"
NO_AUGMENTATION = "none"
NO_CLIPPING = "off"
_SHIFT = re.compile(r"shift:([1-4])")

# Set to "quiet" by a `--local` run that shows only the tasks' own lines (pipelines/local.py):
# training then keeps Lightning's informational records out of the terminal.
CONSOLE_ENV = "KFP_LIGHTNING_CONSOLE"
# Values that differ from the dataclass defaults (which are the classic recipe).
PRESETS: dict[str, dict[str, Any]] = {
    # pytorch/examples/mnist: Adadelta lr 1.0, StepLR gamma 0.7 per epoch, batch 64, 14 epochs.
    "classic": {},
    # AdamW on a one-cycle schedule, with random 1-pixel shifts: >= 99.0% test accuracy in 2
    # epochs on the same network (measured 99.1-99.2% on the real MNIST across seeds; without
    # the shifts, every schedule tried stopped near 98.9%).
    "fast": {
        "optimizer": "adamw",
        "lr_schedule": "onecycle",
        "epochs": 2,
        "batch_size": 64,
        "learning_rate": 0.005,
        "augmentation": "shift:1",
    },
}


_FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max
_FLOAT32_TINY = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny: the least normal


def plain_number(text: str) -> bool:
    """Whether int() or float() may read `text`: they also read "1_0" as 10 and other scripts'
    digits (Python's numeric literals, `str.isdigit`), which no one types as a number."""
    return text.isascii() and "_" not in text


def _digits(value: object) -> object:
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else value


def _clip_norm(value: str) -> str:
    value = value.strip().lower()
    # As every other number (`plain_number`); and torch clips in float32, where a norm above its
    # largest number is infinite (no clipping) and one below its least normal number zeroes
    # every gradient, as 0 would.
    if value != NO_CLIPPING and not (
        plain_number(value) and _FLOAT32_TINY <= float(value) <= _FLOAT32_MAX
    ):
        raise ValueError(value)
    return value


# The rules of the fields below, with what each accepts in words (`run_form.run_config`).
# At most what a 32-bit integer holds: the run form keeps numbers as float64, which 1e20
# epochs would turn into 1.0e+20 in an integer field, and no run ends after that many anyway.
Count = Annotated[int, Field(ge=1, le=2**31 - 1, description="an integer from 1 to 2147483647")]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False, description="a finite number > 0")]
# torch's optimizers apply it in float32 (`param.add_(..., alpha=-lr)`), where a larger number
# is infinite and one below the least normal number is zero or loses its precision.
LearningRate = Annotated[
    float,
    Field(ge=_FLOAT32_TINY, le=_FLOAT32_MAX, description="a number from 1.2e-38 to 3.4e38"),
]
Decay = Annotated[float, Field(gt=0, le=1, description="a number in (0, 1]")]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="an integer in [0, 4294967295]")]
HoldOut = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=rf"^({TEST_SET}|[0-9]*[1-9][0-9]*)$"),
    Field(description=f"{TEST_SET} or a number of training images to hold out, e.g. 5000"),
]
Augmentation = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=rf"^({NO_AUGMENTATION}|{_SHIFT.pattern})$"),
    Field(description=f"{NO_AUGMENTATION} or shift:N with N from 1 to 4"),
]
# A string in the run form: the KFP driver resolves a pod spec's accelerator count with
# `GetStringValue()` (kubeflow/pipelines backend/src/v2/driver/resolve.go,
# `resolvePodSpecInputRuntimeParameter`), which reads "" from a number parameter and drops the
# nvidia.com/gpu limit. Digits only, no spaces: the driver hands the text as typed to
# Kubernetes' ParseQuantity, which refuses " 2", and the pod would never be created.
Gpus = Annotated[
    int,
    Field(
        strict=True,
        ge=0,
        le=MAX_GPUS,
        description=f"a whole number from 0 to {MAX_GPUS}, digits only",
    ),
    pydantic.BeforeValidator(_digits),
]
ClipNorm = Annotated[
    str,
    Field(description=f"{NO_CLIPPING} or a number from 1.2e-38 to 3.4e38"),
    pydantic.AfterValidator(_clip_norm),
]


def visible_gpus() -> int:
    """GPUs this process sees; imports torch (about 2 s), which the rest of this module avoids."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_devices(gpus: int, precision: str, visible: int) -> tuple[str, int]:
    """Lightning's accelerator and processes per node for `gpus` on a machine showing `visible`.

    Args:
        gpus: GPUs requested (0 = CPU), as `TrainConfig.gpus` holds them.
        precision: Requested precision; "16-mixed" needs a GPU.
        visible: GPUs this machine shows (`visible_gpus()`).

    Returns:
        (accelerator, devices). Without a visible GPU, as many CPU processes as GPUs were
        requested (at least one), so the same distributed run works, slowly, on a node that
        was not given its GPUs.

    Raises:
        UserInputError: More GPUs requested than the machine shows, or "16-mixed" on a CPU.
    """
    if gpus >= 1 and visible:
        if gpus > visible:
            raise invalid("gpus", str(gpus), f"at most {visible}: this node shows {visible} GPU(s)")
        return "gpu", gpus
    if precision == "16-mixed":
        accepted = "32-true or bf16-mixed on a CPU (16-mixed needs a GPU)"
        raise invalid("precision", precision, accepted)
    return "cpu", max(1, gpus)


@run_config
class TrainConfig:
    """Every training parameter, validated on construction; the defaults are the classic recipe.

    Each field's docstring is its description in the Kubeflow run form, the CLI's help and
    the README (see `components/common/run_form.py`).
    """

    epochs: Count = run_parameter(14)
    """Passes over the training set (classic recipe: 14)."""
    batch_size: Count = run_parameter(64)
    """Training batch size of each process, i.e. per GPU (classic: 64); with several GPUs or
    nodes, each step trains on batch_size x processes images. The learning rate is used as
    given: scale it with the global batch if the recipe needs it."""
    learning_rate: LearningRate = run_parameter(1.0)
    """Adadelta's learning rate (classic: 1.0), or the peak of the one-cycle schedule."""
    gamma: Decay = run_parameter(0.7)
    """StepLR's learning-rate decay per epoch, in (0, 1] (classic: 0.7); unused by one-cycle."""
    optimizer: Literal["adadelta", "sgd", "adamw"] = run_parameter("adadelta")
    """adadelta (classic), sgd (Nesterov momentum 0.9, weight decay 5e-4) or adamw (weight
    decay 1e-4, the fast preset's)."""
    lr_schedule: Literal["step", "onecycle"] = run_parameter("step")
    """step (StepLR each epoch, classic) or onecycle (OneCycleLR each step)."""
    seed: Seed = run_parameter(1)
    """Seed of the initial weights, the validation split, dropout and shuffling."""
    validation: HoldOut = run_parameter(TEST_SET)
    """What the validation pass after every epoch runs on: test-set (as the upstream example;
    training uses every training image, and the last validation pass is the test pass) or a
    number of training images to hold out instead, e.g. 5000."""
    augmentation: Augmentation = run_parameter(NO_AUGMENTATION)
    """none (classic) or shift:N, each training image moved by a random offset of up to N
    pixels (1 to 4) in each direction, drawn on the device."""
    gpus: Gpus = run_parameter(1, form=str)
    """GPUs requested for training (the nvidia.com/gpu limit), a whole number from 0 (CPU
    nodes) to 16; several train with Lightning's DDP, one process per GPU. Without a visible
    GPU, training uses the CPU."""
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = run_parameter("32-true")
    """32-true, bf16-mixed or 16-mixed (16-mixed needs a GPU)."""
    torch_compile: Switch = run_parameter(False, form="switch")
    """on or off: compile the network with torch.compile. It needs a C compiler, which the
    project's images leave out, so only --local runs take on."""
    channels_last: Switch = run_parameter(False, form="switch")
    """on or off: keep convolutions in the NHWC memory layout."""
    gradient_clip_val: ClipNorm = run_parameter(NO_CLIPPING)
    """off (classic) or the largest global L2 norm of each step's gradients, e.g. 1.0, to
    which Lightning's Trainer clips them (its gradient_clip_val)."""
    checkpoint_interval_minutes: Positive = run_parameter(10.0)
    """Longest training time, in minutes, between checkpoints within an epoch (one is also
    written at every epoch end), kept beside the live logs; a retried or preempted training
    task resumes from the newest."""
    eval_batch_size: Count = run_parameter(128, scope=COMPONENT)
    """Batch size of the validation and test passes. 128, not larger: on CPU cores a pass in
    batches of 1,000 took twice as long (their activations, ~150 MB, leave the caches)."""
    log_every_n_steps: Count = run_parameter(50, scope=COMPONENT)
    """Optimiser steps between logged training-loss points (every step is logged before the
    first such interval ends)."""
    progress_interval_seconds: Positive = 10.0
    """Seconds between progress lines when stdout is not a terminal."""

    @pydantic.model_validator(mode="after")
    def _half_precision_needs_a_gpu(self) -> TrainConfig:
        if self.precision == "16-mixed" and self.gpus == 0:
            accepted = "32-true or bf16-mixed with gpus=0 (16-mixed needs a GPU)"
            raise invalid("precision", self.precision, accepted)
        return self

    @property
    def max_shift(self) -> int:
        """Largest random shift of a training image, in pixels (0: no augmentation)."""
        match = _SHIFT.fullmatch(self.augmentation)
        return int(match.group(1)) if match else 0

    @property
    def gradient_clip_norm(self) -> float | None:
        """Norm each step's gradients are clipped to; None leaves them unclipped."""
        return None if self.gradient_clip_val == NO_CLIPPING else float(self.gradient_clip_val)

    @property
    def validation_size(self) -> int:
        """Training images held out for validation; 0 validates on the test set."""
        return 0 if self.validation == TEST_SET else int(self.validation)

    @classmethod
    def from_preset(cls, preset: str = "classic", **overrides: Any) -> TrainConfig:
        """The preset's values, with `overrides` (None values ignored) applied on top.

        Args:
            preset: A key of `PRESETS`.
            **overrides: Field values chosen explicitly by the user.

        Returns:
            The validated configuration.
        """
        if preset not in PRESETS:
            raise invalid("preset", preset, f"one of {', '.join(PRESETS)}")
        values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """All fields as a plain dict."""
        return dataclasses.asdict(self)


def check_batch_size(
    batch_size: int, train_samples: int, processes: int = 1, held_out: int = 0
) -> None:
    """Refuses a training batch larger than each process's share of the training images.

    Such a batch is the whole share: every epoch would be one optimiser step, whatever the
    number asked for, which no one means (a batch of exactly the share, full-batch training,
    is accepted).

    Args:
        batch_size: Training images per step of each process.
        train_samples: Training images after the validation hold-out.
        processes: Processes sharing every epoch (each trains on its equal share).
        held_out: Training images the validation hold-out took (named as the cause).

    Raises:
        UserInputError: `batch_size` exceeds the share, or (naming `validation`) the hold-out
            leaves a process no training image.
    """
    share = train_samples // processes
    if share == 0 and held_out:  # no batch size would do: the hold-out leaves too few
        total = train_samples + held_out
        if (most := total - processes * batch_size) >= 1:
            each = f" for each of {processes} processes" if processes > 1 else ""
            leaves = f"which leaves a training batch of {batch_size}{each}"
            raise invalid("validation", str(held_out), f"at most {most}, {leaves}")
        # Nor would any hold-out: the batch is too large for the processes' shares of all.
        whole = f"each process's share of the {total} training images with validation=test-set"
        raise invalid("batch_size", batch_size, f"at most {total // processes}, {whole}")
    if batch_size > share:
        each = f" of each of {processes} processes" if processes > 1 else ""
        left = f" that validation={held_out} leaves" if held_out else ""
        images = "image" if share == 1 else "images"
        raise invalid(
            "batch_size", batch_size, f"at most the {share} training {images}{each}{left}"
        )


def training_task_key(
    task_name: str, dataset_sha256: Mapping[str, str], config: TrainConfig
) -> str:
    """The folder of a training task's state in its run: `<task name>-<digest of its inputs>`.

    A run may hold several training tasks (a user's own pipeline trains on two data sets, or
    with two learning rates; a ParallelFor repeats one task name), and a task finds its
    earlier work (checkpoints, live logs) in its folder when it is retried. Keyed by the task,
    its data set and its parameters, a resume only ever continues the same task on the same
    inputs, and two tasks never write one folder.

    Args:
        task_name: The task's name in the pipeline (KFP's `PIPELINE_TASK_NAME_PLACEHOLDER`);
            "" for a task whose pipeline does not pass it.
        dataset_sha256: The data set's files' SHA-256, from its metadata.json.
        config: The training parameters.

    Returns:
        The key, a path segment of at most 51 characters.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", task_name.strip()).strip("-.")[:40] or "task"
    inputs = {"dataset_sha256": dict(dataset_sha256), "config": config.as_dict()}
    encoded = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return f"{name}-{digest(encoded)}"


def check_compiler(torch_compile: bool, accelerator: str) -> None:
    """Fails early when `torch.compile` cannot work: it generates and builds native code.

    On the CPU, Inductor needs a C++ compiler ($CXX, else g++); on a GPU, Triton needs a C
    compiler ($CC, else cc or gcc). The training image ships neither, to stay small and lean.
    """
    cpu = accelerator == "cpu"
    compilers = [os.environ.get("CXX", "g++")] if cpu else [os.environ.get("CC", ""), "cc", "gcc"]
    if torch_compile and not any(map(shutil.which, compilers)):
        accepted = "off here: torch.compile needs a C/C++ compiler, and none is installed"
        raise invalid("torch_compile", "on", accepted)
