"""Train on several nodes: the step that runs them and turns rank 0's files into KFP outputs.

`train_from_run_form` is the one function the KFP component calls. It validates the run-form
values as single-node training does, uploads the Dataset input to the run's location, then
runs the nodes: on a cluster as a Kubeflow Trainer `TrainJob` (`trainjob.py`), created, or found
again after a retry of this step, and watched until its `Complete` or `Failed` condition, its
progress printed to this step's log; locally as torchrun processes on 127.0.0.1
(`components/common/torchrun.py`). Global rank 0 publishes the model, logs, evaluation and
result in the run's location, and this step collects them into its own output directories, as
single-node training does (`components/common/run_layout.py`): the same outputs, so the report
and the live TensorBoard work unchanged.

Cancelling the run ends the step with SIGTERM: it deletes the `TrainJob` (or stops the local
nodes) before it goes, and does the same when the training timeout passes first.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kfp_lightning.components.common import logs_location, run_layout
from kfp_lightning.components.common.dataset import read_dataset_metadata
from kfp_lightning.components.common.errors import RunError, invalid
from kfp_lightning.components.common.kubernetes import ClusterUnreachableError, Patience, connect
from kfp_lightning.components.common.kubernetes_syntax import check_secret_name
from kfp_lightning.components.common.run_form import from_run_form
from kfp_lightning.components.common.scalars import read_event_scalars
from kfp_lightning.components.common.storage import Storage, open_storage
from kfp_lightning.components.common.torchrun import Cancelled, run_torchrun, sigterm_raises
from kfp_lightning.components.common.training import TrainConfig, training_task_key
from kfp_lightning.components.common.training_pod import SchedulingConfig
from kfp_lightning.components.train_on_nodes import trainjob
from kfp_lightning.components.train_on_nodes.trainjob import FAILED

ENTRY_MODULE = "kfp_lightning.components.train_mnist.distributed"
TRAINJOB, LOCAL = "trainjob", "local"
# A guard against typos; pod hostnames leave room for up to 999 nodes (see trainjob.py).
MAX_NODES = 100
PROGRESS_TAGS = ("loss/train", "loss/val", "accuracy/val")


def _whole_number(value: object) -> object:
    """`value`, as an int where it is a float without a fraction: KFP hands a number input over
    as a float when the pipeline set it as a constant."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def check_nodes(value: object) -> int:
    """Validates a node count: a whole number from 1 to `MAX_NODES`.

    Raises:
        UserInputError: Anything else.
    """
    value = _whole_number(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NODES:
        raise invalid("nodes", value, f"a whole number from 1 to {MAX_NODES}")
    return value


def check_shared_location(
    location: logs_location.LogsLocation,
    logs_pvc: str | None,
    launcher: str,
    value: str | None = None,
) -> None:
    """Every node must reach the run's location: s3://, or a claim mounted on every node.

    Args:
        location: The run's location (or the logs root it is in).
        logs_pvc: The claim the pipeline was compiled to mount (--logs-pvc), if any.
        launcher: TRAINJOB or LOCAL (local nodes share this machine's directories).
        value: The `tensorboard_logs_root` as the user gave it, for messages.

    Raises:
        UserInputError: A directory on a cluster, or a claim that is not the mounted one.
    """
    if launcher == LOCAL:
        return
    shown = location.uri if value is None else value
    if location.scheme == "file":
        raise invalid(
            "tensorboard_logs_root",
            shown,
            "s3://bucket/prefix or pvc://claim/path with several nodes: every node reads the "
            "dataset and rank 0 writes the outputs there",
        )
    logs_location.check_mounted_claim(location, logs_pvc, shown)


@dataclasses.dataclass(frozen=True)
class NodesSettings:
    """How the step runs the nodes: settings fixed when the pipeline is compiled.

    Attributes:
        nodes: Nodes to train on.
        launcher: TRAINJOB (a Kubeflow Trainer job) or LOCAL (processes on this machine).
        trainer_image: The image every node runs (TRAINJOB).
        logs_pvc: The claim mounted for pvc:// logs roots, "" for none.
        timeout_seconds: Deadline of the training, from the step's start.
    """

    nodes: int = 2
    launcher: str = TRAINJOB
    trainer_image: str = ""
    logs_pvc: str = ""
    timeout_seconds: int = 6 * 3600

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", check_nodes(self.nodes))
        if self.launcher not in (TRAINJOB, LOCAL):
            raise invalid("node_launcher", self.launcher, f"one of {TRAINJOB}, {LOCAL}")
        if self.launcher == TRAINJOB and not self.trainer_image.strip():
            raise invalid("trainer_image", self.trainer_image, "the trainer image reference")
        if self.logs_pvc:
            check_secret_name(self.logs_pvc, "logs_pvc")
        seconds = _whole_number(self.timeout_seconds)
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
            raise invalid("timeout_seconds", self.timeout_seconds, "an integer >= 1")
        object.__setattr__(self, "timeout_seconds", seconds)


# --- training progress from the live logs ------------------------------------------------------


class ProgressReader:
    """Training progress for the step's log, read from the event files in the run's location.

    Args:
        storage: The run's location.
        every_seconds: Shortest time between two reads.
    """

    def __init__(self, storage: Storage, every_seconds: float) -> None:
        self.storage = storage
        self.every_seconds = every_seconds
        self.last_read = time.monotonic()
        self.last_step = -1
        self.copied: dict[str, int] = {}
        self._directory = tempfile.TemporaryDirectory(prefix="progress-")

    def close(self) -> None:
        """Removes the local copies."""
        self._directory.cleanup()

    def poll(self) -> str | None:
        """A progress line when it is time to read and training has moved on; else None."""
        if time.monotonic() - self.last_read < self.every_seconds:
            return None
        self.last_read = time.monotonic()
        local = Path(self._directory.name)
        try:
            for relative, size in self.storage.list_files().items():
                top = relative.split("/", 1)[0]
                if "tfevents" not in relative or top in (run_layout.OUTPUTS, run_layout.DATASET):
                    continue
                if self.copied.get(relative) != size:
                    self.storage.download(relative, local / relative)
                    self.copied[relative] = size
            # The highest step of every scalar tag, and its value.
            last: dict[str, tuple[int, float]] = {}
            for tags in read_event_scalars(local).values():
                for tag, by_step in tags.items():
                    if (step := max(by_step)) >= last.get(tag, (-1, 0.0))[0]:
                        last[tag] = (step, by_step[step])
        except Exception as err:  # progress is a courtesy: never fail training over it
            return f"training progress unreadable for now: {err}"
        step = max((step for step, _ in last.values()), default=-1)
        if step <= self.last_step:
            return None
        self.last_step = step
        parts = [f"step {step}"]
        if "epoch" in last:
            parts.append(f"epoch {int(last['epoch'][1]) + 1}")
        parts += [f"{tag} {last[tag][1]:.4f}" for tag in PROGRESS_TAGS if tag in last]
        return "training: " + ", ".join(parts)


# --- the nodes on a cluster -------------------------------------------------------------------


def run_on_cluster(
    jobs: trainjob.TrainJobs,
    wanted: Mapping[str, Any],
    storage: Storage,
    deadline: float,
    timeout_seconds: int,
) -> None:
    """Creates (or finds) the run's `TrainJob` and follows it until it completes.

    A job of an earlier attempt of this step is followed again if it is running or complete;
    a failed one is deleted (its pods first) and replaced, since a retry is there to try again.

    Args:
        jobs: The namespace's TrainJobs.
        wanted: The job to create.
        storage: The run's location: stale outputs are cleared before a new job starts, and
            training progress is read from its live logs.
        deadline: `time.monotonic()` by which the job must have completed.
        timeout_seconds: The same deadline in seconds from the start, for the message.

    Raises:
        RunError: The job failed (its condition's reason and message), was deleted by someone
            else, did not finish in time (then it is deleted), or the run was cancelled (then
            too); or the API refused or could not be reached.
    """
    name = wanted["metadata"]["name"]
    where = f"TrainJob {jobs.namespace}/{name}"
    progress = ProgressReader(storage, every_seconds=30.0)  # between two progress lines
    try:
        existing = jobs.get(name)
        if existing is not None and (earlier := trainjob.job_state(existing)).condition == FAILED:
            print(
                f"{where}: an earlier attempt's job failed "
                f"({earlier.describe()}): deleting it to start again",
                flush=True,
            )
            jobs.delete(name, foreground=True)
            next(current for current in jobs.watch(name, deadline) if current is None)  # gone
            existing = None
        if existing is None:
            run_layout.clear(storage, run_layout.OUTPUTS)
            if jobs.create(wanted) is not None:
                trainer = wanted["spec"]["trainer"]
                print(
                    f"{where}: created ({trainer['numNodes']} nodes x {trainer['numProcPerNode']} "
                    f"process(es), runtime {trainjob.RUNTIME}, image {trainer['image']})",
                    flush=True,
                )
            else:
                # A retried request whose first try did create it, or a concurrent attempt.
                print(f"{where}: exists already: following it", flush=True)
        else:
            print(f"{where}: following the job of an earlier attempt of this step", flush=True)
        last = ""
        for current in jobs.watch(name, deadline):
            if current is None:
                raise RunError(f"{where} was deleted while it ran (not by this step)")
            state = trainjob.job_state(current)
            if state.describe() != last:
                last = state.describe()
                print(f"{where}: {last}", flush=True)
            if state.condition == trainjob.COMPLETE:
                return
            if state.condition == FAILED:
                raise RunError(f"{where} failed: {state.detail or 'no reason given'}")
            if line := progress.poll():
                print(line, flush=True)
    except trainjob.DeadlinePassed:
        jobs.delete(name)
        raise RunError(
            f"{where} did not finish within the training timeout ({timeout_seconds} s): deleted it"
        ) from None
    except (Cancelled, KeyboardInterrupt) as stop:
        deleted = jobs.delete(name)
        raise RunError(
            f"cancelled ({stop or 'interrupted'}): "
            + (f"deleted {where}" if deleted else f"{where} was already gone")
        ) from None
    except ClusterUnreachableError as err:
        raise RunError(
            f"lost the Kubernetes API while following {where} ({err}); a retry of this step "
            "follows the same job"
        ) from None
    finally:
        progress.close()


# --- the step ----------------------------------------------------------------------------------


def upload_dataset(storage: Storage, dataset_dir: Path) -> None:
    """Puts the Dataset artifact in the run's location, unless it is there already."""
    held = run_layout.files_under(storage, run_layout.DATASET)
    # A file of the same size is the same: the location is the dataset's (`training_task_key`).
    if not (copied := run_layout.upload_tree(storage, dataset_dir, run_layout.DATASET, held)):
        raise invalid("dataset", str(dataset_dir), "a Dataset artifact written by download_mnist")
    for stale in held.keys() - copied.keys():
        storage.delete(stale)


def train_from_run_form(
    dataset_dir: str | Path,
    output_dirs: Mapping[str, str | Path],
    run_id: str,
    run_name: str,
    parameters: Mapping[str, Any],
    task_name: str = "",
) -> run_layout.TrainResult:
    """The KFP component's entry: trains on the run form's nodes and writes the same outputs
    as single-node training.

    Every value is validated first. On a cluster the node pods run as the step's own service
    account with its pod's image pull secrets, which the step finds through
    `POD_SERVICE_ACCOUNT` and `POD_NAME` (the downward API's spec.serviceAccountName and
    metadata.name, set by the pipeline).

    Args:
        dataset_dir: The Dataset artifact written by download_mnist.
        output_dirs: Each name of `run_layout.OUTPUT_DIRS` -> the directory to create.
        run_id: The pipeline run's id: names the TrainJob and the run's location.
        run_name: The pipeline run's display name (TensorBoard's name for the run).
        parameters: The component's arguments by name: the `NodesSettings` (`launcher` as
            `node_launcher`, how to run the nodes) and every `TrainConfig` (`gpus` is per
            node), `LiveLogsConfig` (the live logs root and the object store's endpoint and
            credentials) and `SchedulingConfig` (the node selector and tolerations of each
            node's pod, TRAINJOB) field.
        task_name: The task's name in the pipeline: with the dataset and the parameters, it
            keys the task's location and TrainJob within the run (`config.training_task_key`).

    Returns:
        What rank 0 published.

    Raises:
        UserInputError: A parameter cannot work (nothing is created then).
        RunError: The nodes failed, time ran out, the run was cancelled, or the cluster
            refused the job, stored it without a field sent, or runs a Kubeflow Trainer whose
            TrainJob cannot carry the pod settings (nothing is created then).
    """
    # The NodesSettings fields in order, by their parameter names (`launcher` is node_launcher).
    names = ("nodes", "node_launcher", "trainer_image", "logs_pvc", "timeout_seconds")
    settings = NodesSettings(*(parameters[name] for name in names))
    config, scheduling = (from_run_form(c, parameters) for c in (TrainConfig, SchedulingConfig))
    logs = from_run_form(logs_location.LiveLogsConfig, parameters)
    timeout = settings.timeout_seconds
    deadline = time.monotonic() + timeout
    patience = Patience(poll_seconds=10.0)  # between two reads of the job's status
    api_client, namespace, form, identity = None, "", "", None
    # The parameters are checked before the Trainer is asked; a lost API, at either request,
    # ends the step in one line.
    try:
        if settings.launcher == TRAINJOB:
            api_client, config_namespace = connect(patience)
            namespace = logs_location.current_namespace() or config_namespace or "default"
        sha256 = read_dataset_metadata(dataset_dir).get("sha256", {})
        key = training_task_key(task_name, sha256, config)
        location = logs.task_location(run_id, key, namespace or None)
        check_shared_location(
            location, settings.logs_pvc or None, settings.launcher, logs.tensorboard_logs_root
        )
        if api_client is not None:
            # Before anything is uploaded or created: a Trainer whose TrainJob cannot carry
            # the pod settings fails the step here, in one line.
            form = trainjob.trainjob_form(api_client, patience)
            identity = trainjob.step_pod_identity(
                api_client, namespace, settings.trainer_image, patience=patience
            )
    except ClusterUnreachableError as err:
        raise RunError(f"no Kubernetes API to create the TrainJob: {err}") from None
    endpoint = logs.endpoint()
    storage = open_storage(location, endpoint)
    upload_dataset(storage, Path(dataset_dir))

    arguments = run_layout.entry_arguments(
        location.uri, settings.nodes, config, endpoint, run_name, logs.live_update_seconds
    )
    processes_per_node = max(config.gpus, 1)
    print(
        f"training on {settings.nodes} nodes x {processes_per_node} process(es); run location "
        f"{location.uri}",
        flush=True,
    )
    if settings.launcher == LOCAL:
        run_layout.clear(storage, run_layout.OUTPUTS)
        run_torchrun(settings.nodes, processes_per_node, ENTRY_MODULE, arguments, deadline, timeout)
    else:
        spec = trainjob.NodeSpec(
            image=identity.image,
            nodes=settings.nodes,
            processes_per_node=processes_per_node,
            gpus_per_node=config.gpus,
            arguments=arguments,
            module=ENTRY_MODULE,
            s3_secret=logs.s3_credentials_secret if location.scheme == "s3" else None,
            logs_pvc=settings.logs_pvc or None,
            node_selector=scheduling.node_selector,
            tolerations=scheduling.tolerations,
            service_account=identity.service_account,
            image_pull_secrets=identity.image_pull_secrets,
        )
        print(identity.note, flush=True)
        wanted = trainjob.trainjob_object(namespace, run_id, spec, form, task=key)
        jobs = trainjob.TrainJobs(api_client, namespace, patience)
        with api_client, sigterm_raises():
            run_on_cluster(jobs, wanted, storage, deadline, timeout)
    return run_layout.collect_outputs(storage, output_dirs)
