"""The run configuration: one typed, validated object built from a recipe file and CLI flags.

Every mistake (unknown key, wrong type, value out of range) fails at start-up and names the key, and
the file when the value came from a recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence

from ..sdk import options
from ..sdk.errors import ConfigError
from ..sdk.options import Range, require
from . import renamed_keys

#: what torch, numpy and random all accept as a seed
SEED = Annotated[int, Range(0, 2**32 - 1)]
COUNT = Annotated[int, Range(1, 2**31 - 1)]


@dataclass
class PeftConfig:
    """Parameter-efficient fine-tuning through the peft library: only the adapters (and the task heads, and
    embeddings that grew for added tokens) are trained; the base weights stay frozen."""

    #: lora, or dora (weight-decomposed LoRA: a learned magnitude per output feature on top of LoRA)
    method: Literal["lora", "dora"] = "lora"
    #: rank of the update matrices
    r: int = 8
    #: scaling numerator: the update is multiplied by alpha / r
    alpha: float = 16.0
    #: dropout on the adapter's input
    dropout: float = 0.05
    #: "auto": peft's per-architecture default (the attention query/value projections); "all-linear": every
    #: linear layer but the output; or a list of module-name suffixes (["q_proj", "v_proj", "o_proj"])
    target_modules: Any = "auto"

    def validate(self, key: str) -> None:
        require(1 <= self.r <= 4096, f"{key}.r", "must be between 1 and 4096")
        require(self.alpha > 0, f"{key}.alpha", "must be positive")
        require(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
        t = self.target_modules
        require(t in ("auto", "all-linear") or isinstance(t, list) and t and all(isinstance(m, str) and m for m in t),
                f"{key}.target_modules", "must be auto, all-linear or a non-empty list of module names")


@dataclass
class BackboneConfig:
    #: a preset (tiny, mini, small), an alias (minilm), a local model folder or a hub id
    spec: str = "tiny"
    #: vocabulary size of the tokenizer trained for a from-scratch preset (default: the preset's)
    vocab_size: Optional[int] = None
    #: dropout probability of every dropout layer of the backbone (default: the model's own, 0.1 for presets)
    dropout: Optional[float] = None
    #: sdpa: PyTorch's fused scaled-dot-product attention; eager: the model's own matmul-softmax-matmul
    #: code (the same function; kept so the two can be measured against each other)
    attention: str = "sdpa"
    #: parameter-efficient fine-tuning (``--peft lora``); null trains every weight
    peft: Optional[PeftConfig] = None
    #: the dtype the weights are loaded in. auto: float32, except the frozen base of a peft run on a GPU, which
    #: keeps the checkpoint's own dtype (bf16/fp16 halve its memory; the trained adapters stay float32)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: QLoRA: load the base 4-bit (NF4) or 8-bit through bitsandbytes (a CUDA GPU and peft needed)
    quantize: Optional[Literal["4bit", "8bit"]] = None
    #: a GGUF file inside the backbone folder (llama.cpp weights, dequantised by transformers through gguf)
    gguf_file: Optional[str] = None

    def validate(self, key: str) -> None:
        require(bool(self.spec.strip()), f"{key}.spec", "must name a preset (tiny, mini, small), alias, folder or hub id")
        require(self.vocab_size is None or self.vocab_size >= 300, f"{key}.vocab_size", "must be at least 300")
        require(self.dropout is None or 0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
        require(self.attention in ("sdpa", "eager"), f"{key}.attention", "must be sdpa or eager")
        require(self.quantize is None or self.peft is not None, f"{key}.quantize",
                "a quantized base cannot be trained itself: add --peft lora (QLoRA)")
        require(self.gguf_file is None or bool(self.gguf_file.strip()), f"{key}.gguf_file", "the file name is empty")


@dataclass
class TaskEntry:
    #: the registered task type (ner, classification, ...)
    type: str
    #: the instance name (its head's name); defaults to the type. Two entries of one type need names.
    name: Optional[str] = None
    #: split -> file (train, dev, test); empty means the task's embedded default data
    data: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    #: loss weight in multi-task training
    weight: float = 1.0
    #: this task's own warm-up, as a fraction of its own steps (default: trainer.warmup_ratio); needs
    #: multitask.schedule_per_task
    warmup_ratio: Optional[float] = None

    def validate(self, key: str) -> None:
        self.name = self.name or self.type
        require(self.weight > 0, f"{key}.weight", "must be positive")
        require(self.warmup_ratio is None or 0 <= self.warmup_ratio < 1, f"{key}.warmup_ratio", "must be in [0, 1)")
        for split, path in self.data.items():
            require(bool(path.strip()), f"{key}.data.{split}", "the path is empty")


@dataclass
class TrainerConfig:
    """The optimisation itself: budget, batch, learning rate and its schedule, evaluation and stopping
    (docs/training.md explains each key; the other sections hold what used to sit here beside them)."""

    #: passes over the training data (fractions allowed); ignored when max_steps is set
    epochs: float = 3.0
    #: stop after this many optimizer steps (overrides epochs)
    max_steps: Optional[int] = None
    #: global batch size (examples per micro-batch, summed over processes)
    batch_size: int = 32
    #: batch size for evaluation (default: twice batch_size)
    eval_batch_size: Optional[int] = None
    #: learning rate; default 1e-3 for from-scratch presets and 1e-4 for pretrained backbones
    lr: Optional[float] = None
    #: AdamW weight decay; never applied to biases and normalisation weights
    weight_decay: float = 0.01
    #: fraction of the optimizer steps spent warming the learning rate up linearly from 0
    warmup_ratio: float = 0.06
    #: learning-rate shape after warm-up: linear decay to 0, half-cosine to 0, or constant
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    #: micro-batches whose gradients are summed before one optimizer step
    grad_accum: int = 1
    #: clip the gradient norm to this value (null: no clipping)
    max_grad_norm: Optional[float] = 1.0
    seed: SEED = 42
    #: evaluate every N optimizer steps (default: at the end of each epoch)
    eval_every: Optional[int] = None
    #: evaluations during training score only the first N examples of each dev split (null: all); the
    #: final `nlpkit evaluate` is unaffected. For quick runs where scoring a large dev set dominates
    eval_max_examples: Optional[COUNT] = None
    #: also evaluate before the first step (logged as step 0, a candidate for best/ like any evaluation): the
    #: zero-shot score of a pretrained model, the "before" of a fine-tuning
    eval_at_start: bool = False
    #: stop after this many evaluations without improvement of the selection score
    patience: Optional[int] = None
    #: consecutive non-finite losses tolerated before training stops
    max_bad_steps: int = 5
    #: train on the CPU even where a CUDA GPU is visible
    cpu: bool = False

    def validate(self, key: str) -> None:
        require(self.epochs > 0, f"{key}.epochs", "must be positive")
        require(self.max_steps is None or self.max_steps > 0, f"{key}.max_steps", "must be positive")
        require(self.batch_size > 0, f"{key}.batch_size", "must be positive")
        require(self.eval_batch_size is None or self.eval_batch_size > 0, f"{key}.eval_batch_size", "must be positive")
        require(self.lr is None or 0 < self.lr < 1, f"{key}.lr", "must be between 0 and 1")
        require(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        require(0 <= self.warmup_ratio < 1, f"{key}.warmup_ratio", "must be in [0, 1)")
        require(self.grad_accum >= 1, f"{key}.grad_accum", "must be >= 1")
        require(self.max_grad_norm is None or self.max_grad_norm > 0, f"{key}.max_grad_norm", "must be positive")
        require(self.eval_every is None or self.eval_every > 0, f"{key}.eval_every", "must be positive")
        require(self.patience is None or self.patience > 0, f"{key}.patience", "must be positive")
        require(self.max_bad_steps >= 1, f"{key}.max_bad_steps", "must be >= 1")


@dataclass
class PrecisionConfig:
    """The number format of training's arithmetic. The weights keep the dtype they were loaded in
    (backbone.dtype); this only chooses the autocast dtype of the forward and backward passes."""

    #: "auto" picks bf16 on GPUs with bf16 units, fp16 on other GPUs, bf16 on CPUs with native bf16 (AMX or
    #: AVX512-BF16), fp32 on other CPUs (autocast via Accelerate; the log says which and why). ``--precision``
    compute: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


@dataclass
class MultitaskConfig:
    """How several tasks share one run (docs/multitask.md); a single-task run ignores all but head_lr_scale."""

    #: multi-task batch sampling: proportional to the tasks' batches, temperature, annealed (proportional at
    #: the start, close to uniform at the end), or round-robin
    sampler: Literal["proportional", "temperature", "annealed", "round-robin"] = "proportional"
    #: sampler "temperature": task i is drawn with p ∝ n_i^(1/T) (1 = proportional, large = uniform)
    temperature: float = 2.0
    #: count each task's learning-rate schedule (warm-up, decay) in its own steps, so that its k-th update
    #: gets the rate of its k-th update in a single-task run; false: one schedule over the run
    schedule_per_task: bool = True
    #: "shared" (one AdamW state for all tasks) or "per-task" (one AdamW state per task over the shared
    #: weights, so each task's updates follow its own gradients' moments; more optimizer memory; not with
    #: distributed.sharding)
    optimizer_state: Literal["shared", "per-task"] = "shared"
    #: the heads' learning rate as a multiple of the backbone's (null: 1 in a single-task run, 10 in a
    #: multi-task run, where each head must keep up with a backbone the other tasks move too)
    head_lr_scale: Optional[float] = None
    #: loss weights: "fixed" (each task entry's weight) or "uncertainty" (Kendall et al. 2018: each task's
    #: loss divided by its running mean, the closed-form optimum of the learned variance)
    task_weighting: Literal["fixed", "uncertainty"] = "fixed"
    #: also keep each task's own best model in <run>/best-per-task/<task> (best/ holds the checkpoint the
    #: selection score picked, one step for all tasks)
    best_per_task: bool = False

    def validate(self, key: str) -> None:
        require(self.temperature > 0, f"{key}.temperature", "must be positive")
        require(self.head_lr_scale is None or 0 < self.head_lr_scale <= 1000, f"{key}.head_lr_scale",
                "must be in (0, 1000]")


@dataclass
class CheckpointConfig:
    """Resumable checkpoints (<run>/checkpoints/step-N): how often, how many, and where a run continues from."""

    #: keep this many step checkpoints for resume (besides the best model)
    keep_last: int = 1
    #: write a resumable checkpoint every N steps (default: at each evaluation)
    save_every: Optional[int] = None
    #: also write one when this many minutes passed since the last (null: only by steps)
    save_minutes: Optional[float] = 30.0
    #: "auto": continue from the newest complete checkpoint in output_dir if there is one;
    #: "never": start over (removing the folder's old checkpoints); or a run / checkpoint folder. ``--resume``
    resume: str = "auto"

    def validate(self, key: str) -> None:
        require(self.keep_last >= 1, f"{key}.keep_last", "must be >= 1")
        require(self.save_every is None or self.save_every > 0, f"{key}.save_every", "must be positive")
        require(self.save_minutes is None or self.save_minutes > 0, f"{key}.save_minutes", "must be positive")
        require(self.resume in ("auto", "never") or Path(self.resume).exists(), f"{key}.resume",
                f"must be auto, never or an existing run/checkpoint folder; {self.resume!r} does not exist")


@dataclass
class LoggingConfig:
    """What a run reports while it trains: log records, trackers, the progress bar, the curves at the end."""

    #: write a log.jsonl / tracker record (and refresh the progress bar) every N steps
    log_every: int = 10
    #: experiment trackers (``--report-to``): tensorboard (event files in <run>/tensorboard), mlflow, wandb
    #: (offline unless WANDB_MODE=online), or none; a list, or one name / a comma-separated string
    #: (nlpkit.engine.tracking, docs/training.md "Experiment tracking")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    #: the older switch for TensorBoard, kept as an alias: true adds tensorboard to report_to, false removes
    #: it, null (the default) leaves report_to as it is
    tensorboard: Optional[bool] = None
    #: learning-curve PNGs in <run>/curves at the end (needs matplotlib)
    plots: bool = True
    #: a progress bar on the terminal (``--no-progress``, and output that is not a terminal, turn it off)
    progress: bool = True

    def validate(self, key: str) -> None:
        require(self.log_every > 0, f"{key}.log_every", "must be positive")
        from .tracking import check_names

        check_names(self.report_to, f"{key}.report_to")


@dataclass
class PerformanceConfig:
    """Speed and memory switches that leave what is learned the same, or the same in distribution."""

    #: group similar lengths into batches (less padding)
    group_by_length: bool = True
    #: torch.compile the model; it made a short run on 2 CPU cores slower (docs/performance.md): for long GPU runs
    compile: bool = False
    #: on CPU, dropout masks from nlpkit.engine.fast_dropout (numpy's bulk generator, seeded from torch's): the same
    #: dropout, about 4x cheaper than F.dropout on CPU; false: torch's own dropout
    fast_dropout: bool = True
    #: Linux/glibc: keep freed memory in the process while training (nlpkit.engine.heap), so each step's large
    #: buffers are not page-faulted in anew. Off by default: on the NER benchmark row it measured 1.03x the
    #: speed, 95% interval 0.92-1.15 over 5 alternating repeats, and 2% more peak memory (docs/performance.md)
    heap_reuse: bool = False
    #: recompute each layer's activations in the backward pass instead of keeping them (non-reentrant
    #: torch.utils.checkpoint): less memory for about a third more compute, on any backbone, LoRA included
    gradient_checkpointing: bool = False


@dataclass
class DistributedConfig:
    """How several processes share the model (docs/distributed.md); the processes come from the launcher."""

    #: none: every process holds the whole model (DDP); fsdp: weights, gradients and optimizer state sharded
    #: over the processes with torch FSDP2 (CPU and GPU); zero3: DeepSpeed ZeRO-3 through Accelerate (CUDA only)
    sharding: Literal["none", "fsdp", "zero3"] = "none"


@dataclass
class DataSettings:
    """The ``data:`` section of a run config: where the tables are cached and how many processes encode."""

    #: reuse (and keep) read and encoded tables between runs; false builds them in a temporary folder that is
    #: deleted when the process ends (``--no-cache``)
    cache: bool = True
    #: the cache folder (``--cache-dir``); None: $NLPKIT_CACHE/data, else ~/.cache/nlpkit/data
    cache_dir: Optional[str] = None
    #: processes that encode a split (datasets' map ``num_proc``, ``--num-proc``); 1 encodes in this process
    num_proc: int = 1

    def validate(self, key: str) -> None:
        require(isinstance(self.num_proc, int) and 1 <= self.num_proc <= 256, f"{key}.num_proc",
                "must be a whole number between 1 and 256")
        require(self.cache_dir is None or bool(str(self.cache_dir).strip()), f"{key}.cache_dir",
                "must name a folder (leave it out for the default cache)")


@dataclass
class RunConfig:
    tasks: list[TaskEntry]
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    #: the autocast dtype of training (``--precision``)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    #: how several tasks share the run: batch sampling, schedules, optimizer state, loss weights
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)
    #: resumable checkpoints and where a run continues from (``--resume``)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    #: log records, experiment trackers (``--report-to``), progress bar, curves
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    #: speed and memory switches
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    #: where read and encoded data tables are cached, and how many processes encode (nlpkit.engine.tables)
    data: DataSettings = field(default_factory=DataSettings)
    #: run folder; default runs/<task names>-<time>
    output_dir: Optional[str] = None
    #: model selection and early stopping: "mean" of the tasks' main scores, or one task's name
    selection: str = "mean"
    #: start from this checkpoint (or run folder): its backbone and tokenizer, and the heads of tasks
    #: with the same name and labels; other tasks get new heads (adding a task to a trained model)
    init_from: Optional[str] = None
    #: free text (recipes say what they reproduce)
    description: Optional[str] = None
    #: modules to import before looking tasks up (user plugins)
    plugins: list[str] = field(default_factory=list)

    def validate(self, key: str) -> None:
        require(len(self.tasks) > 0, f"{key}tasks", "at least one task is needed")
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        require(not dupes, f"{key}tasks", f"task names must be unique; give entries of one type a 'name' ({dupes})")
        require(self.selection == "mean" or self.selection in names, f"{key}selection",
                f"must be 'mean' or the name of a task of this run ({', '.join(names)}), got {self.selection!r}")
        require(self.output_dir is None or bool(self.output_dir.strip()), f"{key}output_dir",
                "must name a folder (leave it out for runs/<tasks>-<time>)")
        require(self.init_from is None or bool(self.init_from.strip()), f"{key}init_from", "must name a checkpoint")
        if self.output_dir is not None:
            check_output_dir(self.output_dir, f"{key}output_dir")
        if self.init_from is not None:
            from .checkpoint import check_files

            check_files(self.init_from)  # cheap (no weights read): a broken start fails before any folder is touched

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None,
                  renamed: Sequence[tuple[str, str]] = ()) -> "RunConfig":
        """The checked config of a recipe, a dict of the Python API, or a saved run config.

        Keys under their names before the sections were split (``trainer.sampler``) are moved to their new
        place first (nlpkit.engine.renamed_keys), with one warning naming them all; ``renamed`` are the
        ones a caller moved already (the CLI does so before merging its flags). Errors about such a key
        name it as it was written.
        """
        moved = list(renamed)
        try:
            if isinstance(data, dict):
                data = dict(data)  # upgrade replaces sections: the caller's dict stays as it was
                moved += renamed_keys.upgrade(data)
            renamed_keys.warn(moved, source)
            try:
                return options.build(cls, data)
            except ConfigError as exc:
                raise ConfigError(renamed_keys.as_written(str(exc), moved)) from exc
        except ConfigError as exc:
            if source:
                raise ConfigError(f"{source}: {exc}") from exc
            raise

    def to_dict(self) -> dict[str, Any]:
        return options.to_dict(self)


def check_output_dir(path: str, key: str) -> None:
    """The run folder must be a folder, or creatable: its nearest existing ancestor is a writable folder.

    Checked at validation, before anything is created, so a file in the way, a path under a file, or a
    place the user may not write (permissions, /proc, a read-only mount) is one line naming the key. A
    probe folder is made and removed in that ancestor: permission bits alone do not tell (root, procfs).
    """
    import os
    import tempfile

    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{key}: {path!r} is a file, not a folder; choose another --output-dir")
    ancestor = target.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{key}: {path!r} cannot be created: {str(ancestor)!r} is a file, not a folder")
    try:
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise PermissionError(f"no permission to write in {str(ancestor)!r}")
        os.rmdir(tempfile.mkdtemp(prefix=".nlpkit-probe-", dir=ancestor))
    except OSError as exc:
        raise ConfigError(f"{key}: {path!r} cannot be created in {str(ancestor)!r} "
                          f"({exc.strerror or exc}); choose another --output-dir") from exc


def load_recipe(path: str | Path) -> dict[str, Any]:
    import yaml

    from ..sdk.data import open_text

    if not str(path).strip():
        raise ConfigError("recipe: the file name is empty")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"recipe {str(path)!r} is a folder; give a recipe file in it (e.g. recipes/NAME.yaml)")
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(open_text(path, hint="").read()) or {}  # the data files' encoding policy
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a recipe") from None
    if data == {}:
        raise ConfigError(f"{path}: the recipe is empty; it needs at least 'tasks: [{{type: TYPE}}]'")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at the top level, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> tuple[str, str] | None:
    """``trainer.lr=3e-5`` or ``tasks.0.options.max_length=128``; values are parsed as YAML scalars.

    A key under its old name (``trainer.log_every``) is written at its new place, so that it overrides a
    recipe that uses the new name (upgrade ``data`` with ``renamed_keys.upgrade`` first); the (old, new)
    pair is returned for the deprecation notice, None for a current key.
    """
    import yaml

    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. trainer.lr=3e-5")
    key, raw = assignment.split("=", 1)
    place, moved = renamed_keys.new_name(key)
    parts = place.split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: the key has an empty part; expected KEY=VALUE, e.g. trainer.lr=3e-5")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({exc})") from exc
    node = walk(data, parts[:-1], f"--set {key}: ")
    last = parts[-1]
    if isinstance(node, list):
        idx = _index(node, last, f"--set {key}: ")
        node[idx] = value
    else:
        node[last] = value
    return moved


def walk(data: dict[str, Any], parts: list[str], where: str = "") -> Any:
    """The mapping (or list) at dotted ``parts`` of ``data``, creating empty mappings on the way.

    What is in the way (a number where ``trainer.lr.x`` needs a mapping) is a ConfigError naming the
    key: the CLI merges flags and ``--set`` into recipes through here, so a recipe of the wrong shape
    is reported, not a TypeError.
    """
    node: Any = data
    for i, part in enumerate(parts):
        if isinstance(node, list):
            node = _list_item(node, part, where)
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = [] if part == "tasks" and i == 0 else {}
        if not isinstance(child, (dict, list)):
            path = ".".join(parts[: i + 1])
            raise ConfigError(f"{where}{path}: expected a mapping, got {options.show(child)}")
        node = child
    return node


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{key}{part!r} is not an index into a list of {len(node)}")
    return int(part)


def _list_item(node: list, part: str, key: str) -> Any:
    if part.isdigit():
        item = node[_index(node, part, key)]
    else:
        item = next((i for i in node if isinstance(i, dict) and (i.get("name") or i.get("type")) == part), None)
        if item is None:  # tasks.ner.options... addresses a task entry by name
            raise ConfigError(f"{key}no list entry named {part!r}")
    if not isinstance(item, dict):
        raise ConfigError(f"{key}entry {part!r}: expected a mapping, got {options.show(item)}")
    return item
