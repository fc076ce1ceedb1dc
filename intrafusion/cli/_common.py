"""Shared pieces of the command line: the one way to add a command, and the options several commands take."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

__all__ = ["add_command", "apply_threads", "at_least_one", "model_args", "load_model", "eval_data", "taylor_batches",
           "sample_count"]


def at_least_one(option: str, hint: str = ""):
    """argparse type for ``option``: a whole number, at least 1 (``hint`` is added to the refusal)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} takes a whole number, got {text!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{option} must be at least 1, got {n}{hint}")
        return n
    return parse


_thread_count = at_least_one("--threads", "; leave it out for torch's default")


def add_command(subparsers, name: str, func: Callable[[argparse.Namespace], int], help: str,
                **kwargs) -> argparse.ArgumentParser:
    """Add subcommand ``name`` running ``func(args) -> exit status``, with the options every command has.

    Every command gets ``--threads N``: the number of torch threads (default: torch's own default, which
    follows the machine and ``OMP_NUM_THREADS``).
    """
    p = subparsers.add_parser(name, help=help, description=help, **kwargs)
    p.add_argument("--threads", type=_thread_count, default=None,
                   help="torch threads (default: torch's own default for this machine)")
    p.set_defaults(func=func)
    return p


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count only when the user asked for one (``--threads N``)."""
    n = getattr(args, "threads", None)
    if n is not None:
        torch.set_num_threads(n)


def model_args(p: argparse.ArgumentParser) -> None:
    """The positional model (a bundled id or a checkpoint file) and what a checkpoint file needs."""
    p.add_argument("model", help="a bundled model id (see `models`) or a checkpoint file")
    p.add_argument("--arch", help="architecture of a checkpoint file: vgg11_bn, resnet18 or mlp")
    p.add_argument("--dataset", help="dataset a checkpoint file was trained on (decides its inputs)")
    p.add_argument("--data", help="folder of torchvision datasets (default: $INTRAFUSION_DATA or ./data)")


def load_model(args):
    """The model named by ``args.model`` (see :func:`intrafusion.models.zoo.resolve_model`)."""
    from ..models.zoo import resolve_model

    return resolve_model(args.model, arch=args.arch, dataset=args.dataset)


def sample_count(text: str) -> int:
    """argparse type of --limit: a whole number of samples, at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit takes a whole number of test samples, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"--limit must be at least 1 test sample, got {n}; leave it out to evaluate on the whole test set")
    return n


def eval_data(loaded, args, limit: int | None):
    """The test set of the model's dataset as ``(x, y)``; a stratified subset of ``limit`` samples if given."""
    from ..data import load_dataset, subset

    test = load_dataset(loaded.dataset, "test", root=args.data, preprocessing=loaded.preprocessing)
    if limit:
        test = subset(test, limit, seed=0)
        xs, ys = zip(*[test[i] for i in range(len(test))])
        return torch.stack(xs), torch.stack(ys)
    return test.tensors


def taylor_batches(loaded, args):
    """Training batches for the Taylor criterion."""
    from ..data import load_dataset, sample_batches

    train = load_dataset(loaded.dataset, "train", root=args.data, preprocessing=loaded.preprocessing)
    return sample_batches(*train.tensors)
