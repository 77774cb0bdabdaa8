"""Run a component exactly as a Kubeflow pod would: its compiled command, one executor input.

The command and arguments come from the component's own spec (the `sh -ec` wrapper that writes
the shipped function source to a file and starts `python3 -m kfp.dsl.executor_main`); inputs
and outputs are wired as the KFP driver wires them, with artifact URIs under a temporary
directory. This is the entry point the Kubeflow run form reaches, bypassing the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kfp.dsl import base_component

SCHEMA_VERSION = "0.0.1"


def _artifact(name: str, type_name: str, uri: Path) -> dict[str, Any]:
    return {
        "artifacts": [
            {
                "name": name,
                "type": {"schemaTitle": type_name, "schemaVersion": SCHEMA_VERSION},
                "uri": str(uri),
                "metadata": {},
            }
        ]
    }


def component_command(
    component: base_component.BaseComponent,
    workdir: Path,
    parameters: dict[str, Any] | None = None,
    input_artifacts: dict[str, Path] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str], dict[str, Path]]:
    """The command line and environment that run `component` through KFP's executor.

    Args:
        component: A `@dsl.component`.
        workdir: Where output artifacts and the executor output file go.
        parameters: Input parameter values (others take the component's defaults).
        input_artifacts: Input artifact name -> local path.
        env: Extra environment variables.

    Returns:
        The argv, the environment, and each output artifact's path.
    """
    spec = component.component_spec
    container = spec.implementation.container
    outputs = {name: workdir / "outputs" / name for name in spec.outputs or {}}
    executor_input = {
        "inputs": {
            "parameterValues": dict(parameters or {}),
            "artifacts": {
                name: _artifact(name, spec.inputs[name].type.split("@")[0], path)
                for name, path in (input_artifacts or {}).items()
            },
        },
        "outputs": {
            "artifacts": {
                name: _artifact(name, spec.outputs[name].type.split("@")[0], path)
                for name, path in outputs.items()
            },
            "outputFile": str(workdir / "executor_output.json"),
        },
    }
    args = []
    for arg in container.args:
        # The compiled args hold one placeholder, "{{$}}": the executor input itself.
        args.append(json.dumps(executor_input) if arg == "{{$}}" else str(arg))
    workdir.mkdir(parents=True, exist_ok=True)
    process_env = {**os.environ, **(env or {})}
    # `python3` in the command must be this environment's interpreter, as in the image.
    process_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{process_env['PATH']}"
    return [*container.command, *args], process_env, outputs


def logged_metrics(workdir: Path) -> dict[str, float]:
    """The metrics a component logged to its `metrics` output, from its executor output."""
    executor_output = json.loads((workdir / "executor_output.json").read_text())
    return dict(executor_output["artifacts"]["metrics"]["artifacts"][0]["metadata"])


def run_component(
    component: base_component.BaseComponent,
    workdir: Path,
    parameters: dict[str, Any] | None = None,
    input_artifacts: dict[str, Path] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Path]]:
    """Runs `component` to completion (see `component_command` for the arguments).

    Returns:
        The finished process (text output) and each output artifact's path.
    """
    argv, process_env, outputs = component_command(
        component, workdir, parameters, input_artifacts, env
    )
    process = subprocess.run(
        argv, capture_output=True, text=True, env=process_env, timeout=timeout, cwd=workdir
    )
    return process, outputs
