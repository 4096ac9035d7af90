"""Checkpoints on disk: the dev checkpoint's files, its shared cache copy, and resolving
what ``checkpoint = ...`` names (``dev``, a local directory or a Hugging Face repo) to a
``moshi.models.loaders.CheckpointInfo``. Also the ``make-dev-checkpoint`` command.

The dev checkpoint (:mod:`.devcheckpoint`) loads through the ``moshi`` package's own
``CheckpointInfo.from_hf_repo`` with no network, and Kyutai's ``moshi.server`` runs on it
(``--config-path DIR/config.json``). ``config.json`` holds ``file://`` paths to the files,
so it names the directory it is in.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._cli_help import command_parser
from .._log import get_logger
from .devcheckpoint import CONFIG_NAME as CONFIG_NAME  # the file names live beside the
from .devcheckpoint import DEV_LM_CONFIG, DEV_MIMI_CONFIG, TEXT_CARD, build_weights, train_tokenizer
from .devcheckpoint import MIMI_CONFIG_NAME as MIMI_CONFIG_NAME  # maker: devpersonaplex
from .devcheckpoint import MIMI_WEIGHTS_NAME as MIMI_WEIGHTS_NAME  # writes them too, and
from .devcheckpoint import MOSHI_WEIGHTS_NAME as MOSHI_WEIGHTS_NAME  # imports no checkpoints
from .devcheckpoint import TOKENIZER_NAME as TOKENIZER_NAME

log = get_logger(__name__)

#: Bump when the files the maker writes change, so caches are rebuilt. (2: Mimi codebooks
#: drawn from encoded audio, so the model hears its input. 3: the agent is audible and
#: takes turns: bias-free Mimi decoder, quiet codes, a wired speaking/quiet state in the LM.)
DEV_CHECKPOINT_VERSION = 3

README_NAME = "README.txt"


class DevCheckpointError(RuntimeError):
    """The dev checkpoint could not be written where asked, or a checkpoint name does not
    resolve."""


def _config(final_dir: Path, lm_config: dict[str, Any] | None = None) -> dict[str, Any]:
    # ``file://`` makes moshi's hf_get read local files instead of asking the hub.
    cfg: dict[str, Any] = {
        "moshi_name": f"file://{final_dir / MOSHI_WEIGHTS_NAME}",
        "mimi_name": f"file://{final_dir / MIMI_WEIGHTS_NAME}",
        "mimi_config_name": f"file://{final_dir / MIMI_CONFIG_NAME}",
        "tokenizer_name": f"file://{final_dir / TOKENIZER_NAME}",
        "model_type": "moshi",
    }
    cfg.update(DEV_LM_CONFIG if lm_config is None else lm_config)
    return cfg


_README = """\
voice-server-moshi dev checkpoint (version {version}, seed {seed})

A tiny Moshi-shaped checkpoint with RANDOM weights. It babbles. Use it for plumbing,
tests and benchmarks, never to judge conversation quality.

Load with the moshi package:
    CheckpointInfo.from_hf_repo("{dir}", config_path="{dir}/config.json")
Run Kyutai's server on it (CPU, no network):
    HF_HUB_OFFLINE=1 NO_TORCH_COMPILE=1 python -m moshi.server --hf-repo {dir} \\
        --config-path {dir}/config.json --static none --device cpu
(on a machine without CUDA, neutralise torch.cuda.synchronize first; see
voice_server_moshi.testing.moshi_server.MOSHI_SERVER_LAUNCHER)
Or this project's batched server:
    voice-server-moshi serve --checkpoint {dir}
"""


def _write_files(target: Path, final_dir: Path, seed: int) -> None:
    mimi_bytes, lm_bytes = build_weights(seed)
    (target / MIMI_WEIGHTS_NAME).write_bytes(mimi_bytes)
    (target / MOSHI_WEIGHTS_NAME).write_bytes(lm_bytes)
    (target / MIMI_CONFIG_NAME).write_text(json.dumps(DEV_MIMI_CONFIG, indent=2, sort_keys=True))
    (target / TOKENIZER_NAME).write_bytes(train_tokenizer(TEXT_CARD, seed))
    (target / README_NAME).write_text(
        _README.format(version=DEV_CHECKPOINT_VERSION, seed=seed, dir=final_dir)
    )
    # config.json last: its presence marks a complete checkpoint.
    (target / CONFIG_NAME).write_text(json.dumps(_config(final_dir), indent=2, sort_keys=True))


def _is_complete(directory: Path) -> bool:
    names = (CONFIG_NAME, MOSHI_WEIGHTS_NAME, MIMI_WEIGHTS_NAME, MIMI_CONFIG_NAME, TOKENIZER_NAME)
    return all((directory / n).is_file() for n in names)


def make_dev_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Write the dev checkpoint into ``directory`` (created if missing) and return the
    path of its ``config.json``.

    The directory must be empty, missing, or hold an earlier dev checkpoint (which is
    overwritten); anything else is refused rather than mixed with our files.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    directory = Path(directory).expanduser().resolve()
    if directory.exists():
        if not directory.is_dir():
            raise DevCheckpointError(f"{directory} exists and is not a directory")
        ours = {CONFIG_NAME, MOSHI_WEIGHTS_NAME, MIMI_WEIGHTS_NAME, MIMI_CONFIG_NAME,
                TOKENIZER_NAME, README_NAME}
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in ours)
        if foreign:
            raise DevCheckpointError(
                f"{directory} holds files that are not a dev checkpoint ({', '.join(foreign)}); "
                "choose an empty or new directory"
            )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).unlink(missing_ok=True)  # incomplete until rewritten
    _write_files(directory, directory, seed)
    log.info("dev checkpoint written", directory=str(directory), seed=seed)
    return directory / CONFIG_NAME


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/voice-server-moshi`` (default ``~/.cache/voice-server-moshi``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voice-server-moshi"


def dev_checkpoint_dir() -> Path:
    """Get or create the shared dev checkpoint (seed 0) in the user cache and return its
    directory. Creation is atomic (a temporary sibling renamed into place), so processes
    that race all end up with the same complete checkpoint."""
    final = cache_root() / f"dev-checkpoint-v{DEV_CHECKPOINT_VERSION}"
    return fill_cache_atomically(final, _write_files, _is_complete, "dev checkpoint")


def fill_cache_atomically(final: Path, write: Callable[[Path, Path, int], None],
                          complete: Callable[[Path], bool], what: str) -> Path:
    """``final``, written by ``write(tmp, final, seed=0)`` into a temporary sibling renamed
    into place unless ``complete(final)`` already; processes that race all end up with the
    same complete directory."""
    if complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-tmp-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache copy is for every user tool
        write(tmp, final, 0)
        try:
            os.rename(tmp, final)
            log.info(f"{what} created", directory=str(final))
        except OSError:
            # Another process won the race (final exists and is not empty) or left a
            # broken directory behind; use a complete one, replace a broken one.
            if not complete(final):
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not complete(final):
        raise DevCheckpointError(f"could not create the {what} in {final}")
    return final


def _write_dev_personaplex(target: Path, final_dir: Path, seed: int) -> None:
    from .devpersonaplex import DEV_PP_LM_CONFIG, write_dev_personaplex

    write_dev_personaplex(target, seed)
    # config.json last: its presence marks a complete checkpoint.
    (target / CONFIG_NAME).write_text(json.dumps(_config(final_dir, DEV_PP_LM_CONFIG),
                                                 indent=2, sort_keys=True))


def dev_personaplex_dir() -> Path:
    """Get or create the shared ``dev-personaplex`` checkpoint (:mod:`.devpersonaplex`)."""
    from .devpersonaplex import DEV_PERSONAPLEX_VERSION

    final = cache_root() / f"dev-personaplex-v{DEV_PERSONAPLEX_VERSION}"
    return fill_cache_atomically(final, _write_dev_personaplex,
                                 lambda d: _is_complete(d) and (d / "voices").is_dir(),
                                 "dev-personaplex checkpoint")


def dev_checkpoint_ready() -> bool:
    """Whether the shared dev checkpoint is already in the cache (else the first use
    generates it, which takes a while on a CPU)."""
    return _is_complete(cache_root() / f"dev-checkpoint-v{DEV_CHECKPOINT_VERSION}")


#: How long the reachability check of the Hugging Face hub may take.
HUB_PROBE_TIMEOUT_S = 5.0


def check_hub_reachable(repo: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> None:
    """Fail fast, with one message, when the Hugging Face hub cannot be reached.

    Without this the hub client retries for most of a minute before the moshi loader
    gives up. Skipped when ``HF_HUB_OFFLINE`` is set (the hub client then reads its local
    cache only, and fails at once when the repo is not there).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(repo, local_files_only=True)
        except Exception as exc:  # the hub client's "not in the local cache" errors
            raise DevCheckpointError(
                f"HF_HUB_OFFLINE is set and {repo} is not in the Hugging Face cache "
                f"({type(exc).__name__}). Point at weights on disk instead: --checkpoint DIR "
                "(moshi: checkpoint = \"DIR\"), a directory with config.json and the "
                "weights it names; or fetch the repo on a connected machine first"
            ) from None
        return
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        httpx.head(f"{endpoint}/api/models/{repo}", timeout=timeout_s)
    except httpx.TransportError as exc:
        raise DevCheckpointError(
            f"cannot reach the Hugging Face hub ({endpoint}) to fetch {repo}: "
            f"{type(exc).__name__}: {exc}. Offline, point at weights on disk instead: "
            "--checkpoint DIR (moshi: checkpoint = \"DIR\"), a directory with config.json "
            "and the weights it names; or set HF_HUB_OFFLINE=1 to use a copy already in "
            "the Hugging Face cache"
        ) from None


def resolve_checkpoint(name: str) -> Any:
    """A ``moshi.models.loaders.CheckpointInfo`` for ``dev``, a local directory (with a
    ``config.json``) or a Hugging Face repo name, through the moshi package's loader.
    Its weight files are checked to be safetensors before anything loads them
    (:mod:`.weights_check`, ADR 0065)."""
    from .weights_check import check_checkpoint_weights

    info = _resolve(name)
    check_checkpoint_weights(info)
    return info


def _resolve(name: str) -> Any:
    from moshi.models import loaders

    if name in ("dev", "dev-personaplex"):
        d = dev_checkpoint_dir() if name == "dev" else dev_personaplex_dir()
        return loaders.CheckpointInfo.from_hf_repo(str(d), config_path=d / CONFIG_NAME)
    path = Path(name).expanduser()
    if path.is_dir():
        cfg = path / CONFIG_NAME
        if not cfg.is_file():
            raise DevCheckpointError(
                f"{path} has no {CONFIG_NAME}; a local checkpoint directory needs one "
                "(see 'voice-server-moshi make-dev-checkpoint')"
            )
        return loaders.CheckpointInfo.from_hf_repo(str(path), config_path=cfg)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise DevCheckpointError(
            f"checkpoint {name!r} is neither 'dev', an existing directory, nor a Hugging Face "
            "repo name such as kyutai/moshiko-pytorch-bf16"
        )
    check_hub_reachable(name)
    return loaders.CheckpointInfo.from_hf_repo(name)


def main(argv: list[str]) -> int:
    """``voice-server-moshi make-dev-checkpoint DIR [--seed N]``."""
    parser = command_parser(
        "voice-server-moshi make-dev-checkpoint",
        "Write a tiny random Moshi checkpoint (it babbles: for plumbing, tests "
        "and benchmarks only). Prints JSON: the directory, config path and how to serve it "
        "(this project's serve, or Kyutai's moshi.server).",
    )
    parser.add_argument("directory", type=Path, nargs="?",
                        help="where to write it (default: the shared cache copy)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the weights (default 0; needs DIR)")
    args = parser.parse_args(argv)
    try:
        if args.directory is None:
            if args.seed != 0:
                parser.error("--seed needs DIR (the cache copy is always seed 0)")
            d = dev_checkpoint_dir()
        else:
            d = make_dev_checkpoint(args.directory, seed=args.seed).parent
    except (DevCheckpointError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sizes = {p.name: p.stat().st_size for p in sorted(d.iterdir())}
    out = {
        "directory": str(d),
        "config": str(d / CONFIG_NAME),
        "bytes": sum(sizes.values()),
        "files": sizes,
        "serve": ["voice-server-moshi", "serve", "--checkpoint", str(d)],
        # Kyutai's own server reads it too (on a CPU-only machine see README.txt there).
        "kyutai_server": [
            "python", "-m", "moshi.server", "--hf-repo", str(d),
            "--config-path", str(d / CONFIG_NAME), "--static", "none",
        ],
        "kyutai_server_env": {"HF_HUB_OFFLINE": "1", "NO_TORCH_COMPILE": "1"},
    }
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0
